//! The leader's read lease (Ongaro's thesis §6.4.1; TiKV and CockroachDB serve reads the same
//! way): while a majority of the voters has acknowledged one of this leader's AppendEntries (a
//! heartbeat counts) recently enough, no other leader can have been elected, so the leader may
//! give a linearizable read its read index without a quorum round.
//!
//! Why no other leader: openraft 0.9 followers refuse every vote, their own included, for
//! `leader_lease` (their longest election timeout) after they accepted the leader's
//! AppendEntries, and for as long again after they start (the vote read from disk counts as just
//! touched). Each follower says how long with its answer ([`LEADER_LEASE_HEADER`]); the leader
//! counts on half of it from when it sent the request. A new leader needs the vote of a
//! majority, and every majority holds one of the acknowledging voters. The one voter of that majority whose refusal
//! openraft does not promise is the leader itself, whose own lease as a follower ran out long
//! ago. So the lease also needs a quorum round of this leadership that openraft handled after
//! every vote request this node answered ([`ReadLease::confirmed`]): had the leader granted one,
//! it would have stepped down and the round failed. While a vote request is being answered, the
//! lease does not hold.
//!
//! The read index under the lease is what the leader applied, which holds every write it
//! acknowledged, and no less than that round's read index, which covers what earlier leaders
//! committed.
//!
//! What the lease assumes: the nodes' clocks run at rates within a factor of two (a follower
//! measures its `leader_lease` on its own clock from when the request arrived, later than the
//! leader's send). The leader's clock is [`now`], which counts a suspend of the machine too. The
//! network layer ([`super::network`]) records each acknowledgement; the node asks
//! [`ReadLease::floor`] before a read and falls back to a quorum round when it gets none.
//!
//! [`LEADER_LEASE_HEADER`]: super::network::LEADER_LEASE_HEADER

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::membership::NodeId;

/// The leadership a lease belongs to: a term and its leader (openraft's `LeaderId`).
pub type Leadership = openraft::LeaderId<NodeId>;

/// The lease's clock: time since the machine booted, including time it spent suspended
/// (Linux's `CLOCK_BOOTTIME`; the monotonic clock elsewhere), so a leader whose machine slept
/// finds its lease run out. Never goes back. `None` if the clock cannot be read: no lease then.
pub fn now() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let read = unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    let (secs, nanos) = (u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?);
    (read == 0 && nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
}

/// The acknowledgements a leader has, shared by the network layer that records them, the vote
/// route that suspends them, and the node that reads by them. Cheap to clone.
#[derive(Clone, Default)]
pub struct ReadLease {
    book: Arc<Mutex<Book>>,
}

#[derive(Default)]
struct Book {
    /// The leadership the acknowledgements below were given to.
    leadership: Option<Leadership>,
    /// Until when (by [`now`]) each follower's acknowledgements keep the lease: from when the
    /// request it accepted was sent, half of what it promised.
    acked: HashMap<NodeId, Duration>,
    /// Vote requests this node is answering now.
    votes_in_flight: usize,
    /// Vote requests this node has answered (or given up answering) since it started.
    votes_answered: u64,
    /// The latest quorum round that counts: its leadership, read index and the votes answered
    /// before it began.
    confirmed: Option<(Leadership, u64, u64)>,
}

/// Taken before a quorum round: which vote requests openraft surely handled before the round.
#[derive(Clone, Copy, Debug)]
pub struct RoundStart {
    /// `None` if a vote request was being answered: it may reach openraft after the round.
    votes_answered: Option<u64>,
}

