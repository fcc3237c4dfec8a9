//! The peer network, server side: answers Raft RPCs and the calls followers forward to the
//! leader. Served on `--peer-addr`, apart from the public API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use super::network::decode_snapshot;
use super::{Applied, RaftError, TypeConfig};
use crate::membership::{Command, GroupName, MemberId, NodeId};
use crate::node::{peer_path, Node, NodeError, NodeHealth};
use crate::probe::check::{Checker, ProbeTarget};
use crate::probe::lease::Heartbeat;

/// Snapshots of large clusters travel in one body.
const SNAPSHOT_BODY_LIMIT: usize = 1 << 30;
/// Everything else: a few AppendEntries payloads' worth.
const PEER_BODY_LIMIT: usize = 64 << 20;

/// What the peer handlers reach.
pub struct PeerState {
    pub node: Arc<Node>,
    /// Probes members for other nodes that suspect them.
    pub checker: Checker,
}

pub fn router(state: Arc<PeerState>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BODY_LIMIT)))
        .route(peer_path::WRITES, post(forward_writes))
        .route(peer_path::READ_INDEX, post(forward_read_index))
        .route(peer_path::HEARTBEAT, post(forward_heartbeat))
        .route(peer_path::PING, post(ping))
        .route(peer_path::INDIRECT_PROBE, post(indirect_probe))
        .route(peer_path::HEALTH, post(health))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .with_state(state)
}

async fn append(
    State(peer): State<Arc<PeerState>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError>> {
    Json(peer.node.raft.append_entries(req).await)
}

async fn vote(
    State(peer): State<Arc<PeerState>>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError>> {
    Json(peer.node.raft.vote(req).await)
}

async fn snapshot(
    State(peer): State<Arc<PeerState>>,
    body: Bytes,
) -> Result<Json<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>, (StatusCode, String)> {
    let (vote, snapshot) = decode_snapshot(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(peer.node.raft.install_full_snapshot(vote, snapshot).await))
}

async fn forward_writes(
    State(peer): State<Arc<PeerState>>,
    Json(commands): Json<Vec<Command>>,
) -> Json<Vec<Result<Applied, NodeError>>> {
    Json(peer.node.write_local_many(commands).await)
}

async fn forward_read_index(State(peer): State<Arc<PeerState>>) -> Json<Result<u64, NodeError>> {
    Json(peer.node.local_read_index().await)
}

async fn forward_heartbeat(
    State(peer): State<Arc<PeerState>>,
    Json((group, id)): Json<(GroupName, MemberId)>,
) -> Json<Result<Heartbeat, NodeError>> {
    Json(peer.node.local_heartbeat(&group, &id).await)
}

/// The leader's view of every node's health, for a follower's `/v1/cluster`.
async fn health(
    State(peer): State<Arc<PeerState>>,
) -> Json<Result<std::collections::BTreeMap<NodeId, NodeHealth>, NodeError>> {
    Json(peer.node.local_health())
}

/// The leader's liveness check of this node: answers with this node's applied revision.
async fn ping(State(peer): State<Arc<PeerState>>) -> Json<u64> {
    Json(peer.node.state.revision())
}

/// Probes a member another node suspects (see [`Checker::probe`] for the answer).
async fn indirect_probe(State(peer): State<Arc<PeerState>>, Json(target): Json<ProbeTarget>) -> Json<Option<bool>> {
    Json(peer.checker.probe(&target).await)
}
