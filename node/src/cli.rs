//! The `stickyio-node` command line: arguments, logging, `check`, and serving
//! until SIGTERM or Ctrl-C.
//!
//! Kept in the library so `main.rs` stays a few lines and the launcher and
//! tests can reuse the same pieces.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use stickyio_shared::config::node::NodeConfig;
use stickyio_shared::config::sources::{self, SourcesError};
use stickyio_shared::config::{ConfigError, Env};
use stickyio_shared::signals::stop_signal;

use crate::cluster::{Cluster, ClusterError};
use crate::server::{Node, NodeError};

#[derive(Debug, Parser)]
#[command(
    name = "stickyio-node",
    version,
    about = "Socket.IO server with a topic publish/subscribe API"
)]
pub struct Cli {
    /// The node's config file.
    #[arg(long, global = true, value_name = "PATH", default_value = "node.toml")]
    pub config: PathBuf,
    /// Log one JSON object per line instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, read the token and secret files it names, and
    /// print it as the node would use it (defaults filled in, secrets left
    /// out); exit non-zero with file:line:column if invalid.
    Check {
        /// Check the file alone, not the files it names: for a config meant
        /// for another machine (a container's, whose files are mounted there).
        #[arg(long)]
        config_only: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Sources(#[from] SourcesError),
    #[error("cannot print the config as TOML: {0}")]
    Render(#[from] toml::ser::Error),
}

/// Loads and validates the config and (unless `config_only`) reads every
/// token and secret file it names, which a start would stop on, and checks
/// what joining the cluster needs. Returns the effective config as TOML.
pub fn check(path: &Path, config_only: bool) -> Result<String, CheckError> {
    let config = NodeConfig::load(path)?;
    if !config_only {
        sources::node(&config, Env::process())?;
        Cluster::check(&config)?;
    }
    Ok(toml::to_string(&config)?)
}

/// Serves `config` until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(config: NodeConfig) -> Result<(), NodeError> {
    let stop = stop_signal().map_err(NodeError::Signals)?;
    let node = Node::bind(config).await?;
    stop.await;
    tracing::info!("signal received");
    node.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_token_file_it_cannot_read_unless_config_only() {
        let dir = std::env::temp_dir().join(format!("stickyio-node-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        let text =
            "listen = \"127.0.0.1:3001\"\nname = \"n\"\nadmin_token_file = \"absent.token\"\n";
        std::fs::write(&path, text).unwrap();
        let err = check(&path, false).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "admin token: admin_token_file {}: cannot read: No such file or directory (os error 2)",
                dir.join("absent.token").display()
            )
        );
        std::fs::write(dir.join("absent.token"), " \n").unwrap();
        let err = check(&path, false).unwrap_err().to_string();
        assert!(err.ends_with("absent.token: the file is empty"), "{err}");
        let printed = check(&path, true).unwrap();
        assert!(printed.contains("admin_token_file = "), "{printed}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
