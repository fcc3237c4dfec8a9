//! Pre-vote (Raft thesis §9.6, etcd's `PreVote`): before a node starts an election, it asks the
//! voters whether they would vote for it, and starts one only if a majority would.
//!
//! openraft 0.9 has no pre-vote. Without it, a follower that missed the leader's heartbeats
//! (frozen by `kill -STOP`, a long pause, CPU throttling of its pod, a one-way cut) starts an
//! election the moment it runs again. Its higher term then reaches the leader, which steps down:
//! writes stop for an election, for a leader that was alive all along.
//!
//! So openraft's own election timer is off (`Config::enable_elect`), and [`Elections`] decides
//! when it may run, with the same timing: a voter that has heard from no leader for openraft's
//! election timeout (plus `leader_lease` if its vote was committed) asks the others first, and
//! only with a majority of grants switches openraft's timer on for a window, which then elects
//! as before. A node grants a pre-vote only if the candidate's log is at least as new as its own
//! (as a real vote needs: a stale node could not win, and its elections would only raise the
//! term) and it has no live leader itself: as a follower, none heard from within its
//! `leader_lease` (the time it would refuse the real vote anyway); as the leader, no quorum
//! acknowledgement within that time. Granting changes nothing on the granting node.
//!
//! Safety does not rest on this: the real vote, in openraft, decides; a pre-vote only decides
//! whether to ask for it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::log_store::LogStore;
use super::network::{PeerClient, PeerError};
use super::{LogId, Raft, RaftMetrics};
use crate::membership::NodeId;
use crate::metrics::Metrics;

/// The peer route of pre-votes, beside Raft's own.
pub const PATH: &str = "/raft/pre-vote";

/// How often an open election window looks whether a leader was heard from: a heartbeat
/// changes no Raft metric.
const WINDOW_RECHECK: Duration = Duration::from_millis(20);

/// A would-be candidate's question: would you vote for `candidate`, whose log ends at
/// `last_log_id`?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
}

/// When this node last heard from a leader (an AppendEntries or a snapshot it accepted), and
/// when its election timer last started again: on the same, and on a vote it granted, as
/// openraft's does. Granting a vote is no news of a leader, so only the first decides whether
/// this node grants pre-votes or names a leader. Clones share one record, which starts when the
/// node does.
#[derive(Clone)]
pub struct LeaderContact(Arc<Mutex<Clocks>>);

#[derive(Clone, Copy)]
struct Clocks {
    heard: Instant,
    reset: Instant,
}

impl Default for LeaderContact {
    fn default() -> Self {
        let now = Instant::now();
        LeaderContact(Arc::new(Mutex::new(Clocks { heard: now, reset: now })))
    }
}

impl LeaderContact {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clocks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a leader was heard from now.
    pub fn heard(&self) {
        let now = Instant::now();
        *self.lock() = Clocks { heard: now, reset: now };
    }

    /// Records that this node granted a vote now: its election timer starts again.
    pub fn voted(&self) {
        self.lock().reset = Instant::now();
    }

    /// When a leader was last heard from.
    pub fn last(&self) -> Instant {
        self.lock().heard
    }

    /// When the election timer last started again.
    fn reset(&self) -> Instant {
        self.lock().reset
    }
}

/// What a node that receives a pre-vote knows of its own leader.
#[derive(Clone, Copy, Debug)]
pub struct Standing {
    /// The id of its log's last entry.
    pub last_log_id: Option<LogId>,
    /// As the leader, the time since a quorum last acknowledged it (zero before the first
    /// acknowledgement of a new leadership); `None` on a node that does not lead.
    pub since_quorum_ack: Option<Duration>,
    /// The time since it last heard from a leader ([`LeaderContact`]).
    pub since_contact: Duration,
}

impl Standing {
    /// A node's standing from its Raft metrics, its log and its [`LeaderContact`].
    pub fn of(metrics: &RaftMetrics, log: &LogStore, contact: &LeaderContact) -> Standing {
        let leading = metrics.state == openraft::ServerState::Leader;
        Standing {
            last_log_id: log.last_log_id(),
            since_quorum_ack: leading
                .then(|| metrics.millis_since_quorum_ack.map_or(Duration::ZERO, Duration::from_millis)),
            since_contact: contact.last().elapsed(),
        }
    }

    /// Whether a node of this standing, whose `leader_lease` is `lease`, grants `request`: the
    /// candidate's log is at least as new, and this node has no live leader.
    pub fn grants(&self, request: &PreVoteRequest, lease: Duration) -> bool {
        let leads = self.since_quorum_ack.is_some_and(|acked| acked < lease);
        request.last_log_id >= self.last_log_id && !leads && self.since_contact >= lease
    }
}

/// Whether `granted` holds a majority of each voter set in `configs` (one set, or the old and
/// the new during a joint change). No sets, no majority.
fn majority_of_each(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty()
        && configs.iter().all(|voters| voters.iter().filter(|v| granted.contains(v)).count() > voters.len() / 2)
}

