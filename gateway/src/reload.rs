//! Config reload: on a change of `gateway.toml` (watched through its
//! directory, since editors replace files rather than write them), on SIGHUP,
//! and on `POST /reload`.
//!
//! The new file is validated first; a bad one is refused with its
//! `file:line:column` and the running config stays. A good one is swapped in
//! atomically: new handshakes use the new ring at once, pinned sessions keep
//! their node, and removed nodes drain.
//!
//! Every reload, good or bad, logs one line and is kept as the [`LastReload`]
//! that `/status` shows and `stickyio_gateway_config_*` export, so an operator
//! sees a refused edit without reading logs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, EventKind};
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use stickyio_shared::config::ConfigError;
use stickyio_shared::config::gateway::GatewayConfig;
use tokio::sync::mpsc;

use crate::state::State;
use crate::upstream::NodeChanges;

/// Editors write in several steps; changes this close together are one edit.
const DEBOUNCE: Duration = Duration::from_millis(150);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: the gateway was started from an in-memory config")]
    NoFile,
    #[error("config refused, the previous one keeps serving: {0}")]
    Invalid(#[from] ConfigError),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    #[serde(flatten)]
    pub nodes: NodeChanges,
    /// Settings that changed in the file but apply only after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Reads, validates and applies the config file, then logs and records the outcome.
pub async fn reload(state: &State) -> Result<ReloadReport, ReloadError> {
    let path = state.config_path.as_deref().ok_or(ReloadError::NoFile)?;
    let _one_at_a_time = state.reload_lock.lock().await;
    let shown = path.display();
    match GatewayConfig::load(path) {
        Ok(config) => {
            let report = apply(state, config);
            let changed = report != ReloadReport::default();
            let (added, removed, reweighted) = (
                &report.nodes.added,
                &report.nodes.removed,
                &report.nodes.reweighted,
            );
            if changed {
                tracing::info!(path = %shown, ok = true, error = "", location = "", ?added, ?removed, ?reweighted, restart_needed = ?report.restart_needed, "config reloaded");
            } else {
                tracing::debug!(path = %shown, ok = true, error = "", location = "", ?added, ?removed, ?reweighted, "config reloaded, unchanged");
            }
            state.metrics.reloads.record(path, Ok(&report));
            Ok(report)
        }
        Err(e) => {
            let location = e.location().map(ToString::to_string).unwrap_or_default();
            let none: &[String] = &[];
            tracing::error!(path = %shown, ok = false, error = %e, %location, added = ?none, removed = ?none, reweighted = ?none, "config reload refused; the previous config keeps serving");
            state.metrics.reloads.record(path, Err(&e));
            Err(e.into())
        }
    }
}

/// Swaps `config` in.
pub fn apply(state: &State, config: GatewayConfig) -> ReloadReport {
    let old = state.snapshot();
    if config == *old.config {
        return ReloadReport::default();
    }
    let mut restart_needed = Vec::new();
    if config.listen != old.config.listen {
        restart_needed.push("listen");
    }
    if config.admin != old.config.admin {
        restart_needed.push("admin");
    }
    if config.limits.max_connections != old.config.limits.max_connections {
        restart_needed.push("limits.max_connections");
    }
    if config.admin_token != old.config.admin_token
        || config.admin_token_file != old.config.admin_token_file
    {
        restart_needed.push("admin_token");
    }
    if config.tls != old.config.tls {
        restart_needed.push("tls");
    }
    // The keys are read once, into the state's `RouteKeys`: a rotation is a
    // rolling restart (README, "Running replicas").
    if (
        &config.route_key,
        &config.route_key_file,
        &config.route_key_previous,
        &config.route_key_previous_file,
    ) != (
        &old.config.route_key,
        &old.config.route_key_file,
        &old.config.route_key_previous,
        &old.config.route_key_previous_file,
    ) {
        restart_needed.push("route_key");
    }
    let (snapshot, nodes) = state.registry.next(&old, Arc::new(config), &state.metrics);
    state.store(snapshot);
    for node in state
        .registry
        .draining()
        .iter()
        .filter(|d| nodes.removed.contains(&d.name))
    {
        tracing::info!(node = %node.name, addr = %node.addr, weight = node.weight(), draining = true, sessions = node.metrics.sessions.get(), websockets = node.metrics.websockets.get(), "node draining: removed from the config, its live sessions continue");
    }
    ReloadReport {
        nodes,
        restart_needed,
    }
}

/// One reload's outcome, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub path: String,
    pub ok: bool,
    /// The refusal, starting with `file:line:column` when there is one.
    pub error: Option<String>,
    pub location: Option<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub reweighted: Vec<String>,
}

