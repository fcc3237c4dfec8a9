//! `gm bench`: load a cluster through its public REST API and print what it can do: join
//! throughput and latency, linearizable and stale read throughput, and how long writes stop when
//! the leader is killed.
//!
//! Given `--endpoints` it loads that cluster; otherwise it starts its own local cluster of real
//! `gm server` processes (as `gm dev` does) on a fresh data dir, which it also needs for the
//! failover phase since that one kills nodes. It prints figures and never judges them.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use reqwest::{Client, RequestBuilder};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::DevConfig;
use crate::dev::{DevError, LocalCluster};

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
/// Longest wait for nodes to become ready (start-up, restart after a kill).
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for a leader to be known.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between polls of `/readyz` and `/v1/cluster`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of load requests: above the server's own 10 s limit, so a slow answer is still seen.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest latency the histograms tell apart, in microseconds (an hour).
const LATENCY_CEILING_US: u64 = 3_600_000_000;
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

#[derive(Clone, Debug, Args)]
pub struct BenchConfig {
    /// API URLs of a running cluster, `http://HOST:PORT,...`. Without them the bench starts its own
    /// local cluster and stops it at the end.
    #[arg(long, env = "GM_BENCH_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
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
    /// about the node the failover phase killed are expected, so they are off by default.
    #[arg(long, env = "GM_BENCH_SERVER_LOG", default_value = "error,openraft=off")]
    pub server_log: String,
    /// Concurrent clients in the joins and reads phases.
    #[arg(long, env = "GM_BENCH_CONCURRENCY", default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Length of the joins phase and of the linearizable reads phase.
    #[arg(long, env = "GM_BENCH_DURATION", default_value = "10s", value_parser = crate::config::duration)]
    pub duration: Duration,
    /// Groups the members are spread over (`bench-0`, `bench-1`, ...).
    #[arg(long, env = "GM_BENCH_GROUPS", default_value_t = 16,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub groups: u64,
    /// Own cluster only: how many times the leader is killed.
    #[arg(long, env = "GM_BENCH_FAILOVERS", default_value_t = 3)]
    pub failovers: u32,
    /// Which phases run.
    #[arg(long, env = "GM_BENCH_WORKLOAD", value_enum, default_value = "all")]
    pub workload: Workload,
    /// Also print all figures as one JSON object.
    #[arg(long, env = "GM_BENCH_JSON")]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the local cluster: {0}")]
    Cluster(#[from] DevError),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("bad endpoint {0:?}: expected http://HOST:PORT")]
    Endpoint(String),
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: unexpected status {status}")]
    Status { url: String, status: u16 },
    #[error("{endpoint} was not ready within {waited:?} (is its port free? is it part of a cluster?)")]
    NotReady { endpoint: String, waited: Duration },
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
    #[error("interrupted")]
    Interrupted,
}

/// Runs the configured phases, printing one line of figures per phase as it ends.
pub async fn run(config: BenchConfig) -> Result<(), BenchError> {
    let client = Client::builder()
        .pool_max_idle_per_host(usize::try_from(config.concurrency).unwrap_or(usize::MAX).max(FAILOVER_WRITERS))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(BenchError::Client)?;
    let mut report = Map::new();
    if config.endpoints.is_empty() {
        let data_dir = fresh_data_dir();
        let dev = DevConfig {
            nodes: config.nodes,
            data_dir: data_dir.clone(),
            clean: true,
            api_port: config.api_port,
            peer_port: config.peer_port,
        };
        ports_free(&dev)?;
        let mut cluster = LocalCluster::start(&dev, &["--log".to_owned(), config.server_log.clone()])?;
        println!(
            "cluster: {} local nodes on {}, data in {}",
            cluster.nodes.len(),
            cluster.nodes.iter().map(|n| n.api.as_str()).collect::<Vec<_>>().join(", "),
            data_dir.display()
        );
        let result = tokio::select! {
            r = bench_own_cluster(&config, &client, &mut cluster, &mut report) => r,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
        };
        cluster.stop().await;
        let _ = std::fs::remove_dir_all(&data_dir);
        result?;
    } else {
        if config.workload == Workload::Failover {
            return Err(BenchError::FailoverNeedsOwnCluster);
        }
        let endpoints = config.endpoints.iter().map(|e| endpoint_url(e)).collect::<Result<Vec<_>, _>>()?;
        println!("cluster: {}", endpoints.join(", "));
        wait_ready(&client, &endpoints, READY_DEADLINE).await?;
        let target = Target { client, endpoints, groups: config.groups };
        load(&config, &target, &mut report).await?;
        if config.workload.failover() {
            println!("failover: skipped (it kills nodes, so it needs the bench's own cluster)");
        }
    }
    if config.json {
        report.insert("concurrency".into(), json!(config.concurrency));
        report.insert("groups".into(), json!(config.groups));
        println!("{}", serde_json::to_string(&Value::Object(report))?);
    }
    Ok(())
}

async fn bench_own_cluster(
    config: &BenchConfig,
    client: &Client,
    cluster: &mut LocalCluster,
    report: &mut Map<String, Value>,
) -> Result<(), BenchError> {
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api)).collect();
    let started = Instant::now();
    wait_ready(client, &endpoints, READY_DEADLINE).await?;
    println!("cluster: ready after {}", latency(started.elapsed()));
    let target = Target { client: client.clone(), endpoints, groups: config.groups };
    load(config, &target, report).await?;
    if config.workload.failover() && config.failovers > 0 {
        if cluster.nodes.len() < 3 {
            println!("failover: skipped (it needs at least 3 nodes to keep a quorum)");
        } else {
            let rounds = failovers(config.failovers, &target, cluster).await?;
            let figures = FailoverFigures { rounds };
            println!("{}", figures.line());
            report.insert("failover".into(), figures.json());
        }
    }
    Ok(())
}

