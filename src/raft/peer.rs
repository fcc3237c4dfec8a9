//! The peer network, server side: answers Raft RPCs on `--peer-addr`, apart from the public API.
//! The node and failure detection serve their own node-to-node routes beside these.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use super::network::{decode_snapshot, PEER_BODY_LIMIT};
use super::{Raft, RaftError, TypeConfig};
use crate::membership::NodeId;

/// Snapshots of large clusters travel in one body.
const SNAPSHOT_BODY_LIMIT: usize = 1 << 30;

pub fn router(raft: Raft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BODY_LIMIT)))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError>> {
    Json(raft.append_entries(req).await)
}

async fn vote(
    State(raft): State<Raft>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError>> {
    Json(raft.vote(req).await)
}

async fn snapshot(
    State(raft): State<Raft>,
    body: Bytes,
) -> Result<Json<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>, (StatusCode, String)> {
    let (vote, snapshot) = decode_snapshot(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(raft.install_full_snapshot(vote, snapshot).await))
}
