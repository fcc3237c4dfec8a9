//! Failure detection's node-to-node routes, served on `--peer-addr` beside Raft's: the leader's
//! liveness ping of the other nodes, indirect probes of a suspect, and lease heartbeats that
//! followers forward to the leader.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::Router;

use super::check::{Checker, ProbeTarget};
use super::lease::{self, Heartbeat, Leases};
use super::path;
use crate::membership::{GroupName, MemberId};
use crate::node::{Node, NodeError};
use crate::raft::codec::Binary;
use crate::raft::network::PEER_BODY_LIMIT;

/// What the routes reach.
pub struct ProbePeers {
    pub node: Arc<Node>,
    /// Probes members for other nodes that suspect them.
    pub checker: Checker,
    pub leases: Arc<Leases>,
}

pub fn router(state: Arc<ProbePeers>) -> Router {
    Router::new()
        .route(path::PING, post(ping))
        .route(path::INDIRECT_PROBE, post(indirect_probe))
        .route(path::HEARTBEAT, post(forward_heartbeat))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .with_state(state)
}

/// The leader's liveness check of this node: answers with this node's applied revision.
async fn ping(State(peers): State<Arc<ProbePeers>>) -> Binary<u64> {
    Binary(peers.node.state.revision())
}

/// Probes a member another node suspects (see [`Probed::alive`](super::check::Probed) for the answer).
async fn indirect_probe(
    State(peers): State<Arc<ProbePeers>>,
    Binary(target): Binary<ProbeTarget>,
) -> Binary<Option<bool>> {
    let alive = peers.checker.probe(&target).await.alive;
    let result = if alive == Some(true) { "ok" } else { "failed" };
    peers.node.metrics.indirect_probes.with_label_values(&[result]).inc();
    Binary(alive)
}

async fn forward_heartbeat(
    State(peers): State<Arc<ProbePeers>>,
    Binary((group, id)): Binary<(GroupName, MemberId)>,
) -> Binary<Result<Heartbeat, NodeError>> {
    let answer = lease::local_heartbeat(&peers.node, &peers.leases, &group, &id).await;
    lease::count_heartbeat(&peers.node, &answer);
    Binary(answer)
}

#[cfg(test)]
mod tests {
    use crate::raft::network::rpc_label;

    #[test]
    fn every_peer_call_has_an_rpc_label_of_its_own() {
        let paths = [
            crate::node::peer::path::WRITES,
            crate::node::peer::path::READ_INDEX,
            crate::node::peer::path::HEALTH,
            super::path::PING,
            super::path::INDIRECT_PROBE,
            super::path::HEARTBEAT,
        ];
        let labels: std::collections::BTreeSet<&str> = paths.iter().map(|p| rpc_label(p)).collect();
        assert_eq!(labels.len(), paths.len(), "{labels:?}");
        assert!(!labels.contains("other"), "{labels:?}");
    }
}
