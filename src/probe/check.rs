//! One probe of one member: `GET http://{address}{path}` with the `X-GM-*` headers; any 2xx
//! within the timeout is alive. Connections are pooled and reused across probes. A probe that
//! got no answer in time says nothing when this node could not keep up: an overloaded or
//! stalled node must not take its own slowness for its members' death.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use crate::membership::{Address, GroupName, MemberId};

/// What to probe, and which incarnation the answer is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    pub group: GroupName,
    pub id: MemberId,
    pub incarnation: u64,
    pub address: Address,
    pub path: String,
}

/// Sends probes. Clones share one connection pool and one overload flag.
#[derive(Clone)]
pub struct Checker {
    http: reqwest::Client,
    timeout: Duration,
    overloaded: Arc<AtomicBool>,
}

impl Checker {
    /// Errors: the HTTP client cannot be built (TLS backend, resolver configuration).
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Checker { http, timeout, overloaded: Arc::default() })
    }

    /// Set by the prober when its probes run late: timeouts then say nothing.
    pub fn set_overloaded(&self, overloaded: bool) {
        if self.overloaded.swap(overloaded, Ordering::Relaxed) != overloaded {
            tracing::warn!(overloaded, "probe schedule {}", if overloaded { "falls behind" } else { "keeps up again" });
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one probe: what it found, how long it took, and whether the member is alive
    /// ([`Probed::alive`]).
    pub async fn probe(&self, target: &ProbeTarget) -> Probed {
        let url = format!("http://{}{}", target.address, target.path);
        let start = Instant::now();
        let sent = self
            .http
            .get(url)
            .header("X-GM-Group", target.group.as_str())
            .header("X-GM-Member", target.id.as_str())
            .header("X-GM-Incarnation", target.incarnation)
            .timeout(self.timeout)
            .send()
            .await;
        let took = start.elapsed();
        match sent {
            Ok(resp) if resp.status().is_success() => Probed { result: ProbeResult::Ok, took, alive: Some(true) },
            Ok(_) => Probed { result: ProbeResult::BadStatus, took, alive: Some(false) },
            Err(error) => {
                tracing::trace!(group = %target.group, member = %target.id, %error, "probe failed");
                let result = if error.is_timeout() {
                    ProbeResult::Timeout
                } else if error.is_connect() {
                    ProbeResult::Refused
                } else {
                    ProbeResult::Error
                };
                let stalled = took > self.timeout * 3;
                let unsure = error.is_timeout() && self.overloaded.load(Ordering::Relaxed);
                Probed { result, took, alive: (!stalled && !unsure).then_some(false) }
            }
        }
    }
}

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// A 2xx answer in time.
    Ok,
    /// No answer within the probe timeout.
    Timeout,
    /// No connection could be made (refused, or no route).
    Refused,
    /// An answer other than 2xx.
    BadStatus,
    /// Any other failure: a broken connection, a malformed answer.
    Error,
}

impl ProbeResult {
    /// The `result` label of `gm_probes_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Ok => "ok",
            ProbeResult::Timeout => "timeout",
            ProbeResult::Refused => "refused",
            ProbeResult::BadStatus => "bad_status",
            ProbeResult::Error => "error",
        }
    }
}

/// A probe's result, its duration and its verdict.
#[derive(Clone, Copy, Debug)]
pub struct Probed {
    pub result: ProbeResult,
    pub took: Duration,
    /// `Some(true)`: a 2xx in time. `Some(false)`: another status, a refused or broken
    /// connection, or no answer in time while this node keeps up. `None`: no answer in time
    /// while this node is overloaded, or a probe that took far longer than its timeout (this
    /// process was paused or starved).
    pub alive: Option<bool>,
}
