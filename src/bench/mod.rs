//! `gm bench`: measure a cluster through its public API and print figures, never judging them.
//!
//! - `gm bench` (no subcommand, [`load`]): join throughput and latency, linearizable and stale
//!   read throughput, and how long writes stop when the leader is killed.
//! - `gm bench fd` ([`fd`]): failure detection of probe-mode members: how long the cluster takes to
//!   remove crashed members, whether it removes live ones, and what probing costs.
//! - `gm bench watch` ([`streams`]): how fast one change reaches thousands of watch streams,
//!   whether any misses one, and what an idle stream costs.
//! - `gm bench scale` ([`scale`]): what an idle cluster costs as its members grow: join rate,
//!   memory, idle CPU, disk and restart-to-ready time at 0, N/3, 2N/3 and N lease members.
//!
//! All start their own local cluster of real `gm server` processes on a fresh data dir
//! ([`cluster`]) unless `gm bench` is given `--endpoints`; [`figures`] tallies and formats results.

mod cluster;
mod conn;
mod fd;
mod figures;
mod load;
mod scale;
mod streams;

use std::future::Future;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::ClientError;
use crate::dev::DevError;

pub use cluster::ClusterArgs;
pub use fd::FdConfig;
pub use load::{LoadConfig, Workload};
pub use scale::ScaleConfig;
pub use streams::WatchConfig;

/// Deadline of one bench request, tried once: above the server's own 10 s limit, so a slow
/// answer is still seen and counted as one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// `gm bench [FLAGS]` runs the load bench; `gm bench fd [FLAGS]` the failure-detection bench.
#[derive(Clone, Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchConfig {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub load: LoadConfig,
}

#[derive(Clone, Debug, Subcommand)]
pub enum BenchCommand {
    /// Failure detection: crash probe-mode members and measure how fast every node removes them,
    /// count live members removed by mistake, and measure what probing costs.
    Fd(FdConfig),
    /// Scale: load lease members into the bench's own cluster and, at 0, 1/3, 2/3 and all of
    /// them, measure the join rate, memory, idle CPU, disk and restart-to-ready time.
    Scale(ScaleConfig),
    /// Watch fan-out: open many watch streams of one group over the nodes, change the group
    /// every `--every` (100 ms by default), and measure how long each change takes to reach every stream, the changes
    /// missed or out of order, and the memory an idle stream costs.
    Watch(WatchConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the local cluster: {0}")]
    Cluster(#[from] DevError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("node {id} {how} before it was ready; its own error is above")]
    NodeExited { id: u64, how: String },
    #[error("{endpoint} was not ready within {waited:?}: {last}")]
    NotReady { endpoint: String, waited: Duration, last: String },
    #[error("port {0} on 127.0.0.1 is taken (another cluster?); choose others with --api-port and --peer-port")]
    PortInUse(u16),
    #[error("no node knew a leader within {0:?}")]
    NoLeader(Duration),
    #[error("no write was acknowledged within {0:?} before the leader was killed")]
    NoSteadyWrites(Duration),
    #[error("the failover phase kills nodes, so it needs the bench's own cluster (no --endpoints)")]
    FailoverNeedsOwnCluster,
    #[error("no members to read: every setup join failed ({0})")]
    NoMembers(String),
    #[error("a latency histogram failed: {0}")]
    Histogram(String),
    #[error("a bench worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("cannot encode the figures: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot start a member server: {0}")]
    MemberServer(std::io::Error),
    #[error("cannot find the process of node {0} in /proc")]
    NodeProcess(u64),
    #[error("{0}")]
    Flags(String),
    #[error("{0}")]
    Watch(String),
    #[error("interrupted")]
    Interrupted,
}

/// Runs the bench the command line chose.
pub async fn run(config: BenchConfig) -> Result<(), BenchError> {
    match config.command {
        None => load::run(config.load).await,
        Some(BenchCommand::Fd(fd)) => fd::run(fd).await,
        Some(BenchCommand::Scale(scale)) => scale::run(scale).await,
        Some(BenchCommand::Watch(watch)) => streams::run(watch).await,
    }
}

/// `work`, or [`BenchError::Interrupted`] on Ctrl-C, so the caller still stops its cluster.
async fn interruptible<T>(work: impl Future<Output = Result<T, BenchError>>) -> Result<T, BenchError> {
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `gm bench` as the binary declares it.
    #[derive(Debug, Parser)]
    struct Gm {
        #[command(flatten)]
        bench: BenchConfig,
    }

    fn bench(args: &[&str]) -> Result<BenchConfig, clap::Error> {
        Ok(Gm::try_parse_from(["bench"].iter().chain(args))?.bench)
    }

    #[test]
    fn bench_without_a_subcommand_is_the_load_bench() {
        let config = bench(&["--groups", "4", "--workload", "joins"]).expect("parses");
        assert!(config.command.is_none());
        assert_eq!(config.load.groups, 4);
        assert_eq!(config.load.workload, Workload::Joins);
    }

    #[test]
    fn bench_fd_has_its_own_flags() {
        let config =
            bench(&["fd", "--members", "2000", "--probe-interval", "200ms", "--pause-node", "2"]).expect("parses");
        let Some(BenchCommand::Fd(fd)) = config.command else { panic!("not fd") };
        assert_eq!(fd.members, 2000);
        assert_eq!(fd.probe_interval, Duration::from_millis(200));
        assert_eq!(fd.pause_node, Some(2));
        assert_eq!(fd.groups, 10);
        assert_eq!(fd.cluster.nodes, 3);
    }

    #[test]
    fn bench_scale_has_its_own_flags_and_passes_server_flags_on() {
        let config =
            bench(&["scale", "--members", "9000", "--server-arg=--snapshot-every-commands=50", "--nodes", "1"])
                .expect("parses");
        let Some(BenchCommand::Scale(scale)) = config.command else { panic!("not scale") };
        assert_eq!(scale.members, 9000);
        assert_eq!(scale.server_args, ["--snapshot-every-commands=50"]);
        assert_eq!(scale.cluster.nodes, 1);
        assert_eq!(scale.idle_for, Duration::from_secs(5));
    }

    #[test]
    fn bench_watch_has_its_own_flags() {
        let config = bench(&["watch", "--streams", "5000", "--every", "50ms"]).expect("parses");
        let Some(BenchCommand::Watch(watch)) = config.command else { panic!("not watch") };
        assert_eq!((watch.streams, watch.every, watch.group_size), (5000, Duration::from_millis(50), 10));
        assert!(bench(&["watch", "--streams", "0"]).is_err());
    }

    #[test]
    fn group_size_reads_views_and_gzip_needs_it() {
        let config = bench(&["--group-size", "100", "--gzip"]).expect("parses");
        assert_eq!((config.load.group_size, config.load.gzip), (Some(100), true));
        assert!(bench(&["--gzip"]).is_err(), "--gzip without --group-size");
    }

    #[test]
    fn load_flags_before_fd_are_refused() {
        assert!(bench(&["--groups", "4", "fd"]).is_err());
    }
}
