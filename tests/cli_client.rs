//! The client commands (`gm join | leave | members | groups | watch | cluster`) as a script uses
//! them: the real `gm` binary against a real local cluster. Their `-o json` output is compared
//! with what the API answers over plain HTTP, their tables are read column by column, and each
//! failure is checked for its exit status and its one line on stderr.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Cluster, NodeProc, DEADLINE};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// What a run of `gm` gave.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    fn assert_ok(&self) -> &Run {
        assert_eq!(self.status, 0, "stderr:\n{}", self.stderr);
        self
    }

    /// Asserts a failure with `status` and one line on stderr, `gm: error: ...` containing `says`.
    fn assert_error(&self, status: i32, says: &str) {
        assert_eq!(self.status, status, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr, got:\n{}", self.stderr);
        assert!(lines[0].starts_with("gm: error: ") && lines[0].contains(says), "{}", self.stderr);
        assert!(self.stdout.is_empty(), "nothing on stdout, got:\n{}", self.stdout);
    }

    /// The rows of a table (the header first), each split into its cells.
    fn rows(&self) -> Vec<Vec<&str>> {
        self.stdout.lines().map(|l| l.split_whitespace().collect()).collect()
    }
}

fn gm_command(endpoints: &[&str], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gm"));
    command.args(args).env_remove("GM_ENDPOINTS").env("RUST_BACKTRACE", "1");
    for endpoint in endpoints {
        command.args(["--endpoint", endpoint]);
    }
    command
}