impl ReadLease {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `follower` accepted an AppendEntries of `leadership` that was sent at `sent` (by [`now`],
    /// taken before sending): its vote then was this leadership's, and stays so for the
    /// `leader_lease` it `promised` with its answer. The leader counts on half of that, in case
    /// its clock runs up to twice as slow as the follower's.
    pub fn acknowledged(&self, follower: NodeId, leadership: Leadership, sent: Duration, promised: Duration) {
        let mut book = self.book();
        match book.leadership {
            Some(held) if held == leadership => {}
            // A late answer to an earlier leadership's request proves nothing now.
            Some(held) if held > leadership => return,
            _ => {
                book.leadership = Some(leadership);
                book.acked.clear();
            }
        }
        let until = sent + promised / 2;
        let at = book.acked.entry(follower).or_insert(until);
        *at = (*at).max(until);
    }

    /// Suspends the lease while this node answers a vote request; once answered (the guard's
    /// drop), the lease needs a quorum round begun after it ([`ReadLease::confirmed`]).
    pub fn vote_begins(&self) -> VoteInFlight {
        self.book().votes_in_flight += 1;
        VoteInFlight { lease: self.clone() }
    }

    /// Call before a quorum round, for [`ReadLease::confirmed`].
    pub fn round_begins(&self) -> RoundStart {
        let book = self.book();
        RoundStart { votes_answered: (book.votes_in_flight == 0).then_some(book.votes_answered) }
    }

    /// A quorum round of `leadership`, begun at `start`, gave `index` as the read index
    /// (openraft's: the commit index, and at least the leader's first entry of its term).
    pub fn confirmed(&self, start: RoundStart, leadership: Leadership, index: u64) {
        if let Some(answered) = start.votes_answered {
            self.book().confirmed = Some((leadership, index, answered));
        }
    }

    /// While `me`, leader of `leadership`, holds the lease at `now` for the voters of `configs`
    /// (one set, or the old and the new during a joint change: a majority of each): the read
    /// index of the quorum round that confirmed this leadership, which a read must have applied
    /// besides what this leader applied. `None` without the lease.
    pub fn floor(
        &self,
        me: NodeId,
        leadership: Leadership,
        configs: &[BTreeSet<NodeId>],
        now: Option<Duration>,
    ) -> Option<u64> {
        let now = now?;
        let book = self.book();
        let (confirmed, index, answered) = book.confirmed?;
        if book.votes_in_flight > 0 || answered != book.votes_answered || confirmed != leadership {
            return None;
        }
        let holds = !configs.is_empty()
            && configs
                .iter()
                .all(|voters| book.majority_holds_until(me, leadership, voters).is_some_and(|end| now < end));
        holds.then_some(index)
    }
}

impl Book {
    /// Until when a majority of `voters` keeps the lease of `leadership`: the majority-th latest
    /// of their acknowledgements' ends, the leader's own never ending. `None` without a majority.
    fn majority_holds_until(&self, me: NodeId, leadership: Leadership, voters: &BTreeSet<NodeId>) -> Option<Duration> {
        let ours = self.leadership == Some(leadership);
        let acked = |v: &NodeId| if ours { self.acked.get(v).copied() } else { None };
        let mut ends: Vec<Duration> =
            voters.iter().filter_map(|v| if *v == me { Some(Duration::MAX) } else { acked(v) }).collect();
        let majority = voters.len() / 2 + 1;
        if ends.len() < majority {
            return None;
        }
        ends.sort_unstable_by(|a, b| b.cmp(a));
        Some(ends[majority - 1])
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
        book.votes_answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a follower promises with the default settings: a lease of half, 250 ms.
    const PROMISE: Duration = Duration::from_millis(500);
    const LEASE: Duration = Duration::from_millis(250);
    const T0: Duration = Duration::from_secs(1000);

    fn term(t: u64) -> Leadership {
        openraft::LeaderId::new(t, 1)
    }

    fn voters(ids: &[NodeId]) -> Vec<BTreeSet<NodeId>> {
        vec![ids.iter().copied().collect()]
    }

    /// A book whose leadership of `t` had a quorum round that gave read index 7.
    fn confirmed_in(t: u64) -> ReadLease {
        let lease = ReadLease::default();
        lease.confirmed(lease.round_begins(), term(t), 7);
        lease
    }

    fn acked(lease: &ReadLease, follower: NodeId, t: u64, sent: Duration) {
        lease.acknowledged(follower, term(t), sent, PROMISE);
    }

    fn holds(lease: &ReadLease, t: u64, configs: &[BTreeSet<NodeId>], now: Duration) -> bool {
        lease.floor(1, term(t), configs, Some(now)).is_some()
    }

    #[test]
    fn the_clock_counts_up() {
        let (a, b) = (now().expect("the clock"), now().expect("the clock"));
        assert!(a > Duration::ZERO && b >= a);
    }

    #[test]
    fn a_majority_of_recent_acknowledgements_holds_the_lease_until_half_the_promise_runs_out() {
        let lease = confirmed_in(2);
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), T0), "no acknowledgement yet");
        acked(&lease, 2, 2, T0);
        assert_eq!(lease.floor(1, term(2), &voters(&[1, 2, 3]), Some(T0 + LEASE / 2)), Some(7));
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), T0 + LEASE), "it runs out");
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3, 4, 5]), T0), "one of four is not a majority");
        assert!(!holds(&lease, 2, &[], T0), "no voters, no majority");
        assert_eq!(lease.floor(1, term(2), &voters(&[1, 2, 3]), None), None, "no clock, no lease");
    }

    #[test]
    fn a_follower_that_promises_less_gives_a_shorter_lease() {
        let lease = confirmed_in(2);
        lease.acknowledged(2, term(2), T0, Duration::from_millis(100));
        assert!(holds(&lease, 2, &voters(&[1, 2, 3]), T0 + Duration::from_millis(49)));
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), T0 + Duration::from_millis(50)));
        lease.acknowledged(3, term(2), T0, Duration::from_secs(2));
        assert!(holds(&lease, 2, &voters(&[1, 2, 3]), T0 + Duration::from_millis(999)), "the longer one counts");
    }

    #[test]
    fn a_single_voter_is_its_own_majority() {
        let lease = confirmed_in(2);
        assert!(holds(&lease, 2, &voters(&[1]), T0));
    }

    #[test]
    fn no_lease_before_a_quorum_round_of_the_same_leadership() {
        let lease = ReadLease::default();
        acked(&lease, 2, 2, T0);
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), T0), "no round yet: what earlier leaders committed is unknown");
        lease.confirmed(lease.round_begins(), term(1), 5);
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), T0), "a round of an earlier leadership");
        lease.confirmed(lease.round_begins(), term(2), 9);
        assert_eq!(lease.floor(1, term(2), &voters(&[1, 2, 3]), Some(T0)), Some(9));
    }

    #[test]
    fn the_lease_runs_from_the_majoritys_oldest_acknowledgement() {
        let lease = confirmed_in(2);
        let five = voters(&[1, 2, 3, 4, 5]);
        acked(&lease, 2, 2, T0);
        acked(&lease, 3, 2, T0 + LEASE / 2);
        // The majority {1, 3, 2} holds from T0: 3's newer acknowledgement does not extend it.
        assert!(holds(&lease, 2, &five, T0 + LEASE - Duration::from_millis(1)));
        assert!(!holds(&lease, 2, &five, T0 + LEASE));
        acked(&lease, 4, 2, T0 + LEASE / 2);
        assert!(holds(&lease, 2, &five, T0 + LEASE), "now {{1, 3, 4}} holds it from T0 + lease/2");
        // An earlier send answered late does not move an acknowledgement back.
        acked(&lease, 3, 2, T0);
        assert!(holds(&lease, 2, &five, T0 + LEASE));
    }

    #[test]
    fn a_joint_change_needs_a_majority_of_the_old_voters_and_of_the_new() {
        let lease = confirmed_in(2);
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 4, 5])];
        acked(&lease, 2, 2, T0);
        assert!(!holds(&lease, 2, &joint, T0), "no majority of the new voters");
        acked(&lease, 5, 2, T0);
        assert!(holds(&lease, 2, &joint, T0));
    }

    #[test]
    fn a_new_leadership_starts_a_new_book_and_an_old_one_is_ignored() {
        let lease = confirmed_in(3);
        acked(&lease, 2, 2, T0);
        acked(&lease, 3, 3, T0);
        assert!(holds(&lease, 3, &voters(&[1, 2, 3]), T0));
        acked(&lease, 2, 2, T0 + LEASE / 2);
        assert!(!holds(&lease, 3, &voters(&[1, 2, 3]), T0 + LEASE), "term 2's acknowledgement is not term 3's");
        assert!(!holds(&lease, 2, &voters(&[1, 2, 3]), T0), "nor is term 2 confirmed");
    }

    #[test]
    fn a_vote_request_suspends_the_lease_until_a_round_begun_after_its_answer() {
        let lease = confirmed_in(2);
        let three = voters(&[1, 2, 3]);
        let t1 = T0 + Duration::from_millis(1);
        acked(&lease, 2, 2, T0);
        assert!(holds(&lease, 2, &three, T0));
        let vote = lease.vote_begins();
        assert!(!holds(&lease, 2, &three, T0), "suspended while the vote is answered");
        let during = lease.round_begins();
        drop(vote);
        acked(&lease, 2, 2, t1);
        assert!(!holds(&lease, 2, &three, t1), "the leader may have voted for another");
        lease.confirmed(during, term(2), 8);
        assert!(!holds(&lease, 2, &three, t1), "a round begun during the vote proves nothing");
        let before_next = lease.round_begins();
        drop(lease.vote_begins());
        lease.confirmed(before_next, term(2), 8);
        assert!(!holds(&lease, 2, &three, t1), "nor one begun before a vote answered since");
        lease.confirmed(lease.round_begins(), term(2), 9);
        assert_eq!(lease.floor(1, term(2), &three, Some(t1)), Some(9), "one begun after it does");
    }
}
