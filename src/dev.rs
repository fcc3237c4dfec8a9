//! `gm dev`: a local cluster of separate `gm server` processes on 127.0.0.1, supervised. Before
//! anything starts it checks that every port is free; then it reports each node's exit and
//! restarts it (or, if it keeps failing, says how to start it by hand), says when the cluster is
//! ready, and on Ctrl-C stops every node and says so.
//!
//! `gm bench` starts a [`LocalCluster`] the same way but without the supervisor: it kills and
//! restarts nodes itself to measure failovers, and a supervisor would fight it.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::Args;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::config::{usable_cores, DATA_DIR_LOCK};

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

Threads: each node runs its share of the cores as worker threads, at least 1, unless \
--worker-threads says otherwise (see gm server --worker-threads).

Restarts: a node that exits, or is killed (`kill -9 PID`), is reported with its \
exit status and restarted after 0.5 s. A node that exits 3 times in a row within 10 s of starting \
is left stopped, and gm dev prints the `gm server` command to start it by hand (gm dev does not \
supervise a node started that way). A leader killed and restarted within half a second usually \
leads again in the same term: to watch a failover, freeze the leader with `kill -STOP PID` instead \
(`kill -CONT PID` resumes it).

--clean deletes the data directory only if it holds nothing but gm dev's node-N directories and \
logs. Each gm server locks its data directory: a second gm dev on the same data fails.

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
    #[arg(long, env = "GM_CLEAN", value_parser = clap::builder::FalseyValueParser::new())]
    pub clean: bool,
    /// First API port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_API_PORT", default_value_t = 8081, value_parser = clap::value_parser!(u16).range(1..))]
    pub api_port: u16,
    /// First peer (Raft) port; node N listens on this plus N - 1.
    #[arg(long, env = "GM_PEER_PORT", default_value_t = 7001, value_parser = clap::value_parser!(u16).range(1..))]
    pub peer_port: u16,
    /// Worker threads of each node (`gm server --worker-threads`). Default: the CPUs this process
    /// may use shared out among the nodes, at least 1 each.
    #[arg(long, env = "GM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

/// How long stopping waits for the nodes to exit after SIGTERM before it sends SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How often the supervisor looks for exited nodes (and reaps them) and for restarts due.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Pause between two `/readyz` polls of one node.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long a node has to become ready after it starts before `gm dev` says it is not.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How much longer `gm dev` keeps watching a late node, to say when it does become ready.
const LATE_READY_DEADLINE: Duration = Duration::from_secs(600);
/// When a node exits: restart it after 0.5 s, 1 s; give up after 3 exits in a row within 10 s
/// of starting.
const RESTARTS: RestartPolicy =
    RestartPolicy { quick: Duration::from_secs(10), limit: 3, first_delay: Duration::from_millis(500) };

/// Why a local cluster cannot start or keep running. Every message is one line that says what
/// to do, since `gm dev` prints it as its last.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// This process's own executable, which the nodes run, cannot be found.
    #[error("cannot find the gm executable: {0}")]
    Exe(std::io::Error),
    /// A data dir, a node's directory in it or a node's log file cannot be made or removed.
    #[error("cannot prepare {path}: {error}")]
    DataDir { path: String, error: std::io::Error },
    /// The process of node `node` cannot be started.
    #[error("cannot start node {node}: {error}")]
    Spawn { node: u64, error: std::io::Error },
    /// A node id that is not in the cluster (ids run from 1 to the number of nodes).
    #[error("there is no node {0}")]
    NoSuchNode(u64),
    /// Node N's API or peer port, the first port plus N - 1, would be past 65535.
    #[error("node {0}'s port would be past 65535: choose a lower --api-port or --peer-port")]
    Port(u64),
    /// One port would serve both a node's API and a node's peer traffic.
    #[error(
        "port {port} would be both an API and a peer port: choose --api-port and --peer-port at least --nodes apart"
    )]
    PortsOverlap { port: u16 },
    /// Ports on 127.0.0.1 that something else holds; nothing was started.
    #[error("{} already in use on 127.0.0.1, so no node was started; {advice}", taken_ports(.taken))]
    PortsInUse {
        /// Each taken port with the node and role it was meant for.
        taken: Vec<TakenPort>,
        /// Which flags move them, with values that are free now.
        advice: String,
    },
    /// Every node exited before any became ready, so nothing is left to supervise.
    #[error("no node could start: all {nodes} exited before any was ready; {last}; logs in {logs}")]
    NoNodeStarted { nodes: usize, last: String, logs: String },
    /// A node's data dir is locked by a running `gm server`: another `gm dev` on this data dir.
    #[error(
        "node {node}'s data in {path} is in use by another gm process (another gm dev on this --data-dir?), \
         so no node was started; stop it, or give --data-dir another directory"
    )]
    DataInUse { path: String, node: u64 },
    /// `--clean` was asked to delete a directory that holds more than a local cluster's data.
    #[error(
        "refusing to delete {path} for --clean: it holds {entry}, which is not a gm dev node's data; \
         give --data-dir a directory of its own"
    )]
    NotDevData { path: String, entry: String },
    /// Every node has been given up on after exiting again and again.
    #[error("every node keeps exiting soon after it starts, so none is left running; {last}; logs in {logs}")]
    AllNodesDown { last: String, logs: String },
}

/// A port [`LocalCluster::start_with`] needs and found taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenPort {
    pub port: u16,
    /// The node that would have listened on it.
    pub node: u64,
    pub role: PortRole,
}

/// What a node listens on a port for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// The REST API (`--api-port`).
    Api,
    /// Raft and node-to-node traffic (`--peer-port`).
    Peer,
}

impl std::fmt::Display for PortRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortRole::Api => "API",
            PortRole::Peer => "peer",
        })
    }
}

