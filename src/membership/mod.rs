//! The pure core of gm: groups, members, incarnations and revisions. No I/O and no clock:
//! every command carries the time it needs, so applying the Raft log gives the same state on
//! every node.

mod command;
mod model;
mod names;
mod state;

pub use command::{Command, LeaveReason, NodeAdvert, Outcome};
pub use model::{
    FailureDetection, GroupSummary, GroupView, Member, MemberSpec, Metadata, NodeId, Timestamp, DEFAULT_LEASE_TTL_MS,
    DEFAULT_PROBE_PATH, MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS,
};
pub use names::{Address, GroupName, Instance, MemberId};
pub use state::{GroupSnapshot, MembershipState};

/// An input that breaks one of the contract's rules; `field` says which.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: String) -> Self {
        ValidationError { field, message }
    }
}
