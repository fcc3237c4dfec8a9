//! Values of the command line that several subcommands share. Every flag also reads
//! `GM_<FLAG>` from the environment, so a Helm chart sets env and a person sets flags; each
//! subcommand's flags live next to it (`server::config`, `dev`, `bench`).

use std::time::Duration;

/// The file in a node's data dir that `gm server` locks for its life (`flock`), so that two
/// processes never write one Raft log; `gm dev` tries it to tell a data dir in use.
pub const DATA_DIR_LOCK: &str = "lock";

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