fn taken_ports(taken: &[TakenPort]) -> String {
    let list: Vec<String> = taken.iter().map(|t| format!("{} (node {} {})", t.port, t.node, t.role)).collect();
    match list.as_slice() {
        [one] => format!("port {one} is"),
        _ => format!("ports {} are", list.join(", ")),
    }
}

/// Where the nodes' stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOutput {
    /// This process's own, so node logs show on its terminal (`gm bench`, whose nodes log
    /// errors only).
    Inherit,
    /// Appended to `<data-dir>/node-N.log`, over all of the node's restarts (`gm dev`). Such a
    /// node needs no terminal, so it also gets its own process group: a Ctrl-C typed in the
    /// terminal then reaches only the supervisor, which stops the nodes itself.
    LogFiles,
}

/// One local node process.
pub struct LocalNode {
    pub id: u64,
    /// `host:port` of its REST API.
    pub api: String,
    /// `host:port` of its peer (Raft) listener.
    pub peer: String,
    child: Option<Child>,
    /// The length of its log file when its current process started: that process wrote the rest.
    log_start: u64,
}

/// Local `gm server` processes, killed when this is dropped. Node N listens on the first API and
/// peer ports plus N - 1 and keeps its state in `<data-dir>/node-N`.
pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    peers: String,
    /// Absolute, so a command line printed for a person works from any directory.
    data_dir: PathBuf,
    exe: PathBuf,
    extra_args: Vec<String>,
    output: NodeOutput,
    /// Whether a node is started with `--name gm-dev-N`, or left to its default name.
    named: bool,
    /// Environment variables set (`Some`) or removed (`None`) for the nodes, over this process's.
    env: Vec<(String, Option<String>)>,
}

/// Which nodes [`LocalCluster::stop_within`] stopped, and which of them had to be killed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Ids of the nodes that were running, in order.
    pub nodes: Vec<u64>,
    /// Those that ignored SIGTERM until the deadline and got SIGKILL.
    pub killed: Vec<u64>,
}

/// How a node process ended.
#[derive(Debug)]
pub struct Exit {
    pub pid: Option<u32>,
    /// `Err` if the status could not be read (the message says why).
    pub status: Result<ExitStatus, String>,
}

impl LocalCluster {
    /// Starts `config.nodes` nodes whose output goes to this process's stdout and stderr;
    /// `extra_args` go to every `gm server`. See [`LocalCluster::start_with`].
    pub fn start(config: &DevConfig, extra_args: &[String]) -> Result<LocalCluster, DevError> {
        Self::start_with(config, extra_args, NodeOutput::Inherit)
    }

    /// Starts `config.nodes` nodes; `extra_args` go to every `gm server`. First checks that every
    /// API and peer port can be bound on 127.0.0.1 and fails with [`DevError::PortsInUse`] if
    /// not, before anything is removed or started; then empties the data dir if `config.clean`.
    /// Does not wait for the nodes to be ready.
    pub fn start_with(config: &DevConfig, extra_args: &[String], output: NodeOutput) -> Result<LocalCluster, DevError> {
        let mut cluster = Self::prepare(config, extra_args, output)?;
        for n in 1..=config.nodes {
            cluster.spawn(n)?;
        }
        Ok(cluster)
    }