/// The joins and reads phases, as configured.
async fn load(config: &BenchConfig, target: &Target, report: &mut Map<String, Value>) -> Result<(), BenchError> {
    let target = Arc::new(target.clone());
    let clients = config.concurrency;
    if config.workload.joins() {
        let per_worker = (MAX_MEMBERS / clients).max(1);
        let t = Arc::clone(&target);
        let (tally, elapsed) = drive(clients, Stop::After(config.duration), move |w, seq| {
            let t = Arc::clone(&t);
            async move { t.bench_join(w, seq, per_worker).await }
        })
        .await?;
        let figures = Figures::new(&tally, clients, elapsed);
        println!("{}", figures.line("joins"));
        report.insert("joins".into(), figures.json());
    }
    if config.workload.reads() {
        let members = Arc::new(readable_members(&target, clients).await?);
        for (name, stale, length) in [
            ("reads", false, config.duration),
            ("reads (stale)", true, (config.duration / 4).max(Duration::from_secs(1)).min(config.duration)),
        ] {
            let t = Arc::clone(&target);
            let m = Arc::clone(&members);
            let (tally, elapsed) = drive(clients, Stop::After(length), move |w, seq| {
                let t = Arc::clone(&t);
                let m = Arc::clone(&m);
                async move {
                    // Each worker walks its own stride of the members, so all are read evenly.
                    let (group, id) = &m[((seq * clients + w) % m.len() as u64) as usize];
                    t.read(t.endpoint(w, seq), group, id, stale).await
                }
            })
            .await?;
            let figures = Figures::new(&tally, clients, elapsed);
            println!("{}", figures.line(name));
            report.insert(if stale { "stale_reads" } else { "reads" }.into(), figures.json());
        }
    }
    Ok(())
}

/// The bench members that exist now, read from the groups' views; joins some first if there are none.
async fn readable_members(target: &Arc<Target>, clients: u64) -> Result<Vec<(String, String)>, BenchError> {
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
    println!("reads: joined {} members to read", tally.ok);
    let members = target.bench_members().await?;
    if members.is_empty() {
        return Err(BenchError::NoMembers(errors_text(&tally.errors)));
    }
    Ok(members)
}

