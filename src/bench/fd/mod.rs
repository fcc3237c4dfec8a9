//! `gm bench fd`: failure detection of probe-mode members, measured end to end on the bench's own
//! local cluster.
//!
//! 1. Starts member HTTP servers in this process ([`members`]) and joins `--members` probe-mode
//!    members spread over them and over `--groups` groups, then waits until each was probed.
//! 2. Steady phase: follows every group on every node ([`watch`]), measures the probes per second
//!    the members see and the CPU the GM processes use ([`process`]); optionally SIGSTOPs one
//!    node for a while (`--pause-node`) and watches whether live members get removed.
//! 3. Crashes `--kill` members at once and records, per member, when the last node's view lost
//!    it: that minus the crash is its detection latency ([`report`]). Then watches a few probe
//!    rounds more.
//!
//! Live members removed at any time are false evictions. It prints figures and asserts nothing.
//! The watches are load too: each removal sends the group's whole view to the watcher on every
//! node, which the removal line reports (views, bytes) next to the CPU used meanwhile.

mod members;
pub(super) mod process;
mod report;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use self::members::MemberServers;
use self::process::{CpuMeter, CpuUse, Paused, Pid};
use self::report::{
    false_evictions, false_evictions_json, false_evictions_text, seconds, Detection, Phase, Summary, Timeline, Victims,
};
use self::watch::Watches;
use super::cluster::{wait_ready, ClusterArgs, OwnCluster, READY_DEADLINE};
use super::figures::{failure, latency, per_second, Failure, Figures, Tally};
use super::{interruptible, BenchError, REQUEST_TIMEOUT};
use crate::client::{Client, RetryPolicy};
use crate::dev::say;
use crate::membership::{Address, FailureDetection, GroupName, MemberId, MemberSpec, Metadata, DEFAULT_PROBE_PATH};
use crate::wire::Consistency;

/// Joins in flight at once.
const JOIN_CONCURRENCY: usize = 64;
/// Tries per join before the member is left out (joins are idempotent, so retrying is safe).
const JOIN_ATTEMPTS: u32 = 5;
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long opening a watch stream waits for its headers.
const WATCH_HEADERS_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest wait for every watch stream's first view.
const FIRST_VIEWS_DEADLINE: Duration = Duration::from_secs(60);
/// Shortest wait for every member to be probed, and for crashed members to be removed.
const DEADLINE_FLOOR: Duration = Duration::from_secs(30);
/// Pause between looks at the counters and the views.
const POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, Args)]
pub struct FdConfig {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Probe-mode members to join.
    #[arg(long, env = "GM_BENCH_MEMBERS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub members: u32,
    /// Member HTTP servers (addresses); the members share them round-robin, as members hosted by
    /// one process do.
    #[arg(long, env = "GM_BENCH_ADDRESSES", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub addresses: u32,
    /// Members to crash at once. When it covers every member of an address, that whole server
    /// stops too.
    #[arg(long, env = "GM_BENCH_KILL", default_value_t = 100)]
    pub kill: u32,
    /// The cluster's `--probe-interval`.
    #[arg(long, env = "GM_BENCH_PROBE_INTERVAL", default_value = "1s", value_parser = crate::config::positive_duration)]
    pub probe_interval: Duration,
    /// The cluster's `--probe-timeout`.
    #[arg(long, env = "GM_BENCH_PROBE_TIMEOUT", default_value = "500ms", value_parser = crate::config::positive_duration)]
    pub probe_timeout: Duration,
    /// The cluster's `--suspect-after`.
    #[arg(long, env = "GM_BENCH_SUSPECT_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub suspect_after: u32,
    /// Groups the members are spread over (`fd-0`, `fd-1`, ...).
    #[arg(long, env = "GM_BENCH_GROUPS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub groups: u32,
    /// How long probing CPU and probe rate are measured, and false evictions watched, before the
    /// kill.
    #[arg(long, env = "GM_BENCH_STEADY", default_value = "20s", value_parser = crate::config::duration)]
    pub steady: Duration,
    /// After the steady phase, SIGSTOP this node for `--pause-for`, then SIGCONT it: a node cut
    /// off from everything. False evictions across it are counted.
    #[arg(long, env = "GM_BENCH_PAUSE_NODE", value_parser = clap::value_parser!(u64).range(1..=9))]
    pub pause_node: Option<u64>,
    /// How long `--pause-node` stays stopped.
    #[arg(long, env = "GM_BENCH_PAUSE_FOR", default_value = "30s", value_parser = crate::config::duration)]
    pub pause_for: Duration,
    /// Also print all figures as one JSON object.
    #[arg(long, env = "GM_BENCH_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    pub json: bool,
}

