//! Failure detection: the members a node is responsible for are probed over HTTP (`prober`),
//! suspected failures are confirmed by another node before removal (`check`), the leader hands
//! the members of dead GM nodes to live ones (`handover`) and expires leases (`lease`).

pub mod check;
pub mod deadlines;
pub mod handover;
pub mod lease;
pub mod peer;
pub mod prober;

use std::time::Duration;

/// Where failure detection's calls to other nodes go (served by [`peer::router`]).
pub mod path {
    pub const PING: &str = "/peer/ping";
    pub const INDIRECT_PROBE: &str = "/probe/indirect";
    pub const HEARTBEAT: &str = "/forward/heartbeat";
}

/// The failure-detection settings of `gm server`.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub suspect_after: u32,
}
