//! Probes the members this node is responsible for, each once per `--probe-interval`, and
//! removes one after `--suspect-after` consecutive failures, but only if another GM node also
//! fails to reach it (a ping-req, as in SWIM) and only for the incarnation that was probed.
//! A node cut off from its members (but not from the other nodes) evicts no one: the others
//! still reach them. A node cut off from the other nodes cannot ask them, and evicts no one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check::{Checker, ProbeTarget, Probed};
use super::path;
use super::ProbeConfig;
use crate::membership::{Command, FailureDetection, GroupName, LeaveReason, MemberId, NodeId, Outcome};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft::Applied;

/// Probes on the way at once: past this, due probes wait (and count as late), so a node with
/// more members than it can probe sheds probes instead of starving its own Raft work.
const MAX_PROBES_IN_FLIGHT: usize = 2048;
/// Most other nodes asked to probe a suspect before it is removed.
const INDIRECT_PROBERS: usize = 4;

type Key = (GroupName, MemberId);

struct Tracked {
    target: ProbeTarget,
    failures: u32,
    next_due: Instant,
    busy: bool,
}

enum Done {
    Probed {
        key: Key,
        incarnation: u64,
        probed: Probed,
    },
    /// A suspect's fate is settled (removed or found alive elsewhere) or left for later.
    Judged {
        key: Key,
        incarnation: u64,
        removed: bool,
    },
}

/// Probes and evicts until `cancel`.
pub async fn run(
    node: Arc<Node>,
    config: ProbeConfig,
    checker: Checker,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let tick = (config.interval / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracked: HashMap<Key, Tracked> = HashMap::new();
    let mut synced_at = u64::MAX;
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut overloaded = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            Some(Ok(done)) = tasks.join_next(), if !tasks.is_empty() => {
                settle(&node, &config, &checker, &metrics, &mut tracked, &mut tasks, done);
                continue;
            }
        }
        let revision = node.state.revision();
        if revision != synced_at {
            sync(&node, &config, &mut tracked);
            synced_at = revision;
        }
        let now = Instant::now();
        let mut lateness = Duration::ZERO;
        for (key, t) in tracked.iter_mut().filter(|(_, t)| !t.busy && t.next_due <= now) {
            lateness = lateness.max(now - t.next_due);
            if tasks.len() >= MAX_PROBES_IN_FLIGHT {
                continue;
            }
            t.busy = true;
            // From the due time, not from now: probes keep their period instead of slipping by a
            // tick each round. Behind schedule, from now: no catching up, the period stretches.
            t.next_due = if overloaded { now + config.interval } else { (t.next_due + config.interval).max(now) };
            let (checker, target, key) = (checker.clone(), t.target.clone(), key.clone());
            tasks.spawn(async move {
                let probed = checker.probe(&target).await;
                Done::Probed { key, incarnation: target.incarnation, probed }
            });
        }
        // Probes starting half an interval late: this node cannot keep up with its members.
        overloaded = lateness > config.interval / 2;
        checker.set_overloaded(overloaded);
    }
}

/// Brings the tracked set in line with the members this node is responsible for now, keeping
/// the failure count of a member whose incarnation did not change.
fn sync(node: &Node, config: &ProbeConfig, tracked: &mut HashMap<Key, Tracked>) {
    let m = node.state.read();
    let mut next = HashMap::with_capacity(tracked.len());
    let now = Instant::now();
    for member in m.state.probed_by(node.id) {
        let FailureDetection::Probe { path } = &member.failure_detection else { continue };
        let key = (member.group.clone(), member.id.clone());
        let entry = match tracked.remove(&key) {
            Some(t) if t.target.incarnation == member.incarnation => t,
            _ => Tracked {
                target: ProbeTarget {
                    group: member.group.clone(),
                    id: member.id.clone(),
                    incarnation: member.incarnation,
                    address: member.address.clone(),
                    path: path.clone(),
                },
                failures: 0,
                // Spread first probes over an interval so a handover does not probe in a burst.
                next_due: now + config.interval.mul_f64(rand::random::<f64>()),
                busy: false,
            },
        };
        next.insert(key, entry);
    }
    *tracked = next;
}

