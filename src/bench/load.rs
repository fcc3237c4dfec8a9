//! `gm bench` without a subcommand: load a cluster through its public REST API and print what it
//! can do: join throughput and latency, linearizable and stale read throughput, and how long
//! writes stop when the leader is killed.
//!
//! Given `--endpoints` it loads that cluster; otherwise it starts its own local cluster, which it
//! also needs for the failover phase since that one kills nodes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use http::Method;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cluster::{find_leader, wait_ready, ClusterArgs, OwnCluster, READY_DEADLINE};
use super::conn::{Call, Connections};
use super::fd::process::{CpuMeter, CpuUse, Pid};
use super::figures::{errors_text, failure, latency, median, millis, Failure, Figures, Tally};
use super::{interruptible, BenchError, REQUEST_TIMEOUT};
use crate::client::{group_path, member_path, Client, ErrorKind, RetryPolicy};
use crate::dev::{say, LocalCluster};
use crate::membership::{Address, FailureDetection, GroupName, Instance, MemberId, MemberSpec, Metadata};
use crate::wire::Consistency;

/// At most this many distinct members are joined by the joins phase, so the state stays small
/// however long it runs: workers cycle through their ids and re-join them with a new `instance`.
const MAX_MEMBERS: u64 = 20_000;
/// Members the reads phase joins first when it finds none to read.
const SETUP_MEMBERS: u64 = 1_024;
/// Writers kept busy during a failover round.
const FAILOVER_WRITERS: usize = 4;
/// Ids each failover writer cycles through.
const FAILOVER_SLOTS: u64 = 64;
/// A failover writer's request deadline: short, so a request stuck on the dead leader does not
/// hide the moment the new one answers.
const FAILOVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failover round waits for a write sent after the kill to be acknowledged.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// Writes before the kill, so the writers' connections are warm and the cluster is in a steady state.
const FAILOVER_WARM_UP: Duration = Duration::from_millis(500);
/// Longest wait for a leader to be known.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// The group `--group-size` reads.
const VIEW_GROUP: &str = "bench-view";
/// The group the failover writers join.
const FAILOVER_GROUP: &str = "bench-failover";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    All,
    Joins,
    Reads,
    Failover,
}

impl Workload {
    fn joins(self) -> bool {
        matches!(self, Workload::All | Workload::Joins)
    }
    fn reads(self) -> bool {
        matches!(self, Workload::All | Workload::Reads)
    }
    fn failover(self) -> bool {
        matches!(self, Workload::All | Workload::Failover)
    }
}

/// `gm bench` without a subcommand.
#[derive(Clone, Debug, Args)]
pub struct LoadConfig {
    /// API URLs of a running cluster, `http://HOST:PORT,...`. Without them the bench starts its own
    /// local cluster and stops it at the end.
    #[arg(long, env = "GM_BENCH_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Concurrent clients in the joins and reads phases.
    #[arg(long, env = "GM_BENCH_CONCURRENCY", default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Length of the joins phase and of the linearizable reads phase; the stale reads phase lasts
    /// a quarter of it, at least 1 s.
    #[arg(long, env = "GM_BENCH_DURATION", default_value = "10s", value_parser = crate::config::positive_duration)]
    pub duration: Duration,
    /// Groups the members are spread over (`bench-0`, `bench-1`, ...).
    #[arg(long, env = "GM_BENCH_GROUPS", default_value_t = 16,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub groups: u64,
    /// Own cluster only: how many times the leader is killed.
    #[arg(long, env = "GM_BENCH_FAILOVERS", default_value_t = 3)]
    pub failovers: u32,
    /// Read whole views instead of single members: the reads phases read the view of the group
    /// `bench-view`, which first gets this many members.
    #[arg(long, env = "GM_BENCH_GROUP_SIZE", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub group_size: Option<u64>,
    /// With `--group-size`: reads accept gzip, so views of 4 KiB or more come gzipped.
    #[arg(long, env = "GM_BENCH_GZIP", value_parser = clap::builder::FalseyValueParser::new(), requires = "group_size")]
    pub gzip: bool,
    /// Which phases run.
    #[arg(long, env = "GM_BENCH_WORKLOAD", value_enum, default_value = "all")]
    pub workload: Workload,
    /// Also print all figures as one JSON object.
    #[arg(long, env = "GM_BENCH_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    pub json: bool,
}

