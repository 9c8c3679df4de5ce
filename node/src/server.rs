//! The node's server: the client listener serving Socket.IO and the demo
//! routes on hyper 1, the admin listener beside it (`admin.rs`), and their
//! lifecycle from bind to graceful shutdown.
//!
//! Starting is split in two so other parts of the node can plug in before
//! traffic arrives: [`Node::prepare`] binds the ports and builds everything;
//! the cluster backend ([`Cluster::attach`]) can then register its
//! `/cluster` namespace on [`Node::io`], its relay on [`Node::topics`], its
//! metrics through [`Node::with_registry`] and its readiness through
//! [`Node::add_readiness`]; [`Node::serve`] starts accepting. [`Node::bind`]
//! does both for the common case.
//!
//! Shutdown stops accepting, marks the node unready, disconnects every socket
//! (which ends long-polling requests and websockets), then lets in-flight HTTP
//! requests finish, each step bounded by [`DRAIN_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use socketioxide::SocketIo;
use socketioxide::service::SocketIoService;
use stickyio_shared::config::node::{ADMIN_TOKEN_ENV, NodeConfig};
use stickyio_shared::config::{Env, sources};
use stickyio_shared::connection_limit::ConnectionLimit;
use stickyio_shared::secret::Secret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept;
use crate::admin::{self, Admin};
use crate::api::{self, Api};
use crate::cluster::{Cluster, ClusterError};
use crate::deadline::DeadlineBody;
use crate::demo;
use crate::metrics::Metrics;
use crate::readiness::{Readiness, ReadinessChecks};
use crate::routes::{HttpState, Routes};
use crate::topics::TopicService;

/// Longest wait for each shutdown step: closing sockets, then draining HTTP.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    AdminToken(stickyio_shared::config::sources::SourceError),
    #[error("cannot listen for stop signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// A node that is bound but not yet serving: the place to plug in.
pub struct Node {
    config: Arc<NodeConfig>,
    listener: TcpListener,
    local_addr: SocketAddr,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    admin_token: Option<Secret>,
    io: SocketIo,
    service: SocketIoService<Routes>,
    topics: Arc<TopicService>,
    http: Arc<HttpState>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    cluster: Cluster,
}

impl Node {
    /// Binds `config.listen` and starts serving, as a member of the cluster
    /// unless `cluster.standalone`, over the configured `cluster.backend`.
    /// Port 0 picks a free port; see [`RunningNode::local_addr`].
    pub async fn bind(config: NodeConfig) -> Result<RunningNode, NodeError> {
        let mut node = Node::prepare(config).await?;
        let config = node.config.clone();
        Cluster::attach(&mut node, &config)?;
        Ok(node.serve())
    }

