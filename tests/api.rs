//! The REST contract (`docs/api.md`) end to end: every endpoint through a follower and through
//! the leader of a real 3-node cluster, the exact shapes of answers and errors, blocking queries
//! and watch streams. Each test starts its own cluster, so each groups the checks of one theme.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use common::members::FakeMembers;
use common::{lease_joins, lease_member, poll_json, timed, wait_for, Cluster, Reply, Watch};

/// The paths the contract lists, as the served OpenAPI document must name them.
const CONTRACT_PATHS: [&str; 10] = [
    "/v1/groups/{group}/members/{id}",
    "/v1/groups/{group}/members/{id}/heartbeat",
    "/v1/groups/{group}",
    "/v1/groups/{group}/watch",
    "/v1/groups",
    "/v1/cluster",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

const MEMBER_FIELDS: [&str; 9] = [
    "id",
    "group",
    "address",
    "metadata",
    "instance",
    "incarnation",
    "joined_at",
    "responsible_node",
    "failure_detection",
];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// `joined_at` is RFC 3339 UTC with milliseconds: `2026-11-24T10:00:00.123Z`.
fn joined_at(member: &Value) -> DateTime<Utc> {
    let s = member["joined_at"].as_str().unwrap_or_else(|| panic!("joined_at is not a string in {member}"));
    assert!(s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.', "joined_at {s:?} is not UTC with millis");
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("joined_at {s:?}: {e}")).with_timezone(&Utc)
}

/// Asserts that `member` is the record the contract stores for a join of `body` as `group/id`:
/// exactly the contract's fields, with the defaults filled in.
fn assert_record(member: &Value, group: &str, id: &str, body: &Value) {
    assert_eq!(keys(member), MEMBER_FIELDS.into_iter().collect(), "fields of {member}");
    assert_eq!(member["id"], id);
    assert_eq!(member["group"], group);
    assert_eq!(member["address"], body["address"]);
    let metadata = if body["metadata"].is_null() { json!({}) } else { body["metadata"].clone() };
    assert_eq!(member["metadata"], metadata, "metadata of {member}");
    assert_eq!(member["instance"], body["instance"], "instance of {member}");
    assert!(member["incarnation"].as_u64().is_some_and(|n| n > 0), "incarnation of {member}");
    let joined = joined_at(member);
    assert!((Utc::now() - joined).num_seconds().abs() < 60, "joined_at {joined} is not now");
    let fd = &body["failure_detection"];
    let expected_fd = match fd["mode"].as_str() {
        None | Some("probe") => json!({"mode": "probe", "path": fd["path"].as_str().unwrap_or("/gm/heartbeat")}),
        Some("lease") => json!({"mode": "lease", "ttl_ms": fd["ttl_ms"].as_u64().unwrap_or(10_000)}),
        Some(other) => panic!("test bug: mode {other}"),
    };
    assert_eq!(member["failure_detection"], expected_fd, "failure_detection of {member}");
    if expected_fd["mode"] == "probe" {
        assert!(
            member["responsible_node"].as_u64().is_some_and(|n| (1..=3).contains(&n)),
            "a probe member has a responsible node: {member}"
        );
    } else {
        assert!(member["responsible_node"].is_null(), "a lease member has no responsible node: {member}");
    }
}

/// A join answer: `{"member", "revision"}` with `X-GM-Revision` equal to `revision`.
fn join_answer(reply: &Reply, status: u16, what: &str) -> (Value, u64) {
    let revision = reply.expect_ok(status, what);
    assert_eq!(keys(&reply.body), ["member", "revision"].into_iter().collect(), "{what}: {reply:?}");
    assert_eq!(reply.body["revision"], revision, "{what}: body revision equals X-GM-Revision");
    (reply.body["member"].clone(), revision)
}

/// Waits until the local clock is past `t`, so that a `joined_at` stamped next is later.
async fn wait_past(t: DateTime<Utc>) {
    wait_for(
        "the clock to pass the last joined_at",
        || async move { Utc::now() > t + chrono::Duration::milliseconds(2) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn join_retry_and_rejoin_through_follower_and_leader() {
    let c = Cluster::start(3).await;
    let target = FakeMembers::start().await;
    let other_address = target.address.replace("127.0.0.1", "localhost");
    let (leader, follower) = (c.leader().await, c.follower().await);
    let mut last_revision = 0;
    for (via, group) in [(follower, "via-follower"), (leader, "via-leader")] {
        let node = c.node(via);
        let path = format!("/v1/groups/{group}/members/w-1");
        let first_body = json!({"address": target.address});
        let (first, revision) = join_answer(&c.put(node, &path, &first_body).await, 201, "first join");
        assert_record(&first, group, "w-1", &first_body);
        assert!(revision > last_revision, "revisions strictly increase");
        last_revision = revision;

        // A retry, with or without the defaults spelled out, changes nothing.
        let explicit = json!({"address": target.address, "metadata": {}, "instance": null,
                              "failure_detection": {"mode": "probe"}});
        for retry in [&first_body, &explicit] {
            let (again, revision) = join_answer(&c.put(node, &path, retry).await, 200, "identical retry");
            assert_eq!(again, first, "a retried join returns the same record");
            assert!(revision >= last_revision, "a no-op join answers the current revision");
            last_revision = revision;
        }

        // Any change is a re-join: incarnation + 1, joined_at renewed.
        let rejoins = [
            json!({"address": other_address}),
            json!({"address": other_address, "metadata": {"zone": "a"}}),
            json!({"address": other_address, "metadata": {"zone": "a"}, "instance": "i-1"}),
            json!({"address": other_address, "metadata": {"zone": "a"}, "instance": "i-2"}),
            json!({"address": other_address, "metadata": {"zone": "b"}, "instance": "i-2"}),
            json!({"address": other_address, "metadata": {"zone": "b"}, "instance": "i-2",
                   "failure_detection": {"mode": "probe", "path": "/healthz"}}),
            json!({"address": other_address, "metadata": {"zone": "b"}, "instance": "i-2",
                   "failure_detection": {"mode": "lease"}}),
            json!({"address": other_address, "metadata": {"zone": "b"}, "instance": "i-2",
                   "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}}),
            json!({"address": other_address, "metadata": {"zone": "b"},
                   "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}}),
            json!({"address": target.address}),
        ];
        let mut previous = first;
        for body in &rejoins {
            wait_past(joined_at(&previous)).await;
            let (member, revision) = join_answer(&c.put(node, &path, body).await, 200, &format!("re-join with {body}"));
            assert_record(&member, group, "w-1", body);
            assert_eq!(member["incarnation"].as_u64(), previous["incarnation"].as_u64().map(|n| n + 1), "{body}");
            assert!(joined_at(&member) > joined_at(&previous), "joined_at renewed by {body}");
            assert!(revision > last_revision, "revisions strictly increase");
            last_revision = revision;
            let (again, _) = join_answer(&c.put(node, &path, body).await, 200, "retry of a re-join");
            assert_eq!(again, member, "a retried re-join changes nothing");
            previous = member;
        }
        // The other node sees the last record exactly.
        let other = c.node(if via == leader { follower } else { leader });
        let read = c.get(other, &path).await;
        assert!(read.expect_ok(200, "GET member") >= last_revision);
        assert_eq!(read.body, previous);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_leaves_and_incarnations() {
    let c = Cluster::start(3).await;
    let (leader, follower) = (c.leader().await, c.follower().await);
    let (l, f) = (c.node(leader), c.node(follower));

    // Members joined out of order, half through each node.
    let mut joined = Vec::new();
    for (i, id) in ["c", "a", "b"].into_iter().enumerate() {
        let via = if i % 2 == 0 { f } else { l };
        let body = lease_member(&format!("10.0.0.{}:80", i + 1));
        let (member, revision) = join_answer(&c.put(via, &format!("/v1/groups/g1/members/{id}"), &body).await, 201, id);
        joined.push((member, revision));
    }
    let g1_revision = joined.iter().map(|(_, r)| *r).max().unwrap();
    let (_, g2_revision) =
        join_answer(&c.put(l, "/v1/groups/g2/members/x", &lease_member("10.0.1.1:80")).await, 201, "x");

    for node in [f, l] {
        for (member, revision) in &joined {
            let id = member["id"].as_str().unwrap();
            let read = c.get(node, &format!("/v1/groups/g1/members/{id}")).await;
            assert!(read.expect_ok(200, "GET member") >= *revision);
            assert_eq!(&read.body, member);
        }
        let view = c.get(node, "/v1/groups/g1").await;
        assert!(view.expect_ok(200, "GET group") >= g1_revision);
        assert_eq!(keys(&view.body), ["group", "members", "revision"].into_iter().collect());
        assert_eq!(view.body["group"], "g1");
        assert_eq!(view.body["revision"], g1_revision, "a group's revision is that of its last change");
        let ids: Vec<&str> =
            view.body["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b", "c"], "members are sorted by id");

        let list = c.get(node, "/v1/groups").await;
        let header = list.expect_ok(200, "GET groups");
        assert_eq!(keys(&list.body), ["groups", "revision"].into_iter().collect());
        assert_eq!(list.body["revision"], header);
        let groups = list.body["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2, "{groups:?}");
        for (name, size, revision) in [("g1", 3, g1_revision), ("g2", 1, g2_revision)] {
            let g = groups.iter().find(|g| g["group"] == name).unwrap_or_else(|| panic!("{name} in {groups:?}"));
            assert_eq!(*g, json!({"group": name, "revision": revision, "size": size}));
        }

        for path in ["/v1/groups/nope", "/v1/groups/g1/members/nope", "/v1/groups/nope/members/a"] {
            c.get(node, path).await.expect_error(404, "not_found", path);
        }
        for path in
            ["/v1/groups/g1/members/nope", "/v1/groups/nope/members/a", "/v1/groups/g1/members/nope?incarnation=5"]
        {
            c.delete(node, path).await.expect_error(404, "not_found", path);
        }
    }

    // DELETE: a stale or malformed incarnation leaves the member alone.
    let a_incarnation = joined[1].0["incarnation"].as_u64().unwrap();
    for (node, query, status, code) in [
        (f, format!("?incarnation={}", a_incarnation + 1), 409, "conflict"),
        (l, format!("?incarnation={}", a_incarnation - 1), 409, "conflict"),
        (f, "?incarnation=abc".to_owned(), 400, "invalid_argument"),
        (l, "?incarnation=-1".to_owned(), 400, "invalid_argument"),
        (f, "?incarnation=".to_owned(), 400, "invalid_argument"),
    ] {
        c.delete(node, &format!("/v1/groups/g1/members/a{query}")).await.expect_error(status, code, &query);
    }
    assert_eq!(c.get(l, "/v1/groups/g1/members/a").await.body, joined[1].0, "a is untouched");

    // Leaves: with the right incarnation, then plainly; the group goes with its last member.
    let mut last_revision = g1_revision;
    for (node, id, query) in
        [(f, "a", format!("?incarnation={a_incarnation}")), (l, "b", String::new()), (f, "c", String::new())]
    {
        let reply = c.delete(node, &format!("/v1/groups/g1/members/{id}{query}")).await;
        let revision = reply.expect_ok(200, "leave");
        assert_eq!(reply.body, json!({"revision": revision}));
        assert!(revision > last_revision, "revisions strictly increase");
        last_revision = revision;
        c.delete(node, &format!("/v1/groups/g1/members/{id}")).await.expect_error(404, "not_found", "second leave");
        for reader in [f, l] {
            c.get(reader, &format!("/v1/groups/g1/members/{id}")).await.expect_error(404, "not_found", "left member");
        }
    }
    for node in &c.nodes {
        c.get(node, "/v1/groups/g1").await.expect_error(404, "not_found", "emptied group");
        let list = c.get(node, "/v1/groups").await;
        let names: Vec<&Value> = list.body["groups"].as_array().unwrap().iter().map(|g| &g["group"]).collect();
        assert_eq!(names, [&json!("g2")]);
    }

    // Incarnations of one id never repeat, across re-joins, leaves and joins again.
    let mut seen = Vec::new();
    let path = "/v1/groups/g3/members/r";
    for round in 0..3 {
        let via = if round % 2 == 0 { f } else { l };
        for instance in ["one", "two"] {
            let (m, _) = join_answer(
                &c.put(
                    via,
                    path,
                    &json!({"address": "10.0.3.1:80", "instance": instance,
                "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}}),
                )
                .await,
                if instance == "one" { 201 } else { 200 },
                "join r",
            );
            seen.push(m["incarnation"].as_u64().unwrap());
        }
        let stale = seen[seen.len() - 2];
        c.delete(via, &format!("{path}?incarnation={stale}")).await.expect_error(
            409,
            "conflict",
            "late leave of an old incarnation",
        );
        let current = seen[seen.len() - 1];
        c.delete(via, &format!("{path}?incarnation={current}")).await.expect_ok(200, "leave r");
        if let Some(&older) = seen.first().filter(|_| round > 0) {
            c.delete(via, &format!("{path}?incarnation={older}")).await.expect_error(
                404,
                "not_found",
                "leave of a gone member",
            );
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "incarnations of one id only grow: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_view_heartbeats_and_service_endpoints() {
    let c = Cluster::start(3).await;
    let target = FakeMembers::start().await;
    let (leader, follower) = (c.leader().await, c.follower().await);
    let (l, f) = (c.node(leader), c.node(follower));

    let probe = json!({"address": target.address});
    let lease = json!({"address": "10.9.9.9:80", "failure_detection": {"mode": "lease"}});
    let mut probe_members = 0;
    for (group, id, body) in [
        ("p1", "a", &probe),
        ("p1", "b", &probe),
        ("p1", "c", &probe),
        ("p2", "a", &probe),
        ("p2", "z", &probe),
        ("p1", "lease-1", &lease),
        ("p2", "lease-2", &lease),
    ] {
        c.put(f, &format!("/v1/groups/{group}/members/{id}"), body).await.expect_ok(201, "join");
        probe_members += usize::from(body == &probe);
    }

    // Heartbeats: a lease member's is 200, a probe member's 409, an unknown member's 404.
    for node in [f, l] {
        let reply = c.call(Method::POST, node, "/v1/groups/p1/members/lease-1/heartbeat", None).await;
        reply.expect_ok(200, "heartbeat of a lease member");
        c.call(Method::POST, node, "/v1/groups/p1/members/a/heartbeat", None).await.expect_error(
            409,
            "conflict",
            "heartbeat of a probe member",
        );
        for path in ["/v1/groups/p1/members/nobody/heartbeat", "/v1/groups/nogroup/members/a/heartbeat"] {
            c.call(Method::POST, node, path, None).await.expect_error(404, "not_found", path);
        }
    }

    // /v1/cluster, on every node, once each node has advertised its API address.
    let mut cluster_ids = BTreeSet::new();
    for node in &c.nodes {
        let body = poll_json(
            &format!("/v1/cluster on node {} with every API address and responsibility", node.id),
            || async { c.get_json(node, "/v1/cluster").await.ok().filter(|(s, _)| *s == 200).map(|(_, b)| b) },
            |b| {
                let nodes = b["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
                b["cluster_id"].is_string()
                    && nodes.len() == 3
                    && nodes.iter().all(|n| n["api_address"] == c.node(n["id"].as_u64().unwrap_or(1)).api)
                    && nodes.iter().map(|n| n["responsible_for"].as_u64().unwrap_or(0)).sum::<u64>()
                        == probe_members as u64
                    && nodes.iter().filter(|n| n["role"] == "leader").count() == 1
            },
        )
        .await;
        let reply = c.get(node, "/v1/cluster").await;
        assert_eq!(reply.body["revision"], reply.expect_ok(200, "/v1/cluster"), "X-GM-Revision of /v1/cluster");
        assert!(body["cluster_id"].as_str().is_some_and(|s| !s.is_empty()));
        cluster_ids.insert(body["cluster_id"].as_str().unwrap().to_owned());
        assert_eq!(body["leader_id"], leader, "{body}");
        assert!(body["term"].as_u64().is_some_and(|t| t >= 1), "{body}");
        assert!(body["revision"].as_u64().is_some_and(|r| r >= 1), "{body}");
        let nodes = body["nodes"].as_array().unwrap();
        let ids: BTreeSet<u64> = nodes.iter().map(|n| n["id"].as_u64().expect("integer node id")).collect();
        assert_eq!(ids, [1, 2, 3].into_iter().collect());
        for n in nodes {
            for field in ["id", "name", "api_address", "role", "responsible_for"] {
                assert!(!n[field].is_null(), "node field {field} in {n}");
            }
            assert!(n["name"].as_str().is_some_and(|s| !s.is_empty()), "{n}");
            let role = n["role"].as_str().unwrap();
            assert!(["leader", "follower", "learner"].contains(&role), "{n}");
            assert_eq!(role == "leader", n["id"] == leader, "{n}");
        }
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster id on every node: {cluster_ids:?}");

    // Health, readiness, metrics and the served contract.
    for node in &c.nodes {
        for path in ["/healthz", "/readyz"] {
            assert_eq!(c.get(node, path).await.status, 200, "{path} on node {}", node.id);
        }
        let metrics = c.http.get(node.url("/metrics")).send().await.expect("GET /metrics");
        assert_eq!(metrics.status(), 200);
        let content_type = metrics.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = metrics.text().await.unwrap();
        for name in ["gm_http_requests_total", "gm_raft_term"] {
            assert!(text.lines().any(|l| l.starts_with(name)), "/metrics has {name}");
        }
        let openapi = c.get(node, "/openapi.json").await;
        assert_eq!(openapi.status, 200);
        assert!(openapi.body["openapi"].is_string(), "openapi key: {}", openapi.body);
        for path in CONTRACT_PATHS {
            assert!(openapi.body["paths"][path].is_object(), "/openapi.json names {path}");
        }
    }
}

/// Once every node is ready, `/v1/cluster` on any node already names the cluster and every node
/// (distinct names, API addresses), and shows each node's health as the leader sees it. A killed
/// follower shows as unreachable with a growing time since contact; the leader's log says so once,
/// and once more when it is back. A healthy start logs no warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_ready_cluster_knows_itself_and_shows_a_dead_node() {
    let mut c = Cluster::start(3).await;
    for node in &c.nodes {
        // No polling: ready means complete.
        let body = c.get(node, "/v1/cluster").await.body;
        assert!(body["cluster_id"].as_str().is_some_and(|s| !s.is_empty()), "cluster id on node {}: {body}", node.id);
        let nodes = body["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "{body}");
        let names: BTreeSet<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3"].into_iter().collect(), "distinct names: {body}");
        for n in nodes {
            let id = n["id"].as_u64().expect("id");
            assert_eq!(n["api_address"], c.node(id).api, "api_address on node {}: {body}", node.id);
            let health = &n["health"];
            assert_eq!(health["reachable"], true, "health of {id} on node {}: {body}", node.id);
            assert!(health["last_contact_ms"].as_u64().is_some_and(|ms| ms < 10_000), "{body}");
            assert!(health["lag_entries"].as_u64().is_some(), "{body}");
        }
    }
    for node in &c.nodes {
        let log = c.log_text(node.id);
        assert!(
            !log.contains(" WARN ") && !log.contains(" ERROR "),
            "a healthy start of node {} warned:\n{log}",
            node.id
        );
    }

    let leader = c.leader().await;
    let dead = c.follower().await;
    c.kill(dead).await;
    let before = c.log_text(leader).lines().count();
    for node in c.running() {
        poll_json(
            &format!("node {dead} unreachable for a while, on node {}", node.id),
            || async { c.get_json(node, "/v1/cluster").await.ok().filter(|(s, _)| *s == 200).map(|(_, b)| b) },
            |b| {
                b["nodes"].as_array().into_iter().flatten().any(|n| {
                    n["id"] == dead
                        && n["role"] == "follower"
                        && n["health"]["reachable"] == false
                        && n["health"]["last_contact_ms"].as_u64().is_some_and(|ms| ms >= 2000)
                })
            },
        )
        .await;
    }
    let log = c.log_text(leader);
    let while_down: Vec<&str> = log.lines().skip(before).collect();
    let warnings = while_down.iter().filter(|l| l.contains("peer unreachable")).count();
    assert_eq!(warnings, 1, "one warning for the dead peer on the leader: {while_down:#?}");
    assert!(
        while_down.len() <= 10,
        "the leader logged {} lines while a peer was down: {while_down:#?}",
        while_down.len()
    );

    c.spawn(dead);
    c.wait_ready_all().await;
    wait_for("the leader logs the peer back", || async { c.log_text(leader).contains("peer reachable again") }).await;
    let body = c.get(c.node(leader), "/v1/cluster").await.body;
    let back = body["nodes"].as_array().into_iter().flatten().find(|n| n["id"] == dead).expect("the node");
    assert_eq!(back["health"]["reachable"], true, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_reads_and_read_your_writes() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    c.put(c.node(leader), "/v1/groups/s/members/m", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join");
    for node in &c.nodes {
        for consistency in ["stale", "linearizable"] {
            let q = format!("?consistency={consistency}");
            // A stale read may lag behind: wait for the member to arrive there.
            let member_path = format!("/v1/groups/s/members/m{q}");
            wait_for(&format!("{member_path} on node {}", node.id), || async {
                matches!(c.get_json(node, &member_path).await, Ok((200, _)))
            })
            .await;
            for path in ["/v1/groups/s", "/v1/groups/s/members/m", "/v1/groups", "/v1/cluster"] {
                let reply = c.get(node, &format!("{path}{q}")).await;
                reply.expect_ok(200, &format!("{path}{q}"));
                if path.starts_with("/v1/groups") {
                    assert!(reply.body.to_string().contains("\"s\""), "{path}{q}: {reply:?}");
                }
            }
        }
    }

    // Read-your-writes: whatever node acknowledged a write, every other node's next
    // linearizable read sees it.
    for i in 0..60u64 {
        let writer = &c.nodes[(i % 3) as usize];
        let id = format!("m{}", i % 7);
        let body = json!({"address": "10.0.0.2:80", "instance": format!("i{i}"),
                          "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}});
        let reply = c.put(writer, &format!("/v1/groups/ryw/members/{id}"), &body).await;
        assert!(matches!(reply.status, 200 | 201), "{reply:?}");
        let incarnation = &reply.body["member"]["incarnation"];
        for reader in c.nodes.iter().filter(|n| n.id != writer.id) {
            let member = c.get(reader, &format!("/v1/groups/ryw/members/{id}")).await;
            assert!(member.expect_ok(200, "read after write") >= reply.revision_header());
            assert_eq!(
                &member.body["incarnation"], incarnation,
                "node {} after write {i} on node {}",
                reader.id, writer.id
            );
            let view = c.get(reader, "/v1/groups/ryw").await;
            let seen = view.body["members"].as_array().unwrap().iter().find(|m| m["id"] == id.as_str()).cloned();
            assert_eq!(seen.map(|m| m["incarnation"].clone()).as_ref(), Some(incarnation));
        }
        if i % 10 == 9 {
            c.delete(writer, &format!("/v1/groups/ryw/members/{id}")).await.expect_ok(200, "leave");
            for reader in c.nodes.iter().filter(|n| n.id != writer.id) {
                c.get(reader, &format!("/v1/groups/ryw/members/{id}")).await.expect_error(
                    404,
                    "not_found",
                    "read after leave",
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_queries() {
    let c = Cluster::start(3).await;
    let (leader, follower) = (c.leader().await, c.follower().await);
    let f = c.node(follower);
    c.put(c.node(leader), "/v1/groups/b/members/m0", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join m0");

    // A change during the wait answers at once, with the new view; at either consistency.
    for (i, consistency) in ["", "&consistency=stale"].into_iter().enumerate() {
        let view = c.get(f, "/v1/groups/b").await;
        let n = view.body["revision"].as_u64().unwrap();
        let id = format!("m{}", i + 1);
        let (reply, took) = timed(async {
            let join = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                c.put(c.node(leader), &format!("/v1/groups/b/members/{id}"), &lease_member("10.0.0.2:80")).await
            };
            let path = format!("/v1/groups/b?index={n}&wait=5s{consistency}");
            let query = c.get(f, &path);
            let (joined, reply) = tokio::join!(join, query);
            joined.expect_ok(201, "concurrent join");
            reply
        })
        .await;
        assert!(reply.expect_ok(200, "blocking query") >= n);
        assert!(reply.body["revision"].as_u64().unwrap() > n, "{reply:?}");
        assert!(reply.body["members"].as_array().unwrap().iter().any(|m| m["id"] == id.as_str()), "{reply:?}");
        assert!(took < Duration::from_millis(4500), "a change ends the wait early, took {took:?}");
    }

    // No change: the same view after the wait.
    let before = c.get(f, "/v1/groups/b").await;
    let n = before.body["revision"].as_u64().unwrap();
    let wait = Duration::from_secs(2);
    let (reply, took) = timed(c.get(f, &format!("/v1/groups/b?index={n}&wait=2s"))).await;
    reply.expect_ok(200, "blocking query without change");
    assert_eq!(reply.body, before.body, "the same view after the wait");
    assert!(took >= wait.mul_f64(0.9) && took <= wait + Duration::from_secs(5), "took {took:?} for wait=2s");

    // An index already passed answers at once, even with the longest wait.
    let (reply, took) = timed(c.get(f, "/v1/groups/b?index=0&wait=5m")).await;
    reply.expect_ok(200, "index already passed");
    assert_eq!(reply.body, before.body);
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // A wait that is over at once answers the current view, on every node, every time.
    for node in &c.nodes {
        for _ in 0..20 {
            let reply = c.get(node, &format!("/v1/groups/b?index={n}&wait=0s")).await;
            reply.expect_ok(200, "wait=0s on a healthy cluster");
            assert_eq!(reply.body, before.body, "wait=0s answers the current view");
        }
    }

    // index=0 never blocks, not even on a group that does not exist (the client's first query,
    // as in Consul); a later index waits for the group to be created.
    let (reply, took) = timed(c.get(f, "/v1/groups/no-such-group?index=0")).await;
    reply.expect_error(404, "not_found", "index=0 on a group that does not exist");
    assert!(took < Duration::from_secs(10), "index=0 answered after {took:?}");
    let (reply, took) = timed(c.get(f, "/v1/groups/no-such-group?index=1&wait=1s")).await;
    reply.expect_error(404, "not_found", "a wait on a group that does not exist, ending without it");
    assert!(took >= Duration::from_millis(900), "it waited {took:?}");
    let later = format!("/v1/groups/later?index={n}&wait=10s");
    let (created, reply) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.put(c.node(leader), "/v1/groups/later/members/x", &lease_member("10.0.0.3:80")).await
        },
        c.get(f, &later)
    );
    let created = created.expect_ok(201, "join that creates the group");
    assert!(reply.expect_ok(200, "a wait on a group that gets created") >= created, "{reply:?}");
    assert_eq!(reply.body["members"][0]["id"], "x", "{reply:?}");

    for query in [
        "index=1&wait=6m",
        "index=1&wait=301s",
        "index=1&wait=abc",
        "index=1&wait=-1s",
        "index=abc&wait=1s",
        "index=-1&wait=1s",
    ] {
        c.get(f, &format!("/v1/groups/b?{query}")).await.expect_error(400, "invalid_argument", query);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams() {
    let c = Cluster::start(3).await;
    let (leader, follower) = (c.leader().await, c.follower().await);
    let (l, f) = (c.node(leader), c.node(follower));
    let before = c.put(l, "/v1/groups/other/members/x", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join");

    // A never-joined group: first an empty view at the revision read.
    let mut watch = Watch::open(f, "/v1/groups/w/watch").await;
    assert_eq!(watch.status, 200);
    let content_type = watch.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let first = watch.next_event(Duration::from_secs(10)).await;
    assert_eq!(first.event, "view");
    let first_revision: u64 = first.id.parse().expect("numeric event id");
    assert!(first_revision >= before, "the first view is linearizable: {first:?}");
    assert_eq!(first.data, json!({"group": "w", "revision": first_revision, "members": []}));
    let header: u64 = watch.headers["x-gm-revision"].to_str().unwrap().parse().unwrap();
    assert_eq!(header, first_revision, "X-GM-Revision of a watch is its first view's");
    assert_eq!(watch.headers["x-accel-buffering"], "no", "nginx must not buffer the stream");
    assert_eq!(watch.headers["cache-control"], "no-cache");

    // One event per change, whichever node takes the write; a no-op join sends none.
    let member = |address: &str, zone: &str| json!({"address": address, "metadata": {"zone": zone}, "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}});
    let steps: Vec<(Method, &str, Option<Value>, Vec<&str>)> = vec![
        (Method::PUT, "a", Some(member("10.0.0.1:80", "x")), vec!["a"]),
        (Method::PUT, "b", Some(member("10.0.0.2:80", "x")), vec!["a", "b"]),
        (Method::PUT, "a", Some(member("10.0.0.1:80", "y")), vec!["a", "b"]),
        (Method::PUT, "b", Some(member("10.0.0.2:80", "x")), vec![]),
        (Method::DELETE, "a", None, vec!["b"]),
        (Method::DELETE, "b", None, vec![]),
        (Method::PUT, "c", Some(member("10.0.0.3:80", "x")), vec!["c"]),
    ];
    let mut last = first_revision;
    for (i, (method, id, body, expect)) in steps.into_iter().enumerate() {
        let via = [l, f][i % 2];
        let reply = c.call(method.clone(), via, &format!("/v1/groups/w/members/{id}"), body.as_ref()).await;
        assert!(matches!(reply.status, 200 | 201), "{reply:?}");
        let noop = method == Method::PUT && expect.is_empty();
        if noop {
            continue;
        }
        let event = watch.next_event(Duration::from_secs(10)).await;
        let revision: u64 = event.id.parse().unwrap();
        assert_eq!(event.event, "view");
        assert_eq!(revision, reply.revision_header(), "the event of step {i} is at the write's revision");
        assert!(revision > last, "event ids increase");
        last = revision;
        assert_eq!(event.data["revision"], revision);
        assert_eq!(event.data["group"], "w");
        let ids: Vec<&str> =
            event.data["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, expect, "members after step {i}");
        if let Some(a) = event.data["members"].as_array().unwrap().iter().find(|m| m["id"] == "a") {
            assert_eq!(a, &c.get(l, "/v1/groups/w/members/a").await.body, "the event carries whole records");
        }
    }

    // A watch of an existing group starts with its current view, on the leader too.
    let mut watch = Watch::open(l, "/v1/groups/w/watch").await;
    let first = watch.next_event(Duration::from_secs(10)).await;
    let view = c.get(l, "/v1/groups/w").await;
    assert_eq!(first.data, view.body);
    assert_eq!(first.id, view.body["revision"].to_string());
}

/// `GET path` on `node` with `Accept-Encoding: accept`: the status, `Content-Encoding`, `Vary`
/// and the body as sent (not decoded).
async fn get_encoded(c: &Cluster, node: &common::NodeProc, path: &str, accept: &str) -> (u16, String, String, Vec<u8>) {
    let resp = c.http.get(node.url(path)).header("accept-encoding", accept).send().await.expect("GET");
    let header = |name: &str| resp.headers().get(name).map_or("", |v| v.to_str().unwrap()).to_owned();
    let (status, encoding, vary) = (resp.status().as_u16(), header("content-encoding"), header("vary"));
    (status, encoding, vary, resp.bytes().await.expect("body").to_vec())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).expect("valid gzip");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn large_answers_are_gzipped_for_clients_that_accept_it() {
    let c = Cluster::start(3).await;
    let (leader, follower) = (c.leader().await, c.follower().await);
    let (l, f) = (c.node(leader), c.node(follower));
    c.join_many(lease_joins("big", 0..100, 1), 16).await;
    c.put(l, "/v1/groups/small/members/x", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join");

    for node in [l, f] {
        let plain = c.get(node, "/v1/groups/big-g0").await;
        assert_eq!(plain.body["members"].as_array().unwrap().len(), 100);
        let (status, encoding, vary, body) = get_encoded(&c, node, "/v1/groups/big-g0", "br;q=1.0, gzip;q=0.8").await;
        assert_eq!((status, encoding.as_str()), (200, "gzip"), "a large view, gzip accepted");
        assert_eq!(vary, "accept-encoding");
        assert!(body.len() < 4 * 1024, "100 members gzipped to {} bytes", body.len());
        let unzipped: Value = serde_json::from_slice(&gunzip(&body)).expect("JSON inside");
        assert_eq!(unzipped, plain.body, "the same view, zipped or not");

        let (status, encoding, _, body) = get_encoded(&c, node, "/v1/groups/big-g0", "gzip;q=0, identity").await;
        assert_eq!((status, encoding.as_str()), (200, ""), "gzip refused by q=0");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), plain.body);

        let (status, encoding, _, _) = get_encoded(&c, node, "/v1/groups/small", "gzip").await;
        assert_eq!((status, encoding.as_str()), (200, ""), "a small view is not worth zipping");
        let (status, encoding, _, body) = get_encoded(&c, node, "/metrics", "gzip").await;
        assert_eq!((status, encoding.as_str()), (200, "gzip"), "large answers besides views are zipped too");
        assert!(String::from_utf8(gunzip(&body)).unwrap().contains("gm_raft_term"));
    }
    let (status, encoding, _, body) = get_encoded(&c, f, "/v1/groups/nope", "gzip").await;
    assert_eq!((status, encoding.as_str()), (404, ""));
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_stream_that_cannot_keep_up_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let c = Cluster::start(3).await;
    let l = c.node(c.leader().await);
    // Views of about 80 KB, so a few hundred changes fill any socket buffer.
    let padded = |address: &str, round: usize| {
        json!({"address": address, "metadata": {"pad": "x".repeat(200), "round": round.to_string()},
               "failure_detection": {"mode": "lease", "ttl_ms": 86_400_000}})
    };
    let joins = (0..250).map(|i| ("slow".to_owned(), format!("m-{i}"), padded("10.0.0.1:80", 0))).collect();
    c.join_many(joins, 16).await;

    // A client that opens the stream and then reads nothing.
    let mut stalled = tokio::net::TcpStream::connect(&l.api).await.expect("connect");
    let request = format!("GET /v1/groups/slow/watch HTTP/1.1\r\nHost: {}\r\n\r\n", l.api);
    stalled.write_all(request.as_bytes()).await.unwrap();
    // And one that keeps up.
    let mut reader = Watch::open(l, "/v1/groups/slow/watch").await;
    let first: u64 = reader.next_event(Duration::from_secs(10)).await.id.parse().unwrap();

    // The reader sees every change, in order.
    let changes = 400;
    let mut last = first;
    for round in 1..=changes {
        let id = format!("m-{}", round % 250);
        c.put(l, &format!("/v1/groups/slow/members/{id}"), &padded("10.0.0.1:80", round))
            .await
            .expect_ok(200, "re-join");
        let revision: u64 = reader.next_event(Duration::from_secs(30)).await.id.parse().unwrap();
        assert_eq!(revision, last + 1, "one event per change");
        last = revision;
    }
    // The stalled one was closed: reading now finds the end of the stream (the last chunk of
    // the chunked body) after what the buffers held, well short of every change.
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = vec![0; 64 * 1024];
        while !received.ends_with(b"\r\n0\r\n\r\n") {
            match stalled.read(&mut buf).await.expect("read") {
                0 => break,
                n => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a stalled stream is closed, not kept ({} bytes read)", received.len());
    let events = received.windows(12).filter(|w| w == b"event: view\n").count();
    assert!(events < changes, "the stalled stream got {events} of {changes} changes before it was closed");
    assert!(c.log_text(l.id).contains("closing a watch stream that fell behind"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_watch_stream_sends_a_keep_alive_15_s_after_it_last_sent_anything() {
    use futures::StreamExt;

    let c = Cluster::start(3).await;
    let l = c.node(c.leader().await);
    let resp = reqwest::Client::new().get(l.url("/v1/groups/quiet/watch")).send().await.expect("watch");
    let mut chunks = resp.bytes_stream();
    // The chunks as they arrive, with when: a keep-alive is a frame of its own, `:` and a blank
    // line, and nothing else is sent on a stream this quiet.
    let mut next = async || {
        let chunk = tokio::time::timeout(Duration::from_secs(60), chunks.next()).await;
        let chunk = chunk.expect("something within 60 s").expect("the stream goes on").expect("readable");
        (String::from_utf8_lossy(&chunk).into_owned(), std::time::Instant::now())
    };
    let mut text = String::new();
    while !text.contains("event: view") {
        text += &next().await.0;
    }
    let (keep_alive, keep_alive_at) = next().await;
    assert_eq!(keep_alive, ":\n\n", "a keep-alive, after the first view and nothing else");

    // A view sent moves the next keep-alive to 15 s after it. (A later one is fine on a slow
    // machine; an earlier one is a timer that was not moved, or that fired and stayed due.)
    c.put(l, "/v1/groups/quiet/members/a", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join");
    let (view, view_at) = next().await;
    assert!(view.contains("event: view"), "the change, not a keep-alive: {view:?}");
    assert!(view_at.duration_since(keep_alive_at) < Duration::from_secs(10), "the change came at once");
    let (next_keep_alive, next_keep_alive_at) = next().await;
    assert_eq!(next_keep_alive, ":\n\n");
    let quiet = next_keep_alive_at.duration_since(view_at);
    assert!(quiet >= Duration::from_secs(12), "a keep-alive only {quiet:?} after the view");
}

/// One request of the bad-input table and the error it must get.
struct BadInput {
    what: String,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn bad(what: impl Into<String>, method: Method, path: impl Into<String>, status: u16, code: &'static str) -> BadInput {
    BadInput { what: what.into(), method, path: path.into(), content_type: None, body: None, status, code }
}

/// A join of `body` to `g/m` that must be rejected as an invalid argument.
fn bad_join(what: impl Into<String>, body: Value) -> BadInput {
    bad_join_raw(what, "application/json", body.to_string().into_bytes(), 400, "invalid_argument")
}

fn bad_join_raw(
    what: impl Into<String>,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
) -> BadInput {
    BadInput {
        content_type: Some(content_type),
        body: Some(body),
        ..bad(what, Method::PUT, "/v1/groups/g/members/m", status, code)
    }
}

fn bad_inputs() -> Vec<BadInput> {
    use Method as M;
    let ok_body = lease_member("10.0.0.1:80");
    let mut cases = Vec::new();
    let long_group = "a".repeat(64);
    for group in ["Orders", "-a", ".a", &long_group, "a%20b", "%C3%A9"] {
        let what = format!("group name {group:?}");
        cases.push(BadInput {
            content_type: Some("application/json"),
            body: Some(ok_body.to_string().into_bytes()),
            ..bad(&what, M::PUT, format!("/v1/groups/{group}/members/m"), 400, "invalid_argument")
        });
        cases.push(bad(&what, M::GET, format!("/v1/groups/{group}"), 400, "invalid_argument"));
        cases.push(bad(&what, M::GET, format!("/v1/groups/{group}/members/m"), 400, "invalid_argument"));
        cases.push(bad(&what, M::DELETE, format!("/v1/groups/{group}/members/m"), 400, "invalid_argument"));
        cases.push(bad(&what, M::GET, format!("/v1/groups/{group}/watch"), 400, "invalid_argument"));
        cases.push(bad(&what, M::POST, format!("/v1/groups/{group}/members/m/heartbeat"), 400, "invalid_argument"));
    }
    cases.push(BadInput {
        content_type: Some("application/json"),
        body: Some(ok_body.to_string().into_bytes()),
        ..bad("empty group segment", M::PUT, "/v1/groups//members/m", 400, "invalid_argument")
    });
    let long_id = "a".repeat(129);
    for id in [long_id.as_str(), ":a", "%20", "a%20b", "-a", "a%2Fb"] {
        let what = format!("member id {id:?}");
        cases.push(BadInput {
            content_type: Some("application/json"),
            body: Some(ok_body.to_string().into_bytes()),
            ..bad(&what, M::PUT, format!("/v1/groups/g/members/{id}"), 400, "invalid_argument")
        });
        cases.push(bad(&what, M::GET, format!("/v1/groups/g/members/{id}"), 400, "invalid_argument"));
        cases.push(bad(&what, M::DELETE, format!("/v1/groups/g/members/{id}"), 400, "invalid_argument"));
        cases.push(bad(&what, M::POST, format!("/v1/groups/g/members/{id}/heartbeat"), 400, "invalid_argument"));
    }
    for address in
        ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "999.1.1.1:80", "[zz::1]:80", "http://x:80", "", ":80", "a b:80"]
    {
        cases.push(bad_join(format!("address {address:?}"), json!({"address": address})));
    }
    let seventeen: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let base = |extra: Value| {
        let mut body = json!({"address": "10.0.0.1:80"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    cases.push(bad_join("17 metadata keys", base(json!({"metadata": seventeen}))));
    cases.push(bad_join("metadata key of 64 chars", base(json!({"metadata": {"k".repeat(64): "v"}}))));
    cases.push(bad_join("metadata value of 1025 bytes", base(json!({"metadata": {"k": "v".repeat(1025)}}))));
    cases.push(bad_join("metadata value not a string", base(json!({"metadata": {"k": 1}}))));
    cases.push(bad_join("metadata not a map", base(json!({"metadata": ["k"]}))));
    cases.push(bad_join("ttl_ms 499", base(json!({"failure_detection": {"mode": "lease", "ttl_ms": 499}}))));
    cases.push(bad_join(
        "ttl_ms 86400001",
        base(json!({"failure_detection": {"mode": "lease", "ttl_ms": 86_400_001u64}})),
    ));
    cases.push(bad_join("ttl_ms negative", base(json!({"failure_detection": {"mode": "lease", "ttl_ms": -1}}))));
    cases.push(bad_join("unknown mode", base(json!({"failure_detection": {"mode": "push"}}))));
    cases.push(bad_join("no mode", base(json!({"failure_detection": {"path": "/x"}}))));
    cases.push(bad_join(
        "probe path without '/'",
        base(json!({"failure_detection": {"mode": "probe", "path": "health"}})),
    ));
    cases.push(bad_join("instance empty", base(json!({"instance": ""}))));
    cases.push(bad_join("instance 65 chars", base(json!({"instance": "x".repeat(65)}))));
    cases.push(bad_join("instance with a space", base(json!({"instance": "a b"}))));
    cases.push(bad_join("instance not a string", base(json!({"instance": 7}))));
    cases.push(bad_join("address not a string", json!({"address": 80})));
    cases.push(bad_join("body missing address", json!({"metadata": {}})));
    cases.push(bad_join("body JSON array", json!([])));
    cases.push(bad_join("body an array of the fields in order", json!(["10.1.2.3:9021", {}, null, {"mode": "probe"}])));
    cases.push(bad_join("body JSON null", Value::Null));
    cases.push(bad_join_raw(
        "body not JSON",
        "application/json",
        b"address=10.0.0.1:80".to_vec(),
        400,
        "invalid_argument",
    ));
    cases.push(bad_join_raw("empty body", "application/json", Vec::new(), 400, "invalid_argument"));
    cases.push(bad_join_raw(
        "body of 64 KiB + 1",
        "application/json",
        padded_join(64 * 1024 + 1),
        413,
        "payload_too_large",
    ));
    cases.push(bad_join_raw("body of 1 MiB", "application/json", padded_join(1024 * 1024), 413, "payload_too_large"));
    cases.push(bad_join_raw(
        "text/plain",
        "text/plain",
        ok_body.to_string().into_bytes(),
        415,
        "unsupported_media_type",
    ));
    cases.push(bad_join_raw(
        "application/jsonx",
        "application/jsonx",
        ok_body.to_string().into_bytes(),
        415,
        "unsupported_media_type",
    ));
    cases.push(BadInput {
        body: Some(ok_body.to_string().into_bytes()),
        ..bad("no Content-Type", M::PUT, "/v1/groups/g/members/m", 415, "unsupported_media_type")
    });
    for path in [
        "/v1/groups?consistency=strong",
        "/v1/groups/g?consistency=STALE",
        "/v1/groups/g/members/m?consistency=",
        "/v1/cluster?consistency=x",
    ] {
        cases.push(bad(format!("bad consistency {path}"), M::GET, path, 400, "invalid_argument"));
    }
    // Typos are errors, not silently dropped.
    cases.push(bad_join("unknown field meta", base(json!({"meta": {"zone": "a"}}))));
    cases.push(bad_join(
        "unknown field in failure_detection",
        base(json!({"failure_detection": {"mode": "probe", "pth": "/x"}})),
    ));
    cases
        .push(bad_join("unknown field in a lease", base(json!({"failure_detection": {"mode": "lease", "ttl": 5000}}))));
    for (method, path) in [
        (M::GET, "/v1/groups?consitency=stale"),
        (M::GET, "/v1/groups/g?idx=3"),
        (M::GET, "/v1/groups/g?index=1&wiat=1s"),
        (M::GET, "/v1/groups/g/members/m?index=1"),
        (M::GET, "/v1/groups/g/watch?index=1"),
        (M::GET, "/v1/cluster?verbose=1"),
        (M::DELETE, "/v1/groups/g/members/m?incarnaton=1"),
        (M::POST, "/v1/groups/g/members/m/heartbeat?ttl_ms=1000"),
    ] {
        cases.push(bad(format!("unknown parameter {method} {path}"), method, path, 400, "invalid_argument"));
    }
    cases.push(BadInput {
        content_type: Some("application/json"),
        body: Some(ok_body.to_string().into_bytes()),
        ..bad("unknown parameter on a join", M::PUT, "/v1/groups/g/members/m?mode=lease", 400, "invalid_argument")
    });
    for path in ["/nope", "/v1/nope", "/v2/groups", "/v1/groups/g/members", "/v1/groups/g/members/m/extra"] {
        cases.push(bad(format!("unknown path {path}"), M::GET, path, 404, "not_found"));
    }
    for (method, path) in [
        (M::POST, "/v1/groups"),
        (M::DELETE, "/v1/groups/g"),
        (M::PUT, "/v1/cluster"),
        (M::GET, "/v1/groups/g/members/m/heartbeat"),
        (M::POST, "/v1/groups/g/members/m"),
    ] {
        cases.push(bad(format!("{method} {path}"), method, path, 405, "method_not_allowed"));
    }
    for n in ["abc", "-1", "1.5", "", "99999999999999999999999"] {
        cases.push(bad(
            format!("incarnation={n}"),
            M::DELETE,
            format!("/v1/groups/g/members/m?incarnation={n}"),
            400,
            "invalid_argument",
        ));
    }
    cases
}

/// A valid join body padded with spaces to exactly `len` bytes.
fn padded_join(len: usize) -> Vec<u8> {
    let head = br#"{"address":"10.0.0.1:80","failure_detection":{"mode":"lease","ttl_ms":86400000}"#;
    let mut body = head.to_vec();
    body.resize(len - 1, b' ');
    body.push(b'}');
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_contract_errors_and_harm_nothing() {
    let mut c = Cluster::start(3).await;
    let (leader, follower) = (c.leader().await, c.follower().await);
    let mut failures = Vec::new();
    for (i, case) in bad_inputs().into_iter().enumerate() {
        let node = c.node([follower, leader][i % 2]);
        let mut req = c.http.request(case.method.clone(), node.url(&case.path));
        if let Some(ct) = case.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(body) = case.body {
            req = req.body(body);
        }
        let reply = c.send(req).await.unwrap_or_else(|e| panic!("{}: {e}", case.what));
        if let Some(wrong) = reply.error_mismatch(case.status, case.code) {
            failures.push(format!("{} ({} {}) on node {}: {wrong}", case.what, case.method, case.path, node.id));
        }
    }

    // A body longer than 64 KiB without a Content-Length (chunked) is refused too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        padded_join(64 * 1024 + 1).chunks(4096).map(|c| Ok(c.to_vec())).collect();
    let req = c
        .http
        .put(c.node(follower).url("/v1/groups/g/members/m"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
    let reply = c.send(req).await.expect("chunked body");
    if let Some(wrong) = reply.error_mismatch(413, "payload_too_large") {
        failures.push(format!("chunked body of 64 KiB + 1: {wrong}"));
    }
    assert!(failures.is_empty(), "{} bad inputs got the wrong answer:\n{}", failures.len(), failures.join("\n"));

    // The messages say which field or parameter, and what a valid value is.
    let node = c.node(follower);
    for (method, path, body, says) in [
        (
            Method::PUT,
            "/v1/groups/g/members/m",
            Some(json!({"address": "10.0.0.1:80", "meta": {}})),
            "unknown field `meta`",
        ),
        (Method::GET, "/v1/groups?consitency=stale", None, "unknown parameter `consitency`"),
        (Method::GET, "/v1/groups/Orders_1", None, "1 to 63 characters of a-z, 0-9"),
        (Method::GET, "/v1/groups/g/members/-x", None, "starting with a letter or digit"),
        (Method::PUT, "/v1/groups/g/members/m", Some(json!({"address": "10.0.0.1"})), "a port from 1 to 65535"),
    ] {
        let reply = c.call(method.clone(), node, path, body.as_ref()).await;
        reply.expect_error(400, "invalid_argument", path);
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path}: {message:?} should say {says:?}");
    }

    let reply = c.get(node, "/v1/groups?consitency=stale").await;
    assert_eq!(
        reply.body["error"]["message"], "invalid query: unknown parameter `consitency`, expected `consistency`",
        "the parameter named once"
    );

    // The edges that are fine: exactly 64 KiB, a media type in another case with parameters.
    let node = c.node(follower);
    let reply = c
        .send(
            c.http
                .put(node.url("/v1/groups/g/members/edge"))
                .header("content-type", "application/json")
                .body(padded_join(64 * 1024)),
        )
        .await
        .unwrap();
    reply.expect_ok(201, "a body of exactly 64 KiB");
    let reply = c
        .send(
            c.http
                .put(node.url("/v1/groups/g/members/m"))
                .header("content-type", "Application/JSON; charset=utf-8")
                .body(lease_member("10.0.0.1:80").to_string()),
        )
        .await
        .unwrap();
    reply.expect_ok(201, "Application/JSON; charset=utf-8");

    // Nothing crashed and the cluster still works.
    assert_eq!(c.exited(), Vec::<u64>::new(), "no node exited");
    c.wait_ready_all().await;
    for node in &c.nodes {
        let id = format!("after-{}", node.id);
        c.put(node, &format!("/v1/groups/g/members/{id}"), &lease_member("10.0.0.9:80"))
            .await
            .expect_ok(201, "join after the table");
    }
    let view = c.get(c.node(leader), "/v1/groups/g").await;
    assert_eq!(view.body["members"].as_array().unwrap().len(), 5, "{view:?}");
}
