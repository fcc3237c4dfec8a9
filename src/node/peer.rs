//! The node's own node-to-node routes, served on `--peer-addr` beside Raft's: the writes and
//! read-index rounds followers forward to the leader, and the leader's view of every node's
//! health for a follower's `/v1/cluster`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::Router;

use super::{Node, NodeError, NodeHealth};
use crate::membership::{Command, NodeId};
use crate::raft::codec::Binary;
use crate::raft::network::PEER_BODY_LIMIT;
use crate::raft::Applied;

/// Where a node's calls to the leader's node go.
pub mod path {
    pub const WRITES: &str = "/forward/writes";
    pub const READ_INDEX: &str = "/forward/read-index";
    pub const HEALTH: &str = "/cluster/health";
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(path::WRITES, post(forward_writes))
        .route(path::READ_INDEX, post(forward_read_index))
        .route(path::HEALTH, post(health))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .with_state(node)
}

async fn forward_writes(
    State(node): State<Arc<Node>>,
    Binary(commands): Binary<Vec<Command>>,
) -> Binary<Vec<Result<Applied, NodeError>>> {
    Binary(node.write_local_many(commands).await)
}

async fn forward_read_index(State(node): State<Arc<Node>>) -> Binary<Result<u64, NodeError>> {
    Binary(node.local_read_index().await)
}

async fn health(State(node): State<Arc<Node>>) -> Binary<Result<BTreeMap<NodeId, NodeHealth>, NodeError>> {
    Binary(node.local_health())
}
