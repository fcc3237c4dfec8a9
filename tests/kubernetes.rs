//! `--discovery kubernetes` against a fake API server: the pods of a StatefulSet form exactly
//! one cluster, created only by ordinal 0 after it created the bootstrap marker, whatever the
//! order and timing of their start, a lost disk, or an API server that fails for a while.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::fake_k8s::{one_cluster, StatefulSetSim};
use common::{poll, wait_for};

/// Starts every pod, each after a random delay of up to `max_delay`.
async fn start_all_with_delays(sim: &mut StatefulSetSim, replicas: u64, max_delay: Duration) {
    let mut order: Vec<(Duration, u64)> =
        (0..replicas).map(|o| (max_delay.mul_f64(rand::random::<f64>()), o)).collect();
    order.sort();
    let mut waited = Duration::ZERO;
    for (at, ordinal) in order {
        tokio::time::sleep(at - waited).await;
        waited = at;
        sim.start_pod(ordinal);
    }
}

fn assert_one_marker(sim: &StatefulSetSim, replicas: u64) {
    assert_eq!(sim.marker_creates(), 1, "the bootstrap marker must be created exactly once");
    let marker = sim.marker().expect("the bootstrap marker");
    let data = marker.data.expect("marker data");
    assert_eq!(data["created-by"], sim.pod_name(0));
    let voters: serde_json::Value = serde_json::from_str(&data["voters"]).expect("voters as JSON");
    let ids: BTreeSet<String> = voters.as_object().expect("a map").keys().cloned().collect();
    assert_eq!(ids, (1..=replicas).map(|i| i.to_string()).collect(), "initial voters = replicas");
    assert_eq!(
        voters["1"]["peer_addr"],
        format!("{}.{}.{}.svc:{}", sim.pod_name(0), sim.service, sim.namespace, sim.peer_port),
        "voters are addressed by stable names, never IPs"
    );
}