/// A node's election timer, in place of openraft's: see the module's documentation.
pub struct Elections {
    pub raft: Raft,
    pub log: LogStore,
    pub me: NodeId,
    pub peers: PeerClient,
    pub contact: LeaderContact,
    /// openraft's `election_timeout_min` and `election_timeout_max`; the latter is also its
    /// `leader_lease`.
    pub timeout: (Duration, Duration),
    /// When the node started: its first wait runs from here, however long it then waited to
    /// vote again ([`super::vote_quarantine`]).
    pub started: Instant,
    pub metrics: Arc<Metrics>,
}

impl Elections {
    /// Runs the timer until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        // The timer runs from its last reset or the last attempt, whichever is later. An
        // attempt is not a contact: this node's own attempts must not make it refuse others'.
        let mut attempted = self.started;
        // The shortest election timeout: the pre-vote is asked by the time openraft's timer,
        // whose own timeout is drawn between the shortest and the longest, could elect, so that
        // it elects as early as it would have without pre-vote.
        let timeout = self.timeout.0;
        // The last pre-vote's outcome: a change is logged at info, a repeat at debug (a node cut
        // off from the others asks twice a second).
        let mut last_won = None;
        loop {
            loop {
                let (committed, alone) = {
                    let m = self.raft.metrics();
                    let m = m.borrow();
                    let alone = m.membership_config.membership().voter_ids().eq([self.me]);
                    let for_another = m.vote.leader_id().voted_for().is_some_and(|v| v != self.me);
                    (m.vote.is_committed(), (alone && m.state != openraft::ServerState::Leader).then_some(for_another))
                };
                // A node whose vote was committed knows a leader: openraft waits out that
                // leader's lease as well. A single voter needs no one: it elects at once, unless
                // it promised another leader a lease (that leader just made it the only voter).
                let wait = match (alone, committed) {
                    (Some(false), _) => Duration::ZERO,
                    (Some(true), true) => self.timeout.1,
                    (_, true) => timeout + self.timeout.1,
                    (_, false) => timeout,
                };
                let deadline = self.contact.reset().max(attempted) + wait;
                if Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = cancel.cancelled() => return,
                }
            }
            let metrics = self.raft.metrics().borrow().clone();
            let voters = metrics.membership_config.membership().get_joint_config().clone();
            let leads = metrics.state == openraft::ServerState::Leader;
            let mut settled = true;
            if !leads && voters.iter().any(|set| set.contains(&self.me)) {
                let won = tokio::select! {
                    won = self.pre_vote(&metrics, &voters) => won,
                    () = cancel.cancelled() => return,
                };
                self.metrics.pre_votes.with_label_values(&[if won { "won" } else { "lost" }]).inc();
                if won {
                    tracing::info!(node = self.me, term = metrics.current_term, "no leader heard from: elections on");
                    match self.let_openraft_elect(metrics.current_term, &cancel).await {
                        None => return,
                        Some(elected) => settled = elected,
                    }
                } else if last_won != Some(false) {
                    tracing::info!(
                        node = self.me,
                        "no leader heard from, but no majority would vote for this node (they hear from a leader, \
                         have a newer log, or are unreachable): no election"
                    );
                } else {
                    tracing::debug!(node = self.me, "pre-vote lost again");
                }
                last_won = Some(won);
            }
            // The next attempt waits a whole timeout from here, as openraft's timer would; after
            // an election that found no leader, up to one more, drawn: nodes that lost their
            // leader together asked together, and must not split the vote again and again.
            let jitter = if settled { Duration::ZERO } else { rand::thread_rng().gen_range(Duration::ZERO..=timeout) };
            attempted = Instant::now() + jitter;
        }
    }

    /// Switches openraft's own election timer on until it has started one election (the term
    /// moved past `term`), a leader was heard from or a vote granted, or a window passed that is
    /// longer than the gap between this timer and openraft's (each waits between the shortest
    /// and the longest election timeout). openraft's timer checks, inside its core and in order
    /// with the AppendEntries it accepted, that no leader was heard from for its election
    /// timeout, so a heartbeat that arrived after the pre-vote still stops the election, and the
    /// promise that heartbeat's answer made holds. Then waits, at most as long again, for the
    /// election to name a leader. `Some(true)` if a leader of a later term is known, `None` if
    /// cancelled.
    async fn let_openraft_elect(&self, term: u64, cancel: &CancellationToken) -> Option<bool> {
        let window = self.timeout.0 + self.timeout.1;
        let runtime = self.raft.runtime_config();
        let opened = Instant::now();
        let mut metrics = self.raft.metrics();
        runtime.elect(true);
        let closed = async {
            let deadline = opened + window;
            while Instant::now() < deadline && self.contact.reset() <= opened {
                let next = deadline.min(Instant::now() + WINDOW_RECHECK);
                if let Ok(Ok(())) = tokio::time::timeout_at(next, metrics.changed()).await {
                    if metrics.borrow().current_term > term {
                        break;
                    }
                }
            }
        };
        tokio::select! {
            () = closed => {}
            () = cancel.cancelled() => {
                runtime.elect(false);
                return None;
            }
        }
        runtime.elect(false);
        let elected = metrics.wait_for(|m| m.current_term > term && m.current_leader.is_some());
        tokio::select! {
            result = tokio::time::timeout(window, elected) => Some(matches!(result, Ok(Ok(_)))),
            () = cancel.cancelled() => None,
        }
    }

    /// Asks every other voter in `configs`; true once a majority of each set would vote for this
    /// node. A peer of an older gm, whose router has no pre-vote route (404 with an empty body),
    /// counts as granting: it behaves as before, and so does the cluster while it is upgraded.
    async fn pre_vote(&self, metrics: &RaftMetrics, configs: &[BTreeSet<NodeId>]) -> bool {
        let request = PreVoteRequest { candidate: self.me, last_log_id: self.log.last_log_id() };
        let membership = metrics.membership_config.membership();
        let others: BTreeSet<NodeId> = configs.iter().flatten().copied().filter(|&id| id != self.me).collect();
        let asks = others.into_iter().filter_map(|id| {
            let addr = membership.get_node(&id)?.peer_addr.clone();
            Some(async move {
                let answer =
                    self.peers.call_node::<_, PreVoteResponse>(id, &addr, PATH, &request, self.timeout.0).await;
                let granted = match self.peers.record(id, &addr, answer) {
                    Ok((answer, _)) => answer.granted,
                    Err(PeerError::Status { status: 404, body, .. }) => body.is_empty(),
                    Err(_) => false,
                };
                granted.then_some(id)
            })
        });
        // Decided as soon as a majority grants: a voter that is down answers only at the timeout.
        let mut answers: FuturesUnordered<_> = asks.collect();
        let mut granted = BTreeSet::from([self.me]);
        while !majority_of_each(configs, &granted) {
            match answers.next().await {
                Some(Some(id)) => {
                    granted.insert(id);
                }
                Some(None) => {}
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(500);

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    fn asked(last_log_id: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest { candidate: 2, last_log_id }
    }

    fn follower(since_contact: Duration) -> Standing {
        Standing { last_log_id: log_id(3, 10), since_quorum_ack: None, since_contact }
    }

    #[test]
    fn a_follower_grants_only_once_its_leader_is_silent_for_its_election_timeout() {
        assert!(!follower(T / 2).grants(&asked(log_id(3, 10)), T), "heard from its leader lately");
        assert!(follower(T).grants(&asked(log_id(3, 10)), T));
    }

    #[test]
    fn a_candidate_with_an_older_log_is_refused() {
        assert!(!follower(T).grants(&asked(log_id(3, 9)), T), "fewer entries of the same term");
        assert!(!follower(T).grants(&asked(log_id(2, 50)), T), "more entries of an older term");
        assert!(!follower(T).grants(&asked(None), T), "an empty log");
        assert!(follower(T).grants(&asked(log_id(4, 2)), T), "a newer term");
        let empty = Standing { last_log_id: None, ..follower(T) };
        assert!(empty.grants(&asked(None), T), "both empty: a new cluster");
    }

    #[test]
    fn a_leader_grants_only_without_a_recent_quorum() {
        let leader = |acked| Standing { since_quorum_ack: acked, since_contact: T * 10, ..follower(T) };
        let request = asked(log_id(3, 10));
        assert!(!leader(Some(T / 5)).grants(&request, T), "a majority acknowledged it lately");
        assert!(leader(Some(T * 2)).grants(&request, T), "cut off from its quorum");
        assert!(leader(None).grants(&request, T), "never acknowledged");
    }

    #[test]
    fn a_majority_of_each_voter_set_is_needed() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<_>>();
        assert!(majority_of_each(&[set(&[1, 2, 3])], &set(&[1, 3])));
        assert!(!majority_of_each(&[set(&[1, 2, 3])], &set(&[1])));
        assert!(majority_of_each(&[set(&[1])], &set(&[1])), "a single voter is its own majority");
        let joint = [set(&[1, 2, 3]), set(&[1, 4, 5])];
        assert!(!majority_of_each(&joint, &set(&[1, 2, 3])), "none of the new voters");
        assert!(majority_of_each(&joint, &set(&[1, 2, 4])));
        assert!(!majority_of_each(&[], &set(&[1])), "no voters, no majority");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_heard_resets_both_clocks_a_vote_only_the_timer() {
        let contact = LeaderContact::default();
        let start = contact.last();
        tokio::time::advance(T).await;
        contact.clone().voted();
        assert_eq!((contact.last(), contact.reset() - start), (start, T), "a vote is no news of a leader");
        tokio::time::advance(T).await;
        contact.clone().heard();
        assert_eq!((contact.last() - start, contact.reset() - start), (T * 2, T * 2));
    }
}
