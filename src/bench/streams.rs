//! `gm bench watch`: the fan-out of changes to many watch streams. Opens `--streams` watch
//! streams of one group, spread over the nodes of the bench's own cluster, then changes the
//! group every `--every` (a re-join of one member) for `--duration`, and prints how long each
//! change took to reach every stream, counted from the write's acknowledgement (p50, p99, max),
//! the changes a stream missed or got out of order, the streams that ended early, and what an
//! idle stream costs in memory on the nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cluster::{ClusterArgs, OwnCluster};
use super::figures::{latency, mib, mib_per_node, millis, Latencies};
use super::load::{bench_member, bench_name};
use super::scale::{pids, rss_bytes};
use super::{interruptible, BenchError, REQUEST_TIMEOUT};
use crate::client::{Client, RetryPolicy, Watch};
use crate::dev::say;
use crate::membership::{GroupName, MemberId};
use crate::wire::Consistency;

const GROUP: &str = "bench-watch";
/// The member whose re-joins are the changes.
const TICKER: &str = "ticker";
/// Streams being opened at once.
const OPENING: usize = 64;
/// Quiet time before memory is read, and how long stragglers may take after the last change.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Args)]
pub struct WatchConfig {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Watch streams, spread over the nodes round-robin.
    #[arg(long, env = "GM_BENCH_STREAMS", default_value_t = 1_000,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub streams: u32,
    /// Time between two changes of the group.
    #[arg(long, env = "GM_BENCH_EVERY", default_value = "100ms", value_parser = crate::config::positive_duration)]
    pub every: Duration,
    /// How long changes are made.
    #[arg(long, env = "GM_BENCH_DURATION", default_value = "10s", value_parser = crate::config::positive_duration)]
    pub duration: Duration,
    /// Members of the group besides the one that changes: the size of every view sent.
    #[arg(long, env = "GM_BENCH_GROUP_SIZE", default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub group_size: u32,
    /// Also print all figures as one JSON object.
    #[arg(long, env = "GM_BENCH_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    pub json: bool,
}

/// What one stream received: its first view's revision, then each view's revision and when
/// its bytes arrived; and whether it ended before the bench stopped it.
struct Received {
    first: u64,
    views: Vec<(u64, Instant)>,
    ended_early: bool,
}

pub async fn run(config: WatchConfig) -> Result<(), BenchError> {
    let mut own = OwnCluster::start(&config.cluster, &[])?;
    let client = Client::builder(&own.endpoints)
        .pool_max_idle_per_host(OPENING)
        .policy(RetryPolicy::once(REQUEST_TIMEOUT))
        .build();
    let result = match client {
        Ok(client) => interruptible(bench(&config, &client, &mut own)).await,
        Err(e) => Err(e.into()),
    };
    own.stop().await;
    result
}

async fn bench(config: &WatchConfig, client: &Client, own: &mut OwnCluster) -> Result<(), BenchError> {
    own.wait_ready(client).await?;
    let group = bench_name(GroupName::parse, GROUP).map_err(BenchError::Flags)?;
    for i in 0..config.group_size {
        join(client, &group, &format!("m-{i}"), "r0").await?;
    }
    join(client, &group, TICKER, "t0").await?;
    let pids = pids(own)?;
    tokio::time::sleep(SETTLE).await;
    let before: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();

    let (stop_tx, stop) = watch::channel(false);
    let opening = Arc::new(Semaphore::new(OPENING));
    let (open_tx, mut open_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut streams = JoinSet::new();
    let nodes = client.endpoints().len();
    for i in 0..config.streams as usize {
        let (node, group, stop, opening, open_tx) =
            (client.at(i % nodes), group.clone(), stop.clone(), Arc::clone(&opening), open_tx.clone());
        streams.spawn(async move {
            let permit = opening.acquire_owned().await;
            let mut watch = node.watch(&group, Consistency::Linearizable).await?;
            let first =
                next_view(&mut watch).await.ok_or_else(|| BenchError::Watch("a stream ended at once".into()))?;
            drop(permit);
            let _ = open_tx.send(());
            Ok::<_, BenchError>(receive(watch, first.0, stop).await)
        });
    }
    drop(open_tx);
    let opened_at = Instant::now();
    for _ in 0..config.streams {
        if open_rx.recv().await.is_none() {
            // A stream task failed before its first view: its error comes out of the join below.
            break;
        }
    }
    say(format_args!(
        "watch: {} streams open over {nodes} nodes after {}",
        config.streams,
        latency(opened_at.elapsed())
    ));
    tokio::time::sleep(SETTLE).await;
    let after: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();

    let acks = change(config, client, &group).await?;
    tokio::time::sleep(SETTLE).await;
    let _ = stop_tx.send(true);
    let mut received = Vec::new();
    while let Some(stream) = streams.join_next().await {
        received.push(stream??);
    }
    let figures = Delivery::tally(&acks, &received)?;
    let grown: u64 = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).sum();
    let per_stream_kib = grown as f64 / 1024.0 / f64::from(config.streams);
    say(figures.line(acks.len(), config.streams));
    say(format_args!(
        "watch: memory per idle stream {per_stream_kib:.1} KiB (the nodes' RSS grew by {:.1} MiB, from {} MiB)",
        mib(grown),
        mib_per_node(&before),
    ));
    if config.json {
        let mut report = figures.json(acks.len());
        report["streams"] = json!(config.streams);
        report["nodes"] = json!(nodes);
        report["every_ms"] = json!(millis(config.every));
        report["group_size"] = json!(config.group_size);
        report["memory_per_idle_stream_kib"] = json!((per_stream_kib * 10.0).round() / 10.0);
        report["rss_before_mib"] = json!(before.iter().map(|&b| mib(b).round()).collect::<Vec<_>>());
        say(report);
    }
    Ok(())
}