/// Runs the configured phases, printing one line of figures per phase as it ends.
pub async fn run(config: LoadConfig) -> Result<(), BenchError> {
    // One try per request, so that every failure is counted as it happened.
    let client = |endpoints: &[String]| {
        Client::builder(endpoints)
            .pool_max_idle_per_host(usize::try_from(config.concurrency).unwrap_or(usize::MAX).max(FAILOVER_WRITERS))
            .policy(RetryPolicy::once(REQUEST_TIMEOUT))
            .build()
    };
    let mut report = Map::new();
    if config.endpoints.is_empty() {
        let mut own = OwnCluster::start(&config.cluster, &[])?;
        let result = match client(&own.endpoints) {
            Ok(client) => interruptible(bench_own_cluster(&config, &client, &mut own, &mut report)).await,
            Err(e) => Err(e.into()),
        };
        own.stop().await;
        result?;
    } else {
        if config.workload == Workload::Failover {
            return Err(BenchError::FailoverNeedsOwnCluster);
        }
        // Before any wait: an endpoint the load phases cannot speak to is refused at once.
        let target = Target::new(client(&config.endpoints)?, config.groups, config.concurrency)?;
        say(format_args!("cluster: {}", target.client.endpoints().join(", ")));
        wait_ready(&target.client, READY_DEADLINE).await?;
        // The nodes are not this bench's processes: only its own CPU is measured.
        load(&config, &target, &[], &mut report).await?;
        if config.workload.failover() {
            say("failover: skipped (it kills nodes, so it needs the bench's own cluster)");
        }
    }
    if config.json {
        report.insert("concurrency".into(), json!(config.concurrency));
        report.insert("groups".into(), json!(config.groups));
        report.insert("group_size".into(), json!(config.group_size));
        report.insert("gzip".into(), json!(config.gzip));
        say(serde_json::to_string(&Value::Object(report))?);
    }
    Ok(())
}

async fn bench_own_cluster(
    config: &LoadConfig,
    client: &Client,
    own: &mut OwnCluster,
    report: &mut Map<String, Value>,
) -> Result<(), BenchError> {
    own.wait_ready(client).await?;
    let target = Target::new(client.clone(), config.groups, config.concurrency)?;
    load(config, &target, &super::scale::pids(own)?, report).await?;
    if config.workload.failover() && config.failovers > 0 {
        if own.cluster.nodes.len() < 3 {
            say("failover: skipped (it needs at least 3 nodes to keep a quorum)");
        } else {
            let rounds = failovers(config.failovers, &target, &mut own.cluster).await?;
            let figures = FailoverFigures { rounds };
            say(figures.line());
            report.insert("failover".into(), figures.json());
        }
    }
    Ok(())
}

