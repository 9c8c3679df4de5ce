//! Command line of `stickyio-gateway`: `--config`, `--log-json`, and the
//! `check` subcommand that validates and prints the effective config.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::config::sources::{self, SourcesError};
use stickyio_shared::config::{ConfigError, Env};
use stickyio_shared::signals::stop_signal;

use crate::gateway::Gateway;
use crate::tls::{self, TlsError};

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
    /// Validate the config, read the token, key and TLS files it names, and
    /// print it with every default filled in (secrets left out).
    Check {
        /// Check the file alone, not the files it names: for a config meant
        /// for another machine (a container's, whose files are mounted there).
        #[arg(long)]
        config_only: bool,
    },
}

/// Why `check` refused a config.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sources(#[from] SourcesError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a start would read, read without binding anything: the config, and
/// (unless `config_only`) every token, key and TLS file it names, the TLS
/// ones parsed as PEM. Returns the effective config as TOML.
pub fn check(path: &Path, config_only: bool) -> Result<String, CheckError> {
    let config = GatewayConfig::load(path)?;
    if !config_only {
        let sources = sources::gateway(&config, Env::process())?;
        if let Some(files) = &sources.tls {
            tls::acceptor(files)?;
        }
    }
    Ok(config.to_toml())
}

/// Runs the command line; the error is printed by `main`.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Check { config_only }) => {
            print!("{}", check(&cli.config, config_only)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reads_the_token_and_tls_files_a_start_would() {
        let dir = std::env::temp_dir().join(format!("stickyio-gw-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        let nodes = "[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n";
        std::fs::write(
            &path,
            format!("admin_token_file = \"absent.token\"\n{nodes}"),
        )
        .unwrap();
        let err = check(&path, false).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "admin token: admin_token_file {}: cannot read: No such file or directory (os error 2)",
                dir.join("absent.token").display()
            )
        );

        std::fs::write(dir.join("cert.pem"), "not a certificate\n").unwrap();
        std::fs::write(dir.join("key.pem"), "not a key\n").unwrap();
        let tls = "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
        std::fs::write(&path, format!("{tls}{nodes}")).unwrap();
        let err = check(&path, false).unwrap_err().to_string();
        assert!(
            err.starts_with("tls.cert_file ") && err.contains("no CERTIFICATE block found"),
            "{err}"
        );
        std::fs::remove_file(dir.join("key.pem")).unwrap();
        let err = check(&path, false).unwrap_err().to_string();
        assert!(err.starts_with("TLS key: tls.key_file "), "{err}");

        assert!(check(&path, true).is_ok(), "--config-only reads no file");
        std::fs::write(&path, nodes).unwrap();
        assert!(check(&path, false).unwrap().contains("name = \"a\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
