//! Leases of lease-mode members, kept by the leader alone. Deadlines live in the leader's
//! memory, not in the log: a heartbeat costs no write. A leader that has just taken office (a
//! new term) knows no deadlines, so it gives every lease a full TTL, as etcd does: a leader
//! change never expires a lease early.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deadlines::Deadlines;
use super::path;
use crate::membership::Outcome;
use crate::membership::{Command, FailureDetection, GroupName, LeaveReason, Member, MemberId, MembershipState};
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::raft::state_machine::Change;
use crate::raft::Applied;

/// How often the leader looks for expired leases; expiry is at most this late.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// A gap between ticks this long means this process was stalled (paused, starved): heartbeats
/// sent meanwhile may still be queued, so no deadline seen across the stall is trusted.
const STALL: Duration = Duration::from_millis(500);
/// When an expired member is looked at again if its removal did not go through.
const RETRY: Duration = Duration::from_secs(1);

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Heartbeat {
    Renewed { revision: u64, ttl_ms: u64 },
    NotMember,
    ProbeMode,
}

type Key = (GroupName, MemberId);

struct Lease {
    incarnation: u64,
    ttl: Duration,
}

#[derive(Default)]
struct Book {
    /// The term these deadlines were granted in.
    term: u64,
    /// Every lease member's deadline, ordered by time: a tick looks only at the due ones.
    leases: Deadlines<Key, Lease>,
}

impl Book {
    /// Gives `member`, if it is `present` in the state and a lease member, a full TTL from `now`
    /// unless it already has a deadline for this incarnation; forgets it otherwise.
    fn track(&mut self, member: &Member, present: bool, now: Instant) {
        // Keyed by the state's copy of the group name, shared by its records.
        let key = (member.group.clone(), member.id.clone());
        let ttl_ms = match member.failure_detection {
            FailureDetection::Lease { ttl_ms } if present => ttl_ms,
            _ => {
                self.leases.remove(&key);
                return;
            }
        };
        if self.leases.get(&key).is_some_and(|(lease, _)| lease.incarnation == member.incarnation) {
            return;
        }
        let ttl = Duration::from_millis(ttl_ms);
        self.leases.insert(key, Lease { incarnation: member.incarnation, ttl }, now + ttl);
    }

    /// Looks at every member of `state`: once per term (and after a snapshot is installed).
    fn track_all(&mut self, state: &MembershipState, now: Instant) {
        for m in state.members() {
            let FailureDetection::Lease { ttl_ms } = m.failure_detection else { continue };
            if self.leases.get(&(m.group.clone(), m.id.clone())).is_some_and(|(l, _)| l.incarnation == m.incarnation) {
                continue;
            }
            let ttl = Duration::from_millis(ttl_ms);
            self.leases.insert((m.group.clone(), m.id.clone()), Lease { incarnation: m.incarnation, ttl }, now + ttl);
        }
    }
}