/// The joins and reads phases, as configured; `pids`: the nodes' processes, whose CPU is measured
/// (none for a cluster the bench did not start).
async fn load(
    config: &LoadConfig,
    target: &Target,
    pids: &[Pid],
    report: &mut Map<String, Value>,
) -> Result<(), BenchError> {
    let target = Arc::new(target.clone());
    let clients = config.concurrency;
    if config.workload.joins() {
        let per_worker = (MAX_MEMBERS / clients).max(1);
        let t = Arc::clone(&target);
        let phase = Phase { name: "joins".into(), key: "joins", clients, stop: Stop::After(config.duration) };
        phase
            .run(pids, report, move |w, seq| {
                let t = Arc::clone(&t);
                async move { t.bench_join(w, seq, per_worker).await }
            })
            .await?;
    }
    if config.workload.reads() {
        let reads = match config.group_size {
            Some(size) => Reads::view(&view_group(&target, clients, size).await?, config.gzip)?,
            None => Reads::Members(Arc::new(readable_members(&target, clients).await?)),
        };
        let reads = Arc::new(reads);
        let gzip = if config.gzip { ", gzip" } else { "" };
        let what = config.group_size.map_or_else(String::new, |n| format!(" of a {n}-member view{gzip}"));
        for (name, stale, length) in [
            ("reads", false, config.duration),
            ("reads (stale)", true, (config.duration / 4).max(Duration::from_secs(1)).min(config.duration)),
        ] {
            let t = Arc::clone(&target);
            let r = Arc::clone(&reads);
            let key = if stale { "stale_reads" } else { "reads" };
            let phase = Phase { name: format!("{name}{what}"), key, clients, stop: Stop::After(length) };
            phase
                .run(pids, report, move |w, seq| {
                    let t = Arc::clone(&t);
                    let r = Arc::clone(&r);
                    async move { r.read(&t, clients, w, seq, stale).await }
                })
                .await?;
        }
    }
    Ok(())
}

/// One load phase: `clients` workers until `stop`.
struct Phase {
    /// How its lines start: `joins`, `reads of a 100-member view`.
    name: String,
    /// Its figures' key in the JSON report.
    key: &'static str,
    clients: u64,
    stop: Stop,
}

impl Phase {
    /// Runs `op` and prints two lines: the figures, and the CPU the phase cost (the nodes' in
    /// `pids`, and this process's), also per 1000 operations. Both go into `report`.
    async fn run<F, Fut>(self, pids: &[Pid], report: &mut Map<String, Value>, op: F) -> Result<(), BenchError>
    where
        F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send,
    {
        let meter = CpuMeter::start(pids);
        let (tally, elapsed) = drive(self.clients, self.stop, op).await?;
        let cpu = meter.read();
        let figures = Figures::new(&tally, self.clients, elapsed);
        let per_thousand = cpu.ms_per_thousand(figures.ok);
        say(figures.line(&self.name));
        say(cost_line(&self.name, &cpu, per_thousand, !pids.is_empty()));
        let mut json = figures.json();
        json["cpu"] = cpu.json();
        json["cpu"]["bench_cpu_ms_per_1000_ops"] = json!(per_thousand.map(|(_, bench)| bench));
        json["cpu"]["cpu_ms_per_1000_ops"] = json!(per_thousand.map(|(nodes, _)| nodes).filter(|_| !pids.is_empty()));
        if pids.is_empty() {
            json["cpu"]["cpu_cores"] = Value::Null;
        }
        report.insert(self.key.into(), json);
        Ok(())
    }
}

/// `joins CPU: GM nodes 1.30 cores (node 1 0.55, ...), this bench process 0.39 cores; per 1000
/// ops: GM nodes 157 ms, bench 47 ms`, with `per_thousand` from [`CpuUse::ms_per_thousand`].
/// Without `nodes_measured` (`--endpoints`), the bench's only.
fn cost_line(name: &str, cpu: &CpuUse, per_thousand: Option<(f64, f64)>, nodes_measured: bool) -> String {
    if !nodes_measured {
        let per = per_thousand.map_or(String::new(), |(_, bench)| format!(" ({bench:.0} ms per 1000 ops)"));
        return format!(
            "{name} CPU: this bench process {:.2} cores{per}; the nodes' is not measured with --endpoints",
            cpu.own
        );
    }
    let per = per_thousand
        .map_or(String::new(), |(nodes, bench)| format!("; per 1000 ops: GM nodes {nodes:.0} ms, bench {bench:.0} ms"));
    format!("{name} CPU: {}{per}", cpu.text())
}

