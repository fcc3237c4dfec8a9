//! Prometheus metrics, named as `docs/metrics.md` lists them. Each part feeds its own figures
//! (this module imports none of them); gauges that mirror the state or Raft are handed in when
//! `/metrics` is scraped ([`ScrapeFigures`]), so they cost nothing between scrapes. The process
//! collector adds the standard `process_*` metrics.

use std::time::Duration;

use crate::membership::{GroupSummary, LeaveReason, NodeId};
use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The series `gm_group_members` sums the groups past `--metrics-group-limit` into.
pub const OTHER_GROUPS: &str = "_other";

/// Latency buckets from 0.5 ms to 10 s, for requests and peer calls.
const LATENCY: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Raft's figures as this node sees them, read when `/metrics` is scraped.
#[derive(Clone, Debug, Default)]
pub struct RaftFigures {
    pub has_leader: bool,
    pub is_leader: bool,
    pub term: u64,
    pub applied_index: u64,
    pub voters: usize,
    /// Voters the leader reached lately, itself included; `None` when no leader tells.
    pub voters_reachable: Option<usize>,
    /// On the leader only: entries each follower's log is behind the leader's.
    pub replication_lag: Vec<(NodeId, u64)>,
}

/// Everything `/metrics` reads from the state and Raft at scrape time.
pub struct ScrapeFigures {
    pub groups: Vec<GroupSummary>,
    pub members: usize,
    /// Probe-mode members this node is responsible for.
    pub responsible_members: usize,
    pub raft: RaftFigures,
}

/// The label of a removal's reason in `gm_members_removed_total`.
pub fn removal_reason(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Left => "left",
        LeaveReason::Failed => "failed",
        LeaveReason::Expired => "lease_expired",
    }
}

/// The process-wide registry and every gm metric. Counters and histograms are fed directly by
/// the parts; the state and Raft gauges are set in [`Metrics::render`].
pub struct Metrics {
    registry: Registry,
    group_limit: usize,

    // Failure detection.
    pub probes: IntCounterVec,
    pub probe_duration: Histogram,
    pub suspicions: IntCounter,
    pub suspicions_refuted: IntCounter,
    pub indirect_probes: IntCounterVec,
    pub members_removed: IntCounterVec,
    pub lease_heartbeats: IntCounterVec,
    responsible_members: IntGauge,

    // Membership.
    pub joins: IntCounterVec,
    pub leaves: IntCounterVec,
    groups: IntGauge,
    members: IntGauge,
    group_members: IntGaugeVec,

    // Raft.
    has_leader: IntGauge,
    is_leader: IntGauge,
    term: IntGauge,
    pub leader_changes: IntCounter,
    pub commit_index: IntGauge,
    applied_index: IntGauge,
    voters: IntGauge,
    voters_reachable: IntGauge,
    pub proposals_committed: IntCounter,
    pub proposals_failed: IntCounter,
    pub proposals_pending: IntGauge,
    pub proposal_batch_size: Histogram,
    pub read_indexes: IntCounterVec,
    pub pre_votes: IntCounterVec,
    pub log_fsync_duration: Histogram,
    pub log_size: IntGauge,
    pub snapshots: IntCounter,
    pub snapshot_size: IntGauge,
    pub snapshot_duration: Histogram,
    replication_lag: IntGaugeVec,
    pub peer_rpc_duration: HistogramVec,
    pub peer_rpc_failures: IntCounterVec,

    // REST.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub forwarded_requests: IntCounterVec,
    pub watch_streams: IntGauge,
    pub blocking_queries: IntGauge,
}

fn counter(name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    IntCounter::new(name, help)
}

fn counters(name: &str, help: &str, label: &str) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), &[label])
}