    /// What [`LocalCluster::start_with`] does before it starts the nodes: the cluster with no
    /// node running yet, to be started one by one with [`LocalCluster::spawn`].
    pub fn prepare(config: &DevConfig, extra_args: &[String], output: NodeOutput) -> Result<LocalCluster, DevError> {
        let exe = std::env::current_exe().map_err(DevError::Exe)?;
        let ports = layout(config)?;
        check_ports_free(&ports)?;
        check_data_free(&config.data_dir, config.nodes)?;
        if config.clean {
            check_dev_data(&config.data_dir)?;
            match std::fs::remove_dir_all(&config.data_dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DevError::DataDir { path: config.data_dir.display().to_string(), error });
                }
                _ => {}
            }
        }
        let peers = ports.iter().map(|p| format!("{}=127.0.0.1:{}", p.node, p.peer)).collect::<Vec<_>>().join(",");
        let nodes = ports
            .iter()
            .map(|p| LocalNode {
                id: p.node,
                api: format!("127.0.0.1:{}", p.api),
                peer: format!("127.0.0.1:{}", p.peer),
                child: None,
                log_start: 0,
            })
            .collect();
        let data_dir = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
        Ok(LocalCluster {
            nodes,
            peers,
            data_dir,
            exe,
            extra_args: extra_args.to_vec(),
            output,
            named: true,
            env: vec![(
                WORKER_THREADS_VAR.to_owned(),
                Some(config.worker_threads.unwrap_or_else(|| cores_share(config.nodes)).to_string()),
            )],
        })
    }

    /// Whether the nodes started from now on get `--name gm-dev-N` (the default), or keep the
    /// name `gm server` gives itself.
    pub fn name_nodes(&mut self, named: bool) {
        self.named = named;
    }

    /// Sets (`Some`) or removes (`None`) environment variable `key` for the nodes started from
    /// now on; the others they inherit from this process.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.push((key.to_owned(), value.map(str::to_owned)));
    }

    /// Runs `exe` as the nodes' `gm` from now on, instead of this process's own executable (a
    /// test binary is not `gm`).
    pub fn set_executable(&mut self, exe: PathBuf) {
        self.exe = exe;
    }

    /// Starts node `id` (again) on its data dir. A process of the node still running is killed.
    pub fn spawn(&mut self, id: u64) -> Result<(), DevError> {
        let dir = self.node_dir(id);
        std::fs::create_dir_all(&dir).map_err(|error| DevError::DataDir { path: dir.display().to_string(), error })?;
        let mut command = Command::new(&self.exe);
        command.args(self.server_args(id)?).stdin(Stdio::null()).kill_on_drop(true);
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut log_start = 0;
        if self.output == NodeOutput::LogFiles {
            let path = self.log_path(id);
            let prepare = |error| DevError::DataDir { path: path.display().to_string(), error };
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(prepare)?;
            log_start = log.metadata().map_err(prepare)?.len();
            let stdout = log.try_clone().map_err(prepare)?;
            command.stdout(stdout).stderr(log).env("NO_COLOR", "1").process_group(0);
        }
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|error| DevError::Spawn { node: id, error })?;
        let node = self.node_mut(id)?;
        node.child = Some(child);
        node.log_start = log_start;
        Ok(())
    }

    /// kill -9 of node `id`, waiting until it is gone.
    pub async fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.iter_mut().find(|n| n.id == id).and_then(|n| n.child.take()) {
            let _ = child.kill().await;
        }
    }

    /// The process id of node `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).ok()?.child.as_ref()?.id()
    }

    /// If node `id`'s process has exited, reaps it and says how it ended; `None` while it runs
    /// (or if it was not started).
    pub fn reap(&mut self, id: u64) -> Option<Exit> {
        let node = self.nodes.iter_mut().find(|n| n.id == id)?;
        let child = node.child.as_mut()?;
        let pid = child.id();
        let status = match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => Ok(status),
            Err(e) => Err(e.to_string()),
        };
        node.child = None;
        Some(Exit { pid, status })
    }

    /// `<data-dir>/node-N.log`, where node `id` writes with [`NodeOutput::LogFiles`].
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{id}.log"))
    }

    /// The last useful line node `id` wrote to its log file since its latest start, if any.
    pub fn last_log_line(&self, id: u64) -> Option<String> {
        let from = self.node(id).ok()?.log_start;
        last_useful_line(&read_tail(&self.log_path(id), from)?)
    }

    /// The command that starts node `id` as this cluster does, quoted for a POSIX shell.
    pub fn command_line(&self, id: u64) -> Result<String, DevError> {
        let exe = shell_quote(&self.exe.to_string_lossy());
        let args = self.server_args(id)?;
        Ok(std::iter::once(exe)
            .chain(args.iter().map(|a| shell_quote(&a.to_string_lossy())))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// SIGTERM to every node so each stops cleanly, waits for all of them, and SIGKILLs any
    /// still running after `deadline`.
    pub async fn stop_within(&mut self, deadline: Duration) -> Stopped {
        let mut stopped = Stopped::default();
        for node in &self.nodes {
            if let Some(child) = &node.child {
                send_signal(child, libc::SIGTERM);
                stopped.nodes.push(node.id);
            }
        }
        let exits = futures::future::join_all(self.nodes.iter_mut().filter_map(|n| n.child.as_mut()).map(Child::wait));
        let _ = tokio::time::timeout(deadline, exits).await;
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = child.kill().await;
                    stopped.killed.push(node.id);
                }
            }
        }
        stopped
    }

    /// SIGTERM to every node so each stops cleanly; SIGKILL after 10 s for any that does not.
    pub async fn stop(mut self) {
        self.stop_within(STOP_DEADLINE).await;
    }

    fn node(&self, id: u64) -> Result<&LocalNode, DevError> {
        self.nodes.iter().find(|n| n.id == id).ok_or(DevError::NoSuchNode(id))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut LocalNode, DevError> {
        self.nodes.iter_mut().find(|n| n.id == id).ok_or(DevError::NoSuchNode(id))
    }

    fn node_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    /// The arguments of node `id`'s `gm server`.
    fn server_args(&self, id: u64) -> Result<Vec<OsString>, DevError> {
        let node = self.node(id)?;
        let mut args: Vec<OsString> = ["server", "--node-id", &id.to_string()].map(OsString::from).into();
        if self.named {
            args.extend(["--name".into(), format!("gm-dev-{id}").into()]);
        }
        args.extend(["--api-addr", &node.api, "--peer-addr", &node.peer].map(OsString::from));
        args.push("--data-dir".into());
        args.push(self.node_dir(id).into_os_string());
        args.extend(["--peers", &self.peers].map(OsString::from));
        args.extend(self.extra_args.iter().map(OsString::from));
        Ok(args)
    }
}

/// One node's ports on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodePorts {
    node: u64,
    api: u16,
    peer: u16,
}

/// Node N's ports: the first API and peer ports plus N - 1. Fails if one is past 65535 or if
/// the two ranges overlap.
fn layout(config: &DevConfig) -> Result<Vec<NodePorts>, DevError> {
    let port = |base: u16, n: u64| u16::try_from(u64::from(base) + n - 1).map_err(|_| DevError::Port(n));
    let ports = (1..=config.nodes)
        .map(|n| Ok(NodePorts { node: n, api: port(config.api_port, n)?, peer: port(config.peer_port, n)? }))
        .collect::<Result<Vec<_>, DevError>>()?;
    if let Some(p) = ports.iter().find(|p| ports.iter().any(|q| q.peer == p.api)) {
        return Err(DevError::PortsOverlap { port: p.api });
    }
    Ok(ports)
}

/// Each node's share of the CPUs this process may use, at least 1. The nodes share those cores,
/// and a node with more workers than its share wakes idle ones for work another node's thread
/// could have done: with 3 nodes on 2 cores, 1 worker each took 8–19% less node CPU per
/// linearizable read of a 100-member view than 2 each, in each of 6 alternated pairs of
/// `gm bench --workload reads --group-size 100` (throughput moved within the noise: the bench's
/// own client, on the same cores, was the limit there).
fn cores_share(nodes: u64) -> u16 {
    let cores = usable_cores() as u64;
    u16::try_from(cores / nodes.max(1)).unwrap_or(u16::MAX).max(1)
}

