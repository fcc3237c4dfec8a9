//! Failure detection, end to end: probe-mode members that crash are removed on every node and
//! live ones stay; the members of a dead GM node are handed to live nodes, which really probe
//! them; a node cut off from members (a real one-sided network fault) evicts no one; leases
//! expire without heartbeats, last with them and survive a leader change; a re-joined member's new
//! incarnation is never removed for its old address; a paused node that resumes evicts no one.
//!
//! Members are fake: in-process HTTP servers (`common::members`). Every cluster runs with fast
//! failure detection ([`FAST`]); deadlines are generous and nothing asserts how fast a thing
//! happens, only that it does ("gone before a deadline") or does not ("still there after").

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::members::FakeMembers;
use common::partition::Isolation;
use common::{incarnations, poll, wait_for, Cluster, Consistency, Incarnations, MemberSet, NodeProc, DEADLINE};
use gm::member_server::Answer;

/// Probe every 200 ms, give up on one after 150 ms, suspect after 3 failures in a row.
const FAST: &[&str] = &["--probe-interval", "200ms", "--probe-timeout", "150ms", "--suspect-after", "3"];

/// Many suspect periods of [`FAST`] (3 probes, then the indirect check: under a second): a
/// false eviction would have happened within it.
const SEVERAL_SUSPECT_PERIODS: Duration = Duration::from_secs(5);

/// The join body of a probe-mode member at `address`.
fn probe_member(address: &str, instance: &str) -> Value {
    json!({"address": address, "instance": instance})
}

fn lease_member(ttl_ms: u64) -> Value {
    json!({"address": "10.0.0.7:7000", "failure_detection": {"mode": "lease", "ttl_ms": ttl_ms}})
}

fn member_path(group: &str, id: &str) -> String {
    format!("/v1/groups/{group}/members/{id}")
}

/// Every running node shows exactly `expected`, on a linearizable read and on a stale one.
async fn wait_everywhere(c: &Cluster, expected: &Incarnations) {
    for node in c.running() {
        c.wait_member_set(node, Consistency::Linearizable, expected).await;
        c.wait_member_set(node, Consistency::Stale, expected).await;
    }
}

