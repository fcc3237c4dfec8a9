//! The cluster a bench talks to: its own local cluster of real `gm server` processes (started as
//! `gm dev` does, on a fresh data dir, and removed at the end), or the endpoints it was given;
//! waiting for readiness and a leader; and a failed request as a tally counts it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use tokio::time::Instant;

use super::figures::latency;
use super::BenchError;
use crate::client::{Client, RetryPolicy};
use crate::dev::{describe_exit, say, DevConfig, LocalCluster, NodeOutput};
use crate::wire::Consistency;

/// Pause between polls of `/readyz` and `/v1/cluster`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for nodes to become ready (start-up, restart after a kill).
pub(super) const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline of one poll of `/readyz` or `/v1/cluster`.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// After this long, [`wait_ready`] says which endpoint it is waiting for and why.
const NOTICE_AFTER: Duration = Duration::from_secs(3);

/// How the bench's own cluster is laid out.
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Own cluster: how many nodes.
    #[arg(long, env = "GM_BENCH_NODES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Own cluster: first API port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_BENCH_API_PORT", default_value_t = 18081, value_parser = clap::value_parser!(u16).range(1..))]
    pub api_port: u16,
    /// Own cluster: first peer port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_BENCH_PEER_PORT", default_value_t = 17001, value_parser = clap::value_parser!(u16).range(1..))]
    pub peer_port: u16,
    /// Own cluster: the nodes' log filter (their logs go to this terminal). openraft's errors
    /// about a node the bench killed or paused are expected, so they are off by default.
    #[arg(long, env = "GM_BENCH_SERVER_LOG", default_value = "error,openraft=off")]
    pub server_log: String,
    /// Own cluster: the `gm` executable the nodes run, to measure another build (default: this
    /// bench's own executable).
    #[arg(long, env = "GM_BENCH_SERVER_EXE")]
    pub server_exe: Option<PathBuf>,
    /// Own cluster: worker threads of each node (`gm server --worker-threads`). Default: the CPUs
    /// this process may use shared out among the nodes, at least 1 each.
    #[arg(long, env = "GM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
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
            worker_threads: args.worker_threads,
        };
        ports_free(&dev)?;
        let mut all_args = vec!["--log".to_owned(), args.server_log.clone()];
        all_args.extend_from_slice(server_args);
        let mut cluster = LocalCluster::prepare(&dev, &all_args, NodeOutput::Inherit)?;
        if let Some(exe) = &args.server_exe {
            cluster.set_executable(exe.clone());
        }
        for id in 1..=dev.nodes {
            cluster.spawn(id)?;
        }
        let endpoints: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api)).collect();
        say(format_args!(
            "cluster: {} local nodes on {}, data in {}",
            cluster.nodes.len(),
            cluster.nodes.iter().map(|n| n.api.as_str()).collect::<Vec<_>>().join(", "),
            data_dir.display()
        ));
        Ok(OwnCluster { cluster, data_dir, endpoints })
    }

    /// Waits until every node is ready and prints how long that took. Fails at once if a node
    /// exits first (a bad flag or `GM_*` variable: its own message is above).
    pub async fn wait_ready(&mut self, client: &Client) -> Result<(), BenchError> {
        let started = Instant::now();
        tokio::select! {
            ready = wait_ready(client, READY_DEADLINE) => ready?,
            exited = self.first_exit() => return Err(exited),
        }
        say(format_args!("cluster: ready after {}", latency(started.elapsed())));
        Ok(())
    }

    /// Waits until a node's process exits, and says which and how.
    async fn first_exit(&mut self) -> BenchError {
        let ids: Vec<u64> = self.cluster.nodes.iter().map(|n| n.id).collect();
        loop {
            for &id in &ids {
                if let Some(exit) = self.cluster.reap(id) {
                    return BenchError::NodeExited { id, how: describe_exit(&exit.status) };
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops every node and removes the data dir.
    pub async fn stop(self) {
        self.cluster.stop().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Polls every endpoint's `/readyz` until it answers 200. An endpoint still not ready after
/// [`NOTICE_AFTER`] is named once, with why, so that a wrong address does not wait in silence.
pub(super) async fn wait_ready(client: &Client, waited: Duration) -> Result<(), BenchError> {
    let start = Instant::now();
    let deadline = start + waited;
    let once = client.with_policy(RetryPolicy::once(POLL_TIMEOUT));
    for (i, endpoint) in client.endpoints().iter().enumerate() {
        let node = once.at(i);
        let mut noticed = false;
        while let Err(error) = node.readyz().await {
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady { endpoint: endpoint.clone(), waited, last: error.to_string() });
            }
            if !noticed && start.elapsed() >= NOTICE_AFTER {
                say(format_args!("cluster: {endpoint} is not ready yet ({error}); waiting up to {}", latency(waited)));
                noticed = true;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(())
}

/// The leader's node id, from the first endpoint whose `/v1/cluster` names one.
pub(super) async fn find_leader(client: &Client, waited: Duration) -> Result<u64, BenchError> {
    let deadline = Instant::now() + waited;
    let once = client.with_policy(RetryPolicy::once(POLL_TIMEOUT));
    loop {
        for i in 0..client.endpoints().len() {
            if let Ok(Some(leader)) = once.at(i).cluster(Consistency::Linearizable).await.map(|c| c.leader_id) {
                return Ok(leader);
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::NoLeader(waited));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
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
