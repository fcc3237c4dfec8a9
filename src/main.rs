//! The `gm` command: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gm::bench::BenchConfig;
use gm::dev::DevConfig;
use gm::server::config::ServerConfig;
use gm::server::recover::RecoverConfig;
use gm::telemetry::LogFormat;

/// jemalloc, not the system allocator: it gives memory back. Chosen on `gm bench scale --members
/// 1000000` (3 nodes, 2 cores) with the compact records, RSS MiB leader/followers at 666,666 and
/// 1,000,000 members: glibc 453/388/385 and 631/658/654, mimalloc 351/248/248 and 474/321/327,
/// jemalloc 336/247/250 and 474/329/329 (every node idle at 19-20 MiB, mimalloc 29-31). After
/// 200,000 joins then leaves of half of them (`gm dev`, curl), RSS MiB leader/followers: glibc
/// 135/111/110 to 166/143/142 (nothing given back, and more), mimalloc 156/131/132 to 189/162/163,
/// jemalloc 143/121/121 to 131/108/108. Join rates were within the noise of a shared machine.
/// glibc keeps freed memory in per-thread arenas, fragmented by the group copies a snapshot's
/// copy-on-write leaves behind; jemalloc's background thread returns dirty pages after ~10 s idle.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "gm", version, about = "Group membership for Kubernetes, replicated with Raft")]
struct Cli {
    /// Log filter, as in RUST_LOG (for example `info,gm=debug`). openraft's own logs are off by
    /// default (gm logs a peer's reachability once per change); `info,openraft=warn` shows them.
    #[arg(long, env = "GM_LOG", default_value = "info,openraft=off", global = true, value_parser = gm::telemetry::filter)]
    log: String,
    /// Log format.
    #[arg(long, env = "GM_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Run one GM node.
    Server(ServerConfig),
    /// Run a local cluster of separate `gm server` processes on 127.0.0.1.
    Dev(DevConfig),
    /// Load a cluster (its own local one, or `--endpoints`) and print throughput, latency and
    /// failover time; `gm bench fd` measures failure detection, `gm bench watch` the fan-out to
    /// watch streams and `gm bench scale` an idle cluster's cost as it grows.
    Bench(BenchConfig),
    /// After a majority of the voters is lost for good: ask the node that survived, at its next
    /// start, to become the only voter of its cluster (entries only the lost nodes held are lost).
    Recover(RecoverConfig),
    /// Run the sidecar that makes a pod a member of its groups while it lives.
    Agent(gm::agent::AgentConfig),
    /// The client commands: `gm join`, `leave`, `members`, `groups`, `watch`, `cluster`.
    #[command(flatten)]
    Client(gm::cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.command {
        CliCommand::Server(config) => config.worker_threads.map(usize::from),
        _ => None,
    };
    // Always an explicit count: tokio would otherwise read TOKIO_WORKER_THREADS, and panic on a
    // value that is not a positive integer.
    let workers = workers.unwrap_or_else(gm::config::usable_cores);
    match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(runtime) => runtime.block_on(gm_main(cli)),
        Err(error) => {
            eprintln!("gm: error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn gm_main(cli: Cli) -> ExitCode {
    let resource = match &cli.command {
        CliCommand::Server(config) => config.trace_resource(),
        _ => Vec::new(),
    };
    let telemetry = gm::telemetry::init(&cli.log, cli.log_format, &resource);
    let result = run(cli).await;
    // After the node has stopped, so its last spans go too.
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // One line, whatever RUST_BACKTRACE says: these are a user's errors, not gm's bugs. Each
        // error's message already names its cause; a client command's error also its exit status.
        Err(error) => {
            eprintln!("gm: error: {error}");
            ExitCode::from(error.downcast_ref::<gm::cli::CliError>().map_or(1, gm::cli::CliError::exit_code))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        CliCommand::Server(config) => gm::server::run(config, gm::signal::stop_requested()).await?,
        CliCommand::Dev(config) => {
            let node_args = ["--log".to_owned(), cli.log];
            gm::dev::run(config, &node_args, gm::signal::stop_requested()).await?
        }
        CliCommand::Bench(config) => gm::bench::run(config).await?,
        CliCommand::Recover(config) => gm::server::recover::run(config).await?,
        CliCommand::Agent(config) => gm::agent::run(config, gm::signal::stop_requested()).await?,
        CliCommand::Client(command) => gm::cli::run(command).await?,
    }
    Ok(())
}