/// What the reads phases read. Answers are read whole but not decoded: decoding would measure
/// the bench, not the server.
enum Reads {
    /// Single members, each worker walking its own stride of them, so all are read evenly.
    Members(Arc<Vec<(GroupName, MemberId)>>),
    /// The view of one group: its linearizable and its stale read.
    View { linearizable: Box<Call>, stale: Box<Call> },
}

impl Reads {
    /// Reads of `group`'s view; with `gzip`, accepting gzip.
    fn view(group: &GroupName, gzip: bool) -> Result<Reads, BenchError> {
        let call = |consistency| {
            let path = bench_uri(with_consistency(group_path(group), consistency)).map_err(BenchError::Flags)?;
            Ok::<_, BenchError>(Call { method: Method::GET, path, body: None, accept_gzip: gzip })
        };
        let (linearizable, stale) = (call(Consistency::Linearizable)?, call(Consistency::Stale)?);
        Ok(Reads::View { linearizable: Box::new(linearizable), stale: Box::new(stale) })
    }

    async fn read(&self, t: &Target, clients: u64, worker: u64, seq: u64, stale: bool) -> Result<(), Failure> {
        let node = t.node_index(worker, seq);
        let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
        match self {
            Reads::Members(m) => {
                let (group, id) = &m[((seq * clients + worker) % m.len() as u64) as usize];
                let path = bench_uri(with_consistency(member_path(group, id), consistency))?;
                let call = Call { method: Method::GET, path, body: None, accept_gzip: false };
                t.connections.send(worker, node, &call).await
            }
            Reads::View { linearizable, stale: stale_call } => {
                t.connections.send(worker, node, if stale { stale_call } else { linearizable }).await
            }
        }
    }
}

/// `path` with `?consistency=stale` for a stale read (linearizable is the default).
fn with_consistency(path: String, consistency: Consistency) -> String {
    match consistency {
        Consistency::Linearizable => path,
        Consistency::Stale => format!("{path}?consistency={}", consistency.as_str()),
    }
}

/// A path the bench made up, as a request target.
fn bench_uri(path: String) -> Result<http::Uri, String> {
    http::Uri::try_from(path).map_err(|e| format!("bench path: {e}"))
}

/// The group `bench-view` with `size` members, joining those it lacks.
async fn view_group(target: &Arc<Target>, clients: u64, size: u64) -> Result<GroupName, BenchError> {
    let group = bench_name(GroupName::parse, VIEW_GROUP).map_err(BenchError::Flags)?;
    let per_worker = size.div_ceil(clients);
    let t = Arc::clone(target);
    // Joins with the same instance as before change nothing, so a second run joins nothing new.
    let (tally, _) = drive(clients, Stop::Count(per_worker), move |w, seq| {
        let t = Arc::clone(&t);
        async move {
            let n = w * per_worker + seq;
            if n >= size {
                return Ok(());
            }
            t.put_member(w, seq, VIEW_GROUP, &format!("v-{n}"), "r0").await
        }
    })
    .await?;
    let view = target.client.group(&group, Consistency::Linearizable).await?;
    say(format_args!("reads: the view of {VIEW_GROUP} has {} members", view.members.len()));
    if (view.members.len() as u64) < size {
        return Err(BenchError::NoMembers(errors_text(&tally.errors)));
    }
    Ok(group)
}

/// The bench members that exist now, read from the groups' views; joins some first if there are none.
async fn readable_members(target: &Arc<Target>, clients: u64) -> Result<Vec<(GroupName, MemberId)>, BenchError> {
    let members = target.bench_members().await?;
    if !members.is_empty() {
        return Ok(members);
    }
    let per_worker = SETUP_MEMBERS.div_ceil(clients);
    let t = Arc::clone(target);
    let (tally, _) = drive(clients, Stop::Count(per_worker), move |w, seq| {
        let t = Arc::clone(&t);
        async move { t.bench_join(w, seq, per_worker).await }
    })
    .await?;
    say(format_args!("reads: joined {} members to read", tally.ok));
    let members = target.bench_members().await?;
    if members.is_empty() {
        return Err(BenchError::NoMembers(errors_text(&tally.errors)));
    }
    Ok(members)
}

