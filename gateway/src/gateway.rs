//! Starting and stopping a gateway: the library entry point used by the
//! binary, the local launcher and tests (which bind port 0 and read the
//! chosen addresses back).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::config::sources::{self, GatewaySources, SourcesError};
use stickyio_shared::config::{ConfigError, Env};
use tokio::net::TcpListener;

use crate::health_check;
use crate::reload::{self, ReloadError, ReloadReport};
use crate::route_tag::RouteKeys;
use crate::server;
use crate::state::State;
use crate::tls::{self, TlsError};
use crate::workers::{WorkerError, Workers};
use stickyio_shared::connection_limit::ConnectionLimit;

/// How often silent pins are expired and drained nodes forgotten.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// After the shutdown grace, how long cut websockets get to wind down.
const FINAL_WAIT: Duration = Duration::from_secs(1);

/// Where a gateway's config comes from. Only a file can be reloaded.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Config(Box<GatewayConfig>),
}

impl From<PathBuf> for ConfigSource {
    fn from(path: PathBuf) -> Self {
        ConfigSource::File(path)
    }
}

impl From<&Path> for ConfigSource {
    fn from(path: &Path) -> Self {
        ConfigSource::File(path.to_owned())
    }
}

impl From<GatewayConfig> for ConfigSource {
    fn from(config: GatewayConfig) -> Self {
        ConfigSource::Config(Box::new(config))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A token, key or TLS file named by the config; the error says which.
    #[error(transparent)]
    Sources(#[from] SourcesError),
    #[error("route key: no randomness for a key of its own")]
    NoRandomness,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Workers(#[from] WorkerError),
    #[error("cannot watch the config file {}", .path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The stickyio gateway.
pub struct Gateway;

impl Gateway {
    /// Binds both listeners and starts serving, health checking and (for a
    /// config file) watching for changes.
    pub async fn start(source: impl Into<ConfigSource>) -> Result<RunningGateway, StartError> {
        let (config, path) = match source.into() {
            ConfigSource::File(path) => (GatewayConfig::load(&path)?, Some(path)),
            ConfigSource::Config(config) => (*config, None),
        };
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let sources = sources::gateway(&config, Env::process())?;
        let route_keys = route_keys(&sources)?;
        let acceptor = sources.tls.as_ref().map(tls::acceptor).transpose()?;
        let admin_token = sources.admin_token;
        if !config.admin.ip().is_loopback() && admin_token.is_none() {
            tracing::warn!(admin = %config.admin, "the admin listener is open to anyone who can reach it (allow_open_admin)");
        }
        let public = bind("listen", config.listen).await?;
        let admin = bind("admin", config.admin).await?;
        let local_addr = bound_addr(&public, config.listen);
        let admin_addr = bound_addr(&admin, config.admin);
        let limit = ConnectionLimit::new(config.limits.max_connections);
        let workers_wanted = config.workers;
        let state = State::new(config, path.clone(), admin_token, route_keys);
        let workers = Workers::start(workers_wanted, &state.tasks)?;
        if let Some(path) = &path {
            reload::watch(state.clone(), path).map_err(|source| StartError::Watch {
                path: path.clone(),
                source,
            })?;
            reload::on_sighup(state.clone());
        }
        state.tasks.spawn(server::serve_public(
            state.clone(),
            public,
            limit,
            acceptor,
            workers,
        ));
        state.tasks.spawn(server::serve_admin(state.clone(), admin));
        state.tasks.spawn(health_check::run(state.clone()));
        state.tasks.spawn(maintenance(state.clone()));
        tracing::info!(%local_addr, %admin_addr, nodes = state.snapshot().nodes.len(), "gateway listening");
        Ok(RunningGateway {
            state,
            local_addr,
            admin_addr,
        })
    }
}

/// The route keys from the config, or a random key of this process's own
/// (fine for one gateway; replicas need a shared one to read each other's
/// tags).
fn route_keys(sources: &GatewaySources) -> Result<RouteKeys, StartError> {
    let current = match &sources.route_key {
        Some(key) => key.expose().as_bytes().to_vec(),
        None => {
            let mut key = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| StartError::NoRandomness)?;
            tracing::info!(
                "no route_key set: this gateway uses a key of its own, so replicas cannot route each other's sessions"
            );
            key
        }
    };
    Ok(RouteKeys::new(
        &current,
        sources
            .route_key_previous
            .as_ref()
            .map(|k| k.expose().as_bytes()),
    ))
}

fn bound_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

/// Expires silent pins and forgets fully drained nodes.
async fn maintenance(state: Arc<State>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
            () = state.shutdown.cancelled() => return,
        }
        let expired = state.pins.expire(Instant::now());
        if expired > 0 {
            tracing::debug!(expired, "silent sessions unpinned");
        }
        // Read before the sweep: it forgets the nodes it returns.
        let draining = state.registry.draining();
        for name in state.registry.sweep() {
            if let Some(node) = draining.iter().find(|d| d.name == name) {
                tracing::info!(node = %node.name, addr = %node.addr, weight = node.weight(), draining = true, sessions = node.metrics.sessions.get(), websockets = node.metrics.websockets.get(), "node drained: its last session ended, it is forgotten");
            }
        }
    }
}

/// A gateway serving in the background.
pub struct RunningGateway {
    state: Arc<State>,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl RunningGateway {
    /// The bound public address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The config now serving.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.state.snapshot().config.clone()
    }

    /// Re-reads the config file, as a file change, SIGHUP or `POST /reload` do.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        reload::reload(&self.state).await
    }

    /// Stops accepting, lets in-flight requests and websockets finish within
    /// `limits.shutdown_timeout`, then cuts what is left.
    pub async fn shutdown(self) {
        let grace = self.state.snapshot().config.limits.shutdown_timeout.get();
        self.state.shutdown.cancel();
        self.state.tasks.close();
        if tokio::time::timeout(grace, self.state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "shutdown grace over; closing what is still open");
            self.state.relays.cancel();
            let _ = tokio::time::timeout(FINAL_WAIT, self.state.tasks.wait()).await;
        }
        tracing::info!("gateway stopped");
    }
}
