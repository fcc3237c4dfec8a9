//! `/metrics` under a small load on a real 3-node cluster: joins, re-joins and leaves, probe-mode
//! members of which some crash, a lease member that expires, a watch and a blocking query held
//! open, and a leader killed. Every node's figures must have moved as that load says, every
//! node's output must pass `promtool check metrics`, and the `gm_` names a node exposes must be
//! exactly those `docs/metrics.md` lists.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use common::members::FakeMembers;
use common::{lease_member, series_value, wait_for, Cluster, Consistency, Watch};

const PROBE_MEMBERS: usize = 5;
const CRASHED: usize = 2;

/// The metric family names (`# TYPE` lines) of a scrape that start with `prefix`.
fn families(text: &str, prefix: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The `gm_` names `docs/metrics.md` documents: the first code span of each table row.
fn documented() -> BTreeSet<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).expect("docs/metrics.md");
    doc.lines().filter_map(|l| l.strip_prefix("| `gm_")?.split('`').next().map(|rest| format!("gm_{rest}"))).collect()
}

/// `promtool check metrics` of one node's output; fails with a clear message if promtool is missing.
fn promtool_check(node: u64, text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool is needed to check /metrics and cannot be run ({e}): install it with tests/setup.sh (apt-get install prometheus)")
    });
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed on node {node}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every running node's `/metrics`, by node id, each checked with promtool.
async fn scrape_all(c: &Cluster) -> Vec<(u64, String)> {
    let mut scrapes = Vec::new();
    for node in c.running() {
        let text = c.scrape(node).await;
        promtool_check(node.id, &text);
        scrapes.push((node.id, text));
    }
    scrapes
}

/// The sum of one series over the scrapes.
fn sum(scrapes: &[(u64, String)], series: &str) -> f64 {
    scrapes.iter().map(|(_, s)| series_value(s, series)).sum()
}

