//! The nodes behind the gateway and their live state: health, draining, and
//! per-node metrics.
//!
//! Health has two inputs kept apart: active checks (`rise`/`fall`) and
//! passive ejection (a failed connect). A node takes new clients only when
//! both are good; when the gateway fails open it ignores the checks but
//! still skips ejected nodes, which are known not to accept connections.
//!
//! An [`Upstream`] outlives config reloads as long as its name and address
//! stay the same, so health history and live counts survive an edit. A node
//! removed from the config becomes *draining*: it leaves placement, but
//! pinned sessions and websockets keep their `Arc` to it and keep working.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use std::time::Instant;
use stickyio_shared::config::gateway::{GatewayConfig, NodeAddr, NodeEntry};

use crate::metrics::{Metrics, NodeMetrics};

pub struct Upstream {
    pub name: String,
    pub addr: NodeAddr,
    /// Where health checks go when not to `addr` (`nodes[].check_port`).
    check_addr: Option<NodeAddr>,
    weight: AtomicU32,
    /// The active checks pass (by `rise`/`fall`).
    checks_pass: AtomicBool,
    /// A connect failed since the last passing check.
    ejected: AtomicBool,
    draining: AtomicBool,
    last_check: Mutex<Option<CheckResult>>,
    /// Consecutive successful / failed health checks.
    streak: Mutex<Streak>,
    pub metrics: NodeMetrics,
}

/// The outcome of the latest active check, for `/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckResult {
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

#[derive(Default)]
struct Streak {
    ok: u32,
    failed: u32,
    /// When the current ejection began.
    ejected_at: Option<Instant>,
}

/// What a health observation changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Up,
    Down,
}

/// Connects to an IP address as it is, or to a name by resolving it first
/// (each time: a node's name may move to another address).
async fn connect(addr: &NodeAddr) -> std::io::Result<tokio::net::TcpStream> {
    match addr.socket_addr() {
        Some(ip) => tokio::net::TcpStream::connect(ip).await,
        None => tokio::net::TcpStream::connect(addr.as_str()).await,
    }
}

impl Upstream {
    fn new(entry: &NodeEntry, metrics: &Metrics) -> Arc<Self> {
        let metrics = metrics.node(&entry.name);
        // Optimistic start, as HAProxy does: a dead node is ejected by the
        // first failed connect or `fall` failed checks.
        metrics.up.set(1);
        Arc::new(Upstream {
            name: entry.name.clone(),
            addr: entry.addr.clone(),
            check_addr: entry.check_port.map(|port| entry.addr.with_port(port)),
            weight: AtomicU32::new(entry.weight),
            checks_pass: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_check: Mutex::new(None),
            streak: Mutex::new(Streak::default()),
            metrics,
        })
    }

    /// A node known only from a route tag: named and reachable, in no
    /// config and no placement.
    pub fn unlisted(name: &str, addr: &NodeAddr, metrics: &Metrics) -> Arc<Self> {
        let entry = NodeEntry {
            name: name.to_owned(),
            addr: addr.clone(),
            weight: 1,
            check_port: None,
        };
        let node = Upstream::new(&entry, metrics);
        node.draining.store(true, Ordering::Relaxed);
        node
    }

    /// Opens the TCP connection a health check uses: to `check_port` when
    /// set, else as [`Upstream::dial`].
    pub async fn dial_check(&self) -> std::io::Result<tokio::net::TcpStream> {
        connect(self.check_addr.as_ref().unwrap_or(&self.addr)).await
    }