async fn parallel_starts(replicas: u64, runs: usize) {
    for run in 0..runs {
        let mut sim = StatefulSetSim::new(replicas as i32).await;
        start_all_with_delays(&mut sim, replicas, Duration::from_millis(1500)).await;
        let started = std::time::Instant::now();
        let id = one_cluster(&mut sim, replicas).await;
        let took = started.elapsed();
        assert_one_marker(&sim, replicas);
        let marked = sim.marker().and_then(|m| m.data).map(|d| d["cluster-id"].clone());
        assert_eq!(marked.as_ref(), Some(&id), "the cluster id is the marker's");
        eprintln!("run {run} of {replicas} pods: cluster {id}, ready {took:?} after the last pod started");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_pods_started_at_once_form_one_cluster() {
    parallel_starts(3, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_pods_started_at_once_form_one_cluster() {
    parallel_starts(5, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_initializes_before_ordinal_0() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pod(1);
    sim.start_pod(2);
    // Both see the StatefulSet and each other, then must still wait: watched for a while.
    for ordinal in [1, 2] {
        let sim = &sim;
        wait_for("the pod to wait for the cluster", || async move {
            sim.log_text(ordinal).contains("waiting to be contacted")
        })
        .await;
    }
    for _ in 0..20 {
        assert!(sim.marker().is_none(), "only ordinal 0 may create the marker");
        for ordinal in [1, 2] {
            let leader = sim.cluster(ordinal).await.and_then(|c| c.leader_id);
            assert_eq!(leader, None, "pod {ordinal} found a leader before ordinal 0 started");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.start_pod(0);
    one_cluster(&mut sim, 3).await;
    assert_one_marker(&sim, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_ips_published_late_still_give_one_cluster() {
    let mut sim = StatefulSetSim::new(3).await;
    for ordinal in 0..3 {
        sim.start_pod_published(ordinal, false);
    }
    // Ordinal 0 creates the cluster but reaches nobody (their names resolve nowhere yet).
    {
        let sim = &sim;
        wait_for("ordinal 0 to create the cluster", || async move { sim.log_text(0).contains("creating the cluster") })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ordinal in 0..3 {
        assert!(!sim.is_ready(ordinal).await, "pod {ordinal} is ready although no pod can be reached");
    }
    for ordinal in [2, 1, 0] {
        sim.publish_ip(ordinal);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    one_cluster(&mut sim, 3).await;
    assert_one_marker(&sim, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn ordinal_0_with_a_wiped_disk_creates_no_second_cluster() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    let first = one_cluster(&mut sim, 3).await;
    sim.kill_pods(0..3);
    sim.wipe(0);
    sim.start_pods(0..3);
    let sim = &sim;
    wait_for("ordinal 0 to refuse to create a second cluster", || async move {
        sim.log_text(0).contains("will not create a second cluster")
    })
    .await;
    // Nodes 2 and 3 are a quorum of the old voters: the old cluster goes on.
    let again = poll("the old cluster on pods 1 and 2", || async move {
        let ids: BTreeSet<Option<String>> =
            futures::future::join_all([1, 2].map(|o| async move { sim.cluster(o).await.and_then(|c| c.cluster_id) }))
                .await
                .into_iter()
                .collect();
        (ids.len() == 1).then(|| ids.into_iter().next().flatten()).flatten()
    })
    .await;
    assert_eq!(again, first, "the cluster id changed: a second cluster was created");
    assert_eq!(sim.marker_creates(), 1, "a second marker was created");
    let log = sim.log_text(0);
    assert_eq!(log.matches("creating the cluster").count(), 1, "ordinal 0 initialized twice:\n{log}");
    // It stays out of Raft: never ready, no cluster of its own, while the old one goes on.
    for _ in 0..10 {
        assert!(!sim.is_ready(0).await, "ordinal 0 rejoined with an empty disk under its old id");
        assert_eq!(sim.cluster(0).await.and_then(|c| c.cluster_id), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_waits_out_api_server_errors() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.fake.set_failing(true);
    sim.start_pods(0..3);
    {
        let sim = &sim;
        wait_for("ordinal 0 to retry the API server", || async move { sim.log_text(0).contains("retrying") }).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sim.marker().is_none());
    assert!(sim.exited().is_empty(), "a pod exited on API errors: {:?}", sim.exited());
    sim.fake.set_failing(false);
    one_cluster(&mut sim, 3).await;
    assert_one_marker(&sim, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_resync_after_drops_and_410() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    sim.fake.compact();
    sim.fake.drop_watches();
    {
        let sim = &sim;
        wait_for("a pod to list again after 410", || async move {
            (0..3).any(|o| sim.log_text(o).contains("watch too old (410)"))
        })
        .await;
    }
    // A pod that comes back after the resync is still reached: the watch saw it again.
    sim.kill_pod(2);
    sim.start_pod(2);
    one_cluster(&mut sim, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordinal_0_restarted_between_marker_and_initialize_creates_the_cluster() {
    let mut sim = StatefulSetSim::new(3).await;
    // As if ordinal 0 had written its claim and created the marker, then died before Raft was
    // initialized: the marker holds its own claim, so it goes on.
    let claim = "claimed-by-ordinal-0";
    std::fs::create_dir_all(sim.data_dir(0)).expect("data dir");
    std::fs::write(sim.data_dir(0).join("bootstrap-claim"), claim).expect("claim");
    let voter = |ordinal: u64| {
        let host = format!("{}.{}.{}.svc", sim.pod_name(ordinal), sim.service, sim.namespace);
        let peer_addr = format!("{host}:{}", sim.peer_port);
        serde_json::json!({"name": sim.pod_name(ordinal), "api_addr": "", "peer_addr": peer_addr})
    };
    let voters = serde_json::json!({"1": voter(0), "2": voter(1), "3": voter(2)});
    let data = [("cluster-id", claim.to_owned()), ("voters", voters.to_string()), ("created-by", sim.pod_name(0))];
    sim.fake.set_config_map(&sim.namespace, "gm-cluster-bootstrap", data.map(|(k, v)| (k.to_owned(), v)).into());
    sim.start_pods(0..3);
    assert_eq!(one_cluster(&mut sim, 3).await, claim);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_back_at_a_new_ip_is_reached_there() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    for ordinal in [1, 0] {
        let old = sim.ip(ordinal);
        sim.kill_pod(ordinal);
        sim.move_pod(ordinal);
        assert_ne!(sim.ip(ordinal), old);
        sim.start_pod(ordinal);
        // Ready means a read-index round through the leader and the log applied up to it: the
        // leader reached the pod at its new IP (or the pod leads and reached the others).
        one_cluster(&mut sim, 3).await;
    }
}