/// Who is who: member `n` is `m{n}`, in group `fd-{n % groups}`, served at address `n % addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub members: u32,
    pub addresses: u32,
    pub groups: u32,
}

impl Layout {
    fn id(&self, n: u32) -> String {
        format!("m{n}")
    }

    /// The `n` of a member id of ours, exactly as [`Layout::id`] writes it.
    fn parse_id(&self, id: &str) -> Option<u32> {
        let digits = id.strip_prefix('m')?;
        let canonical = digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
        let n: u32 = digits.parse().ok().filter(|_| canonical)?;
        (n < self.members).then_some(n)
    }

    fn group_of(&self, n: u32) -> u32 {
        n % self.groups
    }

    fn group(&self, g: u32) -> String {
        format!("fd-{g}")
    }

    fn address(&self, n: u32) -> u32 {
        n % self.addresses
    }
}

/// Runs the bench and prints its figures.
pub async fn run(config: FdConfig) -> Result<(), BenchError> {
    if config.pause_node.is_some_and(|n| n > config.cluster.nodes) {
        return Err(BenchError::Flags(format!("--pause-node must be one of the {} nodes", config.cluster.nodes)));
    }
    if config.kill > config.members {
        return Err(BenchError::Flags(format!("--kill {} is more than --members {}", config.kill, config.members)));
    }
    let layout = Layout { members: config.members, addresses: config.addresses, groups: config.groups };
    let servers = MemberServers::start(layout).await?;
    let server_args = [
        "--probe-interval".to_owned(),
        humantime::format_duration(config.probe_interval).to_string(),
        "--probe-timeout".to_owned(),
        humantime::format_duration(config.probe_timeout).to_string(),
        "--suspect-after".to_owned(),
        config.suspect_after.to_string(),
    ];
    let mut own = match OwnCluster::start(&config.cluster, &server_args) {
        Ok(own) => own,
        Err(e) => {
            servers.stop().await;
            return Err(e);
        }
    };
    let mut report = Map::new();
    // One try per request: the joins count each failed try, and retry themselves.
    let client = Client::builder(&own.endpoints)
        .pool_max_idle_per_host(JOIN_CONCURRENCY)
        .policy(RetryPolicy::once(REQUEST_TIMEOUT))
        .build();
    let result = match client {
        Ok(client) => interruptible(bench(&config, layout, &client, &mut own, &servers, &mut report)).await,
        Err(e) => Err(e.into()),
    };
    own.stop().await;
    servers.stop().await;
    let summary = result?;
    say(summary.line());
    if config.json {
        report.insert("members".into(), json!(config.members));
        report.insert("addresses".into(), json!(config.addresses));
        report.insert("groups".into(), json!(config.groups));
        report.insert("probe_interval_ms".into(), json!(millis_u64(config.probe_interval)));
        report.insert("probe_timeout_ms".into(), json!(millis_u64(config.probe_timeout)));
        report.insert("suspect_after".into(), json!(config.suspect_after));
        report.insert("detection".into(), summary.detection.json());
        report.insert("false_evictions".into(), false_evictions_json(&summary.false_evictions));
        say(serde_json::to_string(&Value::Object(report))?);
    }
    Ok(())
}

async fn bench(
    config: &FdConfig,
    layout: Layout,
    client: &Client,
    own: &mut OwnCluster,
    servers: &MemberServers,
    report: &mut Map<String, Value>,
) -> Result<Summary, BenchError> {
    own.wait_ready(client).await?;
    let pids = process::node_pids(&own.data_dir, config.cluster.nodes)?;
    let mut run = Run { config, layout, client, servers, pids, report };
    let joined = run.join().await?;
    run.wait_probed(&joined).await;

    // A watch waits for its headers as long as it takes: a paused node sends them when it resumes.
    let watch_client = Client::builder(&own.endpoints).policy(RetryPolicy::once(WATCH_HEADERS_TIMEOUT)).build()?;
    let watches = Watches::start(&watch_client, layout)?;
    watches.first_views(FIRST_VIEWS_DEADLINE).await?;
    let mut timeline = Timeline { steady: Instant::now(), pause: None, kill: None };
    let steady = run.steady(&watches, &joined, &timeline).await;
    if let Some(node) = config.pause_node {
        timeline.pause = Some(Instant::now());
        run.pause(node, &watches, &joined, &timeline).await?;
    }
    let crash = run.crash(&watches, &joined).await;
    timeline.kill = Some(crash.at);
    // A crash must not take live neighbours with it: watch a while longer.
    let tail = (config.probe_interval * (config.suspect_after + 1) + config.probe_timeout).max(Duration::from_secs(2));
    tokio::time::sleep(tail).await;

    let summary = run.conclude(&watches, joined, &crash, &timeline, &steady);
    watches.stop().await;
    summary
}

