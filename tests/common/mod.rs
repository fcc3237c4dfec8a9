//! The shared harness of the end-to-end tests: real `gm server` processes on free loopback
//! ports, each with its own data dir and log file, killed when the cluster is dropped. They are
//! started as `gm dev` and `gm bench` start theirs, by `gm::dev::LocalCluster`. Waits are polls
//! with generous deadlines, never bare sleeps used as synchronisation.
//!
//! Helpers that need an answer (the leader, readiness, joins, member sets) ask through
//! `gm::client`, as a user would; the contract's own tests look at raw HTTP (status, headers,
//! exact JSON) through [`Cluster::call`] and its kin, which return a [`Reply`].

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod fake_k8s;
pub mod load;
pub mod members;
pub mod partition;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gm::client::{Client, ClientError, RetryPolicy, SseParser};
use gm::dev::{DevConfig, DevError, Exit, LocalCluster, NodeOutput};
use gm::membership::{GroupName, MemberId, MemberSpec};
use gm::wire::{JoinAnswer, Member, RevisionAnswer};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

pub use gm::wire::Consistency;

pub const DEADLINE: Duration = Duration::from_secs(30);
/// The longest any one request of a test may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Requests that must get through: retried on every running node in turn until [`DEADLINE`].
const UNTIL_DEADLINE: RetryPolicy = RetryPolicy {
    attempt_timeout: REQUEST_TIMEOUT,
    deadline: DEADLINE,
    first_pause: Duration::from_millis(50),
    max_pause: Duration::from_millis(100),
};

/// One GM node and where it listens; its process is the cluster's.
pub struct NodeProc {
    pub id: u64,
    pub api: String,
    pub peer: String,
    pub data_dir: PathBuf,
}

impl NodeProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }
}

/// A local cluster of real processes.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    /// The processes. Before `_dir`, so that they are gone before their data dirs are.
    local: LocalCluster,
    /// Nodes stopped with SIGSTOP: their sockets accept but nothing answers, so no helper asks them.
    paused: Mutex<BTreeSet<u64>>,
    _dir: tempfile::TempDir,
    /// For raw HTTP: what the contract's tests assert.
    pub http: reqwest::Client,
    /// Of every node, in id order.
    client: Client,
}

/// `n` nodes' processes, none started yet, with data dirs and logs in `dir`, on ports free now
/// below the kernel's ephemeral range (32768 and up): a port the kernel handed out to `bind(0)`
/// goes back to that range and can be taken by any outgoing connection before the node binds
/// it. The first ports are random, so concurrent test processes rarely pick the same ones; never
/// one this process handed out before, since a port is free only until its node binds it.
fn local_cluster(n: u64, extra_args: &[&str], env: &[(&str, Option<&str>)], dir: &std::path::Path) -> LocalCluster {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let first_port = || rand::random::<u16>() % 20_000 + 12_000;
        let (api_port, peer_port) = (first_port(), first_port());
        let ports: Vec<u16> = (0..n as u16).flat_map(|i| [api_port + i, peer_port + i]).collect();
        if ports.iter().any(|p| given.contains(p)) {
            continue;
        }
        let config =
            DevConfig { nodes: n, data_dir: dir.to_owned(), clean: false, api_port, peer_port, worker_threads: None };
        match LocalCluster::prepare(&config, &extra_args, NodeOutput::LogFiles) {
            Ok(mut local) => {
                given.extend(ports);
                local.set_executable(env!("CARGO_BIN_EXE_gm").into());
                // Each node names itself, as a node started without `--name` does.
                local.name_nodes(false);
                for (key, value) in env {
                    local.set_env(key, *value);
                }
                return local;
            }
            Err(DevError::PortsInUse { .. } | DevError::PortsOverlap { .. }) => continue,
            Err(e) => panic!("cannot prepare a local cluster: {e}"),
        }
    }
}

/// Whether process `pid` has exited (it is a zombie, not yet reaped: Linux's `/proc/PID/stat`
/// says `Z`), or is gone.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) of a child of this process that is not reaped yet, so its pid is not reused.
    unsafe { libc::kill(pid, signal) };
}

impl Cluster {
    /// Starts `n` nodes and waits until every one is ready.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Starts `n` nodes with extra `gm server` flags and waits until every one is ready.
    pub async fn start_with(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_with_env(n, extra_args, &[]).await
    }

