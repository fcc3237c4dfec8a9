//! The records of the contract: members, their failure detection, and views of groups.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::names::{Address, GroupName, Instance, MemberId};
use super::ValidationError;

/// The Raft node id of a GM node.
pub type NodeId = u64;

pub const DEFAULT_PROBE_PATH: &str = "/gm/heartbeat";
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;
pub const MIN_LEASE_TTL_MS: u64 = 500;
pub const MAX_LEASE_TTL_MS: u64 = 86_400_000;
const MAX_METADATA_KEYS: usize = 16;
const MAX_METADATA_KEY_LEN: usize = 63;
const MAX_METADATA_VALUE_LEN: usize = 1024;
const MAX_PROBE_PATH_LEN: usize = 1024;

/// How a member's failure is detected: GM probes it, or it keeps a lease alive itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", try_from = "RawFailureDetection")]
pub enum FailureDetection {
    Probe { path: String },
    Lease { ttl_ms: u64 },
}

impl Default for FailureDetection {
    fn default() -> Self {
        FailureDetection::Probe { path: DEFAULT_PROBE_PATH.to_owned() }
    }
}

impl FailureDetection {
    pub fn is_probe(&self) -> bool {
        matches!(self, FailureDetection::Probe { .. })
    }
}

/// The wire form before the defaults are filled in and the bounds checked.
#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
// What a wrong value is told it should be: serde would name this type, which callers never see.
#[serde(expecting = r#"a failure_detection object, {"mode": "probe", ...} or {"mode": "lease", ...}"#)]
enum RawFailureDetection {
    Probe {
        path: Option<String>,
    },
    Lease {
        #[serde(default, deserialize_with = "whole_number")]
        ttl_ms: Option<u64>,
    },
}

/// A non-negative integer, also when written as a whole decimal such as `5000.0`: JSON does not
/// tell the two apart, and generated clients send either.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    match n {
        None => Ok(None),
        Some(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("ttl_ms {n} is not a non-negative integer"))),
    }
}

impl TryFrom<RawFailureDetection> for FailureDetection {
    type Error = ValidationError;

    fn try_from(raw: RawFailureDetection) -> Result<Self, Self::Error> {
        match raw {
            RawFailureDetection::Probe { path } => {
                let path = path.unwrap_or_else(|| DEFAULT_PROBE_PATH.to_owned());
                let valid = path.starts_with('/')
                    && path.len() <= MAX_PROBE_PATH_LEN
                    && path.bytes().all(|c| c.is_ascii_graphic());
                if !valid {
                    return Err(ValidationError::new(
                        "failure_detection.path",
                        format!(
                            "{path:?} is not a valid probe path: it starts with '/', has at most \
                             {MAX_PROBE_PATH_LEN} printable ASCII characters and no spaces"
                        ),
                    ));
                }
                Ok(FailureDetection::Probe { path })
            }
            RawFailureDetection::Lease { ttl_ms } => {
                let ttl_ms = ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
                if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
                    return Err(ValidationError::new(
                        "failure_detection.ttl_ms",
                        format!("ttl_ms {ttl_ms} is out of range {MIN_LEASE_TTL_MS}..={MAX_LEASE_TTL_MS}"),
                    ));
                }
                Ok(FailureDetection::Lease { ttl_ms })
            }
        }
    }
}

/// A member's string map, within the contract's bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Roughly the bytes the map takes encoded.
    pub fn approx_bytes(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len() + 8).sum()
    }
}

impl TryFrom<BTreeMap<String, String>> for Metadata {
    type Error = ValidationError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        if map.len() > MAX_METADATA_KEYS {
            return Err(ValidationError::new(
                "metadata",
                format!("metadata has {} keys, at most {MAX_METADATA_KEYS} are allowed", map.len()),
            ));
        }
        for (k, v) in &map {
            if k.is_empty() || k.chars().count() > MAX_METADATA_KEY_LEN {
                return Err(ValidationError::new(
                    "metadata",
                    format!("metadata key {k:?} must have 1 to {MAX_METADATA_KEY_LEN} characters"),
                ));
            }
            if v.len() > MAX_METADATA_VALUE_LEN {
                return Err(ValidationError::new(
                    "metadata",
                    format!("metadata value of {k:?} has {} bytes, at most {MAX_METADATA_VALUE_LEN}", v.len()),
                ));
            }
        }
        Ok(Metadata(map))
    }
}

/// What a join asks for, defaults filled in: compared field by field to tell a no-op from a re-join.
/// An unknown field is an error, not dropped: `"meta"` for `"metadata"` must not pass silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub address: Address,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub instance: Option<Instance>,
    #[serde(default)]
    pub failure_detection: FailureDetection,
}