/// The leader's lease deadlines. The leader learns of lease members once per term (a scan of
/// the state when its expiry duty starts) and then from the changes it applies, so its idle
/// ticks cost nothing per member.
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

    /// Starts the book of `term`: every lease member of `state` not yet renewed in this term
    /// gets a full TTL from `now`, as a new leader knows no deadlines.
    pub fn begin(&self, term: u64, state: &MembershipState, now: Instant) {
        self.book(term).track_all(state, now);
    }

    /// Follows `changes` applied to `state`: a member that joined (or re-joined under a new
    /// incarnation) gets a full TTL from `now`; one that left is forgotten.
    pub fn follow(&self, term: u64, state: &MembershipState, changes: Vec<Change>, now: Instant) {
        let mut book = self.book(term);
        for change in changes {
            match change {
                Change::Joined(member) => book.track(&member, true, now),
                Change::Left(member) => book.track(&member, false, now),
                Change::Everything => book.track_all(state, now),
                Change::Probers => {}
            }
        }
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
        let ttl = Duration::from_millis(ttl_ms);
        let lease = Lease { incarnation: member.incarnation, ttl };
        self.book(term).leases.insert((member.group.clone(), id.clone()), lease, now + ttl);
        Heartbeat::Renewed { revision: state.revision(), ttl_ms }
    }

    /// Forgets the book of `term` when that leadership ends: a follower keeps no deadlines, and
    /// a book of a million leases is worth giving back.
    pub fn end(&self, term: u64) {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if book.term == term {
            book.leases.clear();
        }
    }

    /// Gives every lease a full TTL from `now` (after a stall of this process). Touches every
    /// lease, but only then.
    pub fn reset(&self, now: Instant) {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.leases.reschedule_all(|lease| now + lease.ttl);
    }

    /// The lease members whose deadline passed by `now`, still members of `state` under the
    /// incarnation the deadline was for. Only due deadlines are looked at. Each one returned is
    /// looked at again after [`RETRY`], in case its removal does not go through.
    pub fn expired(&self, term: u64, state: &MembershipState, now: Instant) -> Vec<(GroupName, MemberId, u64)> {
        let mut book = self.book(term);
        let mut expired = Vec::new();
        let (mut retry, mut renew) = (Vec::new(), Vec::new());
        while let Some((key, lease, _)) = book.leases.pop_due(now) {
            match state.member(&key.0, &key.1).filter(|m| !m.failure_detection.is_probe()) {
                Some(m) if m.incarnation == lease.incarnation => {
                    expired.push((key.0.clone(), key.1.clone(), lease.incarnation));
                    retry.push((key, lease));
                }
                // Re-joined under a new incarnation, a change not followed yet: a full TTL.
                Some(m) => renew.push(m),
                None => {}
            }
        }
        for (key, lease) in retry {
            book.leases.insert(key, lease, now + RETRY);
        }
        for member in renew {
            book.track(member, true, now);
        }
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
    // Follow the changes before the one scan of this term, so none falls between the two.
    let mut changes = node.state.changes();
    {
        let m = node.state.read();
        leases.begin(term, &m.state, Instant::now());
    }
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return leases.end(term),
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if now - last > STALL {
            tracing::warn!(
                stalled_ms = (now - last).as_millis() as u64,
                "lease keeper was stalled; renewing every lease"
            );
            leases.reset(now);
        }
        let mut followed = Vec::new();
        while let Ok(change) = changes.try_recv() {
            followed.push(change);
        }
        let expired = {
            let m = node.state.read();
            leases.follow(term, &m.state, followed, now);
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

    fn key(id: &str) -> (GroupName, MemberId) {
        (GroupName::parse("g").unwrap(), MemberId::parse(id).unwrap())
    }

    fn ids(expired: Vec<(GroupName, MemberId, u64)>) -> Vec<String> {
        expired.into_iter().map(|(_, id, _)| id.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_after_its_ttl_without_heartbeats() {
        let s = state_with(&[("a", lease(1000)), ("p", serde_json::json!({"address": "h:1"}))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.begin(1, &s, t0);
        assert!(leases.expired(1, &s, t0).is_empty(), "the first sight in a term grants a full TTL");
        assert!(leases.expired(1, &s, t0 + Duration::from_millis(999)).is_empty());
        let expired = leases.expired(1, &s, t0 + Duration::from_millis(1000));
        assert_eq!(ids(expired), ["a"], "only the lease member, never the probe member");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_push_the_deadline() {
        let s = state_with(&[("a", lease(1000))]);
        let (g, a) = key("a");
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.begin(1, &s, t0);
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
        leases.begin(1, &s, t0);
        // Term 2 starts late: the lease is not expired by the old deadline.
        leases.begin(2, &s, t0 + Duration::from_millis(1500));
        assert!(leases.expired(2, &s, t0 + Duration::from_millis(1500)).is_empty());
        assert!(leases.expired(2, &s, t0 + Duration::from_millis(2499)).is_empty());
        assert_eq!(leases.expired(2, &s, t0 + Duration::from_millis(2500)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_grants_a_full_ttl() {
        let s = state_with(&[("a", lease(1000))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.begin(1, &s, t0);
        leases.reset(t0 + Duration::from_millis(1500));
        assert!(leases.expired(1, &s, t0 + Duration::from_millis(1500)).is_empty());
        assert_eq!(leases.expired(1, &s, t0 + Duration::from_millis(2500)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn joins_and_leaves_are_followed_without_a_scan() {
        let mut s = state_with(&[("a", lease(1000))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.begin(1, &s, t0);
        // Joined after the scan: known from the change alone.
        let spec = serde_json::from_value(lease(500)).unwrap();
        let (g, b) = key("b");
        let Outcome::Joined { member: b, .. } =
            s.apply(&Command::Join { group: g, id: b, spec, at: Timestamp::from_millis(0) })
        else {
            panic!("b did not join");
        };
        let t1 = t0 + Duration::from_millis(200);
        leases.follow(1, &s, vec![Change::Joined(b)], t1);
        assert_eq!(ids(leases.expired(1, &s, t1 + Duration::from_millis(500))), ["b"]);
        // A member that left is forgotten; a due deadline of a member gone is dropped too.
        let (g, a) = key("a");
        let Outcome::Left { member: a } =
            s.apply(&Command::Leave { group: g, id: a, incarnation: None, reason: LeaveReason::Left })
        else {
            panic!("a did not leave");
        };
        leases.follow(1, &s, vec![Change::Left(a)], t1);
        assert!(ids(leases.expired(1, &s, t0 + Duration::from_millis(5000))).iter().all(|id| id != "a"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_member_is_retried_until_it_is_gone() {
        let mut s = state_with(&[("a", lease(1000))]);
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.begin(1, &s, t0);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(leases.expired(1, &s, t1).len(), 1);
        assert!(leases.expired(1, &s, t1 + RETRY / 2).is_empty(), "not again while its removal is on the way");
        assert_eq!(leases.expired(1, &s, t1 + RETRY).len(), 1, "the removal failed: expired again");
        let (g, a) = key("a");
        s.apply(&Command::Leave { group: g, id: a, incarnation: None, reason: LeaveReason::Expired });
        assert!(leases.expired(1, &s, t1 + RETRY * 3).is_empty());
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
