//! A GM node as the API sees it: writes that reach the leader from any node, linearizable
//! reads by the leader's read lease or by read-index (batched, never a log write), and what the
//! node knows of the cluster.
//! The Raft handle is private: the rest of gm asks the node, never Raft itself.

mod batcher;
pub mod leadership;
pub mod peer;
pub mod voters;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use std::sync::Weak;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::membership::{Command, NodeAdvert, NodeId};
use crate::metrics::{Metrics, RaftFigures};
use crate::raft::network::{PeerClient, PeerError};
use crate::raft::pre_vote::LeaderContact;
use crate::raft::read_lease::{self, Leadership, ReadLease};
use crate::raft::state_machine::StateHandle;
use crate::raft::{Applied, Batch, NodeInfo, Raft, RaftMetrics, StoredMembership};
use batcher::{Batcher, Limits};

/// Why a write or a linearizable read could not be served now. Retrying later may succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    #[error("no leader is known")]
    NoLeader,
    #[error("this node is not the leader")]
    NotLeader,
    #[error("timed out waiting for the leader and a quorum")]
    Timeout,
    /// A forwarded write was abandoned because another node took over as leader meanwhile;
    /// the old leader may still have committed it.
    #[error("the leader changed while the write was on its way; it may or may not have been applied")]
    LeaderMoved,
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    #[error("this node is shutting down")]
    ShuttingDown,
}

impl From<PeerError> for NodeError {
    fn from(e: PeerError) -> Self {
        NodeError::Unavailable(e.to_string())
    }
}

/// How long a follower waits for the leader's view of the nodes' health.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a node without a live leader looks again while a request waits for one.
const LEADER_RECHECK: Duration = Duration::from_millis(50);

pub use crate::wire::NodeHealth;

/// A batcher whose batches `serve` answers on the node while it lives. It holds the node
/// weakly: the node owns its batchers, they must not keep it alive.
fn node_batcher<Req, T, F, Fut>(
    me: &Weak<Node>,
    limits: Limits<Req>,
    cancel: &CancellationToken,
    serve: F,
) -> (Batcher<Req, Result<T, NodeError>>, JoinHandle<()>)
where
    Req: Send + 'static,
    T: Clone + Send + 'static,
    F: Fn(Arc<Node>, Vec<Req>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<Result<T, NodeError>>> + Send + 'static,
{
    let me = me.clone();
    Batcher::start(limits, cancel.clone(), move |batch: Vec<Req>| {
        let me = me.clone();
        async move {
            match me.upgrade() {
                Some(node) => serve(node, batch).await,
                None => vec![Err(NodeError::ShuttingDown); batch.len()],
            }
        }
    })
}

fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => NodeError::NotLeader,
        RaftError::APIError(e) => NodeError::Unavailable(e.to_string()),
        RaftError::Fatal(_) => NodeError::ShuttingDown,
    }
}

/// The span of a write of `command` on node `node`, named by the command, with its group and
/// member if it has them.
fn write_span(node: NodeId, command: &Command) -> tracing::Span {
    match command {
        Command::Join { group, id, .. } => {
            tracing::info_span!("write", op = "join", node, group = %group, member = %id)
        }
        Command::Leave { group, id, reason, .. } => {
            tracing::info_span!("write", op = "leave", node, group = %group, member = %id, reason = ?reason)
        }
        Command::InitCluster { .. } => tracing::info_span!("write", op = "init_cluster", node),
        Command::SetProbers { .. } => tracing::info_span!("write", op = "set_probers", node),
        Command::AdvertiseNode { .. } => tracing::info_span!("write", op = "advertise_node", node),
    }
}

/// The leader as this node sees it.
#[derive(Clone, Debug)]
pub struct Leader {
    pub id: NodeId,
    pub info: NodeInfo,
}

/// What this node's Raft knows of the cluster, read at one instant.
#[derive(Clone, Debug)]
pub struct RaftView {
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The log index applied to the state last (0 before any).
    pub applied_index: u64,
    /// Every node of the membership: its addresses, and whether it is a voter (else a learner).
    pub nodes: Vec<(NodeId, NodeInfo, bool)>,
}

impl RaftView {
    /// The voters, with their peer addresses.
    pub fn voters(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.nodes.iter().filter(|(_, _, voter)| *voter).map(|(id, info, _)| (*id, info.peer_addr.as_str()))
    }

