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
use crate::membership::{Command, NodeId};
use crate::node::{peer_path, Node, NodeError};

/// Snapshots of large clusters travel in one body.
const PEER_BODY_LIMIT: usize = 1 << 30;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route(peer_path::WRITE, post(forward_write))
        .route(peer_path::READ_INDEX, post(forward_read_index))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .with_state(node)
}

async fn append(
    State(node): State<Arc<Node>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError>> {
    Json(node.raft.append_entries(req).await)
}

async fn vote(
    State(node): State<Arc<Node>>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError>> {
    Json(node.raft.vote(req).await)
}

async fn snapshot(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>, (StatusCode, String)> {
    let (vote, snapshot) = decode_snapshot(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(node.raft.install_full_snapshot(vote, snapshot).await))
}

async fn forward_write(
    State(node): State<Arc<Node>>,
    Json(command): Json<Command>,
) -> Json<Result<Applied, NodeError>> {
    Json(node.write_local(command).await)
}

async fn forward_read_index(State(node): State<Arc<Node>>) -> Json<Result<u64, NodeError>> {
    Json(node.local_read_index().await)
}
