//! The Redis backend of the topic cluster (`[cluster] backend = "redis"`):
//! nodes relay publications through one Redis instead of linking to each
//! other, for pools too large or too changeable for a static mesh.
//!
//! - Relay: every node subscribes to `{prefix}:relay` and publishes its own
//!   publications there as relay frames (`stickyio_shared::relay`). A frame
//!   a node receives is delivered locally once (deduplicated) and never
//!   published again: one hop. Its own frames are skipped.
//! - Membership: each node refreshes `{prefix}:node:{name}` (its
//!   incarnation, with a TTL) and lists the live members from the set
//!   `{prefix}:members`; `/readyz` and `/metrics` show them. A key that holds
//!   another incarnation means two processes share a name: reported, and
//!   the node is not ready.
//! - Failure: a publish is taken by Redis for every live member or refused
//!   with `cluster_unavailable` and delivered nowhere ([`publish`]). A lost
//!   link is retried with backoff ([`link`]); a node that cannot reach Redis
//!   starts anyway, not ready.
//!
//! Trust is Redis's: its password (`redis_password_file` or
//! `STICKYIO_REDIS_PASSWORD`) and TLS (`rediss://`). Nodes exchange no secret.

mod link;
mod membership;
mod metrics;
mod publish;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::registry::Registry;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, Script};
use serde::Serialize;
use stickyio_shared::config::node::{NodeConfig, PublishAck};
use stickyio_shared::message::Publication;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::inbound::{Deliver, Inbound};
use crate::cluster::{ClusterError, LinkState, millis};
use crate::readiness::{Check, Readiness};
use crate::topics::{Handed, Relay, Then};

pub use membership::{Conflict, Member};

use membership::Membership;
use metrics::RedisMetrics;
use publish::Job;

/// Longest wait for a connection or an answer from Redis.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis connection settings of `config`: its URL plus the password
/// from `redis_password_file` or the environment. Connects to nothing.
pub fn connection_info(config: &NodeConfig) -> Result<ConnectionInfo, ClusterError> {
    let cluster = &config.cluster;
    let url = cluster
        .redis_url
        .as_deref()
        .ok_or(ClusterError::NoRedisUrl)?;
    let info = url.into_connection_info().map_err(ClusterError::RedisUrl)?;
    Ok(match cluster.resolve_redis_password()? {
        Some(password) => {
            let settings = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(settings)
        }
        None => info,
    })
}

/// The channel and key names of one pool.
struct Names {
    relay: String,
    members: String,
    member_prefix: String,
    /// This node's heartbeat key, also its presence channel.
    own: String,
}

impl Names {
    fn new(prefix: &str, node: &str) -> Names {
        let member_prefix = format!("{prefix}:node:");
        Names {
            relay: format!("{prefix}:relay"),
            members: format!("{prefix}:members"),
            own: format!("{member_prefix}{node}"),
            member_prefix,
        }
    }

    fn member(&self, name: &str) -> String {
        format!("{}{name}", self.member_prefix)
    }

    fn name_of<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(&self.member_prefix).unwrap_or(key)
    }
}

/// The link as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub state: LinkState,
    /// When the state last changed, in ms since the Unix epoch.
    pub since: u64,
    pub last_error: Option<String>,
}

/// What the link task and publishers share.
struct Shared {
    node: String,
    boot: u64,
    /// The Redis address without credentials, for logs and `/readyz`.
    url: String,
    names: Names,
    max_frame: usize,
    ttl: Duration,
    retry_interval: Duration,
    script: Script,
    connection: Mutex<Option<Current>>,
    status: Mutex<LinkStatus>,
    membership: Mutex<Membership>,
    /// Where frames of other nodes go: dedup, count, deliver.
    received: Inbound,
    metrics: RedisMetrics,
}

/// The command connection of the session in progress.
#[derive(Clone)]
struct Current {
    commands: MultiplexedConnection,
    /// Cancelled by a publish that found the connection broken, so the
    /// session starts over; a later session has a token of its own.
    broken: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn connection(&self) -> Option<Current> {
        lock(&self.connection).clone()
    }

    fn set_connection(&self, connection: Option<Current>) {
        self.metrics.up.set(i64::from(connection.is_some()));
        *lock(&self.connection) = connection;
    }

    fn status(&self) -> LinkStatus {
        lock(&self.status).clone()
    }

    fn set_state(&self, state: LinkState, last_error: Option<String>) {
        let mut status = lock(&self.status);
        if status.state != state {
            status.since = millis(SystemTime::now());
        }
        status.state = state;
        if last_error.is_some() {
            status.last_error = last_error;
        }
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        lock(&self.membership)
    }

