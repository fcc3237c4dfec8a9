//! `gm agent`, end to end: real `gm agent` processes against a real 3-node cluster. The agent
//! joins on start (the member shows on every node), is removed by failure detection after
//! kill -9, leaves within a second of SIGTERM without ever removing a successor that holds its id,
//! leaves while its app is unhealthy and comes back when it heals, stays a member through the loss
//! of the GM leader and a restart of the whole cluster from its data, re-joins when removed,
//! keeps a lease alive in lease mode, and serves views that follow the group's changes.
//!
//! Figures (printed with `eprintln!`, read them with `cargo nextest run --test agent
//! --no-capture`): from agent start to membership visible on all nodes, from SIGTERM to removal,
//! and the agent's memory and CPU at rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use gm::client::ErrorKind;
use gm::wire::Member;
use serde_json::{json, Value};

use common::{names, poll, wait_for, Cluster, Consistency, NodeProc};

/// Probe every 200 ms, give up on one after 150 ms, suspect after 3 failures in a row.
const FAST: &[&str] = &["--probe-interval", "200ms", "--probe-timeout", "150ms", "--suspect-after", "3"];

/// Long enough for many probe periods of [`FAST`] and lease heartbeats: a false removal or a
/// needless re-join would have happened within it.
const A_WHILE: Duration = Duration::from_secs(3);

