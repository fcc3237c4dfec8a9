//! `gm bench scale`: what an idle cluster costs as it grows. Loads `--members` lease members
//! (which never heartbeat: a day's TTL) over `--members / 100` groups into the bench's own
//! cluster, and at 0, N/3, 2N/3 and N members prints the join rate there, each node's resident
//! memory, the CPU the leader (and every node) uses with no load at all, each node's data dir,
//! and how long the whole cluster takes to be ready again after a `kill -9` of every node.
//! Costs that follow what exists instead of what happens show up as idle CPU growing with N.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use tokio::time::Instant;

use super::cluster::{find_leader, wait_ready, ClusterArgs, OwnCluster, READY_DEADLINE};
use super::fd::process::{CpuMeter, Pid};
use super::figures::mib_per_node;
use super::{interruptible, BenchError, REQUEST_TIMEOUT};
use crate::client::{Client, RetryPolicy};
use crate::dev::say;
use crate::membership::{Address, FailureDetection, GroupName, MemberId, MemberSpec, Metadata};

/// Tries per join before the bench gives up (joins are idempotent, so retrying is safe).
const JOIN_ATTEMPTS: u32 = 10;
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Members that never heartbeat: they must outlive the bench.
const TTL_MS: u64 = 86_400_000;
/// Quiet time after loading (and after a restart) before idle CPU is measured: the last
/// applies, snapshots and catch-up settle.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Args)]
pub struct ScaleConfig {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Lease members to load, over `members / 100` groups.
    #[arg(long, env = "GM_BENCH_MEMBERS", default_value_t = 300_000,
        value_parser = clap::value_parser!(u32).range(3..=10_000_000))]
    pub members: u32,
    /// Joins in flight at once, spread over the nodes.
    #[arg(long, env = "GM_BENCH_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// Joins timed for the join rate at each step (the last ones before it; the first ones at 0).
    #[arg(long, env = "GM_BENCH_SAMPLE", default_value_t = 5_000)]
    pub sample: u32,
    /// How long idle CPU is measured at each step.
    #[arg(long, env = "GM_BENCH_IDLE_FOR", default_value = "5s", value_parser = crate::config::duration)]
    pub idle_for: Duration,
    /// Extra `gm server` flags for every node, e.g. `--server-arg=--snapshot-every-commands=50000`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

/// The figures at one step.
struct Step {
    members: u32,
    joins_per_s: Option<f64>,
    leader: u64,
    idle_cpu: Vec<f64>,
    rss: Vec<u64>,
    data_dir: Vec<u64>,
    ready_after: Duration,
}

pub async fn run(config: ScaleConfig) -> Result<(), BenchError> {
    let mut own = OwnCluster::start(&config.cluster, &config.server_args)?;
    let client = Client::builder(&own.endpoints)
        .pool_max_idle_per_host(config.concurrency)
        .policy(RetryPolicy::once(REQUEST_TIMEOUT))
        .build();
    let result = match client {
        Ok(client) => interruptible(bench(&config, &client, &mut own)).await,
        Err(e) => Err(e.into()),
    };
    own.stop().await;
    result
}

async fn bench(config: &ScaleConfig, client: &Client, own: &mut OwnCluster) -> Result<(), BenchError> {
    own.wait_ready(client).await?;
    let n = config.members;
    let groups = (n / 100).max(1);
    say(format_args!(
        "scale: {n} lease members over {groups} groups, {} joins in flight; idle CPU over {:?} at each step",
        config.concurrency, config.idle_for
    ));
    say(Step::HEADER);
    let mut loaded = 0;
    for target in [0, n / 3, 2 * n / 3, n] {
        let rate = if target == 0 {
            None
        } else {
            // The rate at a step: the last joins before it.
            let sample = config.sample.min((target - loaded) / 2).max(1);
            load(config, client, groups, loaded..target - sample).await?;
            Some(load(config, client, groups, target - sample..target).await?)
        };
        let mut step = measure(config, client, own, target).await?;
        if target == 0 {
            // The rate at 0: the first joins into the empty cluster, after its figures.
            loaded = config.sample.min(n / 6).max(1);
            step.joins_per_s = Some(load(config, client, groups, 0..loaded).await?);
        } else {
            loaded = target;
            step.joins_per_s = rate;
        }
        say(step.line());
    }
    Ok(())
}

