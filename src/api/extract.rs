//! Turning requests into validated values: bodies, names in paths, query parameters; and the
//! answer shape every `/v1/` success shares (`X-GM-Revision`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::membership::{GroupName, MemberId};
use crate::views::Encoded;
pub use crate::wire::{Consistency, REVISION_HEADER};

/// The largest request body the contract allows.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The default and the longest `wait` of a blocking query.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// A JSON body: `application/json` (any parameters, any case), at most 64 KiB, well-formed.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let too_large = || ApiError::PayloadTooLarge(format!("the request body exceeds {MAX_BODY_BYTES} bytes"));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let media_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        if media_type.as_deref() != Some("application/json") {
            return Err(ApiError::UnsupportedMediaType(
                "a request body must be sent with Content-Type: application/json".into(),
            ));
        }
        let bytes = read_limited(req.into_body(), MAX_BODY_BYTES).await?.ok_or_else(too_large)?;
        // serde would also read a struct from an array of its fields in order; the contract's
        // bodies are objects with named fields.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::InvalidArgument("invalid body: it must be a JSON object".into()));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidArgument(format!("invalid body: {e}")))
    }
}

/// Reads at most `limit` bytes; `None` if the body is longer.
async fn read_limited(body: Body, limit: usize) -> Result<Option<Vec<u8>>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidArgument(format!("could not read the body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

/// Path parameters whose rejection is a contract error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);

/// Query parameters whose rejection is a contract error. Decoded directly rather than through
/// axum's `Query`, whose message repeats a bad parameter's name as a path before the reason.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).map(QueryParams).map_err(|e| {
            // serde names query parameters "fields"; say what a user wrote.
            ApiError::InvalidArgument(format!("invalid query: {}", e.to_string().replace("field", "parameter")))
        })
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::InvalidArgument(format!("invalid path: {}", e.body_text()))
    }
}

/// `{group}` and `{id}` from a member path, validated.
pub fn member_path(group: &str, id: &str) -> Result<(GroupName, MemberId), ApiError> {
    Ok((GroupName::parse(group)?, MemberId::parse(id)?))
}

/// The query of a read that takes only `consistency`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    consistency: Option<String>,
}

impl ReadParams {
    pub fn consistency(&self) -> Result<Consistency, ApiError> {
        parse_consistency(self.consistency.as_deref())
    }
}

/// The query of a group's view: `consistency`, and a blocking query's `index` and `wait`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupParams {
    consistency: Option<String>,
    index: Option<String>,
    wait: Option<String>,
}

impl GroupParams {
    pub fn consistency(&self) -> Result<Consistency, ApiError> {
        parse_consistency(self.consistency.as_deref())
    }

    /// The blocking query, if `index` is given: the index and how long to wait.
    pub fn blocking(&self) -> Result<Option<(u64, Duration)>, ApiError> {
        let wait = match self.wait.as_deref() {
            None => DEFAULT_WAIT,
            Some(w) => parse_wait(w)?,
        };
        match self.index.as_deref() {
            None => Ok(None),
            Some(i) => Ok(Some((parse_u64("index", i)?, wait))),
        }
    }
}

/// The query of a request that takes no parameters: any parameter is a typo to report.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

fn parse_consistency(value: Option<&str>) -> Result<Consistency, ApiError> {
    match value {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => {
            Err(ApiError::InvalidArgument(format!("consistency {other:?} is not one of \"linearizable\", \"stale\"")))
        }
    }
}

/// A `wait` of whole `ms`, `s`, `m` or `h`, at most [`MAX_WAIT`].
fn parse_wait(w: &str) -> Result<Duration, ApiError> {
    let invalid = || ApiError::InvalidArgument(format!("wait {w:?} is not a duration such as 250ms, 30s or 2m"));
    let (digits, unit_ms) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
        .into_iter()
        .find_map(|(unit, ms)| Some((w.strip_suffix(unit)?, ms)))
        .ok_or_else(invalid)?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let wait = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit_ms)).map(Duration::from_millis);
    match wait {
        Some(wait) if wait <= MAX_WAIT => Ok(wait),
        _ => Err(ApiError::InvalidArgument(format!("wait {w:?} is longer than the maximum of 5m"))),
    }
}

/// A non-negative integer parameter.
pub fn parse_u64(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|e: std::num::ParseIntError| {
        let what = match e.kind() {
            std::num::IntErrorKind::PosOverflow => "is larger than 18446744073709551615",
            _ => "is not a non-negative integer",
        };
        ApiError::InvalidArgument(format!("{name} {value:?} {what}"))
    })
}

/// The query of a `DELETE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveParams {
    pub incarnation: Option<String>,
}

/// A successful `/v1/` answer: a status, the revision it was taken at, and a JSON body.
pub struct Answer<T> {
    pub status: StatusCode,
    pub revision: u64,
    pub body: T,
}