/// What the load talks to.
#[derive(Clone)]
struct Target {
    /// Every endpoint.
    client: Client,
    /// One client per endpoint.
    nodes: Vec<Client>,
    /// The load phases' workers' own connections to each endpoint.
    connections: Arc<Connections>,
    groups: u64,
}

impl Target {
    /// The cluster behind `client`, loaded by up to `workers` workers at once.
    fn new(client: Client, groups: u64, workers: u64) -> Result<Target, BenchError> {
        let nodes = (0..client.endpoints().len()).map(|i| client.at(i)).collect();
        let connections = Connections::new(client.endpoints(), workers)?;
        Ok(Target { client, nodes, connections, groups })
    }

    /// The endpoint to ask: round-robin over the endpoints, each worker starting at its own.
    fn node_index(&self, worker: u64, seq: u64) -> usize {
        ((worker + seq) % self.nodes.len() as u64) as usize
    }

    /// [`Target::node_index`]'s client.
    fn node(&self, worker: u64, seq: u64) -> &Client {
        &self.nodes[self.node_index(worker, seq)]
    }

    /// The `seq`-th join of `worker`: it cycles through `slots` ids, and each cycle re-joins them
    /// with a new `instance` (a real re-join: the incarnation grows).
    async fn bench_join(&self, worker: u64, seq: u64, slots: u64) -> Result<(), Failure> {
        let (slot, cycle) = (seq % slots, seq / slots);
        let group = format!("bench-{}", (worker * slots + slot) % self.groups);
        let id = format!("{worker}-{slot}");
        self.put_member(worker, seq, &group, &id, &format!("r{cycle}")).await
    }

    /// Joins `group`/`id` as a [`bench_member`] with `instance`, on `worker`'s connection to
    /// [`Target::node_index`].
    async fn put_member(&self, worker: u64, seq: u64, group: &str, id: &str, instance: &str) -> Result<(), Failure> {
        let path = member_path(&bench_name(GroupName::parse, group)?, &bench_name(MemberId::parse, id)?);
        let body = serde_json::to_vec(&bench_member(instance)?).map_err(|e| format!("bench member: {e}"))?;
        let call = Call { method: Method::PUT, path: bench_uri(path)?, body: Some(body.into()), accept_gzip: false };
        self.connections.send(worker, self.node_index(worker, seq), &call).await
    }

    /// Every member of the `bench-N` groups, as (group, id).
    async fn bench_members(&self) -> Result<Vec<(GroupName, MemberId)>, BenchError> {
        let mut members = Vec::new();
        let first = self.client.at(0);
        for k in 0..self.groups {
            let group = bench_name(GroupName::parse, &format!("bench-{k}")).map_err(BenchError::Flags)?;
            let view = match first.group(&group, Consistency::Linearizable).await {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                other => other?,
            };
            members.extend(view.members.into_iter().map(|m| (group.clone(), m.id)));
        }
        Ok(members)
    }
}

/// Joins `group`/`id` through `node` as a lease member with `instance`.
async fn join(node: &Client, group: &str, id: &str, instance: &str) -> Result<(), Failure> {
    let group = bench_name(GroupName::parse, group)?;
    let id = bench_name(MemberId::parse, id)?;
    node.join(&group, &id, &bench_member(instance)?).await.map(drop).map_err(|e| failure(&e))
}

/// What a bench member joins with: lease mode with a day's lease, so GM probes nothing and
/// removes nothing during the bench, and `instance`, so a new one is a real re-join.
pub(super) fn bench_member(instance: &str) -> Result<MemberSpec, String> {
    Ok(MemberSpec {
        address: bench_name(Address::parse, "127.0.0.1:9")?,
        metadata: Metadata::default(),
        instance: Some(bench_name(Instance::parse, instance)?),
        failure_detection: FailureDetection::Lease { ttl_ms: 86_400_000 },
    })
}