    /// Like [`Cluster::start_with`], with environment variables set (`Some`) or removed (`None`)
    /// for the nodes.
    pub async fn start_with_env(n: u64, extra_args: &[&str], env: &[(&str, Option<&str>)]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = local_cluster(n, extra_args, env, dir.path());
        let nodes: Vec<NodeProc> = local
            .nodes
            .iter()
            .map(|node| NodeProc {
                id: node.id,
                api: node.api.clone(),
                peer: node.peer.clone(),
                data_dir: dir.path().join(format!("node-{}", node.id)),
            })
            .collect();
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client");
        let client = Client::builder(nodes.iter().map(|n| &n.api)).policy(UNTIL_DEADLINE).build().expect("client");
        let mut cluster = Cluster { nodes, local, paused: Mutex::default(), _dir: dir, http, client };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster.wait_ready_all().await;
        cluster
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    /// Starts (or restarts) node `id` on its data dir. Its log is appended to, so the log of its
    /// earlier lives survives.
    pub fn spawn(&mut self, id: u64) {
        assert!(!self.is_running(id), "node {id} is already running");
        self.local.spawn(id).unwrap_or_else(|e| panic!("spawn node {id}: {e}"));
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the nodes started from now on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.local.set_env(key, value);
    }

    /// kill -9 of node `id`, waiting until it is gone.
    pub async fn kill(&mut self, id: u64) {
        self.local.kill(id).await;
        self.paused_set().remove(&id);
    }

    /// SIGTERM to node `id`, waiting until it has exited: a clean stop.
    pub async fn terminate(&self, id: u64) {
        if let Some(pid) = self.local.pid(id) {
            signal(pid, libc::SIGTERM);
            wait_for(&format!("node {id} to exit"), || async move { exited(pid) }).await;
        }
    }

    /// SIGSTOP / SIGCONT: a paused process keeps its sockets but answers nothing.
    pub fn pause(&self, id: u64, paused: bool) {
        if let Some(pid) = self.local.pid(id) {
            signal(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT });
            if paused {
                self.paused_set().insert(id);
            } else {
                self.paused_set().remove(&id);
            }
        }
    }

    fn paused_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the test started node `id` and has not stopped it (it may have exited itself).
    pub fn is_running(&self, id: u64) -> bool {
        self.local.pid(id).is_some()
    }

    /// Whether the process the test started for node `id` has exited on its own.
    pub fn has_exited(&self, id: u64) -> bool {
        self.local.pid(id).is_some_and(exited)
    }

    /// Whether node `id` runs and is not paused: whether it can answer.
    pub fn is_serving(&self, id: u64) -> bool {
        self.is_running(id) && !self.paused_set().contains(&id)
    }

    /// The nodes that run and are not paused.
    pub fn running(&self) -> impl Iterator<Item = &NodeProc> {
        let paused = self.paused_set().clone();
        self.nodes.iter().filter(move |n| self.is_running(n.id) && !paused.contains(&n.id))
    }

    /// A client of `node` alone that tries once: what that node answers.
    pub fn client(&self, node: &NodeProc) -> Client {
        self.client.at((node.id - 1) as usize).with_policy(RetryPolicy::once(REQUEST_TIMEOUT))
    }

