//! What every request handler and background task of one gateway shares:
//! the current config and nodes, the pins, the metrics and the pooled HTTP
//! client to the nodes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use stickyio_shared::config::gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::metrics::Metrics;
use crate::pinning::Pins;
use crate::upstream::{Registry, Snapshot};

/// Longest wait for a TCP connect to a node before it counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub type NodeClient = Client<HttpConnector, Body>;

pub struct State {
    snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub pins: Arc<Pins>,
    pub metrics: Metrics,
    /// Keep-alive pool to the nodes.
    pub client: NodeClient,
    /// Where the config came from; `None` when started from a value.
    pub config_path: Option<PathBuf>,
    /// Serialises reloads so two edits never interleave.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Connections, websocket relays and background tasks, waited for on shutdown.
    pub tasks: TaskTracker,
    /// Stops accepting and asks connections to finish.
    pub shutdown: CancellationToken,
    /// Cuts websocket relays still open when the shutdown grace is over.
    pub relays: CancellationToken,
}

impl State {
    pub fn new(config: GatewayConfig, config_path: Option<PathBuf>) -> Arc<Self> {
        let metrics = Metrics::default();
        let registry = Registry::default();
        let snapshot = registry.initial(Arc::new(config), &metrics);
        let idle = snapshot.config.limits.idle_timeout.get();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .build(connector);
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            pins: Arc::new(Pins::new()),
            metrics,
            client,
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            relays: CancellationToken::new(),
        })
    }

    /// The current config and nodes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}