    /// Binds `config.listen` and `config.admin` and builds the Socket.IO
    /// server, the topic service and the HTTP routes, without accepting
    /// connections yet.
    pub async fn prepare(config: NodeConfig) -> Result<Node, NodeError> {
        let admin_token =
            sources::node_admin_token(&config, Env::process()).map_err(NodeError::AdminToken)?;
        let (listener, local_addr) = bind(config.listen).await?;
        let (admin_listener, admin_addr) = bind(config.admin).await?;
        if !admin_addr.ip().is_loopback() && admin_token.is_none() {
            tracing::warn!(
                node = %config.name,
                admin = %admin_addr,
                "the admin listener is open to anyone who can reach it: set admin_token_file, admin_token or {ADMIN_TOKEN_ENV}"
            );
        }

        let (registry, metrics) = Metrics::registry(&config.name);
        let metrics = Arc::new(metrics);
        let topics = Arc::new(TopicService::new(&config, metrics.clone()));
        let http = Arc::new(HttpState {
            registry: RwLock::new(registry),
            readiness: ReadinessChecks::new(&config.name),
            page: Bytes::from(demo::page(&config.name)),
        });
        let (service, io) = SocketIo::builder()
            .ping_interval(config.ping_interval.get())
            .ping_timeout(config.ping_timeout.get())
            .max_payload(config.max_payload)
            .max_buffer_size(config.send_buffer)
            // Polling bodies are capped by `max_payload`; cap websocket
            // messages the same so both transports refuse the same frames.
            .ws_max_message_size(usize::try_from(config.max_payload).unwrap_or(usize::MAX))
            .with_state(Api {
                topics: topics.clone(),
                metrics: metrics.clone(),
            })
            .build_with_inner_svc(Routes(http.clone()));
        api::register(&io);

        Ok(Node {
            config: Arc::new(config),
            listener,
            local_addr,
            admin_listener,
            admin_addr,
            admin_token,
            io,
            service,
            topics,
            http,
            metrics,
            shutdown: CancellationToken::new(),
            cluster: Cluster::Standalone,
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound admin address (the real port when `admin` used port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The Socket.IO server, to register more namespaces on.
    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    pub fn topics(&self) -> &Arc<TopicService> {
        &self.topics
    }

    /// Registers more metrics: they are served on `/metrics` with the
    /// node's own (prefix `stickyio_node_`, label `node`). Use
    /// `registry.sub_registry_with_prefix("mesh")` to keep them grouped.
    pub fn with_registry<R>(&self, register: impl FnOnce(&mut Registry) -> R) -> R {
        register(
            &mut self
                .http
                .registry
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Adds a condition to `/readyz`; the node is ready only when all hold.
    pub fn add_readiness(&self, check: Arc<dyn Readiness>) {
        self.http.readiness.add(check);
    }

    /// Cancelled when the node starts shutting down, so background tasks
    /// plugged into it (mesh links) can stop with it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// The cluster the node stops with: [`RunningNode::shutdown`] awaits
    /// its [`Cluster::shutdown`]. Set by [`Cluster::attach`].
    pub(crate) fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = cluster;
    }

    /// Starts accepting connections.
    pub fn serve(self) -> RunningNode {
        self.http.readiness.set_serving(true);
        tracing::info!(node = %self.config.name, addr = %self.local_addr, admin = %self.admin_addr, "listening");
        let admin = Arc::new(Admin {
            http: self.http.clone(),
            token: self.admin_token,
        });
        let admin = tokio::spawn(admin::serve(
            admin,
            self.admin_listener,
            self.config.header_read_timeout.get(),
            self.shutdown.clone(),
        ));
        let task = tokio::spawn(serve(
            self.config.clone(),
            self.listener,
            self.service,
            self.io.clone(),
            self.http,
            self.metrics,
            self.shutdown.clone(),
        ));
        RunningNode {
            config: self.config,
            local_addr: self.local_addr,
            admin_addr: self.admin_addr,
            io: self.io,
            topics: self.topics,
            shutdown: self.shutdown,
            task: Some(task),
            admin: Some(admin),
            cluster: self.cluster,
        }
    }
}

/// A serving node. Dropping it stops the server without waiting; call
/// [`RunningNode::shutdown`] to stop gracefully.
pub struct RunningNode {
    config: Arc<NodeConfig>,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    io: SocketIo,
    topics: Arc<TopicService>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    cluster: Cluster,
}

impl RunningNode {
    /// The bound address (the real port when `listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound admin address: `/healthz`, `/readyz`, `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    pub fn topics(&self) -> &Arc<TopicService> {
        &self.topics
    }

    /// The cluster backend this node runs with.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Stops accepting, disconnects every socket, lets in-flight requests
    /// finish, stops the cluster backend (waiting for its tasks), and
    /// returns when all of it has stopped.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await?;
        }
        self.cluster.shutdown().await;
        if let Some(admin) = self.admin.take() {
            admin.await?;
        }
        Ok(())
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds `addr` and returns the listener with its real address.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), NodeError> {
    let bind_error = |source| NodeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

async fn serve(
    config: Arc<NodeConfig>,
    listener: TcpListener,
    service: SocketIoService<Routes>,
    io: SocketIo,
    http: Arc<HttpState>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let builder = accept::builder(config.header_read_timeout.get());
    let limit = ConnectionLimit::new(config.max_connections);
    let body_limit = config.body_read_timeout.get();
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = accept::next(&listener, &limit, "node", &shutdown).await {
        let (service, metrics) = (service.clone(), metrics.clone());
        let deadlined = service_fn(move |req: Request<Incoming>| {
            let carries_sid = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("sid=")));
            let response = service.call(req.map(|body| DeadlineBody::new(body, body_limit)));
            let metrics = metrics.clone();
            async move {
                let response = response.await;
                // Engine.IO answers 400 to a sid it does not hold: the
                // symptom of a request routed to the wrong node.
                if carries_sid
                    && matches!(&response, Ok(r) if r.status() == http::StatusCode::BAD_REQUEST)
                {
                    metrics.session_unknown.inc();
                }
                response
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), deadlined)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    http.readiness.set_serving(false);
    drop(listener);
    tracing::info!("shutting down: disconnecting sockets");
    if tokio::time::timeout(DRAIN_TIMEOUT, io.close())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "sockets still open at shutdown; closing anyway");
    }
    accept::drain(graceful, "node").await;
    tracing::info!("stopped");
}
