//! The leader's read lease (Ongaro's thesis §6.4.1; TiKV and CockroachDB serve reads the same
//! way): while a majority of the voters has acknowledged one of this leader's AppendEntries (a
//! heartbeat counts) sent within the last `duration`, no other leader can have been elected, so
//! the leader may answer a linearizable read from its applied state without a quorum round.
//!
//! Why no other leader: openraft 0.9 followers refuse every vote, their own included, for
//! `leader_lease` (= the longest election timeout, twice [`ReadLease::duration`]) after they
//! accepted the leader's AppendEntries, and for as long again after they start (the vote read
//! from disk counts as just touched). A new leader needs the vote of a majority, and every
//! majority holds one of the acknowledging voters. The one voter of that majority whose refusal
//! openraft does not promise is the leader itself, whose lease as a follower ran out long ago:
//! so while a vote request is in its hands ([`ReadLease::vote_begins`]), and for every
//! acknowledgement of a request sent before that vote was answered, the lease does not hold.
//!
//! What the lease gives is a read index without a round: what the leader applied, which holds
//! every write it acknowledged, but no less than the read index of its first quorum round in this
//! leadership ([`ReadLease::confirmed`]), which covers what earlier leaders committed.
//!
//! What the lease assumes: the nodes' clocks run at rates within a factor of two (a follower
//! measures its `leader_lease` on its own clock from when the request arrived, later than the
//! leader's send). The network layer ([`super::network`]) records each acknowledgement; the node
//! asks [`ReadLease::floor`] before a read and falls back to a quorum round when it gets none.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::membership::NodeId;

/// The leadership a lease belongs to: a term and its leader (openraft's `LeaderId`).
pub type Leadership = openraft::LeaderId<NodeId>;

/// The acknowledgements a leader has, shared by the network layer that records them, the vote
/// route that suspends them, and the node that reads by them. Cheap to clone.
#[derive(Clone)]
pub struct ReadLease {
    book: Arc<Mutex<Book>>,
    duration: Duration,
}

#[derive(Default)]
struct Book {
    /// The leadership the acknowledgements below were given to.
    leadership: Option<Leadership>,
    /// Each follower's latest acknowledgement: when the request it accepted was sent.
    acked: HashMap<NodeId, Instant>,
    /// Vote requests this node is answering now.
    votes_in_flight: usize,
    /// When this node last answered a vote request: requests sent before are no proof.
    last_vote_answered: Option<Instant>,
    /// The read index of a quorum round of the latest leadership that had one.
    confirmed: Option<(Leadership, u64)>,
}

impl ReadLease {
    /// A book for leases of `duration` each: at most half the followers' `leader_lease`.
    pub fn new(duration: Duration) -> Self {
        ReadLease { book: Arc::new(Mutex::new(Book::default())), duration }
    }

    /// How long one acknowledgement keeps the lease.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `follower` accepted an AppendEntries of `leadership` that was sent at `sent` (taken before
    /// sending): its vote then was this leadership's, and stays so for its `leader_lease`.
    pub fn acknowledged(&self, follower: NodeId, leadership: Leadership, sent: Instant) {
        let mut book = self.book();
        if book.last_vote_answered.is_some_and(|answered| sent <= answered) {
            return;
        }
        match book.leadership {
            Some(held) if held == leadership => {}
            // A late answer to an earlier leadership's request proves nothing now.
            Some(held) if held > leadership => return,
            _ => {
                book.leadership = Some(leadership);
                book.acked.clear();
            }
        }
        let at = book.acked.entry(follower).or_insert(sent);
        *at = (*at).max(sent);
    }

    /// Suspends the lease while this node answers a vote request, and until acknowledgements of
    /// requests sent after the answer come back (the guard's drop forgets the earlier ones).
    /// Openraft may grant the vote and step down before this node's metrics say so.
    pub fn vote_begins(&self) -> VoteInFlight {
        self.book().votes_in_flight += 1;
        VoteInFlight { lease: self.clone() }
    }

    /// A quorum round of `leadership` gave `index` as the read index (openraft's: the commit
    /// index, and at least the leader's first entry of its term).
    pub fn confirmed(&self, leadership: Leadership, index: u64) {
        self.book().confirmed = Some((leadership, index));
    }

    /// While `me`, leader of `leadership`, holds the lease at `now` for the voters of `configs`
    /// (one set, or the old and the new during a joint change: a majority of each): the index
    /// a read must have applied besides what this leader applied, the read index of a quorum
    /// round of this leadership. `None` without the lease, or before such a round.
    pub fn floor(&self, me: NodeId, leadership: Leadership, configs: &[BTreeSet<NodeId>], now: Instant) -> Option<u64> {
        let book = self.book();
        if book.votes_in_flight > 0 || book.leadership != Some(leadership) || configs.is_empty() {
            return None;
        }
        let (confirmed, index) = book.confirmed?;
        let holds = configs.iter().all(|voters| match book.majority_acked_since(me, voters, now) {
            Some(since) => now < since + self.duration,
            None => false,
        });
        (holds && confirmed == leadership).then_some(index)
    }
}

impl Book {
    /// The latest time a majority of `voters` acknowledged: the majority-th newest of their
    /// acknowledgements, the leader's own being `now`. `None` without a majority.
    fn majority_acked_since(&self, me: NodeId, voters: &BTreeSet<NodeId>, now: Instant) -> Option<Instant> {
        let mut times: Vec<Instant> =
            voters.iter().filter_map(|&v| if v == me { Some(now) } else { self.acked.get(&v).copied() }).collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[majority - 1])
    }
}

