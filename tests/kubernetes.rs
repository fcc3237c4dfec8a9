//! `--discovery kubernetes` against a fake API server: the pods of a StatefulSet form exactly
//! one cluster, created only by ordinal 0 after it created the bootstrap marker, whatever the
//! order and timing of their start, a lost disk, or an API server that fails for a while; and
//! the leader keeps the voters equal to the StatefulSet as it scales, restarts and loses disks.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use common::fake_k8s::{cluster_with_voters, one_cluster, voters, StatefulSetSim};
use common::load::WriteLoad;
use common::{poll, wait_for};
use gm::discovery::ids;

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

/// `runs` StatefulSets of `replicas` pods, each started at once with random delays, four
/// StatefulSets at a time (separate fake API servers and IPs).
async fn parallel_starts(replicas: u64, runs: usize) {
    let run = |run: usize| async move {
        let mut sim = StatefulSetSim::new(replicas as i32).await;
        start_all_with_delays(&mut sim, replicas, Duration::from_millis(1500)).await;
        let started = std::time::Instant::now();
        let id = one_cluster(&mut sim, replicas).await;
        let took = started.elapsed();
        assert_one_marker(&sim, replicas);
        let marked = sim.marker().and_then(|m| m.data).map(|d| d["cluster-id"].clone());
        assert_eq!(marked.as_ref(), Some(&id), "the cluster id is the marker's");
        eprintln!("run {run} of {replicas} pods: cluster {id}, ready {took:?} after the last pod started");
    };
    futures::stream::iter(0..runs).map(run).buffer_unordered(4).collect::<Vec<()>>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_pods_started_at_once_form_one_cluster_20_times() {
    parallel_starts(3, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_pods_started_at_once_form_one_cluster_20_times() {
    parallel_starts(5, 20).await;
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
async fn ordinal_0_with_a_wiped_disk_rejoins_under_a_new_id() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    let first = one_cluster(&mut sim, 3).await;
    sim.kill_pods(0..3);
    sim.wipe(0);
    sim.start_pods(0..3);
    // Nodes 2 and 3 are a quorum of the old voters: the old cluster goes on, and node 1's place
    // goes to ordinal 0's new disk, 1001, through a learner.
    let again = cluster_with_voters(&mut sim, &BTreeSet::from([2, 3, 1001])).await;
    assert_eq!(again, first, "the cluster id changed: a second cluster was created");
    assert_eq!(sim.marker_creates(), 1, "a second marker was created");
    let log = sim.log_text(0);
    assert_eq!(log.matches("creating the cluster").count(), 1, "ordinal 0 initialized twice:\n{log}");
}

/// Restarts and kills the leader until it runs in one of `ordinals`; returns its ordinal.
async fn leader_among(sim: &mut StatefulSetSim, ordinals: std::ops::Range<u64>, voters: &BTreeSet<u64>) -> u64 {
    for _ in 0..20 {
        let leader = leader_ordinal(sim).await;
        if ordinals.contains(&leader) {
            return leader;
        }
        sim.kill_pod(leader);
        // Back only once another pod leads: a leader back at once would lead again in its term.
        let other = sim.running().next().expect("another pod runs");
        poll("another leader", || {
            let sim = &*sim;
            async move { sim.cluster(other).await?.leader_id.filter(|&l| ids::ordinal_of(l) != leader) }
        })
        .await;
        sim.start_pod(leader);
        cluster_with_voters(sim, voters).await;
    }
    panic!("the leader never moved to one of {ordinals:?}");
}

/// The ordinal of the leader every pod agrees on.
async fn leader_ordinal(sim: &StatefulSetSim) -> u64 {
    let running: Vec<u64> = sim.running().collect();
    let leader = poll("a leader", || {
        let running = running.clone();
        async move { sim.cluster(running[0]).await?.leader_id }
    })
    .await;
    ids::ordinal_of(leader)
}

/// Waits until pod 0 sees the voters `expected` (whatever the other pods do meanwhile).
async fn pod_0_sees_voters(sim: &StatefulSetSim, expected: &BTreeSet<u64>) {
    poll(&format!("the voters {expected:?} on pod 0"), || async move {
        (voters_of(sim, 0).await.as_ref() == Some(expected)).then_some(())
    })
    .await;
}

/// The voters as pod `ordinal` sees them.
async fn voters_of(sim: &StatefulSetSim, ordinal: u64) -> Option<BTreeSet<u64>> {
    Some(voters(&sim.cluster(ordinal).await?))
}

fn apis(sim: &StatefulSetSim, ordinals: std::ops::Range<u64>) -> Vec<String> {
    ordinals.map(|o| sim.api(o)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_up_adds_a_voter_only_once_its_pod_is_there_and_caught_up() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    let load = WriteLoad::start(&apis(&sim, 0..3), "load", 4);
    sim.set_replicas(5);
    // Pod 3 is held back: its process runs and claims its id, but it has no IP yet.
    sim.start_pod_published(3, false);
    sim.start_pod(4);
    let started = std::time::Instant::now();
    pod_0_sees_voters(&sim, &BTreeSet::from([1, 2, 3, 5])).await;
    eprintln!("scale 3 -> 5: pod 4 a voter {:?} after it started", started.elapsed());
    let acknowledged = load.acknowledged();
    for _ in 0..20 {
        let voters = voters_of(&sim, 0).await.expect("pod 0 answers");
        assert!(!voters.contains(&4), "pod 3 became a voter while nobody could reach it: {voters:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let load = &load;
        wait_for("writes to go on meanwhile", || async move { load.acknowledged() > acknowledged + 10 }).await;
    }
    sim.publish_ip(3);
    let published = std::time::Instant::now();
    cluster_with_voters(&mut sim, &(1..=5).collect()).await;
    eprintln!("scale 3 -> 5: pod 3 a voter {:?} after its IP was published", published.elapsed());
    // Each promotion happened once the learner had caught up, as the leader logged it.
    let logs: String = (0..5).map(|o| sim.log_text(o)).collect();
    assert_eq!(logs.matches("Promote").count(), 2, "one promotion per new pod");
    let written = load.stop().await;
    WriteLoad::assert_none_lost("load", &sim.client(0), &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_down_removes_one_voter_at_a_time_and_the_leader_last() {
    let mut sim = StatefulSetSim::new(5).await;
    sim.start_pods(0..5);
    one_cluster(&mut sim, 5).await;
    let leader = leader_among(&mut sim, 3..5, &(1..=5).collect()).await;
    let other = 7 - leader;
    let load = WriteLoad::start(&apis(&sim, 0..3), "load", 4);
    sim.set_replicas(3);
    // The removed pods keep running until the voters are reconciled, as they do on SIGTERM.
    pod_0_sees_voters(&sim, &BTreeSet::from([1, 2, 3])).await;
    let log = sim.log_text(leader);
    let other_removed = log.find(&format!("RemoveVoter {{ id: {}", other + 1)).expect("the other pod removed first");
    let leader_removed = log.find(&format!("RemoveVoter {{ id: {}", leader + 1)).expect("the leader removed itself");
    assert!(other_removed < leader_removed, "the leader removed itself before pod {other}");
    for id in [4, 5] {
        assert!(log.contains(&format!("Retire {{ id: {id} }}")), "node {id} was not retired before its removal");
    }
    sim.kill_pods(3..5);
    cluster_with_voters(&mut sim, &(1..=3).collect()).await;
    let written = load.stop().await;
    WriteLoad::assert_none_lost("load", &sim.client(0), &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_down_with_the_removed_pods_stopped_at_once() {
    let mut sim = StatefulSetSim::new(5).await;
    sim.start_pods(0..5);
    one_cluster(&mut sim, 5).await;
    leader_among(&mut sim, 3..5, &(1..=5).collect()).await;
    let load = WriteLoad::start(&apis(&sim, 0..3), "load", 4);
    {
        let load = &load;
        wait_for("writes before the pods are stopped", || async move { load.acknowledged() > 10 }).await;
    }
    sim.kill_pods(3..5);
    sim.set_replicas(3);
    cluster_with_voters(&mut sim, &(1..=3).collect()).await;
    let written = load.stop().await;
    assert!(!written.acknowledged.is_empty());
    WriteLoad::assert_none_lost("load", &sim.client(0), &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_down_of_a_majority_with_the_pods_stopped_at_once() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    let load = WriteLoad::start(&apis(&sim, 0..1), "load", 2);
    // 3 -> 1: the StatefulSet sends SIGTERM to both pods at once, before any voter changed.
    // Each keeps serving until the leader has removed it, so a quorum remains for each change.
    sim.set_replicas(1);
    let took = sim.stop_pods(1..3).await;
    eprintln!("scale 3 -> 1: the removed pods stopped {took:?} after SIGTERM");
    cluster_with_voters(&mut sim, &BTreeSet::from([1])).await;
    let written = load.stop().await;
    assert!(!written.acknowledged.is_empty());
    WriteLoad::assert_none_lost("load", &sim.client(0), &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaled_down_and_up_again_with_volumes_kept_the_pods_rejoin_under_new_ids() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    let id = one_cluster(&mut sim, 3).await;
    sim.set_replicas(5);
    sim.start_pods(3..5);
    cluster_with_voters(&mut sim, &(1..=5).collect()).await;
    sim.set_replicas(3);
    pod_0_sees_voters(&sim, &BTreeSet::from([1, 2, 3])).await;
    sim.kill_pods(3..5);
    // Their volumes stay (no `whenScaled: Delete`): state of ids 4 and 5, which left the cluster.
    sim.set_replicas(5);
    sim.start_pods(3..5);
    let again = cluster_with_voters(&mut sim, &BTreeSet::from([1, 2, 3, 1004, 1005])).await;
    assert_eq!(again, id);
    for ordinal in [3, 4] {
        assert!(sim.log_text(ordinal).contains("discarding its stale state"), "pod {ordinal} kept its stale state");
    }
    // And once more down and up: generation 2.
    sim.set_replicas(3);
    pod_0_sees_voters(&sim, &BTreeSet::from([1, 2, 3])).await;
    sim.kill_pods(3..5);
    sim.set_replicas(5);
    sim.start_pods(3..5);
    cluster_with_voters(&mut sim, &BTreeSet::from([1, 2, 3, 2004, 2005])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_restarted_ten_times_never_changes_the_voters() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    let voters: BTreeSet<u64> = (1..=3).collect();
    for round in 0..10 {
        sim.kill_pod(1);
        sim.start_pod(1);
        for _ in 0..5 {
            for ordinal in [0, 2] {
                if let Some(seen) = voters_of(&sim, ordinal).await {
                    assert_eq!(seen, voters, "round {round}: pod {ordinal} sees other voters");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        one_cluster(&mut sim, 3).await;
    }
    let logs: String = (0..3).map(|o| sim.log_text(o)).collect();
    assert!(!logs.contains("reconciling the voters\""), "a restart made the leader change the voters");
}

#[tokio::test(flavor = "multi_thread")]
async fn wiped_data_dirs_of_a_follower_then_the_leader_come_back_under_new_ids() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    let load = WriteLoad::start(&apis(&sim, 0..3), "load", 4);
    let leader = leader_ordinal(&sim).await;
    let follower = (leader + 1) % 3;
    let mut voters: BTreeSet<u64> = (1..=3).collect();
    for ordinal in [follower, leader] {
        sim.kill_pod(ordinal);
        sim.wipe(ordinal);
        sim.start_pod(ordinal);
        let old = voters.iter().copied().find(|&id| ids::ordinal_of(id) == ordinal).expect("a voter of the ordinal");
        voters.remove(&old);
        voters.insert(ids::node_id(ordinal, ids::generation_of(old) + 1));
        cluster_with_voters(&mut sim, &voters).await;
    }
    let written = load.stop().await;
    assert!(!written.acknowledged.is_empty());
    WriteLoad::assert_none_lost("load", &sim.client(0), &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_voter_change_while_the_api_server_is_unreachable() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    sim.fake.set_failing(true);
    sim.fake.drop_watches();
    sim.set_replicas(1);
    {
        let sim = &sim;
        wait_for("the leader to pause reconciling", || async move {
            (0..3).any(|o| sim.log_text(o).contains("reconciling the voters paused"))
        })
        .await;
    }
    let spec: gm::membership::MemberSpec =
        serde_json::from_value(common::lease_member("10.0.0.1:1")).expect("a member spec");
    for n in 0..30 {
        assert_eq!(voters_of(&sim, 0).await, Some((1..=3).collect()), "the voters changed while blind");
        // Writes go on: only reconciling waits for the API server.
        let (group, member) = common::names("blind", &format!("m{n}"));
        sim.client(n % 3).join(&group, &member, &spec).await.expect("a write while the API server fails");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back, with the history compacted: a watch from before gets 410 and lists again, and
    // sees the change it missed.
    sim.set_replicas(4);
    sim.fake.compact();
    sim.fake.set_failing(false);
    sim.start_pod(3);
    one_cluster(&mut sim, 4).await;
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
        let started = std::time::Instant::now();
        // Ready means a read-index round through the leader and the log applied up to it: the
        // leader reached the pod at its new IP (or the pod leads and reached the others).
        one_cluster(&mut sim, 3).await;
        eprintln!("pod {ordinal} at a new IP: ready and reached {:?} after it started", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_disks_lost_no_leader_until_gm_recover() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    let id = one_cluster(&mut sim, 3).await;
    let load = WriteLoad::start(&apis(&sim, 0..3), "load", 2);
    {
        let load = &load;
        wait_for("some writes", || async move { load.acknowledged() > 50 }).await;
    }
    let written = load.stop().await;
    // Pod 0 survives: it must hold every acknowledged write before the others go.
    WriteLoad::assert_none_lost("load", &sim.client(0), &written).await;
    sim.kill_pods(0..3);
    sim.wipe(1);
    sim.wipe(2);
    sim.start_pods(0..3);
    let readyz = |sim: &StatefulSetSim| {
        let url = format!("http://{}/readyz", sim.api(0));
        async move {
            let answer = reqwest::get(url).await.ok()?;
            Some((answer.status().as_u16(), answer.text().await.ok()?))
        }
    };
    // A clear status, and never a silent new cluster: nobody ready, no other leader, for a while.
    poll("pod 0 to say it has no quorum", || async {
        readyz(&sim)
            .await
            .filter(|(status, body)| *status == 503 && body.contains("2 of 3 voters") && body.contains("unreachable"))
    })
    .await;
    // Node 1 may take back the leadership its vote records, but commits nothing: writes fail.
    let spec: gm::membership::MemberSpec =
        serde_json::from_value(common::lease_member("10.0.0.1:1")).expect("a member spec");
    let (group, member) = common::names("load", "after-the-loss");
    assert!(sim.client(0).join(&group, &member, &spec).await.is_err(), "a write succeeded without a quorum");
    for _ in 0..20 {
        assert!(matches!(readyz(&sim).await, Some((503, _))), "pod 0 is ready without a quorum");
        for ordinal in 1..3 {
            assert!(!sim.is_ready(ordinal).await, "pod {ordinal} is ready without a quorum");
            let cluster = sim.cluster(ordinal).await;
            let leader = cluster.as_ref().and_then(|c| c.leader_id);
            assert!(matches!(leader, None | Some(1)), "pod {ordinal} follows another leader: {leader:?}");
            let named = cluster.and_then(|c| c.cluster_id);
            assert!(named.is_none() || named.as_ref() == Some(&id), "pod {ordinal} is in another cluster: {named:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.marker_creates(), 1);
    let recover = std::process::Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["recover", "--data-dir"])
        .arg(sim.data_dir(0))
        .output()
        .expect("gm recover");
    assert!(recover.status.success(), "gm recover: {}", String::from_utf8_lossy(&recover.stderr));
    sim.stop_pod(0).await;
    sim.start_pod(0);
    // Node 1 alone, then the lost disks' new ids through learners.
    let again = cluster_with_voters(&mut sim, &BTreeSet::from([1, 1002, 1003])).await;
    assert_eq!(again, id, "recovery kept the cluster");
    WriteLoad::assert_none_lost("load", &sim.client(1), &written).await;
}

/// The holder of the leader Lease once it names the pod of the leader pod `asked` sees, with a
/// leader other than node `not`; the Lease then.
async fn lease_on_the_leader(
    sim: &StatefulSetSim,
    asked: u64,
    not: Option<u64>,
) -> (u64, k8s_openapi::api::coordination::v1::Lease) {
    poll("the leader Lease to name the leader's pod", || async move {
        let leader = ids::ordinal_of(sim.cluster(asked).await?.leader_id?);
        let lease = sim.leader_lease()?;
        let holder = lease.spec.as_ref()?.holder_identity.clone()?;
        (Some(leader) != not && holder == sim.pod_name(leader)).then_some((leader, lease))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_lease_names_the_leaders_pod_and_moves_with_the_leadership() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    let (leader, lease) = lease_on_the_leader(&sim, 0, None).await;
    let spec = lease.spec.expect("a spec");
    let transitions = spec.lease_transitions.expect("leaseTransitions");
    assert!(spec.lease_duration_seconds.is_some_and(|d| d > 0), "no leaseDurationSeconds: {spec:?}");
    let acquired = spec.acquire_time.expect("acquireTime");
    // Renewed every few seconds by replace at the resourceVersion read.
    let renewed = poll("the leader to renew its Lease", || {
        let sim = &sim;
        async move { sim.leader_lease()?.spec?.renew_time.filter(|r| r.0 > acquired.0) }
    })
    .await;
    assert!(renewed.0 > acquired.0);

    sim.kill_pod(leader);
    let survivor = sim.running().next().expect("a pod runs");
    let (new_leader, lease) = lease_on_the_leader(&sim, survivor, Some(leader)).await;
    let spec = lease.spec.expect("a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(sim.pod_name(new_leader).as_str()));
    assert_eq!(spec.lease_transitions, Some(transitions + 1), "one change of holder: {spec:?}");
    assert!(spec.acquire_time.expect("acquireTime").0 > acquired.0, "the new holder's acquireTime is not new");
    let log = sim.log_text(new_leader);
    assert!(log.contains("taking the leader Lease over"), "the new leader did not log the take-over");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scale_up_is_reported_as_events_on_the_statefulset() {
    let mut sim = StatefulSetSim::new(3).await;
    sim.start_pods(0..3);
    one_cluster(&mut sim, 3).await;
    assert!(sim.events().is_empty(), "events before any voter change: {:?}", sim.events());
    sim.set_replicas(4);
    sim.start_pod(3);
    one_cluster(&mut sim, 4).await;
    let named = "node 4 (pod gm-cluster-3)";
    let events = poll("events for the learner added and the voter promoted", || {
        let sim = &sim;
        async move {
            let events = sim.events();
            let reasons: Vec<&str> = events
                .iter()
                .filter(|e| e.message.as_deref().is_some_and(|m| m.contains(named)))
                .filter_map(|e| e.reason.as_deref())
                .collect();
            (reasons == ["LearnerAdded", "VoterAdded"]).then_some(events)
        }
    })
    .await;
    let uid = sim.statefulset_uid();
    for event in &events {
        let object = &event.involved_object;
        assert_eq!(object.kind.as_deref(), Some("StatefulSet"));
        assert_eq!(object.api_version.as_deref(), Some("apps/v1"));
        assert_eq!(object.name.as_deref(), Some(sim.name.as_str()));
        assert_eq!(object.namespace.as_deref(), Some(sim.namespace.as_str()));
        assert_eq!(object.uid, uid, "the event names another StatefulSet");
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.source.as_ref().and_then(|s| s.component.as_deref()), Some("gm"));
        assert_eq!(event.reporting_component.as_deref(), Some("gm"));
        let instance = event.reporting_instance.as_deref().unwrap_or_default();
        assert!((0..3).any(|o| instance == sim.pod_name(o)), "reported by {instance:?}, not a pod of the cluster");
        assert!(event.last_timestamp.is_some() && event.count == Some(1), "{event:?}");
    }
}
