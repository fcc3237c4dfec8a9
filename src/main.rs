//! The `gm` command: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::Parser;
use gm::config::{Cli, CliCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    gm::telemetry::init(&cli.log, cli.log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        // One line, whatever RUST_BACKTRACE says: these are a user's errors, not gm's bugs.
        Err(error) => {
            eprintln!("gm: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: CliCommand) -> anyhow::Result<()> {
    match command {
        CliCommand::Server(config) => gm::server::run(config, gm::server::shutdown_signal()).await?,
        CliCommand::Dev(config) => gm::dev::run(config, gm::server::shutdown_signal()).await?,
        CliCommand::Bench(config) => gm::bench::run(config).await?,
    }
    Ok(())
}