/// What the phases of one run share.
struct Run<'a> {
    config: &'a FdConfig,
    layout: Layout,
    /// One try per request.
    client: &'a Client,
    servers: &'a MemberServers,
    pids: Vec<Pid>,
    report: &'a mut Map<String, Value>,
}

impl Run<'_> {
    /// Joins every member, `JOIN_CONCURRENCY` at a time, round-robin over the nodes; returns
    /// who got in.
    async fn join(&mut self) -> Result<Vec<bool>, BenchError> {
        let (layout, client) = (self.layout, self.client);
        let addresses = (0..layout.addresses)
            .map(|a| Address::parse(&self.servers.address(a)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BenchError::Flags(format!("member server: {e}")))?;
        let started = Instant::now();
        let joins = futures::stream::iter(0..layout.members)
            .map(|n| {
                let node = client.at(n as usize);
                let spec = MemberSpec {
                    address: addresses[layout.address(n) as usize].clone(),
                    metadata: Metadata::default(),
                    instance: None,
                    failure_detection: FailureDetection::Probe { path: DEFAULT_PROBE_PATH.to_owned() },
                };
                async move { (n, join(&node, &layout, n, &spec).await) }
            })
            .buffer_unordered(JOIN_CONCURRENCY);
        futures::pin_mut!(joins);
        let mut tally = Tally::new()?;
        let mut joined = vec![false; layout.members as usize];
        while let Some((n, (failures, success))) = joins.next().await {
            for failure in failures {
                tally.failure(failure);
            }
            if let Some(latency) = success {
                tally.success(latency);
                joined[n as usize] = true;
            }
        }
        let figures = Figures::new(&tally, JOIN_CONCURRENCY as u64, started.elapsed());
        say(figures.line("fd joins"));
        self.report.insert("joins".into(), figures.json());
        Ok(joined)
    }

    /// Waits until every joined member was probed at least once, and says how long after the
    /// last join that was.
    async fn wait_probed(&mut self, joined: &[bool]) {
        let joins_done = Instant::now();
        let deadline = joins_done + DEADLINE_FLOOR.max(self.config.probe_interval * 10);
        let unprobed = loop {
            let unprobed =
                (0..self.layout.members).filter(|&n| joined[n as usize] && self.servers.probes_of(n) == 0).count();
            if unprobed == 0 || Instant::now() >= deadline {
                break unprobed;
            }
            tokio::time::sleep(POLL).await;
        };
        let after = joins_done.elapsed();
        let who = match unprobed {
            0 => "every member probed".to_owned(),
            n => format!("{n} members still never probed"),
        };
        let responsible = responsible_for(&self.client.at(0)).await;
        say(format_args!("fd probing: {who} {} after the last join; responsible_for {responsible}", seconds(after)));
        self.report.insert("probed_after_ms".into(), json!(millis_u64(after)));
        self.report.insert("never_probed".into(), json!(unprobed));
    }

    /// Measures probing for `--steady`.
    async fn steady(&mut self, watches: &Watches, joined: &[bool], timeline: &Timeline) -> Steady {
        let meter = CpuMeter::start(&self.pids);
        let probes_before = self.servers.total();
        tokio::time::sleep(self.config.steady).await;
        let cpu = meter.read();
        let steady = Steady { probes_per_s: per_second(self.servers.total() - probes_before, cpu.elapsed), cpu };
        let so_far = false_evictions(&watches.book(), joined, timeline);
        say(steady.line(self.layout, self.config.probe_interval, &so_far));
        self.report.insert("steady".into(), steady.json());
        steady
    }

    /// SIGSTOPs node `node` for `--pause-for`, SIGCONTs it, waits until it is ready, then a few
    /// probe rounds more, in which a node that lost track of time would evict.
    async fn pause(
        &mut self,
        node: u64,
        watches: &Watches,
        joined: &[bool],
        timeline: &Timeline,
    ) -> Result<(), BenchError> {
        let config = self.config;
        let pid = self.pids[(node - 1) as usize];
        let paused = Paused::stop(pid).map_err(|e| BenchError::Flags(format!("cannot SIGSTOP node {node}: {e}")))?;
        tokio::time::sleep(config.pause_for).await;
        let nodes = self.client.endpoints().len();
        let other = (0..nodes).find(|&i| i as u64 + 1 != node);
        let responsible = match other {
            Some(i) => responsible_for(&self.client.at(i)).await,
            None => "unknown (no other node)".to_owned(),
        };
        paused.resume();
        let resumed = Instant::now();
        wait_ready(&self.client.at((node - 1) as usize), READY_DEADLINE).await?;
        let ready_after = resumed.elapsed();
        let settle = config.probe_interval * (config.suspect_after + 2) + config.probe_timeout + Duration::from_secs(2);
        tokio::time::sleep(settle).await;

        let during = false_evictions(&watches.book(), joined, timeline);
        let evicted = during.get(&Phase::Pause).copied().unwrap_or(0);
        say(format_args!(
            "fd pause: node {node} stopped for {}; responsible_for just before SIGCONT {responsible}; \
             ready {} after SIGCONT; false evictions during the pause and the {} after: {evicted}",
            seconds(config.pause_for),
            latency(ready_after),
            seconds(settle),
        ));
        self.report.insert(
            "pause".into(),
            json!({"node": node, "seconds": config.pause_for.as_secs_f64(),
                   "ready_after_ms": millis_u64(ready_after), "false_evictions": evicted}),
        );
        Ok(())
    }

    /// Crashes `--kill` members that every node shows, at once, and waits until every node has
    /// removed them (or the deadline).
    async fn crash(&mut self, watches: &Watches, joined: &[bool]) -> Crash {
        let config = self.config;
        let victims = {
            let book = watches.book();
            let alive: Vec<bool> = (0..self.layout.members).map(|n| joined[n as usize] && book.everywhere(n)).collect();
            Victims::choose(&self.layout, &alive, config.kill)
        };
        let (views_before, bytes_before) = watches.book().traffic();
        let meter = CpuMeter::start(&self.pids);
        let t0 = Instant::now();
        self.servers.crash_members(&victims.alone);
        if let Some(a) = victims.address {
            self.servers.crash_address(a);
        }
        let with_server = match victims.address {
            Some(a) => {
                format!("{} with their server {} (stopped)", victims.with_address.len(), self.servers.address(a))
            }
            None => "none with a whole server".to_owned(),
        };
        say(format_args!(
            "fd kill: {} members crashed at once: {} alone (their probes get no answer: the connection is closed), \
             {with_server}",
            victims.len(),
            victims.alone.len(),
        ));

        let patience = (config.probe_interval * config.suspect_after + config.probe_timeout) * 10;
        let deadline = t0 + DEADLINE_FLOOR.max(patience);
        let mut complete = watches.book().removed_everywhere(victims.all());
        while !complete && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            complete = watches.book().removed_everywhere(victims.all());
        }
        let cpu = meter.read();
        let (views, bytes) = watches.book().traffic();
        let (views, bytes) = (views - views_before, bytes - bytes_before);
        let until = if complete {
            "until every node showed the last removal".to_owned()
        } else {
            format!(
                "and gave up waiting (ten times probe interval x suspect-after + probe timeout, at least {} s): \
                 some node still shows a crashed member",
                DEADLINE_FLOOR.as_secs()
            )
        };
        say(format_args!(
            "fd removal: {:.1} s from the crash {until}: {}; the watch streams brought {views} views, {:.0} MB",
            cpu.elapsed.as_secs_f64(),
            cpu.text(),
            bytes as f64 / 1e6,
        ));
        let mut removal = cpu.json();
        removal["complete"] = json!(complete);
        removal["seconds"] = json!(cpu.elapsed.as_secs_f64());
        removal["views"] = json!(views);
        removal["view_bytes"] = json!(bytes);
        self.report.insert("removal".into(), removal);
        Crash { victims, at: t0 }
    }

    /// The figures of the whole run, from what the watches saw.
    fn conclude(
        &mut self,
        watches: &Watches,
        joined: Vec<bool>,
        crash: &Crash,
        timeline: &Timeline,
        steady: &Steady,
    ) -> Result<Summary, BenchError> {
        let book = watches.book();
        let (victims, t0) = (&crash.victims, crash.at);
        let detection = Detection::measure(&book.vanished, victims.all(), t0)?;
        if !victims.alone.is_empty() && !victims.with_address.is_empty() {
            let alone = Detection::measure(&book.vanished, victims.alone.iter().copied(), t0)?;
            let with_server = Detection::measure(&book.vanished, victims.with_address.iter().copied(), t0)?;
            say(format_args!(
                "fd detection by kind: crashed alone {}; with their server {}",
                alone.text(),
                with_server.text()
            ));
            self.report.insert("detection_alone".into(), alone.json());
            self.report.insert("detection_with_server".into(), with_server.json());
        }
        let mut live = joined;
        for n in victims.all() {
            live[n as usize] = false;
        }
        self.report.insert("watch_reconnects".into(), json!(book.reconnects));
        Ok(Summary {
            layout: self.layout,
            interval: self.config.probe_interval,
            suspect_after: self.config.suspect_after,
            detection,
            false_evictions: false_evictions(&book, &live, timeline),
            cpu_cores: steady.cpu.nodes_total(),
            probes_per_s: steady.probes_per_s,
        })
    }
}