/// A name the bench made up, validated.
pub(super) fn bench_name<T, E: std::fmt::Display>(
    parse: impl Fn(&str) -> Result<T, E>,
    name: &str,
) -> Result<T, String> {
    parse(name).map_err(|e| format!("bench name: {e}"))
}

/// When a phase's workers stop.
#[derive(Clone, Copy)]
enum Stop {
    /// Start no request after this long.
    After(Duration),
    /// After this many requests per worker.
    Count(u64),
}

/// Runs `clients` workers, each calling `op(worker, seq)` in a loop until `stop`; returns their
/// tally and the time until the last one finished.
async fn drive<F, Fut>(clients: u64, stop: Stop, op: F) -> Result<(Tally, Duration), BenchError>
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..clients {
        let op = Arc::clone(&op);
        workers.spawn(async move {
            let mut tally = Tally::new()?;
            for seq in 0.. {
                let done = match stop {
                    Stop::After(length) => start.elapsed() >= length,
                    Stop::Count(n) => seq >= n,
                };
                if done {
                    break;
                }
                let sent = Instant::now();
                match op(worker, seq).await {
                    Ok(()) => tally.success(sent.elapsed()),
                    Err(failure) => tally.failure(failure),
                }
            }
            Ok::<_, BenchError>(tally)
        });
    }
    let mut total = Tally::new()?;
    while let Some(tally) = workers.join_next().await {
        total.merge(&tally??)?;
    }
    Ok((total, start.elapsed()))
}

/// One failover round: how long after the kill a write sent after it was acknowledged, or `None`
/// if none was within the deadline.
#[derive(Debug, PartialEq)]
struct FailoverRound {
    killed: u64,
    write_gap: Option<Duration>,
}

struct FailoverFigures {
    rounds: Vec<FailoverRound>,
}

impl FailoverFigures {
    fn gaps(&self) -> Vec<Duration> {
        let mut gaps: Vec<Duration> = self.rounds.iter().filter_map(|r| r.write_gap).collect();
        gaps.sort();
        gaps
    }

    /// `failover: 3 rounds, min 612 ms, median 734 ms, max 1.2 s`
    fn line(&self) -> String {
        let gaps = self.gaps();
        let missed = self.rounds.len() - gaps.len();
        let n = self.rounds.len();
        let mut line = format!("failover: {n} round{}", if n == 1 { "" } else { "s" });
        if let (Some(min), Some(median), Some(max)) = (gaps.first(), median(&gaps), gaps.last()) {
            line += &format!(", min {}, median {}, max {}", latency(*min), latency(median), latency(*max));
        }
        if missed > 0 {
            line += &format!(", {missed} without an acknowledged write within {}", latency(FAILOVER_DEADLINE));
        }
        line
    }

    fn json(&self) -> Value {
        let gaps = self.gaps();
        let rounds: Vec<Value> =
            self.rounds.iter().map(|r| json!({"killed": r.killed, "ms": r.write_gap.map(millis)})).collect();
        json!({
            "rounds": rounds,
            "min_ms": gaps.first().copied().map(millis),
            "median_ms": median(&gaps).map(millis),
            "max_ms": gaps.last().copied().map(millis),
        })
    }
}

