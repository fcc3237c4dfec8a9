//! Kubernetes discovery: who this node is comes from its pod (the StatefulSet ordinal), who its
//! peers are from a list + watch of the StatefulSet's pods and of the StatefulSet itself, and
//! whether it creates the cluster from the API server: only ordinal 0 with an empty data dir,
//! and only after it has created the bootstrap marker ConfigMap, which no second node can create.
//!
//! Nodes are addressed by the stable names of the headless Service; the pod IP the watch reports
//! is only where such a name points now ([`Kubernetes::resolve`]): identity is never an IP. A
//! node's id is its ordinal and the generation of its disk, claimed in the id book ([`super::ids`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::Path;
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
use super::ids::{self, Book, LocalId};
use super::DiscoveryError;
use crate::membership::{NodeAdvert, NodeId};
use crate::raft::{NodeInfo, Raft};

/// The marker's keys.
const CLUSTER_ID_KEY: &str = "cluster-id";
const VOTERS_KEY: &str = "voters";
const CREATED_BY_KEY: &str = "created-by";
/// The file in the data dir where ordinal 0 keeps the cluster id it is about to claim, before it
/// creates the marker: a restart between the two finds its own claim in the marker and goes on.
pub const CLAIM_FILE: &str = "bootstrap-claim";

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
    /// This pod's ordinal in the StatefulSet: the number after the StatefulSet's name, below
    /// [`ids::ORDINALS`].
    pub fn ordinal(&self) -> Result<u64, DiscoveryError> {
        self.pod_name
            .strip_prefix(&self.statefulset)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|ordinal| ordinal.parse::<u64>().ok())
            .filter(|&ordinal| ordinal < ids::ORDINALS)
            .ok_or_else(|| DiscoveryError::PodName {
                pod: self.pod_name.clone(),
                statefulset: self.statefulset.clone(),
            })
    }

    /// The identity of node `id` of this pod: named after its pod, its API at its stable name.
    pub fn identity(&self, id: NodeId) -> Identity {
        let info = self.node_info(ids::ordinal_of(id));
        Identity { id, advert: NodeAdvert { name: info.name, api_address: info.api_addr } }
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

    /// The initial voters of a StatefulSet of `replicas`: ordinals 0..replicas in generation 0,
    /// ids 1..=replicas.
    pub fn initial_voters(&self, replicas: u64) -> BTreeMap<NodeId, NodeInfo> {
        (0..replicas).map(|ordinal| (ids::node_id(ordinal, 0), self.node_info(ordinal))).collect()
    }

    fn marker_name(&self) -> String {
        format!("{}-bootstrap", self.statefulset)
    }

    fn book_name(&self) -> String {
        format!("{}-ids", self.statefulset)
    }
}

/// Who this node is, as decided from its data dir and the id book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Run as `id` on the state in the data dir.
    Resume(NodeId),
    /// The data dir's state belongs to an id that was retired or superseded: discard it, then
    /// settle again on the empty data dir.
    Discard(NodeId),
    /// Run as `id`, newly claimed (or claimed before a restart), on an empty data dir.
    Fresh(NodeId),
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
    /// The StatefulSet's uid, once seen: events name it.
    statefulset_uid: Arc<RwLock<Option<String>>>,
    /// Whether each watch (pods, StatefulSet) holds a view listed since its last failure.
    synced: Arc<[std::sync::atomic::AtomicBool; 2]>,
}

