//! Config reload: on a change of `gateway.toml` (watched through its
//! directory, since editors replace files rather than write them), on SIGHUP,
//! and on `POST /reload`.
//!
//! The new file is validated first; a bad one is refused with its
//! `file:line:column` and the running config stays. A good one is swapped in
//! atomically: new handshakes use the new ring at once, pinned sessions keep
//! their node, and removed nodes drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, EventKind};
use notify::{RecursiveMode, Watcher};
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

/// Reads, validates and applies the config file.
pub async fn reload(state: &State) -> Result<ReloadReport, ReloadError> {
    let path = state.config_path.as_deref().ok_or(ReloadError::NoFile)?;
    let _one_at_a_time = state.reload_lock.lock().await;
    let config = GatewayConfig::load(path).inspect_err(|e| {
        tracing::error!(error = %e, "config reload refused; the previous config keeps serving");
    })?;
    Ok(apply(state, config))
}

/// Swaps `config` in.
pub fn apply(state: &State, config: GatewayConfig) -> ReloadReport {
    let old = state.snapshot();
    if config == *old.config {
        tracing::debug!("config unchanged");
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
    let (snapshot, nodes) = state.registry.next(&old, Arc::new(config), &state.metrics);
    state.store(snapshot);
    let report = ReloadReport {
        nodes,
        restart_needed,
    };
    tracing::info!(
        added = ?report.nodes.added,
        removed = ?report.nodes.removed,
        reweighted = ?report.nodes.reweighted,
        restart_needed = ?report.restart_needed,
        "config reloaded"
    );
    report
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
