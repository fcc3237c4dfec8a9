//! Values of the command line that several subcommands share. Every flag also reads
//! `GM_<FLAG>` from the environment, so a Helm chart sets env and a person sets flags; each
//! subcommand's flags live next to it (`server::config`, `dev`, `bench`).

use std::time::Duration;

/// Parses `250ms`, `1s`, `2m`.
pub fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}
