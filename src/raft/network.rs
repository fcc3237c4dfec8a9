//! The peer network, client side: Raft RPCs and node-to-node calls over HTTP to each node's
//! `--peer-addr`, on pooled keep-alive connections, their bodies in gm's binary encoding
//! ([`codec`]; the answers of the peer routes use [`codec::Binary`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, CodecError};
use super::contact::Contacts;
use super::fence::{self, ClusterFence, Refusal};
use super::read_lease::{self, ReadLease};
use super::{NodeInfo, RaftError, Snapshot, TypeConfig, Vote};
use crate::membership::NodeId;
use crate::metrics::Metrics;

/// The largest body a peer route takes, snapshots aside: a few AppendEntries payloads' worth.
pub const PEER_BODY_LIMIT: usize = 64 << 20;

/// The header naming the node a Raft RPC is meant for. A peer address is a stable name, and a
/// pod whose disk was lost answers at it under a new id: a call meant for the old id must not
/// reach it (openraft's leader would see that follower's log go back, and stop).
pub const TARGET_NODE_HEADER: &str = "gm-target-node";

/// The header with which a node answers an AppendEntries: for how long (whole milliseconds) after
/// accepting it, it refuses to vote for another leader, openraft's `leader_lease` (its longest
/// election timeout). A leader's read lease ([`super::read_lease`]) counts on what each follower
/// promises, whatever the leader's own settings are.
pub const LEADER_LEASE_HEADER: &str = "gm-leader-lease-ms";

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made: the peer is down or cut off.
    #[error("peer {addr} unreachable: {source}")]
    Unreachable { addr: String, source: reqwest::Error },
    #[error("peer {addr}: {source}")]
    Transport { addr: String, source: reqwest::Error },
    #[error("peer {addr} answered {status}: {body}")]
    Status { addr: String, status: u16, body: String },
    /// Another node answers at the peer's address (421: its disk was lost and it came back
    /// under a new id, see [`TARGET_NODE_HEADER`]): the node called is gone.
    #[error("peer {addr} is another node now: {body}")]
    OtherNode { addr: String, body: String },
    /// The peer is a node of another cluster, and refused the request (see [`fence`]).
    #[error("peer {addr} belongs to cluster {}, not ours {}", .refusal.cluster_id, .refusal.request_cluster_id)]
    OtherCluster { addr: String, refusal: Refusal },
    /// The request could not be encoded, or the answer decoded (a peer of another gm version).
    #[error("peer {addr}: {source}")]
    Codec { addr: String, source: CodecError },
}

/// An HTTP client for node-to-node calls, and what the Raft RPCs it carried found of each peer.
/// Every request carries this node's cluster id once it is known.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    contacts: Contacts,
    fence: ClusterFence,
    metrics: Option<Arc<Metrics>>,
}