fn gauge(name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    IntGauge::new(name, help)
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

/// Counter children that exist from the start, so a rate over them is 0 rather than absent.
fn with_labels(vec: IntCounterVec, values: &[&str]) -> IntCounterVec {
    for value in values {
        vec.with_label_values(&[value]);
    }
    vec
}

impl Metrics {
    /// The metrics of one node; `group_limit` groups at most get a `gm_group_members` series of
    /// their own.
    pub fn new(group_limit: usize) -> Result<Self, prometheus::Error> {
        let m = Metrics {
            registry: Registry::new(),
            group_limit,
            probes: with_labels(
                counters(
                    "gm_probes_total",
                    "Probes this node sent to the members it is responsible for, by result",
                    "result",
                )?,
                &["ok", "timeout", "refused", "bad_status", "error"],
            ),
            probe_duration: histogram(
                "gm_probe_duration_seconds",
                "Time from sending a probe to its answer or failure",
                LATENCY.to_vec(),
            )?,
            suspicions: counter(
                "gm_suspicions_total",
                "Members that reached --suspect-after failed probes, so that other nodes were asked to probe them",
            )?,
            suspicions_refuted: counter(
                "gm_suspicions_refuted_total",
                "Suspicions an indirect probe refuted: another node reached the member, which was kept",
            )?,
            indirect_probes: with_labels(
                counters(
                    "gm_indirect_probes_total",
                    "Probes this node made for other nodes that suspect a member, by result",
                    "result",
                )?,
                &["ok", "failed"],
            ),
            members_removed: with_labels(
                counters(
                    "gm_members_removed_total",
                    "Members removed by a command this node committed, by reason",
                    "reason",
                )?,
                &["failed", "lease_expired", "left"],
            ),
            lease_heartbeats: with_labels(
                counters("gm_lease_heartbeats_total", "Lease heartbeats this node received, by outcome", "outcome")?,
                &["ok", "not_found", "forwarded", "error"],
            ),
            responsible_members: gauge("gm_responsible_members", "Probe-mode members this node is responsible for")?,

            joins: with_labels(
                counters("gm_joins_total", "Joins answered by this node's API, by outcome", "outcome")?,
                &["created", "rejoined", "updated", "rejected"],
            ),
            leaves: with_labels(
                counters("gm_leaves_total", "Leaves answered by this node's API, by outcome", "outcome")?,
                &["left", "not_found"],
            ),
            groups: gauge("gm_groups", "Groups with at least one member")?,
            members: gauge("gm_members", "Members over all groups")?,
            group_members: IntGaugeVec::new(
                Opts::new(
                    "gm_group_members",
                    "Members of each group; the groups past --metrics-group-limit summed in group=\"_other\"",
                ),
                &["group"],
            )?,

            has_leader: gauge("gm_raft_has_leader", "1 if this node knows a leader")?,
            is_leader: gauge("gm_raft_is_leader", "1 if this node is the leader")?,
            term: gauge("gm_raft_term", "Current Raft term")?,
            leader_changes: counter("gm_raft_leader_changes_total", "Leader changes this node saw")?,
            commit_index: gauge("gm_raft_commit_index", "Last log index this node knows to be committed")?,
            applied_index: gauge("gm_raft_applied_index", "Last log index applied to this node's state")?,
            voters: gauge("gm_raft_voters", "Voters in the Raft membership")?,
            voters_reachable: gauge(
                "gm_raft_voters_reachable",
                "Voters the leader reached lately, itself included, as the leader reports it; 0 when no leader answers",
            )?,
            proposals_committed: counter(
                "gm_raft_proposals_committed_total",
                "Commands this node proposed as leader that were committed and applied",
            )?,
            proposals_failed: counter(
                "gm_raft_proposals_failed_total",
                "Commands this node proposed as leader that failed or timed out",
            )?,
            proposals_pending: gauge(
                "gm_raft_proposals_pending",
                "Commands this node proposed that are not answered yet",
            )?,
            proposal_batch_size: histogram(
                "gm_raft_proposal_batch_size",
                "Commands per proposed log entry",
                exponential_buckets(1.0, 2.0, 12)?,
            )?,
            read_indexes: with_labels(
                counters(
                    "gm_raft_read_indexes_total",
                    "Read indexes this node gave as leader, by how it knew it still led",
                    "by",
                )?,
                &["lease", "round"],
            ),
            pre_votes: with_labels(
                counters(
                    "gm_raft_pre_votes_total",
                    "Pre-votes this node asked for before an election, by whether a majority granted it",
                    "outcome",
                )?,
                &["won", "lost"],
            ),
            log_fsync_duration: histogram(
                "gm_raft_log_fsync_duration_seconds",
                "Time to flush and fsync one group of Raft log appends",
                exponential_buckets(0.0005, 2.0, 15)?,
            )?,
            log_size: gauge("gm_raft_log_size_bytes", "Bytes of Raft log segments on disk")?,
            snapshots: counter("gm_raft_snapshots_total", "Snapshots this node built or installed")?,
            snapshot_size: gauge("gm_raft_snapshot_size_bytes", "Size of the latest snapshot")?,
            snapshot_duration: histogram(
                "gm_raft_snapshot_duration_seconds",
                "Time to build (or install) and write a snapshot",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
            replication_lag: IntGaugeVec::new(
                Opts::new(
                    "gm_raft_replication_lag_entries",
                    "Entries a follower's log is behind the leader's (leader only)",
                ),
                &["follower"],
            )?,
            peer_rpc_duration: HistogramVec::new(
                HistogramOpts::new("gm_peer_rpc_duration_seconds", "Round trip of calls to other nodes, by call")
                    .buckets(LATENCY.to_vec()),
                &["rpc"],
            )?,
            peer_rpc_failures: counters(
                "gm_peer_rpc_failures_total",
                "Calls to other nodes that got no answer or an error status, by call",
                "rpc",
            )?,

            http_requests: IntCounterVec::new(
                Opts::new("gm_http_requests_total", "REST API requests by route template, method and status"),
                &["route", "method", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new("gm_http_request_duration_seconds", "REST API latency by route template and method")
                    .buckets(LATENCY.to_vec()),
                &["route", "method"],
            )?,
            forwarded_requests: with_labels(
                counters("gm_forwarded_requests_total", "Requests this node passed on to the leader, by kind", "kind")?,
                &["write", "read_index", "heartbeat"],
            ),
            watch_streams: gauge("gm_watch_streams", "Open watch streams (SSE)")?,
            blocking_queries: gauge("gm_blocking_queries", "Blocking queries waiting for a change")?,
        };
        for c in m.collectors() {
            m.registry.register(c)?;
        }
        m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.probes.clone()),
            Box::new(self.probe_duration.clone()),
            Box::new(self.suspicions.clone()),
            Box::new(self.suspicions_refuted.clone()),
            Box::new(self.indirect_probes.clone()),
            Box::new(self.members_removed.clone()),
            Box::new(self.lease_heartbeats.clone()),
            Box::new(self.responsible_members.clone()),
            Box::new(self.joins.clone()),
            Box::new(self.leaves.clone()),
            Box::new(self.groups.clone()),
            Box::new(self.members.clone()),
            Box::new(self.group_members.clone()),
            Box::new(self.has_leader.clone()),
            Box::new(self.is_leader.clone()),
            Box::new(self.term.clone()),
            Box::new(self.leader_changes.clone()),
            Box::new(self.commit_index.clone()),
            Box::new(self.applied_index.clone()),
            Box::new(self.voters.clone()),
            Box::new(self.voters_reachable.clone()),
            Box::new(self.proposals_committed.clone()),
            Box::new(self.proposals_failed.clone()),
            Box::new(self.proposals_pending.clone()),
            Box::new(self.proposal_batch_size.clone()),
            Box::new(self.read_indexes.clone()),
            Box::new(self.pre_votes.clone()),
            Box::new(self.log_fsync_duration.clone()),
            Box::new(self.log_size.clone()),
            Box::new(self.snapshots.clone()),
            Box::new(self.snapshot_size.clone()),
            Box::new(self.snapshot_duration.clone()),
            Box::new(self.replication_lag.clone()),
            Box::new(self.peer_rpc_duration.clone()),
            Box::new(self.peer_rpc_failures.clone()),
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.forwarded_requests.clone()),
            Box::new(self.watch_streams.clone()),
            Box::new(self.blocking_queries.clone()),
        ]
    }

    pub fn observe_request(&self, route: &str, method: &str, status: http::StatusCode, elapsed: Duration) {
        self.http_requests.with_label_values(&[route, method, status.as_str()]).inc();
        self.http_duration.with_label_values(&[route, method]).observe(elapsed.as_secs_f64());
    }

    /// One probe of a member this node is responsible for.
    pub fn observe_probe(&self, result: &str, took: Duration) {
        self.probes.with_label_values(&[result]).inc();
        self.probe_duration.observe(took.as_secs_f64());
    }

    /// One call to another node; `failed` when it got no answer or an error status.
    pub fn observe_peer_rpc(&self, rpc: &str, took: Duration, failed: bool) {
        self.peer_rpc_duration.with_label_values(&[rpc]).observe(took.as_secs_f64());
        if failed {
            self.peer_rpc_failures.with_label_values(&[rpc]).inc();
        }
    }

    /// A member removed by a command this node committed.
    pub fn member_removed(&self, reason: LeaveReason) {
        self.members_removed.with_label_values(&[removal_reason(reason)]).inc();
    }

    /// A snapshot this node built or installed: its size and how long it took.
    pub fn observe_snapshot(&self, bytes: usize, took: Duration) {
        self.snapshots.inc();
        self.snapshot_size.set(bytes as i64);
        self.snapshot_duration.observe(took.as_secs_f64());
    }

    /// Sets the state and Raft gauges from `figures` and renders the text exposition.
    pub fn render(&self, figures: ScrapeFigures) -> Result<String, prometheus::Error> {
        self.groups.set(figures.groups.len() as i64);
        self.members.set(figures.members as i64);
        self.responsible_members.set(figures.responsible_members as i64);
        self.group_members.reset();
        for (group, size) in limit_groups(figures.groups, self.group_limit) {
            self.group_members.with_label_values(&[&group]).set(size as i64);
        }
        let raft = figures.raft;
        self.has_leader.set(i64::from(raft.has_leader));
        self.is_leader.set(i64::from(raft.is_leader));
        self.term.set(raft.term as i64);
        self.applied_index.set(raft.applied_index as i64);
        self.voters.set(raft.voters as i64);
        self.voters_reachable.set(raft.voters_reachable.unwrap_or(0) as i64);
        self.replication_lag.reset();
        for (follower, lag) in raft.replication_lag {
            self.replication_lag.with_label_values(&[&follower.to_string()]).set(lag as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// The `gm_group_members` series: the `limit` largest groups by name (ties by name), and the
/// rest summed as [`OTHER_GROUPS`] if there are any.
fn limit_groups(mut groups: Vec<GroupSummary>, limit: usize) -> Vec<(String, usize)> {
    groups.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.group.cmp(&b.group)));
    let rest = groups.split_off(limit.min(groups.len()));
    let mut series: Vec<(String, usize)> = groups.into_iter().map(|g| (g.group.as_str().to_owned(), g.size)).collect();
    if !rest.is_empty() {
        series.push((OTHER_GROUPS.to_owned(), rest.iter().map(|g| g.size).sum()));
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::GroupName;

    fn summary(name: &str, size: usize) -> GroupSummary {
        GroupSummary { group: GroupName::parse(name).unwrap(), revision: 1, size }
    }

    #[test]
    fn groups_past_the_limit_are_summed_into_other() {
        let groups = vec![summary("a", 1), summary("b", 5), summary("c", 3), summary("d", 3)];
        let series = limit_groups(groups, 2);
        assert_eq!(series, vec![("b".into(), 5), ("c".into(), 3), (OTHER_GROUPS.into(), 4)]);
        assert_eq!(limit_groups(vec![summary("a", 1)], 2), vec![("a".into(), 1)]);
        assert_eq!(limit_groups(vec![summary("a", 1)], 0), vec![(OTHER_GROUPS.into(), 1)]);
    }

    #[test]
    fn renders_every_family_with_its_name() {
        let metrics = Metrics::new(10).unwrap();
        metrics.observe_probe("ok", Duration::from_millis(3));
        let figures = ScrapeFigures {
            groups: vec![summary("orders", 2)],
            members: 2,
            responsible_members: 1,
            raft: RaftFigures {
                has_leader: true,
                is_leader: true,
                replication_lag: vec![(2, 4)],
                ..Default::default()
            },
        };
        let text = metrics.render(figures).unwrap();
        for line in [
            "gm_probes_total{result=\"ok\"} 1",
            "gm_probes_total{result=\"timeout\"} 0",
            "gm_group_members{group=\"orders\"} 2",
            "gm_raft_replication_lag_entries{follower=\"2\"} 4",
            "gm_raft_is_leader 1",
            "gm_members_removed_total{reason=\"lease_expired\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        assert!(text.contains("process_start_time_seconds"), "the process collector is registered");
    }
}
