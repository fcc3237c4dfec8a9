//! The binary encoding of everything gm writes to disk or sends from node to node: Raft log
//! records, snapshots, Raft RPCs and the nodes' own peer calls. JSON cost a tenth of every node's
//! CPU under a write load (text escaping and number formatting on every hop), so these use
//! MessagePack (`rmp-serde`) behind a version byte. The public API stays JSON.
//!
//! Structs are written as maps with their field names, not as arrays: the records rely on serde
//! attributes that need a self-describing format (internally tagged enums such as `Command` and
//! `FailureDetection`, defaults, and fields that may be skipped), and a map keeps them meaning
//! the same as in JSON.
//!
//! Every encoded value starts with [`VERSION`]; [`decode`] refuses any other first byte with an
//! error that says what it found, so a node never misreads data or a peer of another format.
//! Before this encoding gm wrote JSON, whose first byte is `{` (or `[`), and the error says so.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format this gm writes and the only one it reads.
pub const VERSION: u8 = 1;

/// The content type of a peer request or answer in this encoding.
pub const CONTENT_TYPE: &str = "application/vnd.gm.msgpack";

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("no bytes to decode")]
    Empty,
    #[error("format version {found} is not one this gm reads (it reads version {VERSION}){}", json_hint(*found))]
    UnknownVersion { found: u8 },
    #[error("cannot encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// What an unknown first byte most likely is: the JSON of a gm from before this encoding.
fn json_hint(found: u8) -> &'static str {
    match found {
        b'{' | b'[' => ": this is JSON, written by a gm from before the binary format",
        _ => "",
    }
}

/// Appends `value`, version byte first, to `buf` (which may already hold a frame's header).
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    buf.push(VERSION);
    value.serialize(&mut rmp_serde::Serializer::new(&mut *buf).with_struct_map())?;
    Ok(())
}

/// `value` encoded, version byte first.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(256);
    encode_into(&mut buf, value)?;
    Ok(buf)
}

/// The value `bytes` encode; an unknown version byte is refused before anything is read.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&VERSION, rest)) => Ok(rmp_serde::from_slice(rest)?),
        Some((&found, _)) => Err(CodecError::UnknownVersion { found }),
    }
}

/// A peer request body or answer in this encoding: the node-to-node routes' counterpart of
/// axum's `Json`. A request in another content type (a node of an older gm sends JSON) is refused
/// with 415 and a message that says which format this node speaks.
pub struct Binary<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Binary<T> {
    type Rejection = (StatusCode, String);

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let sent = req.headers().get(header::CONTENT_TYPE).cloned();
        if sent.as_ref().is_none_or(|t| t.as_bytes() != CONTENT_TYPE.as_bytes()) {
            let sent = sent.as_ref().and_then(|t| t.to_str().ok()).unwrap_or("none");
            let message = format!(
                "this gm node takes peer requests as {CONTENT_TYPE} (version {VERSION}), not {sent}: \
                 every node of a cluster must run a gm that speaks the same peer format"
            );
            return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, message));
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| (e.status(), e.body_text()))?;
        decode(&body).map(Binary).map_err(|e| (StatusCode::BAD_REQUEST, format!("peer request body: {e}")))
    }
}

impl<T: Serialize> IntoResponse for Binary<T> {
    fn into_response(self) -> Response {
        match encode(&self.0) {
            Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Command, FailureDetection, GroupName, MemberId, MemberSpec, Timestamp};
    use crate::raft::{Batch, Entry};

    fn join() -> Command {
        let spec: MemberSpec = serde_json::from_value(serde_json::json!({
            "address": "10.0.0.1:80",
            "metadata": {"zone": "a"},
            "instance": "i-1",
            "failure_detection": {"mode": "lease", "ttl_ms": 700},
        }))
        .expect("spec");
        Command::Join {
            group: GroupName::parse("g").expect("group"),
            id: MemberId::parse("m").expect("member"),
            spec,
            at: Timestamp::from_millis(1_700_000_000_123),
        }
    }

    #[test]
    fn records_round_trip_with_their_serde_attributes() {
        let entry = Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
            payload: openraft::EntryPayload::Normal(Batch(vec![join()].into())),
        };
        let back: Entry = decode(&encode(&entry).expect("encode")).expect("decode");
        assert_eq!(back.log_id, entry.log_id);
        let openraft::EntryPayload::Normal(batch) = back.payload else { panic!("a normal entry") };
        assert_eq!(batch.0[..], [join()]);
        let probe: FailureDetection = decode(&encode(&FailureDetection::default()).expect("encode")).expect("decode");
        assert_eq!(probe, FailureDetection::default());
    }

    #[test]
    fn an_unknown_version_is_refused_and_json_is_named() {
        let mut bytes = encode(&join()).expect("encode");
        bytes[0] = 2;
        let error = decode::<Command>(&bytes).expect_err("version 2");
        assert!(matches!(error, CodecError::UnknownVersion { found: 2 }), "{error}");
        let json = serde_json::to_vec(&join()).expect("json");
        let error = decode::<Command>(&json).expect_err("JSON").to_string();
        assert!(error.contains("format version 123") && error.contains("JSON"), "{error}");
        assert!(matches!(decode::<Command>(&[]), Err(CodecError::Empty)));
    }
}
