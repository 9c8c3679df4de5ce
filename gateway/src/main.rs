//! `stickyio-gateway`: the binary is the library's command line.

use clap::Parser;
use stickyio_gateway::cli::{self, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    stickyio_shared::logging::init(cli.log_json);
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickyio-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
