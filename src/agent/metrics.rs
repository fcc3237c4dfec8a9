//! The agent's own metrics, in a registry of its own: the agent is not a GM node, so it shares
//! none of [`crate::metrics`]'s series. Names start with `gm_agent_`; labels are the agent's
//! groups (a handful) and small fixed sets of values. The process collector adds the standard
//! `process_*` metrics (memory, CPU), which tell what the sidecar costs.

use prometheus::core::Collector;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct AgentMetrics {
    registry: Registry,
    /// 1 while the agent is a member of the group, 0 otherwise.
    pub member: IntGaugeVec,
    /// The incarnation the agent holds in the group (0 when not a member).
    pub incarnation: IntGaugeVec,
    /// Joins acknowledged, first ones and re-joins.
    pub joins: IntCounterVec,
    /// Memberships lost, by why: `removed` (found itself gone), `unhealthy` (left because the
    /// app is unhealthy), `superseded` (another instance holds the id).
    pub lost: IntCounterVec,
    /// Lease heartbeats, by `result`: `ok`, `not_found`, `error`.
    pub heartbeats: IntCounterVec,
    /// GM's probes answered, by `answer`: `ok`, `unhealthy`.
    pub probes: IntCounterVec,
    /// 1 while the app counts as healthy.
    pub app_healthy: IntGauge,
    /// The revision of the cached view.
    pub view_revision: IntGaugeVec,
    /// Members in the cached view.
    pub view_members: IntGaugeVec,
    /// Watch streams opened (again) after one ended, broke or could not be opened.
    pub watch_restarts: IntCounter,
}

impl AgentMetrics {
    pub fn new() -> Result<AgentMetrics, prometheus::Error> {
        let registry = Registry::new();
        let m = AgentMetrics {
            member: IntGaugeVec::new(
                Opts::new("gm_agent_member", "1 while the agent is a member of the group"),
                &["group"],
            )?,
            incarnation: IntGaugeVec::new(
                Opts::new("gm_agent_incarnation", "the incarnation the agent holds in the group (0 when none)"),
                &["group"],
            )?,
            joins: IntCounterVec::new(
                Opts::new("gm_agent_joins_total", "joins acknowledged, re-joins included"),
                &["group"],
            )?,
            lost: IntCounterVec::new(
                Opts::new("gm_agent_memberships_lost_total", "memberships lost, by why"),
                &["group", "why"],
            )?,
            heartbeats: IntCounterVec::new(
                Opts::new("gm_agent_heartbeats_total", "lease heartbeats sent, by result"),
                &["result"],
            )?,
            probes: IntCounterVec::new(
                Opts::new("gm_agent_probes_total", "GM's probes answered, by answer"),
                &["answer"],
            )?,
            app_healthy: IntGauge::new("gm_agent_app_healthy", "1 while the app counts as healthy")?,
            view_revision: IntGaugeVec::new(
                Opts::new("gm_agent_view_revision", "the revision of the cached view of the group"),
                &["group"],
            )?,
            view_members: IntGaugeVec::new(
                Opts::new("gm_agent_view_members", "members in the cached view"),
                &["group"],
            )?,
            watch_restarts: IntCounter::new(
                "gm_agent_watch_restarts_total",
                "watch streams opened again after one ended, broke or could not be opened",
            )?,
            registry,
        };
        let collectors: [Box<dyn Collector>; 10] = [
            Box::new(m.member.clone()),
            Box::new(m.incarnation.clone()),
            Box::new(m.joins.clone()),
            Box::new(m.lost.clone()),
            Box::new(m.heartbeats.clone()),
            Box::new(m.probes.clone()),
            Box::new(m.app_healthy.clone()),
            Box::new(m.view_revision.clone()),
            Box::new(m.view_members.clone()),
            Box::new(m.watch_restarts.clone()),
        ];
        for collector in collectors {
            m.registry.register(collector)?;
        }
        m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// The text exposition of every series.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
