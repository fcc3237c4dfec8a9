//! Values of the command line that several subcommands share. Every flag also reads
//! `GM_<FLAG>` from the environment, so a Helm chart sets env and a person sets flags; each
//! subcommand's flags live next to it (`server::config`, `dev`, `bench`).

use std::time::Duration;

/// The file in a node's data dir that `gm server` locks for its life (`flock`), so that two
/// processes never write one Raft log; `gm dev` tries it to tell a data dir in use.
pub const DATA_DIR_LOCK: &str = "lock";

/// The CPUs this process may use: its affinity and cgroup quota (a pod's CPU limit), as
/// `std::thread::available_parallelism` counts them; 1 if that cannot be told. The default size
/// of `gm server`'s runtime, and what `gm dev` shares among its nodes.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Parses `250ms`, `1s`, `2m`.
pub fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// A duration flag that must be more than zero: a period, a deadline or a timeout, which zero
/// would make a busy loop or a failure at once.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}
