//! The `stickyio-loadgen` command line: one subcommand per workload, the
//! settings they share, and the run that turns them into a report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::report::Report;
use crate::session::Transport;
use crate::source::Sources;
use crate::workloads::{Run, churn, fanout, idle, roundtrip};

#[derive(Debug, Parser)]
#[command(
    name = "stickyio-loadgen",
    version,
    about = "Engine.IO 4 / Socket.IO 5 load generator for the stickyio benchmarks"
)]
pub struct Cli {
    /// Also write the JSON report to this file.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// W1/W2: publish to your own topic and wait for it, one at a time per client.
    Roundtrip {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 200)]
        clients: usize,
        #[arg(long, value_enum, default_value_t = Transport::Polling)]
        transport: Transport,
    },
    /// W3: open (handshake + connect) and close sessions as fast as possible.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Concurrent workers, each with its own source address.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, value_enum, default_value_t = Transport::Polling)]
        transport: Transport,
    },
    /// W4: hold idle sessions and report the memory of the given processes.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 6000)]
        websockets: usize,
        #[arg(long, default_value_t = 1500)]
        polling: usize,
    },
    /// W5: subscribers and one publisher per target on one topic.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 300)]
        subscribers: usize,
        #[arg(long, default_value_t = 3)]
        publishers: usize,
        /// Own messages a publisher may have in flight.
        #[arg(long, default_value_t = 16)]
        window: u64,
        #[arg(long, value_enum, default_value_t = Transport::Websocket)]
        transport: Transport,
    },
}

/// Settings every workload takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Where to connect; comma-separated to spread clients round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<SocketAddr>,
    /// Engine.IO path.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,
    /// A name for the setup under test, copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Second octet of the first source address (`127.<block>.1.1`).
    #[arg(long, default_value_t = 1)]
    pub source_block: u8,
    /// Unmeasured time before the window.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The measured window (for `idle`: how long sessions are held).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Longest any one step (connect, request, ack) may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Sessions opened at once during setup.
    #[arg(long, default_value_t = 100)]
    pub open_concurrency: usize,
    /// A process under test (with its children): its CPU over the window,
    /// and for `idle` its resident memory, go in the report. Repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
}

impl Common {
    fn run(&self) -> Run {
        Run {
            targets: self.target.clone(),
            path: self.path.clone(),
            timeout: self.timeout,
            sources: Sources::new(self.source_block),
            label: self.label.clone(),
            warmup: self.warmup,
            duration: self.duration,
            open_concurrency: self.open_concurrency,
            pids: self.pids.clone(),
        }
    }
}

/// Runs the workload the command line names.
pub async fn run(cli: &Cli) -> Result<Report, CliError> {
    Ok(match &cli.command {
        Command::Roundtrip {
            common,
            clients,
            transport,
        } => roundtrip::run(&checked(common)?, *clients, *transport).await,
        Command::Churn {
            common,
            clients,
            transport,
        } => churn::run(&checked(common)?, *clients, *transport).await,
        Command::Idle {
            common,
            websockets,
            polling,
        } => idle::run(&checked(common)?, *websockets, *polling).await,
        Command::Fanout {
            common,
            subscribers,
            publishers,
            window,
            transport,
        } => {
            let shape = fanout::Shape {
                subscribers: *subscribers,
                publishers: *publishers,
                window: (*window).max(1),
                transport: *transport,
            };
            fanout::run(&checked(common)?, shape).await
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--target {0} is not on loopback: the load generator only sends to 127.0.0.0/8")]
    NotLoopback(SocketAddr),
    #[error("--duration must be more than zero")]
    ZeroDuration,
}

fn checked(common: &Common) -> Result<Run, CliError> {
    if let Some(bad) = common.target.iter().find(|a| !a.ip().is_loopback()) {
        return Err(CliError::NotLoopback(*bad));
    }
    if common.duration.is_zero() {
        return Err(CliError::ZeroDuration);
    }
    Ok(common.run())
}
