//! Kubernetes discovery: who this node is comes from its pod (the StatefulSet ordinal), who its
//! peers are from a list + watch of the StatefulSet's pods and of the StatefulSet itself, and
//! whether it creates the cluster from the API server: only ordinal 0 with an empty data dir,
//! and only after it has created the bootstrap marker ConfigMap, which no second node can create.
//!
//! Nodes are addressed by the stable names of the headless Service; the pod IP the watch reports
//! is only where such a name points now ([`Kubernetes::resolve`]): identity is never an IP.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::identity::Identity;
use super::DiscoveryError;
use crate::membership::{NodeAdvert, NodeId};
use crate::raft::{NodeInfo, Raft};

/// The marker's keys.
const CLUSTER_ID_KEY: &str = "cluster-id";
const VOTERS_KEY: &str = "voters";
const CREATED_BY_KEY: &str = "created-by";
/// The file in the data dir where ordinal 0 keeps the cluster id it is about to claim, before it
/// creates the marker: a restart between the two finds its own claim in the marker and goes on.
const CLAIM_FILE: &str = "bootstrap-claim";

/// What `--discovery kubernetes` is told by its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub pod_name: String,
    pub namespace: String,
    pub statefulset: String,
    pub service: String,
    pub pod_selector: String,
    /// The port of `--api-addr`, the same on every pod.
    pub api_port: u16,
    /// The port of `--peer-addr`, the same on every pod.
    pub peer_port: u16,
}

impl Settings {
    /// This pod's ordinal in the StatefulSet: the number after the StatefulSet's name.
    pub fn ordinal(&self) -> Result<u64, DiscoveryError> {
        self.pod_name
            .strip_prefix(&self.statefulset)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|ordinal| ordinal.parse::<u64>().ok())
            .ok_or_else(|| DiscoveryError::PodName {
                pod: self.pod_name.clone(),
                statefulset: self.statefulset.clone(),
            })
    }

    /// This node's identity: id = ordinal + 1, named after its pod, its API at its stable name.
    pub fn identity(&self) -> Result<Identity, DiscoveryError> {
        let ordinal = self.ordinal()?;
        let info = self.node_info(ordinal);
        Ok(Identity { id: ordinal + 1, advert: NodeAdvert { name: info.name, api_address: info.api_addr } })
    }

    /// `{pod}.{service}.{namespace}.svc`, the stable name of a pod of the StatefulSet.
    pub fn host(&self, pod: &str) -> String {
        format!("{pod}.{}", self.host_suffix())
    }

    fn host_suffix(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// What every node knows of the pod with `ordinal`: its name and its stable addresses.
    pub fn node_info(&self, ordinal: u64) -> NodeInfo {
        let pod = format!("{}-{ordinal}", self.statefulset);
        let host = self.host(&pod);
        NodeInfo {
            api_addr: format!("{host}:{}", self.api_port),
            peer_addr: format!("{host}:{}", self.peer_port),
            name: pod,
        }
    }

    /// The initial voters of a StatefulSet of `replicas`: ordinals 0..replicas as ids 1..=replicas.
    pub fn initial_voters(&self, replicas: u64) -> BTreeMap<NodeId, NodeInfo> {
        (0..replicas).map(|ordinal| (ordinal + 1, self.node_info(ordinal))).collect()
    }

    fn marker_name(&self) -> String {
        format!("{}-bootstrap", self.statefulset)
    }
}

/// What bootstrap decided for this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Serve peers and take part in Raft: this node created the cluster, resumes its state, or
    /// waits to be contacted by the cluster.
    TakePart,
    /// Stay out of Raft: this node lost the state its id stands for (ordinal 0 with an empty data
    /// dir after the cluster was created). It must neither vote nor take appends under that id.
    StayOut,
}

/// The Kubernetes API as this node sees it: a client, and what the watches found.
#[derive(Clone)]
pub struct Kubernetes {
    settings: Arc<Settings>,
    client: kube::Client,
    /// The StatefulSet's pods by name, with their IP once they have one.
    pods: Arc<RwLock<BTreeMap<String, Option<IpAddr>>>>,
    /// The StatefulSet's `spec.replicas`, once seen.
    replicas: watch::Sender<Option<u64>>,
}

