//! The topic cluster: how a node's publications reach the rest of its pool,
//! behind one type, [`Cluster`], so the node core never names a backend.
//!
//! - [`mesh`]: every node links to every other node (`backend = "mesh"`).
//! - [`redis`]: every node publishes to and subscribes on one Redis.
//! - `inbound`: the one path a publication of another node takes in, for
//!   both: deduplicate (`dedup`), count, deliver locally, never relay.
//! - `labels`, [`LinkState`], `millis`: what both report the same way.
//!
//! [`Cluster::attach`] plugs the configured backend into a prepared node
//! (relay, `/cluster` namespace, metrics, readiness); [`Cluster::shutdown`]
//! stops it and waits for its tasks, which the running node does as it
//! stops. The backends take what they need as arguments and never import
//! the server.

mod dedup;
pub(crate) mod inbound;
pub(crate) mod labels;
pub mod mesh;
pub mod redis;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use stickyio_shared::config::node::{Backend, NodeConfig, SECRET_ENV};
use stickyio_shared::config::sources::SourceError;
use tokio::task::JoinHandle;

use crate::server::{DRAIN_TIMEOUT, Node};
use inbound::LocalDelivery;
use mesh::Mesh;
use redis::RedisBackend;

/// Why a node cannot join its cluster (at start, or in `check`).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Secret(#[from] SourceError),
    #[error(
        "cluster.standalone = false needs a mesh secret: set cluster.secret_file, cluster.secret or {SECRET_ENV}"
    )]
    NoSecret,
    #[error("backend = \"redis\" needs cluster.redis_url")]
    NoRedisUrl,
    #[error("cluster.redis_url: {0}")]
    RedisUrl(#[source] ::redis::RedisError),
}

/// The state of a cluster link (a mesh peer link, or the Redis link), as
/// `/readyz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not connected yet since the node started (the first dial is running).
    Connecting,
    /// Connected (Redis: subscribed, heartbeat written).
    Up,
    /// Unreachable, or the link was lost; retrying.
    Down,
    /// The peer answered and refused this node (mesh: wrong secret, or a
    /// name clash).
    Refused,
}

/// Milliseconds since the Unix epoch, as `/readyz` reports times.
pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The node's cluster backend. Cheap to clone: the handles are shared.
#[derive(Clone)]
pub enum Cluster {
    /// No other node: publishes are delivered here only.
    Standalone,
    Mesh(Arc<Mesh>),
    Redis {
        backend: Arc<RedisBackend>,
        /// The link task, which leaves the pool once the node shuts down.
        link: Arc<Mutex<Option<JoinHandle<()>>>>,
    },
}

impl Cluster {
    /// Checks what joining needs without connecting anywhere: the mesh
    /// secret can be read, or the Redis URL and password.
    pub fn check(config: &NodeConfig) -> Result<(), ClusterError> {
        if config.cluster.standalone {
            return Ok(());
        }
        match config.cluster.backend {
            Backend::Mesh => mesh::secret(config).map(drop),
            Backend::Redis => redis::connection_info(config).map(drop),
        }
    }

    /// Plugs the backend `config` names into a prepared node: its relay on
    /// the topic service, `/cluster` (mesh), series on `/metrics`, a check on
    /// `/readyz`. `config` is normally [`Node::config`]; tests that bind
    /// every node on port 0 first pass the cluster they learned afterwards.
    /// The node keeps the cluster and stops it when it shuts down.
    pub fn attach(node: &mut Node, config: &NodeConfig) -> Result<Cluster, ClusterError> {
        let cluster = Cluster::start(node, config)?;
        node.set_cluster(cluster.clone());
        Ok(cluster)
    }

    fn start(node: &Node, config: &NodeConfig) -> Result<Cluster, ClusterError> {
        if config.cluster.standalone {
            return Ok(Cluster::Standalone);
        }
        let topics = node.topics();
        topics.join_pool(config);
        let deliver = Arc::new(LocalDelivery(Arc::downgrade(topics)));
        match config.cluster.backend {
            Backend::Mesh => {
                let mesh = Mesh::start(config, topics.boot(), deliver, node.shutdown_token())?;
                mesh.register(node.io());
                node.with_registry(|registry| mesh.register_metrics(registry));
                node.add_readiness(mesh.clone());
                topics.set_relay(mesh.clone());
                Ok(Cluster::Mesh(mesh))
            }
            Backend::Redis => {
                let (backend, link) =
                    RedisBackend::start(config, topics.boot(), deliver, node.shutdown_token())?;
                node.with_registry(|registry| backend.register_metrics(registry));
                node.add_readiness(backend.clone());
                topics.set_relay(backend.clone());
                if config.history.size > 0 {
                    topics.set_resumer(backend.clone());
                }
                Ok(Cluster::Redis {
                    backend,
                    link: Arc::new(Mutex::new(Some(link))),
                })
            }
        }
    }

    /// Stops the backend and waits for its tasks (each bounded by
    /// [`DRAIN_TIMEOUT`]): mesh links close, a Redis node leaves the pool.
    pub async fn shutdown(&self) {
        match self {
            Cluster::Standalone => {}
            Cluster::Mesh(mesh) => {
                if tokio::time::timeout(DRAIN_TIMEOUT, mesh.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!(timeout = ?DRAIN_TIMEOUT, "peer links still open at shutdown; stopping anyway");
                }
            }
            Cluster::Redis { link, .. } => {
                let task = link.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(task) = task
                    && tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err()
                {
                    tracing::warn!(timeout = ?DRAIN_TIMEOUT, "the Redis link still runs at shutdown; stopping anyway");
                }
            }
        }
    }
}
