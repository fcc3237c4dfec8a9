//! A GM node as the API sees it: writes that reach the leader from any node, linearizable
//! reads by read-index (batched, never a log write), and what the node knows of the cluster.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::membership::{Command, GroupName, MemberId, NodeAdvert, NodeId};
use crate::probe::lease::{Heartbeat, Leases};
use crate::raft::network::{PeerClient, PeerError};
use crate::raft::state_machine::StateHandle;
use crate::raft::{Applied, NodeInfo, Raft};

/// Why a write or a linearizable read could not be served now. Retrying later may succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    #[error("no leader is known")]
    NoLeader,
    #[error("this node is not the leader")]
    NotLeader,
    #[error("timed out waiting for a quorum")]
    Timeout,
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

/// Where a node's calls to its leader go.
pub mod peer_path {
    pub const WRITES: &str = "/forward/writes";
    pub const READ_INDEX: &str = "/forward/read-index";
    pub const HEARTBEAT: &str = "/forward/heartbeat";
    pub const PING: &str = "/peer/ping";
    pub const INDIRECT_PROBE: &str = "/probe/indirect";
}

fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => NodeError::NotLeader,
        RaftError::APIError(e) => NodeError::Unavailable(e.to_string()),
        RaftError::Fatal(_) => NodeError::ShuttingDown,
    }
}

/// The leader as this node sees it.
#[derive(Clone, Debug)]
pub struct Leader {
    pub id: NodeId,
    pub info: NodeInfo,
}

type ReadWaiter = oneshot::Sender<Result<u64, NodeError>>;
type WriteWaiter = (Command, oneshot::Sender<Result<Applied, NodeError>>);

/// Forwarded batches of writes a follower has on the way to the leader at once: enough to keep
/// the leader's log busy, few enough that each batch gathers many writes.
const FORWARDS_IN_FLIGHT: usize = 4;
/// The most writes in one forwarded batch.
const FORWARD_BATCH: usize = 1024;

/// One GM node: its Raft handle, its applied state, and its way to the leader.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub state: StateHandle,
    pub advert: NodeAdvert,
    peers: PeerClient,
    request_timeout: Duration,
    reads: mpsc::UnboundedSender<ReadWaiter>,
    writes: mpsc::UnboundedSender<WriteWaiter>,
    /// Cancelled when the node shuts down: long waits (watches, blocking queries) end with it.
    pub shutdown: CancellationToken,
    /// Lease deadlines, used while this node leads.
    pub leases: Leases,
}