    /// The peer address of node `id`, if it is in the membership.
    pub fn peer_addr(&self, id: NodeId) -> Option<&str> {
        self.nodes.iter().find(|(n, _, _)| *n == id).map(|(_, info, _)| info.peer_addr.as_str())
    }
}

/// Forwarded write batches a follower has on the way to the leader at once; a batch holds about
/// 64 KiB of commands, as a proposal does, so that one forward fills at most one log entry.
/// One: writes queue while a forward travels and all go in the next, so a forward carries
/// what arrived in a whole commit round. With four in flight a forward held about five joins
/// under `gm bench`, and the forwards' HTTP calls cost the cluster 7% more CPU per join for
/// the same throughput and latency (a lone write still goes at once).
const FORWARDS: Limits<Command> = Limits { weight: 64 * 1024, weigh: Command::approx_bytes, in_flight: 1 };
/// Proposals the leader has in its log pipeline at once; a proposal (one log entry) holds about
/// 64 KiB of commands, so that openraft's per-AppendEntries deadline (one heartbeat interval)
/// holds for a follower catching up. Two: one entry fills while the other commits. An entry
/// costs the same whatever it holds (an fsync on every node, an append RPC per follower, turns
/// of Raft's loop), and with four in flight entries stayed small (about ten joins) and the
/// leader fsynced once per entry.
const PROPOSALS: Limits<Command> = Limits { in_flight: 2, ..FORWARDS };
/// Read-index rounds: one at a time, each serving every reader queued.
const READS: Limits<()> = Limits { weight: usize::MAX, weigh: |_| 0, in_flight: 1 };

type WriteBatcher = Batcher<Command, Result<Applied, NodeError>>;

/// One GM node: its Raft handle, its applied state, and its way to the leader.
pub struct Node {
    pub id: NodeId,
    raft: Raft,
    pub state: StateHandle,
    pub advert: NodeAdvert,
    peers: PeerClient,
    request_timeout: Duration,
    /// The leader's read lease, when reads may use it (`--linearizable-reads lease`).
    read_lease: Option<ReadLease>,
    /// The leadership this node held when it stopped, if it starts as its leader again, and
    /// the last index of its log then.
    restored: Option<(Leadership, u64)>,
    /// When this node last heard from a leader, and for how long after that it counts the
    /// leader as live (its `leader_lease`).
    leader_contact: (LeaderContact, Duration),
    /// Read-index rounds, one at a time: a reader waits for a round that starts after it came.
    reads: Batcher<(), Result<u64, NodeError>>,
    /// The leader's quorum rounds, one at a time, shared by its own readers and every
    /// follower's forwarded round: one heartbeat round then serves the whole cluster's readers.
    leader_reads: Batcher<(), Result<u64, NodeError>>,
    /// Writes this node forwards to the leader.
    forwards: WriteBatcher,
    /// Writes this node, as leader, appends to the log: many commands per entry.
    proposals: WriteBatcher,
    /// Cancelled when the node shuts down: long waits (watches, blocking queries) end with it.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
}

/// What [`Node::start`] builds a node from.
pub struct NodeParts {
    pub raft: Raft,
    pub state: StateHandle,
    pub advert: NodeAdvert,
    pub peers: PeerClient,
    pub request_timeout: Duration,
    pub read_lease: Option<ReadLease>,
    /// See [`crate::raft::log_store::LogStore::restored_leadership`].
    pub restored: Option<(Leadership, u64)>,
    /// Where the Raft routes record that a leader was heard from, and openraft's `leader_lease`.
    pub leader_contact: (LeaderContact, Duration),
    pub metrics: Arc<Metrics>,
}