/// Node `id`'s scrape.
fn of(scrapes: &[(u64, String)], id: u64) -> &str {
    scrapes.iter().find(|(n, _)| *n == id).map(|(_, s)| s.as_str()).unwrap_or_else(|| panic!("no scrape of node {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_load_and_pass_promtool() {
    let flags =
        ["--probe-interval", "200ms", "--probe-timeout", "150ms", "--suspect-after", "2", "--snapshot-every", "20"];
    let mut c = Cluster::start_with(3, &flags).await;
    let leader = c.leader().await;
    let follower = c.follower().await;
    let put = |node: u64, path: &str, body| {
        let (c, path) = (&c, path.to_owned());
        async move { c.put(c.node(node), &path, &body).await }
    };

    // Members that are not probe-mode members with a live server are lease members, kept for
    // a day: only the crashes below remove members for failure.
    // Joins through the follower: created, rejoined (the same again), updated (a new spec),
    // rejected (an invalid id); a leave, and a leave of no member.
    put(follower, "/v1/groups/web/members/a", lease_member("10.0.0.1:80")).await.expect_ok(201, "join a");
    put(follower, "/v1/groups/web/members/a", lease_member("10.0.0.1:80")).await.expect_ok(200, "join a again");
    put(follower, "/v1/groups/web/members/a", lease_member("10.0.0.2:80")).await.expect_ok(200, "move a");
    put(follower, "/v1/groups/web/members/_bad", json!({"address": "10.0.0.1:80"})).await.expect_error(
        400,
        "invalid_argument",
        "join with an invalid id",
    );
    c.delete(c.node(follower), "/v1/groups/web/members/a").await.expect_ok(200, "leave a");
    c.delete(c.node(follower), "/v1/groups/web/members/a").await.expect_error(404, "not_found", "leave a again");

    // Probe-mode members, all probed, then some crash and are removed for it.
    let mut servers = FakeMembers::start_many(PROBE_MEMBERS).await;
    for (i, server) in servers.iter().enumerate() {
        let joined = c.join_retrying("fd", &format!("m-{i}"), server.join_body()).await;
        server.wait_probe("fd", &format!("m-{i}"), joined.member.incarnation).await;
    }
    for server in servers.iter_mut().take(CRASHED) {
        server.crash().await;
    }

    // A lease member renewed through the follower and the leader, then left to expire.
    let lease = json!({"address": "10.0.0.9:80", "failure_detection": {"mode": "lease", "ttl_ms": 1000}});
    put(follower, "/v1/groups/leases/members/l", lease).await.expect_ok(201, "join the lease member");
    for node in [follower, leader] {
        let beat = c.call(Method::POST, c.node(node), "/v1/groups/leases/members/l/heartbeat", None).await;
        beat.expect_ok(200, "heartbeat");
    }

    // Enough writes for snapshots (every 20 entries).
    let writes = (0..60).map(|i| ("bulk".to_owned(), format!("w-{i}"), lease_member("10.0.1.1:80")));
    c.join_many(writes.collect(), 4).await;

    let client = c.client(c.node(follower));
    wait_for("the crashed members and the lease member removed", || async {
        let Ok(set) = client.groups(Consistency::Linearizable).await else { return false };
        let size = |g: &str| set.groups.iter().find(|s| s.group.as_str() == g).map_or(0, |s| s.size);
        size("fd") == PROBE_MEMBERS - CRASHED && size("leases") == 0
    })
    .await;

    // A watch and a blocking query open on the follower, seen as open there.
    let watch_node = c.node(follower);
    let mut watch = Watch::open(watch_node, "/v1/groups/web/watch").await;
    watch.next_event(Duration::from_secs(10)).await;
    let blocking = {
        let (http, url) = (c.http.clone(), watch_node.url("/v1/groups/fd?index=1000000&wait=60s"));
        tokio::spawn(async move { http.get(url).send().await })
    };
    wait_for("the watch and the blocking query counted", || async {
        let text = c.scrape(watch_node).await;
        series_value(&text, "gm_watch_streams") == 1.0 && series_value(&text, "gm_blocking_queries") == 1.0
    })
    .await;
    drop(watch);
    blocking.abort();
    wait_for("the watch and the blocking query no longer counted", || async {
        let text = c.scrape(watch_node).await;
        series_value(&text, "gm_watch_streams") == 0.0 && series_value(&text, "gm_blocking_queries") == 0.0
    })
    .await;

    // Before the failover: failure detection and membership, whose counts live on the nodes
    // that counted them (the leader's die with it).
    let before = scrape_all(&c).await;
    assert!(sum(&before, "gm_probes_total{result=\"ok\"}") > 0.0, "successful probes counted");
    let failed_probes: f64 = ["timeout", "refused", "bad_status", "error"]
        .iter()
        .map(|r| sum(&before, &format!("gm_probes_total{{result=\"{r}\"}}")))
        .sum();
    assert!(failed_probes > 0.0, "failed probes of the crashed members counted");
    assert!(sum(&before, "gm_probe_duration_seconds_count") > 0.0);
    assert!(sum(&before, "gm_suspicions_total") >= CRASHED as f64, "each crashed member suspected");
    assert!(sum(&before, "gm_indirect_probes_total{result=\"failed\"}") > 0.0, "indirect probes made for others");
    let removed = |reason: &str| sum(&before, &format!("gm_members_removed_total{{reason=\"{reason}\"}}"));
    assert_eq!(removed("failed"), CRASHED as f64, "each removal for failure counted once");
    assert_eq!(removed("lease_expired"), 1.0, "the lease expiry counted once");
    assert_eq!(removed("left"), 1.0, "the leave counted once");
    let l = of(&before, leader);
    assert_eq!(series_value(l, "gm_members_removed_total{reason=\"lease_expired\"}"), 1.0, "by the leader");
    assert_eq!(series_value(l, "gm_lease_heartbeats_total{outcome=\"ok\"}"), 2.0, "the leader renewed both");
    let f = of(&before, follower);
    assert_eq!(series_value(f, "gm_lease_heartbeats_total{outcome=\"forwarded\"}"), 1.0);
    assert_eq!(sum(&before, "gm_responsible_members"), (PROBE_MEMBERS - CRASHED) as f64, "every member probed");
    assert!(series_value(f, "gm_joins_total{outcome=\"created\"}") >= 2.0, "a and the lease member");
    assert_eq!(series_value(f, "gm_joins_total{outcome=\"rejoined\"}"), 1.0);
    assert_eq!(series_value(f, "gm_joins_total{outcome=\"updated\"}"), 1.0);
    assert_eq!(series_value(f, "gm_joins_total{outcome=\"rejected\"}"), 1.0);
    assert_eq!(series_value(f, "gm_leaves_total{outcome=\"left\"}"), 1.0);
    assert_eq!(series_value(f, "gm_leaves_total{outcome=\"not_found\"}"), 1.0);
    assert!(sum(&before, "gm_joins_total{outcome=\"created\"}") >= 60.0 + 2.0, "every join counted where answered");
    assert!(series_value(f, "gm_forwarded_requests_total{kind=\"write\"}") >= 5.0, "the follower's writes forwarded");
    assert_eq!(series_value(f, "gm_forwarded_requests_total{kind=\"heartbeat\"}"), 1.0);
    assert!(series_value(f, "gm_forwarded_requests_total{kind=\"read_index\"}") >= 1.0);
    let route = "gm_http_requests_total{method=\"PUT\",route=\"/v1/groups/{group}/members/{id}\",status=\"201\"}";
    assert!(series_value(f, route) >= 2.0, "joins counted by route template");
    assert!(sum(&before, "gm_raft_snapshots_total") > 0.0, "snapshots taken every 20 entries");
    assert!(sum(&before, "gm_raft_snapshot_size_bytes") > 0.0);

    // The leader dies; a new one is elected; a write reaches the dead node's address through it.
    c.kill(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    c.join_retrying("web", "after-failover", lease_member("10.0.0.3:80")).await;
    wait_for("the new leader counting failed calls to the dead node", || async {
        let text = c.scrape(c.node(new_leader)).await;
        series_value(&text, "gm_peer_rpc_failures_total{rpc=\"append\"}") > 0.0
    })
    .await;
    // The old leader comes back, as a follower.
    c.spawn(leader);
    c.wait_ready_all().await;
    wait_for("every node with a leader that reaches every voter", || async {
        let mut scrapes = Vec::new();
        for node in c.running() {
            scrapes.push((node.id, c.scrape(node).await));
        }
        scrapes.iter().all(|(_, s)| series_value(s, "gm_raft_has_leader") == 1.0)
            && sum(&scrapes, "gm_raft_is_leader") == 1.0
            && sum(&scrapes, "gm_raft_voters_reachable") == 9.0
    })
    .await;

    let after = scrape_all(&c).await;
    let leaders: Vec<u64> =
        after.iter().filter(|(_, s)| series_value(s, "gm_raft_is_leader") == 1.0).map(|(id, _)| *id).collect();
    assert_eq!(leaders.len(), 1, "exactly one node says it leads: {leaders:?}");
    let now_leader = leaders[0];
    let l = of(&after, now_leader);
    assert!(series_value(l, "gm_raft_term") >= 2.0, "a term after the failover");
    assert!(series_value(l, "gm_raft_commit_index") > 20.0);
    assert!(series_value(l, "gm_raft_proposals_committed_total") > 0.0);
    assert!(series_value(l, "gm_raft_proposal_batch_size_count") > 0.0);
    for (id, s) in &after {
        assert!(series_value(s, "gm_raft_applied_index") > 20.0, "node {id} applied the log");
        assert_eq!(series_value(s, "gm_raft_voters"), 3.0);
        assert!(series_value(s, "gm_raft_log_fsync_duration_seconds_count") > 0.0, "node {id} fsyncs");
        assert!(series_value(s, "gm_raft_log_size_bytes") > 0.0, "node {id} has a log on disk");
        assert!(series_value(s, "gm_raft_leader_changes_total") >= 1.0);
        let lag = s.lines().any(|line| line.starts_with("gm_raft_replication_lag_entries{"));
        assert_eq!(lag, *id == now_leader, "replication lag series on node {id} (leader {now_leader})");
        assert!(series_value(s, "gm_peer_rpc_duration_seconds_count{rpc=\"append\"}") > 0.0 || *id != now_leader);
        assert_eq!(series_value(s, "gm_groups"), 3.0, "web, fd and bulk on node {id}");
        assert_eq!(series_value(s, "gm_group_members{group=\"bulk\"}"), 60.0);
        for process in ["process_start_time_seconds", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(series_value(s, process) > 0.0, "{process} on node {id}");
        }
    }
    for id in [new_leader, c.nodes.iter().map(|n| n.id).find(|&n| n != leader && n != new_leader).unwrap()] {
        assert!(series_value(of(&after, id), "gm_raft_leader_changes_total") >= 2.0, "node {id} saw the failover");
    }

    // Every gm_ family some node exposes is documented, and every documented one is exposed.
    let exposed: BTreeSet<String> = before.iter().chain(&after).flat_map(|(_, s)| families(s, "gm_")).collect();
    let documented = documented();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exposed).collect();
    assert!(undocumented.is_empty(), "exposed but not in docs/metrics.md: {undocumented:?}");
    assert!(missing.is_empty(), "in docs/metrics.md but exposed by no node: {missing:?}");
    drop(servers);
}