/// The members crashed, and when.
struct Crash {
    victims: Victims,
    at: Instant,
}

/// Probing in steady state: its rate as the members see it and the CPU it costs.
struct Steady {
    probes_per_s: f64,
    cpu: CpuUse,
}

impl Steady {
    /// `fd steady: 20.0 s: 9870 probes/s seen by the members (...), GM nodes 0.41 cores (...), ...`
    fn line(&self, layout: Layout, interval: Duration, false_evictions: &BTreeMap<Phase, u64>) -> String {
        format!(
            "fd steady: {:.1} s: {:.0} probes/s seen by the members (one per member per interval is {:.0}), {}, \
             false evictions so far {}",
            self.cpu.elapsed.as_secs_f64(),
            self.probes_per_s,
            f64::from(layout.members) / interval.as_secs_f64(),
            self.cpu.text(),
            false_evictions_text(false_evictions),
        )
    }

    fn json(&self) -> Value {
        let mut json = self.cpu.json();
        json["seconds"] = json!(self.cpu.elapsed.as_secs_f64());
        json["probes_per_s"] = json!(self.probes_per_s);
        json
    }
}

/// Member `n`'s join through `node`, tried up to `JOIN_ATTEMPTS` times: the failed tries, and
/// the latency of the one that succeeded.
async fn join(node: &Client, layout: &Layout, n: u32, spec: &MemberSpec) -> (Vec<Failure>, Option<Duration>) {
    let names =
        GroupName::parse(&layout.group(layout.group_of(n))).and_then(|g| Ok((g, MemberId::parse(&layout.id(n))?)));
    let (group, id) = match names {
        Ok(names) => names,
        Err(e) => return (vec![format!("bench name: {e}")], None),
    };
    let mut failures = Vec::new();
    for attempt in 1..=JOIN_ATTEMPTS {
        let sent = Instant::now();
        match node.join(&group, &id, spec).await {
            Ok(_) => return (failures, Some(sent.elapsed())),
            Err(e) => failures.push(failure(&e)),
        }
        if attempt < JOIN_ATTEMPTS {
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
        }
    }
    (failures, None)
}

/// `node 1 3334, node 2 3333, node 3 3333` from `/v1/cluster` of `node`, or why not.
async fn responsible_for(node: &Client) -> String {
    let once = node.with_policy(RetryPolicy::once(Duration::from_secs(5)));
    match once.cluster(Consistency::Linearizable).await {
        Ok(cluster) => {
            let nodes: BTreeMap<u64, usize> = cluster.nodes.iter().map(|n| (n.id, n.responsible_for)).collect();
            nodes.iter().map(|(id, n)| format!("node {id} {n}")).collect::<Vec<_>>().join(", ")
        }
        Err(e) => format!("unknown ({e})"),
    }
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_foreign_ids_are_not_ours() {
        let layout = Layout { members: 100, addresses: 8, groups: 10 };
        for n in [0, 7, 99] {
            assert_eq!(layout.parse_id(&layout.id(n)), Some(n));
        }
        for id in ["m100", "m07", "m+7", "m", "x7", "m-1", "m 7"] {
            assert_eq!(layout.parse_id(id), None, "{id}");
        }
        assert_eq!((layout.group(layout.group_of(57)), layout.address(57)), ("fd-7".to_owned(), 1));
    }
}
