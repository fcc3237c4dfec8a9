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
    pub const WRITE: &str = "/forward/write";
    pub const READ_INDEX: &str = "/forward/read-index";
    pub const HEARTBEAT: &str = "/forward/heartbeat";
    pub const PING: &str = "/peer/ping";
    pub const INDIRECT_PROBE: &str = "/probe/indirect";
}

/// The leader as this node sees it.
#[derive(Clone, Debug)]
pub struct Leader {
    pub id: NodeId,
    pub info: NodeInfo,
}

type ReadWaiter = oneshot::Sender<Result<u64, NodeError>>;

/// One GM node: its Raft handle, its applied state, and its way to the leader.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub state: StateHandle,
    pub advert: NodeAdvert,
    peers: PeerClient,
    request_timeout: Duration,
    reads: mpsc::UnboundedSender<ReadWaiter>,
    /// Cancelled when the node shuts down: long waits (watches, blocking queries) end with it.
    pub shutdown: CancellationToken,
    /// Lease deadlines, used while this node leads.
    pub leases: Leases,
}

impl Node {
    /// Creates the node and starts its read batcher, which stops with `cancel`.
    pub fn start(
        id: NodeId,
        raft: Raft,
        state: StateHandle,
        advert: NodeAdvert,
        peers: PeerClient,
        request_timeout: Duration,
        cancel: CancellationToken,
    ) -> (Arc<Node>, tokio::task::JoinHandle<()>) {
        let (reads, rx) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            id,
            raft,
            state,
            advert,
            peers,
            request_timeout,
            reads,
            shutdown: cancel.clone(),
            leases: Leases::default(),
        });
        let batcher = tokio::spawn(Arc::clone(&node).batch_reads(rx, cancel));
        (node, batcher)
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
        self.on_leader(peer_path::HEARTBEAT, &key, || self.local_heartbeat(group, id)).await
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
        self.on_leader(peer_path::WRITE, &command, || self.write_local(command.clone())).await
    }

    /// Runs `local` if this node leads, else sends `request` to the leader's `path`; again if
    /// leadership moved meanwhile; 503-worthy errors after the request timeout.
    async fn on_leader<Req, Resp, F, Fut>(&self, path: &str, request: &Req, local: F) -> Result<Resp, NodeError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Resp, NodeError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        tokio::time::timeout_at(deadline, async {
            loop {
                let leader = self.wait_for_leader(deadline).await?;
                let result = if leader.id == self.id {
                    local().await
                } else {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    self.peers
                        .call::<_, Result<Resp, NodeError>>(&leader.info.peer_addr, path, request, remaining)
                        .await
                        .map_err(NodeError::from)
                        .and_then(|r| r)
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

    /// Proposes `command` on this node, which must be the leader.
    pub async fn write_local(&self, command: Command) -> Result<Applied, NodeError> {
        match self.raft.client_write(command).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(NodeError::NotLeader),
            Err(RaftError::APIError(e)) => Err(NodeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(NodeError::ShuttingDown),
        }
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
        self.on_leader(peer_path::READ_INDEX, &(), || self.local_read_index()).await
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