/// What the load talks to.
#[derive(Clone)]
struct Target {
    client: Client,
    /// Base URLs, `http://HOST:PORT`.
    endpoints: Vec<String>,
    groups: u64,
}

/// A failed request: its status code, or what went wrong on the way (`timeout`, `connect`, ...).
type Failure = String;

impl Target {
    /// Round-robin over the endpoints, each worker starting at its own.
    fn endpoint(&self, worker: u64, seq: u64) -> &str {
        &self.endpoints[((worker + seq) % self.endpoints.len() as u64) as usize]
    }

    /// The `seq`-th join of `worker`: it cycles through `slots` ids, and each cycle re-joins them
    /// with a new `instance` (a real re-join: the incarnation grows).
    async fn bench_join(&self, worker: u64, seq: u64, slots: u64) -> Result<(), Failure> {
        let (slot, cycle) = (seq % slots, seq / slots);
        let group = format!("bench-{}", (worker * slots + slot) % self.groups);
        let id = format!("{worker}-{slot}");
        self.join(self.endpoint(worker, seq), &group, &id, &format!("r{cycle}"), None).await
    }

    async fn join(
        &self,
        endpoint: &str,
        group: &str,
        id: &str,
        instance: &str,
        timeout: Option<Duration>,
    ) -> Result<(), Failure> {
        let body = json!({
            "address": "127.0.0.1:9",
            "instance": instance,
            // Lease mode with a day's lease: GM probes nothing and removes nothing during the bench.
            "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000},
        });
        let mut request = self.client.put(format!("{endpoint}/v1/groups/{group}/members/{id}")).json(&body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        exchange(request, &[200, 201]).await
    }

    async fn read(&self, endpoint: &str, group: &str, id: &str, stale: bool) -> Result<(), Failure> {
        let mut request = self.client.get(format!("{endpoint}/v1/groups/{group}/members/{id}"));
        if stale {
            request = request.query(&[("consistency", "stale")]);
        }
        exchange(request, &[200]).await
    }

    /// Every member of the `bench-N` groups, as (group, id).
    async fn bench_members(&self) -> Result<Vec<(String, String)>, BenchError> {
        #[derive(Deserialize)]
        struct View {
            members: Vec<Record>,
        }
        #[derive(Deserialize)]
        struct Record {
            id: String,
        }
        let mut members = Vec::new();
        for k in 0..self.groups {
            let group = format!("bench-{k}");
            let url = format!("{}/v1/groups/{group}", self.endpoints[0]);
            let http = |source| BenchError::Http { url: url.clone(), source };
            let response = self.client.get(&url).send().await.map_err(http)?;
            match response.status().as_u16() {
                404 => continue,
                200 => {}
                status => return Err(BenchError::Status { url, status }),
            }
            let view: View = response.json().await.map_err(http)?;
            members.extend(view.members.into_iter().map(|m| (group.clone(), m.id)));
        }
        Ok(members)
    }
}

/// Sends a request and reads the whole answer; `Ok` if its status is one of `ok`.
async fn exchange(request: RequestBuilder, ok: &[u16]) -> Result<(), Failure> {
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

/// Successes with their latencies, and failures by kind.
struct Tally {
    ok: u64,
    /// Microseconds.
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Result<Tally, BenchError> {
        let latency =
            Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3).map_err(|e| BenchError::Histogram(e.to_string()))?;
        Ok(Tally { ok: 0, latency, errors: BTreeMap::new() })
    }

    fn success(&mut self, latency: Duration) {
        self.ok += 1;
        // A fixed range, so a rare huge latency is clamped instead of growing every histogram.
        self.latency.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    fn failure(&mut self, kind: Failure) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: &Tally) -> Result<(), BenchError> {
        self.ok += other.ok;
        self.latency.add(&other.latency).map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        Ok(())
    }
}

/// What one load phase achieved.
#[derive(Debug, PartialEq)]
struct Figures {
    clients: u64,
    elapsed: Duration,
    ok: u64,
    /// p50, p99 and max latency of the successes; `None` without any.
    latency: Option<[Duration; 3]>,
    errors: BTreeMap<String, u64>,
}

impl Figures {
    fn new(tally: &Tally, clients: u64, elapsed: Duration) -> Figures {
        let h = &tally.latency;
        let latency = (!h.is_empty())
            .then(|| [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()].map(Duration::from_micros));
        Figures { clients, elapsed, ok: tally.ok, latency, errors: tally.errors.clone() }
    }