impl<T: Serialize> Answer<T> {
    pub fn ok(revision: u64, body: T) -> Self {
        Answer { status: StatusCode::OK, revision, body }
    }
}

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        resp.headers_mut().insert(REVISION_HEADER, HeaderValue::from(self.revision));
        resp
    }
}

/// A `200` `/v1/` answer whose JSON body was encoded once and is shared by every reader of the
/// same revision ([`crate::views`]): sent as those bytes, or as their gzip form when the client
/// accepts gzip and the body is large enough to have one.
pub struct EncodedAnswer {
    revision: u64,
    body: Bytes,
    gzipped: bool,
}

impl EncodedAnswer {
    /// The answer to a request with `headers`, taken at `revision`.
    pub fn new(revision: u64, encoded: &Encoded, headers: &HeaderMap) -> Self {
        match accepts_gzip(headers).then(|| encoded.gzip()).flatten() {
            Some(gzip) => EncodedAnswer { revision, body: gzip.clone(), gzipped: true },
            None => EncodedAnswer { revision, body: encoded.json().clone(), gzipped: false },
        }
    }
}

impl IntoResponse for EncodedAnswer {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        headers.insert(REVISION_HEADER, HeaderValue::from(self.revision));
        if self.gzipped {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        resp
    }
}

/// Whether `Accept-Encoding` allows gzip (RFC 9110, section 12.5.3): named, or covered by `*`
/// without being named, with a weight above 0. A weight that does not parse counts as 0.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    let items = headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok());
    for item in items.flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let weight = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight > 0.0);
        } else if coding == "*" {
            any = Some(weight > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn gzip_is_sent_only_where_accept_encoding_allows_it() {
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(accepts_gzip(&accept("gzip")));
        assert!(accepts_gzip(&accept("deflate, GZIP;q=0.5, br")));
        assert!(accepts_gzip(&accept("*")));
        assert!(!accepts_gzip(&accept("gzip;q=0")));
        assert!(!accepts_gzip(&accept("gzip; Q=0.000, *")));
        assert!(!accepts_gzip(&accept("*, gzip;q=0")));
        assert!(!accepts_gzip(&accept("br, identity")));
        assert!(!accepts_gzip(&accept("gzip;q=nonsense")));
        assert!(!accepts_gzip(&accept("*;q=0")));
    }

    #[test]
    fn a_number_past_u64_is_called_too_large() {
        let message = |v| parse_u64("index", v).expect_err(v).to_string();
        assert!(message("18446744073709551616").contains("is larger than 18446744073709551615"));
        assert!(message("-1").contains("is not a non-negative integer"));
        assert!(message("1x").contains("is not a non-negative integer"));
        assert_eq!(parse_u64("index", "18446744073709551615").ok(), Some(u64::MAX));
    }

    fn params(consistency: Option<&str>, index: Option<&str>, wait: Option<&str>) -> GroupParams {
        GroupParams {
            consistency: consistency.map(str::to_owned),
            index: index.map(str::to_owned),
            wait: wait.map(str::to_owned),
        }
    }

    #[test]
    fn consistency_values() {
        assert_eq!(params(None, None, None).consistency().unwrap(), Consistency::Linearizable);
        assert_eq!(params(Some("stale"), None, None).consistency().unwrap(), Consistency::Stale);
        assert!(params(Some("STALE"), None, None).consistency().is_err());
        assert!(params(Some(""), None, None).consistency().is_err());
    }

    #[test]
    fn blocking_parameters() {
        assert_eq!(params(None, None, None).blocking().unwrap(), None);
        assert_eq!(params(None, Some("7"), None).blocking().unwrap(), Some((7, DEFAULT_WAIT)));
        assert_eq!(params(None, Some("0"), Some("250ms")).blocking().unwrap(), Some((0, Duration::from_millis(250))));
        assert_eq!(params(None, Some("1"), Some("5m")).blocking().unwrap(), Some((1, MAX_WAIT)));
        assert_eq!(params(None, Some("1"), Some("0h")).blocking().unwrap(), Some((1, Duration::ZERO)));
        assert_eq!(params(None, Some("1"), Some("300000ms")).blocking().unwrap(), Some((1, MAX_WAIT)));
        for (index, wait) in [
            ("-1", "1s"),
            ("x", "1s"),
            ("1", "301s"),
            ("1", "6m"),
            ("1", "1h"),
            ("1", "soon"),
            ("1", "30"),
            ("1", "1m30s"),
            ("1", "s"),
            ("1", "-1s"),
            ("1", "99999999999999999999s"),
        ] {
            assert!(params(None, Some(index), Some(wait)).blocking().is_err(), "{index} {wait}");
        }
    }
}