/// `gm server --worker-threads`'s variable.
const WORKER_THREADS_VAR: &str = "GM_WORKER_THREADS";

/// Whether `port` can be bound on 127.0.0.1 now (the listener is closed again at once).
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Fails if a running `gm server` holds the lock of a node's data dir (`gm server` locks its
/// data dir for its life): that node would fail to start while the others resumed beside a
/// running cluster, and `--clean` would delete a running cluster's data.
fn check_data_free(data_dir: &Path, nodes: u64) -> Result<(), DevError> {
    for node in 1..=nodes {
        let Ok(lock) =
            std::fs::OpenOptions::new().write(true).open(data_dir.join(format!("node-{node}")).join(DATA_DIR_LOCK))
        else {
            continue;
        };
        // Released when `lock` is dropped, at once: the node takes it when it starts.
        if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            return Err(DevError::DataInUse { path: data_dir.display().to_string(), node });
        }
    }
    Ok(())
}

/// Fails with every port of `ports` that is taken, and flags with free values to use instead.
fn check_ports_free(ports: &[NodePorts]) -> Result<(), DevError> {
    let mut taken = Vec::new();
    for p in ports {
        if !port_free(p.api) {
            taken.push(TakenPort { port: p.api, node: p.node, role: PortRole::Api });
        }
        if !port_free(p.peer) {
            taken.push(TakenPort { port: p.peer, node: p.node, role: PortRole::Peer });
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    let n = ports.len() as u64;
    let (api, peer) = ports.first().map_or((0, 0), |p| (p.api, p.peer));
    let mut flags = Vec::new();
    let mut new_api = api;
    if taken.iter().any(|t| t.role == PortRole::Api) {
        new_api = free_base(api, n, peer).unwrap_or(api);
        flags.push(("--api-port", new_api, new_api != api));
    }
    if taken.iter().any(|t| t.role == PortRole::Peer) {
        let new_peer = free_base(peer, n, new_api).unwrap_or(peer);
        flags.push(("--peer-port", new_peer, new_peer != peer));
    }
    let names = flags.iter().map(|(flag, _, _)| *flag).collect::<Vec<_>>().join(" and ");
    // The ports are taken most often by another gm dev on the same data, which must not share it.
    let mut advice = format!(
        "if another gm dev runs, stop it or give this one its own --data-dir and other ports; \
         choose other ports with {names} (node N uses the port plus N - 1)"
    );
    if flags.iter().all(|(_, _, found)| *found) {
        let example = flags.iter().map(|(flag, base, _)| format!("{flag} {base}")).collect::<Vec<_>>().join(" ");
        let _ = write!(advice, ", for example `{example}`");
    }
    Err(DevError::PortsInUse { taken, advice })
}

/// Refuses a data dir that holds anything but a local cluster's `node-N` directories and
/// `node-N.log` files (a `GM_DATA_DIR` meant for `gm server` must never be wiped by `--clean`).
fn check_dev_data(dir: &Path) -> Result<(), DevError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(DevError::DataDir { path: dir.display().to_string(), error }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name
            .strip_prefix("node-")
            .map(|rest| rest.strip_suffix(".log").unwrap_or(rest))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if !ours {
            return Err(DevError::NotDevData { path: dir.display().to_string(), entry: name });
        }
    }
    Ok(())
}

/// A first port above `base`, in steps of 10, from which `n` ports are free on 127.0.0.1 and
/// none is among the `n` ports from `other`.
fn free_base(base: u16, n: u64, other: u16) -> Option<u16> {
    let clashes = |b: u64| b < u64::from(other) + n && u64::from(other) < b + n;
    (1..=100u64)
        .map(|step| u64::from(base) + 10 * step)
        .filter(|&b| !clashes(b))
        .find(|&b| (b..b + n).all(|p| u16::try_from(p).is_ok_and(port_free)))
        .and_then(|b| u16::try_from(b).ok())
}

/// Sends `signal` to `child` if it still has a process id.
fn send_signal(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with the pid of our own unreaped child and a valid signal number.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Makes the node get SIGTERM when this process dies, even by SIGKILL, so no node is left
/// running without its supervisor. Linux delivers it when the thread that spawned the child
/// ends: the spawns happen on the runtime's threads, which live as long as this process.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, getppid) and builds its error without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nothing will signal the child.
            if parent != 0 && libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// At most the last 64 KiB of `path` from byte `from` on: enough to hold a backtrace.
fn read_tail(path: &Path, from: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(from.max(len.saturating_sub(65_536)))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The line of `text` worth showing a person, cut to 300 characters: the error `gm server`
/// exited with (`gm: error: ...`, or clap's command-line `error: ...`), or else the last line that is not blank, not in a backtrace and not Rust's hint
/// about backtraces (so a panic's message).
fn last_useful_line(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let end = lines.iter().rposition(|l| l.eq_ignore_ascii_case("stack backtrace:")).unwrap_or(lines.len());
    let lines = &lines[..end];
    let line = lines
        .iter()
        .rfind(|l| l.starts_with("gm: error: ") || l.starts_with("error: "))
        .or_else(|| lines.iter().rfind(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE")))?;
    Some(match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => (*line).to_owned(),
    })
}

/// `arg` as a POSIX shell reads it back: unchanged if it is plain, otherwise in single quotes.
fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `exited with status 1`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: &Result<ExitStatus, String>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(e) => return format!("exited (its status cannot be read: {e})"),
    };
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    let Some(signal) = status.signal() else { return format!("exited ({status})") };
    let name = match signal {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    };
    let core = if status.core_dumped() { ", core dumped" } else { "" };
    format!("was killed by signal {signal}{name}{core}")
}

/// `0.4 s`, `12 s`, `3m 20s`.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else if d < Duration::from_secs(120) {
        format!("{} s", d.as_secs())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Prints one line for the person running `gm dev` or `gm bench`; a closed stdout (`| head`) is
/// not worth stopping for, nor a reason to leave nodes or data behind.
pub(crate) fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// When to restart a node that exited. Pure: the node's uptime comes in as a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RestartPolicy {
    /// An exit this soon after the start counts as a failure to start.
    quick: Duration,
    /// Quick exits in a row after which the node is left stopped.
    limit: u32,
    /// Wait before a restart; doubles with each quick exit in a row.
    first_delay: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum AfterExit {
    RestartIn(Duration),
    GiveUp,
}

impl RestartPolicy {
    /// The answer to an exit after `uptime`; `quick_exits` counts the quick exits in a row
    /// before it and is updated.
    fn after_exit(&self, uptime: Duration, quick_exits: &mut u32) -> AfterExit {
        if uptime >= self.quick {
            *quick_exits = 0;
            return AfterExit::RestartIn(self.first_delay);
        }
        *quick_exits += 1;
        if *quick_exits >= self.limit {
            AfterExit::GiveUp
        } else {
            AfterExit::RestartIn(self.first_delay * 2u32.saturating_pow(*quick_exits - 1))
        }
    }
}

/// Where a supervised node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Running,
    RestartAt(Instant),
    /// Given up on: it kept exiting soon after it started.
    Stopped,
}

/// What the supervisor knows of one node.
struct Watched {
    id: u64,
    /// 1 for the process `gm dev` started first, then one more per restart.
    life: u64,
    state: NodeState,
    started: Instant,
    quick_exits: u32,
    /// Whether its current process has answered `/readyz` with 200.
    ready: bool,
    ever_ready: bool,
    /// How its latest process ended, for the final error.
    last_exit: Option<String>,
}

/// The outcome of watching one node's `/readyz`.
struct Seen {
    node: u64,
    life: u64,
    /// Whether this was the second, longer watch of a node that was late.
    late: bool,
    ready: bool,
}

/// Polls `http://{api}/readyz` until it answers 200 or `within` passes.
fn watch_ready(client: reqwest::Client, api: String, node: u64, life: u64, late: bool) -> BoxFuture<'static, Seen> {
    let within = if late { LATE_READY_DEADLINE } else { READY_DEADLINE };
    Box::pin(async move {
        let deadline = Instant::now() + within;
        let url = format!("http://{api}/readyz");
        loop {
            if client.get(&url).send().await.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Seen { node, life, late, ready: true };
            }
            if Instant::now() >= deadline {
                return Seen { node, life, late, ready: false };
            }
            tokio::time::sleep(READY_POLL).await;
        }
    })
}