/// A vote request being answered; see [`ReadLease::vote_begins`].
pub struct VoteInFlight {
    lease: ReadLease,
}

impl Drop for VoteInFlight {
    fn drop(&mut self) {
        let mut book = self.lease.book();
        book.votes_in_flight -= 1;
        book.last_vote_answered = Some(Instant::now());
        book.acked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(250);

    fn term(t: u64) -> Leadership {
        openraft::LeaderId::new(t, 1)
    }

    fn voters(ids: &[NodeId]) -> Vec<BTreeSet<NodeId>> {
        vec![ids.iter().copied().collect()]
    }

    /// A book whose leadership of `t` had a quorum round that gave read index 7.
    fn confirmed_in(t: u64, duration: Duration) -> ReadLease {
        let lease = ReadLease::new(duration);
        lease.confirmed(term(t), 7);
        lease
    }

    fn holds(lease: &ReadLease, t: u64, configs: &[BTreeSet<NodeId>], now: Instant) -> bool {
        lease.floor(1, term(t), configs, now).is_some()
    }

    #[test]
    fn a_majority_of_recent_acknowledgements_holds_the_lease_until_it_runs_out() {
        let lease = confirmed_in(2, LEASE);
        let t0 = Instant::now();
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), t0), "no acknowledgement yet");
        lease.acknowledged(2, term(2), t0);
        assert_eq!(lease.floor(1, term(2), &voters(&[1, 2, 3]), t0 + LEASE / 2), Some(7));
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), t0 + LEASE), "it runs out");
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3, 4, 5]), t0), "one of four is not a majority");
        assert!(holds(&lease, 2, &voters(&[1]), t0 + LEASE * 10), "a single voter is its own majority");
    }

    #[test]
    fn no_lease_before_a_quorum_round_of_the_same_leadership() {
        let lease = ReadLease::new(LEASE);
        let t0 = Instant::now();
        lease.acknowledged(2, term(2), t0);
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), t0), "no round yet: what earlier leaders committed is unknown");
        lease.confirmed(term(1), 5);
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), t0), "a round of an earlier leadership");
        lease.confirmed(term(2), 9);
        assert_eq!(lease.floor(1, term(2), &voters(&[1, 2, 3]), t0), Some(9));
    }

    #[test]
    fn the_lease_runs_from_the_majoritys_oldest_acknowledgement() {
        let lease = confirmed_in(2, LEASE);
        let t0 = Instant::now();
        let five = voters(&[1, 2, 3, 4, 5]);
        lease.acknowledged(2, term(2), t0);
        lease.acknowledged(3, term(2), t0 + LEASE / 2);
        // The majority {1, 3, 2} holds from t0: 3's newer acknowledgement does not extend it.
        assert!(holds(&lease, 2, &five, t0 + LEASE - Duration::from_millis(1)));
        assert!(!holds(&lease, 2, &five, t0 + LEASE));
        lease.acknowledged(4, term(2), t0 + LEASE / 2);
        assert!(holds(&lease, 2, &five, t0 + LEASE), "now {{1, 3, 4}} holds it from t0 + lease/2");
        // An earlier send answered late does not move an acknowledgement back.
        lease.acknowledged(3, term(2), t0);
        assert!(holds(&lease, 2, &five, t0 + LEASE));
    }

    #[test]
    fn a_joint_change_needs_a_majority_of_the_old_voters_and_of_the_new() {
        let lease = confirmed_in(2, LEASE);
        let t0 = Instant::now();
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 4, 5])];
        lease.acknowledged(2, term(2), t0);
        assert!(!holds(&lease, 2, &joint, t0), "no majority of the new voters");
        lease.acknowledged(5, term(2), t0);
        assert!(holds(&lease, 2, &joint, t0));
    }

    #[test]
    fn a_new_leadership_starts_a_new_book_and_an_old_one_is_ignored() {
        let lease = ReadLease::new(LEASE);
        lease.confirmed(term(2), 7);
        lease.confirmed(term(3), 7);
        let t0 = Instant::now();
        lease.acknowledged(2, term(2), t0);
        lease.acknowledged(3, term(3), t0);
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), t0));
        assert!(holds(&lease, 3, &voters(&[1, 2, 3]), t0));
        lease.acknowledged(2, term(2), t0 + Duration::from_millis(10));
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), t0 + Duration::from_millis(10)));
    }

    #[test]
    fn a_vote_request_suspends_the_lease_until_requests_sent_after_its_answer_are_acknowledged() {
        let lease = confirmed_in(2, Duration::from_secs(60));
        let three = voters(&[1, 2, 3]);
        lease.acknowledged(2, term(2), Instant::now());
        assert!(holds(&lease, 2, &three, Instant::now()));
        let vote = lease.vote_begins();
        assert!(!holds(&lease, 2, &three, Instant::now()), "suspended while the vote is answered");
        let during = Instant::now();
        drop(vote);
        assert!(!holds(&lease, 2, &three, Instant::now()), "acknowledgements from before the answer are gone");
        lease.acknowledged(2, term(2), during);
        assert!(!holds(&lease, 2, &three, Instant::now()), "a request sent before the answer proves nothing");
        lease.acknowledged(2, term(2), Instant::now());
        assert!(holds(&lease, 2, &three, Instant::now()), "one sent after it does");
    }
}
