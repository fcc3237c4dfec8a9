//! The app's health, as the agent checks it: `GET` of an app URL answering `2xx`, or a TCP port
//! accepting a connection. While the app is unhealthy the agent answers GM's probes with `503` and
//! leaves its groups; it joins (again) once the app is healthy. The app counts as unhealthy until
//! its first successful check, so a pod joins only once its app answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AgentState;

/// What is checked.
#[derive(Clone, Debug)]
pub enum AppCheck {
    Http(reqwest::Url),
    /// `HOST:PORT`.
    Tcp(String),
}

impl std::fmt::Display for AppCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppCheck::Http(url) => write!(f, "GET {url}"),
            AppCheck::Tcp(address) => write!(f, "TCP {address}"),
        }
    }
}

/// How often, how patiently, and how many failures make the app unhealthy.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
}

/// The health after a check: healthy at once on success; unhealthy after `unhealthy_after`
/// failures in a row (`failures` counts them, the current one included).
pub fn judge(was_healthy: bool, ok: bool, failures: u32, unhealthy_after: u32) -> bool {
    ok || (was_healthy && failures < unhealthy_after)
}

/// Checks the app every interval until `stop`, and publishes its health on `healthy`.
pub async fn run(
    check: AppCheck,
    settings: Settings,
    healthy: watch::Sender<bool>,
    state: Arc<AgentState>,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the app check's HTTP client");
            return;
        }
    };
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            ok = once(&check, &http, settings.timeout) => ok,
        };
        failures = if ok { 0 } else { failures.saturating_add(1) };
        let was = *healthy.borrow();
        let now = judge(was, ok, failures, settings.unhealthy_after);
        if now != was {
            tracing::info!(healthy = now, check = %check, "the app's health changed");
            healthy.send_replace(now);
            state.metrics.app_healthy.set(i64::from(now));
        }
    }
}

/// One check: whether the app answered in time.
async fn once(check: &AppCheck, http: &reqwest::Client, timeout: Duration) -> bool {
    match check {
        AppCheck::Http(url) => http.get(url.clone()).send().await.is_ok_and(|r| r.status().is_success()),
        AppCheck::Tcp(address) => {
            matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await, Ok(Ok(_)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_success_heals_and_only_enough_failures_in_a_row_hurt() {
        assert!(judge(false, true, 0, 2));
        assert!(!judge(false, false, 1, 2), "unhealthy until the first success");
        assert!(judge(true, false, 1, 2), "one failure is not enough");
        assert!(!judge(true, false, 2, 2));
        assert!(!judge(true, false, 1, 1));
    }

    #[tokio::test]
    async fn a_tcp_check_needs_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let http = reqwest::Client::new();
        let timeout = Duration::from_secs(1);
        assert!(once(&AppCheck::Tcp(address.clone()), &http, timeout).await);
        drop(listener);
        assert!(!once(&AppCheck::Tcp(address), &http, timeout).await);
    }
}