    fn ops_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// `joins: 64 clients, 10.0 s: 8123 ops/s, p50 5.1 ms, p99 19.8 ms, max 45 ms, errors 0`
    fn line(&self, name: &str) -> String {
        let latency = match self.latency {
            Some([p50, p99, max]) => format!("p50 {}, p99 {}, max {}", latency(p50), latency(p99), latency(max)),
            None => "no successes".to_owned(),
        };
        format!(
            "{name}: {} clients, {:.1} s: {:.0} ops/s, {latency}, {}",
            self.clients,
            self.elapsed.as_secs_f64(),
            self.ops_per_s(),
            errors_text(&self.errors)
        )
    }

    fn json(&self) -> Value {
        let ms = |i: usize| self.latency.map(|l| millis(l[i]));
        json!({
            "clients": self.clients,
            "seconds": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "ops_per_s": self.ops_per_s(),
            "p50_ms": ms(0),
            "p99_ms": ms(1),
            "max_ms": ms(2),
            "errors": self.errors,
        })
    }
}

/// `errors 0`, or `errors 12 (503: 10, timeout: 2)`.
fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    let total: u64 = errors.values().sum();
    if total == 0 {
        return "errors 0".to_owned();
    }
    let kinds: Vec<String> = errors.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
    format!("errors {total} ({})", kinds.join(", "))
}

/// Milliseconds to the microsecond, for the JSON figures.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// A latency as a person reads it: `0.4 ms`, `19.8 ms`, `450 ms`, `12.3 s`.
fn latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
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
        let mut line = format!("failover: {} rounds", self.rounds.len());
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

