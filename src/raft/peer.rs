//! The peer network, server side: answers Raft RPCs on `--peer-addr`, apart from the public API.
//! The node and failure detection serve their own node-to-node routes beside these.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::codec::Binary;
use super::network::{decode_snapshot, LEADER_LEASE_HEADER, PEER_BODY_LIMIT, TARGET_NODE_HEADER};
use super::read_lease::ReadLease;
use super::{Raft, RaftError, TypeConfig};
use crate::membership::NodeId;

/// Snapshots of large clusters travel in one body.
const SNAPSHOT_BODY_LIMIT: usize = 1 << 30;

/// What the Raft routes reach.
#[derive(Clone)]
struct Routes {
    raft: Raft,
    /// This node's read lease, which a vote request suspends while it is answered.
    lease: ReadLease,
    /// This node's `leader_lease` in whole milliseconds, promised with each AppendEntries answer.
    leader_lease_ms: HeaderValue,
    /// Until when this node refuses every vote request: what its data dir's last process
    /// promised ([`super::vote_quarantine`]).
    refuse_votes_until: Option<Instant>,
}

/// The Raft RPC routes of node `me`, whose openraft refuses votes for `leader_lease` after it
/// accepts an AppendEntries, and which refuses vote requests until `refuse_votes_until` (503);
/// a call meant for another node is refused with 421.
pub fn router(
    raft: Raft,
    me: NodeId,
    lease: ReadLease,
    leader_lease: Duration,
    refuse_votes_until: Option<Instant>,
) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BODY_LIMIT)))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .route_layer(axum::middleware::from_fn(move |req: Request, next: Next| for_me(me, req, next)))
        .with_state(Routes {
            raft,
            lease,
            leader_lease_ms: HeaderValue::from(leader_lease.as_millis() as u64),
            refuse_votes_until,
        })
}

/// Passes on a Raft RPC only if it names this node as its target (see [`TARGET_NODE_HEADER`]).
async fn for_me(me: NodeId, req: Request, next: Next) -> Response {
    let target = req.headers().get(TARGET_NODE_HEADER).and_then(|v| v.to_str().ok()?.parse::<NodeId>().ok());
    if target == Some(me) {
        return next.run(req).await;
    }
    tracing::debug!(node = me, target = ?target, "refused a Raft call meant for another node");
    let message = match target {
        Some(target) => format!("this is node {me}, not node {target}: that node's disk was lost or it moved"),
        None => format!("a Raft call must name its target node in the {TARGET_NODE_HEADER} header"),
    };
    (StatusCode::MISDIRECTED_REQUEST, message).into_response()
}

async fn append(
    State(routes): State<Routes>,
    Binary(req): Binary<AppendEntriesRequest<TypeConfig>>,
) -> ([(&'static str, HeaderValue); 1], Binary<Result<AppendEntriesResponse<NodeId>, RaftError>>) {
    let answer = routes.raft.append_entries(req).await;
    ([(LEADER_LEASE_HEADER, routes.leader_lease_ms)], Binary(answer))
}

async fn vote(State(routes): State<Routes>, Binary(req): Binary<VoteRequest<NodeId>>) -> Response {
    if routes.refuse_votes_until.is_some_and(|until| Instant::now() < until) {
        let message = "this node votes for no one yet: its last process promised leaders a longer leader lease";
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
    let _in_flight = routes.lease.vote_begins();
    let answer: Result<VoteResponse<NodeId>, RaftError> = routes.raft.vote(req).await;
    Binary(answer).into_response()
}

async fn snapshot(
    State(Routes { raft, .. }): State<Routes>,
    body: Bytes,
) -> Result<Binary<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>, (StatusCode, String)> {
    let (vote, snapshot) = decode_snapshot(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Binary(raft.install_full_snapshot(vote, snapshot).await))
}