/// For `how_long`, every running node keeps showing exactly `expected`: on stale reads always,
/// on linearizable reads whenever one can be served (an election may answer 503 meanwhile).
async fn assert_kept(c: &Cluster, expected: &Incarnations, how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < how_long {
        for node in c.running() {
            c.assert_member_set(node, Consistency::Stale, expected).await;
            if let Some(set) = c.member_set(node, Consistency::Linearizable).await {
                assert_eq!(
                    &incarnations(&set),
                    expected,
                    "node {} (linearizable) after {:?}",
                    node.id,
                    start.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `responsible_for` of every node as `node` reports it on a linearizable `/v1/cluster`.
async fn responsibility(c: &Cluster, node: &NodeProc) -> Option<BTreeMap<u64, u64>> {
    let (status, body) = c.get_json(node, "/v1/cluster").await.ok()?;
    (status == 200).then_some(())?;
    body["nodes"].as_array()?.iter().map(|n| Some((n["id"].as_u64()?, n["responsible_for"].as_u64()?))).collect()
}

/// Waits until every running node reports `responsible_for` adding up to `members` with `check`
/// true of the counts; returns the counts the last node reported.
async fn wait_responsibility(
    c: &Cluster,
    members: u64,
    what: &str,
    check: impl Fn(&BTreeMap<u64, u64>) -> bool,
) -> BTreeMap<u64, u64> {
    let mut last = BTreeMap::new();
    for node in c.running() {
        last = poll(&format!("{what} on node {}", node.id), || async {
            let counts = responsibility(c, node).await?;
            (counts.values().sum::<u64>() == members && check(&counts)).then_some(counts)
        })
        .await;
    }
    last
}

/// The members every running node reports with a responsible node in `live`; waits for it.
async fn wait_all_probed_by(c: &Cluster, live: &[u64]) -> MemberSet {
    let mut last = MemberSet::new();
    for node in c.running() {
        last = poll(&format!("every member probed by one of {live:?}, on node {}", node.id), || async {
            let set = c.member_set(node, Consistency::Linearizable).await?;
            set.values().all(|m| m.responsible_node.is_some_and(|n| live.contains(&n))).then_some(set)
        })
        .await;
    }
    last
}

/// The ids in `set` whose responsible node is `node`.
fn probed_by(set: &MemberSet, node: u64) -> Vec<(String, String)> {
    set.iter().filter(|(_, m)| m.responsible_node == Some(node)).map(|(k, _)| k.clone()).collect()
}

/// `gm_members_removed_total{reason="failed"}` summed over the running nodes: the removals for failure
/// they made.
async fn failed_evictions(c: &Cluster) -> f64 {
    let mut sum = 0.0;
    for node in c.running() {
        sum += c.metric(node, "gm_members_removed_total{reason=\"failed\"}").await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread")]
async fn crashed_members_are_removed_everywhere_and_live_ones_stay() {
    let c = Cluster::start_with(3, FAST).await;
    let mut own = FakeMembers::start_many(5).await;
    let shared = FakeMembers::start().await;
    let mut joins: Vec<(String, String, Value)> = own
        .iter()
        .enumerate()
        .map(|(i, s)| ("fd-own".to_owned(), format!("own-{i}"), probe_member(&s.address, "one")))
        .collect();
    // One member with its own probe path.
    joins[4].2["failure_detection"] = json!({"mode": "probe", "path": "/custom/alive"});
    // Five members on one address, in two groups.
    for i in 0..5 {
        let group = if i < 3 { "fd-shared" } else { "fd-shared-2" };
        joins.push((group.to_owned(), format!("s-{i}"), shared.join_body()));
    }
    let mut expected = c.join_many(joins, 4).await;
    wait_everywhere(&c, &expected).await;

    // Each member is probed at its path, with its group, id and incarnation.
    for ((group, id), &incarnation) in &expected {
        let server = match id.strip_prefix("own-") {
            Some(i) => &own[i.parse::<usize>().unwrap()],
            None => &shared,
        };
        let probe = server.wait_probe(group, id, incarnation).await;
        let path = if id == "own-4" { "/custom/alive" } else { "/gm/heartbeat" };
        assert_eq!(probe.path, path, "probe of {group}/{id}");
    }
    // And nothing else was sent: every probe at a member's own address names that member.
    for (i, server) in own.iter().enumerate() {
        let key = ("fd-own".to_owned(), format!("own-{i}"));
        for probe in server.probes() {
            assert!(probe.is_for(&key.0, &key.1, expected[&key]), "probe at {}'s address: {probe:?}", key.1);
        }
    }
    for probe in shared.probes() {
        let key = (probe.group.clone().unwrap_or_default(), probe.member.clone().unwrap_or_default());
        let incarnation = expected.get(&key).copied();
        assert!(incarnation.is_some_and(|n| probe.is_for(&key.0, &key.1, n)), "probe at the shared address: {probe:?}");
    }

    // Two members crash; one of the five at the shared address fails while its neighbours answer.
    own[0].crash().await;
    own[1].crash().await;
    shared.fail("s-1");
    for key in [("fd-own", "own-0"), ("fd-own", "own-1"), ("fd-shared", "s-1")] {
        expected.remove(&(key.0.to_owned(), key.1.to_owned()));
    }
    wait_everywhere(&c, &expected).await;
    for node in c.running() {
        for (group, id) in [("fd-own", "own-0"), ("fd-shared", "s-1")] {
            c.get(node, &member_path(group, id)).await.expect_error(404, "not_found", "a removed member");
        }
    }

    // The live ones stay, and are still probed all along.
    let before: Vec<u64> = (2..5).map(|i| own[i].probe_count(&format!("own-{i}"))).collect();
    let shared_before = shared.probe_count("s-0");
    assert_kept(&c, &expected, SEVERAL_SUSPECT_PERIODS).await;
    for (k, i) in (2..5).enumerate() {
        own[i].wait_more_probes(&format!("own-{i}"), before[k], 3).await;
    }
    shared.wait_more_probes("s-0", shared_before, 3).await;
    assert!(shared.probes().iter().any(|p| p.member.as_deref() == Some("s-1") && p.answer == Answer::Fail));
    assert_eq!(failed_evictions(&c).await, 3.0, "the nodes count the three members they removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_a_dead_node_are_handed_over_and_probed_by_live_nodes() {
    const MEMBERS: usize = 30;
    let mut c = Cluster::start_with(3, FAST).await;
    let mut servers = FakeMembers::start_many(MEMBERS).await;
    let joins = (0..MEMBERS)
        .map(|i| (format!("ho-g{}", i % 3), format!("m-{i}"), probe_member(&servers[i].address, "one")))
        .collect();
    let mut expected = c.join_many(joins, 4).await;
    let server_of = |id: &str| id.strip_prefix("m-").and_then(|i| i.parse::<usize>().ok()).expect("m-N");
    let counts = wait_responsibility(&c, MEMBERS as u64, "all members probed", |_| true).await;
    wait_everywhere(&c, &expected).await;

    // Kill the leader (so the handover also waits for an election), if it probes some members.
    let dead = c.leader().await;
    assert!(counts[&dead] > 0, "with {MEMBERS} members the leader probes some: {counts:?}");
    let set = c.member_set(c.node(dead), Consistency::Linearizable).await.expect("member records");
    let orphans = probed_by(&set, dead);
    c.kill(dead).await;
    let live: Vec<u64> = c.running().map(|n| n.id).collect();

    // Every member gets a live responsible node; the dead node reads 0; the sum is unchanged.
    let set = wait_all_probed_by(&c, &live).await;
    let counts = wait_responsibility(&c, MEMBERS as u64, "the dead node's members handed over", |counts| {
        counts.get(&dead) == Some(&0) && live.iter().all(|n| counts.contains_key(n))
    })
    .await;
    assert_eq!(incarnations(&set), expected, "a handover changes no incarnation");
    eprintln!("before: {} members on node {dead}; after: {counts:?}", orphans.len());

    // The new node really probes: a handed-over member that crashes is removed.
    let (group, id) = orphans[0].clone();
    servers[server_of(&id)].crash().await;
    expected.remove(&(group, id));
    wait_everywhere(&c, &expected).await;
    assert_kept(&c, &expected, Duration::from_secs(2)).await;

    // The node comes back and gets members back, which it probes.
    c.spawn(dead);
    c.wait_ready_all().await;
    let left = MEMBERS as u64 - 1;
    wait_responsibility(&c, left, "the restarted node probing again", |counts| counts.get(&dead) > Some(&0)).await;
    let set = wait_all_probed_by(&c, &[1, 2, 3]).await;
    wait_everywhere(&c, &expected).await;
    let (group, id) = probed_by(&set, dead)[0].clone();
    servers[server_of(&id)].crash().await;
    expected.remove(&(group, id));
    wait_everywhere(&c, &expected).await;
    assert_kept(&c, &expected, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_members_evicts_none_of_them() {
    const MEMBERS: usize = 12;
    let c = Cluster::start_with(3, FAST).await;
    // Before any member joins, so that every probe socket a node opens is in its cgroup.
    let mut isolations: Vec<Isolation> = c.nodes.iter().map(Isolation::enclose).collect();
    let mut servers = FakeMembers::start_many(MEMBERS).await;
    let joins = (0..MEMBERS).map(|i| ("cut".to_owned(), format!("m-{i}"), probe_member(&servers[i].address, "one")));
    let mut expected = c.join_many(joins.collect(), 4).await;
    wait_everywhere(&c, &expected).await;
    for ((group, id), &incarnation) in &expected {
        servers[id[2..].parse::<usize>().unwrap()].wait_probe(group, id, incarnation).await;
    }

    // Cut the node that probes the most members off from every member address.
    let set = c.member_set(c.node(1), Consistency::Linearizable).await.expect("member records");
    let cut = (1..=3).max_by_key(|&n| probed_by(&set, n).len()).unwrap();
    let its_members = probed_by(&set, cut);
    assert!(!its_members.is_empty(), "node {cut} probes some of {MEMBERS} members");
    let node = c.node(cut);
    let suspected_before = c.metric(node, "gm_suspicions_refuted_total").await;
    let isolation = &mut isolations[(cut - 1) as usize];
    for server in &servers {
        isolation.cut_off(&server.address);
    }

    // Nobody is evicted, over many suspect periods.
    assert_kept(&c, &expected, SEVERAL_SUSPECT_PERIODS).await;
    // And the fault was real: the node's probes failed, it suspected each of its members and
    // heard from the other nodes that they are alive.
    let suspected = c.metric(node, "gm_suspicions_refuted_total").await - suspected_before;
    assert!(
        suspected >= its_members.len() as f64,
        "node {cut} cut off from its {} members, yet only {suspected} indirect probes found one alive",
        its_members.len()
    );

    // Still cut off, one of its members really crashes: the others confirm, and it is removed.
    let (group, id) = its_members[0].clone();
    servers[id[2..].parse::<usize>().unwrap()].crash().await;
    expected.remove(&(group, id));
    wait_everywhere(&c, &expected).await;
    assert_kept(&c, &expected, Duration::from_secs(2)).await;

    // Healed: its probes succeed again and everyone stays.
    isolations[(cut - 1) as usize].heal();
    let succeeded = c.metric(node, "gm_probes_total{result=\"ok\"}").await;
    wait_for(&format!("node {cut} reaching its members again"), || async {
        c.metric(node, "gm_probes_total{result=\"ok\"}").await >= succeeded + 3.0 * its_members.len() as f64
    })
    .await;
    assert_kept(&c, &expected, Duration::from_secs(2)).await;
}

/// A client task that runs one round every `every` and records what each round found, until
/// stopped: a member heartbeating, a reader polling a group.
struct Periodic<T> {
    results: Arc<Mutex<Vec<T>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl<T: Clone + Send + 'static> Periodic<T> {
    /// Runs `round(n)` for n = 0, 1, ... every `every`.
    fn start<F, Fut>(every: Duration, round: F) -> Periodic<T>
    where
        F: Fn(usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send,
    {
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (log, token) = (Arc::clone(&results), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for n in 0.. {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let found = round(n).await;
                log.lock().unwrap().push(found);
            }
        });
        Periodic { results, stop, task }
    }

    fn results(&self) -> Vec<T> {
        self.results.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<T> {
        self.stop.cancel();
        let _ = self.task.await;
        self.results.lock().unwrap().clone()
    }
}

/// A member that heartbeats through nodes in turn every `every`, recording each answer's status
/// (`0`: no node answered).
struct Heartbeats(Periodic<u16>);

impl Heartbeats {
    /// Heartbeats through every node of the cluster.
    fn start(c: &Cluster, group: &str, id: &str, every: Duration) -> Heartbeats {
        Self::start_via(c, &c.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), group, id, every)
    }

    /// Heartbeats through the nodes `via` only.
    fn start_via(c: &Cluster, via: &[u64], group: &str, id: &str, every: Duration) -> Heartbeats {
        let urls: Vec<String> =
            via.iter().map(|&n| c.node(n).url(&format!("{}/heartbeat", member_path(group, id)))).collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
        Heartbeats(Periodic::start(every, move |round| {
            let (urls, http) = (urls.clone(), http.clone());
            async move {
                // A dead node refuses, a node without a leader answers 503: try the next one.
                let mut status = 0;
                for k in 0..urls.len() {
                    if let Ok(resp) = http.post(&urls[(round + k) % urls.len()]).send().await {
                        status = resp.status().as_u16();
                        if status == 200 || status == 404 || status == 409 {
                            break;
                        }
                    }
                }
                status
            }
        }))
    }

    fn answers(&self) -> Vec<u16> {
        self.0.results()
    }

    fn renewed(&self) -> usize {
        self.answers().iter().filter(|&&s| s == 200).count()
    }

    async fn stop(self) -> Vec<u16> {
        self.0.stop().await
    }
}

/// Whether `node` has `group`/`id`: `Some(true)` 200, `Some(false)` 404, `None` no answer (503).
async fn has_member(c: &Cluster, node: &NodeProc, group: &str, id: &str, consistency: Consistency) -> Option<bool> {
    let q = if consistency == Consistency::Stale { "?consistency=stale" } else { "" };
    match c.get_json(node, &format!("{}{q}", member_path(group, id))).await {
        Ok((200, _)) => Some(true),
        Ok((404, _)) => Some(false),
        _ => None,
    }
}

/// Waits until no running node has `group`/`id`, on linearizable and stale reads.
async fn wait_gone_everywhere(c: &Cluster, group: &str, id: &str) {
    for node in c.running() {
        for consistency in [Consistency::Linearizable, Consistency::Stale] {
            wait_for(&format!("{group}/{id} gone on node {} ({consistency:?})", node.id), || async {
                has_member(c, node, group, id, consistency).await == Some(false)
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_expire_without_heartbeats_and_last_with_them() {
    let c = Cluster::start_with(3, FAST).await;
    let follower = c.node(c.follower().await);

    // No heartbeat: still there well before the TTL, gone after it.
    let joined = Instant::now();
    let reply = c.put(follower, &member_path("lease", "quiet"), &lease_member(1000)).await;
    reply.expect_ok(201, "join a lease member");
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(joined.elapsed())).await;
    for node in c.running() {
        assert_eq!(has_member(&c, node, "lease", "quiet", Consistency::Linearizable).await, Some(true), "at ~300 ms");
    }
    wait_gone_everywhere(&c, "lease", "quiet").await;

    // Heartbeats every 300 ms keep a 1 s lease for several TTLs.
    let reply = c.put(follower, &member_path("lease", "beating"), &lease_member(1000)).await;
    reply.expect_ok(201, "join a lease member");
    let first = reply.body["member"]["incarnation"].as_u64().expect("incarnation");
    let beats = Heartbeats::start(&c, "lease", "beating", Duration::from_millis(300));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for node in c.running() {
            // Linearizable: a stale read may not show the join yet, and must not pass for removal.
            let present = has_member(&c, node, "lease", "beating", Consistency::Linearizable).await;
            assert_eq!(
                present,
                Some(true),
                "a heartbeating lease member on node {} after {:?}",
                node.id,
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answers = beats.stop().await;
    assert!(answers.len() >= 10 && answers.iter().all(|&s| s == 200), "heartbeats: {answers:?}");

    // Without them it goes; a heartbeat then is 404, and the member joins again, afresh.
    wait_gone_everywhere(&c, "lease", "beating").await;
    let path = format!("{}/heartbeat", member_path("lease", "beating"));
    for node in c.running() {
        c.call(Method::POST, node, &path, None).await.expect_error(404, "not_found", "heartbeat of a removed member");
    }
    let reply = c.put(follower, &member_path("lease", "beating"), &lease_member(1000)).await;
    reply.expect_ok(201, "join again after expiry");
    let again = reply.body["member"]["incarnation"].as_u64().expect("incarnation");
    assert!(again > first, "a new incarnation after removal: {again} after {first}");
    c.call(Method::POST, follower, &path, None).await.expect_ok(200, "heartbeat after joining again");

    // A probe-mode member does not heartbeat.
    let server = FakeMembers::start().await;
    c.put(follower, &member_path("lease", "probed"), &server.join_body()).await.expect_ok(201, "join a probe member");
    let path = format!("{}/heartbeat", member_path("lease", "probed"));
    for node in c.running() {
        c.call(Method::POST, node, &path, None).await.expect_error(409, "conflict", "heartbeat of a probe member");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeating_lease_survives_a_leader_change() {
    let mut c = Cluster::start_with(3, FAST).await;
    let reply = c.put(c.node(c.follower().await), &member_path("lease-lc", "m"), &lease_member(3000)).await;
    reply.expect_ok(201, "join a lease member");
    let beats = Heartbeats::start(&c, "lease-lc", "m", Duration::from_millis(300));
    wait_for("a few heartbeats renewed", || async { beats.renewed() >= 3 }).await;

    let old = c.leader().await;
    c.kill(old).await;
    let renewed_before = beats.renewed();
    // About two TTLs: never removed on any survivor.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        for node in c.running() {
            for consistency in [Consistency::Stale, Consistency::Linearizable] {
                let present = has_member(&c, node, "lease-lc", "m", consistency).await;
                assert_ne!(
                    present,
                    Some(false),
                    "removed on node {} ({consistency:?}) {:?} after the leader's kill; heartbeats: {:?}",
                    node.id,
                    start.elapsed(),
                    beats.answers()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new = c.leader().await;
    assert_ne!(new, old);
    assert!(beats.renewed() > renewed_before + 5, "the new leader renews the lease: {:?}", beats.answers());
    let answers = beats.stop().await;
    assert!(!answers.contains(&404), "no heartbeat found the member gone: {answers:?}");

    // And the new leader expires it once the heartbeats stop.
    wait_gone_everywhere(&c, "lease-lc", "m").await;
}

/// A frozen leader (SIGSTOP: a long GC pause, a stuck disk) keeps its sockets open and answers
/// nothing. Lease members that heartbeat through the followers, while a client reads their group
/// from the followers every 50 ms, must never be removed: the new leader answers heartbeats at
/// once and gives every lease a full TTL. Several TTLs, each with a fresh leader frozen.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_leader_costs_no_live_lease_member_its_lease() {
    let c = Cluster::start_with(3, FAST).await;
    for ttl_ms in [1000u64, 2000, 3000] {
        let group = format!("frozen-{ttl_ms}");
        let old = c.leader().await;
        let followers: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|&id| id != old).collect();
        let mut beats = Vec::new();
        for id in ["a", "b"] {
            c.join_retrying(&group, id, lease_member(ttl_ms)).await;
            beats.push(Heartbeats::start_via(&c, &followers, &group, id, Duration::from_millis(ttl_ms / 6)));
        }
        wait_for("a few heartbeats renewed", || async { beats.iter().all(|b| b.renewed() >= 3) }).await;
        let reads = group_reads(&c, &followers, &group, Duration::from_millis(50));

        c.pause(old, true);
        let new = c.leader().await;
        assert_ne!(new, old, "a new leader while node {old} is frozen");
        // Two TTLs after the new leader took office: every lease would have run out by then.
        tokio::time::sleep(Duration::from_millis(2 * ttl_ms)).await;
        let views = reads.stop().await;
        c.pause(old, false);

        for (id, b) in ["a", "b"].iter().zip(beats) {
            let answers = b.stop().await;
            assert!(!answers.contains(&404), "ttl {ttl_ms}: a heartbeat of {id} found it gone: {answers:?}");
        }
        let served = views.iter().filter(|v| v.is_some()).count();
        assert!(
            served >= 10,
            "ttl {ttl_ms}: the followers served {served} reads of {} while {old} was frozen",
            views.len()
        );
        for view in views.iter().flatten() {
            assert_eq!(view, &["a", "b"], "ttl {ttl_ms}: a live lease member was removed while node {old} was frozen");
        }
        c.wait_ready_all().await;
    }
}

/// A client that reads a group's view from nodes `via` in turn every `every`, recording the
/// member ids of each view served (`None`: 503 or no answer; a group gone reads as no members).
fn group_reads(c: &Cluster, via: &[u64], group: &str, every: Duration) -> Periodic<Option<Vec<String>>> {
    let urls: Vec<String> = via.iter().map(|&n| c.node(n).url(&format!("/v1/groups/{group}"))).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    Periodic::start(every, move |round| {
        let (url, http) = (urls[round % urls.len()].clone(), http.clone());
        async move {
            match http.get(&url).send().await {
                Ok(resp) if resp.status() == 404 => Some(Vec::new()),
                Ok(resp) if resp.status() == 200 => resp.json::<Value>().await.ok().map(|v| {
                    let members = v["members"].as_array().into_iter().flatten();
                    members.filter_map(|m| m["id"].as_str()).map(str::to_owned).collect()
                }),
                _ => None,
            }
        }
    })
}

/// Joins `group`/`id` through the leader; returns the record.
async fn join_on_leader(c: &Cluster, group: &str, id: &str, body: &Value, status: u16) -> Value {
    let leader = c.node(c.leader().await);
    let reply = c.put(leader, &member_path(group, id), body).await;
    reply.expect_ok(status, &format!("join {group}/{id}"));
    reply.body["member"].clone()
}

/// How many probes of `id` at `server` were left unanswered on purpose.
fn hung(server: &FakeMembers, id: &str) -> usize {
    server.probes().iter().filter(|p| p.member.as_deref() == Some(id) && p.answer == Answer::Hang).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_incarnation_is_never_removed_for_its_old_address() {
    let c = Cluster::start_with(3, FAST).await;
    let mut expected = Incarnations::new();

    // The old address refuses: the member restarts elsewhere before it is found dead.
    let (mut old, new) = (FakeMembers::start().await, FakeMembers::start().await);
    let first = join_on_leader(&c, "inc", "refused", &probe_member(&old.address, "a"), 201).await;
    let first = first["incarnation"].as_u64().unwrap();
    old.wait_probe("inc", "refused", first).await;
    old.crash().await;
    let second = join_on_leader(&c, "inc", "refused", &probe_member(&new.address, "b"), 200).await;
    assert_eq!(second["incarnation"], first + 1, "{second}");
    new.wait_probe("inc", "refused", first + 1).await;
    expected.insert(("inc".into(), "refused".into()), first + 1);

    // The old address is a black hole: the member restarts elsewhere while the old incarnation
    // is being judged (its prober has given up and asks the other nodes, who wait for it too).
    let (black_hole, moved) = (FakeMembers::start().await, FakeMembers::start().await);
    let first_b = join_on_leader(&c, "inc", "judged", &probe_member(&black_hole.address, "a"), 201).await;
    let first_b = first_b["incarnation"].as_u64().unwrap();
    black_hole.wait_probe("inc", "judged", first_b).await;
    black_hole.hang("judged");
    // Three probes by its prober, then the first indirect probe: it is being judged.
    let start = Instant::now();
    while hung(&black_hole, "judged") < 4 {
        assert!(start.elapsed() < DEADLINE, "no indirect probe of a suspect: {:?}", black_hole.probes());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second_b = join_on_leader(&c, "inc", "judged", &probe_member(&moved.address, "b"), 200).await;
    assert_eq!(second_b["incarnation"], first_b + 1, "{second_b}");
    expected.insert(("inc".into(), "judged".into()), first_b + 1);

    // A late leave about an old incarnation is refused and changes nothing.
    let leader = c.node(c.leader().await);
    for (id, old_incarnation) in [("refused", first), ("judged", first_b)] {
        let path = format!("{}?incarnation={old_incarnation}", member_path("inc", id));
        c.delete(leader, &path).await.expect_error(409, "conflict", "leave of an old incarnation");
    }

    // Both new incarnations stay, and are probed at their new address all along.
    wait_everywhere(&c, &expected).await;
    let probes_before = (new.probe_count("refused"), moved.probe_count("judged"));
    assert_kept(&c, &expected, SEVERAL_SUSPECT_PERIODS).await;
    let probed = (new.probe_count("refused") - probes_before.0, moved.probe_count("judged") - probes_before.1);
    assert!(
        probed.0 >= 5 && probed.1 >= 5,
        "probes of the new incarnations at their new addresses over {SEVERAL_SUSPECT_PERIODS:?} \
         (refused, judged): {probed:?}; a member nobody probes is never found dead"
    );
    moved.wait_probe("inc", "judged", first_b + 1).await;

    // And a new incarnation that fails is removed like any other.
    new.fail("refused");
    moved.fail("judged");
    expected.clear();
    wait_everywhere(&c, &expected).await;
    // Exactly two members were removed. A judgement about an old incarnation that the removal
    // refused (409 inside the log) removed nobody, so it must not be counted (nor logged) as one.
    assert_eq!(failed_evictions(&c).await, 2.0, "evictions counted by the nodes, for two removals");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_node_evicts_no_live_member_when_it_resumes() {
    const MEMBERS: usize = 20;
    let c = Cluster::start_with(3, FAST).await;
    let shared = FakeMembers::start().await;
    let own = FakeMembers::start_many(MEMBERS / 2).await;
    let joins = (0..MEMBERS).map(|i| {
        let address = if i % 2 == 0 { &shared.address } else { &own[i / 2].address };
        (format!("pause-g{}", i % 2), format!("m-{i}"), probe_member(address, "one"))
    });
    let expected = c.join_many(joins.collect(), 4).await;
    wait_responsibility(&c, MEMBERS as u64, "all members probed", |_| true).await;
    wait_everywhere(&c, &expected).await;

    // A follower briefly (about one probe interval: it may keep its members), then a follower
    // and the leader long enough for their members to be handed over.
    for (round, long) in [("follower", false), ("follower", true), ("leader", true)] {
        let paused = if round == "leader" { c.leader().await } else { c.follower().await };
        let counts = responsibility(&c, c.node(paused)).await.expect("/v1/cluster");
        assert!(counts.get(&paused) > Some(&0), "the {round} probes some of {MEMBERS} members: {counts:?}");
        c.pause(paused, true);
        if long {
            let live: Vec<u64> = c.running().map(|n| n.id).collect();
            wait_all_probed_by(&c, &live).await;
        } else {
            // The length of the fault, not a wait for something to happen.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        c.pause(paused, false);

        // Back, with its stale view and its probes cut short by the pause: no one is evicted.
        assert_kept(&c, &expected, SEVERAL_SUSPECT_PERIODS).await;
        wait_responsibility(&c, MEMBERS as u64, "the resumed node probing again", |counts| {
            counts.get(&paused) > Some(&0)
        })
        .await;
        wait_everywhere(&c, &expected).await;
    }
}