/// The next view of `watch`: its revision and when its bytes arrived; `None` if the stream
/// ended. The view is not decoded: the bench would measure itself.
async fn next_view(watch: &mut Watch) -> Option<(u64, Instant)> {
    match watch.next_revision().await {
        Some(Ok(revision)) => Some((revision, watch.received_at())),
        _ => None,
    }
}

/// Everything `watch` sends until `stop`.
async fn receive(mut watch: Watch, first: u64, mut stop: watch::Receiver<bool>) -> Received {
    let mut received = Received { first, views: Vec::new(), ended_early: false };
    // One wait for the stop for the whole stream, not one per view: each wait registers with the
    // channel that every stream shares, under its lock.
    let stopped = stop.wait_for(|&stopped| stopped);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            view = next_view(&mut watch) => match view {
                Some(view) => received.views.push(view),
                None => {
                    received.ended_early = true;
                    return received;
                }
            },
            _ = &mut stopped => return received,
        }
    }
}

/// Re-joins the ticker every `config.every` for `config.duration`: the revision of each change
/// and when its acknowledgement arrived.
async fn change(
    config: &WatchConfig,
    client: &Client,
    group: &GroupName,
) -> Result<BTreeMap<u64, Instant>, BenchError> {
    let mut acks = BTreeMap::new();
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + config.duration;
    for n in 1.. {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let revision = join(client, group, TICKER, &format!("t{n}")).await?;
        acks.insert(revision, Instant::now());
    }
    Ok(acks)
}

/// Joins `id` to `group` as a bench member with `instance`; the revision of the join.
async fn join(client: &Client, group: &GroupName, id: &str, instance: &str) -> Result<u64, BenchError> {
    let spec = bench_member(instance).map_err(BenchError::Flags)?;
    let id = bench_name(MemberId::parse, id).map_err(BenchError::Flags)?;
    Ok(client.join(group, &id, &spec).await?.answer.revision)
}

/// How the changes reached the streams.
struct Delivery {
    latency: Latencies,
    /// Deliveries whose bytes arrived before the writer had its acknowledgement (counted as 0).
    before_ack: u64,
    missed: u64,
    out_of_order: u64,
    ended_early: usize,
}

impl Delivery {
    fn tally(acks: &BTreeMap<u64, Instant>, streams: &[Received]) -> Result<Delivery, BenchError> {
        let mut d = Delivery { latency: Latencies::new()?, before_ack: 0, missed: 0, out_of_order: 0, ended_early: 0 };
        for stream in streams {
            d.ended_early += usize::from(stream.ended_early);
            let mut last = stream.first;
            let mut seen = std::collections::BTreeSet::new();
            for &(revision, at) in &stream.views {
                if revision <= last {
                    d.out_of_order += 1;
                }
                last = last.max(revision);
                seen.insert(revision);
                if let Some(&acked) = acks.get(&revision) {
                    match at.checked_duration_since(acked) {
                        Some(after) => d.latency.record(after),
                        None => {
                            d.before_ack += 1;
                            d.latency.record(Duration::ZERO);
                        }
                    }
                }
            }
            // Every change made after the stream's first view must have reached it.
            d.missed += acks.keys().filter(|&&r| r > stream.first && !seen.contains(&r)).count() as u64;
        }
        Ok(d)
    }

    /// The figures as JSON: latencies in milliseconds (absent without a delivery), counts.
    fn json(&self, changes: usize) -> Value {
        let [p50, p99, max] = self.latency.percentiles().map_or([None; 3], |p| p.map(|d| Some(millis(d))));
        json!({
            "changes": changes,
            "deliveries": self.latency.len(),
            "before_ack": self.before_ack,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max,
            "missed": self.missed,
            "out_of_order": self.out_of_order,
            "ended_early": self.ended_early,
        })
    }

    fn line(&self, changes: usize, streams: u32) -> String {
        let [p50, p99, max] = self.latency.percentiles().unwrap_or_default();
        format!(
            "watch: {changes} changes to {streams} streams: delivery after the write's acknowledgement p50 {} p99 {} max {} \
             ({} deliveries, {} before the acknowledgement); missed {}, out of order {}, streams ended early {}",
            latency(p50),
            latency(p99),
            latency(max),
            self.latency.len(),
            self.before_ack,
            self.missed,
            self.out_of_order,
            self.ended_early,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_timed_from_the_ack_and_gaps_and_reorders_are_counted() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let acks = BTreeMap::from([(11, ms(10)), (12, ms(20)), (13, ms(30))]);
        let streams = [
            // All three, one arriving just before its ack reached the writer.
            Received { first: 10, views: vec![(11, ms(15)), (12, ms(19)), (13, ms(40))], ended_early: false },
            // Opened after 11 (not missed), 13 lost, 12 sent twice.
            Received { first: 11, views: vec![(12, ms(25)), (12, ms(26))], ended_early: true },
        ];
        let d = Delivery::tally(&acks, &streams).unwrap();
        assert_eq!((d.missed, d.out_of_order, d.ended_early, d.before_ack), (1, 1, 1, 1));
        assert_eq!(d.latency.len(), 5);
        let [_, _, max] = d.latency.percentiles().unwrap();
        assert_eq!(max.as_millis(), 10);
    }
}