impl Node {
    /// Creates the node and starts its batchers, which stop with `cancel`.
    pub fn start(id: NodeId, parts: NodeParts, cancel: CancellationToken) -> (Arc<Node>, Vec<JoinHandle<()>>) {
        let NodeParts { raft, state, advert, peers, request_timeout, read_lease, restored, leader_contact, metrics } =
            parts;
        let mut tasks = Vec::new();
        let node = Arc::new_cyclic(|me: &Weak<Node>| {
            let (reads, task) = node_batcher(me, READS, &cancel, |node, waiters: Vec<()>| async move {
                let result = node.read_index_round().await;
                vec![result; waiters.len()]
            });
            tasks.push(task);
            let (leader_reads, task) = node_batcher(me, READS, &cancel, |node, waiters: Vec<()>| async move {
                let result = node.confirm_read_index().await;
                vec![result; waiters.len()]
            });
            tasks.push(task);
            let (forwards, task) =
                node_batcher(me, FORWARDS, &cancel, |node, commands| async move { node.send_writes(commands).await });
            tasks.push(task);
            let (proposals, task) =
                node_batcher(me, PROPOSALS, &cancel, |node, commands| async move { node.propose(commands).await });
            tasks.push(task);
            Node {
                id,
                raft,
                state,
                advert,
                peers,
                request_timeout,
                read_lease,
                restored,
                leader_contact,
                reads,
                leader_reads,
                forwards,
                proposals,
                shutdown: cancel.clone(),
                metrics,
            }
        });
        (node, tasks)
    }

