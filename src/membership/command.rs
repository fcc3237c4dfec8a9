//! The commands that go through the Raft log, and what applying one did.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::{Member, MemberSpec, NodeId, Timestamp};
use super::names::{GroupName, MemberId};

/// Why a member left its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    /// The client asked to leave.
    Left,
    /// Its responsible node's probes failed.
    Failed,
    /// Its lease ran out.
    Expired,
}

/// A change to the membership state. Time is stamped by the proposer so that apply is pure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Join {
        group: GroupName,
        id: MemberId,
        spec: MemberSpec,
        at: Timestamp,
    },
    /// Remove a member; with `incarnation`, only if it is still that one.
    Leave {
        group: GroupName,
        id: MemberId,
        incarnation: Option<u64>,
        reason: LeaveReason,
    },
    /// Names the cluster once; later ones are ignored.
    InitCluster {
        cluster_id: String,
    },
    /// The GM nodes that probe members; responsible nodes are spread over them.
    SetProbers {
        nodes: Vec<NodeId>,
    },
    /// A GM node tells the cluster its name and where its REST API answers.
    AdvertiseNode {
        node: NodeId,
        advert: NodeAdvert,
    },
}

/// What a GM node announces about itself, shown in `/v1/cluster`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdvert {
    pub name: String,
    pub api_address: String,
}

impl Command {
    /// Roughly the bytes this command takes in the log: what bounds a batch of commands.
    pub fn approx_bytes(&self) -> usize {
        const FIXED: usize = 256;
        match self {
            Command::Join { spec, .. } => FIXED + spec.metadata.approx_bytes(),
            _ => FIXED,
        }
    }
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `created`: the id was not in the group; `changed`: the record was replaced or added.
    /// `member` is the record the state holds (shared, not copied).
    Joined {
        member: Arc<Member>,
        created: bool,
        changed: bool,
    },
    /// `member`: the record as it was when it left.
    Left {
        member: Arc<Member>,
    },
    NotMember,
    /// The member is there, but under another incarnation.
    IncarnationMismatch {
        current: u64,
    },
    /// Cluster-level commands; nothing to report.
    Done,
}