/// The median of sorted values; the mean of the middle two for an even count.
fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Kills the leader `rounds` times under a steady write load and measures each gap in writes.
async fn failovers(rounds: u32, target: &Target, cluster: &mut LocalCluster) -> Result<Vec<FailoverRound>, BenchError> {
    let mut results = Vec::new();
    for round in 1..=rounds {
        let leader = find_leader(&target.client, &target.endpoints, LEADER_DEADLINE).await?;
        let others: Vec<String> =
            cluster.nodes.iter().filter(|n| n.id != leader).map(|n| format!("http://{}", n.api)).collect();
        let writers_target = Target { endpoints: others, ..target.clone() };
        let gap = failover_round(round, leader, writers_target, cluster).await?;
        let outcome = match gap {
            Some(gap) => format!("first write sent after the kill acknowledged {} after it", latency(gap)),
            None => format!("no write sent after the kill acknowledged within {}", latency(FAILOVER_DEADLINE)),
        };
        println!("failover {round}/{rounds}: killed leader {leader}; {outcome}");
        results.push(FailoverRound { killed: leader, write_gap: gap });
        cluster.spawn(leader)?;
        wait_ready(&target.client, &target.endpoints, READY_DEADLINE).await?;
        find_leader(&target.client, &target.endpoints, LEADER_DEADLINE).await?;
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
                let endpoint = target.endpoint(writer, seq);
                let result =
                    target.join(endpoint, FAILOVER_GROUP, &id, &instance, Some(FAILOVER_REQUEST_TIMEOUT)).await;
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

/// Polls every endpoint's `/readyz` until it answers 200.
async fn wait_ready(client: &Client, endpoints: &[String], waited: Duration) -> Result<(), BenchError> {
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
async fn find_leader(client: &Client, endpoints: &[String], waited: Duration) -> Result<u64, BenchError> {
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

/// `http://HOST:PORT` from `HOST:PORT` or a URL, without a trailing slash.
fn endpoint_url(endpoint: &str) -> Result<String, BenchError> {
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

    fn tally(latencies_ms: &[u64], errors: &[(&str, u64)]) -> Tally {
        let mut t = Tally::new().expect("histogram");
        for &ms in latencies_ms {
            t.success(Duration::from_millis(ms));
        }
        for &(kind, n) in errors {
            for _ in 0..n {
                t.failure(kind.to_owned());
            }
        }
        t
    }

    #[test]
    fn latency_reads_well_at_every_scale() {
        assert_eq!(latency(Duration::from_micros(420)), "0.4 ms");
        assert_eq!(latency(Duration::from_micros(19_800)), "19.8 ms");
        assert_eq!(latency(Duration::from_millis(450)), "450 ms");
        assert_eq!(latency(Duration::from_millis(12_345)), "12.3 s");
    }

    #[test]
    fn errors_are_totalled_and_listed_by_kind() {
        assert_eq!(errors_text(&BTreeMap::new()), "errors 0");
        let errors = BTreeMap::from([("503".to_owned(), 10), ("timeout".to_owned(), 2)]);
        assert_eq!(errors_text(&errors), "errors 12 (503: 10, timeout: 2)");
    }

    #[test]
    fn percentiles_come_from_the_successes() {
        let latencies: Vec<u64> = (1..=100).collect();
        let figures = Figures::new(&tally(&latencies, &[("503", 3)]), 8, Duration::from_secs(2));
        let [p50, p99, max] = figures.latency.expect("latencies");
        // The histogram keeps 3 significant digits.
        let near = |d: Duration, ms: u64| (d.as_secs_f64() * 1e3 - ms as f64).abs() < 0.1;
        assert!(near(p50, 50), "{p50:?}");
        assert!(near(p99, 99), "{p99:?}");
        assert!(near(max, 100), "{max:?}");
        assert_eq!(figures.ok, 100);
        assert_eq!(figures.ops_per_s(), 50.0);
    }

    #[test]
    fn a_phase_line_has_every_figure() {
        let figures = Figures {
            clients: 64,
            elapsed: Duration::from_secs(10),
            ok: 81_230,
            latency: Some([Duration::from_micros(5_100), Duration::from_micros(19_800), Duration::from_millis(45)]),
            errors: BTreeMap::new(),
        };
        assert_eq!(
            figures.line("joins"),
            "joins: 64 clients, 10.0 s: 8123 ops/s, p50 5.1 ms, p99 19.8 ms, max 45.0 ms, errors 0"
        );
        let json = figures.json();
        assert_eq!(json["ok"], 81_230);
        assert_eq!(json["p99_ms"], 19.8);
    }

    #[test]
    fn a_phase_without_successes_says_so() {
        let figures = Figures::new(&tally(&[], &[("connect", 5)]), 2, Duration::from_secs(1));
        assert_eq!(figures.line("reads"), "reads: 2 clients, 1.0 s: 0 ops/s, no successes, errors 5 (connect: 5)");
        assert_eq!(figures.json()["p50_ms"], Value::Null);
    }

    #[test]
    fn tallies_merge() {
        let mut a = tally(&[1, 2], &[("503", 1)]);
        a.merge(&tally(&[3], &[("503", 2), ("timeout", 1)])).expect("merge");
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.errors, BTreeMap::from([("503".to_owned(), 3), ("timeout".to_owned(), 1)]));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(1), ms(5), ms(9)]), Some(ms(5)));
        assert_eq!(median(&[ms(1), ms(3), ms(5), ms(9)]), Some(ms(4)));
    }

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
    }

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(endpoint_url("127.0.0.1:8081").expect("url"), "http://127.0.0.1:8081");
        assert_eq!(endpoint_url("http://gm:8080/").expect("url"), "http://gm:8080");
        assert!(endpoint_url(" ").is_err());
    }
}