impl PeerClient {
    /// Errors: the TLS backend or the system's resolver configuration cannot be loaded.
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::build(None)
    }

    /// A client that asks `resolve` for a peer host's IP on every new connection, before DNS
    /// (Kubernetes: the pod IP the watch reports for a stable name).
    pub fn with_resolver(resolve: HostResolver) -> Result<Self, reqwest::Error> {
        Self::build(Some(resolve))
    }

    fn build(resolve: Option<HostResolver>) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(resolve) = resolve {
            builder = builder.dns_resolver(Arc::new(PreferredResolver(resolve)));
        }
        Ok(PeerClient {
            http: builder.build()?,
            contacts: Contacts::default(),
            fence: ClusterFence::default(),
            metrics: None,
        })
    }

    /// The client, timing its calls and counting their failures in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        PeerClient { metrics: Some(metrics), ..self }
    }

    /// The client with `fence` as the holder of this node's cluster id, which its requests carry.
    pub fn with_fence(self, fence: ClusterFence) -> Self {
        PeerClient { fence, ..self }
    }

    /// How the peers answered Raft RPCs.
    pub fn contacts(&self) -> &Contacts {
        &self.contacts
    }

    /// Notes in [`Contacts`] whether node `target` at `addr` answered a Raft call: any HTTP
    /// answer counts (one that could not be decoded too), except a node of another cluster's
    /// refusal: the node we want is not there.
    pub fn record<T>(&self, target: NodeId, addr: &str, result: Result<T, PeerError>) -> Result<T, PeerError> {
        match &result {
            Ok(_) | Err(PeerError::Status { .. } | PeerError::Codec { .. }) => self.contacts.answered(target, addr),
            Err(e) => {
                self.contacts.failed(target, addr, e);
            }
        }
        result
    }

    /// POSTs `body` to `http://{addr}{path}` and decodes the answer. The request carries the
    /// current span's trace context (Raft's own RPCs, below, do not).
    pub async fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let req = self.http.post(format!("http://{addr}{path}")).headers(crate::telemetry::trace_headers());
        Ok(self.send(addr, path, with_body(req, addr, body)?.timeout(timeout)).await?.0)
    }

    /// Like [`PeerClient::call`], for node `target` only (see [`TARGET_NODE_HEADER`]); with the
    /// answer, the lease the node promised in [`LEADER_LEASE_HEADER`], if it sent one.
    pub async fn call_node<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<(Resp, Option<Duration>), PeerError> {
        let req = self.http.post(format!("http://{addr}{path}")).header(TARGET_NODE_HEADER, target);
        self.send(addr, path, with_body(req, addr, body)?.timeout(timeout)).await
    }

    /// POSTs a raw body to node `target` (see [`TARGET_NODE_HEADER`]); the snapshot transfer
    /// uses it to send the snapshot's bytes as they are.
    pub async fn call_bytes<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let req = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(TARGET_NODE_HEADER, target)
            .body(body)
            .timeout(timeout);
        Ok(self.send(addr, path, req).await?.0)
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(Resp, Option<Duration>), PeerError> {
        let start = tokio::time::Instant::now();
        let answer = self.exchange(addr, req).await;
        if let Some(metrics) = &self.metrics {
            metrics.observe_peer_rpc(rpc_label(path), start.elapsed(), answer.is_err());
        }
        answer
    }

    async fn exchange<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<(Resp, Option<Duration>), PeerError> {
        let transport = |source: reqwest::Error| {
            if source.is_connect() {
                PeerError::Unreachable { addr: addr.to_owned(), source }
            } else {
                PeerError::Transport { addr: addr.to_owned(), source }
            }
        };
        if let Some(id) = self.fence.id() {
            req = req.header(fence::HEADER, &*id);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let body = resp.text().await.unwrap_or_default();
            if let Some(refusal) = Refusal::parse(status, &body) {
                self.fence.refused_by(addr, &refusal);
                return Err(PeerError::OtherCluster { addr: addr.to_owned(), refusal });
            }
            if status == reqwest::StatusCode::MISDIRECTED_REQUEST.as_u16() {
                return Err(PeerError::OtherNode { addr: addr.to_owned(), body });
            }
            return Err(PeerError::Status { addr: addr.to_owned(), status, body });
        }
        let lease = resp.headers().get(LEADER_LEASE_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
        let body = resp.bytes().await.map_err(transport)?;
        let answer = codec::decode(&body).map_err(|source| PeerError::Codec { addr: addr.to_owned(), source })?;
        Ok((answer, lease.map(Duration::from_millis)))
    }
}

/// `req` with `body`, encoded, as its body.
fn with_body<Req: Serialize + ?Sized>(
    req: reqwest::RequestBuilder,
    addr: &str,
    body: &Req,
) -> Result<reqwest::RequestBuilder, PeerError> {
    let body = codec::encode(body).map_err(|source| PeerError::Codec { addr: addr.to_owned(), source })?;
    Ok(req.header(reqwest::header::CONTENT_TYPE, codec::CONTENT_TYPE).body(body))
}

/// The `rpc` label of a call to peer `path` in `gm_peer_rpc_duration_seconds`: one per peer
/// route (Raft's, `node::peer`'s and `probe::peer`'s), so the series stay bounded.
pub fn rpc_label(path: &str) -> &'static str {
    match path {
        "/raft/append" => "append",
        "/raft/vote" => "vote",
        "/raft/pre-vote" => "pre_vote",
        "/raft/snapshot" => "snapshot",
        "/forward/writes" => "forward_writes",
        "/forward/read-index" => "read_index",
        "/cluster/health" => "health",
        "/peer/ping" => "ping",
        "/probe/indirect" => "indirect_probe",
        "/forward/heartbeat" => "heartbeat",
        _ => "other",
    }
}

