//! A rolling restart of the StatefulSet under write load, as its controller does one: highest
//! ordinal first, each pod deleted (SIGTERM, a clean exit), created again on its volume, and the
//! next one only once it is ready and the leader reaches every voter again. No acknowledged write
//! may be lost, never more than one voter is down, and the voters stay 1..=replicas.
//!
//! The figures of a roll (elections, how long writes failed, the longest wait between two
//! acknowledged writes) are printed, not asserted: they depend on the machine.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::fake_k8s::{one_cluster, voters, StatefulSetSim};
use common::{lease_member, names, poll, wait_for, Consistency};
use gm::client::{Client, ErrorKind, RetryPolicy};
use gm::membership::{GroupName, MemberSpec};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Concurrent writers, each joining new members to its own group.
const WRITERS: usize = 4;
/// Between two writes of one writer: a steady load that leaves a 2-core machine room for the
/// nodes' Raft timers, so that the elections counted are the roll's.
const WRITE_PAUSE: Duration = Duration::from_millis(20);
/// A writer's client fails over to the next pod on no answer or `503`, as a user's would, and
/// gives up after a second: that attempt is counted failed, and the writer tries again.
const WRITE_POLICY: RetryPolicy = RetryPolicy {
    attempt_timeout: Duration::from_secs(10),
    deadline: Duration::from_secs(1),
    first_pause: Duration::from_millis(20),
    max_pause: Duration::from_millis(100),
};
/// How long the load runs alone before the roll and after it.
const LOAD_ALONE: Duration = Duration::from_secs(2);
/// How long a pod is gone in the second roll, between its process's exit and its next start: a
/// StatefulSet controller, scheduler and kubelet take seconds, far more than an election timeout.
const GONE_FOR: Duration = Duration::from_secs(2);
/// How often the leader and term are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What the writers saw.
#[derive(Default)]
struct Writes {
    /// `(group, member)` to the incarnation of its acknowledged join.
    acknowledged: BTreeMap<(String, String), u64>,
    /// When each acknowledgement arrived.
    acknowledged_at: Vec<Instant>,
    /// Every `(group, member)` a join was sent for, acknowledged or not.
    sent: BTreeSet<(String, String)>,
    /// Attempts that got no node to take the write in time: when each started and ended.
    failed: Vec<(Instant, Instant)>,
    /// Answers that a roll must never cause (anything but "unavailable").
    refused: Vec<String>,
}