/// Runs `gm ARGS --endpoint E...` to its end.
async fn gm(endpoints: &[&str], args: &[&str]) -> Run {
    let run = gm_command(endpoints, args).stdin(Stdio::null()).output();
    let out = tokio::time::timeout(DEADLINE, run).await.expect("gm ends in time").expect("run gm");
    Run {
        status: out.status.code().expect("an exit status"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// An endpoint where nothing listens: a port the kernel handed out and that was closed again.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

async fn api(cluster: &Cluster, node: &NodeProc, path: &str) -> Value {
    let (status, body) = cluster.get_json(node, path).await.expect("GET");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[tokio::test]
async fn commands_print_tables_and_the_apis_json_and_exit_with_what_happened() {
    let cluster = Cluster::start(3).await;
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let all: Vec<&str> = cluster.nodes.iter().map(|n| n.api.as_str()).collect();
    let lease = ["--lease", "5m"];

    // join: a sentence for people, the API's answer for scripts.
    let run = gm(
        &all,
        &[&["join", "orders", "w-1", "--address", "10.1.2.3:9021", "--metadata", "zone=a"][..], &lease].concat(),
    )
    .await;
    run.assert_ok();
    assert!(run.stdout.starts_with("w-1 joined orders: incarnation "), "{}", run.stdout);
    let w1: Value = api(&cluster, n1, "/v1/groups/orders/members/w-1").await;
    let incarnation = w1["incarnation"].as_u64().expect("an incarnation");
    assert!(run.stdout.contains(&format!(": incarnation {incarnation}, revision ")), "{}", run.stdout);
    let join = ["join", "orders", "w-2", "--address", "10.1.2.4:9021", "--metadata", "zone=b,rack=3", "-o", "json"];
    let joined = gm(&all, &[&join[..], &lease].concat()).await.assert_ok().json();
    assert_eq!(joined["member"], api(&cluster, n2, "/v1/groups/orders/members/w-2").await);
    assert_eq!(joined["member"]["metadata"], serde_json::json!({"zone": "b", "rack": "3"}));
    assert_eq!(joined["member"]["failure_detection"], serde_json::json!({"mode": "lease", "ttl_ms": 300000}));
    assert!(joined["revision"].as_u64().is_some(), "{joined}");
    // The same join again changes nothing.
    let again = gm(&all, &[&join[..], &lease].concat()).await.assert_ok().json();
    assert_eq!(again["member"], joined["member"]);
    let run = gm(&all, &[&join[..7], &lease].concat()).await;
    let (w2, revision) = (&joined["member"]["incarnation"], &again["revision"]);
    assert_eq!(run.assert_ok().stdout, format!("w-2 is a member of orders: incarnation {w2}, revision {revision}\n"));

    // members: the view, as the API answers it, and as a table.
    let view = gm(&all, &["members", "orders", "-o", "json"]).await.assert_ok().json();
    assert_eq!(view, api(&cluster, n1, "/v1/groups/orders").await);
    let run = gm(&all, &["members", "orders", "--consistency", "stale"]).await;
    let rows = run.assert_ok().rows();
    assert_eq!(rows[0], ["MEMBER", "ADDRESS", "INCARNATION", "DETECTION", "NODE", "JOINED", "METADATA"]);
    assert_eq!(rows.len(), 3, "{}", run.stdout);
    let incarnation_cell = incarnation.to_string();
    assert_eq!(&rows[1][..6], ["w-1", "10.1.2.3:9021", &incarnation_cell, "lease", "5m", "-"]);
    assert_eq!(rows[1][7], "zone=a");
    assert_eq!(rows[2][7], "rack=3,zone=b");
    let record = gm(&all, &["members", "orders", "w-1", "-o", "json"]).await.assert_ok().json();
    assert_eq!(record, api(&cluster, n1, "/v1/groups/orders/members/w-1").await);

    // groups and cluster.
    let groups = gm(&all, &["groups", "-o", "json"]).await.assert_ok().json();
    assert_eq!(groups["groups"], api(&cluster, n1, "/v1/groups").await["groups"]);
    let rows = gm(&all, &["groups"]).await.assert_ok().rows().into_iter().map(|r| r.join(" ")).collect::<Vec<_>>();
    assert_eq!(rows[0], "GROUP MEMBERS REVISION");
    assert!(rows[1].starts_with("orders 2 "), "{rows:?}");
    let leader = cluster.leader().await;
    let answer = gm(&all, &["cluster", "-o", "json"]).await.assert_ok().json();
    assert_eq!(answer["leader_id"], leader);
    let ids: Vec<u64> =
        answer["nodes"].as_array().expect("nodes").iter().map(|n| n["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [1, 2, 3]);
    let served: gm::wire::ClusterAnswer = serde_json::from_value(answer).expect("the contract's shape");
    assert_eq!(served.nodes[(leader - 1) as usize].role, gm::wire::Role::Leader);
    let run = gm(&all, &["cluster"]).await;
    let text = &run.assert_ok().stdout;
    assert!(text.lines().next().expect("a line").contains(&format!("  leader {leader}  ")), "{text}");
    let row = run.rows().into_iter().find(|r| r[0] == leader.to_string()).expect("the leader's row");
    assert_eq!(row[4], "leader", "{text}");

    // leave: only the incarnation named, else 4; a member or group not there is 3.
    let wrong = (incarnation + 7).to_string();
    gm(&all, &["leave", "orders", "w-1", "--incarnation", &wrong]).await.assert_error(4, "409");
    let leave = ["leave", "orders", "w-1", "--incarnation", &incarnation_cell, "-o", "json"];
    let left = gm(&all, &leave).await.assert_ok().json();
    assert!(left["revision"].as_u64().expect("a revision") > joined["revision"].as_u64().expect("a revision"));
    assert_eq!(left.as_object().expect("an object").len(), 1, "{left}");
    gm(&all, &["leave", "orders", "w-1"]).await.assert_error(3, "404");
    gm(&all, &["members", "orders", "w-1"]).await.assert_error(3, "404");
    let run = gm(&all, &["leave", "orders", "w-2"]).await;
    assert!(run.assert_ok().stdout.starts_with("w-2 left orders: revision "), "{}", run.stdout);
    gm(&all, &["members", "orders"]).await.assert_error(3, "not_found");
    assert_eq!(gm(&all, &["groups", "-o", "json"]).await.assert_ok().json()["groups"], serde_json::json!([]));

    // Fail-over: a dead first endpoint is skipped.
    let dead = dead_endpoint();
    let run = gm(&[&dead, &n2.api], &["join", "orders", "w-3", "--address", "a:1", "--lease", "5m"]).await;
    assert!(run.assert_ok().stdout.starts_with("w-3 joined orders"), "{}", run.stdout);
    let view = gm(&[&dead, &n2.api], &["members", "orders", "-o", "json"]).await.assert_ok().json();
    assert_eq!(view["members"][0]["id"], "w-3");

    // Bad input is found before any request, and by the node.
    gm(&all, &["members", "Orders"]).await.assert_error(2, "\"Orders\" is not a valid group name");
    gm(&all, &["join", "orders", "w-4", "--address", "nowhere"]).await.assert_error(2, "--address");
    gm(&["http://[bad"], &["groups"]).await.assert_error(2, "bad endpoint");
}

#[tokio::test]
async fn no_endpoint_that_answers_is_unavailable_and_usage_errors_are_2() {
    let (dead, other) = (dead_endpoint(), dead_endpoint());
    let started = std::time::Instant::now();
    let run = gm(&[&dead, &other], &["groups", "--timeout", "1s"]).await;
    run.assert_error(5, "no endpoint answered");
    assert!(started.elapsed() < Duration::from_secs(10), "--timeout bounds the retries: {:?}", started.elapsed());
    // Without --endpoint, GM_ENDPOINTS says where to go.
    let mut command = gm_command(&[], &["cluster", "--timeout", "1s"]);
    let out = command.env("GM_ENDPOINTS", format!("{dead},{other}")).output().await.expect("run gm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.starts_with("gm: error: no endpoint answered"), "{stderr}");
    assert!(stderr.contains(&dead) || stderr.contains(&other), "the last endpoint tried is named: {stderr}");

    // The flag parser's usage errors: exit status 2, as every other bad input.
    let run = gm(&[&dead], &["join", "orders", "w-1"]).await;
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--address"), "{}", run.stderr);
    assert_eq!(gm(&[&dead], &["watch", "orders", "--count", "0"]).await.status, 2);
    assert_eq!(gm(&[&dead], &["leave", "orders", "w-1", "--incarnation", "x"]).await.status, 2);
}

/// `gm watch` running in the background, its output read line by line.
struct Watcher {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watcher {
    fn start(endpoints: &[&str], args: &[&str]) -> Watcher {
        let mut child = gm_command(endpoints, &[&["watch"], args].concat())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start gm watch");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Watcher { child, lines }
    }

    async fn line(&mut self) -> String {
        self.line_within(DEADLINE).await
    }

    async fn line_within(&mut self, within: Duration) -> String {
        let next = tokio::time::timeout(within, self.lines.next_line()).await.expect("a line in time");
        next.expect("read stdout").expect("gm watch printed a line before it ended")
    }

    async fn view(&mut self) -> Value {
        serde_json::from_str(&self.line().await).expect("a view a line")
    }

    /// Waits for the end; its exit status and stderr.
    async fn end(mut self) -> (i32, String) {
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().expect("stderr");
        let exit = tokio::time::timeout(DEADLINE, async {
            tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.expect("read stderr");
            self.child.wait().await.expect("wait")
        });
        let status = exit.await.expect("gm watch ends in time");
        assert!(self.lines.next_line().await.expect("stdout").is_none(), "nothing after the last view");
        (status.code().expect("an exit status"), stderr)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_gives_up_a_node_that_falls_silent_and_goes_on_from_the_next() {
    let cluster = Cluster::start(3).await;
    let follower = cluster.follower().await;
    let others: Vec<String> = cluster.nodes.iter().filter(|n| n.id != follower).map(|n| n.api.clone()).collect();
    let silent = cluster.node(follower).api.clone();
    let mut watcher = Watcher::start(&[&silent, &others[0], &others[1]], &["quiet", "--count", "2", "-o", "json"]);
    assert!(member_ids(&watcher.view().await).is_empty());

    // A paused node keeps the connection open and sends nothing, not even keep-alives.
    cluster.pause(follower, true);
    gm(&[&others[0], &others[1]], &["join", "quiet", "w-1", "--address", "a:1", "--lease", "5m"]).await.assert_ok();
    // Given up 35 s after its last keep-alive (at most 15 s before the pause), then the next node.
    let view: Value = serde_json::from_str(&watcher.line_within(Duration::from_secs(120)).await).expect("a view");
    assert_eq!(member_ids(&view), ["w-1"]);
    let (status, stderr) = watcher.end().await;
    cluster.pause(follower, false);
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("nothing came for 35 s"), "the silence is logged: {stderr}");
    let reopened = stderr.lines().find(|l| l.contains("watch stream open again")).expect("the new stream is logged");
    assert!(reopened.contains(&others[0]), "at the next endpoint: {reopened}");
}

fn member_ids(view: &Value) -> Vec<&str> {
    view["members"].as_array().expect("members").iter().map(|m| m["id"].as_str().expect("an id")).collect()
}

#[tokio::test]
async fn watch_prints_each_new_view_and_follows_the_group_to_another_node() {
    let mut cluster = Cluster::start(3).await;
    let all: Vec<String> = cluster.nodes.iter().map(|n| n.api.clone()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let join = |id: &'static str| {
        let endpoints = all.clone();
        async move {
            gm(&endpoints, &["join", "jobs", id, "--address", "a:1", "--lease", "5m"]).await.assert_ok().stdout.clone()
        }
    };

    // A group with no members is a view with none; the join made meanwhile is the second view.
    let mut watcher = Watcher::start(&all, &["jobs", "--count", "2", "-o", "json"]);
    let first = watcher.view().await;
    assert_eq!(first["group"], "jobs");
    assert!(member_ids(&first).is_empty(), "{first}");
    join("w-1").await;
    let second = watcher.view().await;
    assert_eq!(member_ids(&second), ["w-1"]);
    assert_eq!(second, api(&cluster, cluster.node(1), "/v1/groups/jobs").await);
    assert_eq!(watcher.end().await.0, 0);

    // For people: a block per view, headed by the group and revision.
    let run = gm(&all, &["watch", "jobs", "--count", "1"]).await;
    let revision = second["revision"].as_u64().expect("a revision");
    assert!(
        run.assert_ok().stdout.starts_with(&format!("jobs at revision {revision}: 1 member\nMEMBER ")),
        "{}",
        run.stdout
    );

    // The node streaming the views dies: the watch goes on from the next endpoint, without
    // printing the view it already printed.
    let follower = cluster.follower().await;
    let others: Vec<String> = cluster.nodes.iter().filter(|n| n.id != follower).map(|n| n.api.clone()).collect();
    let streaming = cluster.node(follower).api.clone();
    let mut watcher = Watcher::start(&[&streaming, &others[0], &others[1]], &["jobs", "--count", "2", "-o", "json"]);
    assert_eq!(member_ids(&watcher.view().await), ["w-1"]);
    cluster.kill(follower).await;
    gm(&[&others[0], &others[1], &streaming], &["join", "jobs", "w-2", "--address", "a:1", "--lease", "5m"])
        .await
        .assert_ok();
    assert_eq!(member_ids(&watcher.view().await), ["w-1", "w-2"]);
    let (status, stderr) = watcher.end().await;
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("watch stream lost"), "the loss is logged: {stderr}");
}