    /// The leader this node knows of, with its addresses.
    pub fn leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = self.live_leader(&m)?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some(Leader { id, info })
    }

    /// What Raft knows of the cluster now.
    pub fn raft_view(&self) -> RaftView {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let nodes =
            membership.nodes().map(|(&id, info)| (id, info.clone(), membership.voter_ids().any(|v| v == id))).collect();
        RaftView {
            term: m.current_term,
            leader: self.live_leader(&m),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            nodes,
        }
    }

    /// How many voters this node's latest Raft RPC to them found unreachable (a node without a
    /// leader asks every voter for its vote), and how many voters there are, this node included.
    pub fn unreachable_voters(&self) -> (usize, usize) {
        let view = self.raft_view();
        let contacts = self.peers.contacts();
        let voters: Vec<NodeId> = view.voters().map(|(id, _)| id).collect();
        let unreachable =
            voters.iter().filter(|&&id| id != self.id && contacts.get(id).is_some_and(|c| !c.reachable)).count();
        (unreachable, voters.len())
    }

    /// The current term, if this node leads in it.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// How long a write or a linearizable read may take before it answers 503.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// Runs `local` if this node leads, else sends `request` to the leader's peer `path`, whose
    /// handler runs the leader's half and answers its result; asks the new leader if leadership
    /// moves meanwhile; 503-worthy errors after the request timeout. For requests that are safe
    /// to repeat (reads, lease renewals): a call to a leader that moved on may be sent again.
    /// `kind` labels the forwarded requests in `gm_forwarded_requests_total`.
    pub async fn at_leader<Req, Resp, L, LFut>(
        &self,
        path: &str,
        kind: &'static str,
        request: &Req,
        local: L,
    ) -> Result<Resp, NodeError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        L: Fn() -> LFut,
        LFut: std::future::Future<Output = Result<Resp, NodeError>>,
    {
        self.on_leader(kind, local, |leader, left| self.call(leader, path, request, left)).await
    }

    /// Commits `command` through the leader, wherever it is, within the request timeout.
    pub async fn write(&self, command: Command) -> Result<Applied, NodeError> {
        let span = write_span(self.id, &command);
        self.on_leader("write", || self.write_local(command.clone()), |_, _| self.forward_write(command.clone()))
            .instrument(span)
            .await
    }

    /// Runs `local` if this node leads, else `remote` with the leader and the time left; again
    /// if leadership moved meanwhile; 503-worthy errors after the request timeout. Each call of
    /// `remote` counts as a request of `kind` forwarded to the leader.
    async fn on_leader<Resp, L, LFut, R, RFut>(
        &self,
        kind: &'static str,
        local: L,
        remote: R,
    ) -> Result<Resp, NodeError>
    where
        L: Fn() -> LFut,
        LFut: std::future::Future<Output = Result<Resp, NodeError>>,
        R: Fn(Leader, Duration) -> RFut,
        RFut: std::future::Future<Output = Result<Resp, NodeError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        tokio::time::timeout_at(deadline, async {
            loop {
                let leader = self.wait_for_leader(deadline).await?;
                let result = if leader.id == self.id {
                    local().await
                } else {
                    self.metrics.forwarded_requests.with_label_values(&[kind]).inc();
                    remote(leader, deadline.saturating_duration_since(Instant::now())).await
                };
                match result {
                    // Leadership moved while the request travelled: ask again.
                    Err(NodeError::NotLeader | NodeError::NoLeader) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or(Err(NodeError::Timeout))
    }

    /// A peer call to the leader whose answer is a node result. The call is abandoned (as
    /// `NotLeader`, so [`Node::on_leader`] asks the new leader) as soon as this node sees another
    /// leader: a leader that was frozen (SIGSTOP, a long GC pause, a stuck disk) keeps its
    /// connections open and answers nothing, and must not hold up requests a new leader can serve.
    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: Leader,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, NodeError> {
        tokio::select! {
            answer = self.peers.call::<_, Result<Resp, NodeError>>(&leader.info.peer_addr, path, request, timeout) => answer?,
            () = self.leader_moved_from(leader.id) => Err(NodeError::NotLeader),
        }
    }

    /// Completes when this node no longer takes `leader` for the leader (or Raft stopped).
    async fn leader_moved_from(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
    }

    /// Hands `command` to the forward batcher, which sends it to the leader with others.
    async fn forward_write(&self, command: Command) -> Result<Applied, NodeError> {
        self.forwards.submit(command).await.unwrap_or(Err(NodeError::ShuttingDown))
    }

    /// Sends one batch of forwarded writes to the leader.
    async fn send_writes(&self, commands: Vec<Command>) -> Vec<Result<Applied, NodeError>> {
        let n = commands.len();
        let answers = match self.leader() {
            None => Err(NodeError::NoLeader),
            Some(leader) if leader.id == self.id => Err(NodeError::NotLeader),
            Some(leader) => {
                let span =
                    tracing::info_span!("forward", otel.kind = "client", node = self.id, leader = leader.id, size = n);
                let send = self
                    .peers
                    .call::<_, Vec<Result<Applied, NodeError>>>(
                        &leader.info.peer_addr,
                        peer::path::WRITES,
                        &commands,
                        self.request_timeout,
                    )
                    .instrument(span);
                // Not retried at the new leader: the old one may have committed the batch, and
                // a repeated leave would then answer 404 for a leave that happened.
                tokio::select! {
                    answers = send => answers.map_err(NodeError::from),
                    () = self.leader_moved_from(leader.id) => Err(NodeError::LeaderMoved),
                }
            }
        };
        match answers {
            Ok(answers) if answers.len() == n => answers,
            Ok(_) => vec![Err(NodeError::Unavailable("the leader answered a batch of another size".into())); n],
            Err(e) => vec![Err(e); n],
        }
    }

    /// Appends one batch of commands to the log as a single entry, and waits until it is applied.
    async fn propose(&self, commands: Vec<Command>) -> Vec<Result<Applied, NodeError>> {
        let n = commands.len();
        let metrics = &self.metrics;
        metrics.proposal_batch_size.observe(n as f64);
        metrics.proposals_pending.add(n as i64);
        // Until the entry is applied here, the leader: its append, replication and commit.
        let span = tracing::info_span!(
            "propose",
            node = self.id,
            size = n,
            term = tracing::field::Empty,
            index = tracing::field::Empty
        );
        let write = self.raft.client_write(Batch(commands.into())).instrument(span.clone());
        // Bounded, so a leader cut off from its quorum frees its proposal slots; the entry may
        // still commit later, as the contract allows for a write that got 503.
        let written = tokio::time::timeout(self.request_timeout, write).await;
        if let Ok(Ok(resp)) = &written {
            span.record("term", resp.log_id.leader_id.term).record("index", resp.log_id.index);
        }
        let answers = match written {
            Ok(Ok(resp)) if resp.data.len() == n => resp.data.into_iter().map(Ok).collect(),
            Ok(Ok(_)) => vec![Err(NodeError::Unavailable("a batch applied to another number of outcomes".into())); n],
            Ok(Err(e)) => vec![Err(client_write_error(e)); n],
            Err(_) => vec![Err(NodeError::Timeout); n],
        };
        metrics.proposals_pending.sub(n as i64);
        let committed = answers.iter().filter(|a| a.is_ok()).count();
        metrics.proposals_committed.inc_by(committed as u64);
        metrics.proposals_failed.inc_by((n - committed) as u64);
        answers
    }

    /// The leader's half of forwarded writes.
    pub async fn write_local_many(&self, commands: Vec<Command>) -> Vec<Result<Applied, NodeError>> {
        futures::future::join_all(commands.into_iter().map(|c| self.write_local(c))).await
    }

    /// Proposes `command` on this node, which must be the leader, batched with others.
    pub async fn write_local(&self, command: Command) -> Result<Applied, NodeError> {
        self.proposals.submit(command).await.unwrap_or(Err(NodeError::ShuttingDown))
    }

    /// Makes the local state at least as new as every write acknowledged before this call, and
    /// returns the revision it then has. Concurrent callers share one round to the leader.
    pub async fn linearize(&self) -> Result<u64, NodeError> {
        let deadline = Instant::now() + self.request_timeout;
        self.linearize_until(deadline).await
    }

    /// Like [`Node::linearize`], with a caller's deadline.
    pub async fn linearize_until(&self, deadline: Instant) -> Result<u64, NodeError> {
        tokio::time::timeout_at(deadline, async {
            let index = match self.leased_read_index() {
                Some(index) => index,
                None => self.reads.submit(()).await.unwrap_or(Err(NodeError::ShuttingDown))?,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !self.state.wait_applied(index, remaining).await {
                return Err(NodeError::Timeout);
            }
            Ok(self.state.revision())
        })
        .await
        .unwrap_or(Err(NodeError::Timeout))
    }

    /// The leader's half of a read-index round: confirms leadership with a quorum and returns
    /// the index a reader must have applied. Concurrent callers (this node's readers and the
    /// rounds followers forward) share one quorum round that starts after they called.
    pub async fn local_read_index(&self) -> Result<u64, NodeError> {
        if let Some(index) = self.leased_read_index() {
            return Ok(index);
        }
        self.leader_reads.submit(()).await.unwrap_or(Err(NodeError::ShuttingDown))
    }

    /// The leader's read index without a round, while it holds the read lease
    /// ([`ReadLease::floor`]): its applied index, which holds every write it acknowledged (it
    /// answers a write once applied), and at least the read index of the quorum round that
    /// confirmed this leadership, which covers what earlier leaders committed. `None` otherwise,
    /// or on a follower.
    fn leased_read_index(&self) -> Option<u64> {
        let lease = self.read_lease.as_ref()?;
        let (leadership, membership) = self.leadership()?;
        let configs = membership.membership().get_joint_config();
        let floor = lease.floor(self.id, leadership, configs, read_lease::now())?;
        self.metrics.read_indexes.with_label_values(&["lease"]).inc();
        Some(floor.max(self.state.applied_index()))
    }

    /// This node's leadership and its membership (shared, not copied: every leased read asks),
    /// if its metrics say it leads.
    fn leadership(&self) -> Option<(Leadership, Arc<StoredMembership>)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leads = m.state == ServerState::Leader && m.current_leader == Some(self.id) && m.vote.is_committed();
        leads.then(|| (m.vote.leader_id, Arc::clone(&m.membership_config)))
    }

    /// One quorum round (Raft's ReadIndex, Ongaro's thesis §6.4): the commit index when it
    /// starts, once a majority confirmed this node still leads.
    async fn confirm_read_index(&self) -> Result<u64, NodeError> {
        let start = self.read_lease.as_ref().map(ReadLease::round_begins);
        let before = self.leadership().map(|(leadership, _)| leadership);
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => {
                self.metrics.read_indexes.with_label_values(&["round"]).inc();
                let after = self.leadership().map(|(leadership, _)| leadership);
                let mut index = read_log_id.map_or(0, |id| id.index);
                // A leader restored at start leads the term it led before it stopped: openraft's
                // read index is then no later than its first entry of that term and the commit
                // point it saved, which may miss writes acknowledged just before the stop (the
                // log saves it without waiting). All of its log commits in this term.
                if let Some((restored, last)) = self.restored {
                    if before == Some(restored) || after == Some(restored) {
                        index = index.max(last);
                    }
                }
                // The round ran in a leadership between the two the metrics showed around it.
                if let (Some(lease), Some(start), Some(leadership)) = (&self.read_lease, start, before) {
                    if after == Some(leadership) {
                        lease.confirmed(start, leadership, index);
                    }
                }
                Ok(index)
            }
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(NodeError::NotLeader)
            }
            // openraft's message lists the whole membership: say what it means instead.
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(NodeError::Unavailable("the leader cannot reach a majority of the voters".into()))
            }
            Err(RaftError::Fatal(_)) => Err(NodeError::ShuttingDown),
        }
    }

    async fn read_index_round(&self) -> Result<u64, NodeError> {
        let span = tracing::info_span!("read_index", node = self.id);
        self.at_leader(peer::path::READ_INDEX, "read_index", &(), || self.local_read_index()).instrument(span).await
    }

    /// The current leader, waiting for an election to finish until `deadline`.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<Leader, NodeError> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoLeader);
            }
            // A leader heard from again (a heartbeat) changes no metric: look again soon.
            let next = deadline.min(Instant::now() + LEADER_RECHECK);
            if let Ok(Err(_)) = tokio::time::timeout_at(next, metrics.changed()).await {
                return Err(NodeError::ShuttingDown);
            }
        }
    }

    /// The leader openraft names, if it is live as far as this node knows: this node itself, or
    /// one it heard from within its leader lease. openraft keeps naming the leader a follower
    /// last followed, however long ago; with pre-vote a follower cut off from it starts no
    /// election, which would have cleared it (etcd's pre-candidates forget their leader too).
    fn live_leader(&self, m: &RaftMetrics) -> Option<NodeId> {
        let id = m.current_leader?;
        let (contact, lease) = &self.leader_contact;
        (id == self.id || contact.last().elapsed() < *lease).then_some(id)
    }

    /// The leader's half of [`Node::health`]: every node of the membership, if this node leads.
    pub fn local_health(&self) -> Result<BTreeMap<NodeId, NodeHealth>, NodeError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return Err(NodeError::NotLeader);
        }
        let last = m.last_log_index.unwrap_or(0);
        let health = m
            .membership_config
            .membership()
            .nodes()
            .map(|(&id, _)| {
                if id == self.id {
                    return (id, NodeHealth { reachable: true, last_contact_ms: Some(0), lag_entries: Some(0) });
                }
                let contact = self.peers.contacts().get(id);
                // Nothing matched yet (a new leader that has not reached it): the lag is unknown.
                let matched = m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.map(|l| l.index));
                let health = NodeHealth {
                    reachable: contact.is_some_and(|c| c.reachable),
                    last_contact_ms: contact.and_then(|c| c.since_answer).map(|d| d.as_millis() as u64),
                    lag_entries: matched.map(|i| last.saturating_sub(i)),
                };
                (id, health)
            })
            .collect();
        Ok(health)
    }

    /// Every node's health as the leader sees it; `None` if no leader tells within a second.
    pub async fn health(&self) -> Option<BTreeMap<NodeId, NodeHealth>> {
        let leader = self.leader()?;
        if leader.id == self.id {
            return self.local_health().ok();
        }
        self.call(leader, peer::path::HEALTH, &(), HEALTH_TIMEOUT).await.ok()
    }

    /// Raft's figures for `/metrics`. Reachable voters come from the leader's health view: this
    /// node's own when it leads, else the leader's (asked, at most a second), else none.
    pub async fn raft_figures(&self) -> RaftFigures {
        let mut figures = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let is_leader = m.state == ServerState::Leader && m.current_leader == Some(self.id);
            let last = m.last_log_index.unwrap_or(0);
            let replication_lag = match (&m.replication, is_leader) {
                (Some(replication), true) => replication
                    .iter()
                    .filter(|(&id, _)| id != self.id)
                    .map(|(&id, matched)| (id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                    .collect(),
                _ => Vec::new(),
            };
            RaftFigures {
                has_leader: self.live_leader(&m).is_some(),
                is_leader,
                term: m.current_term,
                applied_index: m.last_applied.map_or(0, |l| l.index),
                voters: m.membership_config.membership().voter_ids().count(),
                voters_reachable: None,
                replication_lag,
            }
        };
        if figures.has_leader {
            let voters: Vec<NodeId> = self.raft_view().voters().map(|(id, _)| id).collect();
            figures.voters_reachable = self
                .health()
                .await
                .map(|health| voters.iter().filter(|id| health.get(id).is_some_and(|h| h.reachable)).count());
        }
        figures
    }

    /// Keeps this node's name and API address in the replicated record of the cluster, until
    /// `cancel`: announced at start, and again whenever the record differs.
    pub async fn keep_advert(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let advertised = self.state.read().state.advert(self.id) == Some(&self.advert);
            if !advertised && self.leader().is_some() {
                let command = Command::AdvertiseNode { node: self.id, advert: self.advert.clone() };
                if let Err(error) = self.write(command).await {
                    tracing::debug!(%error, "advertising this node failed; will retry");
                }
            }
        }
    }
}