/// Where a peer host name points now, if the caller knows better than DNS; `None`: ask DNS.
pub type HostResolver = Arc<dyn Fn(&str) -> Option<IpAddr> + Send + Sync>;

/// Resolves with the [`HostResolver`] first and the system's resolver as fallback. Asked on
/// every new connection, so a peer that comes back at a new address is reached there.
struct PreferredResolver(HostResolver);

impl reqwest::dns::Resolve for PreferredResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let known = (self.0)(name.as_str());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The port is the URL's: the connector replaces this 0.
            let addrs: Vec<SocketAddr> = match known {
                Some(ip) => vec![SocketAddr::new(ip, 0)],
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Makes one connection handle per Raft target.
#[derive(Clone)]
pub struct PeerNetwork {
    client: PeerClient,
    lease: ReadLease,
}

impl PeerNetwork {
    /// The network of a node whose followers' acknowledgements go to `lease`.
    pub fn new(client: PeerClient, lease: ReadLease) -> Self {
        PeerNetwork { client, lease }
    }
}

pub struct PeerConnection {
    client: PeerClient,
    lease: ReadLease,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConnection {
        PeerConnection { client: self.client.clone(), lease: self.lease.clone(), target, addr: node.peer_addr.clone() }
    }
}

type RpcError = RPCError<NodeId, NodeInfo, RaftError>;

impl PeerConnection {
    /// The answer, and the lease the peer promised with it ([`LEADER_LEASE_HEADER`]).
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<(Resp, Option<Duration>), RpcError> {
        let (answer, lease): (Result<Resp, RaftError>, _) = self
            .record(self.client.call_node(self.target, &self.addr, path, req, option.hard_ttl()).await)
            .map_err(|e| match e {
                PeerError::Unreachable { .. } | PeerError::OtherCluster { .. } | PeerError::OtherNode { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        let answer = answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        Ok((answer, lease))
    }

    fn record<T>(&self, result: Result<T, PeerError>) -> Result<T, PeerError> {
        self.client.record(self.target, &self.addr, result)
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let (leadership, leading) = (rpc.vote.leader_id, rpc.vote.is_committed());
        let sent = read_lease::now();
        let (answer, promise) = self.rpc("/raft/append", &rpc, &option).await?;
        // Any answer but a higher vote means the follower took this leader's vote as its own
        // (a conflict is found after that): it refuses other candidates for what it promised.
        if let (true, Some(sent), Some(promise)) = (leading, sent, promise) {
            if !matches!(answer, AppendEntriesResponse::HigherVote(_)) {
                self.lease.acknowledged(self.target, leadership, sent, promise);
            }
        }
        Ok(answer)
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcError> {
        Ok(self.rpc("/raft/vote", &rpc, &option).await?.0)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>> {
        let body = encode_snapshot(&vote, &snapshot).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let send = self.client.call_bytes::<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>(
            self.target,
            &self.addr,
            "/raft/snapshot",
            body,
            option.hard_ttl(),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = send => match self.record(answer) {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(self.target, fatal))),
                Err(e @ (PeerError::Unreachable { .. } | PeerError::OtherCluster { .. } | PeerError::OtherNode { .. })) => {
                    Err(StreamingError::Unreachable(Unreachable::new(&e)))
                }
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
            },
        }
    }
}

/// A snapshot on the wire: the length of the vote and meta (u32 LE), the vote and meta encoded,
/// then the state's bytes as the snapshot holds them.
pub fn encode_snapshot(vote: &Vote, snapshot: &Snapshot) -> Result<Vec<u8>, CodecError> {
    let head = codec::encode(&(vote, &snapshot.meta))?;
    let mut body = Vec::with_capacity(4 + head.len() + snapshot.snapshot.len());
    body.extend_from_slice(&(head.len() as u32).to_le_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(&snapshot.snapshot);
    Ok(body)
}

/// The inverse of [`encode_snapshot`].
pub fn decode_snapshot(body: &[u8]) -> Result<(Vote, Snapshot), CodecError> {
    let (len, rest) = body.split_first_chunk::<4>().ok_or(CodecError::Empty)?;
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (vote, meta) = codec::decode(&rest[..len])?;
    Ok((vote, Snapshot { meta, snapshot: Box::new(rest[len..].to_vec()) }))
}
