//! The answers of the public contract (`docs/api.md`) as serde types, declared once: the
//! server's handlers ([`crate::api`]) serialize them and the client ([`crate::client`]) reads
//! them back.
//!
//! A module of its own, beside both, because both depend on it and it depends on neither: the
//! server must not import the client to answer, nor the client the server to ask. The records
//! themselves ([`Member`], [`GroupView`], [`GroupSummary`], [`MemberSpec`] as a join's body) are
//! the pure core's and are re-used here, not copied.
//!
//! Field order is the order on the wire. Decoding ignores fields it does not know: the contract
//! may grow new ones.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::membership::{GroupSummary, GroupView, Member, MemberSpec, NodeId};

/// `X-GM-Revision`: on every `/v1/` success, the revision of the write or of the read.
pub const REVISION_HEADER: &str = "x-gm-revision";
/// The `event` name of every event of a watch stream; its `data` is a [`GroupView`] and its `id`
/// the view's revision.
pub const VIEW_EVENT: &str = "view";

/// `PUT /v1/groups/{group}/members/{id}`: the member as stored, and the revision of the join
/// (of the current state, for a join that changed nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub member: Member,
    pub revision: u64,
}

/// `DELETE /v1/groups/{group}/members/{id}`: the revision of the leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionAnswer {
    pub revision: u64,
}

/// `POST /v1/groups/{group}/members/{id}/heartbeat`: the current revision and the lease's length
/// in milliseconds, renewed from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub revision: u64,
    pub ttl_ms: u64,
}

/// `GET /v1/groups`: every group at `revision`, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupsAnswer {
    pub revision: u64,
    pub groups: Vec<GroupSummary>,
}

/// `GET /v1/cluster`: the GM cluster as the answering node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAnswer {
    /// `None` until the first leader has named the cluster.
    pub cluster_id: Option<String>,
    /// `None` while there is no leader.
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub revision: u64,
    pub nodes: Vec<NodeAnswer>,
}

/// One GM node in [`ClusterAnswer::nodes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    pub id: NodeId,
    pub name: String,
    /// `host:port` of its REST API, as it advertises it.
    pub api_address: String,
    /// `host:port` of its Raft and node-to-node traffic.
    pub peer_address: String,
    pub role: Role,
    /// Probe-mode members this node probes.
    pub responsible_for: usize,
    /// As the leader sees it; `None` when no leader told in time.
    pub health: Option<NodeHealth>,
}

/// A GM node's part in Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Learner,
}

/// A GM node's health as the leader sees it: the `health` of a node in `/v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Whether the leader's latest Raft RPC to the node got an answer.
    pub reachable: bool,
    /// Milliseconds since the node last answered the leader; `None` if it has not yet.
    pub last_contact_ms: Option<u64>,
    /// Entries of the leader's log not yet replicated to the node; `None` if unknown.
    pub lag_entries: Option<u64>,
}

/// `GET /healthz` (`"ok"`) and `GET /readyz` (`"ready"`) when they answer `200`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAnswer {
    pub status: String,
}

/// How a read is taken: through the leader (the default), or from the answering node's own
/// state (`?consistency=stale`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

impl Consistency {
    /// The value of the `consistency` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        }
    }
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What went wrong, for a person; never empty.
    pub message: String,
}

/// The `code` of an error answer. A code this build does not know is kept as [`ErrorCode::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ErrorCode {
    /// `400`: a bad name, address, body or parameter.
    InvalidArgument,
    /// `404`.
    NotFound,
    /// `409`, for example a stale incarnation.
    Conflict,
    /// `413`.
    PayloadTooLarge,
    /// `415`.
    UnsupportedMediaType,
    /// `401`, when authentication is on.
    Unauthenticated,
    /// `403`, when authentication is on.
    PermissionDenied,
    /// `405`: a path that exists, with a method it does not take.
    MethodNotAllowed,
    /// `503`, with `Retry-After`: no leader or no quorum.
    Unavailable,
    /// `500`.
    Internal,
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(code) => code,
        }
    }
}

impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        match code.as_str() {
            "invalid_argument" => ErrorCode::InvalidArgument,
            "not_found" => ErrorCode::NotFound,
            "conflict" => ErrorCode::Conflict,
            "payload_too_large" => ErrorCode::PayloadTooLarge,
            "unsupported_media_type" => ErrorCode::UnsupportedMediaType,
            "unauthenticated" => ErrorCode::Unauthenticated,
            "permission_denied" => ErrorCode::PermissionDenied,
            "method_not_allowed" => ErrorCode::MethodNotAllowed,
            "unavailable" => ErrorCode::Unavailable,
            "internal" => ErrorCode::Internal,
            _ => ErrorCode::Other(code),
        }
    }
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> String {
        match code {
            ErrorCode::Other(code) => code,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn error_codes_round_trip_and_unknown_ones_are_kept() {
        for code in ["invalid_argument", "not_found", "conflict", "unavailable", "method_not_allowed", "teapot"] {
            let parsed: ErrorCode = serde_json::from_value(json!(code)).expect("a code");
            assert_eq!(parsed.as_str(), code);
            assert_eq!(serde_json::to_value(&parsed).expect("encodes"), json!(code));
        }
        assert_eq!(ErrorCode::from("teapot".to_owned()), ErrorCode::Other("teapot".into()));
    }

    #[test]
    fn an_error_body_is_the_contracts_shape() {
        let body = ErrorBody { error: ErrorDetail { code: ErrorCode::NotFound, message: "no".into() } };
        assert_eq!(serde_json::to_string(&body).expect("encodes"), r#"{"error":{"code":"not_found","message":"no"}}"#);
    }

    #[test]
    fn a_cluster_answer_reads_with_fields_it_does_not_know() {
        let answer: ClusterAnswer = serde_json::from_value(json!({
            "cluster_id": "c", "leader_id": null, "term": 3, "revision": 9, "future": true,
            "nodes": [{"id": 1, "name": "gm-0", "api_address": "a:1", "peer_address": "a:2", "role": "learner",
                       "responsible_for": 0, "health": null, "zone": "z"}],
        }))
        .expect("decodes");
        assert_eq!(answer.leader_id, None);
        assert_eq!(answer.nodes[0].role, Role::Learner);
    }
}
