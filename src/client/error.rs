//! The client's one error type, and the few kinds a caller decides on.

use std::time::Duration;

use crate::wire::ErrorCode;

/// Why a request of [`super::Client`] failed. Every variant that reached a node names its
/// endpoint (`http://HOST:PORT`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error of the contract (or, from a proxy, any status that is not
    /// a success; its code is then [`ErrorCode::Other`] and its message the start of the body).
    #[error("{endpoint}: {status} {code}: {message}")]
    Api {
        endpoint: String,
        status: u16,
        code: ErrorCode,
        message: String,
        /// `Retry-After` of a `503`.
        retry_after: Option<Duration>,
    },
    /// No answer: the connection could not be made (in time), or it broke.
    #[error("{endpoint}: {}", causes(.source))]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// No whole answer within [`super::RetryPolicy::attempt_timeout`] (a watch: no headers).
    #[error("{endpoint}: no answer within {:.1} s", after.as_secs_f64())]
    Timeout { endpoint: String, after: Duration },
    /// A success whose body is not what the contract says.
    #[error("{endpoint}: the answer is not the contract's: {source}")]
    Decode {
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },
    /// A request body that cannot be written as JSON.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// Every attempt failed with a transport error or a `503` until the retry deadline.
    #[error("no endpoint answered in {:.1} s ({attempts} attempts); the last: {last}", waited.as_secs_f64())]
    NoEndpointAnswered { attempts: u32, waited: Duration, last: Box<ClientError> },
    /// An endpoint that is not `http(s)://HOST:PORT` or `HOST:PORT`, or no endpoint at all.
    #[error("bad endpoint {0:?}: expected http://HOST:PORT")]
    Endpoint(String),
    /// The HTTP client could not be built (no TLS roots, for example).
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// What a failed request means to a caller, for example the exit code of a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `404`: no such group or member.
    NotFound,
    /// `409`: a stale incarnation, or a heartbeat for a probe-mode member.
    Conflict,
    /// No node answered, or none could serve (`503`): try again later.
    Unavailable,
    /// The request was refused as malformed (`400`, `413`, `415`), or an endpoint is.
    BadInput,
    /// Anything else: a bug on one side or the other.
    Other,
}

impl ClientError {
    /// What the error means to a caller. Decided by the status, not the code, so that answers
    /// of proxies in between are understood too.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Api { status: 404, .. } => ErrorKind::NotFound,
            ClientError::Api { status: 409, .. } => ErrorKind::Conflict,
            ClientError::Api { status: 503, .. } => ErrorKind::Unavailable,
            ClientError::Api { status: 400 | 413 | 415, .. } => ErrorKind::BadInput,
            ClientError::Transport { .. } | ClientError::Timeout { .. } | ClientError::NoEndpointAnswered { .. } => {
                ErrorKind::Unavailable
            }
            ClientError::Endpoint(_) => ErrorKind::BadInput,
            ClientError::Api { .. } | ClientError::Decode { .. } | ClientError::Encode(_) | ClientError::Build(_) => {
                ErrorKind::Other
            }
        }
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the attempt ran out of time (connecting, waiting for the answer or reading it).
    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Timeout { .. } => true,
            ClientError::Transport { source, .. } => source.is_timeout(),
            _ => false,
        }
    }

    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport { source, .. } if source.is_connect())
    }

    /// Whether another attempt, on this endpoint or the next, may succeed where this one failed:
    /// no answer at all, or `503`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Transport { .. } | ClientError::Timeout { .. } | ClientError::Api { status: 503, .. }
        )
    }

    /// `Retry-After` of a `503`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// reqwest's message and its causes, `: `-separated: its own message alone says only "error
/// sending request", not whether the connection was refused or timed out. An answer cut short
/// (the node died, or the connection was cut, mid-body) is said to be one: reqwest calls it
/// "error decoding response body", which reads like a bug in the answer.
fn causes(error: &reqwest::Error) -> String {
    let mut chain = vec![error.to_string()];
    let mut cut_short = false;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        cut_short |= cause.downcast_ref::<std::io::Error>().is_some_and(|e| breaks_a_connection(e.kind()));
        let cause_text = cause.to_string();
        if !chain.iter().any(|text| text.contains(&cause_text)) {
            chain.push(cause_text);
        }
        source = cause.source();
    }
    if cut_short && (error.is_body() || error.is_decode()) {
        let why = chain.last().filter(|_| chain.len() > 1).map_or(String::new(), |last| format!(" ({last})"));
        return format!("the connection broke before the whole answer came{why}");
    }
    chain.join(": ")
}

/// Whether an I/O error of this kind means the connection is gone.
fn breaks_a_connection(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(kind, UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            endpoint: "http://a:1".into(),
            status,
            code: ErrorCode::Other(String::new()),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn kinds_follow_the_status() {
        assert_eq!(api(404).kind(), ErrorKind::NotFound);
        assert_eq!(api(409).kind(), ErrorKind::Conflict);
        assert_eq!(api(503).kind(), ErrorKind::Unavailable);
        for status in [400, 413, 415] {
            assert_eq!(api(status).kind(), ErrorKind::BadInput);
        }
        assert_eq!(api(500).kind(), ErrorKind::Other);
        let exhausted =
            ClientError::NoEndpointAnswered { attempts: 3, waited: Duration::ZERO, last: Box::new(api(503)) };
        assert_eq!(exhausted.kind(), ErrorKind::Unavailable);
        assert_eq!(ClientError::Endpoint("x".into()).kind(), ErrorKind::BadInput);
    }

    #[test]
    fn only_503_and_transport_errors_are_retried() {
        assert!(api(503).is_retryable());
        for status in [400, 404, 409, 500, 502] {
            assert!(!api(status).is_retryable(), "{status}");
        }
    }
}
