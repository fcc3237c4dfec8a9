//! Changes to the Raft voter set, made by the leader's reconcile duty: add a learner, replace the
//! voters, and how far each node has caught up. openraft's `change_membership` goes through a
//! joint configuration (Raft §6, "joint consensus") and returns once the final one is committed,
//! so a caller that awaits each change makes one change at a time.

use std::collections::{BTreeMap, BTreeSet};

use openraft::ChangeMembers;

use super::{client_write_error, Node, NodeError};
use crate::membership::NodeId;
use crate::raft::NodeInfo;

/// The Raft membership this node's log holds last (committed or not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoterSet {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// The voters a joint configuration moves to, while one is in the log: a change that a
    /// former leader began and did not finish.
    pub joint_target: Option<BTreeSet<NodeId>>,
}

/// How far the nodes have the leader's log, as the leader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// The index of the leader's last log entry.
    pub last_log_index: u64,
    /// The index each node is known to hold up to; a node not heard from yet is absent.
    pub matched: BTreeMap<NodeId, u64>,
}

impl Node {
    /// The voters and learners of the last membership in this node's log.
    pub fn voter_set(&self) -> VoterSet {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let configs = membership.get_joint_config();
        VoterSet {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint_target: (configs.len() > 1).then(|| configs.last().cloned().unwrap_or_default()),
        }
    }

    /// The replication progress, if this node leads.
    pub fn replication(&self) -> Option<Replication> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let matched = m.replication.as_ref()?;
        Some(Replication {
            last_log_index: m.last_log_index.unwrap_or(0),
            matched: matched.iter().filter_map(|(&id, log)| Some((id, log.as_ref()?.index))).collect(),
        })
    }

    /// Adds node `id` as a learner (or updates its addresses) and starts replicating to it;
    /// returns once that is committed, without waiting for it to catch up.
    /// Errors: [`NodeError::NotLeader`] and the like, as for a write.
    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), NodeError> {
        self.raft.add_learner(id, info, false).await.map(|_| ()).map_err(client_write_error)
    }

    /// Makes `voters` the voter set; nodes that are neither in it nor learners leave the
    /// cluster. Each voter must already be a voter or a learner.
    /// Errors: as for a write; a change while another is in progress fails and may be retried.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), NodeError> {
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map(|_| ())
            .map_err(client_write_error)
    }

    /// Removes learner `id` from the cluster.
    /// Errors: as for a write.
    pub async fn remove_learner(&self, id: NodeId) -> Result<(), NodeError> {
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(client_write_error)
    }
}
