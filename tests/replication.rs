//! Replication under failure, end to end: crashes (kill -9) of the leader, of every node, of a
//! quorum; a paused leader; a follower brought back by snapshot install; blocking queries and
//! watches without a quorum. Each test starts its own cluster. Acknowledged means answered
//! 200/201: such a write must survive everything here.

mod common;

use std::time::Duration;

use gm::client::ErrorKind;
use reqwest::Method;
use serde_json::json;

use common::{lease_joins, lease_member, poll, poll_json, timed, wait_for, Cluster, Consistency, Incarnations, Watch};

/// The contract's bound for a write or read without quorum (10 s), with room for a slow machine.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(12);

/// Leaves `(group, id)` of `expected` through the node at `i` in turn, and forgets them there.
async fn leave_some(c: &Cluster, expected: &mut Incarnations, keys: Vec<(String, String)>) {
    for (i, (group, id)) in keys.into_iter().enumerate() {
        let node = c.running().nth(i % c.running().count()).expect("a running node");
        let reply = c.delete(node, &format!("/v1/groups/{group}/members/{id}")).await;
        reply.expect_ok(200, &format!("leave {group}/{id}"));
        expected.remove(&(group, id));
    }
}

/// Every running node shows exactly `expected` on a linearizable read, and soon on a stale one.
async fn assert_everywhere(c: &Cluster, expected: &Incarnations) {
    for node in c.running() {
        c.assert_member_set(node, Consistency::Linearizable, expected).await;
        c.wait_member_set(node, Consistency::Stale, expected).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_crash_and_restart_keeps_acknowledged_writes() {
    let mut c = Cluster::start(3).await;
    let mut expected = c.join_many(lease_joins("before", 0..40, 3), 4).await;
    let leaving: Vec<_> = expected.keys().take(5).cloned().collect();
    leave_some(&c, &mut expected, leaving).await;

    let old = c.leader().await;
    c.kill(old).await;
    let new = c.leader().await;
    assert_ne!(new, old, "a new leader among the survivors");
    assert_everywhere(&c, &expected).await;
    expected.extend(c.join_many(lease_joins("during", 0..40, 3), 4).await);
    let leaving: Vec<_> = expected.keys().filter(|(_, id)| id.starts_with("during")).take(5).cloned().collect();
    leave_some(&c, &mut expected, leaving).await;
    assert_everywhere(&c, &expected).await;

    c.spawn(old);
    c.wait_ready_all().await;
    let back = c.node(old);
    c.assert_member_set(back, Consistency::Linearizable, &expected).await;
    c.wait_member_set(back, Consistency::Stale, &expected).await;
    // It takes writes again, and the others see them.
    let reply = c.put(back, "/v1/groups/after/members/m", &lease_member("10.0.0.1:80")).await;
    reply.expect_ok(201, "join through the restarted node");
    expected.insert(("after".into(), "m".into()), reply.body["member"]["incarnation"].as_u64().unwrap());
    assert_everywhere(&c, &expected).await;
}

/// A leader killed right after a burst of writes, which the leader packs many to a log entry:
/// the survivors elect a leader, a follower that lagged catches up on those large entries in
/// time, writes resume, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread")]
async fn leader_crash_after_a_burst_of_writes_loses_nothing() {
    let mut c = Cluster::start(3).await;
    let mut expected = c.join_many(lease_joins("burst", 0..3000, 8), 64).await;
    let old = c.leader().await;
    c.kill(old).await;
    expected.extend(c.join_many(lease_joins("after", 0..200, 8), 16).await);
    assert_everywhere(&c, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_crash_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let cluster_id = c.cluster_id().await;
    let mut expected = c.join_many(lease_joins("seq", 0..100, 4), 1).await;
    expected.extend(c.join_many(lease_joins("conc", 0..250, 8), 16).await);
    // Re-joins with a new instance: the incarnations that must come back are the new ones.
    let rejoins: Vec<_> = lease_joins("conc", 0..50, 8)
        .into_iter()
        .map(|(g, id, mut body)| {
            body["instance"] = json!("restarted");
            (g, id, body)
        })
        .collect();
    let rejoined = c.join_many(rejoins, 16).await;
    for (key, incarnation) in &rejoined {
        assert!(*incarnation > expected[key], "a re-join raises the incarnation of {key:?}");
    }
    expected.extend(rejoined);
    let leaving: Vec<_> = expected.keys().step_by(11).cloned().collect();
    leave_some(&c, &mut expected, leaving).await;
    assert_everywhere(&c, &expected).await;

    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_ready_all().await;
    assert_everywhere(&c, &expected).await;
    for node in &c.nodes {
        let (status, body) = c.get_json(node, "/v1/cluster").await.expect("GET /v1/cluster");
        assert_eq!(status, 200);
        assert_eq!(body["cluster_id"], cluster_id.as_str(), "the cluster id survives a restart of every node");
    }
    // And it still takes writes.
    let more = c.join_many(lease_joins("after", 0..10, 2), 4).await;
    expected.extend(more);
    assert_everywhere(&c, &expected).await;
}

/// Asserts that, on the running node `id` alone, writes and linearizable reads answer 503 with
/// `Retry-After` within the bound, while stale reads and health still answer.
async fn assert_unavailable_alone(c: &Cluster, id: u64, expected: &Incarnations) {
    let node = c.node(id);
    let (group, member) = expected.keys().next().cloned().expect("a member to read");
    let (reply, took) = timed(c.put(node, "/v1/groups/q/members/lonely", &lease_member("10.0.0.9:80"))).await;
    reply.expect_error(503, "unavailable", "a write without quorum");
    assert!(took < UNAVAILABLE_WITHIN, "a write without quorum answered after {took:?}");
    let (reply, took) = timed(c.delete(node, "/v1/groups/q/members/m")).await;
    reply.expect_error(503, "unavailable", "a leave without quorum");
    assert!(took < UNAVAILABLE_WITHIN, "a leave without quorum answered after {took:?}");
    let reads = [
        format!("/v1/groups/{group}"),
        format!("/v1/groups/{group}/members/{member}"),
        "/v1/groups".to_owned(),
        "/v1/cluster".to_owned(),
    ];
    for path in &reads {
        let (reply, took) = timed(c.get(node, path)).await;
        reply.expect_error(503, "unavailable", &format!("linearizable {path} without quorum"));
        assert!(took < UNAVAILABLE_WITHIN, "linearizable {path} without quorum answered after {took:?}");
    }
    let reply = c.call(Method::POST, node, &format!("/v1/groups/{group}/members/{member}/heartbeat"), None).await;
    reply.expect_error(503, "unavailable", "a heartbeat without quorum");
    c.assert_member_set(node, Consistency::Stale, expected).await;
    for path in &reads {
        let path = format!("{path}{}consistency=stale", if path.contains('?') { '&' } else { '?' });
        c.get(node, &path).await.expect_ok(200, &path);
    }
    assert_eq!(c.get(node, "/healthz").await.status, 200);
    assert_eq!(c.get(node, "/readyz").await.status, 503, "a node without quorum is not ready");
}

/// The writes of [`assert_unavailable_alone`] answered 503, which leaves open whether they were
/// applied (a lone leader's log may still commit them later): retries settle them.
async fn settle_unavailable_writes(c: &Cluster, expected: &mut Incarnations) {
    let answer = c.join_retrying("q", "lonely", lease_member("10.0.0.9:80")).await;
    expected.insert(("q".into(), "lonely".into()), answer.member.incarnation);
    poll("the leave of q/m to settle", || async {
        let node = c.running().next()?;
        let left = c.leave(node, "q", "m").await;
        // 404: an earlier try that answered 503 was applied after all.
        (left.is_ok() || left.is_err_and(|e| e.kind() == ErrorKind::NotFound)).then_some(())
    })
    .await;
    expected.remove(&("q".into(), "m".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_loss_answers_503_and_recovers() {
    let mut c = Cluster::start(3).await;
    let mut expected = c.join_many(vec![("q".into(), "m".into(), lease_member("10.0.0.1:80"))], 1).await;
    let leader = c.leader().await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();

    // The leader alone keeps its term but can commit nothing.
    for &id in &others {
        c.kill(id).await;
    }
    assert_unavailable_alone(&c, leader, &expected).await;

    c.spawn(others[0]);
    c.wait_ready_all().await;
    settle_unavailable_writes(&c, &mut expected).await;
    expected.extend(c.join_many(lease_joins("back", 0..10, 1), 2).await);
    assert_everywhere(&c, &expected).await;

    // A follower alone: no leader at all.
    let leader = c.leader().await;
    c.kill(leader).await;
    let alone = c.running().next().expect("one node left").id;
    assert_unavailable_alone(&c, alone, &expected).await;
    c.spawn(leader);
    c.wait_ready_all().await;
    settle_unavailable_writes(&c, &mut expected).await;
    expected.extend(c.join_many(lease_joins("again", 0..10, 1), 2).await);
    assert_everywhere(&c, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_leader_is_replaced_and_catches_up() {
    let c = Cluster::start(3).await;
    let mut expected = c.join_many(lease_joins("before", 0..20, 2), 4).await;
    let old = c.leader().await;
    c.pause(old, true);
    let new = c.leader().await;
    assert_ne!(new, old, "the others elect a new leader");
    expected.extend(c.join_many(lease_joins("during", 0..20, 2), 4).await);
    assert_everywhere(&c, &expected).await;

    c.pause(old, false);
    let back = c.node(old);
    let view = poll_json(
        &format!("node {old} to step down"),
        || async { c.get_json(back, "/v1/cluster?consistency=stale").await.ok().map(|(_, b)| b) },
        |b| {
            let leader = b["leader_id"].as_u64();
            let me = b["nodes"].as_array().and_then(|ns| ns.iter().find(|n| n["id"] == old).cloned());
            leader.is_some_and(|l| l != old) && me.is_some_and(|n| n["role"] == "follower")
        },
    )
    .await;
    assert!(view["term"].as_u64() > Some(0));
    c.wait_member_set(back, Consistency::Stale, &expected).await;
    c.assert_member_set(back, Consistency::Linearizable, &expected).await;
    let reply = c.put(back, "/v1/groups/after/members/m", &lease_member("10.0.0.1:80")).await;
    reply.expect_ok(201, "join through the old leader");
    expected.insert(("after".into(), "m".into()), reply.body["member"]["incarnation"].as_u64().unwrap());
    assert_everywhere(&c, &expected).await;
}

/// Pre-vote: a follower that missed the leader's heartbeats for many election timeouts (frozen
/// here, as a paused or CPU-throttled pod is) asks before it elects, finds the leader alive
/// through the others, and starts no election: the leader and the term stay. Without pre-vote it
/// raised the term on resuming, and the leader stepped down for an election.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_resumed_after_a_freeze_does_not_unseat_the_leader() {
    // Long timeouts, so that a loaded machine's late heartbeats cause no election of their own.
    let c = Cluster::start_with(3, &["--election-timeout", "1s"]).await;
    let mut expected = c.join_many(lease_joins("before", 0..10, 2), 4).await;
    let leader = c.leader().await;
    let term = || async {
        let (_, cluster) = c.get_json(c.node(leader), "/v1/cluster?consistency=stale").await.expect("cluster");
        (cluster["leader_id"].as_u64(), cluster["term"].as_u64())
    };
    let (_, before) = term().await;
    let follower = others(leader)[0];
    c.pause(follower, true);
    // Twice the longest wait for an election (2 s + up to 2 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    expected.extend(c.join_many(lease_joins("during", 0..10, 2), 4).await);
    c.pause(follower, false);

    let lost = r#"gm_raft_pre_votes_total{outcome="lost"}"#;
    wait_for("the resumed follower to ask for a pre-vote", || async { c.metric(c.node(follower), lost).await >= 1.0 })
        .await;
    c.wait_member_set(c.node(follower), Consistency::Stale, &expected).await;
    // Time for an election, had one started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(term().await, (Some(leader), before), "the leader and the term stayed");
    let won = r#"gm_raft_pre_votes_total{outcome="won"}"#;
    assert_eq!(c.metric(c.node(follower), won).await, 0.0, "the follower never elected");
    assert_everywhere(&c, &expected).await;
}

/// Waits until leader `old` gives reads their index by its lease (after one round), freezes it,
/// joins `during` members through the leader the others elect, and sends 8 linearizable reads to
/// `old` as it resumes: each must hold the new members, or fail (503), never answer the state
/// from before the freeze. Returns how many `old` served.
async fn reads_at_a_resumed_old_leader(c: &Cluster, old: u64, expected: &mut Incarnations, during: usize) -> usize {
    let leased = r#"gm_raft_read_indexes_total{by="lease"}"#;
    wait_for("the leader to read by its lease", || async {
        c.assert_member_set(c.node(old), Consistency::Linearizable, expected).await;
        c.metric(c.node(old), leased).await > 0.0
    })
    .await;
    c.pause(old, true);
    let new = c.leader().await;
    assert_ne!(new, old, "the others elect a new leader");
    expected.extend(c.join_many(lease_joins("during", 0..during, 2), 4).await);

    let back = c.node(old);
    let reads = futures::future::join_all((0..8).map(|_| c.member_set(back, Consistency::Linearizable)));
    // The reads are sent first, so that they wait in the frozen node's sockets; some may
    // arrive just after it resumes, which is as telling.
    let resume = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.pause(old, false);
    };
    let (answers, ()) = tokio::join!(reads, resume);
    let served = answers.iter().flatten().count();
    for set in answers.into_iter().flatten() {
        assert_eq!(&common::incarnations(&set), expected, "a read at the resumed old leader");
    }
    served
}

/// The read lease (`--linearizable-reads lease`, the default) must run out while a leader is
/// frozen.
#[tokio::test(flavor = "multi_thread")]
async fn reads_reaching_a_resumed_old_leader_see_the_new_leaders_writes() {
    let c = Cluster::start(3).await;
    let mut expected = c.join_many(lease_joins("before", 0..10, 2), 4).await;
    let old = c.leader().await;
    let served = reads_at_a_resumed_old_leader(&c, old, &mut expected, 10).await;
    println!("{served} of 8 reads served by the resumed old leader, all with the new leader's writes");
    assert_everywhere(&c, &expected).await;
}

/// The lease counts on what each follower promises, not on the leader's own election timeout:
/// a leader that waits longer than its followers (in the middle of a rolling change of
/// `--election-timeout`) must not answer from its old state when it resumes after a freeze.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_with_a_longer_election_timeout_than_its_followers_reads_no_stale_view() {
    let mut c = Cluster::start_with_env(3, &[], &[("GM_ELECTION_TIMEOUT", Some("3s"))]).await;
    let mut expected = c.join_many(lease_joins("before", 0..4, 1), 2).await;
    let old = c.leader().await;
    // The followers come back with the default timeout (250 ms), and promise a leader lease of
    // 0.5 s from now on; first they wait out the 6 s their last processes promised.
    c.set_env("GM_ELECTION_TIMEOUT", None);
    for id in (1..=3).filter(|&id| id != old) {
        c.kill(id).await;
        c.spawn(id);
        c.wait_ready_all().await;
    }
    assert_eq!(c.leader().await, old, "the leader stayed");
    reads_at_a_resumed_old_leader(&c, old, &mut expected, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_install_catches_up_a_restarted_follower() {
    let mut c = Cluster::start_with(3, &["--snapshot-every", "100"]).await;
    let mut expected = c.join_many(lease_joins("early", 0..500, 10), 16).await;
    let follower = c.follower().await;
    c.kill(follower).await;
    // The server keeps 1000 entries behind its last snapshot (`max_in_snapshot_log_to_keep`):
    // only well past that is the follower's next entry surely purged, so that it must install a
    // snapshot. Two joins at a time, so that entries (which batch concurrent joins) stay small
    // and 3000 joins make well over 1000 of them.
    expected.extend(c.join_many(lease_joins("late", 0..3000, 10), 2).await);
    c.spawn(follower);
    c.wait_ready_all().await;
    let back = c.node(follower);
    c.assert_member_set(back, Consistency::Linearizable, &expected).await;
    c.wait_member_set(back, Consistency::Stale, &expected).await;

    // Not only the same members: the same records as the leader's.
    let leader = c.leader().await;
    let theirs = c.member_set(c.node(leader), Consistency::Linearizable).await.expect("the leader's members");
    let ours = c.member_set(back, Consistency::Stale).await.expect("the follower's members");
    assert!(theirs == ours, "the restarted follower's records equal the leader's");

    assert!(
        c.log_text(follower).contains("snapshot installed"),
        "node {follower} caught up by installing a snapshot (its log says so)"
    );
    for node in &c.nodes {
        assert!(node.data_dir.join("snapshot").join("snapshot.bin").is_file(), "node {} keeps a snapshot", node.id);
    }
}

/// The members in node `node`'s snapshot file, 0 if none yet.
fn members_in_snapshot(node: &common::NodeProc) -> usize {
    let Ok(Some((_, state))) = gm::raft::snapshot_file::read(&node.data_dir.join("snapshot")) else { return 0 };
    let state: gm::membership::MembershipState = gm::raft::codec::decode(&state).expect("the snapshot's state decodes");
    state.member_count()
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_follow_the_commands_applied_however_many_an_entry_batches() {
    // By entries alone there would be no snapshot at all: concurrent joins share entries.
    let c = Cluster::start_with(1, &["--snapshot-every", "1000000", "--snapshot-every-commands", "200"]).await;
    let node = c.node(1);
    c.join_many(lease_joins("batched", 0..1500, 10), 64).await;
    // Fewer than 200 commands may follow the last snapshot.
    common::wait_for("a snapshot of nearly every member", || async { members_in_snapshot(node) > 1300 }).await;
    let snapshots = c.metric(node, "gm_raft_snapshots_total").await;
    assert!(snapshots >= 1.0, "snapshots counted by commands, not entries: {snapshots}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_query_without_quorum_answers_503_when_its_wait_ends() {
    let mut c = Cluster::start(3).await;
    let follower = c.follower().await;
    let reply = c.put(c.node(follower), "/v1/groups/bq/members/m", &lease_member("10.0.0.1:80")).await;
    let n = reply.expect_ok(201, "join");
    for id in (1..=3).filter(|&id| id != follower) {
        c.kill(id).await;
    }
    let wait = Duration::from_secs(3);
    let (reply, took) = timed(c.get(c.node(follower), &format!("/v1/groups/bq?index={n}&wait=3s"))).await;
    reply.expect_error(503, "unavailable", "a blocking query whose wait ends without quorum");
    assert!(took >= wait.mul_f64(0.9), "it kept waiting for its whole wait, answered after {took:?}");
    assert!(took < wait + UNAVAILABLE_WITHIN, "answered after {took:?}");
}

/// Node ids other than `id`.
fn others(id: u64) -> Vec<u64> {
    (1..=3).filter(|&other| other != id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_query_that_loses_quorum_while_waiting_answers_503() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let l = c.node(leader);
    let n = c.put(l, "/v1/groups/bq/members/m", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join");

    // The query starts with a quorum; the other two nodes stop answering during its wait.
    let wait = Duration::from_secs(4);
    let path = format!("/v1/groups/bq?index={n}&wait=4s");
    let ((reply, took), ()) = tokio::join!(timed(c.get(l, &path)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in others(leader) {
            c.pause(id, true);
        }
    });
    assert!(took >= wait.mul_f64(0.9), "the blocking query kept waiting its whole wait: answered after {took:?}");
    assert!(took < wait + UNAVAILABLE_WITHIN, "answered after {took:?}");
    reply.expect_error(503, "unavailable", "a blocking query whose wait ended without quorum");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_that_loses_quorum_keeps_waiting() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let l = c.node(leader);
    let n = c.put(l, "/v1/groups/bw/members/m", &lease_member("10.0.0.1:80")).await.expect_ok(201, "join");
    let mut watch = Watch::open(l, "/v1/groups/bw/watch").await;
    let first = watch.next_event(Duration::from_secs(10)).await;
    assert_eq!(first.id, n.to_string());

    for id in others(leader) {
        c.pause(id, true);
    }
    // Without a quorum: no event and no end of the stream.
    assert!(watch.try_next_event(Duration::from_secs(3)).await.is_none(), "no view without a change");
    // A watch opened now gets its headers at once, while the quorum is still away (a client with
    // a header timeout keeps it), and its first view once the quorum is back.
    let mut late = tokio::time::timeout(Duration::from_secs(10), Watch::open(l, "/v1/groups/bw/watch"))
        .await
        .expect("the headers of a watch come without a quorum");
    assert_eq!(late.status, 200, "a watch opened without quorum waits");
    assert_eq!(late.headers["x-accel-buffering"], "no");
    assert!(late.try_next_event(Duration::from_secs(1)).await.is_none(), "no view before the quorum is back");
    for id in others(leader) {
        c.pause(id, false);
    }
    let late_first = late.next_event(Duration::from_secs(30)).await;
    assert!(late_first.id.parse::<u64>().unwrap() >= n);
    assert_eq!(late_first.data["members"].as_array().map(Vec::len), Some(1), "{late_first:?}");

    // With the quorum back, the first watch goes on with the next change.
    let answer = c.join_retrying("bw", "m2", lease_member("10.0.0.2:80")).await;
    let event = watch.next_event(Duration::from_secs(20)).await;
    assert!(event.id.parse::<u64>().unwrap() <= answer.revision);
    let ids: Vec<&str> = event.data["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m", "m2"], "{event:?}");
}