    /// Opens a TCP connection to the node (resolving `addr` if it is a name).
    pub async fn dial(&self) -> std::io::Result<tokio::net::TcpStream> {
        connect(&self.addr).await
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Takes new clients: checks pass and no connect failed since.
    pub fn is_healthy(&self) -> bool {
        self.checks_pass.load(Ordering::Relaxed) && !self.is_ejected()
    }

    /// A connect failed since the last passing check.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records an active check; see [`Upstream::observe`].
    pub fn checked(&self, result: CheckResult, rise: u32, fall: u32) -> Transition {
        let ok = result.ok;
        *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.observe(ok, rise, fall)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Live sessions and websockets still using this node.
    pub fn is_busy(&self) -> bool {
        self.metrics.sessions.get() > 0 || self.metrics.websockets.get() > 0
    }

    /// One health check result; `rise` successes bring the node back (and
    /// end an ejection), `fall` failures take it out.
    pub fn observe(&self, ok: bool, rise: u32, fall: u32) -> Transition {
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.is_healthy();
        if ok {
            streak.failed = 0;
            streak.ok = streak.ok.saturating_add(1);
            if streak.ok >= rise {
                self.checks_pass.store(true, Ordering::Relaxed);
                self.ejected.store(false, Ordering::Relaxed);
                streak.ejected_at = None;
            }
        } else {
            streak.ok = 0;
            streak.failed = streak.failed.saturating_add(1);
            if streak.failed >= fall {
                self.checks_pass.store(false, Ordering::Relaxed);
            }
        }
        self.transition(was)
    }

    /// Passive ejection: a connect error takes the node out at once; `rise`
    /// passing checks, or [`Upstream::end_ejection`], bring it back.
    pub fn eject(&self) -> Transition {
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        streak.ok = 0;
        streak.ejected_at.get_or_insert_with(Instant::now);
        let was = self.is_healthy();
        self.ejected.store(true, Ordering::Relaxed);
        self.transition(was)
    }

    /// Ends an ejection older than `ejection_time` at `now`.
    pub fn end_ejection(&self, now: Instant, ejection_time: std::time::Duration) -> Transition {
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        match streak.ejected_at {
            Some(at) if now.saturating_duration_since(at) >= ejection_time => {
                streak.ejected_at = None;
                let was = self.is_healthy();
                self.ejected.store(false, Ordering::Relaxed);
                self.transition(was)
            }
            _ => Transition::None,
        }
    }

    fn transition(&self, was: bool) -> Transition {
        let now = self.is_healthy();
        self.metrics.up.set(i64::from(now));
        match (was, now) {
            (false, true) => Transition::Up,
            (true, false) => Transition::Down,
            _ => Transition::None,
        }
    }
}

/// The nodes of one config generation, in config order.
pub struct Snapshot {
    pub config: Arc<GatewayConfig>,
    pub nodes: Vec<Arc<Upstream>>,
}

impl Snapshot {
    /// Nodes that take new clients: healthy and not draining.
    pub fn placeable(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.nodes
            .iter()
            .filter(|n| n.is_healthy() && !n.is_draining())
    }
}

/// Builds snapshots from configs, reusing the upstreams that stay and keeping
/// removed ones as draining until their last session ends.
#[derive(Default)]
pub struct Registry {
    draining: Mutex<Vec<Arc<Upstream>>>,
}

/// What a new config changed in the node list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub reweighted: Vec<String>,
}

impl Registry {
    /// The first snapshot.
    pub fn initial(&self, config: Arc<GatewayConfig>, metrics: &Metrics) -> Snapshot {
        let nodes = config
            .nodes
            .iter()
            .map(|e| Upstream::new(e, metrics))
            .collect();
        Snapshot { config, nodes }
    }

    /// The snapshot for `config` following `old`.
    pub fn next(
        &self,
        old: &Snapshot,
        config: Arc<GatewayConfig>,
        metrics: &Metrics,
    ) -> (Snapshot, NodeChanges) {
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let mut changes = NodeChanges::default();
        let mut nodes = Vec::with_capacity(config.nodes.len());
        for entry in &config.nodes {
            let same = |u: &&Arc<Upstream>| u.name == entry.name && u.addr == entry.addr;
            let kept = old.nodes.iter().find(same).cloned();
            let revived = draining.iter().find(same).cloned();
            let upstream = match kept.or(revived) {
                Some(u) => {
                    u.draining.store(false, Ordering::Relaxed);
                    if u.weight.swap(entry.weight, Ordering::Relaxed) != entry.weight {
                        changes.reweighted.push(entry.name.clone());
                    }
                    u
                }
                None => {
                    changes.added.push(entry.name.clone());
                    Upstream::new(entry, metrics)
                }
            };
            nodes.push(upstream);
        }
        draining.retain(|d| !nodes.iter().any(|n| Arc::ptr_eq(n, d)));
        for gone in old
            .nodes
            .iter()
            .filter(|o| !nodes.iter().any(|n| Arc::ptr_eq(n, o)))
        {
            gone.draining.store(true, Ordering::Relaxed);
            changes.removed.push(gone.name.clone());
            draining.push(gone.clone());
        }
        (Snapshot { config, nodes }, changes)
    }

