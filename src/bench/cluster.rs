//! The cluster a bench talks to: its own local cluster of real `gm server` processes (started as
//! `gm dev` does, on a fresh data dir, and removed at the end), or the endpoints it was given;
//! waiting for readiness and a leader; and one request with its outcome as a tally sees it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use reqwest::{Client, RequestBuilder};
use serde::Deserialize;
use tokio::time::Instant;

use super::figures::latency;
use super::BenchError;
use crate::dev::DevConfig;
use crate::dev::LocalCluster;

/// Pause between polls of `/readyz` and `/v1/cluster`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for nodes to become ready (start-up, restart after a kill).
pub(super) const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How the bench's own cluster is laid out.
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Own cluster: how many nodes.
    #[arg(long, env = "GM_BENCH_NODES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Own cluster: first API port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_BENCH_API_PORT", default_value_t = 18081)]
    pub api_port: u16,
    /// Own cluster: first peer port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_BENCH_PEER_PORT", default_value_t = 17001)]
    pub peer_port: u16,
    /// Own cluster: the nodes' log filter (their logs go to this terminal). openraft's errors
    /// about a node the bench killed or paused are expected, so they are off by default.
    #[arg(long, env = "GM_BENCH_SERVER_LOG", default_value = "error,openraft=off")]
    pub server_log: String,
}

/// The bench's own local cluster and the data dir it removes when stopped.
pub(super) struct OwnCluster {
    pub cluster: LocalCluster,
    pub data_dir: PathBuf,
    /// Base URLs, `http://HOST:PORT`, in node id order.
    pub endpoints: Vec<String>,
}

impl OwnCluster {
    /// Starts the nodes on a fresh data dir with `server_args` on top of the log filter, and
    /// prints where they are. Does not wait for them: see [`wait_ready`].
    pub fn start(args: &ClusterArgs, server_args: &[String]) -> Result<OwnCluster, BenchError> {
        let data_dir = fresh_data_dir();
        let dev = DevConfig {
            nodes: args.nodes,
            data_dir: data_dir.clone(),
            clean: true,
            api_port: args.api_port,
            peer_port: args.peer_port,
        };
        ports_free(&dev)?;
        let mut all_args = vec!["--log".to_owned(), args.server_log.clone()];
        all_args.extend_from_slice(server_args);
        let cluster = LocalCluster::start(&dev, &all_args)?;
        let endpoints: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api)).collect();
        println!(
            "cluster: {} local nodes on {}, data in {}",
            cluster.nodes.len(),
            cluster.nodes.iter().map(|n| n.api.as_str()).collect::<Vec<_>>().join(", "),
            data_dir.display()
        );
        Ok(OwnCluster { cluster, data_dir, endpoints })
    }

    /// Waits until every node is ready and prints how long that took.
    pub async fn wait_ready(&self, client: &Client) -> Result<(), BenchError> {
        let started = Instant::now();
        wait_ready(client, &self.endpoints, READY_DEADLINE).await?;
        println!("cluster: ready after {}", latency(started.elapsed()));
        Ok(())
    }

    /// Stops every node and removes the data dir.
    pub async fn stop(self) {
        self.cluster.stop().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Polls every endpoint's `/readyz` until it answers 200.
pub(super) async fn wait_ready(client: &Client, endpoints: &[String], waited: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + waited;
    for endpoint in endpoints {
        let url = format!("{endpoint}/readyz");
        loop {
            let ready = client.get(&url).timeout(Duration::from_secs(3)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady { endpoint: endpoint.clone(), waited });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(())
}

/// The leader's node id, from the first endpoint whose `/v1/cluster` names one.
pub(super) async fn find_leader(client: &Client, endpoints: &[String], waited: Duration) -> Result<u64, BenchError> {
    #[derive(Deserialize)]
    struct ClusterView {
        leader_id: Option<u64>,
    }
    let deadline = Instant::now() + waited;
    loop {
        for endpoint in endpoints {
            let answer = client.get(format!("{endpoint}/v1/cluster")).timeout(Duration::from_secs(3)).send().await;
            let Ok(answer) = answer else { continue };
            if !answer.status().is_success() {
                continue;
            }
            if let Ok(ClusterView { leader_id: Some(leader) }) = answer.json().await {
                return Ok(leader);
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::NoLeader(waited));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A group's view as the benches read it: the member ids only, every other field skipped.
#[derive(Deserialize)]
pub(super) struct ViewIds {
    pub members: Vec<MemberId>,
}

#[derive(Deserialize)]
pub(super) struct MemberId {
    pub id: String,
}

/// A failed request: its status code, or what went wrong on the way (`timeout`, `connect`, ...).
pub(super) type Failure = String;

/// Sends a request and reads the whole answer; `Ok` if its status is one of `ok`.
pub(super) async fn exchange(request: RequestBuilder, ok: &[u16]) -> Result<(), Failure> {
    let response = request.send().await.map_err(|e| failure(&e))?;
    let status = response.status().as_u16();
    // Read the body even of an error, so the connection goes back to the pool.
    response.bytes().await.map_err(|e| failure(&e))?;
    if ok.contains(&status) {
        Ok(())
    } else {
        Err(status.to_string())
    }
}

fn failure(e: &reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    kind.to_owned()
}

/// `http://HOST:PORT` from `HOST:PORT` or a URL, without a trailing slash.
pub(super) fn endpoint_url(endpoint: &str) -> Result<String, BenchError> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(BenchError::Endpoint(endpoint.to_owned()));
    }
    let url = if trimmed.contains("://") { trimmed.to_owned() } else { format!("http://{trimmed}") };
    reqwest::Url::parse(&url).map_err(|_| BenchError::Endpoint(endpoint.to_owned()))?;
    Ok(url)
}

/// Fails if a port the own cluster needs is taken: its node would exit, and the bench would
/// measure whatever answers there instead.
fn ports_free(dev: &DevConfig) -> Result<(), BenchError> {
    let ports = (0..dev.nodes).flat_map(|n| [u64::from(dev.api_port) + n, u64::from(dev.peer_port) + n]);
    // A port past 65535 is left to `LocalCluster::start`, which reports it.
    for port in ports.filter_map(|p| u16::try_from(p).ok()) {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(BenchError::PortInUse(port));
        }
    }
    Ok(())
}

/// A data dir of our own under the temp dir, so a bench never resumes an old cluster.
fn fresh_data_dir() -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("gm-bench-{}-{nanos}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(endpoint_url("127.0.0.1:8081").expect("url"), "http://127.0.0.1:8081");
        assert_eq!(endpoint_url("http://gm:8080/").expect("url"), "http://gm:8080");
        assert!(endpoint_url(" ").is_err());
    }
}
