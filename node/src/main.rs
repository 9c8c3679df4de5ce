//! `stickyio-node`: parses the command line and hands over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stickyio_node::cli::{self, Cli, Command};
use stickyio_shared::config::node::NodeConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Some(Command::Check { config_only }) => cli::check(&args.config, config_only)
            .map(|toml| print!("{toml}"))
            .map_err(anyhow::Error::from),
        None => run(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickyio-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Cli) -> anyhow::Result<()> {
    stickyio_shared::logging::init(args.log_json);
    let config = NodeConfig::load(&args.config)?;
    cli::serve(config).await.context("node stopped")
}