    /// A client of the running nodes that fails over and retries until [`DEADLINE`].
    pub fn retrying_client(&self) -> Client {
        self.client.with_endpoints(self.running().map(|n| &n.api)).expect("endpoints")
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready_all(&self) {
        for node in self.running() {
            let client = self.client(node);
            wait_for(&format!("node {} ready", node.id), || async {
                assert!(!self.has_exited(node.id), "node {} exited; its log:\n{}", node.id, self.log_text(node.id));
                client.readyz().await.is_ok()
            })
            .await;
        }
    }

    /// The leader id as a running node reports it, waiting for one that is running.
    pub async fn leader(&self) -> u64 {
        poll("a leader", || async {
            for node in self.running() {
                if let Ok(cluster) = self.client(node).cluster(Consistency::Stale).await {
                    if let Some(l) = cluster.leader_id.filter(|&l| self.is_serving(l)) {
                        return Some(l);
                    }
                }
            }
            None
        })
        .await
    }

    pub async fn get_json(&self, node: &NodeProc, path: &str) -> reqwest::Result<(u16, Value)> {
        let resp = self.http.get(node.url(path)).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Leaves `group`/`id` through `node`, once.
    pub async fn leave(&self, node: &NodeProc, group: &str, id: &str) -> Result<RevisionAnswer, ClientError> {
        let (group, id) = names(group, id);
        self.client(node).leave(&group, &id, None).await
    }

    /// Joins with `body` through any running node, retrying 503s and transport errors until the
    /// deadline.
    pub async fn join_retrying(&self, group: &str, id: &str, body: Value) -> JoinAnswer {
        join_through(&self.retrying_client(), group, id, body).await
    }
}

impl Cluster {
    /// `node`'s `/metrics`, as text.
    pub async fn scrape(&self, node: &NodeProc) -> String {
        let resp = self.http.get(node.url("/metrics")).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("GET /metrics of node {}: {e}", node.id));
        resp.text().await.expect("metrics text")
    }

    /// The value of one series on `node`, `0` if absent.
    pub async fn metric(&self, node: &NodeProc, series: &str) -> f64 {
        series_value(&self.scrape(node).await, series)
    }
}

/// The value of one series (`name{labels}`, labels as the node writes them) in a scrape, `0` if
/// absent.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Validated names for a test's group and member.
pub fn names(group: &str, id: &str) -> (GroupName, MemberId) {
    (GroupName::parse(group).expect("a group name"), MemberId::parse(id).expect("a member id"))
}

/// Joins `group`/`id` with `body` (the JSON of a join, which must be valid) through `client`;
/// panics if it does not get through.
async fn join_through(client: &Client, group: &str, id: &str, body: Value) -> JoinAnswer {
    let spec: MemberSpec = serde_json::from_value(body).unwrap_or_else(|e| panic!("join {group}/{id}: body: {e}"));
    let (g, m) = names(group, id);
    client.join(&g, &m, &spec).await.unwrap_or_else(|e| panic!("join {group}/{id}: {e}")).answer
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails(40);
        }
        // kill -9, and wait until each process is gone (a zombie: it holds no file any more)
        // before its data dir is removed. `LocalCluster` reaps them when it is dropped.
        let pids: Vec<u32> = self.nodes.iter().filter_map(|n| self.local.pid(n.id)).collect();
        for &pid in &pids {
            signal(pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while !pids.iter().all(|&pid| exited(pid)) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Polls `check` until it gives a value, panicking with `what` after [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it is true, panicking with `what` after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// One HTTP answer: status, headers and the JSON body (`Null` if it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn read(resp: reqwest::Response) -> reqwest::Result<Reply> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        Ok(Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-GM-Revision`, which every `/v1/` success must carry.
    pub fn revision_header(&self) -> u64 {
        self.header("x-gm-revision")
            .unwrap_or_else(|| panic!("no X-GM-Revision in {self:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("X-GM-Revision is not an integer ({e}) in {self:?}"))
    }

    /// Asserts a success with `status` under `/v1/`: it carries `X-GM-Revision`. Returns it.
    pub fn expect_ok(&self, status: u16, what: &str) -> u64 {
        assert_eq!(self.status, status, "{what}: {self:?}");
        self.revision_header()
    }

    /// Asserts the contract's error shape: `status`, `{"error": {"code", "message"}}` with
    /// `code` and a non-empty message (and `Retry-After` on a 503).
    pub fn expect_error(&self, status: u16, code: &str, what: &str) {
        if let Some(wrong) = self.error_mismatch(status, code) {
            panic!("{what}: {wrong}");
        }
    }

    /// What differs from the contract's error `status` + `code`, if anything.
    pub fn error_mismatch(&self, status: u16, code: &str) -> Option<String> {
        let error = &self.body["error"];
        let message_ok = error["message"].as_str().is_some_and(|m| !m.is_empty());
        let only_error = self.body.as_object().is_some_and(|o| o.len() == 1);
        let retry_ok = status != 503 || self.header("retry-after").is_some_and(|r| r.parse::<u64>().is_ok());
        if self.status == status && error["code"] == code && message_ok && only_error && retry_ok {
            return None;
        }
        Some(format!(
            "expected {status} {code}, got {} {} (Retry-After: {:?})",
            self.status,
            self.body,
            self.header("retry-after")
        ))
    }
}

/// Every member of every group as one node reports it: `(group, id)` to the member record.
pub type MemberSet = BTreeMap<(String, String), Member>;

/// Every member of every group: `(group, id)` to its incarnation.
pub type Incarnations = BTreeMap<(String, String), u64>;

pub fn incarnations(set: &MemberSet) -> Incarnations {
    set.iter().map(|(k, m)| (k.clone(), m.incarnation)).collect()
}

/// What differs between the members a node reported (`None`: its reads failed) and `expected`.
fn member_set_mismatch(got: Option<&Incarnations>, expected: &Incarnations) -> Option<String> {
    let Some(got) = got else {
        return Some(format!("its reads failed; {} members expected", expected.len()));
    };
    if got == expected {
        return None;
    }
    let missing: Vec<_> = expected.iter().filter(|(k, v)| got.get(*k) != Some(v)).take(10).collect();
    let extra: Vec<_> = got.iter().filter(|(k, v)| expected.get(*k) != Some(v)).take(10).collect();
    Some(format!(
        "{} members expected, {} reported; missing or different (first 10): {missing:?}; unexpected: {extra:?}",
        expected.len(),
        got.len()
    ))
}

/// `count` joins of lease members `{prefix}-{i}`, spread over `groups` groups `{prefix}-g{i % groups}`.
pub fn lease_joins(prefix: &str, range: std::ops::Range<usize>, groups: usize) -> Vec<(String, String, Value)> {
    range
        .map(|i| {
            let address = format!("10.{}.{}.{}:{}", i / 65536 % 256, i / 256 % 256, i % 256, 1000 + i % 1000);
            (format!("{prefix}-g{}", i % groups), format!("{prefix}-{i}"), lease_member(&address))
        })
        .collect()
}

impl Cluster {
    /// Sends `req` and reads the answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Result<Reply> {
        Reply::read(req.send().await?).await
    }

    /// `method path` on `node` with an optional JSON body; a transport error fails the test.
    pub async fn call(&self, method: Method, node: &NodeProc, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.http.request(method.clone(), node.url(path));
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(req).await.unwrap_or_else(|e| panic!("{method} {path} on node {}: {e}", node.id))
    }

    pub async fn get(&self, node: &NodeProc, path: &str) -> Reply {
        self.call(Method::GET, node, path, None).await
    }

    pub async fn put(&self, node: &NodeProc, path: &str, body: &Value) -> Reply {
        self.call(Method::PUT, node, path, Some(body)).await
    }

    pub async fn delete(&self, node: &NodeProc, path: &str) -> Reply {
        self.call(Method::DELETE, node, path, None).await
    }

    /// A running node other than the leader.
    pub async fn follower(&self) -> u64 {
        let leader = self.leader().await;
        self.running().map(|n| n.id).find(|&id| id != leader).expect("a running follower")
    }

    /// The cluster id, once the leader has named the cluster.
    pub async fn cluster_id(&self) -> String {
        poll("a cluster id", || async {
            let node = self.running().next()?;
            self.client(node).cluster(Consistency::Linearizable).await.ok()?.cluster_id
        })
        .await
    }

    /// Every member of every group on `node`, read at `consistency`; `None` if a read failed.
    pub async fn member_set(&self, node: &NodeProc, consistency: Consistency) -> Option<MemberSet> {
        self.try_member_set(node, consistency).await.ok()
    }

    /// Like [`Cluster::member_set`], with the error of the read that failed.
    async fn try_member_set(&self, node: &NodeProc, consistency: Consistency) -> Result<MemberSet, ClientError> {
        let client = self.client(node);
        let mut set = MemberSet::new();
        for summary in client.groups(consistency).await?.groups {
            let view = client.group(&summary.group, consistency).await?;
            for m in view.members {
                set.insert((summary.group.to_string(), m.id.to_string()), m);
            }
        }
        Ok(set)
    }

    /// Waits until `node` reports, at `consistency`, exactly the members of `expected` with
    /// their incarnations.
    pub async fn wait_member_set(&self, node: &NodeProc, consistency: Consistency, expected: &Incarnations) {
        let start = Instant::now();
        loop {
            let got = self.member_set(node, consistency).await.map(|set| incarnations(&set));
            let Some(wrong) = member_set_mismatch(got.as_ref(), expected) else { return };
            assert!(start.elapsed() < DEADLINE, "node {} ({consistency:?}): {wrong}", node.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that `node` reports, at `consistency`, exactly the members of `expected` now. A read
    /// the node cannot serve yet (`503`, which the contract allows while a leader settles or a
    /// loaded machine misses a heartbeat) is tried again until [`DEADLINE`]; any answer that is
    /// not `expected` fails at once.
    pub async fn assert_member_set(&self, node: &NodeProc, consistency: Consistency, expected: &Incarnations) {
        let start = Instant::now();
        loop {
            match self.try_member_set(node, consistency).await {
                Ok(set) => {
                    if let Some(wrong) = member_set_mismatch(Some(&incarnations(&set)), expected) {
                        panic!("node {} ({consistency:?}): {wrong}", node.id);
                    }
                    return;
                }
                Err(e) if e.is_retryable() && start.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("node {} ({consistency:?}): its reads failed: {e}", node.id),
            }
        }
    }

    /// Joins every `(group, id, body)` with `concurrency` joins in flight, each through a
    /// different node in turn, retrying until acknowledged. Returns each member's incarnation.
    pub async fn join_many(&self, joins: Vec<(String, String, Value)>, concurrency: usize) -> Incarnations {
        let client = self.retrying_client();
        futures::stream::iter(joins.into_iter().enumerate())
            .map(|(i, (group, id, body))| {
                let client = client.starting_at(i);
                async move {
                    let answer = join_through(&client, &group, &id, body).await;
                    ((group, id), answer.member.incarnation)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// The nodes whose process has exited although the test did not stop it.
    pub fn exited(&mut self) -> Vec<u64> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ids.into_iter().filter(|&id| self.local.reap(id).is_some()).collect()
    }

    /// The last `lines` lines of every node's log, to read why a test failed.
    pub fn print_log_tails(&mut self, lines: usize) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            let text = self.log_text(id);
            let all: Vec<&str> = text.lines().collect();
            let process = match (self.local.pid(id), self.local.reap(id)) {
                (None, _) => "stopped by the test".to_owned(),
                (Some(pid), None) => format!("pid {pid}, running"),
                (Some(pid), Some(Exit { status: Ok(status), .. })) => format!("pid {pid}, exited: {status}"),
                (Some(pid), Some(Exit { status: Err(e), .. })) => format!("pid {pid}, unknown: {e}"),
            };
            eprintln!("----- node {id} ({process}) log (last {lines} lines) -----");
            for line in &all[all.len().saturating_sub(lines)..] {
                eprintln!("{line}");
            }
        }
    }

    /// The text of node `id`'s log, over all its lives.
    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(self.local.log_path(id)).unwrap_or_default()
    }
}

/// A join body for a lease member that keeps its lease for a day: GM neither probes nor expires it
/// during a test.
pub fn lease_member(address: &str) -> Value {
    json!({"address": address, "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}})
}

/// One Server-Sent Event, its data read as JSON.
#[derive(Debug, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: Value,
}

/// A watch stream being read raw (status, headers, events), with `gm::client`'s parser.
pub struct Watch {
    pub status: u16,
    pub headers: HeaderMap,
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    events: VecDeque<SseEvent>,
}

impl Watch {
    /// Opens `GET path` on `node` as an event stream. Uses a client without a total timeout: a
    /// stream lives as long as the test reads it.
    pub async fn open(node: &NodeProc, path: &str) -> Watch {
        let resp = reqwest::Client::new()
            .get(node.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap_or_else(|e| panic!("watch {path} on node {}: {e}", node.id));
        Watch {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            stream: Box::pin(resp.bytes_stream()),
            parser: SseParser::default(),
            events: VecDeque::new(),
        }
    }

    /// The next event that carries data (keep-alive comments are skipped), within `within`.
    pub async fn next_event(&mut self, within: Duration) -> SseEvent {
        self.try_next_event(within).await.unwrap_or_else(|| panic!("no event within {within:?}"))
    }

    /// The next event within `within`, or `None` if the stream stays open and quiet that long.
    /// The stream ending fails the test.
    pub async fn try_next_event(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.next_data_event()).await.ok()
    }

    async fn next_data_event(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.events.pop_front() {
                return event;
            }
            let chunk = self.stream.next().await.expect("the watch stream ended").expect("reading the watch stream");
            self.events.extend(self.parser.push(&chunk).into_iter().map(|e| {
                SseEvent {
                    data: serde_json::from_str(&e.data)
                        .unwrap_or_else(|err| panic!("event data is not JSON ({err}): {}", e.data)),
                    event: e.event,
                    id: e.id.unwrap_or_default(),
                }
            }));
        }
    }
}

/// How long `fut` took, with its output.
pub async fn timed<T>(fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = fut.await;
    (out, start.elapsed())
}

/// Fetches a JSON value with `fetch` until `check` accepts it; panics with `what` and the last
/// value seen after [`DEADLINE`].
pub async fn poll_json<F, Fut, C>(what: &str, mut fetch: F, check: C) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
    C: Fn(&Value) -> bool,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some(v) = fetch().await {
            if check(&v) {
                return v;
            }
            last = Some(v);
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}; last seen: {last:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
