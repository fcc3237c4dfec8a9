//! The rewrite behind `gm recover`: after a majority of the voters is lost for good, the node
//! that survived becomes the only voter of its cluster. Raft cannot do that itself (changing the
//! voters takes the quorum that is gone), so it is done to the stored state before Raft starts,
//! and only when an operator asked for it (`server::recover` keeps the request).
//!
//! The rewrite appends one membership entry, `{this node}`, after everything the node holds, in
//! a term above any it has seen, and saves a vote for itself in that term. openraft takes the last
//! membership entry of the log as effective, committed or not, so the node starts as the single
//! voter, elects itself at once and commits every entry it holds, the new one with them. Entries
//! that only the lost nodes held are gone.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader};

use super::log_store::LogStore;
use super::{Entry, LogId, StoredMembership, Vote};
use crate::membership::NodeId;

/// Entries read at a time while looking for the last membership entry, from the end back.
const SCAN_CHUNK: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "the data dir holds no cluster membership: this node never joined a cluster, so there is nothing to recover"
    )]
    NoMembership,
    #[error(
        "node {node} is not in the membership this data dir holds (voters {voters:?}): it cannot become their \
         cluster's only voter; check --node-id"
    )]
    NotAMember { node: NodeId, voters: Vec<NodeId> },
    #[error("raft log: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> RecoverError {
    RecoverError::Storage(e.to_string())
}

/// The stored Raft state as the rewrite sees it.
#[derive(Clone, Debug)]
pub struct Found {
    /// The last membership: of the log, or of the snapshot if it is newer or the log has none.
    pub membership: StoredMembership,
    /// The last log id the node holds, in its log or (after a purge) in its snapshot.
    pub last_log_id: Option<LogId>,
    pub vote: Option<Vote>,
}

impl Found {
    /// The voters of the last membership (of both configs, during a joint change).
    pub fn voters(&self) -> Vec<NodeId> {
        self.membership.membership().voter_ids().collect()
    }

    /// The highest term the node has seen: of its vote, its log or its snapshot.
    fn term(&self) -> u64 {
        let vote = self.vote.map_or(0, |v| v.leader_id.term);
        vote.max(self.last_log_id.map_or(0, |l| l.leader_id.term))
    }
}

/// What [`make_sole_voter`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// The node already is the only voter (an earlier recovery): nothing changed.
    AlreadySoleVoter,
    /// A membership entry `{voter}` at `membership_log_id`, after every entry up to `kept`, and a
    /// vote for `voter` in its term.
    Done { old_voters: Vec<NodeId>, voter: NodeId, membership_log_id: LogId, kept: Option<LogId> },
}

/// Reads what the rewrite needs from `log` and from the snapshot's `snapshot_last` log id and
/// `snapshot_membership` (the state machine as it opens, before Raft replays anything).
pub async fn inspect(
    log: &LogStore,
    snapshot_last: Option<LogId>,
    snapshot_membership: &StoredMembership,
) -> Result<Found, RecoverError> {
    let mut log = log.clone();
    let state = log.get_log_state().await.map_err(storage)?;
    let vote = log.read_vote().await.map_err(storage)?;
    let in_log = last_membership_in_log(&mut log, state.last_purged_log_id, state.last_log_id).await?;
    let membership = match in_log {
        Some(m) if m.log_id() >= snapshot_membership.log_id() => m,
        _ => snapshot_membership.clone(),
    };
    if membership.log_id().is_none() {
        return Err(RecoverError::NoMembership);
    }
    Ok(Found { membership, last_log_id: state.last_log_id.max(snapshot_last), vote })
}

/// The last membership entry in the log after `purged` up to `last`, scanning back from the end.
async fn last_membership_in_log(
    log: &mut LogStore,
    purged: Option<LogId>,
    last: Option<LogId>,
) -> Result<Option<StoredMembership>, RecoverError> {
    let first = purged.map_or(0, |p| p.index + 1);
    let mut end = last.map_or(0, |l| l.index + 1);
    while end > first {
        let start = end.saturating_sub(SCAN_CHUNK).max(first);
        let entries = log.try_get_log_entries(start..end).await.map_err(storage)?;
        let found = entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(StoredMembership::new(Some(e.log_id), m.clone())),
            _ => None,
        });
        if found.is_some() {
            return Ok(found);
        }
        end = start;
    }
    Ok(None)
}