/// The StatefulSet's pods and replicas, as the watches last saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub replicas: u64,
    /// The ordinals of the pods that have an IP.
    pub pods: std::collections::BTreeSet<u64>,
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
            statefulset_uid: Arc::default(),
            synced: Arc::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The client, for the other objects the leader writes ([`super::leader_lease`], [`super::events`]).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The StatefulSet's uid, if the watch has seen it.
    pub fn statefulset_uid(&self) -> Option<String> {
        self.statefulset_uid.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The pod IP the watch last reported for a stable name `{pod}.{service}.{namespace}.svc`;
    /// `None` for any other name or a pod without an IP (the caller then asks DNS).
    pub fn resolve(&self, host: &str) -> Option<IpAddr> {
        let suffix = self.settings.host_suffix();
        let pod = host.strip_suffix(&suffix)?.strip_suffix('.')?;
        *self.pods.read().unwrap_or_else(|e| e.into_inner()).get(pod)?
    }

    /// The StatefulSet's `spec.replicas`, asked of the API server now (at most 2 s), else as the
    /// watch last saw it.
    pub async fn current_replicas(&self) -> Option<u64> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        match tokio::time::timeout(Duration::from_secs(2), api.get(&self.settings.statefulset)).await {
            Ok(Ok(sts)) => Some(spec_replicas(&sts)),
            _ => *self.replicas.borrow(),
        }
    }

    /// The pods and replicas the watches hold, or `None` while either is not in sync with the
    /// API server (a list or watch failed and no list has succeeded since): a decision taken
    /// on it would act on a stale view.
    pub fn observed(&self) -> Option<Observed> {
        use std::sync::atomic::Ordering;
        if !self.synced.iter().all(|s| s.load(Ordering::Acquire)) {
            return None;
        }
        let replicas = (*self.replicas.borrow())?;
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        let pods = pods
            .iter()
            .filter(|(_, ip)| ip.is_some())
            .filter_map(|(name, _)| name.strip_prefix(&self.settings.statefulset)?.strip_prefix('-')?.parse().ok())
            .collect();
        Some(Observed { replicas, pods })
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
        let synced = Arc::clone(&self.synced);
        tokio::select! {
            () = cancel.cancelled() => {}
            () = list_watch(api, selector, apply, |s| synced[0].store(s, std::sync::atomic::Ordering::Release)) => {}
        }
    }

    /// Keeps the StatefulSet's `spec.replicas` up to date until `cancel`.
    pub async fn watch_statefulset(self, cancel: CancellationToken) {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let selector = Selector::Fields(format!("metadata.name={}", self.settings.statefulset));
        let replicas = self.replicas.clone();
        let uid = Arc::clone(&self.statefulset_uid);
        let apply = move |change: Change<StatefulSet>| {
            let sts = match &change {
                Change::Reset(all) => all.first(),
                Change::Upsert(sts) => Some(sts),
                Change::Delete(_) => None,
            };
            let seen = sts.map(spec_replicas);
            *uid.write().unwrap_or_else(|e| e.into_inner()) = sts.and_then(|s| s.metadata.uid.clone());
            replicas.send_if_modified(|r| {
                let changed = *r != seen;
                if changed {
                    tracing::info!(replicas = ?seen, "statefulset replicas");
                }
                *r = seen;
                changed
            });
        };
        let synced = Arc::clone(&self.synced);
        tokio::select! {
            () = cancel.cancelled() => {}
            () = list_watch(api, selector, apply, |s| synced[1].store(s, std::sync::atomic::Ordering::Release)) => {}
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
        if me != ids::node_id(0, 0) {
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
            ids::write_durably(&claim_path, &id)
                .map_err(|e| DiscoveryError::Initialize(format!("{claim_path:?}: {e}")))?;
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
                "this node (ordinal 0) has no state but the cluster was already created, and the id book did \
                 not know its disk (the book was deleted?). It will not create a second cluster and stays out \
                 of Raft (peers are not served)"
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

impl Kubernetes {
    /// Decides this node's id. With state in the data dir (`has_state`) it is the id kept there
    /// (ordinal + 1 for a data dir older than the id book), unless the book says it was retired
    /// or superseded: then [`Settled::Discard`]. The book is asked for a few seconds only, so a
    /// restart with state does not wait for the API server. Without state, the id kept in the
    /// data dir is used only if the book records that very claim; otherwise the next generation
    /// is claimed, retrying until the API server answers.
    pub async fn settle_identity(&self, data_dir: &Path, has_state: bool) -> Result<Settled, DiscoveryError> {
        let ordinal = self.settings.ordinal()?;
        let local = LocalId::read(data_dir);
        if has_state {
            let id = local.map_or(ids::node_id(ordinal, 0), |l| l.id);
            let book = tokio::time::timeout(Duration::from_secs(5), self.read_book_retrying()).await;
            match book {
                Ok((book, _)) if book.is_superseded(id) => {
                    tracing::warn!(
                        node = id,
                        "this node's id was removed from the cluster (a scale-down) or replaced: discarding its \
                         stale state to join again under a new id"
                    );
                    return Ok(Settled::Discard(id));
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(node = id, "cannot read the id book; resuming without checking it"),
            }
            return Ok(Settled::Resume(id));
        }
        let mut backoff = Backoff::default();
        loop {
            let (mut book, found) = self.read_book_retrying().await;
            if let Some(local) = local.as_ref().filter(|l| l.is_current_in(&book)) {
                return Ok(Settled::Fresh(local.id));
            }
            let claim = book.next_claim(ordinal);
            let id = ids::node_id(ordinal, claim.generation);
            // Kept on disk before the book records it: a restart in between finds its own claim.
            LocalId { id, token: claim.token.clone() }
                .write(data_dir)
                .map_err(|e| DiscoveryError::Initialize(format!("cannot write the node id in {data_dir:?}: {e}")))?;
            book.set(ordinal, claim);
            match self.write_book(&book, found).await {
                Ok(()) => {
                    tracing::info!(node = id, ordinal, generation = ids::generation_of(id), "claimed a node id");
                    return Ok(Settled::Fresh(id));
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!("the id book changed meanwhile; claiming again");
                    backoff.wait().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot write the id book; claiming again");
                    backoff.wait().await;
                }
            }
        }
    }

    /// While this node is in no cluster's membership, says so every minute (first after 30 s),
    /// with the likely cause: a node is added by the leader as soon as it runs, so a long wait
    /// means there is no leader to add it, e.g. the volumes were deleted to start over but the
    /// marker and the id book were kept. Quiet once the node is a member; returns on `cancel`.
    pub async fn hint_while_outside(self, node: Arc<crate::node::Node>, cancel: CancellationToken) {
        let mut waited = Duration::ZERO;
        let mut next = Duration::from_secs(30);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => waited += Duration::from_secs(1),
            }
            if node.raft_view().nodes.iter().any(|(id, _, _)| *id == node.id) {
                // A supervised task that ends stops the node: this one idles until the end.
                return cancel.cancelled().await;
            }
            if waited >= next {
                next += Duration::from_secs(60);
                tracing::warn!(
                    node = node.id,
                    waited_s = waited.as_secs(),
                    "no cluster has added this node yet. If the cluster runs, its leader adds a node once the \
                     watch reports the pod's IP. If every pod waits like this, no pod has the cluster's state: \
                     to start over after deleting the volumes, delete the ConfigMaps {0}-bootstrap and {0}-ids \
                     too; to restart from one surviving volume, see `gm recover`",
                    self.settings.statefulset
                );
            }
        }
    }

    /// Marks `id` retired in the id book, unless its ordinal already moved past it. Done by the
    /// leader before it removes `id` from the cluster.
    pub async fn retire(&self, id: NodeId) -> Result<(), DiscoveryError> {
        let (mut book, found) = self.read_book().await.map_err(|e| DiscoveryError::Kubernetes(e.to_string()))?;
        let ordinal = ids::ordinal_of(id);
        let Some(claim) = book.get(ordinal).filter(|c| c.generation == ids::generation_of(id) && !c.retired) else {
            return Ok(());
        };
        let retired = ids::Claim { retired: true, ..claim.clone() };
        book.set(ordinal, retired);
        self.write_book(&book, found).await.map_err(|e| DiscoveryError::Kubernetes(e.to_string()))
    }

    /// The id book and the ConfigMap it was read from (`None`: there is none yet).
    pub async fn read_book(&self) -> Result<(Book, Option<ConfigMap>), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let found = api.get_opt(&self.settings.book_name()).await?;
        let book = found.as_ref().and_then(|cm| cm.data.as_ref()).map(Book::from_data).unwrap_or_default();
        Ok((book, found))
    }

    async fn read_book_retrying(&self) -> (Book, Option<ConfigMap>) {
        let mut backoff = Backoff::default();
        loop {
            match self.read_book().await {
                Ok(read) => return read,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the id book; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Writes `book` over `found` (the ConfigMap it was read from): a create if there was none,
    /// else a replace at `found`'s resourceVersion. Either fails with 409 if another node wrote
    /// first.
    async fn write_book(&self, book: &Book, found: Option<ConfigMap>) -> Result<(), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = self.settings.book_name();
        let mut cm = found.unwrap_or_else(|| ConfigMap {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            ..ConfigMap::default()
        });
        cm.data = Some(book.to_data());
        if cm.metadata.resource_version.is_some() {
            api.replace(&name, &PostParams::default(), &cm).await?;
        } else {
            api.create(&PostParams::default(), &cm).await?;
        }
        Ok(())
    }
}

fn spec_replicas(sts: &StatefulSet) -> u64 {
    // A StatefulSet without `spec.replicas` has one (the API server's default).
    sts.spec.replicas.map_or(1, |r| r.max(0) as u64)
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
/// `synced(true)` follows every successful list, `synced(false)` every failure.
async fn list_watch<K>(api: Api<K>, selector: Selector, mut apply: impl FnMut(Change<K>), synced: impl Fn(bool))
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
                synced(false);
                tracing::warn!(%kind, %error, "list failed; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        apply(Change::Reset(list.items));
        synced(true);
        'watch: loop {
            let events = match api.watch(&wp, &version).await {
                Ok(events) => events,
                Err(error) => {
                    synced(false);
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
                        synced(false);
                        if status.code == 410 {
                            tracing::info!(%kind, "watch too old (410); listing again");
                        } else {
                            tracing::warn!(%kind, code = status.code, message = %status.message, "watch error; listing again");
                            backoff.wait().await;
                        }
                        break 'watch;
                    }
                    Some(Err(error)) => {
                        synced(false);
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
        assert_eq!(settings("gm-cluster-2").ordinal().unwrap(), 2);
        let identity = settings("gm-cluster-2").identity(1003);
        assert_eq!(identity.id, 1003);
        assert_eq!(identity.advert.name, "gm-cluster-2");
        assert_eq!(identity.advert.api_address, "gm-cluster-2.gm-cluster-headless.ns.svc:8080");
        assert!(settings("other-2").ordinal().is_err());
        assert!(settings("gm-cluster-x").ordinal().is_err());
        assert!(settings("gm-cluster").ordinal().is_err());
        assert!(settings("gm-cluster-1000").ordinal().is_err());
    }

    #[test]
    fn initial_voters_by_stable_name() {
        let voters = settings("gm-cluster-0").initial_voters(3);
        assert_eq!(voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(voters[&3].peer_addr, "gm-cluster-2.gm-cluster-headless.ns.svc:7000");
        assert_eq!(voters[&1].name, "gm-cluster-0");
    }
}
