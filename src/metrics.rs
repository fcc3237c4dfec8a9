//! Prometheus metrics: request counts and latencies, Raft leadership, and group sizes. Each part
//! feeds its own figures (this module imports none of them); gauges that mirror the state are
//! handed in when scraped ([`StateGauges`]), so they cost nothing between scrapes.

use std::time::Duration;

use crate::membership::GroupSummary;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The figures of the applied state, taken when `/metrics` is scraped.
pub struct StateGauges {
    pub applied_index: u64,
    pub groups: Vec<GroupSummary>,
    pub members: usize,
    /// Probe-mode members this node is responsible for.
    pub responsible_for: usize,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub leader_changes: IntCounter,
    pub probes: IntCounterVec,
    pub indirect_probes: IntCounterVec,
    pub evictions: IntCounterVec,
    pub heartbeats: IntCounterVec,
    term: IntGauge,
    is_leader: IntGauge,
    applied: IntGauge,
    groups: IntGauge,
    members: IntGauge,
    group_members: IntGaugeVec,
    responsible_for: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("gm".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "REST API requests by route, method and status"),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "REST API latency by route and method")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route", "method"],
        )?;
        let leader_changes = IntCounter::new("raft_leader_changes_total", "Times this node saw the leader change")?;
        let probes = IntCounterVec::new(Opts::new("probes_total", "Probes sent by this node, by result"), &["result"])?;
        let indirect_probes = IntCounterVec::new(
            Opts::new("indirect_probes_total", "Indirect probes of suspects asked of other nodes, by result"),
            &["result"],
        )?;
        let evictions =
            IntCounterVec::new(Opts::new("evictions_total", "Members this node removed, by reason"), &["reason"])?;
        let heartbeats = IntCounterVec::new(
            Opts::new("heartbeats_total", "Lease heartbeats answered by this node, by outcome"),
            &["outcome"],
        )?;
        let term = IntGauge::new("raft_term", "Current Raft term")?;
        let is_leader = IntGauge::new("raft_is_leader", "1 if this node is the leader")?;
        let applied = IntGauge::new("raft_applied_index", "Last log index applied to the state machine")?;
        let groups = IntGauge::new("groups", "Number of groups")?;
        let members = IntGauge::new("members", "Number of members over all groups")?;
        let group_members = IntGaugeVec::new(Opts::new("group_members", "Members in each group"), &["group"])?;
        let responsible_for = IntGauge::new("responsible_for", "Probe-mode members this node is responsible for")?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(leader_changes.clone()))?;
        registry.register(Box::new(probes.clone()))?;
        registry.register(Box::new(indirect_probes.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(heartbeats.clone()))?;
        registry.register(Box::new(term.clone()))?;
        registry.register(Box::new(is_leader.clone()))?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(groups.clone()))?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(group_members.clone()))?;
        registry.register(Box::new(responsible_for.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_duration,
            leader_changes,
            probes,
            indirect_probes,
            evictions,
            heartbeats,
            term,
            is_leader,
            applied,
            groups,
            members,
            group_members,
            responsible_for,
        })
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_requests.with_label_values(&[route, method, &status.to_string()]).inc();
        self.http_duration.with_label_values(&[route, method]).observe(elapsed.as_secs_f64());
    }

    /// The leadership as this node sees it: the current term, and whether it leads in it.
    pub fn set_leadership(&self, term: u64, leader: bool) {
        self.term.set(term as i64);
        self.is_leader.set(i64::from(leader));
    }

    /// Sets the state gauges from `gauges` and renders the text exposition.
    pub fn render(&self, gauges: &StateGauges) -> Result<String, prometheus::Error> {
        self.applied.set(gauges.applied_index as i64);
        self.groups.set(gauges.groups.len() as i64);
        self.members.set(gauges.members as i64);
        self.group_members.reset();
        for g in &gauges.groups {
            self.group_members.with_label_values(&[g.group.as_str()]).set(g.size as i64);
        }
        self.responsible_for.set(gauges.responsible_for as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
