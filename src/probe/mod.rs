//! Failure detection: the members a node is responsible for are probed over HTTP (`prober`),
//! suspected failures are confirmed by another node before removal (`check`), the leader hands
//! the members of dead GM nodes to live ones (`handover`) and expires leases (`lease`).

pub mod check;
pub mod handover;
pub mod lease;
pub mod peer;
pub mod prober;

use std::time::Duration;

use crate::config::ServerConfig;

/// The failure-detection settings of `gm server`.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub suspect_after: u32,
}

impl From<&ServerConfig> for ProbeConfig {
    fn from(c: &ServerConfig) -> Self {
        ProbeConfig { interval: c.probe_interval, timeout: c.probe_timeout, suspect_after: c.suspect_after }
    }
}