impl Kubernetes {
    /// A client from the default configuration: KUBECONFIG (or `~/.kube/config`), else in-cluster.
    pub async fn connect(settings: Settings) -> Result<Self, DiscoveryError> {
        let client = kube::Client::try_default().await.map_err(|e| DiscoveryError::Kubernetes(e.to_string()))?;
        Ok(Kubernetes {
            settings: Arc::new(settings),
            client,
            pods: Arc::default(),
            replicas: watch::Sender::new(None),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The pod IP the watch last reported for a stable name `{pod}.{service}.{namespace}.svc`;
    /// `None` for any other name or a pod without an IP (the caller then asks DNS).
    pub fn resolve(&self, host: &str) -> Option<IpAddr> {
        let suffix = self.settings.host_suffix();
        let pod = host.strip_suffix(&suffix)?.strip_suffix('.')?;
        *self.pods.read().unwrap_or_else(|e| e.into_inner()).get(pod)?
    }

    /// Keeps the pods' IPs up to date until `cancel`.
    pub async fn watch_pods(self, cancel: CancellationToken) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let selector = Selector::Labels(self.settings.pod_selector.clone());
        let pods = Arc::clone(&self.pods);
        let apply = move |change: Change<Pod>| {
            let mut pods = pods.write().unwrap_or_else(|e| e.into_inner());
            let ip = |pod: &Pod| pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
            match change {
                Change::Reset(all) => *pods = all.iter().map(|p| (p.name_any(), ip(p))).collect(),
                Change::Upsert(pod) => {
                    let (name, ip) = (pod.name_any(), ip(&pod));
                    if pods.get(&name) != Some(&ip) {
                        tracing::info!(pod = %name, ip = ?ip, "pod address");
                    }
                    pods.insert(name, ip);
                }
                Change::Delete(pod) => {
                    pods.remove(&pod.name_any());
                }
            }
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            () = list_watch(api, selector, apply) => {}
        }
    }

    /// Keeps the StatefulSet's `spec.replicas` up to date until `cancel`.
    pub async fn watch_statefulset(self, cancel: CancellationToken) {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let selector = Selector::Fields(format!("metadata.name={}", self.settings.statefulset));
        let replicas = self.replicas.clone();
        let apply = move |change: Change<StatefulSet>| {
            let seen = match change {
                Change::Reset(all) => all.first().map(spec_replicas),
                Change::Upsert(sts) => Some(spec_replicas(&sts)),
                Change::Delete(_) => None,
            };
            replicas.send_if_modified(|r| {
                let changed = *r != seen;
                if changed {
                    tracing::info!(replicas = ?seen, "statefulset replicas");
                }
                *r = seen;
                changed
            });
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            () = list_watch(api, selector, apply) => {}
        }
    }

    /// Creates the cluster if this node may: ordinal 0, no Raft state, and the bootstrap marker
    /// created by this node (or found holding this node's own claim, after a restart between the
    /// two). Any other node, or one with state, never initializes. API errors are retried.
    /// Ordinal 0 without state that finds another claim in the marker must stay out of Raft.
    pub async fn bootstrap(&self, raft: &Raft, me: NodeId, data_dir: &Path) -> Result<Bootstrap, DiscoveryError> {
        let initialized = raft.is_initialized().await.map_err(|e| DiscoveryError::Initialize(e.to_string()))?;
        if initialized {
            tracing::info!(node = me, "resuming an existing cluster");
            return Ok(Bootstrap::TakePart);
        }
        if me != 1 {
            tracing::info!(node = me, "no state: waiting to be contacted by the cluster");
            return Ok(Bootstrap::TakePart);
        }
        let claim_path = data_dir.join(CLAIM_FILE);
        let claim = match std::fs::read_to_string(&claim_path) {
            Ok(claim) => claim.trim().to_owned(),
            Err(_) => String::new(),
        };
        let mut replicas = self.replicas.subscribe();
        if replicas.borrow().is_none() {
            tracing::info!(statefulset = %self.settings.statefulset, "waiting for the StatefulSet's replicas");
        }
        let replicas = *replicas
            .wait_for(|r| r.is_some_and(|r| r > 0))
            .await
            .map_err(|e| DiscoveryError::Kubernetes(e.to_string()))?;
        let replicas = replicas.unwrap_or(1);
        let claim = if claim.is_empty() {
            let id = uuid::Uuid::new_v4().to_string();
            write_durably(&claim_path, &id).map_err(|e| DiscoveryError::Initialize(format!("{claim_path:?}: {e}")))?;
            id
        } else {
            claim
        };
        let voters = self.settings.initial_voters(replicas);
        let Some(marker) = self.claim_marker(&claim, &voters).await? else {
            return Ok(Bootstrap::StayOut);
        };
        let voters: BTreeMap<NodeId, NodeInfo> = marker
            .data
            .as_ref()
            .and_then(|d| d.get(VOTERS_KEY))
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| {
                DiscoveryError::Initialize(format!("marker {} has no readable voters", marker.name_any()))
            })?;
        tracing::info!(node = me, cluster_id = %claim, voters = ?voters.keys().collect::<Vec<_>>(), "creating the cluster");
        raft.initialize(voters).await.map_err(|e| DiscoveryError::Initialize(e.to_string()))?;
        Ok(Bootstrap::TakePart)
    }

    /// Creates the marker, or reads the one there. Returns it if it holds `claim` (this node's),
    /// `None` if it holds another cluster's id: then this node must never initialize.
    async fn claim_marker(
        &self,
        claim: &str,
        voters: &BTreeMap<NodeId, NodeInfo>,
    ) -> Result<Option<ConfigMap>, DiscoveryError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = self.settings.marker_name();
        let voters_json = serde_json::to_string(voters).map_err(|e| DiscoveryError::Initialize(e.to_string()))?;
        let marker = ConfigMap {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            data: Some(BTreeMap::from([
                (CLUSTER_ID_KEY.to_owned(), claim.to_owned()),
                (VOTERS_KEY.to_owned(), voters_json),
                (CREATED_BY_KEY.to_owned(), self.settings.pod_name.clone()),
            ])),
            ..ConfigMap::default()
        };
        let mut backoff = Backoff::default();
        loop {
            let found = match api.create(&PostParams::default(), &marker).await {
                Ok(created) => {
                    tracing::info!(marker = %name, cluster_id = %claim, "created the bootstrap marker");
                    return Ok(Some(created));
                }
                Err(kube::Error::Api(status)) if status.code == 409 => match api.get(&name).await {
                    Ok(found) => found,
                    Err(error) => {
                        tracing::warn!(marker = %name, %error, "cannot read the bootstrap marker; retrying");
                        backoff.wait().await;
                        continue;
                    }
                },
                Err(error) => {
                    tracing::warn!(marker = %name, %error, "cannot create the bootstrap marker; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            let theirs = found.data.as_ref().and_then(|d| d.get(CLUSTER_ID_KEY)).cloned().unwrap_or_default();
            if theirs == claim {
                tracing::info!(marker = %name, cluster_id = %claim, "the bootstrap marker holds this node's claim");
                return Ok(Some(found));
            }
            tracing::error!(
                marker = %name,
                cluster_id = %theirs,
                "this node (ordinal 0) has no state but the cluster was already created: its data dir was \
                 lost. It will not create a second cluster, stays out of Raft (peers are not served) and \
                 waits; rejoining under a new id is not implemented yet (issue 12, later increment)"
            );
            return Ok(None);
        }
    }

    /// The cluster id the bootstrap marker records, asked until the API server answers;
    /// `None` if there is no marker.
    pub async fn marker_cluster_id(&self) -> Option<String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = self.settings.marker_name();
        let mut backoff = Backoff::default();
        loop {
            match api.get_opt(&name).await {
                Ok(found) => return found.and_then(|cm| cm.data?.remove(CLUSTER_ID_KEY)),
                Err(error) => {
                    tracing::warn!(marker = %name, %error, "cannot read the bootstrap marker; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

fn spec_replicas(sts: &StatefulSet) -> u64 {
    // A StatefulSet without `spec.replicas` has one (the API server's default).
    sts.spec.replicas.map_or(1, |r| r.max(0) as u64)
}

/// Writes `text` to `path` and syncs it and its directory.
fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Which objects a list + watch follows.
enum Selector {
    Labels(String),
    Fields(String),
}

/// What a list + watch reports.
enum Change<K> {
    /// A fresh list: these are all the objects now.
    Reset(Vec<K>),
    Upsert(K),
    Delete(K),
}

/// Lists, then watches from the list's resourceVersion, forever: a watch that ends is resumed
/// from the last version seen; one that fails or answers 410 Gone starts again with a list.
async fn list_watch<K>(api: Api<K>, selector: Selector, mut apply: impl FnMut(Change<K>))
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::kind(&()).to_string();
    let (lp, wp) = match &selector {
        Selector::Labels(s) => (ListParams::default().labels(s), WatchParams::default().labels(s).timeout(290)),
        Selector::Fields(s) => (ListParams::default().fields(s), WatchParams::default().fields(s).timeout(290)),
    };
    let mut backoff = Backoff::default();
    loop {
        let list = match api.list(&lp).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%kind, %error, "list failed; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        apply(Change::Reset(list.items));
        'watch: loop {
            let events = match api.watch(&wp, &version).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%kind, %error, "watch failed; listing again");
                    backoff.wait().await;
                    break 'watch;
                }
            };
            let opened = std::time::Instant::now();
            let mut events = std::pin::pin!(events.into_stream());
            loop {
                match events.next().await {
                    None => {
                        // A watch that ends at once again and again must not spin.
                        if opened.elapsed() < Duration::from_secs(1) {
                            backoff.wait().await;
                        } else {
                            backoff.reset();
                        }
                        continue 'watch;
                    }
                    Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                        version = obj.resource_version().unwrap_or(version);
                        apply(Change::Upsert(obj));
                    }
                    Some(Ok(WatchEvent::Deleted(obj))) => {
                        version = obj.resource_version().unwrap_or(version);
                        apply(Change::Delete(obj));
                    }
                    Some(Ok(WatchEvent::Bookmark(mark))) => version = mark.metadata.resource_version,
                    Some(Ok(WatchEvent::Error(status))) => {
                        if status.code == 410 {
                            tracing::info!(%kind, "watch too old (410); listing again");
                        } else {
                            tracing::warn!(%kind, code = status.code, message = %status.message, "watch error; listing again");
                            backoff.wait().await;
                        }
                        break 'watch;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%kind, %error, "watch broke; listing again");
                        backoff.wait().await;
                        break 'watch;
                    }
                }
            }
        }
    }
}

/// Exponential backoff with jitter between calls to the API server: 200 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::from_millis(200) }
    }
}