/// Watches the nodes of a [`LocalCluster`]: reaps and reports exits, restarts, says when the
/// cluster is ready.
struct Supervisor {
    cluster: LocalCluster,
    /// The data dir as the person wrote it, for messages.
    data_dir: PathBuf,
    nodes: Vec<Watched>,
    readiness: FuturesUnordered<BoxFuture<'static, Seen>>,
    client: reqwest::Client,
    started: Instant,
    /// Whether the "cluster ready" line was printed.
    announced: bool,
    /// Whether the "not ready after start" line was printed.
    late_reported: bool,
}

impl Supervisor {
    fn new(cluster: LocalCluster, data_dir: PathBuf) -> Supervisor {
        let started = Instant::now();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build().unwrap_or_default();
        let nodes = cluster
            .nodes
            .iter()
            .map(|n| Watched {
                id: n.id,
                life: 1,
                state: NodeState::Running,
                started,
                quick_exits: 0,
                ready: false,
                ever_ready: false,
                last_exit: None,
            })
            .collect();
        let mut supervisor = Supervisor {
            cluster,
            data_dir,
            nodes,
            readiness: FuturesUnordered::new(),
            client,
            started,
            announced: false,
            late_reported: false,
        };
        for id in supervisor.nodes.iter().map(|n| n.id).collect::<Vec<_>>() {
            supervisor.watch(id, 1, false);
        }
        supervisor
    }