    /// Another process uses our name; `other` is its incarnation.
    fn conflict_seen(&self, other: &str) {
        self.metrics.name_conflicts.inc();
        self.metrics.name_conflict.set(1);
        if self.membership().conflict_seen(other, Instant::now()) {
            tracing::error!(
                node = %self.node,
                "two nodes are named {:?}: another process (incarnation {other}) uses {} too; give every node its own name",
                self.node,
                self.names.own
            );
        }
    }
}

/// The backend of one node: its [`Relay`] and `/readyz` check.
pub struct RedisBackend {
    shared: Arc<Shared>,
    /// Publishes waiting for Redis, in the order they were made.
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// Up and no other process uses this node's name.
    pub ready: bool,
    pub url: String,
    #[serde(flatten)]
    pub link: LinkStatus,
    pub members: Vec<Member>,
    pub name_conflict: Option<Conflict>,
}

impl RedisBackend {
    pub fn status(&self) -> RedisStatus {
        let link = self.shared.status();
        let now = Instant::now();
        let membership = self.shared.membership();
        let conflict = membership.conflict(now).cloned();
        RedisStatus {
            ready: link.state == LinkState::Up && conflict.is_none(),
            url: self.shared.url.clone(),
            link,
            members: membership.members(),
            name_conflict: conflict,
        }
    }
}

impl Relay for RedisBackend {
    /// Redis must take the publication for every live member before the
    /// origin delivers it: `then` runs with Redis's answer. When
    /// `cluster.link_queue` publishes already wait for Redis, refused at once.
    fn relay(&self, publication: &Arc<Publication>, _ack: PublishAck, then: Then) {
        let job = Job {
            publication: publication.clone(),
            then,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => (job.then)(Handed::Refused(self.shared.refuse(
                "queue_full",
                format!(
                    "{} publishes of this node are already waiting for Redis",
                    self.jobs.max_capacity()
                ),
            ))),
            Err(TrySendError::Closed(job)) => (job.then)(Handed::Refused(
                self.shared
                    .refuse("disconnected", "the Redis backend has stopped".to_owned()),
            )),
        }
    }
}

impl Readiness for RedisBackend {
    fn name(&self) -> &str {
        "redis"
    }

    fn check(&self) -> Check {
        let status = self.status();
        Check {
            ready: status.ready,
            detail: serde_json::to_value(&status).unwrap_or_default(),
        }
    }
}

impl RedisBackend {
    /// Builds the backend of `config` for incarnation `boot` and spawns the
    /// task that connects (and keeps reconnecting) until `shutdown`, then
    /// leaves the pool: the returned handle ends once it has. Frames of
    /// other nodes go to `deliver`. Does not wait for Redis: a node whose
    /// Redis is down starts, not ready.
    pub fn start(
        config: &NodeConfig,
        boot: u64,
        deliver: Arc<dyn Deliver>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<RedisBackend>, JoinHandle<()>), ClusterError> {
        let info = connection_info(config)?;
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if tls {
            // rediss:// needs a rustls crypto provider; another part of the
            // process may have installed one already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let url = format!("{}://{}", if tls { "rediss" } else { "redis" }, info.addr());
        let client = redis::Client::open(info).map_err(ClusterError::RedisUrl)?;
        let cluster = &config.cluster;
        let ttl = cluster.redis_heartbeat_ttl.get();
        let metrics = RedisMetrics::default();
        let shared = Arc::new(Shared {
            node: config.name.clone(),
            boot,
            url,
            names: Names::new(&cluster.redis_prefix, &config.name),
            max_frame: usize::try_from(config.max_payload).unwrap_or(usize::MAX),
            ttl,
            retry_interval: cluster.retry_interval.get(),
            script: publish::script(),
            connection: Mutex::new(None),
            status: Mutex::new(LinkStatus {
                state: LinkState::Connecting,
                since: millis(SystemTime::now()),
                last_error: None,
            }),
            membership: Mutex::new(Membership::new(&config.name, ttl * 2)),
            // Redis hands each message once per subscription: dedup only
            // guards against the unexpected, with the mesh's window.
            received: Inbound::new(Duration::ZERO, deliver, metrics.inbound.clone()),
            metrics,
        });
        let link = tokio::spawn(link::run(shared.clone(), client, shutdown));
        let (jobs, queue) = mpsc::channel(cluster.link_queue);
        tokio::spawn(publish::run(shared.clone(), queue));
        Ok((Arc::new(RedisBackend { shared, jobs }), link))
    }

    /// Adds the backend's series to the node's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }
}
