//! The `gm` command: parses the command line and hands off to the library.

use clap::Parser;
use gm::config::{Cli, CliCommand};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gm::telemetry::init(&cli.log, cli.log_format);
    match cli.command {
        CliCommand::Server(config) => gm::server::run(config, gm::server::shutdown_signal()).await?,
        CliCommand::Dev(config) => gm::dev::run(config, gm::server::shutdown_signal()).await?,
        CliCommand::Bench(config) => gm::bench::run(config).await?,
    }
    Ok(())
}
