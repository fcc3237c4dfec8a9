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
use super::deadlines::Deadlines;
use super::path;
use super::ProbeConfig;
use crate::membership::{Command, FailureDetection, GroupName, LeaveReason, Member, MemberId, NodeId, Outcome};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft::state_machine::Change;
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
    /// A probe or a judgement is on the way; the member is out of the schedule until it ends.
    busy: bool,
}

/// The members this node probes, and when each is due next (those not busy): a tick takes out
/// only the due ones, so its cost follows the probes made, not the members tracked.
#[derive(Default)]
struct Book {
    tracked: HashMap<Key, Tracked>,
    due: Deadlines<Key, ()>,
}

impl Book {
    /// Back in the schedule at its next due time, once its probe or judgement ended.
    fn idle(&mut self, key: &Key) {
        if let Some(t) = self.tracked.get_mut(key) {
            t.busy = false;
            self.due.insert(key.clone(), (), t.next_due);
        }
    }

    fn remove(&mut self, key: &Key) {
        self.tracked.remove(key);
        self.due.remove(key);
    }
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
    // Follow the changes before the first sync, so none falls between the two.
    let mut changes = node.state.changes();
    let mut book = Book::default();
    sync(&node, &config, &mut book);
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut overloaded = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            Some(Ok(done)) = tasks.join_next(), if !tasks.is_empty() => {
                settle(&node, &config, &checker, &metrics, &mut book, &mut tasks, done);
                continue;
            }
        }
        follow(&node, &config, &mut book, &mut changes);
        let now = Instant::now();
        let mut lateness = Duration::ZERO;
        while tasks.len() < MAX_PROBES_IN_FLIGHT {
            let Some((key, (), due)) = book.due.pop_due(now) else { break };
            let Some(t) = book.tracked.get_mut(&key) else { continue };
            lateness = lateness.max(now - due);
            t.busy = true;
            // From the due time, not from now: probes keep their period instead of slipping by a
            // tick each round. Behind schedule, from now: no catching up, the period stretches.
            t.next_due = if overloaded { now + config.interval } else { (due + config.interval).max(now) };
            let (checker, target) = (checker.clone(), t.target.clone());
            tasks.spawn(async move {
                let probed = checker.probe(&target).await;
                Done::Probed { key, incarnation: target.incarnation, probed }
            });
        }
        // Probes left waiting for a free slot are late too.
        if let Some(next) = book.due.next().filter(|&next| next <= now) {
            lateness = lateness.max(now - next);
        }
        // Probes starting half an interval late: this node cannot keep up with its members.
        overloaded = lateness > config.interval / 2;
        checker.set_overloaded(overloaded);
    }
}

/// Applies the changes since the last tick: a member that joined, re-joined or left is looked
/// up alone; new probers (or a snapshot installed) bring the whole tracked set in line.
fn follow(
    node: &Node,
    config: &ProbeConfig,
    book: &mut Book,
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<Change>,
) {
    let mut members = Vec::new();
    let mut everything = false;
    while let Ok(change) = changes.try_recv() {
        match change {
            Change::Joined(member) => members.push((member, true)),
            Change::Left(member) => members.push((member, false)),
            Change::Probers | Change::Everything => everything = true,
        }
    }
    if everything {
        sync(node, config, book);
    } else {
        // In the order applied, from the records the changes carry: no lookup, no lock.
        let now = Instant::now();
        for (member, present) in members {
            track(node.id, config, book, &member, present, now);
        }
    }
}

/// Tracks `member` if it is `present` in the state and this node is responsible for it,
/// keeping its failure count if its incarnation did not change; forgets it otherwise.
fn track(me: NodeId, config: &ProbeConfig, book: &mut Book, member: &Member, present: bool, now: Instant) {
    // Keyed by the state's copy of the group name, shared by its records.
    let key = (member.group.clone(), member.id.clone());
    let path = match &member.failure_detection {
        FailureDetection::Probe { path } if present && member.responsible_node == Some(me) => path,
        _ => {
            book.remove(&key);
            return;
        }
    };
    if book.tracked.get(&key).is_some_and(|t| t.target.incarnation == member.incarnation) {
        return;
    }
    // Spread first probes over an interval so a handover does not probe in a burst.
    let next_due = now + config.interval.mul_f64(rand::random::<f64>());
    let target = ProbeTarget {
        group: member.group.clone(),
        id: member.id.clone(),
        incarnation: member.incarnation,
        address: member.address.clone(),
        path: path.clone(),
    };
    book.tracked.insert(key.clone(), Tracked { target, failures: 0, next_due, busy: false });
    book.due.insert(key, (), next_due);
}