/// Joins members `range`, `--concurrency` at a time, round-robin over the nodes; the joins per
/// second. A join that fails is tried again; one that keeps failing stops the bench.
async fn load(
    config: &ScaleConfig,
    client: &Client,
    groups: u32,
    range: std::ops::Range<u32>,
) -> Result<f64, BenchError> {
    let count = range.len();
    let started = Instant::now();
    let spec = MemberSpec {
        address: Address::parse("10.0.0.1:9000").map_err(|e| BenchError::Flags(e.to_string()))?,
        metadata: Metadata::default(),
        instance: None,
        failure_detection: FailureDetection::Lease { ttl_ms: TTL_MS },
    };
    let joins = futures::stream::iter(range)
        .map(|i| {
            let (node, spec) = (client.at(i as usize), &spec);
            async move { join(&node, groups, i, spec).await }
        })
        .buffer_unordered(config.concurrency);
    futures::pin_mut!(joins);
    while let Some(joined) = joins.next().await {
        joined?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

async fn join(node: &Client, groups: u32, i: u32, spec: &MemberSpec) -> Result<(), BenchError> {
    let group = GroupName::parse(&format!("scale-{}", i % groups)).map_err(|e| BenchError::Flags(e.to_string()))?;
    let id = MemberId::parse(&format!("m-{i}")).map_err(|e| BenchError::Flags(e.to_string()))?;
    let mut attempt = 1;
    loop {
        match node.join(&group, &id, spec).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt >= JOIN_ATTEMPTS => return Err(e.into()),
            Err(_) => attempt += 1,
        }
        tokio::time::sleep(JOIN_RETRY_PAUSE).await;
    }
}

/// The figures of an idle cluster of `members`, then its restart after `kill -9` of every node.
async fn measure(
    config: &ScaleConfig,
    client: &Client,
    own: &mut OwnCluster,
    members: u32,
) -> Result<Step, BenchError> {
    tokio::time::sleep(SETTLE).await;
    let leader = find_leader(client, READY_DEADLINE).await?;
    let pids = pids(own)?;
    let meter = CpuMeter::start(&pids);
    tokio::time::sleep(config.idle_for).await;
    let idle_cpu = meter.read().nodes;
    let rss = pids.iter().map(|&pid| rss_bytes(pid)).collect();
    let data_dir =
        own.cluster.nodes.iter().map(|node| dir_bytes(&own.data_dir.join(format!("node-{}", node.id)))).collect();
    let ids: Vec<u64> = own.cluster.nodes.iter().map(|node| node.id).collect();
    for &id in &ids {
        own.cluster.kill(id).await;
    }
    let killed = Instant::now();
    for &id in &ids {
        own.cluster.spawn(id)?;
    }
    wait_ready(client, READY_DEADLINE * 10).await?;
    let ready_after = killed.elapsed();
    find_leader(client, READY_DEADLINE).await?;
    Ok(Step { members, joins_per_s: None, leader, idle_cpu, rss, data_dir, ready_after })
}

pub(super) fn pids(own: &OwnCluster) -> Result<Vec<Pid>, BenchError> {
    own.cluster
        .nodes
        .iter()
        .map(|node| {
            own.cluster.pid(node.id).and_then(|pid| Pid::try_from(pid).ok()).ok_or(BenchError::NodeProcess(node.id))
        })
        .collect()
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes; 0 if unreadable.
pub(super) fn rss_bytes(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Step {
    const HEADER: &'static str =
        "members    joins/s   leader idle CPU   idle CPU per node     RSS MiB per node   data MiB per node   restart to ready";

    fn line(&self) -> String {
        let leader_cpu = self.idle_cpu.get((self.leader as usize).saturating_sub(1)).copied().unwrap_or(0.0);
        format!(
            "{:<10} {:>8} {:>10.3} (n{}) {:>19} {:>18} {:>19} {:>15.2}s",
            self.members,
            self.joins_per_s.map_or("-".to_owned(), |r| format!("{r:.0}")),
            leader_cpu,
            self.leader,
            self.idle_cpu.iter().map(|c| format!("{c:.3}")).collect::<Vec<_>>().join("/"),
            mib_per_node(&self.rss),
            mib_per_node(&self.data_dir),
            self.ready_after.as_secs_f64(),
        )
    }
}
