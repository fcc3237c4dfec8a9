//! Logging: `tracing` events with fields, as text for people or JSON for log pipelines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event, for log pipelines.
    Json,
}

/// Checks a `--log` filter (as in RUST_LOG): a typo is an error, not a silent fallback.
pub fn filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}

/// Starts logging to stderr with `filter` (checked by [`filter`]) in `format`. Colours only on
/// a terminal, and never when `NO_COLOR` is set (<https://no-color.org>).
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
