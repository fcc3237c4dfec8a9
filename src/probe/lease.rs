//! Leases of lease-mode members, kept by the leader alone. Deadlines live in the leader's
//! memory, not in the log: a heartbeat costs no write. A leader that has just taken office (a
//! new term) knows no deadlines, so it gives every lease a full TTL, as etcd does: a leader
//! change never expires a lease early.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::path;
use crate::membership::Outcome;
use crate::membership::{Command, FailureDetection, GroupName, LeaveReason, MemberId, MembershipState};
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::raft::Applied;

/// How often the leader looks for expired leases; expiry is at most this late.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// A gap between ticks this long means this process was stalled (paused, starved): heartbeats
/// sent meanwhile may still be queued, so no deadline seen across the stall is trusted.
const STALL: Duration = Duration::from_millis(500);

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Heartbeat {
    Renewed { revision: u64, ttl_ms: u64 },
    NotMember,
    ProbeMode,
}

struct Lease {
    incarnation: u64,
    deadline: Instant,
    /// The scan that last saw this member; leases of members gone from the state are dropped.
    seen: u64,
}

#[derive(Default)]
struct Book {
    /// The term these deadlines were granted in.
    term: u64,
    scans: u64,
    /// By group, then member: looked up by reference, so a scan allocates only for new leases.
    leases: HashMap<GroupName, HashMap<MemberId, Lease>>,
}

/// The leader's lease deadlines.
#[derive(Default)]
pub struct Leases {
    book: Mutex<Book>,
}

impl Leases {
    fn book(&self, term: u64) -> std::sync::MutexGuard<'_, Book> {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if book.term != term {
            book.term = term;
            book.leases.clear();
        }
        book
    }

    /// Renews the lease of `id` as the leader of `term` sees it in `state` at `now`.
    pub fn heartbeat(
        &self,
        term: u64,
        state: &MembershipState,
        group: &GroupName,
        id: &MemberId,
        now: Instant,
    ) -> Heartbeat {
        let Some(member) = state.member(group, id) else {
            return Heartbeat::NotMember;
        };
        let FailureDetection::Lease { ttl_ms } = member.failure_detection else {
            return Heartbeat::ProbeMode;
        };
        let deadline = now + Duration::from_millis(ttl_ms);
        let mut book = self.book(term);
        let seen = book.scans;
        let lease = Lease { incarnation: member.incarnation, deadline, seen };
        book.leases.entry(group.clone()).or_default().insert(id.clone(), lease);
        Heartbeat::Renewed { revision: state.revision(), ttl_ms }
    }

    /// Forgets every deadline: each lease gets a full TTL from the next scan.
    pub fn reset(&self) {
        self.book.lock().unwrap_or_else(|e| e.into_inner()).leases.clear();
    }

    /// The lease members of `state` whose deadline passed; members seen for the first time in
    /// this term (or under a new incarnation) get a full TTL from `now`.
    pub fn expired(&self, term: u64, state: &MembershipState, now: Instant) -> Vec<(GroupName, MemberId, u64)> {
        let mut book = self.book(term);
        book.scans += 1;
        let scan = book.scans;
        let mut expired = Vec::new();
        for m in state.members() {
            let FailureDetection::Lease { ttl_ms } = m.failure_detection else { continue };
            let fresh = Lease { incarnation: m.incarnation, deadline: now + Duration::from_millis(ttl_ms), seen: scan };
            let group = match book.leases.get_mut(&m.group) {
                Some(group) => group,
                None => book.leases.entry(m.group.clone()).or_default(),
            };
            let lease = match group.get_mut(&m.id) {
                Some(lease) if lease.incarnation == m.incarnation => lease,
                Some(lease) => {
                    *lease = fresh;
                    lease
                }
                None => group.entry(m.id.clone()).or_insert(fresh),
            };
            lease.seen = scan;
            if lease.deadline <= now {
                expired.push((m.group.clone(), m.id.clone(), m.incarnation));
            }
        }
        book.leases.retain(|_, group| {
            group.retain(|_, lease| lease.seen == scan);
            !group.is_empty()
        });
        expired
    }
}

/// Renews a lease-mode member's lease at the leader, wherever it is. Counted in
/// `gm_lease_heartbeats_total` by its outcome where the leader answers it, and as `forwarded` on
/// a follower that passed it on.
pub async fn heartbeat(node: &Node, leases: &Leases, group: &GroupName, id: &MemberId) -> Result<Heartbeat, NodeError> {
    let key = (group.clone(), id.clone());
    let answered_here = AtomicBool::new(false);
    let answer = node
        .at_leader(path::HEARTBEAT, "heartbeat", &key, || {
            answered_here.store(true, Ordering::Relaxed);
            local_heartbeat(node, leases, group, id)
        })
        .await;
    match (&answer, answered_here.load(Ordering::Relaxed)) {
        (_, true) => count_heartbeat(node, &answer),
        (Ok(_), false) => node.metrics.lease_heartbeats.with_label_values(&["forwarded"]).inc(),
        (Err(_), false) => node.metrics.lease_heartbeats.with_label_values(&["error"]).inc(),
    }
    answer
}

/// Counts a heartbeat the leader answered, by its outcome.
pub fn count_heartbeat(node: &Node, answer: &Result<Heartbeat, NodeError>) {
    let outcome = match answer {
        Ok(Heartbeat::Renewed { .. }) => "ok",
        Ok(Heartbeat::NotMember) => "not_found",
        Ok(Heartbeat::ProbeMode) | Err(_) => "error",
    };
    node.metrics.lease_heartbeats.with_label_values(&[outcome]).inc();
}