fn settle(
    node: &Arc<Node>,
    config: &ProbeConfig,
    checker: &Checker,
    metrics: &Arc<Metrics>,
    tracked: &mut HashMap<Key, Tracked>,
    tasks: &mut JoinSet<Done>,
    done: Done,
) {
    match done {
        Done::Probed { key, incarnation, probed } => {
            metrics.observe_probe(probed.result.as_str(), probed.took);
            let alive = probed.alive;
            let Some(t) = tracked.get_mut(&key).filter(|t| t.target.incarnation == incarnation) else { return };
            match alive {
                Some(false) => {}
                Some(true) => {
                    t.failures = 0;
                    t.busy = false;
                    return;
                }
                None => {
                    t.busy = false;
                    return;
                }
            }
            t.failures += 1;
            if t.failures < config.suspect_after {
                t.busy = false;
                return;
            }
            metrics.suspicions.inc();
            let (node, checker, metrics, target) =
                (Arc::clone(node), checker.clone(), Arc::clone(metrics), t.target.clone());
            tasks.spawn(async move {
                let removed = judge(&node, &checker, &metrics, &target).await;
                Done::Judged { key, incarnation: target.incarnation, removed }
            });
        }
        Done::Judged { key, incarnation, removed } => {
            // The entry may already track a newer incarnation, which the judgement is not about.
            if tracked.get(&key).is_some_and(|t| t.target.incarnation == incarnation) {
                if removed {
                    tracked.remove(&key);
                } else if let Some(t) = tracked.get_mut(&key) {
                    t.busy = false;
                }
            }
        }
    }
}

/// Asks other nodes to probe the suspect; removes it only if none reached it and at least one
/// saw it fail, so a node cut off from everyone (or whose peers are overloaded) removes nothing. Returns whether it was removed.
async fn judge(node: &Node, checker: &Checker, metrics: &Metrics, target: &ProbeTarget) -> bool {
    let others = other_probers(node);
    let asks = others.iter().map(|(peer, addr)| async move {
        let timeout = checker.timeout() * 2;
        (*peer, node.peers().call::<_, Option<bool>>(addr, path::INDIRECT_PROBE, target, timeout).await)
    });
    // A single-node cluster has only its own judgement.
    let mut answered = usize::from(others.is_empty());
    for (peer, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(Some(true)) => {
                metrics.suspicions_refuted.inc();
                tracing::info!(group = %target.group, member = %target.id, via = peer, "suspect answered an indirect probe; kept");
                return false;
            }
            Ok(Some(false)) => answered += 1,
            Ok(None) => {}
            Err(error) => tracing::debug!(via = peer, %error, "indirect probe could not be asked"),
        }
    }
    if answered == 0 {
        return false;
    }
    let reason = LeaveReason::Failed;
    let command = Command::Leave {
        group: target.group.clone(),
        id: target.id.clone(),
        incarnation: Some(target.incarnation),
        reason,
    };
    match node.write(command).await {
        Ok(Applied { outcome: Outcome::Left { .. }, .. }) => {
            metrics.member_removed(reason);
            tracing::info!(group = %target.group, member = %target.id, incarnation = target.incarnation, "member failed; removed");
            true
        }
        // It re-joined or left meanwhile: the probed incarnation is gone, a newer one is not.
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(group = %target.group, member = %target.id, %error, "removing a failed member failed");
            false
        }
    }
}

/// Up to [`INDIRECT_PROBERS`] other probing nodes, picked at random, with their peer addresses.
fn other_probers(node: &Node) -> Vec<(NodeId, String)> {
    let probers: Vec<NodeId> = node.state.read().state.probers().to_vec();
    let raft = node.raft_view();
    let mut others: Vec<(NodeId, String)> = probers
        .into_iter()
        .filter(|&id| id != node.id)
        .filter_map(|id| Some((id, raft.peer_addr(id)?.to_owned())))
        .collect();
    others.shuffle(&mut rand::thread_rng());
    others.truncate(INDIRECT_PROBERS);
    others
}