    /// Supervises until `shutdown` completes (`Ok`) or no node is left to supervise (`Err`).
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), DevError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                Some(seen) = self.readiness.next() => self.on_seen(seen),
                _ = tick.tick() => self.check(Instant::now())?,
            }
        }
    }

    fn watch(&mut self, id: u64, life: u64, late: bool) {
        if let Ok(node) = self.cluster.node(id) {
            self.readiness.push(watch_ready(self.client.clone(), node.api.clone(), id, life, late));
        }
    }

    fn logs(&self) -> String {
        self.data_dir.join("node-N.log").display().to_string()
    }

    /// Reaps and answers exits, and restarts the nodes that are due.
    fn check(&mut self, now: Instant) -> Result<(), DevError> {
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            match self.nodes[i].state {
                NodeState::Running => {
                    if let Some(exit) = self.cluster.reap(id) {
                        self.on_exit(i, &exit, now)?;
                    }
                }
                NodeState::RestartAt(at) if now >= at => self.restart(i, now),
                _ => {}
            }
        }
        if self.nodes.iter().all(|n| n.state == NodeState::Stopped) {
            let last = self.nodes.iter().rev().find_map(|n| n.last_exit.clone()).unwrap_or_default();
            return Err(DevError::AllNodesDown { last, logs: self.logs() });
        }
        Ok(())
    }

    fn on_exit(&mut self, i: usize, exit: &Exit, now: Instant) -> Result<(), DevError> {
        let id = self.nodes[i].id;
        let uptime = now - self.nodes[i].started;
        let how = describe_exit(&exit.status);
        let failed = !matches!(&exit.status, Ok(s) if s.code() == Some(0) || s.signal().is_some());
        let log_line = if failed { self.cluster.last_log_line(id) } else { None };
        let pid = exit.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let ends = log_line.as_ref().map(|l| format!(". Its log ends: {l}")).unwrap_or_default();
        let node = &mut self.nodes[i];
        node.ready = false;
        node.last_exit = Some(match &log_line {
            Some(l) => format!("node {id} {how}: {}", l.strip_prefix("gm: error: ").unwrap_or(l)),
            None => format!("node {id} {how}"),
        });
        let none_started = !self.nodes.iter().any(|n| n.ever_ready || n.state == NodeState::Running && n.id != id);
        if none_started {
            say(format_args!("node {id}{pid} {how} after {}{ends}", seconds(uptime)));
            let last = self.nodes[i].last_exit.clone().unwrap_or_default();
            return Err(DevError::NoNodeStarted { nodes: self.nodes.len(), last, logs: self.logs() });
        }
        let node = &mut self.nodes[i];
        match RESTARTS.after_exit(uptime, &mut node.quick_exits) {
            AfterExit::RestartIn(delay) => {
                node.state = NodeState::RestartAt(now + delay);
                say(format_args!(
                    "node {id}{pid} {how} after {}; restarting it in {}{ends}",
                    seconds(uptime),
                    seconds(delay)
                ));
            }
            AfterExit::GiveUp => {
                node.state = NodeState::Stopped;
                say(format_args!(
                    "node {id}{pid} {how} after {}, its {} exit in a row within {} of starting, \
                     so gm dev leaves it stopped{ends}",
                    seconds(uptime),
                    ordinal(RESTARTS.limit),
                    seconds(RESTARTS.quick)
                ));
                self.say_by_hand(id);
            }
        }
        Ok(())
    }

    fn say_by_hand(&self, id: u64) {
        if let Ok(command) = self.cluster.command_line(id) {
            let log = self.cluster.log_path(id);
            say(format_args!("node {id}: its log is {}; to start it by hand: {command}", log.display()));
        }
    }

    fn restart(&mut self, i: usize, now: Instant) {
        let id = self.nodes[i].id;
        match self.cluster.spawn(id) {
            Ok(()) => {
                let node = &mut self.nodes[i];
                node.life += 1;
                node.state = NodeState::Running;
                node.started = now;
                let life = node.life;
                let pid = self.cluster.pid(id).map(|p| format!(" as pid {p}")).unwrap_or_default();
                say(format_args!("node {id}: restarted{pid}"));
                self.watch(id, life, false);
            }
            Err(e) => {
                let node = &mut self.nodes[i];
                node.last_exit = Some(format!("node {id} could not be restarted: {e}"));
                node.started = now;
                match RESTARTS.after_exit(Duration::ZERO, &mut node.quick_exits) {
                    AfterExit::RestartIn(delay) => {
                        node.state = NodeState::RestartAt(now + delay);
                        say(format_args!("node {id}: cannot restart it ({e}); trying again in {}", seconds(delay)));
                    }
                    AfterExit::GiveUp => {
                        node.state = NodeState::Stopped;
                        say(format_args!("node {id}: cannot restart it ({e}), so gm dev leaves it stopped"));
                        self.say_by_hand(id);
                    }
                }
            }
        }
    }

    fn on_seen(&mut self, seen: Seen) {
        let Some(node) = self.nodes.iter_mut().find(|n| n.id == seen.node) else { return };
        if seen.life != node.life || node.state != NodeState::Running {
            return;
        }
        if seen.ready {
            node.ready = true;
            node.ever_ready = true;
            if node.life > 1 {
                say(format_args!(
                    "node {}: ready again, {} after its restart",
                    node.id,
                    seconds(node.started.elapsed())
                ));
            }
            if !self.announced && self.nodes.iter().all(|n| n.ready) {
                self.announced = true;
                let after = seconds(self.started.elapsed());
                if self.nodes.len() == 1 {
                    say(format_args!(
                        "cluster ready after {after}: the node answers /readyz. Ctrl-C stops it; killed with kill -9, \
                         it is restarted"
                    ));
                } else {
                    say(format_args!(
                        "cluster ready after {after}: every node answers /readyz. Ctrl-C stops them all; to watch a \
                         failover, freeze the leader with kill -STOP PID (kill -CONT PID resumes it); a node killed \
                         with kill -9 is restarted"
                    ));
                }
            }
            return;
        }
        let (id, life) = (node.id, node.life);
        if seen.late {
            return;
        }
        if life > 1 {
            let log = self.cluster.log_path(id);
            say(format_args!(
                "node {id}: not ready {} after its restart; see {}",
                seconds(READY_DEADLINE),
                log.display()
            ));
        } else if !self.late_reported {
            self.late_reported = true;
            let late: Vec<u64> = self.nodes.iter().filter(|n| !n.ready).map(|n| n.id).collect();
            say(format_args!(
                "not ready {} after start: {} (gm dev keeps waiting; see {})",
                seconds(READY_DEADLINE),
                node_list(&late),
                self.logs()
            ));
        }
        self.watch(id, life, true);
    }
}

/// `3rd`.
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Which nodes of `nodes` already have state in `data_dir`, which do not, and which nodes past
/// `nodes` left state there from an earlier, larger cluster.
fn data_state(data_dir: &Path, nodes: u64) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let has_state =
        |id: u64| std::fs::read_dir(data_dir.join(format!("node-{id}"))).is_ok_and(|mut d| d.next().is_some());
    let (with, without): (Vec<u64>, Vec<u64>) = (1..=nodes).partition(|&id| has_state(id));
    let mut beyond: Vec<u64> = std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node-")?.parse::<u64>().ok())
        .filter(|&id| id > nodes && has_state(id))
        .collect();
    beyond.sort_unstable();
    (with, without, beyond)
}

