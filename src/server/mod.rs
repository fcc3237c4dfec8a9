//! `gm server`: opens the durable state, starts Raft, the peer and API listeners and the
//! background tasks, and stops them all on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
pub mod config;
pub mod recover;

use crate::config::DATA_DIR_LOCK;
use crate::discovery::identity::{self, Identity};
use crate::discovery::kubernetes::{self, Bootstrap, Kubernetes, Settled};
use crate::discovery::static_peers::{self, DiscoveryError};
use crate::discovery::{leader_lease, reconcile};
use crate::membership::NodeId;
use crate::metrics::Metrics;
use crate::node::leadership::{self, Duty};
use crate::node::{self, Node, NodeParts};
use crate::probe::check::Checker;
use crate::probe::lease::Leases;
use crate::probe::peer::ProbePeers;
use crate::probe::{self, handover, lease, prober, ProbeConfig};
use crate::raft::fence::{self, ClusterFence};
use crate::raft::log_store::{LogStore, LogStoreError};
use crate::raft::network::{PeerClient, PeerNetwork};
use crate::raft::peer::Voting;
use crate::raft::pre_vote::{Elections, LeaderContact};
use crate::raft::read_lease::ReadLease;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{self, vote_quarantine, Raft};
use crate::tasks::{TaskError, Tasks};
use crate::telemetry;
use config::{Discovery, LinearizableReads, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("{dir} is in use by another gm process; each node needs a data dir of its own")]
    DataDirInUse { dir: String },
    #[error("cannot lock {dir}: {source}")]
    DataDirLock { dir: String, source: std::io::Error },
    #[error("cannot read or record the leader lease this node promises in {dir}: {source}")]
    LeaderLease { dir: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot open the Raft log: {0}")]
    Log(#[from] LogStoreError),
    #[error("cannot discard the stale state in {dir}: {source}")]
    Discard { dir: String, source: std::io::Error },
    #[error("cannot open the state machine in {dir}: {source}")]
    StateMachine { dir: String, source: std::io::Error },
    #[error("cannot recover as {path} requests: {source}; remove that file to start without recovering")]
    Recover { path: String, source: crate::raft::recover::RecoverError },
    #[error("recovery request {path}: {source}")]
    RecoverRequest { path: String, source: std::io::Error },
    #[error("raft: {0}")]
    Raft(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot build an HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Runs a node until `shutdown` completes.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    // Checked before anything is touched: the data dir stays as it was.
    let raft_config = raft_config(&config)?;
    let discovery = discover(&config).await?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let metrics = Arc::new(Metrics::new(config.metrics_group_limit)?);
    let api_listener = listen(&config.api_addr).await?;
    let peer_listener = listen(&config.peer_addr).await?;

    let log_dir = config.data_dir.join("log");
    let mut log_store = LogStore::open(&log_dir)?;
    let Identity { id, advert } = match &discovery {
        Peers::Static(identity, _) => identity.clone(),
        Peers::Kubernetes(kube) => {
            let id = match kube.settle_identity(&config.data_dir, !log_store.is_blank()).await? {
                Settled::Resume(id) | Settled::Fresh(id) => id,
                Settled::Discard(_) => {
                    drop(log_store);
                    discard_state(&config.data_dir)?;
                    log_store = LogStore::open(&log_dir)?;
                    match kube.settle_identity(&config.data_dir, false).await? {
                        Settled::Fresh(id) | Settled::Resume(id) | Settled::Discard(id) => id,
                    }
                }
            };
            tracing::info!(node = id, pod = %kube.settings().pod_name, "kubernetes identity");
            kube.settings().identity(id)
        }
    };
    log_store.report_to(Arc::clone(&metrics));
    let sm_dir = config.data_dir.join("snapshot");
    let state_machine = StateMachineStore::open(&sm_dir)
        .map_err(|source| ServerError::StateMachine { dir: sm_dir.display().to_string(), source })?
        .with_metrics(Arc::clone(&metrics));
    let state = state_machine.handle();
    recover::apply_requested(&config.data_dir, id, &log_store, &state).await?;
    let fence = ClusterFence::default();
    let peer_client = match &discovery {
        Peers::Static(..) => PeerClient::new()?,
        Peers::Kubernetes(kube) => {
            let kube = kube.clone();
            PeerClient::with_resolver(Arc::new(move |host: &str| kube.resolve(host)))?
        }
    }
    .with_fence(fence.clone())
    .with_metrics(Arc::clone(&metrics));
    let read_lease = ReadLease::default();
    let restored = log_store.restored_leadership(id);
    let network = PeerNetwork::new(peer_client.clone(), read_lease.clone());
    // openraft's followers refuse votes for their longest election timeout (`leader_lease`).
    let leader_lease = std::time::Duration::from_millis(raft_config.election_timeout_max);
    let quarantine = vote_quarantine::begin(&config.data_dir, leader_lease)
        .map_err(|source| ServerError::LeaderLease { dir: config.data_dir.display().to_string(), source })?;
    let refuse_votes_until = quarantine.map(|wait| std::time::Instant::now() + wait);
    let timeouts = (std::time::Duration::from_millis(raft_config.election_timeout_min), leader_lease);
    let log = log_store.clone();
    let raft = Raft::new(id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    if let Some(wait) = quarantine {
        tracing::warn!(
            node = id,
            wait_ms = wait.as_millis() as u64,
            "this data dir's last process promised leaders a longer leader lease (a longer --election-timeout): \
             voting for no one until it has run out"
        );
    }
    // Raft has re-applied the committed log: a node with state knows its cluster before it talks.
    fence.learn(&state);

    if let Peers::Static(_, peers) = &discovery {
        if let Err(e) = static_peers::check_resumed(&raft, peers).await {
            let _ = raft.shutdown().await;
            return Err(e.into());
        }
    }

    let cancel = CancellationToken::new();
    let mut tasks = Tasks::default();
    let contact = LeaderContact::default();
    let parts = NodeParts {
        raft: raft.clone(),
        state: state.clone(),
        advert,
        peers: peer_client.clone(),
        request_timeout: config.request_timeout,
        read_lease: (config.linearizable_reads == LinearizableReads::Lease).then(|| read_lease.clone()),
        restored,
        leader_contact: (contact.clone(), leader_lease),
        metrics: Arc::clone(&metrics),
    };
    let (node, batchers) = Node::start(id, parts, cancel.clone());
    for batcher in batchers {
        tasks.spawn("batcher", async move {
            let _ = batcher.await;
        });
    }
    tasks.spawn("raft", raft_running(raft.clone()));
    let elections = Elections {
        raft: raft.clone(),
        log: log.clone(),
        me: id,
        peers: peer_client,
        contact: contact.clone(),
        timeout: timeouts,
        started: tokio::time::Instant::now(),
        metrics: Arc::clone(&metrics),
    };
    let (dir, elections_cancel) = (config.data_dir.clone(), cancel.clone());
    tasks.spawn("elections", async move {
        if let Some(wait) = quarantine {
            tokio::time::sleep(wait).await;
            // Until the shorter lease is on disk, a restart must wait out the longer one again.
            while let Err(error) = vote_quarantine::end(&dir, leader_lease) {
                tracing::error!(%error, "cannot record this node's leader lease; it starts no election until it can");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = elections_cancel.cancelled() => return,
                }
            }
            tracing::info!("the longer leader lease has run out: voting again");
        }
        elections.run(elections_cancel).await;
    });
    tasks.spawn(
        "snapshot trigger",
        raft::compaction::run(raft.clone(), state.clone(), config.snapshot_every_commands, cancel.clone()),
    );
    let leases = Arc::new(Leases::default());
    let app =
        Arc::new(AppState { node: Arc::clone(&node), metrics: Arc::clone(&metrics), leases: Arc::clone(&leases) });

    let probe = ProbeConfig {
        interval: config.probe_interval,
        timeout: config.probe_timeout,
        suspect_after: config.suspect_after,
    };
    let checker = Checker::new(probe.timeout)?;
    let probe_peers = ProbePeers { node: Arc::clone(&node), checker: checker.clone(), leases: Arc::clone(&leases) };
    let voting = Voting { leader_lease, refuse_votes_until, contact, log };
    let peer_routes = raft::peer::router(raft.clone(), id, read_lease, voting)
        .merge(node::peer::router(Arc::clone(&node)))
        .merge(probe::peer::router(Arc::new(probe_peers)))
        .layer(axum::middleware::from_fn_with_state(fence.clone(), fence::check))
        .layer(axum::middleware::from_fn_with_state(id, telemetry::peer_span));
    tasks.spawn("prober", prober::run(Arc::clone(&node), probe, checker, Arc::clone(&metrics), cancel.clone()));
    tasks.spawn("API listener", serve(api_listener, api::router(app), cancel.clone()));
    tasks.spawn("advert", Arc::clone(&node).keep_advert(cancel.clone()));
    let duties = leader_duties(&node, probe, &leases, &metrics, &discovery);
    tasks.spawn("leadership", leadership::run(Arc::clone(&node), duties, cancel.clone()));
    tracing::info!(
        node = id,
        api = %config.api_addr,
        peer = %config.peer_addr,
        data_dir = %config.data_dir.display(),
        // As the flag spells it (`lease`, `read-index`), not as Rust's Debug would.
        linearizable_reads = %clap::ValueEnum::to_possible_value(&config.linearizable_reads).as_ref().map_or("", |v| v.get_name()),
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "gm server started"
    );

    if let Peers::Kubernetes(kube) = &discovery {
        tasks.spawn("pod watch", kube.clone().watch_pods(cancel.clone()));
        tasks.spawn("statefulset watch", kube.clone().watch_statefulset(cancel.clone()));
        tasks.spawn("membership hint", kube.clone().hint_while_outside(Arc::clone(&node), cancel.clone()));
    }

    let mut shutdown = std::pin::pin!(shutdown);
    let bootstrap = async {
        match &discovery {
            Peers::Static(_, peers) => static_peers::bootstrap(&raft, id, peers).await.map(|()| Bootstrap::TakePart),
            Peers::Kubernetes(kube) => kube.bootstrap(&raft, id, &config.data_dir).await,
        }
    };
    // Peers are served only once bootstrap has decided: a node that must stay out of Raft
    // (ordinal 0 after its disk was lost) never answers a vote or an append.
    let stopped_early = tokio::select! {
        result = bootstrap => match result {
            Ok(Bootstrap::TakePart) => {
                tasks.spawn("cluster fence", fence.follow(state, cluster_id_hint(&discovery), cancel.clone()));
                tasks.spawn("peer listener", serve(peer_listener, peer_routes, cancel.clone()));
                false
            }
            Ok(Bootstrap::StayOut) => {
                // Closed, so peers are refused at once rather than left waiting on the backlog.
                drop(peer_listener);
                false
            }
            Err(e) => {
                cancel.cancel();
                let _ = raft.shutdown().await;
                tasks.join_all().await;
                return Err(e.into());
            }
        },
        () = &mut shutdown => true,
        failed = tasks.first_end() => return stop(id, cancel, raft, tasks, Some(failed)).await,
    };
    let failed = if stopped_early {
        None
    } else {
        tokio::select! {
            () = &mut shutdown => None,
            failed = tasks.first_end() => Some(failed),
        }
    };
    if let (None, Peers::Kubernetes(kube)) = (&failed, &discovery) {
        tokio::select! {
            () = hold_while_scaled_away(&node, kube, config.kubernetes.scale_down_wait) => {}
            _ = tasks.first_end() => {}
        }
    }
    stop(id, cancel, raft, tasks, failed).await
}

/// On SIGTERM of a pod being scaled away (its ordinal at or above `spec.replicas`, which is not
/// 0) that is still in the Raft membership: keeps serving until the leader has removed it, at
/// most `wait`. The StatefulSet stops every pod it scales away at once; were they all to stop at
/// once, a scale-down of a majority (3 to 1, 5 to 2) would leave no quorum to remove them. SIGTERM
/// stays a clean stop, never a leave: the leader decides, one voter at a time.
async fn hold_while_scaled_away(node: &Node, kube: &Kubernetes, wait: std::time::Duration) {
    let ordinal = crate::discovery::ids::ordinal_of(node.id);
    let deadline = tokio::time::Instant::now() + wait;
    // Asked now, not as watched: the StatefulSet's SIGTERM may come before the watch's news.
    let replicas = kube.current_replicas().await;
    let scaled_away = replicas.is_some_and(|replicas| replicas > 0 && ordinal >= replicas);
    let mut said = false;
    loop {
        // A node removed may never see the final configuration (the leader stops replicating to
        // it), so the leader's membership says it too.
        let members = node.voter_set();
        let listed = members.voters.contains(&node.id) || members.learners.contains(&node.id);
        let removed = !listed || node.health().await.is_some_and(|nodes| !nodes.contains_key(&node.id));
        if !scaled_away || removed {
            if said {
                tracing::info!(node = node.id, "removed from the cluster; stopping");
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(node = node.id, waited = ?wait, "scaled away but still in the cluster; stopping anyway");
            return;
        }
        if !said {
            tracing::info!(node = node.id, "scaled away: serving until the leader removes this node");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Stops every task and Raft; the node's result is `failed`, if a task ended on its own.
async fn stop(
    id: NodeId,
    cancel: CancellationToken,
    raft: Raft,
    mut tasks: Tasks,
    failed: Option<TaskError>,
) -> Result<(), ServerError> {
    match &failed {
        None => tracing::info!(node = id, "shutting down"),
        Some(error) => tracing::error!(node = id, %error, "stopping the node"),
    }
    cancel.cancel();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    tasks.join_all().await;
    failed.map_or(Ok(()), |e| Err(e.into()))
}

/// How this node finds its peers.
enum Peers {
    /// This node's identity from its flags, and `--peers`: every initial voter's peer address.
    Static(Identity, BTreeMap<NodeId, String>),
    /// The StatefulSet's pods, through the Kubernetes API.
    Kubernetes(Kubernetes),
}

/// Decides how this node finds its peers and, with static discovery, who it is (with
/// Kubernetes discovery that needs the data dir and the id book: see `run`).
async fn discover(config: &ServerConfig) -> Result<Peers, ServerError> {
    match config.discovery {
        Discovery::Static => {
            let Identity { id, advert } = identity::decide(&identity::Flags {
                node_id: config.node_id,
                name: config.name.as_deref(),
                advertise_api: config.advertise_api.as_deref(),
                api_addr: &config.api_addr,
            })?;
            let peers = static_peers::parse_peers(config.peers.as_deref().unwrap_or_default(), id)?;
            if let Some(mine) = config.advertise_peer.as_deref().filter(|a| peers.get(&id).is_some_and(|p| p != a)) {
                return Err(ServerError::Config(format!(
                    "--advertise-peer {mine} differs from this node's entry in --peers"
                )));
            }
            let port = |addr: &str| addr.rsplit_once(':').map(|(_, port)| port.to_owned());
            if let Some(entry) = peers.get(&id).filter(|entry| port(entry) != port(&config.peer_addr)) {
                return Err(ServerError::Config(format!(
                    "--peer-addr {} listens on another port than this node's entry in --peers, {entry}",
                    config.peer_addr
                )));
            }
            Ok(Peers::Static(Identity { id, advert }, peers))
        }
        Discovery::Kubernetes => {
            let settings = kubernetes_settings(config)?;
            settings.ordinal()?;
            if config.node_id.is_some() {
                return Err(ServerError::Config(
                    "--node-id is not used with kubernetes discovery: the id is the pod's ordinal and the generation \
                     of its disk"
                        .into(),
                ));
            }
            let kube = Kubernetes::connect(settings).await?;
            tracing::info!(pod = %kube.settings().pod_name, pod_ip = ?config.kubernetes.pod_ip, "kubernetes discovery");
            Ok(Peers::Kubernetes(kube))
        }
    }
}

/// The settings of `--discovery kubernetes`; a missing flag is an error that names it.
fn kubernetes_settings(config: &ServerConfig) -> Result<kubernetes::Settings, ServerError> {
    let k = &config.kubernetes;
    let required = |value: &Option<String>, flag: &str, env: &str| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ServerError::Config(format!("--discovery kubernetes needs {flag} (or {env})")))
    };
    for (flag, given) in [
        ("--peers", config.peers.is_some()),
        ("--advertise-api", config.advertise_api.is_some()),
        ("--advertise-peer", config.advertise_peer.is_some()),
        ("--name", config.name.is_some()),
    ] {
        if given {
            return Err(ServerError::Config(format!("{flag} is not used with kubernetes discovery: the pod decides")));
        }
    }
    let port = |addr: &str, flag: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| ServerError::Config(format!("{flag} {addr} has no port")))
    };
    Ok(kubernetes::Settings {
        pod_name: required(&k.pod_name, "--pod-name", "GM_POD_NAME")?,
        namespace: required(&k.namespace, "--namespace", "GM_NAMESPACE")?,
        statefulset: required(&k.statefulset, "--statefulset", "GM_STATEFULSET")?,
        service: required(&k.service, "--service", "GM_SERVICE")?,
        pod_selector: required(&k.pod_selector, "--pod-selector", "GM_POD_SELECTOR")?,
        api_port: port(&config.api_addr, "--api-addr")?,
        peer_port: port(&config.peer_addr, "--peer-addr")?,
    })
}

/// Deletes the Raft log, the snapshots and the bootstrap claim of an id that was retired or
/// replaced; the node id file stays until a new id is claimed over it.
fn discard_state(data_dir: &std::path::Path) -> Result<(), ServerError> {
    let failed = |source| ServerError::Discard { dir: data_dir.display().to_string(), source };
    for dir in ["log", "snapshot"] {
        match std::fs::remove_dir_all(data_dir.join(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
    }
    match std::fs::remove_file(data_dir.join(kubernetes::CLAIM_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(failed)
}

/// What this node does only while it leads: hand members of dead nodes over, expire leases,
/// name the cluster, and with Kubernetes discovery keep the voters equal to the StatefulSet.
fn leader_duties(
    node: &Arc<Node>,
    probe: ProbeConfig,
    leases: &Arc<Leases>,
    metrics: &Arc<Metrics>,
    discovery: &Peers,
) -> Vec<Duty> {
    let handover: Duty = {
        let node = Arc::clone(node);
        Box::new(move |_, cancel| Box::pin(handover::run(Arc::clone(&node), probe, cancel)))
    };
    let expiry: Duty = {
        let (node, leases, metrics) = (Arc::clone(node), Arc::clone(leases), Arc::clone(metrics));
        Box::new(move |term, cancel| {
            Box::pin(lease::run_expiry(Arc::clone(&node), Arc::clone(&leases), Arc::clone(&metrics), term, cancel))
        })
    };
    let naming: Duty = {
        let node = Arc::clone(node);
        match discovery {
            Peers::Static(..) => {
                Box::new(move |_, cancel| Box::pin(leadership::name_cluster(Arc::clone(&node), cancel)))
            }
            Peers::Kubernetes(kube) => {
                let kube = kube.clone();
                Box::new(move |_, cancel| Box::pin(name_cluster_from_marker(Arc::clone(&node), kube.clone(), cancel)))
            }
        }
    };
    let mut duties = vec![handover, expiry, naming];
    if let Peers::Kubernetes(kube) = discovery {
        let (node, kube) = (Arc::clone(node), kube.clone());
        let (lease_node, lease_kube) = (Arc::clone(&node), kube.clone());
        duties.push(Box::new(move |_, cancel| Box::pin(reconcile::run(Arc::clone(&node), kube.clone(), cancel))));
        duties.push(Box::new(move |_, cancel| {
            Box::pin(leader_lease::run(Arc::clone(&lease_node), lease_kube.clone(), cancel))
        }));
    }
    duties
}

/// The naming duty with Kubernetes discovery: the cluster takes the id its bootstrap marker
/// records, so `/v1/cluster` and the marker ConfigMap agree.
async fn name_cluster_from_marker(node: Arc<Node>, kube: Kubernetes, cancel: CancellationToken) {
    if node.state.read().state.cluster_id().is_some() {
        return;
    }
    let marked = tokio::select! {
        () = cancel.cancelled() => return,
        marked = kube.marker_cluster_id() => marked,
    };
    let Some(cluster_id) = marked else {
        tracing::warn!("the cluster has no bootstrap marker; naming it with a new id");
        return leadership::name_cluster(node, cancel).await;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    while node.state.read().state.cluster_id().is_none() {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let command = crate::membership::Command::InitCluster { cluster_id: cluster_id.clone() };
        if let Err(error) = node.write_local(command).await {
            tracing::debug!(%error, "naming the cluster failed; will retry");
        }
    }
}

/// Where the cluster id may be read before this node applies it: with Kubernetes discovery, the
/// bootstrap marker, which exists once bootstrap has decided.
fn cluster_id_hint(discovery: &Peers) -> BoxFuture<'static, Option<String>> {
    match discovery {
        Peers::Static(..) => futures::future::ready(None).boxed(),
        Peers::Kubernetes(kube) => {
            let kube = kube.clone();
            async move { kube.marker_cluster_id().await }.boxed()
        }
    }
}

/// Completes when Raft stops on a fatal error (a storage failure), which must stop the node.
async fn raft_running(raft: Raft) {
    let mut metrics = raft.metrics();
    let _ = metrics.wait_for(|m| m.running_state.is_err()).await;
}

/// Locks the data dir for this process's life (the lock goes with the returned file): two
/// processes writing one Raft log corrupt it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let failed = |source| ServerError::DataDirLock { dir: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(DATA_DIR_LOCK))
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::DataDirInUse { dir: dir.display().to_string() }),
        Err(std::fs::TryLockError::Error(source)) => Err(failed(source)),
    }
}

async fn listen(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { addr: addr.to_owned(), source })
}

/// Serves `router` on `listener` until `cancel`, letting requests in flight finish. Handlers
/// may read the caller's address (`ConnectInfo<SocketAddr>`).
async fn serve(listener: TcpListener, router: axum::Router, cancel: CancellationToken) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, service).with_graceful_shutdown(cancel.cancelled_owned()).await;
    if let Err(error) = result {
        tracing::error!(%error, "listener failed");
    }
}

fn raft_config(config: &ServerConfig) -> Result<Arc<openraft::Config>, ServerError> {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let election = ms(config.election_timeout);
    let heartbeat = ms(config.heartbeat_interval);
    if heartbeat == 0 || election <= heartbeat {
        return Err(ServerError::Config(format!(
            "--election-timeout ({election} ms) must be longer than --heartbeat-interval ({heartbeat} ms), \
             which must be at least 1 ms: a follower would give up on a leader between its heartbeats"
        )));
    }
    let raft = openraft::Config {
        cluster_name: "gm".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // Each entry is a batch of up to `WRITE_BATCH` commands, and openraft gives an
        // AppendEntries one heartbeat interval: keep a catching-up follower's payloads small.
        max_payload_entries: 8,
        // Off from the first tick: pre-vote (`raft::pre_vote::Elections`) decides when it runs.
        enable_elect: false,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 30_000,
        ..Default::default()
    };
    raft.validate().map(Arc::new).map_err(|e| ServerError::Config(e.to_string()))
}