/// Brings the tracked set in line with the members this node is responsible for now, keeping
/// the failure count of a member whose incarnation did not change. Looks at every member: at
/// start, and when the probers change.
fn sync(node: &Node, config: &ProbeConfig, book: &mut Book) {
    let m = node.state.read();
    let now = Instant::now();
    let mut old = std::mem::take(&mut book.tracked);
    book.due.clear();
    for member in m.state.probed_by(node.id) {
        let key = (member.group.clone(), member.id.clone());
        match old.remove(&key) {
            Some(t) if t.target.incarnation == member.incarnation => {
                if !t.busy {
                    book.due.insert(key.clone(), (), t.next_due);
                }
                book.tracked.insert(key, t);
            }
            _ => track(node.id, config, book, member, true, now),
        }
    }
}

fn settle(
    node: &Arc<Node>,
    config: &ProbeConfig,
    checker: &Checker,
    metrics: &Arc<Metrics>,
    book: &mut Book,
    tasks: &mut JoinSet<Done>,
    done: Done,
) {
    match done {
        Done::Probed { key, incarnation, probed } => {
            metrics.observe_probe(probed.result.as_str(), probed.took);
            let alive = probed.alive;
            let Some(t) = book.tracked.get_mut(&key).filter(|t| t.target.incarnation == incarnation) else { return };
            match alive {
                Some(false) => {}
                Some(true) => {
                    t.failures = 0;
                    book.idle(&key);
                    return;
                }
                None => {
                    book.idle(&key);
                    return;
                }
            }
            t.failures += 1;
            if t.failures < config.suspect_after {
                book.idle(&key);
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
            if book.tracked.get(&key).is_some_and(|t| t.target.incarnation == incarnation) {
                if removed {
                    book.remove(&key);
                } else {
                    book.idle(&key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MemberSpec, MembershipState, Timestamp};

    fn config() -> ProbeConfig {
        ProbeConfig { interval: Duration::from_secs(1), timeout: Duration::from_millis(500), suspect_after: 3 }
    }

    /// Applies `command` to `state` and returns the record it joined or removed.
    fn record(state: &mut MembershipState, command: Command) -> Arc<Member> {
        match state.apply(&command) {
            Outcome::Joined { member, .. } | Outcome::Left { member } => member,
            other => panic!("expected a join or a leave, got {other:?}"),
        }
    }

    fn join(id: &str, spec: serde_json::Value) -> Command {
        Command::Join {
            group: GroupName::parse("g").unwrap(),
            id: MemberId::parse(id).unwrap(),
            spec: serde_json::from_value::<MemberSpec>(spec).unwrap(),
            at: Timestamp::from_millis(0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_records_of_changes_decide_what_is_probed() {
        let mut s = MembershipState::default();
        s.apply(&Command::SetProbers { nodes: vec![1] });
        let (mut book, now) = (Book::default(), Instant::now());
        let probe = serde_json::json!({"address": "h:1"});

        let joined = record(&mut s, join("a", probe.clone()));
        track(1, &config(), &mut book, &joined, true, now);
        let key = (joined.group.clone(), joined.id.clone());
        assert_eq!(book.tracked[&key].target.incarnation, joined.incarnation);
        assert!(book.due.next().is_some(), "scheduled for a first probe");

        // Another node's member is not this node's to probe.
        track(2, &config(), &mut book, &record(&mut s, join("b", probe.clone())), true, now);
        assert_eq!(book.tracked.len(), 1);

        // The same incarnation again keeps the failures counted so far; a re-join starts anew.
        book.tracked.get_mut(&key).unwrap().failures = 2;
        track(1, &config(), &mut book, &joined, true, now);
        assert_eq!(book.tracked[&key].failures, 2);
        let rejoined = record(&mut s, join("a", serde_json::json!({"address": "h:2"})));
        track(1, &config(), &mut book, &rejoined, true, now);
        assert_eq!(book.tracked[&key].failures, 0);
        assert_eq!(book.tracked[&key].target.address.as_str(), "h:2");

        // A re-join in lease mode, or a leave, stops the probes.
        let leased = record(
            &mut s,
            join("a", serde_json::json!({"address": "h:2", "failure_detection": {"mode": "lease", "ttl_ms": 1000}})),
        );
        track(1, &config(), &mut book, &leased, true, now);
        assert!(book.tracked.is_empty() && book.due.next().is_none());
        let back = record(&mut s, join("a", probe));
        track(1, &config(), &mut book, &back, true, now);
        assert_eq!(book.tracked.len(), 1);
        let left =
            record(&mut s, Command::Leave { group: key.0, id: key.1, incarnation: None, reason: LeaveReason::Left });
        track(1, &config(), &mut book, &left, false, now);
        assert!(book.tracked.is_empty() && book.due.next().is_none());
    }
}