/// "1 node", "3 nodes".
fn nodes(n: u64) -> String {
    match n {
        1 => "1 node".to_owned(),
        n => format!("{n} nodes"),
    }
}

/// `node 2`, `nodes 1 and 3`, `nodes 1, 2 and 3`.
fn node_list(ids: &[u64]) -> String {
    match ids {
        [] => "no node".to_owned(),
        [one] => format!("node {one}"),
        [init @ .., last] => {
            format!("nodes {} and {last}", init.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
        }
    }
}

/// Runs `gm dev`: starts the nodes (with `node_args` added to every `gm server`, such as the
/// `--log` filter `gm dev` was given), prints their URLs and pids, supervises them until
/// `shutdown` completes, then stops them all and prints a last line.
///
/// Errors: the ports are taken or out of range (nothing started), the data dir or a process
/// cannot be set up, or no node is left running (every node exited before any was ready, or
/// every node kept exiting soon after it started). The nodes are stopped before it returns.
pub async fn run(config: DevConfig, node_args: &[String], shutdown: impl Future<Output = ()>) -> Result<(), DevError> {
    let dir = config.data_dir.display().to_string();
    let (with, without, beyond) =
        if config.clean { Default::default() } else { data_state(&config.data_dir, config.nodes) };
    let cluster = LocalCluster::start_with(&config, node_args, NodeOutput::LogFiles)?;
    if with.is_empty() {
        say(format_args!("gm dev: {} on 127.0.0.1, a new cluster in {dir}", nodes(config.nodes)));
    } else {
        say(format_args!(
            "gm dev: {} on 127.0.0.1, resuming the cluster in {dir} (--clean starts a new one)",
            nodes(config.nodes)
        ));
        if !without.is_empty() {
            say(format_args!(
                "warning: {} {} no state in {dir} but {} {}: a node without state does not join that cluster; \
                 use --clean to start a new one",
                node_list(&without),
                if without.len() == 1 { "has" } else { "have" },
                node_list(&with),
                if with.len() == 1 { "has" } else { "have" }
            ));
        }
    }
    if !beyond.is_empty() {
        say(format_args!(
            "warning: {dir} also holds {} of an earlier run with more nodes, which the cluster still counts; use --clean",
            node_list(&beyond)
        ));
    }
    for node in &cluster.nodes {
        let pid = cluster.pid(node.id).map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        say(format_args!("node {}: http://{}  pid {pid}", node.id, node.api));
    }
    let logs = config.data_dir.join("node-*.log");
    say(format_args!("node logs: {} (follow them with `tail -f {}`)", logs.display(), logs.display()));
    // The client commands default to the default ports; anywhere else they need telling.
    if cluster.nodes.first().is_some_and(|n| !n.api.ends_with(":8081")) {
        let endpoints: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api)).collect();
        say(format_args!("client commands (gm join, gm members, ...): export GM_ENDPOINTS={}", endpoints.join(",")));
    }

    let mut supervisor = Supervisor::new(cluster, config.data_dir.clone());
    let result = supervisor.run(shutdown).await;
    let stopped = supervisor.cluster.stop_within(STOP_DEADLINE).await;
    result?;
    let count = nodes(stopped.nodes.len() as u64);
    let killed = if stopped.killed.is_empty() {
        String::new()
    } else {
        format!(" ({} killed after {})", node_list(&stopped.killed), seconds(STOP_DEADLINE))
    };
    say(format_args!("stopped {count}{killed}; data kept in {dir} (gm dev resumes from it; --clean starts fresh)"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api_port: u16, peer_port: u16, nodes: u64) -> DevConfig {
        DevConfig { nodes, data_dir: PathBuf::from("unused"), clean: false, api_port, peer_port, worker_threads: None }
    }

    /// A boolean variable is on for anything but `false`, `0`, `no`, `off` or empty, as cli.md
    /// says. `GM_CLEAN` is this test's alone: no other test reads it.
    #[test]
    fn a_boolean_variable_is_on_unless_it_says_off() {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            dev: DevConfig,
        }
        let cases = [("1", true), ("yes", true), ("TRUE", true), ("on", true), ("0", false), ("no", false)];
        for (value, on) in cases.into_iter().chain([("off", false), ("false", false), ("", false)]) {
            std::env::set_var("GM_CLEAN", value);
            let cmd = <Cmd as clap::Parser>::try_parse_from(["gm"]).expect("parse");
            assert_eq!(cmd.dev.clean, on, "GM_CLEAN={value:?}");
        }
        std::env::remove_var("GM_CLEAN");
        let cmd = <Cmd as clap::Parser>::try_parse_from(["gm", "--clean"]).expect("parse");
        assert!(cmd.dev.clean, "the flag itself");
    }

    #[test]
    fn node_n_uses_the_first_ports_plus_n_minus_one() {
        let ports = layout(&config(8081, 7001, 3)).expect("layout");
        assert_eq!(ports[2], NodePorts { node: 3, api: 8083, peer: 7003 });
    }

    #[test]
    fn ports_past_65535_or_overlapping_are_refused() {
        assert!(matches!(layout(&config(65534, 7001, 3)), Err(DevError::Port(3))));
        assert!(matches!(layout(&config(7002, 7001, 3)), Err(DevError::PortsOverlap { port: 7002 })));
        assert!(layout(&config(7004, 7001, 3)).is_ok());
    }

    #[test]
    fn taken_ports_are_named_with_their_node_and_role() {
        let error = DevError::PortsInUse {
            taken: vec![TakenPort { port: 8081, node: 1, role: PortRole::Api }],
            advice: "choose other ports with --api-port".into(),
        };
        assert_eq!(
            error.to_string(),
            "port 8081 (node 1 API) is already in use on 127.0.0.1, so no node was started; \
             choose other ports with --api-port"
        );
        let two = taken_ports(&[
            TakenPort { port: 8081, node: 1, role: PortRole::Api },
            TakenPort { port: 7002, node: 2, role: PortRole::Peer },
        ]);
        assert_eq!(two, "ports 8081 (node 1 API), 7002 (node 2 peer) are");
    }

    #[test]
    fn a_taken_port_is_reported_with_the_flag_that_moves_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let Err(DevError::PortsInUse { taken, advice }) =
            check_ports_free(&[NodePorts { node: 1, api: port, peer: port.wrapping_add(5000) }])
        else {
            panic!("a bound port passed the check");
        };
        assert_eq!(taken, vec![TakenPort { port, node: 1, role: PortRole::Api }]);
        assert!(advice.contains("--api-port"), "{advice}");
    }

    #[test]
    fn quick_exits_back_off_then_give_up_and_a_long_run_resets_them() {
        let mut quick = 0;
        let ms = Duration::from_millis;
        assert_eq!(RESTARTS.after_exit(ms(100), &mut quick), AfterExit::RestartIn(ms(500)));
        assert_eq!(RESTARTS.after_exit(ms(100), &mut quick), AfterExit::RestartIn(ms(1000)));
        assert_eq!(RESTARTS.after_exit(Duration::from_secs(60), &mut quick), AfterExit::RestartIn(ms(500)));
        assert_eq!(quick, 0);
        assert_eq!(RESTARTS.after_exit(ms(100), &mut quick), AfterExit::RestartIn(ms(500)));
        assert_eq!(RESTARTS.after_exit(ms(100), &mut quick), AfterExit::RestartIn(ms(1000)));
        assert_eq!(RESTARTS.after_exit(ms(9_999), &mut quick), AfterExit::GiveUp);
    }

    #[test]
    fn exits_are_described_by_code_or_signal() {
        assert_eq!(describe_exit(&Ok(ExitStatus::from_raw(1 << 8))), "exited with status 1");
        assert_eq!(describe_exit(&Ok(ExitStatus::from_raw(libc::SIGKILL))), "was killed by signal 9 (SIGKILL)");
        assert_eq!(describe_exit(&Ok(ExitStatus::from_raw(64))), "was killed by signal 64");
    }

    #[test]
    fn the_last_useful_log_line_skips_blanks_and_the_backtrace_hint() {
        let panic = "INFO started\nthread 'main' panicked at src/x.rs:1:1:\nboom\nnote: run with `RUST_BACKTRACE=1` \
                     environment variable to display a backtrace\n\n";
        assert_eq!(last_useful_line(panic).as_deref(), Some("boom"));
        assert_eq!(last_useful_line("\n  \n"), None);
        assert_eq!(last_useful_line(&"x".repeat(400)).map(|l| l.len()), Some(303));
        let error = "INFO started\ngm: error: cannot listen on 127.0.0.1:8081: in use\n";
        assert_eq!(last_useful_line(error).as_deref(), Some("gm: error: cannot listen on 127.0.0.1:8081: in use"));
        let backtrace = "thread 'main' panicked at src/x.rs:1:1:\nboom\nstack backtrace:\n   0: std::x\nnote: Some \
                         details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n";
        assert_eq!(last_useful_line(backtrace).as_deref(), Some("boom"));
        let flags = "error: invalid value 'x' for '--probe-interval <PROBE_INTERVAL>': bad\n\nFor more information, \
                     try '--help'.\n";
        assert!(last_useful_line(flags).is_some_and(|l| l.starts_with("error: invalid value 'x'")));
    }

    #[test]
    fn command_lines_are_quoted_for_a_shell() {
        assert_eq!(shell_quote("--peers"), "--peers");
        assert_eq!(shell_quote("1=127.0.0.1:7001,2=127.0.0.1:7002"), "1=127.0.0.1:7001,2=127.0.0.1:7002");
        assert_eq!(shell_quote("/tmp/my data"), "'/tmp/my data'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn node_lists_read_as_english() {
        assert_eq!(node_list(&[2]), "node 2");
        assert_eq!(node_list(&[1, 3]), "nodes 1 and 3");
        assert_eq!(node_list(&[1, 2, 3]), "nodes 1, 2 and 3");
    }

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(seconds(Duration::from_millis(430)), "0.4 s");
        assert_eq!(seconds(Duration::from_secs(42)), "42 s");
        assert_eq!(seconds(Duration::from_secs(200)), "3m 20s");
        assert_eq!(ordinal(3), "3rd");
        assert_eq!(ordinal(11), "11th");
    }

    #[test]
    fn data_locked_by_a_running_node_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(check_data_free(dir.path(), 3).is_ok(), "no data yet");
        std::fs::create_dir_all(dir.path().join("node-2")).expect("dir");
        let held = std::fs::File::create(dir.path().join("node-2/lock")).expect("lock file");
        assert!(check_data_free(dir.path(), 3).is_ok(), "a lock file nobody holds");
        held.try_lock().expect("hold the lock, as a running gm server does");
        match check_data_free(dir.path(), 3) {
            Err(e @ DevError::DataInUse { node: 2, .. }) => assert!(e.to_string().contains("another gm dev"), "{e}"),
            other => panic!("expected node 2's data in use, got {other:?}"),
        }
        drop(held);
        assert!(check_data_free(dir.path(), 3).is_ok(), "released");
    }

    #[test]
    fn data_state_tells_resumed_missing_and_leftover_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for id in [1, 4] {
            std::fs::create_dir_all(dir.path().join(format!("node-{id}/log"))).expect("dir");
        }
        std::fs::create_dir_all(dir.path().join("node-2")).expect("dir");
        assert_eq!(data_state(dir.path(), 3), (vec![1], vec![2, 3], vec![4]));
        assert_eq!(data_state(&dir.path().join("absent"), 2), (vec![], vec![1, 2], vec![]));
    }
}
