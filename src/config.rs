//! The command line: every flag also reads `GM_<FLAG>` from the environment, so a Helm chart
//! sets env and a person sets flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::membership::NodeId;

#[derive(Debug, Parser)]
#[command(name = "gm", version, about = "Group membership for Kubernetes, replicated with Raft")]
pub struct Cli {
    /// Log filter, as in RUST_LOG (for example `info,gm=debug`). openraft's own logs are off by
    /// default (gm logs a peer's reachability once per change); `info,openraft=warn` shows them.
    #[arg(long, env = "GM_LOG", default_value = "info,openraft=off", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "GM_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run one GM node.
    Server(ServerConfig),
    /// Run a local cluster of separate `gm server` processes on 127.0.0.1.
    Dev(DevConfig),
    /// Load a running cluster and print throughput, latency and failover time; `gm bench fd`
    /// measures failure detection instead.
    Bench(crate::bench::BenchConfig),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Discovery {
    Static,
    Kubernetes,
}

fn request_timeout(s: &str) -> Result<Duration, String> {
    match duration(s) {
        Ok(d) if d <= Duration::from_secs(10) && !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0 and at most 10s".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses `250ms`, `1s`, `2m`.
pub fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Clone, Debug, Args)]
pub struct ServerConfig {
    /// The Raft node id, a positive integer. Default: the pod's ordinal in its StatefulSet plus one,
    /// read from the host name (`gm-cluster-2` is node 3).
    #[arg(long, env = "GM_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<NodeId>,
    /// REST API, `/metrics` and health.
    #[arg(long, env = "GM_API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: String,
    /// Raft and node-to-node traffic.
    #[arg(long, env = "GM_PEER_ADDR", default_value = "0.0.0.0:7000")]
    pub peer_addr: String,
    /// The API address other nodes and `/v1/cluster` show. Default: the listen address, with the
    /// host name in place of an unspecified IP.
    #[arg(long, env = "GM_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// The peer address other nodes use. Default: as for `--advertise-api`.
    #[arg(long, env = "GM_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Durable state: Raft log, vote and snapshots.
    #[arg(long, env = "GM_DATA_DIR", default_value = "./gm-data")]
    pub data_dir: PathBuf,
    /// How peers are found: `static` reads `--peers`. `kubernetes` is reserved by the contract
    /// and not available yet.
    #[arg(long, env = "GM_DISCOVERY", value_enum, default_value = "static")]
    pub discovery: Discovery,
    /// Static discovery: every initial voter's peer address, `1=HOST:PORT,2=HOST:PORT,...`.
    #[arg(long, env = "GM_PEERS")]
    pub peers: Option<String>,
    /// Probe period per member.
    #[arg(long, env = "GM_PROBE_INTERVAL", default_value = "1s", value_parser = duration)]
    pub probe_interval: Duration,
    /// One probe's deadline.
    #[arg(long, env = "GM_PROBE_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub probe_timeout: Duration,
    /// Consecutive failed probes before removal.
    #[arg(long, env = "GM_SUSPECT_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub suspect_after: u32,
    /// This node's name in `/v1/cluster`. Default: the host name.
    #[arg(long, env = "GM_NAME")]
    pub name: Option<String>,
    /// Longest time a write or linearizable read waits before answering 503 (at most 10s, the
    /// contract's bound).
    #[arg(long, env = "GM_REQUEST_TIMEOUT", default_value = "5s", value_parser = request_timeout)]
    pub request_timeout: Duration,
    /// Leader heartbeat period.
    /// openraft also gives each AppendEntries this long to complete.
    #[arg(long, env = "GM_HEARTBEAT_INTERVAL", default_value = "100ms", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// Shortest election timeout; the longest is twice this. A follower waits for the longest
    /// before it votes for a new leader, so failover takes 2 to 3 times this.
    #[arg(long, env = "GM_ELECTION_TIMEOUT", default_value = "250ms", value_parser = duration)]
    pub election_timeout: Duration,
    /// Log entries between snapshots; older entries are then purged.
    #[arg(long, env = "GM_SNAPSHOT_EVERY", default_value_t = 20_000)]
    pub snapshot_every: u64,
}

/// `gm dev`: node N of the local cluster listens on 127.0.0.1 at `--api-port` + N - 1 (REST) and
/// `--peer-port` + N - 1 (Raft), and keeps its state in `<data-dir>/node-N`.
#[derive(Clone, Debug, Args)]
#[command(after_help = "\
Data: node N keeps its state (Raft log, snapshots) in <data-dir>/node-N, ./gm-dev-data/node-N by \
default. Running gm dev again resumes that cluster, with its groups and members; --clean deletes \
the data directory first to start a new, empty cluster.

Logs: node N appends its log to <data-dir>/node-N.log (follow all of them with \
`tail -f ./gm-dev-data/node-*.log`); this terminal shows gm dev's own lines: each node's URL and \
pid, when the cluster is ready, and every exit and restart.

Restarts: a node that exits, or is killed (`kill -9 PID` to watch a failover), is reported with its \
exit status and restarted after 0.5 s. A node that exits 3 times in a row within 10 s of starting \
is left stopped, and gm dev prints the `gm server` command to start it by hand.

gm dev exits with status 1 and one line saying why if a port is taken (nothing is started) or if \
no node can run. Ctrl-C or SIGTERM stops every node (SIGTERM, then SIGKILL after 10 s) and keeps \
the data.")]
pub struct DevConfig {
    /// How many nodes.
    #[arg(long, env = "GM_NODES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Where the nodes keep their state (`node-1/`, `node-2/`, ...) and logs (`node-1.log`, ...). A
    /// restart of gm dev resumes the cluster from it.
    #[arg(long, env = "GM_DATA_DIR", default_value = "./gm-dev-data")]
    pub data_dir: PathBuf,
    /// Delete the data directory first: a new, empty cluster.
    #[arg(long, env = "GM_CLEAN")]
    pub clean: bool,
    /// First API port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_API_PORT", default_value_t = 8081)]
    pub api_port: u16,
    /// First peer (Raft) port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_PEER_PORT", default_value_t = 7001)]
    pub peer_port: u16,
}