/// The leader as sampled over the roll: `(term, leader)` each time it changed.
#[derive(Default)]
struct Leaders {
    seen: Vec<(u64, Option<u64>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Joins members `w{writer}-0`, `-1`, ... to group `roll-{writer}` one after another until
/// `stop`, each retried until acknowledged.
async fn writer(client: Client, writer: usize, writes: Arc<Mutex<Writes>>, stop: CancellationToken) {
    let group = format!("roll-{writer}");
    for i in 0usize.. {
        let id = format!("w{writer}-{i}");
        let (g, m) = names(&group, &id);
        let address = format!("10.{writer}.{}.{}:9000", i / 256 % 256, i % 256);
        let spec: MemberSpec = serde_json::from_value(lease_member(&address)).expect("a join body");
        lock(&writes).sent.insert((group.clone(), id.clone()));
        loop {
            if stop.is_cancelled() {
                return;
            }
            let started = Instant::now();
            let result = client.join(&g, &m, &spec).await;
            let mut w = lock(&writes);
            match result {
                Ok(joined) => {
                    w.acknowledged.insert((group.clone(), id.clone()), joined.answer.member.incarnation);
                    w.acknowledged_at.push(Instant::now());
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Unavailable => w.failed.push((started, Instant::now())),
                Err(e) => {
                    w.refused.push(format!("join {group}/{id}: {e}"));
                    return;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WRITE_PAUSE) => {}
        }
    }
}

/// Samples every pod's stale `/v1/cluster` until `stop`, and records the leader of the highest
/// term any pod reports each time it changes.
async fn sample_leaders(pods: Vec<Client>, leaders: Arc<Mutex<Leaders>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let answers = futures::future::join_all(pods.iter().map(|c| c.cluster(Consistency::Stale))).await;
        // The highest term wins; within it, an answer that knows the leader.
        let latest = answers.into_iter().flatten().map(|c| (c.term, c.leader_id)).max();
        if let Some(latest) = latest {
            let mut l = lock(&leaders);
            if l.seen.last() != Some(&latest) {
                l.seen.push(latest);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Waits until every pod is ready, agrees on the leader and the voters 1..=replicas, and the
/// leader reaches every voter: all voters up, so the controller may take the next pod down.
async fn all_voters_up(sim: &StatefulSetSim, replicas: u64) {
    let expected: BTreeSet<u64> = (1..=replicas).collect();
    poll("every pod ready, voters = replicas, every voter reachable from the leader", || {
        let expected = expected.clone();
        async move {
            let mut leaders = BTreeSet::new();
            for ordinal in 0..replicas {
                if !sim.is_ready(ordinal).await {
                    return None;
                }
                let cluster = sim.cluster(ordinal).await?;
                let reachable = cluster.nodes.iter().all(|n| n.health.as_ref().is_some_and(|h| h.reachable));
                if voters(&cluster) != expected || cluster.nodes.len() as u64 != replicas || !reachable {
                    return None;
                }
                leaders.insert(cluster.leader_id?);
            }
            (leaders.len() == 1).then_some(())
        }
    })
    .await
}

/// The term and leader, read through the leader.
async fn term_and_leader(sim: &StatefulSetSim, replicas: u64) -> (u64, u64) {
    poll("a linearizable read of the cluster", || async {
        for ordinal in 0..replicas {
            if let Ok(c) = sim.client(ordinal).cluster(Consistency::Linearizable).await {
                return Some((c.term, c.leader_id?));
            }
        }
        None
    })
    .await
}

/// The total length of the union of `intervals`.
fn covered(mut intervals: Vec<(Instant, Instant)>) -> Duration {
    intervals.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, end) in intervals {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(Duration::ZERO, |(s, e)| e - s)
}

/// The longest time between two acknowledgements within `[from, to]`, counting its ends.
fn longest_gap(acknowledged_at: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acknowledged_at.iter().copied().filter(|&t| from <= t && t <= to).collect();
    times.push(from);
    times.push(to);
    times.sort();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// The write load and the leader sampling, running until [`Load::stop`].
struct Load {
    client: Client,
    writes: Arc<Mutex<Writes>>,
    leaders: Arc<Mutex<Leaders>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Load {
    fn start(sim: &StatefulSetSim, replicas: u64) -> Load {
        let apis: Vec<String> = (0..replicas).map(|o| sim.api(o)).collect();
        let client = Client::builder(&apis).policy(WRITE_POLICY).build().expect("client");
        let pods = (0..replicas as usize).map(|i| client.at(i).with_policy(RetryPolicy::once(Duration::from_secs(1))));
        let (writes, leaders) = (Arc::default(), Arc::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for w in 0..WRITERS {
            tasks.spawn(writer(client.starting_at(w), w, Arc::clone(&writes), stop.clone()));
        }
        tasks.spawn(sample_leaders(pods.collect(), Arc::clone(&leaders), stop.clone()));
        Load { client, writes, leaders, stop, tasks }
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        while let Some(done) = self.tasks.join_next().await {
            done.expect("a load task panicked");
        }
    }

    /// Every member of the writers' groups, read through the leader: `(group, member)` to its
    /// incarnation.
    async fn stored(&self) -> BTreeMap<(String, String), u64> {
        let reader = self.client.with_policy(RetryPolicy::default());
        let mut stored = BTreeMap::new();
        for w in 0..WRITERS {
            let group = GroupName::parse(&format!("roll-{w}")).expect("a group name");
            let view = reader.group(&group, Consistency::Linearizable).await.expect("a linearizable read of the group");
            stored.extend(view.members.into_iter().map(|m| ((m.group.to_string(), m.id.to_string()), m.incarnation)));
        }
        stored
    }
}

/// Rolls every pod as the StatefulSet controller does (highest ordinal first, the next only once
/// all voters are up again), each gone for `gone_for`, and prints the figures of the roll.
async fn roll(sim: &mut StatefulSetSim, replicas: u64, load: &Load, gone_for: Duration) {
    let what = format!("roll of {replicas}, pods gone {:.1} s", gone_for.as_secs_f64());
    all_voters_up(sim, replicas).await;
    let (term_before, leader_before) = term_and_leader(sim, replicas).await;
    let started = Instant::now();
    for ordinal in (0..replicas).rev() {
        // Never more than one voter down: every pod is back and reached before the next goes.
        all_voters_up(sim, replicas).await;
        assert_eq!(sim.running().count() as u64, replicas, "a pod is down before pod {ordinal} is taken down");
        let was_leader = lock(&load.leaders).seen.last().and_then(|&(_, l)| l) == Some(ordinal + 1);
        let step = Instant::now();
        let exited_after = sim.roll_pod(ordinal, gone_for).await;
        {
            let sim = &*sim;
            wait_for(&format!("pod {ordinal} ready after its restart"), || sim.is_ready(ordinal)).await;
        }
        let ready_after = step.elapsed();
        assert!(sim.exited().is_empty(), "pods exited: {:?}", sim.exited());
        all_voters_up(sim, replicas).await;
        eprintln!(
            "{what}: pod {ordinal} (node {}{}) exited {:.2} s after SIGTERM, ready {:.2} s and all voters up \
             {:.2} s after it",
            ordinal + 1,
            if was_leader { ", the leader" } else { "" },
            exited_after.as_secs_f64(),
            ready_after.as_secs_f64(),
            step.elapsed().as_secs_f64(),
        );
    }
    let ended = Instant::now();
    let (term_after, leader_after) = term_and_leader(sim, replicas).await;

    let leaderships: BTreeSet<(u64, u64)> = lock(&load.leaders)
        .seen
        .iter()
        .filter(|(term, _)| (term_before + 1..=term_after).contains(term))
        .filter_map(|&(term, leader)| Some((term, leader?)))
        .collect();
    let writes = lock(&load.writes);
    let failed: Vec<(Instant, Instant)> =
        writes.failed.iter().copied().filter(|&(s, e)| e >= started && s <= ended).collect();
    eprintln!(
        "{what}: took {:.1} s; term {term_before} -> {term_after} ({} elections started), leader {leader_before} -> \
         {leader_after}, new leaders sampled: {leaderships:?}; writes acknowledged during the roll: {}, failed \
         attempts: {} covering {:.2} s, longest gap between acknowledged writes: {:.2} s",
        (ended - started).as_secs_f64(),
        term_after - term_before,
        writes.acknowledged_at.iter().filter(|&&t| started <= t && t <= ended).count(),
        failed.len(),
        covered(failed).as_secs_f64(),
        longest_gap(&writes.acknowledged_at, started, ended).as_secs_f64(),
    );
}

/// Rolls the StatefulSet twice under load: pods restarted at once (within an election timeout: a
/// leader may come back before anyone noticed), then gone a while as in a real cluster (the leader's
/// departure forces an election).
async fn rolling_restart(replicas: u64) {
    let mut sim = StatefulSetSim::new(replicas as i32).await;
    sim.start_pods(0..replicas);
    let cluster_id = one_cluster(&mut sim, replicas).await;
    let mut load = Load::start(&sim, replicas);
    tokio::time::sleep(LOAD_ALONE).await;
    roll(&mut sim, replicas, &load, Duration::ZERO).await;
    roll(&mut sim, replicas, &load, GONE_FOR).await;
    tokio::time::sleep(LOAD_ALONE).await;
    load.stop().await;

    // Nothing changed that a roll must not change.
    assert_eq!(one_cluster(&mut sim, replicas).await, cluster_id, "the cluster id changed");
    assert_eq!(sim.marker_creates(), 1, "a roll created the bootstrap marker again");
    let stored = load.stored().await;
    let writes = lock(&load.writes);
    assert!(writes.refused.is_empty(), "writes refused during the rolls: {:?}", writes.refused);
    let lost: Vec<_> = writes.acknowledged.iter().filter(|(k, v)| stored.get(*k) != Some(v)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost (first 10): {:?}", lost.len(), &lost[..lost.len().min(10)]);
    let unsent: Vec<_> = stored.keys().filter(|k| !writes.sent.contains(*k)).collect();
    assert!(unsent.is_empty(), "members nobody joined: {unsent:?}");
    let acknowledged = writes.acknowledged.len();
    eprintln!("rolls of {replicas}: {acknowledged} writes acknowledged, every one in a linearizable read (lost: 0)");
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_of_3_under_load_loses_no_acknowledged_write() {
    rolling_restart(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_of_5_under_load_loses_no_acknowledged_write() {
    rolling_restart(5).await;
}
