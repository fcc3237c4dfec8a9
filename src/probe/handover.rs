//! The leader's view of which GM nodes are alive. Members are spread over the live voters only:
//! when a node stops answering, the leader commits a new set of probers and every node moves
//! its members at the same log index, so no member is left without a prober; when the node
//! answers again it gets members back the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::path;
use super::ProbeConfig;
use crate::membership::{Command, NodeId};
use crate::node::Node;

/// Consecutive missed pings before a node is taken out of the probers.
const MISSED_PINGS: u32 = 2;

/// A leader duty: keeps the probers equal to the live voters, until `cancel` (the end of this
/// node's leadership). A new leader starts from "everyone is alive" and lets the pings decide.
pub async fn run(node: Arc<Node>, config: ProbeConfig, cancel: CancellationToken) {
    // Two pings per probe interval: a dead node is out within about one interval.
    let mut tick = tokio::time::interval(config.interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed: BTreeMap<NodeId, u32> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let raft = node.raft_view();
        let pings = raft.voters().filter(|(id, _)| *id != node.id).map(|(id, addr)| {
            let node = &node;
            async move {
                let ok = node.peers().call::<_, u64>(addr, path::PING, &(), config.timeout).await.is_ok();
                (id, ok)
            }
        });
        for (id, ok) in futures::future::join_all(pings).await {
            let count = missed.entry(id).or_insert(0);
            *count = if ok { 0 } else { count.saturating_add(1) };
        }
        let alive: Vec<NodeId> =
            raft.voters().map(|(id, _)| id).filter(|id| missed.get(id).is_none_or(|&n| n < MISSED_PINGS)).collect();
        if alive != node.state.read().state.probers() {
            tracing::info!(node = node.id, probers = ?alive, "handing members over to the live nodes");
            if let Err(error) = node.write_local(Command::SetProbers { nodes: alive }).await {
                tracing::warn!(%error, "updating the probers failed; will retry");
            }
        }
    }
}
