//! `evmesh bench` (filled in below).
use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::SUCCESS)
}
