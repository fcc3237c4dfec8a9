//! Quorum loss and `gm recover`, end to end: two of three data dirs wiped leave the survivor
//! without a leader, saying so, and never a new cluster; `gm recover` (a real process, as an
//! operator runs it) makes it the only voter of its cluster at its next start, with every write it
//! held; asking again is harmless, and a data dir without Raft state is refused in one line.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{lease_joins, lease_member, poll, Cluster, Consistency, Incarnations};

/// `gm recover --data-dir dir`, as an operator runs it.
fn gm_recover(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["recover", "--data-dir"])
        .arg(dir)
        .env_remove("GM_DATA_DIR")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run gm recover")
}

/// Asserts that `gm recover` succeeded, and returns what it printed.
fn recover_ok(dir: &Path) -> String {
    let out = gm_recover(dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "gm recover failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn request_file(dir: &Path) -> std::path::PathBuf {
    dir.join("recover-request.json")
}

/// Node `id` alone leads a one-voter cluster named `cluster_id`, holds exactly `expected`, and
/// takes a new write, which is added to `expected`.
async fn assert_sole_leader(c: &Cluster, id: u64, cluster_id: &str, expected: &mut Incarnations, write: &str) {
    let node = c.node(id);
    c.wait_ready_all().await;
    let cluster = c.client(node).cluster(Consistency::Linearizable).await.expect("cluster");
    assert_eq!(cluster.leader_id, Some(id), "{cluster:?}");
    assert_eq!(cluster.cluster_id.as_deref(), Some(cluster_id), "the same cluster, not a new one");
    assert_eq!(cluster.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![id], "one voter: {cluster:?}");
    c.wait_member_set(node, Consistency::Linearizable, expected).await;
    let reply = c.put(node, &format!("/v1/groups/after/members/{write}"), &lease_member("10.9.9.9:80")).await;
    reply.expect_ok(201, "a write after recovery");
    expected.insert(("after".into(), write.into()), reply.body["member"]["incarnation"].as_u64().expect("incarnation"));
    c.wait_member_set(node, Consistency::Linearizable, expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_data_dirs_lost_then_gm_recover_restores_service() {
    let mut c = Cluster::start(3).await;
    let cluster_id = c.cluster_id().await;
    let mut expected = c.join_many(lease_joins("before", 0..60, 4), 8).await;
    // A follower survives (a leader restarted alone takes its leadership back, without a quorum
    // to use it). It must hold every acknowledged write: a majority had each, not necessarily it.
    let survivor = c.follower().await;
    c.wait_member_set(c.node(survivor), Consistency::Stale, &expected).await;
    for id in 1..=3 {
        c.kill(id).await;
    }
    for lost in (1..=3).filter(|&id| id != survivor) {
        std::fs::remove_dir_all(&c.node(lost).data_dir).expect("wipe a data dir");
    }

    // The survivor alone: no leader, a status that says why, no writes, and no new cluster.
    c.spawn(survivor);
    let node = c.node(survivor);
    let message = poll("the survivor to report the lost quorum", || async {
        let reply = c.send(c.http.get(node.url("/readyz"))).await.ok()?;
        assert_eq!(reply.status, 503, "a node without quorum is not ready: {reply:?}");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default().to_owned();
        message.contains("2 of 3 voters unreachable").then_some(message)
    })
    .await;
    assert!(message.starts_with("no leader"), "{message}");
    let cluster = c.client(node).cluster(Consistency::Stale).await.expect("a stale cluster view");
    assert_eq!(cluster.leader_id, None, "{cluster:?}");
    assert_eq!(cluster.cluster_id.as_deref(), Some(cluster_id.as_str()));
    assert_eq!(cluster.nodes.len(), 3, "still the three voters: {cluster:?}");
    let reply = c.put(node, "/v1/groups/refused/members/m", &lease_member("10.0.0.1:80")).await;
    reply.expect_error(503, "unavailable", "a write without quorum");
    assert_eq!(c.get(node, "/v1/cluster").await.status, 503, "no linearizable read without quorum");
    assert!(!c.log_text(survivor).contains("creating the cluster"), "never a new cluster");

    // The operator asks while the node runs (as `kubectl exec` does), then restarts it.
    let dir = node.data_dir.clone();
    let said = recover_ok(&dir);
    assert!(said.contains("applies it at its next start") && said.contains("lost"), "{said}");
    assert!(request_file(&dir).exists());
    c.kill(survivor).await;
    // Asked again while it is stopped: the request stands, and says what the dir holds.
    let said = recover_ok(&dir);
    assert!(said.contains("holds voters 1, 2, 3"), "{said}");
    c.spawn(survivor);
    assert_sole_leader(&c, survivor, &cluster_id, &mut expected, "m1").await;
    assert!(!request_file(&dir).exists(), "the request is removed once applied");
    let log = c.log_text(survivor);
    assert!(log.contains("recovered from a lost quorum"), "{log}");

    // Asked again after it was applied: harmless, stopped or running.
    c.kill(survivor).await;
    let said = recover_ok(&dir);
    assert!(said.contains("has one voter already"), "{said}");
    assert!(!request_file(&dir).exists(), "nothing written for a one-voter cluster");
    c.spawn(survivor);
    c.wait_ready_all().await;
    recover_ok(&dir);
    c.kill(survivor).await;
    c.spawn(survivor);
    assert_sole_leader(&c, survivor, &cluster_id, &mut expected, "m2").await;
    assert!(!request_file(&dir).exists());
    assert!(c.log_text(survivor).contains("already is its cluster's only voter"));
}

#[test]
fn recover_without_raft_state_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for target in [dir.path().to_owned(), dir.path().join("missing")] {
        let out = gm_recover(&target);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].starts_with("gm: error: ") && lines[0].contains("holds no Raft state"), "{stderr}");
        assert!(!request_file(&target).exists());
    }
}