/// The leader's half of a heartbeat: a linearizable look-up (sharing the batched read-index
/// rounds), then the renewal, only if this node still leads.
pub async fn local_heartbeat(
    node: &Node,
    leases: &Leases,
    group: &GroupName,
    id: &MemberId,
) -> Result<Heartbeat, NodeError> {
    node.linearize().await?;
    let term = node.leader_term().ok_or(NodeError::NotLeader)?;
    let m = node.state.read();
    Ok(leases.heartbeat(term, &m.state, group, id, Instant::now()))
}

/// A leader duty: removes members whose lease ran out, while this node leads `term`, until
/// `cancel` (the end of that leadership).
pub async fn run_expiry(
    node: Arc<Node>,
    leases: Arc<Leases>,
    metrics: Arc<Metrics>,
    term: u64,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if now - last > STALL {
            tracing::warn!(
                stalled_ms = (now - last).as_millis() as u64,
                "lease keeper was stalled; renewing every lease"
            );
            leases.reset();
        }
        let expired = {
            let m = node.state.read();
            leases.expired(term, &m.state, now)
        };
        let removals = expired.into_iter().map(|(group, id, incarnation)| {
            let (node, metrics) = (&node, &metrics);
            async move {
                let reason = LeaveReason::Expired;
                let command =
                    Command::Leave { group: group.clone(), id: id.clone(), incarnation: Some(incarnation), reason };
                match node.write_local(command).await {
                    Ok(Applied { outcome: Outcome::Left { .. }, .. }) => {
                        metrics.member_removed(reason);
                        tracing::info!(%group, member = %id, incarnation, "lease expired; member removed");
                    }
                    // Re-joined or gone meanwhile: nothing was removed.
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%group, member = %id, %error, "removing an expired member failed"),
                }
            }
        });
        futures::future::join_all(removals).await;
        // Time spent on removals is this loop's own work, not a stall of the process.
        last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MemberSpec, Timestamp};

    fn state_with(members: &[(&str, serde_json::Value)]) -> MembershipState {
        let mut s = MembershipState::default();
        s.apply(&Command::SetProbers { nodes: vec![1] });
        for (id, spec) in members {
            let spec: MemberSpec = serde_json::from_value(spec.clone()).unwrap();
            let command = Command::Join {
                group: GroupName::parse("g").unwrap(),
                id: MemberId::parse(id).unwrap(),
                spec,
                at: Timestamp::from_millis(0),
            };
            s.apply(&command);
        }
        s
    }

    fn lease(ttl_ms: u64) -> serde_json::Value {
        serde_json::json!({"address": "h:1", "failure_detection": {"mode": "lease", "ttl_ms": ttl_ms}})
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_after_its_ttl_without_heartbeats() {
        let s = state_with(&[("a", lease(1000)), ("p", serde_json::json!({"address": "h:1"}))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        assert!(leases.expired(1, &s, t0).is_empty(), "first sight grants a full TTL");
        assert!(leases.expired(1, &s, t0 + Duration::from_millis(999)).is_empty());
        let expired = leases.expired(1, &s, t0 + Duration::from_millis(1000));
        assert_eq!(expired.len(), 1, "only the lease member, never the probe member");
        assert_eq!(expired[0].1.as_str(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_push_the_deadline() {
        let s = state_with(&[("a", lease(1000))]);
        let (g, a) = (GroupName::parse("g").unwrap(), MemberId::parse("a").unwrap());
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.expired(1, &s, t0);
        assert!(matches!(
            leases.heartbeat(1, &s, &g, &a, t0 + Duration::from_millis(900)),
            Heartbeat::Renewed { ttl_ms: 1000, .. }
        ));
        assert!(leases.expired(1, &s, t0 + Duration::from_millis(1800)).is_empty());
        assert_eq!(leases.expired(1, &s, t0 + Duration::from_millis(1900)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_grants_a_full_ttl() {
        let s = state_with(&[("a", lease(1000))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.expired(1, &s, t0);
        // Term 2 starts late: the lease is not expired by the old deadline.
        assert!(leases.expired(2, &s, t0 + Duration::from_millis(1500)).is_empty());
        assert!(leases.expired(2, &s, t0 + Duration::from_millis(2499)).is_empty());
        assert_eq!(leases.expired(2, &s, t0 + Duration::from_millis(2500)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_grants_a_full_ttl() {
        let s = state_with(&[("a", lease(1000))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.expired(1, &s, t0);
        leases.reset();
        assert!(leases.expired(1, &s, t0 + Duration::from_millis(1500)).is_empty());
        assert_eq!(leases.expired(1, &s, t0 + Duration::from_millis(2500)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_answers_for_unknown_and_probe_members() {
        let s = state_with(&[("p", serde_json::json!({"address": "h:1"}))]);
        let g = GroupName::parse("g").unwrap();
        let leases = Leases::default();
        assert_eq!(leases.heartbeat(1, &s, &g, &MemberId::parse("x").unwrap(), Instant::now()), Heartbeat::NotMember);
        assert_eq!(leases.heartbeat(1, &s, &g, &MemberId::parse("p").unwrap(), Instant::now()), Heartbeat::ProbeMode);
    }
}
