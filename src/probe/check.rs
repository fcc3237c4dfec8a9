//! One probe of one member: `GET http://{address}{path}` with the `X-GM-*` headers; any 2xx
//! within the timeout is alive. Connections are pooled and reused across probes.

use std::time::Duration;

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

/// Sends probes.
#[derive(Clone)]
pub struct Checker {
    http: reqwest::Client,
    timeout: Duration,
}

impl Checker {
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Checker { http, timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the member answered with a 2xx in time.
    pub async fn probe(&self, target: &ProbeTarget) -> bool {
        let url = format!("http://{}{}", target.address, target.path);
        let sent = self
            .http
            .get(url)
            .header("X-GM-Group", target.group.as_str())
            .header("X-GM-Member", target.id.as_str())
            .header("X-GM-Incarnation", target.incarnation)
            .timeout(self.timeout)
            .send()
            .await;
        match sent {
            Ok(resp) => resp.status().is_success(),
            Err(error) => {
                tracing::trace!(group = %target.group, member = %target.id, %error, "probe failed");
                false
            }
        }
    }
}