impl Node {
    /// Creates the node and starts its read and write batchers, which stop with `cancel`.
    pub fn start(
        id: NodeId,
        raft: Raft,
        state: StateHandle,
        advert: NodeAdvert,
        peers: PeerClient,
        request_timeout: Duration,
        cancel: CancellationToken,
    ) -> (Arc<Node>, tokio::task::JoinHandle<()>) {
        let (reads, read_rx) = mpsc::unbounded_channel();
        let (writes, write_rx) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            id,
            raft,
            state,
            advert,
            peers,
            request_timeout,
            reads,
            writes,
            shutdown: cancel.clone(),
            leases: Leases::default(),
        });
        let batchers = tokio::spawn({
            let node = Arc::clone(&node);
            async move {
                tokio::join!(
                    Arc::clone(&node).batch_reads(read_rx, cancel.clone()),
                    node.batch_writes(write_rx, cancel)
                );
            }
        });
        (node, batchers)
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The leader this node knows of, with its addresses.
    pub fn leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some(Leader { id, info })
    }

    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// The current term, if this node leads in it.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// Renews a lease-mode member's lease at the leader, wherever it is.
    pub async fn heartbeat(&self, group: &GroupName, id: &MemberId) -> Result<Heartbeat, NodeError> {
        let key = (group.clone(), id.clone());
        self.on_leader(
            || self.local_heartbeat(group, id),
            |leader, left| self.call(leader, peer_path::HEARTBEAT, &key, left),
        )
        .await
    }

    /// The leader's half of a heartbeat: a linearizable look-up, then the renewal.
    pub async fn local_heartbeat(&self, group: &GroupName, id: &MemberId) -> Result<Heartbeat, NodeError> {
        let index = self.local_read_index().await?;
        if !self.state.wait_applied(index, self.request_timeout).await {
            return Err(NodeError::Timeout);
        }
        let term = self.leader_term().ok_or(NodeError::NotLeader)?;
        let m = self.state.read();
        Ok(self.leases.heartbeat(term, &m.state, group, id, Instant::now()))
    }

    /// Commits `command` through the leader, wherever it is, within the request timeout.
    pub async fn write(&self, command: Command) -> Result<Applied, NodeError> {
        self.on_leader(|| self.write_local(command.clone()), |_, _| self.forward_write(command.clone())).await
    }

    /// Runs `local` if this node leads, else `remote` with the leader and the time left; again
    /// if leadership moved meanwhile; 503-worthy errors after the request timeout.
    async fn on_leader<Resp, L, LFut, R, RFut>(&self, local: L, remote: R) -> Result<Resp, NodeError>
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

    /// A peer call to the leader whose answer is a node result.
    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: Leader,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, NodeError> {
        self.peers.call::<_, Result<Resp, NodeError>>(&leader.info.peer_addr, path, request, timeout).await?
    }

    /// Hands `command` to the write batcher, which forwards it to the leader with others.
    async fn forward_write(&self, command: Command) -> Result<Applied, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send((command, tx)).map_err(|_| NodeError::ShuttingDown)?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Forwards queued writes to the leader in batches: one HTTP request carries many writes,
    /// and up to [`FORWARDS_IN_FLIGHT`] batches travel at once.
    async fn batch_writes(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<WriteWaiter>, cancel: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT));
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                w = rx.recv() => match w { Some(w) => w, None => return },
            };
            // Waiting for a free slot lets more writes queue up behind `first`.
            let permit = tokio::select! {
                _ = cancel.cancelled() => return,
                p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            while in_flight.try_join_next().is_some() {}
            let mut batch = vec![first];
            while batch.len() < FORWARD_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let node = Arc::clone(&self);
            in_flight.spawn(async move {
                node.send_writes(batch).await;
                drop(permit);
            });
        }
    }

    async fn send_writes(&self, batch: Vec<WriteWaiter>) {
        let (commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let answers = match self.leader() {
            None => Err(NodeError::NoLeader),
            Some(leader) if leader.id == self.id => Err(NodeError::NotLeader),
            Some(leader) => self
                .peers
                .call::<_, Vec<Result<Applied, NodeError>>>(
                    &leader.info.peer_addr,
                    peer_path::WRITES,
                    &commands,
                    self.request_timeout,
                )
                .await
                .map_err(NodeError::from)
                .and_then(|answers| {
                    if answers.len() == waiters.len() {
                        Ok(answers)
                    } else {
                        Err(NodeError::Unavailable("the leader answered a batch of another size".into()))
                    }
                }),
        };
        match answers {
            Ok(answers) => waiters.into_iter().zip(answers).for_each(|(w, a)| drop(w.send(a))),
            Err(e) => waiters.into_iter().for_each(|w| drop(w.send(Err(e.clone())))),
        }
    }

    /// The leader's half of forwarded writes: proposes them all, then waits for each.
    pub async fn write_local_many(&self, commands: Vec<Command>) -> Vec<Result<Applied, NodeError>> {
        let mut pending = Vec::with_capacity(commands.len());
        for command in commands {
            pending.push(self.raft.client_write_ff(command).await);
        }
        let answers = pending.into_iter().map(|proposed| async move {
            let rx = proposed.map_err(|_| NodeError::ShuttingDown)?;
            match rx.await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(e)) => Err(client_write_error(RaftError::APIError(e))),
                Err(_) => Err(NodeError::ShuttingDown),
            }
        });
        futures::future::join_all(answers).await
    }

    /// Proposes `command` on this node, which must be the leader.
    pub async fn write_local(&self, command: Command) -> Result<Applied, NodeError> {
        self.raft.client_write(command).await.map(|resp| resp.data).map_err(client_write_error)
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
            let (tx, rx) = oneshot::channel();
            self.reads.send(tx).map_err(|_| NodeError::ShuttingDown)?;
            let index = rx.await.map_err(|_| NodeError::ShuttingDown)??;
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
    /// the index a reader must have applied.
    pub async fn local_read_index(&self) -> Result<u64, NodeError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |id| id.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(NodeError::NotLeader)
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(NodeError::ShuttingDown),
        }
    }

    /// Serves read-index rounds one at a time; all readers queued when a round starts share it.
    /// A reader that arrives during a round waits for the next, so its round starts after it did.
    async fn batch_reads(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<ReadWaiter>, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                w = rx.recv() => match w { Some(w) => w, None => return },
            };
            let mut waiters = vec![first];
            while let Ok(w) = rx.try_recv() {
                waiters.push(w);
            }
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                continue;
            }
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.read_index_round() => r,
            };
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    async fn read_index_round(&self) -> Result<u64, NodeError> {
        self.on_leader(|| self.local_read_index(), |leader, left| self.call(leader, peer_path::READ_INDEX, &(), left))
            .await
    }

    /// The current leader, waiting for an election to finish until `deadline`.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<Leader, NodeError> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NodeError::ShuttingDown),
                Err(_) => return Err(NodeError::NoLeader),
            }
        }
    }

    /// Keeps the replicated record of the cluster true: names the cluster once, and announces
    /// this node's name and API address whenever the record differs.
    pub async fn keep_cluster_record(self: Arc<Self>, cancel: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = metrics.changed() => if changed.is_err() { return },
            }
            let (cluster_named, advertised) = {
                let m = self.state.read();
                (m.state.cluster_id().is_some(), m.state.advert(self.id) == Some(&self.advert))
            };
            if self.is_leader() && !cluster_named {
                let cluster_id = uuid::Uuid::new_v4().to_string();
                if let Err(error) = self.write_local(Command::InitCluster { cluster_id }).await {
                    tracing::debug!(%error, "naming the cluster failed; will retry");
                }
            }
            if !advertised && self.leader().is_some() {
                let command = Command::AdvertiseNode { node: self.id, advert: self.advert.clone() };
                if let Err(error) = self.write(command).await {
                    tracing::debug!(%error, "advertising this node failed; will retry");
                }
            }
        }
    }
}