/// The reload outcomes of one gateway: counted by result, and the last one
/// kept whole (a Prometheus label is no place for an error message).
#[derive(Default)]
pub struct LastReload {
    last: Mutex<Option<ReloadRecord>>,
    reloads: Family<ResultLabel, Counter>,
    last_ok: Gauge,
    last_at: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl LastReload {
    /// Adds the reload series to the gateway's registry.
    pub fn register(&self, registry: &mut Registry) {
        // Both results show from the start, at 0, so a rate() has a base.
        for result in ["ok", "error"] {
            drop(self.reloads.get_or_create(&ResultLabel { result }));
        }
        self.last_ok.set(1);
        registry.register(
            "config_reloads",
            "Config reloads, by result (ok, error)",
            self.reloads.clone(),
        );
        registry.register(
            "config_last_reload_ok",
            "1 when the last config reload was applied (or none happened), 0 when it was refused",
            self.last_ok.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last config reload, 0 before the first",
            self.last_at.clone(),
        );
    }

    pub fn get(&self) -> Option<ReloadRecord> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, path: &Path, outcome: Result<&ReloadReport, &ConfigError>) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at_ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        let path = path.display().to_string();
        let record = match outcome {
            Ok(report) => ReloadRecord {
                at_ms,
                path,
                ok: true,
                error: None,
                location: None,
                added: report.nodes.added.clone(),
                removed: report.nodes.removed.clone(),
                reweighted: report.nodes.reweighted.clone(),
            },
            Err(e) => ReloadRecord {
                at_ms,
                path,
                ok: false,
                error: Some(e.to_string()),
                location: e.location().map(ToString::to_string),
                added: Vec::new(),
                removed: Vec::new(),
                reweighted: Vec::new(),
            },
        };
        let result = if record.ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        self.last_ok.set(i64::from(record.ok));
        self.last_at
            .set(i64::try_from(at.as_secs()).unwrap_or(i64::MAX));
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(record);
    }
}

/// Watches the config file's directory and reloads after any change in it.
///
/// Not only events naming the file count: Kubernetes updates a mounted
/// ConfigMap by swapping a `..data` symlink beside it, and editors write
/// temporary files and rename them. A reload whose config equals the
/// running one changes nothing.
pub fn watch(state: Arc<State>, path: &Path) -> notify::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let reading = matches!(
            event.kind,
            EventKind::Access(AccessKind::Open(_) | AccessKind::Read)
        );
        if !reading {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::debug!(dir = %dir.display(), "watching the config directory");
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let _watching = watcher;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                () = state.shutdown.cancelled() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let _ = reload(&state).await;
        }
    });
    Ok(())
}

/// Reloads on SIGHUP (Unix only).
pub fn on_sighup(state: Arc<State>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change or POST /reload");
                return;
            }
        };
        let tasks = state.tasks.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    got = hangups.recv() => if got.is_none() { return },
                    () = state.shutdown.cancelled() => return,
                }
                tracing::info!("SIGHUP: reloading the config");
                let _ = reload(&state).await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(state);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_tag::RouteKeys;

    fn config(extra: &str) -> GatewayConfig {
        let text = format!("{extra}\n[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:3001\"\n");
        stickyio_shared::config::parse(&text, "gateway.toml").expect("valid config")
    }

    #[test]
    fn a_changed_route_key_needs_a_restart() {
        let state = State::new(config(""), None, None, RouteKeys::new(b"k", None));
        let keyed = config("route_key = \"0123456789abcdef0123\"");
        assert_eq!(
            apply(&state, keyed.clone()).restart_needed,
            vec!["route_key"]
        );
        let rotating = config(
            "route_key = \"0123456789abcdef0123\"\nroute_key_previous = \"fedcba9876543210fedc\"",
        );
        assert_eq!(apply(&state, rotating).restart_needed, vec!["route_key"]);
        assert_eq!(apply(&state, keyed).restart_needed, vec!["route_key"]);
        assert!(
            apply(&state, config("route_key = \"0123456789abcdef0123\""))
                .restart_needed
                .is_empty()
        );
    }
}