/// Makes node `me` the only voter of the cluster whose state `log` and the snapshot hold (see
/// [`inspect`] for the snapshot's part), durably, before Raft starts on `log`.
pub async fn make_sole_voter(
    log: &LogStore,
    snapshot_last: Option<LogId>,
    snapshot_membership: &StoredMembership,
    me: NodeId,
) -> Result<Rewrite, RecoverError> {
    let found = inspect(log, snapshot_last, snapshot_membership).await?;
    let membership = found.membership.membership();
    let old_voters = found.voters();
    let Some(info) = membership.get_node(&me).cloned() else {
        return Err(RecoverError::NotAMember { node: me, voters: old_voters });
    };
    if membership.get_joint_config() == &vec![BTreeSet::from([me])] {
        return Ok(Rewrite::AlreadySoleVoter);
    }
    let term = found.term() + 1;
    let mut store = log.clone();
    let state = store.get_log_state().await.map_err(storage)?;
    // A snapshot installed from the leader just before a crash can be ahead of the log, which
    // openraft would purge up to it at start: do it now, so the new entry follows the snapshot.
    if let Some(snapshot) = snapshot_last.filter(|s| state.last_log_id.is_none_or(|l| l.index < s.index)) {
        store.purge(snapshot).await.map_err(storage)?;
    }
    let index = found.last_log_id.map_or(0, |l| l.index + 1);
    let membership_log_id = LogId::new(CommittedLeaderId::new(term, me), index);
    let entry = Entry {
        log_id: membership_log_id,
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, info)]))),
    };
    // The vote first: a vote in a higher term alone is harmless, and a crash before the entry is
    // on disk leaves the request in place, so the next start does it all again a term higher.
    store.save_vote(&Vote::new(term, me)).await.map_err(storage)?;
    log.append_durable(vec![entry]).await.map_err(storage)?;
    Ok(Rewrite::Done { old_voters, voter: me, membership_log_id, kept: found.last_log_id })
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorage;

    use super::*;
    use crate::membership::Command;
    use crate::raft::{Batch, NodeInfo};

    fn info(id: NodeId) -> NodeInfo {
        NodeInfo { name: format!("node-{id}"), api_addr: String::new(), peer_addr: format!("127.0.0.1:700{id}") }
    }

    fn three_voters() -> Membership<NodeId, NodeInfo> {
        Membership::new(vec![BTreeSet::from([1, 2, 3])], BTreeMap::from([(1, info(1)), (2, info(2)), (3, info(3))]))
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn normal(term: u64, index: u64) -> Entry {
        let command = Command::InitCluster { cluster_id: format!("c-{index}") };
        Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Batch(vec![command].into())) }
    }

    /// A log as a 3-voter cluster leaves it: the membership at 0, then `entries` normal ones in
    /// term 2, and a vote for node 1 in term 3.
    async fn cluster_log(dir: &std::path::Path, entries: u64) -> LogStore {
        let store = LogStore::open(dir).expect("open");
        let first = Entry { log_id: log_id(1, 0), payload: EntryPayload::Membership(three_voters()) };
        let rest = (1..=entries).map(|i| normal(2, i));
        store.append_durable(std::iter::once(first).chain(rest).collect()).await.expect("append");
        store.clone().save_vote(&Vote::new_committed(3, 1)).await.expect("vote");
        store
    }

    async fn all(store: &LogStore) -> Vec<Entry> {
        store.clone().try_get_log_entries(..).await.expect("read")
    }

    fn no_snapshot() -> StoredMembership {
        StoredMembership::default()
    }

    #[tokio::test]
    async fn appends_a_sole_voter_membership_in_a_higher_term_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = cluster_log(dir.path(), 5).await;
        let done = make_sole_voter(&store, None, &no_snapshot(), 2).await.expect("rewrite");
        let want_id = LogId::new(CommittedLeaderId::new(4, 2), 6);
        assert_eq!(
            done,
            Rewrite::Done { old_voters: vec![1, 2, 3], voter: 2, membership_log_id: want_id, kept: Some(log_id(2, 5)) }
        );
        drop(store);

        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(4, 2)));
        let entries = all(&store).await;
        assert_eq!(entries.len(), 7, "every entry kept, one appended");
        let last = entries.last().expect("an entry");
        assert_eq!(last.log_id, want_id);
        let EntryPayload::Membership(m) = &last.payload else { panic!("not a membership: {last:?}") };
        assert_eq!(m.get_joint_config(), &vec![BTreeSet::from([2])]);
        assert_eq!(m.get_node(&2), Some(&info(2)));
        assert_eq!(m.nodes().count(), 1, "the lost nodes are not kept as learners");

        // Asked again: it already is the only voter.
        assert_eq!(make_sole_voter(&store, None, &no_snapshot(), 2).await.expect("again"), Rewrite::AlreadySoleVoter);
        assert_eq!(all(&store).await.len(), 7);
    }

    #[tokio::test]
    async fn membership_only_in_the_snapshot_and_a_snapshot_ahead_of_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = cluster_log(dir.path(), 10).await;
        store.clone().purge(log_id(2, 4)).await.expect("purge");
        // The snapshot holds the membership and is ahead of the log (installed, not yet purged).
        let snapshot = StoredMembership::new(Some(log_id(1, 0)), three_voters());
        let found = inspect(&store, Some(log_id(3, 12)), &snapshot).await.expect("inspect");
        assert_eq!(found.voters(), vec![1, 2, 3]);
        let done = make_sole_voter(&store, Some(log_id(3, 12)), &snapshot, 3).await.expect("rewrite");
        let want_id = LogId::new(CommittedLeaderId::new(4, 3), 13);
        assert!(matches!(done, Rewrite::Done { membership_log_id, .. } if membership_log_id == want_id), "{done:?}");
        drop(store);

        let mut store = LogStore::open(dir.path()).expect("reopen");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 12)));
        assert_eq!(state.last_log_id, Some(want_id));
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(4, 3)));
    }

    #[tokio::test]
    async fn refuses_without_a_membership_or_for_a_stranger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        let err = make_sole_voter(&store, None, &no_snapshot(), 1).await.expect_err("empty");
        assert!(matches!(err, RecoverError::NoMembership), "{err}");
        let other = tempfile::tempdir().expect("tempdir");
        let store = cluster_log(other.path(), 1).await;
        let err = make_sole_voter(&store, None, &no_snapshot(), 7).await.expect_err("stranger");
        assert!(matches!(err, RecoverError::NotAMember { node: 7, .. }), "{err}");
        assert_eq!(all(&store).await.len(), 2, "nothing written");
    }
}
