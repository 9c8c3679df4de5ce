//! `cargo run --release`: a local gateway with three clustered nodes.

use clap::Parser;
use stickyio::{LocalCluster, Options, Topology};

/// Start a local stickyio: a gateway and its clustered nodes, in one process.
#[derive(Debug, Parser)]
#[command(name = "stickyio", version)]
struct Cli {
    /// Folder with gateway.toml and node-*.toml [default: deploy/local].
    #[arg(long, value_name = "DIR")]
    config_dir: Option<std::path::PathBuf>,
    /// How many nodes to run (derived from the first node-*.toml).
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// The gateway's public port.
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// The gateway's admin port.
    #[arg(long, value_name = "P")]
    admin_port: Option<u16>,
    /// The first node's port; the others follow it.
    #[arg(long, value_name = "P")]
    node_port: Option<u16>,
    /// The first node's admin port (/healthz, /readyz, /metrics); the others
    /// follow it [default: as far above the node port as in the files].
    #[arg(long, value_name = "P")]
    node_admin_port: Option<u16>,
    /// Log one JSON object per line.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stickyio_shared::logging::init(cli.log_json);
    let topology = Topology::resolve(&Options {
        config_dir: cli.config_dir,
        nodes: cli.nodes,
        port: cli.port,
        admin_port: cli.admin_port,
        node_port: cli.node_port,
        node_admin_port: cli.node_admin_port,
    })?;
    let stop = stickyio_shared::signals::stop_signal()?;
    let cluster = LocalCluster::start(topology).await?;
    println!("{}", cluster.summary());
    stop.await;
    println!("stopping");
    cluster.shutdown().await;
    Ok(())
}
