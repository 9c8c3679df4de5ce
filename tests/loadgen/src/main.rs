//! `stickyio-loadgen`: parses the command line, runs one workload, prints
//! its JSON report. The workloads live in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = stickyio_loadgen::cli::Cli::parse();
    let report = stickyio_loadgen::cli::run(&cli).await?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &cli.out {
        std::fs::write(path, format!("{text}\n"))?;
    }
    println!("{text}");
    Ok(())
}