/// A port of 127.0.0.1 free now, below the kernel's ephemeral range (as the harness picks
/// nodes' ports), never one this process handed out before.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = rand::random::<u16>() % 20_000 + 12_000;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// A `gm agent` process; killed (-9) when dropped.
struct Agent {
    child: Option<tokio::process::Child>,
    port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl Agent {
    /// Starts `gm agent` for member `id` of `groups` against every node of `c`, listening on a
    /// free port of 127.0.0.1 (its address), with `extra` flags; its log goes to `dir`.
    fn start(c: &Cluster, dir: &Path, id: &str, groups: &[&str], extra: &[&str]) -> Agent {
        let port = free_port();
        let log = dir.join(format!("agent-{id}-{port}.log"));
        let mut args: Vec<String> = vec!["agent".into(), "--member-id".into(), id.into()];
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        for node in &c.nodes {
            args.extend(["--endpoint".into(), node.api.clone()]);
        }
        for group in groups {
            args.extend(["--group".into(), group.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let file = std::fs::File::create(&log).expect("agent log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gm"))
            .args(&args)
            .env("GM_LOG", "info,gm=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_IP")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start gm agent");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
        Agent { child: Some(child), port, log, http }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).expect("the agent runs")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` of the agent's own server: status and JSON body (`Null` if not JSON).
    async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let resp = self.http.get(self.url(path)).send().await.ok()?;
        let status = resp.status().as_u16();
        let text = resp.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.expect("agent /metrics");
        resp.text().await.expect("metrics text")
    }

    /// Waits until the agent's `/readyz` answers 200 (it joined every group).
    async fn wait_ready(&self) {
        wait_for(&format!("the agent on port {} ready; its log:\n{}", self.port, self.log_text()), || async {
            self.get("/readyz").await.is_some_and(|(status, _)| status == 200)
        })
        .await;
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: kill(2) of a child of this process that is not reaped yet.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for the agent to exit, at most `within`.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the agent runs");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("wait for the agent"),
            Err(_) => panic!("the agent did not exit within {within:?}; its log:\n{}", self.log_text()),
        }
    }

    async fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.exit(Duration::from_secs(10)).await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- agent on port {} log -----\n{}", self.port, self.log_text());
        }
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// `group`/`id` as `node` sees it: `Ok(None)` if it is not a member, `Err` if the read failed.
async fn member_on(
    c: &Cluster,
    node: &NodeProc,
    group: &str,
    id: &str,
    consistency: Consistency,
) -> Result<Option<Member>, ()> {
    let (g, m) = names(group, id);
    match c.client(node).member(&g, &m, consistency).await {
        Ok(member) => Ok(Some(member)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// Waits until every running node shows `group`/`id` at `address`; returns its record.
async fn wait_member_everywhere(c: &Cluster, group: &str, id: &str, address: &str) -> Member {
    let mut record = None;
    for node in c.running() {
        let what = format!("{group}/{id} at {address} on node {}", node.id);
        record = Some(
            poll(&what, || async {
                let m = member_on(c, node, group, id, Consistency::Stale).await.ok()??;
                (m.address.to_string() == address).then_some(m)
            })
            .await,
        );
    }
    record.expect("a running node")
}

/// Waits until no running node shows `group`/`id`.
async fn wait_gone_everywhere(c: &Cluster, group: &str, id: &str) {
    for node in c.running() {
        wait_for(&format!("{group}/{id} gone on node {}", node.id), || async {
            matches!(member_on(c, node, group, id, Consistency::Stale).await, Ok(None))
        })
        .await;
    }
}

/// For `how_long`, every running node keeps showing `group`/`id` at `incarnation` whenever it
/// answers.
async fn assert_kept(c: &Cluster, group: &str, id: &str, incarnation: u64, how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < how_long {
        for node in c.running() {
            if let Ok(m) = member_on(c, node, group, id, Consistency::Stale).await {
                let got = m.map(|m| m.incarnation);
                assert_eq!(got, Some(incarnation), "{group}/{id} on node {} after {:?}", node.id, start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's view of `group` equals GM's (linearizable, through any node).
async fn wait_same_view(c: &Cluster, agent: &Agent, group: &str) -> Value {
    let path = format!("/v1/groups/{group}");
    poll(&format!("the agent's view of {group} equal to GM's"), || async {
        let (status, local) = agent.get(&path).await?;
        let node = c.running().next()?;
        let (gm_status, gm) = c.get_json(node, &path).await.ok()?;
        (status == gm_status && local == gm).then_some(local)
    })
    .await
}

/// CPU seconds (user + system) and resident memory (kB) of process `pid`, from /proc.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/pid/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/pid/status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    (ticks as f64 / per_second, rss)
}

#[tokio::test]
async fn an_agent_is_a_member_while_it_lives_and_leaves_within_a_second_of_sigterm() {
    let c = Cluster::start_with(3, FAST).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let view_file = dir.path().join("web.json");
    let started = Instant::now();
    let mut agent = Agent::start(&c, dir.path(), "web-1", &["web"], &["--view-file", view_file.to_str().unwrap()]);
    let member = wait_member_everywhere(&c, "web", "web-1", &agent.address()).await;
    let visible = started.elapsed();
    eprintln!("figure: agent start -> member visible on all 3 nodes: {} ms", visible.as_millis());
    assert!(member.instance.is_some(), "the agent joins with an instance: {member:?}");
    assert_eq!(
        serde_json::to_value(&member.failure_detection).unwrap(),
        json!({"mode": "probe", "path": "/gm/heartbeat"})
    );
    agent.wait_ready().await;

    // It answers GM's probes, and serves GM's view of its group from its cache and its file.
    assert_eq!(agent.get("/gm/heartbeat").await.map(|(s, _)| s), Some(200));
    let view = wait_same_view(&c, &agent, "web").await;
    wait_for("the view file", || async {
        std::fs::read(&view_file).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) == Some(view.clone())
    })
    .await;
    assert_eq!(agent.get("/v1/groups/other").await.map(|(s, _)| s), Some(404), "a group it does not follow");
    let metrics = agent.metrics().await;
    assert!(metrics.contains("gm_agent_member{group=\"web\"} 1"), "{metrics}");
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");

    // At rest: probed, nothing else; it stays a member at the same incarnation meanwhile.
    let pid = agent.pid();
    let (cpu_before, _) = cpu_and_rss(pid);
    let rest = Instant::now();
    assert_kept(&c, "web", "web-1", member.incarnation, Duration::from_secs(10)).await;
    let (cpu_after, rss_kb) = cpu_and_rss(pid);
    let cpu = (cpu_after - cpu_before) / rest.elapsed().as_secs_f64();
    eprintln!(
        "figure: agent at rest (probed every 200 ms, debug build): {:.2} % of a core, {:.1} MiB resident",
        cpu * 100.0,
        rss_kb as f64 / 1024.0
    );

    // SIGTERM: gone within a second, and the agent exits 0.
    let node = c.node(c.follower().await);
    let term = Instant::now();
    agent.signal(libc::SIGTERM);
    wait_for("web-1 gone after SIGTERM", || async {
        matches!(member_on(&c, node, "web", "web-1", Consistency::Linearizable).await, Ok(None))
    })
    .await;
    let removed = term.elapsed();
    eprintln!("figure: SIGTERM -> member removed (linearizable read): {} ms", removed.as_millis());
    assert!(removed < Duration::from_secs(1), "removed {removed:?} after SIGTERM");
    let status = agent.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "the agent exits 0 after SIGTERM: {status}");
    wait_gone_everywhere(&c, "web", "web-1").await;
}

#[tokio::test]
async fn a_successor_is_never_removed_by_the_late_leave_and_kill_9_is_detected() {
    let c = Cluster::start_with(3, FAST).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = Agent::start(&c, dir.path(), "db-0", &["db"], &[]);
    let first = wait_member_everywhere(&c, "db", "db-0", &old.address()).await;
    old.wait_ready().await;

    // The successor starts while the old agent still runs (as in a rolling update): it takes
    // the id with a new incarnation, and the old one does not take it back.
    let mut new = Agent::start(&c, dir.path(), "db-0", &["db"], &[]);
    let second = wait_member_everywhere(&c, "db", "db-0", &new.address()).await;
    assert!(second.incarnation > first.incarnation, "{first:?} then {second:?}");
    new.wait_ready().await;
    wait_for("the old agent sees itself superseded", || async {
        let log = old.log_text();
        log.contains("membership lost") && log.contains("superseded")
    })
    .await;
    assert_kept(&c, "db", "db-0", second.incarnation, A_WHILE).await;

    // The old agent's leave names its own incarnation: refused, the successor stays.
    old.signal(libc::SIGTERM);
    let status = old.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "the old agent exits 0: {status}");
    assert!(old.log_text().contains("not left: a newer incarnation holds the id"), "{}", old.log_text());
    assert_kept(&c, "db", "db-0", second.incarnation, A_WHILE).await;

    // kill -9: no leave at all; GM's failure detection removes it.
    new.kill9().await;
    let killed = Instant::now();
    wait_gone_everywhere(&c, "db", "db-0").await;
    eprintln!("figure: kill -9 of the agent -> removed on all nodes by detection: {} ms", killed.elapsed().as_millis());
}

/// A stand-in app whose health the test switches: `GET /ready` answers 200 or 503.
async fn start_app(healthy: Arc<AtomicBool>) -> (String, tokio::task::JoinHandle<()>) {
    async fn ready(State(healthy): State<Arc<AtomicBool>>) -> StatusCode {
        if healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the app");
    let url = format!("http://{}/ready", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/ready", get(ready)).with_state(healthy);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

#[tokio::test]
async fn an_unhealthy_app_leaves_its_groups_and_comes_back_when_healthy() {
    let c = Cluster::start_with(3, FAST).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = Arc::new(AtomicBool::new(false));
    let (url, app) = start_app(Arc::clone(&healthy)).await;
    let agent = Agent::start(
        &c,
        dir.path(),
        "api-1",
        &["api"],
        &["--app-health-url", &url, "--app-health-interval", "200ms", "--app-unhealthy-after", "2"],
    );

    // Not joined while the app has never been healthy; the probe path says so.
    wait_for("the agent answers", || async { agent.get("/healthz").await.is_some_and(|(s, _)| s == 200) }).await;
    assert_eq!(agent.get("/readyz").await.map(|(s, _)| s), Some(503));
    assert_eq!(agent.get("/gm/heartbeat").await.map(|(s, _)| s), Some(503));
    assert_eq!(member_on(&c, &c.nodes[0], "api", "api-1", Consistency::Linearizable).await, Ok(None));

    healthy.store(true, Ordering::SeqCst);
    let first = wait_member_everywhere(&c, "api", "api-1", &agent.address()).await;
    agent.wait_ready().await;

    healthy.store(false, Ordering::SeqCst);
    wait_gone_everywhere(&c, "api", "api-1").await;
    assert_eq!(agent.get("/gm/heartbeat").await.map(|(s, _)| s), Some(503));
    assert_eq!(agent.get("/readyz").await.map(|(s, _)| s), Some(200), "ready stays once joined");

    healthy.store(true, Ordering::SeqCst);
    let back = wait_member_everywhere(&c, "api", "api-1", &agent.address()).await;
    assert!(back.incarnation > first.incarnation, "{first:?} then {back:?}");
    assert_eq!(agent.get("/gm/heartbeat").await.map(|(s, _)| s), Some(200));
    app.abort();
}

#[tokio::test]
async fn the_agent_stays_through_leader_loss_and_cluster_restart_and_its_view_follows() {
    let mut c = Cluster::start_with(3, FAST).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pattern = dir.path().join("{group}.json");
    let agent = Agent::start(
        &c,
        dir.path(),
        "worker-1",
        &["orders", "audit"],
        &["--view-file", pattern.to_str().unwrap(), "--metadata", "zone=a"],
    );
    let member = wait_member_everywhere(&c, "orders", "worker-1", &agent.address()).await;
    wait_member_everywhere(&c, "audit", "worker-1", &agent.address()).await;
    assert_eq!(serde_json::to_value(&member.metadata).unwrap(), json!({"zone": "a"}));
    agent.wait_ready().await;
    let (_, groups) = agent.get("/v1/groups").await.expect("the agent's groups");
    assert_eq!(groups["groups"].as_array().map(Vec::len), Some(2), "{groups}");

    // The local view follows the group: a peer joins, a blocking query on the agent wakes up.
    let view = wait_same_view(&c, &agent, "orders").await;
    let revision = view["revision"].as_u64().expect("revision");
    let blocking = {
        let (http, url) = (agent.http.clone(), agent.url(&format!("/v1/groups/orders?index={revision}&wait=20s")));
        tokio::spawn(async move { http.get(url).send().await.ok()?.json::<Value>().await.ok() })
    };
    c.join_retrying("orders", "peer-1", common::lease_member("10.0.0.9:80")).await;
    let woke = blocking.await.expect("the blocking query").expect("its answer");
    assert!(woke["revision"].as_u64() > Some(revision), "{woke}");
    let view = wait_same_view(&c, &agent, "orders").await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(2), "{view}");
    let file = dir.path().join("orders.json");
    wait_for("the view file shows the peer", || async {
        std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) == Some(view.clone())
    })
    .await;
    c.leave(&c.nodes[0], "orders", "peer-1").await.expect("peer-1 leaves");
    let view = wait_same_view(&c, &agent, "orders").await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(1), "{view}");

    // Removed by someone else: it joins again, a new incarnation.
    c.leave(&c.nodes[1], "orders", "worker-1").await.expect("remove the agent");
    let back = wait_member_everywhere(&c, "orders", "worker-1", &agent.address()).await;
    assert!(back.incarnation > member.incarnation, "{member:?} then {back:?}");

    // The GM leader dies: the agent stays a member, at the same incarnation.
    let leader = c.leader().await;
    c.kill(leader).await;
    c.leader().await;
    assert_kept(&c, "orders", "worker-1", back.incarnation, A_WHILE).await;
    c.spawn(leader);
    c.wait_ready_all().await;

    // The whole cluster restarts from its data: the agent is still (or again) a member.
    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_ready_all().await;
    wait_member_everywhere(&c, "orders", "worker-1", &agent.address()).await;
    wait_member_everywhere(&c, "audit", "worker-1", &agent.address()).await;
    let view = wait_same_view(&c, &agent, "orders").await;
    assert!(view["members"].as_array().is_some_and(|m| m.iter().any(|m| m["id"] == "worker-1")), "{view}");
}

#[tokio::test]
async fn in_lease_mode_the_agent_keeps_its_lease_and_joins_again_when_dropped() {
    let c = Cluster::start_with(3, FAST).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // GM cannot reach this address: nothing probes it, the heartbeats keep it.
    let unreachable = "10.255.255.1:9";
    let mut agent = Agent::start(&c, dir.path(), "job-1", &["jobs"], &["--lease", "1500ms", "--address", unreachable]);
    let member = wait_member_everywhere(&c, "jobs", "job-1", unreachable).await;
    assert_eq!(serde_json::to_value(&member.failure_detection).unwrap(), json!({"mode": "lease", "ttl_ms": 1500}));
    agent.wait_ready().await;

    // Several TTLs: heartbeats keep it.
    assert_kept(&c, "jobs", "job-1", member.incarnation, A_WHILE).await;
    assert!(common::series_value(&agent.metrics().await, "gm_agent_heartbeats_total{result=\"ok\"}") >= 3.0);

    // Dropped by someone else: it joins again.
    c.leave(&c.nodes[2], "jobs", "job-1").await.expect("remove the agent");
    let back = wait_member_everywhere(&c, "jobs", "job-1", unreachable).await;
    assert!(back.incarnation > member.incarnation, "{member:?} then {back:?}");

    // kill -9: the heartbeats stop and the lease expires.
    agent.kill9().await;
    wait_gone_everywhere(&c, "jobs", "job-1").await;
}