impl Backoff {
    async fn wait(&mut self) {
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::time::sleep(self.next.mul_f64(jitter)).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pod: &str) -> Settings {
        Settings {
            pod_name: pod.into(),
            namespace: "ns".into(),
            statefulset: "gm-cluster".into(),
            service: "gm-cluster-headless".into(),
            pod_selector: "app=gm".into(),
            api_port: 8080,
            peer_port: 7000,
        }
    }

    #[test]
    fn identity_from_the_pod() {
        let identity = settings("gm-cluster-2").identity().unwrap();
        assert_eq!(identity.id, 3);
        assert_eq!(identity.advert.name, "gm-cluster-2");
        assert_eq!(identity.advert.api_address, "gm-cluster-2.gm-cluster-headless.ns.svc:8080");
        assert!(settings("other-2").identity().is_err());
        assert!(settings("gm-cluster-x").identity().is_err());
        assert!(settings("gm-cluster").identity().is_err());
    }

    #[test]
    fn initial_voters_by_stable_name() {
        let voters = settings("gm-cluster-0").initial_voters(3);
        assert_eq!(voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(voters[&3].peer_addr, "gm-cluster-2.gm-cluster-headless.ns.svc:7000");
        assert_eq!(voters[&1].name, "gm-cluster-0");
    }
}
