//! Command line of `stickyio-gateway`: `--config`, `--log-json`, and the
//! `check` subcommand that validates and prints the effective config.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::signals::stop_signal;

use crate::gateway::Gateway;

#[derive(Debug, Parser)]
#[command(
    name = "stickyio-gateway",
    version,
    about = "Sticky Socket.IO gateway in front of stickyio nodes"
)]
pub struct Cli {
    /// Path of gateway.toml.
    #[arg(long, global = true, default_value = "gateway.toml")]
    pub config: PathBuf,
    /// Log one JSON object per line instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and print it with every default filled in.
    Check,
}

/// Runs the command line; the error is printed by `main`.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Check) => {
            let config = GatewayConfig::load(&cli.config)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        None => {
            let stop = stop_signal()?;
            let gateway = Gateway::start(cli.config.clone()).await?;
            stop.await;
            tracing::info!("stop signal received; finishing in-flight requests");
            gateway.shutdown().await;
            Ok(())
        }
    }
}
