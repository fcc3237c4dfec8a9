//! `gm bench`: load against a running cluster.

use clap::Args;

#[derive(Clone, Debug, Args)]
pub struct BenchConfig {}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {}

pub async fn run(_config: BenchConfig) -> Result<(), BenchError> {
    Ok(())
}
