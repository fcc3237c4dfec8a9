//! Replication of the membership state with openraft: the type configuration, the durable log,
//! the state machine, and the peer network.

pub mod codec;
pub mod compaction;
pub mod contact;
pub mod fence;
pub mod log_store;
pub mod network;
pub mod peer;
pub mod pre_vote;
pub mod read_lease;
pub mod recover;
pub mod snapshot_file;
pub mod state_machine;
pub mod vote_quarantine;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::membership::{Command, NodeId, Outcome};

/// What every node knows of a GM node: where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// A human-readable name (the pod name in Kubernetes).
    pub name: String,
    /// `host:port` of the REST API.
    pub api_addr: String,
    /// `host:port` of Raft and node-to-node traffic.
    pub peer_addr: String,
}

/// Commands proposed together as one log entry: the leader gathers concurrent writes into one
/// append, so they share one fsync (openraft 0.9 waits for each append's flush in turn). Shared,
/// not copied, when the log hands the entry out again (to each follower's replication).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Arc<[Command]>);

/// The result of applying one command: its outcome, and the revision after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub revision: u64,
    pub outcome: Outcome,
}

openraft::declare_raft_types!(
    /// gm's Raft types: batches of commands in, their outcomes out, snapshots as serialized state.
    pub TypeConfig:
        D = Batch,
        R = Vec<Applied>,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Vec<u8>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeInfo>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, NodeInfo>;
