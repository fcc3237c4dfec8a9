//! Cluster fencing end to end: a node of another cluster that reaches this cluster's peer
//! addresses is refused on every request, both sides log it, and this cluster's leader, term
//! and membership stay as they were.
//!
//! How a node of B comes to call A's nodes: cluster A is started and named, then stopped; B
//! forms on A's ports shifted down by one, so B's nodes 2 and 3 are recorded at the addresses of
//! A's nodes 1 and 2. B is stopped and A started again; then B's node 1 comes back on its own
//! data, as a follower, hears from no leader, and asks again and again for pre-votes (which
//! come before any election), sending them to the addresses where A's nodes 1 and 2 now listen.

mod common;

use std::time::Duration;

use gm::client::{Client, RetryPolicy};
use gm::dev::{DevConfig, LocalCluster, NodeOutput};
use gm::wire::ClusterAnswer;

use common::{lease_member, poll, wait_for, Cluster, Consistency, Incarnations};

/// A's elections are slow, so that none happens by chance while the test watches its term; B's
/// node asks at the default pace, every 250 to 500 ms.
const CALM: &[&str] = &["--election-timeout", "2s"];
/// How many pre-votes B's node asks A for while the test watches.
const CAMPAIGNS: f64 = 5.0;

fn port(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

/// What a node of A must keep seeing: its cluster, leader, term and voters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    cluster_id: Option<String>,
    leader: Option<u64>,
    term: u64,
    /// Each node's id and peer address.
    nodes: Vec<(u64, String)>,
}

fn shape(c: &ClusterAnswer) -> Shape {
    let nodes = c.nodes.iter().map(|n| (n.id, n.peer_address.clone())).collect();
    Shape { cluster_id: c.cluster_id.clone(), leader: c.leader_id, term: c.term, nodes }
}

/// A client of one node that tries once.
fn client_of(api: &str) -> Client {
    Client::builder([api]).policy(RetryPolicy::once(Duration::from_secs(5))).build().expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_of_another_cluster_is_refused() {
    let mut a = Cluster::start_with(3, CALM).await;
    let a_id = a.cluster_id().await;
    for id in 1..=3 {
        a.kill(id).await;
    }

    let b_dir = tempfile::tempdir().expect("tempdir");
    let config = DevConfig {
        nodes: 3,
        data_dir: b_dir.path().to_owned(),
        clean: false,
        api_port: port(&a.node(1).api) - 1,
        peer_port: port(&a.node(1).peer) - 1,
        worker_threads: None,
    };
    let mut b = LocalCluster::prepare(&config, &[], NodeOutput::LogFiles).expect("B's ports are free");
    b.set_executable(env!("CARGO_BIN_EXE_gm").into());
    for id in 1..=3 {
        b.spawn(id).expect("start a node of B");
    }
    let b1 = client_of(&b.nodes[0].api);
    for node in &b.nodes {
        let client = client_of(&node.api);
        wait_for(&format!("B's node {} ready", node.id), || async { client.readyz().await.is_ok() }).await;
    }
    let b_id = b1.cluster(Consistency::Linearizable).await.expect("B's cluster").cluster_id.expect("B is named");
    assert_ne!(a_id, b_id);
    assert_eq!(b.nodes[1].peer, a.node(1).peer, "B's node 2 is recorded where A's node 1 listens");
    // Node 1 created B and leads it. A node that led when it stopped leads again when it
    // restarts (openraft keeps its own committed vote), and a leader never campaigns: so node 1
    // stops first and comes back as a follower of the leader B elects without it.
    b.kill(1).await;
    let b2 = client_of(&b.nodes[1].api);
    let led_by_another = |client: &Client| {
        let client = client.clone();
        async move { client.cluster(Consistency::Stale).await.is_ok_and(|c| c.leader_id.is_some_and(|l| l != 1)) }
    };
    wait_for("B elects a leader without node 1", || led_by_another(&b2)).await;
    b.spawn(1).expect("restart B's node 1");
    wait_for("B's node 1 follows the new leader", || led_by_another(&b1)).await;
    for id in 1..=3 {
        b.kill(id).await;
    }

    for id in 1..=3 {
        a.spawn(id);
    }
    a.wait_ready_all().await;
    let settled = poll("A's nodes agree on leader and term", || async {
        let mut shapes = Vec::new();
        for node in a.running() {
            shapes.push(shape(&a.client(node).cluster(Consistency::Stale).await.ok()?));
        }
        let first = shapes[0].clone();
        (first.leader.is_some() && shapes.iter().all(|s| *s == first)).then_some(first)
    })
    .await;
    assert_eq!(settled.cluster_id.as_deref(), Some(a_id.as_str()));

    b.spawn(1).expect("restart B's node 1");
    let b1_metrics = format!("http://{}/metrics", b.nodes[0].api);
    let lost = || async {
        let text = a.http.get(&b1_metrics).send().await.ok()?.text().await.ok()?;
        Some(common::series_value(&text, r#"gm_raft_pre_votes_total{outcome="lost"}"#))
    };
    wait_for(&format!("B's node 1 asks A for pre-votes {CAMPAIGNS} times"), || async {
        lost().await.is_some_and(|n| n >= CAMPAIGNS)
    })
    .await;

    // A refused it, and said so.
    for id in [1, 2] {
        wait_for(&format!("A's node {id} logs the refusal"), || async {
            let log = a.log_text(id);
            log.lines().any(|l| l.contains("refused a request from a node of another cluster") && l.contains(&b_id))
        })
        .await;
    }
    // B's node heard the refusal, and said so.
    let b1_log = b.log_path(1);
    wait_for("B's node 1 logs that its peers belong to another cluster", || async {
        let log = std::fs::read_to_string(&b1_log).unwrap_or_default();
        log.lines().any(|l| l.contains("peer belongs to another cluster") && l.contains(&a_id))
    })
    .await;
    // Nothing of A moved: not its leader, not its term, not its voters.
    for node in a.running() {
        let now = a.client(node).cluster(Consistency::Stale).await.expect("A's cluster");
        assert_eq!(shape(&now), settled, "node {} of A after {CAMPAIGNS} pre-votes of B's node", node.id);
    }
    // A still commits writes, and every node of A applies them.
    let joined = a.join_retrying("orders", "worker-1", lease_member("10.0.0.1:80")).await;
    let expected = Incarnations::from([(("orders".into(), "worker-1".into()), joined.member.incarnation)]);
    for node in a.running() {
        a.wait_member_set(node, Consistency::Stale, &expected).await;
    }
    let b1_now = b1.cluster(Consistency::Stale).await.expect("B's node 1");
    assert_eq!((b1_now.cluster_id.as_deref(), b1_now.leader_id), (Some(b_id.as_str()), None));

    // The refusal on the wire: 403 naming both clusters; A's own id passes.
    let url = format!("http://{}/cluster/health", a.node(1).peer);
    let refused = a.http.post(&url).header("gm-cluster-id", &b_id).json(&()).send().await.expect("a refusal");
    assert_eq!(refused.status().as_u16(), 403);
    let body: serde_json::Value = refused.json().await.expect("a JSON refusal");
    assert_eq!((body["cluster_id"].as_str(), body["request_cluster_id"].as_str()), (Some(&*a_id), Some(&*b_id)));
    let admitted = a.http.post(&url).header("gm-cluster-id", &a_id).json(&()).send().await.expect("an answer");
    assert_eq!(admitted.status().as_u16(), 200);
}