/// A point in time, milliseconds since the Unix epoch, written as RFC 3339 UTC with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }

    pub fn millis(self) -> i64 {
        self.0
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        DateTime::<Utc>::from_timestamp_millis(t.0).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl TryFrom<String> for Timestamp {
    type Error = ValidationError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(|e| ValidationError::new("timestamp", format!("{s:?} is not RFC 3339: {e}")))
    }
}

/// A member record, as stored and as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: MemberId,
    pub group: GroupName,
    pub address: Address,
    pub metadata: Metadata,
    pub instance: Option<Instance>,
    pub incarnation: u64,
    pub joined_at: Timestamp,
    pub responsible_node: Option<NodeId>,
    pub failure_detection: FailureDetection,
}

impl Member {
    /// Whether a join with `spec` would change nothing.
    pub fn matches(&self, spec: &MemberSpec) -> bool {
        self.address == spec.address
            && self.metadata == spec.metadata
            && self.instance == spec.instance
            && self.failure_detection == spec.failure_detection
    }
}

/// A group at a revision; `revision` is the revision of the group's last change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub group: GroupName,
    pub revision: u64,
    pub members: Vec<Member>,
}

/// One line of the list of all groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group: GroupName,
    pub revision: u64,
    pub size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<MemberSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = spec(r#"{"address":"10.0.0.1:80"}"#).unwrap();
        assert_eq!(s.failure_detection, FailureDetection::default());
        assert!(s.metadata.0.is_empty());
        assert_eq!(s.instance, None);
        let s = spec(r#"{"address":"10.0.0.1:80","instance":null,"failure_detection":{"mode":"lease"}}"#).unwrap();
        assert_eq!(s.failure_detection, FailureDetection::Lease { ttl_ms: DEFAULT_LEASE_TTL_MS });
        let s = spec(r#"{"address":"10.0.0.1:80","failure_detection":{"mode":"probe"}}"#).unwrap();
        assert_eq!(s.failure_detection, FailureDetection::default());
    }

    #[test]
    fn a_wrong_failure_detection_is_told_what_it_should_be() {
        for bad in ["null", r#""lease""#, "7"] {
            let body = format!(r#"{{"address":"a:1","failure_detection":{bad}}}"#);
            let error = spec(&body).unwrap_err().to_string();
            assert!(error.contains(r#"a failure_detection object, {"mode": "probe""#), "{bad}: {error}");
            assert!(!error.contains("Raw"), "{bad}: {error}");
        }
    }

    #[test]
    fn bounds_are_checked() {
        let too_many: BTreeMap<String, String> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        let body = serde_json::json!({"address": "a:1", "metadata": too_many}).to_string();
        assert!(spec(&body).unwrap_err().to_string().contains("metadata"));
        let long_key = serde_json::json!({"address": "a:1", "metadata": {"k".repeat(64): "v"}}).to_string();
        assert!(spec(&long_key).is_err());
        let long_value = serde_json::json!({"address": "a:1", "metadata": {"k": "v".repeat(1025)}}).to_string();
        assert!(spec(&long_value).is_err());
        let max_value = serde_json::json!({"address": "a:1", "metadata": {"k": "v".repeat(1024)}}).to_string();
        assert!(spec(&max_value).is_ok());
        for ttl in [0, 499, 86_400_001] {
            let body = format!(r#"{{"address":"a:1","failure_detection":{{"mode":"lease","ttl_ms":{ttl}}}}}"#);
            assert!(spec(&body).unwrap_err().to_string().contains("ttl_ms"), "{ttl}");
        }
        for ttl in ["500", "86400000", "5000.0", "1e4"] {
            let body = format!(r#"{{"address":"a:1","failure_detection":{{"mode":"lease","ttl_ms":{ttl}}}}}"#);
            assert!(spec(&body).is_ok(), "{ttl}");
        }
        for bad in [
            r#"{"address":"a:1","failure_detection":{"mode":"push"}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"probe","path":"nope"}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"probe","path":"/a b"}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"lease","ttl_ms":-1}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"lease","ttl_ms":5000.5}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"lease","ttl_ms":"5000"}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"lease","path":"/x"}}"#,
            r#"{"address":"a:1","metadata":{"k":1}}"#,
            r#"{"address":"a:1","instance":""}"#,
            r#"{"address":"a:1","meta":{"k":"v"}}"#,
            r#"{"address":"a:1","failure_detection":{"mode":"probe","pth":"/x"}}"#,
            r#"{"address":5}"#,
            r#"{}"#,
        ] {
            assert!(spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip_with_millis() {
        let t = Timestamp::from_millis(1_795_514_400_123);
        let s: String = t.into();
        assert_eq!(s, "2026-11-24T10:00:00.123Z");
        assert_eq!(Timestamp::try_from(s).unwrap(), t);
    }
}
