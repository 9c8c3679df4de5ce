//! The Redis backend of the topic cluster (`[cluster] backend = "redis"`):
//! nodes relay publications through one Redis instead of linking to each
//! other, for pools too large or too changeable for a static mesh.
//!
//! - Relay: every node subscribes to `{prefix}:relay` and publishes its own
//!   publications there as relay frames (`stickyio_shared::relay`), each
//!   prefixed with its entry id in the history stream. A frame a node
//!   receives is delivered locally once (deduplicated) and never published
//!   again: one hop. Its own frames are delivered as they come back, so
//!   every node delivers in the stream's order.
//! - History: the stream `{prefix}:history` (`XADD … MAXLEN ~`, trimmed by
//!   age too); a resume reads it with `XRANGE` (`link`), between two
//!   deliveries, so the seam has no gap and no duplicate.
//! - Membership: each node refreshes `{prefix}:node:{name}` (its
//!   incarnation, with a TTL) and lists the live members from the set
//!   `{prefix}:members`; `/readyz` and `/metrics` show them. A key that holds
//!   another incarnation means two processes share a name: reported, and
//!   the node is not ready.
//! - Failure: a publish is taken by Redis for every live member or refused
//!   with `cluster_unavailable` and delivered nowhere (`publish`). A lost
//!   link is retried with backoff (`link`); a node that cannot reach Redis
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

use ahash::{AHashMap, AHashSet};
use prometheus_client::registry::Registry;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, Script};
use serde::Serialize;
use stickyio_shared::config::node::{NodeConfig, PublishAck};
use stickyio_shared::config::{Env, sources};
use stickyio_shared::message::Publication;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::inbound::{Deliver, Inbound};
use crate::cluster::{ClusterError, LinkState, millis};
use crate::cursor::Stamp;
use crate::readiness::{Check, Readiness};
use crate::topics::{Handed, Relay, ResumeThen, Resumer, Then};

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
    Ok(match sources::redis_password(cluster, Env::process())? {
        Some(password) => {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info.set_redis_settings(settings)
        }
        None => info,
    })
}

/// The channel and key names of one pool.
struct Names {
    relay: String,
    /// The pool's history stream.
    history: String,
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
            history: format!("{prefix}:history"),
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
    /// `history.size`: the stream's length, 0 for none.
    history_size: usize,
    history_ttl: Duration,
    /// Own publications Redis took, waiting to come back here.
    own: Mutex<OwnAcks>,
}

/// Acks of this node's publishes, sent once each came back through Redis
/// and was delivered here (so the publisher's own subscribers have it
/// first). One may come back before its publish's reply is read: `early`.
#[derive(Default)]
struct OwnAcks {
    waiting: AHashMap<String, Then>,
    early: AHashSet<String>,
}

/// Own publications seen back before their reply, remembered at most: a
/// reply follows within a round trip, so this is never reached in practice.
const EARLY_LIMIT: usize = 100_000;

/// A resume waiting for the link task.
pub struct ResumeJob {
    since: Stamp,
    limit: usize,
    then: ResumeThen,
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

    /// Redis took own publication `id`: ack it once it is delivered here.
    fn await_own(&self, id: &str, then: Then) {
        let mut own = lock(&self.own);
        if own.early.remove(id) {
            drop(own);
            return then(Handed::Delivered);
        }
        if self.connection().is_none() {
            drop(own);
            return then(Handed::Unconfirmed(LOST_BEFORE_BACK.to_owned()));
        }
        own.waiting.insert(id.to_owned(), then);
    }

    /// Own publication `id` came back and was delivered here.
    fn delivered_own(&self, id: &str) {
        let mut own = lock(&self.own);
        match own.waiting.remove(id) {
            Some(then) => {
                drop(own);
                then(Handed::Delivered);
            }
            None => {
                if own.early.len() >= EARLY_LIMIT {
                    tracing::warn!(
                        limit = EARLY_LIMIT,
                        "too many own publications seen before their reply; forgetting them"
                    );
                    own.early.clear();
                }
                own.early.insert(id.to_owned());
            }
        }
    }

    /// The subscription ended: own publications that did not come back are
    /// held by Redis but were not delivered here.
    fn fail_own(&self) {
        let waiting = std::mem::take(&mut lock(&self.own).waiting);
        for then in waiting.into_values() {
            then(Handed::Unconfirmed(LOST_BEFORE_BACK.to_owned()));
        }
    }

    /// Another process uses our name; `other` is its incarnation.
    fn conflict_seen(&self, other: &str) {
        self.metrics.name_conflicts.inc();
        self.metrics.name_conflict.set(1);
        if self.membership().conflict_seen(other, Instant::now()) {
            tracing::error!(
                node = %self.node,
                incarnation = other,
                key = self.names.own,
                "two nodes are named the same: another process uses this node's name and heartbeat key; give every node its own name"
            );
        }
    }
}

/// Why an own publication Redis holds is acked `cluster_unavailable`.
const LOST_BEFORE_BACK: &str = "Redis holds it, but this node lost its Redis link before it came back, so it may be missing here";

/// The backend of one node: its [`Relay`], [`Resumer`] and `/readyz` check.
pub struct RedisBackend {
    shared: Arc<Shared>,
    /// Publishes waiting for Redis, in the order they were made.
    jobs: mpsc::Sender<Job>,
    /// Resumes waiting for the link task.
    resumes: mpsc::Sender<ResumeJob>,
}

/// Resumes queued for the link task at most; more are answered "not
/// recovered" at once.
const RESUME_QUEUE: usize = 1024;

impl Resumer for RedisBackend {
    fn resume(&self, since: Stamp, limit: usize, then: ResumeThen) {
        if let Err(e) = self.resumes.try_send(ResumeJob { since, limit, then }) {
            let job = match e {
                TrySendError::Full(job) | TrySendError::Closed(job) => job,
            };
            (job.then)(None);
        }
    }
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
            history_size: config.history.size,
            history_ttl: config.history.ttl.get(),
            own: Mutex::new(OwnAcks::default()),
        });
        let (resumes, resume_queue) = mpsc::channel(RESUME_QUEUE);
        let link = tokio::spawn(link::run(shared.clone(), client, resume_queue, shutdown));
        let (jobs, queue) = mpsc::channel(cluster.link_queue);
        tokio::spawn(publish::run(shared.clone(), queue));
        Ok((
            Arc::new(RedisBackend {
                shared,
                jobs,
                resumes,
            }),
            link,
        ))
    }

    /// Adds the backend's series to the node's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }
}
