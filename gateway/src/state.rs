//! What every request handler and background task of one gateway shares:
//! the current config and nodes, the pins, the per-session order and the
//! metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::secret::Secret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::ordering::SessionOrder;
use crate::pinning::Pins;
use stickyio_shared::config::gateway::NodeAddr;

use crate::route_tag::{RouteKeys, Tagged};
use crate::upstream::{Registry, Snapshot, Upstream};

/// Longest wait for a TCP connect to a node before it counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct State {
    snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub pins: Arc<Pins>,
    /// Requests of one session go to its node in arrival order.
    pub order: Arc<SessionOrder>,
    /// Seal and open the route tags in client-visible sids.
    pub route_keys: RouteKeys,
    /// Nodes this gateway knows only from route tags (another replica's
    /// config lists them already, or listed them): by address.
    unlisted: std::sync::Mutex<ahash::AHashMap<NodeAddr, Arc<Upstream>>>,
    pub metrics: Metrics,
    /// Where the config came from; `None` when started from a value.
    pub config_path: Option<PathBuf>,
    /// Bearer token of the admin listener, resolved at start.
    pub admin_token: Option<Secret>,
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
    pub fn new(
        config: GatewayConfig,
        config_path: Option<PathBuf>,
        admin_token: Option<Secret>,
        route_keys: RouteKeys,
    ) -> Arc<Self> {
        let metrics = Metrics::default();
        let registry = Registry::default();
        let snapshot = registry.initial(Arc::new(config), &metrics);
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            pins: Arc::new(Pins::new()),
            order: Arc::new(SessionOrder::default()),
            route_keys,
            unlisted: Default::default(),
            metrics,
            config_path,
            admin_token,
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

    /// The node a tagged session lives on: the listed or draining node at
    /// that address, else one known from the tag alone (kept out of
    /// placement, never health checked: only its sessions reach it).
    pub fn session_node(&self, snapshot: &Snapshot, tagged: &Tagged) -> Arc<Upstream> {
        if let Some(node) = snapshot.nodes.iter().find(|n| n.addr == tagged.addr) {
            return node.clone();
        }
        if let Some(node) = self
            .registry
            .draining()
            .into_iter()
            .find(|n| n.addr == tagged.addr)
        {
            return node;
        }
        let mut unlisted = self.unlisted.lock().unwrap_or_else(|p| p.into_inner());
        unlisted
            .entry(tagged.addr.clone())
            .or_insert_with(|| {
                tracing::info!(node = %tagged.name, addr = %tagged.addr, "routing sessions to a node this gateway does not list");
                Upstream::unlisted(&tagged.name, &tagged.addr, &self.metrics)
            })
            .clone()
    }
}