/// Kills the leader `rounds` times under a steady write load and measures each gap in writes.
async fn failovers(rounds: u32, target: &Target, cluster: &mut LocalCluster) -> Result<Vec<FailoverRound>, BenchError> {
    let mut results = Vec::new();
    for round in 1..=rounds {
        let leader = find_leader(&target.client, LEADER_DEADLINE).await?;
        let others: Vec<String> = cluster.nodes.iter().filter(|n| n.id != leader).map(|n| n.api.clone()).collect();
        let writers = target.client.with_endpoints(others)?.with_policy(RetryPolicy::once(FAILOVER_REQUEST_TIMEOUT));
        let writers_target = Target::new(writers, target.groups, FAILOVER_WRITERS as u64)?;
        let gap = failover_round(round, leader, writers_target, cluster).await?;
        let outcome = match gap {
            Some(gap) => format!("first write sent after the kill acknowledged {} after it", latency(gap)),
            None => format!("no write sent after the kill acknowledged within {}", latency(FAILOVER_DEADLINE)),
        };
        say(format_args!("failover {round}/{rounds}: killed leader {leader}; {outcome}"));
        results.push(FailoverRound { killed: leader, write_gap: gap });
        cluster.spawn(leader)?;
        wait_ready(&target.client, READY_DEADLINE).await?;
        find_leader(&target.client, LEADER_DEADLINE).await?;
    }
    Ok(results)
}

/// An acknowledged write of a failover writer.
struct Ack {
    sent: Instant,
    acked: Instant,
}

async fn failover_round(
    round: u32,
    leader: u64,
    writers_target: Target,
    cluster: &mut LocalCluster,
) -> Result<Option<Duration>, BenchError> {
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let target = Arc::new(writers_target);
    let mut writers = JoinSet::new();
    for writer in 0..FAILOVER_WRITERS as u64 {
        let target = Arc::clone(&target);
        let acks_tx = acks_tx.clone();
        writers.spawn(async move {
            for seq in 0u64.. {
                let slot = seq % FAILOVER_SLOTS;
                let id = format!("r{round}-{writer}-{slot}");
                let instance = format!("c{}", seq / FAILOVER_SLOTS);
                let sent = Instant::now();
                let result = join(target.node(writer, seq), FAILOVER_GROUP, &id, &instance).await;
                if result.is_ok() && acks_tx.send(Ack { sent, acked: Instant::now() }).is_err() {
                    break;
                }
            }
        });
    }
    drop(acks_tx);

    // Steady state first: writes are acknowledged, then keep them going a little longer.
    let first = tokio::time::timeout(LEADER_DEADLINE, acks.recv()).await;
    if !matches!(first, Ok(Some(_))) {
        writers.shutdown().await;
        return Err(BenchError::NoSteadyWrites(LEADER_DEADLINE));
    }
    let warm = Instant::now() + FAILOVER_WARM_UP;
    while let Ok(Some(_)) = tokio::time::timeout_at(warm, acks.recv()).await {}

    let kill = Instant::now();
    cluster.kill(leader).await;
    // Only writes sent once the leader is certainly gone (killed and reaped) count.
    let dead = Instant::now();
    let deadline = kill + FAILOVER_DEADLINE;
    let mut gap = None;
    while let Ok(Some(ack)) = tokio::time::timeout_at(deadline, acks.recv()).await {
        if ack.sent >= dead {
            gap = Some(ack.acked - kill);
            break;
        }
    }
    writers.shutdown().await;
    Ok(gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_summary_counts_rounds_without_a_write() {
        let ms = Duration::from_millis;
        let figures = FailoverFigures {
            rounds: vec![
                FailoverRound { killed: 1, write_gap: Some(ms(734)) },
                FailoverRound { killed: 2, write_gap: Some(ms(612)) },
                FailoverRound { killed: 3, write_gap: Some(ms(1_200)) },
                FailoverRound { killed: 1, write_gap: None },
            ],
        };
        assert_eq!(
            figures.line(),
            "failover: 4 rounds, min 612 ms, median 734 ms, max 1200 ms, 1 without an acknowledged write within 30.0 s"
        );
        assert_eq!(figures.json()["median_ms"], 734.0);
        let one = FailoverFigures { rounds: vec![FailoverRound { killed: 2, write_gap: Some(ms(900)) }] };
        assert_eq!(one.line(), "failover: 1 round, min 900 ms, median 900 ms, max 900 ms");
    }
}
