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
use super::log_store::LogStore;
use super::network::{decode_snapshot, LEADER_LEASE_HEADER, PEER_BODY_LIMIT, TARGET_NODE_HEADER};
use super::pre_vote::{self, LeaderContact, PreVoteRequest, PreVoteResponse, Standing};
use super::read_lease::ReadLease;
use super::{Raft, RaftError, TypeConfig};
use crate::membership::NodeId;

/// Snapshots of large clusters travel in one body.
const SNAPSHOT_BODY_LIMIT: usize = 1 << 30;

/// How a node answers votes and pre-votes.
pub struct Voting {
    /// openraft's `leader_lease`: how long it refuses votes after it accepts an AppendEntries,
    /// and pre-votes after it heard from a leader.
    pub leader_lease: Duration,
    /// Until when this node refuses every vote request: what its data dir's last process
    /// promised ([`super::vote_quarantine`]).
    pub refuse_votes_until: Option<Instant>,
    /// Where the routes record that a leader was heard from, for pre-votes.
    pub contact: LeaderContact,
    /// This node's log, whose last entry a pre-vote's candidate must have caught up with.
    pub log: LogStore,
}

/// What the Raft routes reach.
#[derive(Clone)]
struct Routes {
    raft: Raft,
    /// This node's read lease, which a vote request suspends while it is answered.
    lease: ReadLease,
    /// This node's `leader_lease` in whole milliseconds, promised with each AppendEntries answer.
    leader_lease_ms: HeaderValue,
    leader_lease: Duration,
    refuse_votes_until: Option<Instant>,
    contact: LeaderContact,
    log: LogStore,
}

/// The Raft RPC routes of node `me`, and its pre-vote route ([`pre_vote`]). Its openraft
/// refuses votes for `leader_lease` after it accepts an AppendEntries; it refuses votes and
/// pre-votes until `refuse_votes_until` (503); a call meant for another node is refused with 421.
pub fn router(raft: Raft, me: NodeId, lease: ReadLease, voting: Voting) -> Router {
    let Voting { leader_lease, refuse_votes_until, contact, log } = voting;
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route(pre_vote::PATH, post(pre_vote))
        .route("/raft/snapshot", post(snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BODY_LIMIT)))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .route_layer(axum::middleware::from_fn(move |req: Request, next: Next| for_me(me, req, next)))
        .with_state(Routes {
            raft,
            lease,
            leader_lease_ms: HeaderValue::from(leader_lease.as_millis() as u64),
            leader_lease,
            refuse_votes_until,
            contact,
            log,
        })
}

impl Routes {
    /// A 503 while this node votes for no one ([`super::vote_quarantine`]).
    fn quarantined(&self) -> Option<Response> {
        let until = self.refuse_votes_until?;
        let message = "this node votes for no one yet: its last process promised leaders a longer leader lease";
        (Instant::now() < until).then(|| (StatusCode::SERVICE_UNAVAILABLE, message).into_response())
    }
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
    // Any answer but a higher vote: openraft took the sender as its leader.
    if matches!(answer, Ok(ref a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
        routes.contact.heard();
    }
    ([(LEADER_LEASE_HEADER, routes.leader_lease_ms)], Binary(answer))
}

async fn vote(State(routes): State<Routes>, Binary(req): Binary<VoteRequest<NodeId>>) -> Response {
    if let Some(refused) = routes.quarantined() {
        return refused;
    }
    let _in_flight = routes.lease.vote_begins();
    let answer: Result<VoteResponse<NodeId>, RaftError> = routes.raft.vote(req).await;
    if answer.as_ref().is_ok_and(|a| a.vote_granted) {
        routes.contact.voted();
    }
    Binary(answer).into_response()
}

async fn pre_vote(State(routes): State<Routes>, Binary(req): Binary<PreVoteRequest>) -> Response {
    if let Some(refused) = routes.quarantined() {
        return refused;
    }
    let standing = Standing::of(&routes.raft.metrics().borrow(), &routes.log, &routes.contact);
    let granted = standing.grants(&req, routes.leader_lease);
    tracing::debug!(candidate = req.candidate, last_log_id = ?req.last_log_id, granted, "pre-vote");
    Binary(PreVoteResponse { granted }).into_response()
}

async fn snapshot(
    State(Routes { raft, contact, .. }): State<Routes>,
    body: Bytes,
) -> Result<Binary<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>, (StatusCode, String)> {
    let (vote, snapshot) = decode_snapshot(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let sender = vote;
    let answer = raft.install_full_snapshot(vote, snapshot).await;
    // A snapshot comes from a leader: accepted (this node took its vote), openraft restarts
    // its election timer for it.
    if answer.as_ref().is_ok_and(|a| a.vote == sender) {
        contact.heard();
    }
    Ok(Binary(answer))
}
