//! The `gm` command: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::Parser;
use gm::config::{Cli, CliCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    gm::telemetry::init(&cli.log, cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // One line, whatever RUST_BACKTRACE says: these are a user's errors, not gm's bugs. Each
        // error's message already names its cause.
        Err(error) => {
            eprintln!("gm: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        CliCommand::Server(config) => gm::server::run(config, gm::server::shutdown_signal()).await?,
        CliCommand::Dev(config) => {
            let node_args = ["--log".to_owned(), cli.log];
            gm::dev::run(config, &node_args, gm::server::shutdown_signal()).await?
        }
        CliCommand::Bench(config) => gm::bench::run(config).await?,
    }
    Ok(())
}