    /// Removed nodes still serving sessions or websockets.
    pub fn draining(&self) -> Vec<Arc<Upstream>> {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets drained nodes that serve nothing any more.
    pub fn sweep(&self) -> Vec<String> {
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = Vec::new();
        draining.retain(|d| {
            let busy = d.is_busy();
            if !busy {
                done.push(d.name.clone());
            }
            busy
        });
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: &[(&str, &str, u32)]) -> Arc<GatewayConfig> {
        let mut text = String::new();
        for (name, addr, weight) in nodes {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\nweight = {weight}\n"
            ));
        }
        Arc::new(stickyio_shared::config::parse(&text, "test").unwrap())
    }

    #[test]
    fn reload_keeps_state_of_nodes_that_stay_and_drains_removed_ones() {
        let metrics = Metrics::default();
        let registry = Registry::default();
        let first = registry.initial(config(&[("a", "h:1", 1), ("b", "h:2", 1)]), &metrics);
        first.nodes[0].eject();
        first.nodes[1].metrics.sessions.inc();
        let (second, changes) = registry.next(
            &first,
            config(&[("a", "h:1", 3), ("c", "h:3", 1)]),
            &metrics,
        );
        assert_eq!(changes.added, ["c"]);
        assert_eq!(changes.removed, ["b"]);
        assert_eq!(changes.reweighted, ["a"]);
        assert!(Arc::ptr_eq(&first.nodes[0], &second.nodes[0]));
        assert!(
            !second.nodes[0].is_healthy(),
            "health history survives a reload"
        );
        assert_eq!(
            second
                .placeable()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert!(first.nodes[1].is_draining());
        assert!(registry.sweep().is_empty(), "b still has a session");
        first.nodes[1].metrics.sessions.dec();
        assert_eq!(registry.sweep(), ["b"]);
    }

    #[test]
    fn a_node_readded_while_draining_is_revived() {
        let metrics = Metrics::default();
        let registry = Registry::default();
        let first = registry.initial(config(&[("a", "h:1", 1), ("b", "h:2", 1)]), &metrics);
        first.nodes[1].metrics.websockets.inc();
        let (second, _) = registry.next(&first, config(&[("a", "h:1", 1)]), &metrics);
        let (third, changes) = registry.next(
            &second,
            config(&[("a", "h:1", 1), ("b", "h:2", 1)]),
            &metrics,
        );
        assert!(changes.added.is_empty());
        assert!(Arc::ptr_eq(&first.nodes[1], &third.nodes[1]));
        assert!(!third.nodes[1].is_draining());
        assert!(registry.draining().is_empty());
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let metrics = Metrics::default();
        let registry = Registry::default();
        let snap = registry.initial(config(&[("a", "h:1", 1)]), &metrics);
        let a = &snap.nodes[0];
        assert_eq!(a.observe(false, 2, 2), Transition::None);
        assert_eq!(a.observe(true, 2, 2), Transition::None);
        assert_eq!(a.observe(false, 2, 2), Transition::None);
        assert_eq!(a.observe(false, 2, 2), Transition::Down);
        assert_eq!(a.metrics.up.get(), 0);
        assert_eq!(a.observe(true, 2, 2), Transition::None);
        assert_eq!(a.observe(true, 2, 2), Transition::Up);
        assert_eq!(a.eject(), Transition::Down);
        assert_eq!(a.eject(), Transition::None);
    }

    #[test]
    fn an_ejection_ends_after_its_time_even_while_checks_fail() {
        let metrics = Metrics::default();
        let snap = Registry::default().initial(config(&[("a", "h:1", 1)]), &metrics);
        let a = &snap.nodes[0];
        let ten = std::time::Duration::from_secs(10);
        a.eject();
        let start = Instant::now();
        assert_eq!(
            a.end_ejection(start + std::time::Duration::from_secs(9), ten),
            Transition::None
        );
        assert!(a.is_ejected());
        assert_eq!(a.end_ejection(start + ten + ten, ten), Transition::Up);
        assert!(!a.is_ejected() && a.is_healthy());
    }
}
