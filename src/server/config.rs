//! The flags of `gm server`. Every flag also reads `GM_<FLAG>` from the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::{duration, positive_duration};
use crate::membership::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Discovery {
    Static,
    Kubernetes,
}

/// How the leader confirms, for a linearizable read, that it still leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LinearizableReads {
    /// By the read lease: a majority acknowledged one of its heartbeats within the last
    /// election timeout (docs/durability.md). No round per read; assumes the nodes' clocks run
    /// at rates within a factor of two. Falls back to a read-index round when the lease lapses.
    Lease,
    /// By a read-index round: one heartbeat to the voters per batch of reads (Raft thesis §6.4).
    ReadIndex,
}

fn request_timeout(s: &str) -> Result<Duration, String> {
    match duration(s) {
        Ok(d) if d <= Duration::from_secs(10) && !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0 and at most 10s".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Clone, Debug, Args)]
pub struct ServerConfig {
    /// Static discovery: the Raft node id, a positive integer. Default: the ordinal at the end of
    /// the host name plus one (`gm-cluster-2` is node 3). Refused with kubernetes discovery,
    /// which decides the id from the pod's ordinal and the generation of its disk.
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
    /// How peers are found: `static` reads `--peers`; `kubernetes` lists and watches the
    /// StatefulSet's pods through the Kubernetes API (in-cluster config or KUBECONFIG) and needs
    /// `--pod-name`, `--namespace`, `--statefulset`, `--service` and `--pod-selector`.
    #[arg(long, env = "GM_DISCOVERY", value_enum, default_value = "static")]
    pub discovery: Discovery,
    /// Static discovery (required with it): every initial voter's peer address,
    /// `1=HOST:PORT,2=HOST:PORT,...`. A node with state must be given the voters it holds.
    #[arg(long, env = "GM_PEERS")]
    pub peers: Option<String>,
    #[command(flatten)]
    pub kubernetes: KubernetesFlags,
    /// Probe period per member.
    #[arg(long, env = "GM_PROBE_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub probe_interval: Duration,
    /// One probe's deadline.
    #[arg(long, env = "GM_PROBE_TIMEOUT", default_value = "500ms", value_parser = positive_duration)]
    pub probe_timeout: Duration,
    /// Consecutive failed probes before a member is suspected; it is removed if no other node
    /// reaches it either.
    #[arg(long, env = "GM_SUSPECT_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub suspect_after: u32,
    /// This node's name in `/v1/cluster`. Default: `node-{id}`, or the host name when the node
    /// id comes from it (a StatefulSet pod).
    #[arg(long, env = "GM_NAME")]
    pub name: Option<String>,
    /// Longest time a write or linearizable read waits before answering 503 (at most 10s, the
    /// contract's bound).
    #[arg(long, env = "GM_REQUEST_TIMEOUT", default_value = "5s", value_parser = request_timeout)]
    pub request_timeout: Duration,
    /// Leader heartbeat period.
    /// openraft also gives each AppendEntries this long to complete.
    #[arg(long, env = "GM_HEARTBEAT_INTERVAL", default_value = "100ms", value_parser = positive_duration)]
    pub heartbeat_interval: Duration,
    /// Shortest election timeout; the longest is twice this. A follower that knew a leader
    /// waits out its leader lease (the longest) and one more before it elects, so failover takes
    /// about 4 times this.
    #[arg(long, env = "GM_ELECTION_TIMEOUT", default_value = "250ms", value_parser = positive_duration)]
    pub election_timeout: Duration,
    /// How a linearizable read learns that the leader still leads: `lease` (a majority
    /// acknowledged its heartbeats within the last `--election-timeout`, no extra round; assumes
    /// clocks that run at rates within a factor of two) or `read-index` (a quorum round shared by
    /// the reads queued meanwhile).
    #[arg(long, env = "GM_LINEARIZABLE_READS", value_enum, default_value = "lease")]
    pub linearizable_reads: LinearizableReads,
    /// Log entries between snapshots; older entries are then purged. A backstop: an entry
    /// batches many commands, so `--snapshot-every-commands` usually comes first.
    #[arg(long, env = "GM_SNAPSHOT_EVERY", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Commands applied between snapshots (joins, leaves, ...), however they were batched into
    /// entries; 0 leaves snapshots to `--snapshot-every` alone.
    #[arg(long, env = "GM_SNAPSHOT_EVERY_COMMANDS", default_value_t = 100_000)]
    pub snapshot_every_commands: u64,
    /// Groups that get a `gm_group_members` series of their own on `/metrics`: the largest ones;
    /// the members of the rest are summed in `group="_other"`. Bounds the series a scrape holds.
    #[arg(long, env = "GM_METRICS_GROUP_LIMIT", default_value_t = 100)]
    pub metrics_group_limit: usize,
    /// Threads that run the node's async tasks. Default: the CPUs this process may use (its
    /// affinity and cgroup quota, as `std::thread::available_parallelism` counts them). Nodes
    /// that share cores (`gm dev`) spend less CPU per request with fewer: an idle worker woken
    /// for a request costs a context switch.
    #[arg(long, env = "GM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

impl ServerConfig {
    /// What identifies this node in exported traces, as far as the flags tell before it starts
    /// (with Kubernetes discovery the id is settled later; every span has a `node` field too).
    pub fn trace_resource(&self) -> Vec<(&'static str, String)> {
        let mut resource = Vec::new();
        if let Some(id) = self.node_id {
            resource.push(("gm.node.id", id.to_string()));
        }
        if let Some(name) = self.name.as_ref().or(self.kubernetes.pod_name.as_ref()) {
            resource.push(("gm.node.name", name.clone()));
        }
        if let Some(pod) = &self.kubernetes.pod_name {
            resource.push(("k8s.pod.name", pod.clone()));
        }
        resource
    }
}

/// The flags of `--discovery kubernetes`, as the chart sets them from the downward API.
#[derive(Clone, Debug, Default, Args)]
pub struct KubernetesFlags {
    /// Kubernetes discovery: this pod's name (downward API `metadata.name`), `{statefulset}-{ordinal}`;
    /// it is also the node's name. The node id is the ordinal and the generation of the pod's
    /// disk: `generation × 1000 + ordinal + 1` (`gm-cluster-2` on its first disk is node 3).
    #[arg(long, env = "GM_POD_NAME")]
    pub pod_name: Option<String>,
    /// Kubernetes discovery: this pod's namespace (downward API `metadata.namespace`).
    #[arg(long, env = "GM_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubernetes discovery: this pod's IP (downward API `status.podIP`). Informational only:
    /// identity is never an IP.
    #[arg(long, env = "GM_POD_IP")]
    pub pod_ip: Option<String>,
    /// Kubernetes discovery: the StatefulSet's name; its `spec.replicas` gives the initial voters
    /// and the bootstrap marker is the ConfigMap `{statefulset}-bootstrap`.
    #[arg(long, env = "GM_STATEFULSET")]
    pub statefulset: Option<String>,
    /// Kubernetes discovery: the headless Service; nodes are addressed
    /// `{pod}.{service}.{namespace}.svc:{port}`, with the ports of `--api-addr` and `--peer-addr`.
    #[arg(long, env = "GM_SERVICE")]
    pub service: Option<String>,
    /// Kubernetes discovery: the label selector of the StatefulSet's pods,
    /// e.g. `app.kubernetes.io/name=gm,app.kubernetes.io/instance=gm-cluster`.
    #[arg(long, env = "GM_POD_SELECTOR")]
    pub pod_selector: Option<String>,
    /// Kubernetes discovery: on SIGTERM of a pod being scaled away (its ordinal at or above
    /// `spec.replicas`) that is still in the cluster, how long it keeps serving while the leader
    /// removes it, so that a scale-down of a majority at once still leaves a quorum to remove the
    /// voters one at a time. Keep it below the pod's termination grace period.
    #[arg(long, env = "GM_SCALE_DOWN_WAIT", default_value = "20s", value_parser = duration)]
    pub scale_down_wait: Duration,
}
