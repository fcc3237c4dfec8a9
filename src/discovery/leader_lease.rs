//! The Kubernetes Lease `{statefulset}-leader` (`coordination.k8s.io/v1`), held by the pod whose
//! node leads, so `kubectl get lease` shows which pod that is. It is a report, never a lock: Raft
//! elects the leader and the Lease follows. A leader duty creates the Lease or takes it over
//! (holder, acquire time, one more transition), then renews it every few seconds by a replace at
//! the resourceVersion it last read or wrote; on a conflict it reads the Lease again. The API
//! server's errors are logged (one warning per outage) and retried; they never stop the node or
//! another duty. (Not to be confused with members' leases, `probe::lease`.)

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::kubernetes::Kubernetes;
use crate::node::Node;

/// `leaseDurationSeconds`: how long a holder that stopped renewing still shows as holding.
const DURATION_SECONDS: i32 = 15;
/// How often the leader renews the Lease.
const RENEW: Duration = Duration::from_secs(5);
/// How soon the leader tries again after an error.
const RETRY: Duration = Duration::from_secs(2);
/// Conflicts (another writer in between) read again at once, this many times per renewal.
const CONFLICT_READS: usize = 3;

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
enum HoldError {
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error("this node could not confirm it leads, so it does not take the Lease over: {0}")]
    NotConfirmed(crate::node::NodeError),
    #[error("the Lease kept changing under this node's writes")]
    Conflicts,
}

/// The leader duty: holds the Lease while this node leads, until `cancel`.
pub async fn run(node: Arc<Node>, kube: Kubernetes, cancel: CancellationToken) {
    let mut holder = Holder::new(&kube);
    let mut failing = false;
    loop {
        let wait = match holder.renew(&node).await {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(lease = %holder.name, "renewing the leader Lease works again");
                }
                RENEW
            }
            Err(error) => {
                if std::mem::replace(&mut failing, true) {
                    tracing::debug!(lease = %holder.name, %error, "cannot renew the leader Lease; retrying");
                } else {
                    tracing::warn!(lease = %holder.name, %error, "cannot renew the leader Lease; retrying");
                }
                RETRY
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// This pod's hold on the Lease.
struct Holder {
    api: Api<Lease>,
    name: String,
    /// This pod's name, the holder identity.
    me: String,
    /// The Lease as this node last wrote it; `None`: read it first.
    last: Option<Lease>,
}

impl Holder {
    fn new(kube: &Kubernetes) -> Self {
        let settings = kube.settings();
        Holder {
            api: Api::namespaced(kube.client().clone(), &settings.namespace),
            name: format!("{}-leader", settings.statefulset),
            me: settings.pod_name.clone(),
            last: None,
        }
    }

    /// Creates, takes over or renews the Lease.
    async fn renew(&mut self, node: &Node) -> Result<(), HoldError> {
        for _ in 0..CONFLICT_READS {
            let current = match self.last.take() {
                Some(lease) => Some(lease),
                None => self.api.get_opt(&self.name).await?,
            };
            let written = match current {
                None => self.api.create(&PostParams::default(), &self.fresh()).await,
                Some(lease) => {
                    let lease = self.held(lease, node).await?;
                    self.api.replace(&self.name, &PostParams::default(), &lease).await
                }
            };
            match written {
                Ok(lease) => {
                    self.last = Some(lease);
                    return Ok(());
                }
                // Someone wrote in between (a create raced ours, another pod took it over) or
                // deleted it: read it again.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(HoldError::Conflicts)
    }

    /// A new Lease held by this pod.
    fn fresh(&self) -> Lease {
        let now = MicroTime(Timestamp::now());
        tracing::info!(lease = %self.name, holder = %self.me, "creating the leader Lease");
        Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.me.clone()),
                lease_duration_seconds: Some(DURATION_SECONDS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    /// `lease` renewed by this pod, taken over first if another holds it. A take-over waits
    /// until this node has confirmed with a quorum that it leads: a deposed leader that has not
    /// heard of its successor yet must not take the Lease back from it.
    async fn held(&self, mut lease: Lease, node: &Node) -> Result<Lease, HoldError> {
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            node.local_read_index().await.map_err(HoldError::NotConfirmed)?;
            tracing::info!(
                lease = %self.name,
                holder = %self.me,
                previous = spec.holder_identity.as_deref().unwrap_or(""),
                "taking the leader Lease over"
            );
            spec.holder_identity = Some(self.me.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(DURATION_SECONDS);
        spec.renew_time = Some(now);
        Ok(lease)
    }
}
