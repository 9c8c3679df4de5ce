//! The topic cluster: every node links to every other node's `/cluster`
//! namespace, so a publish reaches every subscriber in the pool.
//!
//! Each node dials each peer (`link`) and sends its own publications over
//! that link, once; each node accepts its peers' links (`listener`) and
//! delivers what arrives locally, never further. That is one hop: no loops,
//! no echo to the origin, and no partition while the links are up, whatever
//! order nodes start in. Lost links are redialled every `retry_interval`.
//!
//! A link alone is at-most-once across a break: what a node missed of a
//! peer's relays (the peer died before relaying it here, the link was cut,
//! a queue was full) it asks the other nodes' histories for (`catchup`),
//! so an acked replicated publication is lost by no surviving node.
//!
//! [`Mesh`] ties the two together for the node: it is the topic service's
//! [`Relay`], adds `/cluster` to the node's `SocketIo`, reports link status
//! for `/readyz` and counters for `/metrics`. [`crate::cluster::Cluster`]
//! plugs it into a node before it serves; it knows nothing of the server.

mod catchup;
mod confirm;
mod link;
mod listener;
pub(crate) mod metrics;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use serde::Serialize;
use socketioxide::SocketIo;
use stickyio_shared::config::node::{NodeConfig, PublishAck};
use stickyio_shared::config::{Env, sources};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use stickyio_shared::secret::Secret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterError;
use crate::cluster::inbound::Inbound;
use crate::readiness::{Check, Readiness};
use crate::topics::{Handed, Relay, Then};

pub use crate::cluster::LinkState;
pub use crate::cluster::inbound::Deliver;
pub use link::LinkStatus;
pub use listener::InboundStatus;

use catchup::CatchUp;
use confirm::Waiter;
use link::{Frame, Link, LinkSettings};
use listener::Listener;
use metrics::MeshMetrics;

/// One peer as `/readyz` shows it: this node's link to it, and its link here.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    #[serde(flatten)]
    pub link: LinkStatus,
    /// Relayed publications received from this peer and delivered.
    pub messages_in: u64,
    /// The peer's own link into this node, once it has connected.
    pub inbound: Option<InboundStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshStatus {
    /// Linked to every reachable peer (see [`Mesh::status`]).
    pub ready: bool,
    pub peers: Vec<PeerStatus>,
}

pub struct Mesh {
    node: String,
    max_frame: usize,
    links: Vec<Arc<Link>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    listener: Arc<Listener>,
    metrics: Arc<MeshMetrics>,
    shutdown: CancellationToken,
}

impl Mesh {
    /// Resolves the secret and starts a link to every peer of `config`,
    /// introducing this node as incarnation `boot` (the topic service's, so
    /// ids and links name one incarnation). Relayed publications are handed
    /// to `deliver`. The links stop when `shutdown` is cancelled. Needs a
    /// Tokio runtime.
    pub fn start(
        config: &NodeConfig,
        boot: u64,
        deliver: Arc<dyn Deliver>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Mesh>, ClusterError> {
        let cluster = &config.cluster;
        let secret = Secret::new(secret(config)?);
        let retry_interval = cluster.retry_interval.get();
        let max_frame = usize::try_from(config.max_payload).unwrap_or(usize::MAX);
        let metrics = Arc::new(MeshMetrics::default());
        let received = Inbound::new(retry_interval * 4, deliver.clone(), metrics.inbound.clone());
        let catch_up = Arc::new(CatchUp::new(
            config.name.clone(),
            config.history.size > 0,
            max_frame,
            config.history.ttl.get(),
            received,
            deliver,
            metrics.clone(),
        ));
        let (links, mut tasks): (Vec<_>, Vec<_>) = cluster
            .peers()
            .into_iter()
            .map(|url| {
                let settings = LinkSettings {
                    url,
                    node: config.name.clone(),
                    boot,
                    secret: secret.clone(),
                    retry_interval,
                    queue: cluster.link_queue,
                };
                Link::spawn(settings, &metrics, catch_up.clone(), shutdown.child_token())
            })
            .unzip();
        let listener = Listener::new(
            config.name.clone(),
            secret,
            max_frame,
            catch_up.clone(),
            metrics.clone(),
        );
        tasks.push(tokio::spawn(catch_up_task(
            catch_up,
            links.clone(),
            listener.clone(),
            config.history.ttl.get(),
            shutdown.child_token(),
        )));
        Ok(Arc::new(Mesh {
            node: config.name.clone(),
            max_frame,
            links,
            tasks: Mutex::new(tasks),
            listener,
            metrics,
            shutdown,
        }))
    }

    /// Adds the `/cluster` namespace, where peers link in, to the node's `io`.
    pub fn register(&self, io: &SocketIo) {
        self.listener.register(io);
    }

    /// Adds the mesh counters to the node's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// Every peer's links. Ready means linked to every reachable peer: each
    /// link is up, or down because its peer cannot be reached. A link still
    /// on its first dial, or refused by a peer that answered, is not ready.
    pub fn status(&self) -> MeshStatus {
        let peers: Vec<PeerStatus> = self
            .links
            .iter()
            .map(|link| {
                let link = link.status();
                let node = link.node.as_deref();
                PeerStatus {
                    messages_in: node.map_or(0, |node| self.listener.messages_in(node)),
                    inbound: node.and_then(|node| self.listener.inbound(node)),
                    link,
                }
            })
            .collect();
        MeshStatus {
            ready: peers
                .iter()
                .all(|p| matches!(p.link.state, LinkState::Up | LinkState::Down)),
            peers,
        }
    }

    /// Stops every link and waits for their tasks, so a stopped node sends
    /// nothing more. Peers see the links close and redial it.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a peer link task ended abnormally");
            }
        }
    }
}

impl Relay for Mesh {
    /// Sends a publication made on this node once over each link. Never
    /// waits: a peer whose queue is full or whose link is down misses it,
    /// and the drop is counted. With local acks the publish goes ahead at
    /// once; replicated, once a peer says it holds it (`confirm`).
    /// Publications of other nodes are never relayed.
    fn relay(&self, publication: &Arc<Publication>, ack: PublishAck, then: Then) {
        match ack {
            PublishAck::Local => {
                self.send(publication, None);
                then(Handed::Taken);
            }
            PublishAck::Replicated => {
                let waiter = Waiter::start(then, self.links.len());
                self.send(publication, Some(waiter));
            }
        }
    }
}

impl Mesh {
    fn send(&self, publication: &Arc<Publication>, waiter: Option<Arc<Waiter>>) {
        if publication.node != self.node {
            tracing::debug!(
                origin = publication.node,
                "not relaying a publication of another node"
            );
            if let Some(waiter) = waiter {
                self.links
                    .iter()
                    .for_each(|_| waiter.failed("not this node's"));
            }
            return;
        }
        let bytes = match relay::encode(publication) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::error!(id = publication.id, error = %e, "cannot encode a relay frame");
                if let Some(waiter) = waiter {
                    self.links
                        .iter()
                        .for_each(|_| waiter.failed("not encodable"));
                }
                return;
            }
        };
        let frame = Frame {
            id: Arc::from(publication.id.as_str()),
            bytes,
            waiter,
        };
        if frame.bytes.len() > self.max_frame {
            tracing::warn!(
                id = publication.id,
                frame_bytes = frame.bytes.len(),
                max_payload = self.max_frame,
                "not relaying a publication: its frame exceeds max_payload"
            );
            self.links
                .iter()
                .for_each(|link| link.drop_too_large(&frame));
            return;
        }
        for link in &self.links {
            link.relay(frame.clone());
        }
    }
}

impl Readiness for Mesh {
    fn name(&self) -> &str {
        "mesh"
    }

    fn check(&self) -> Check {
        let status = self.status();
        Check {
            ready: status.ready,
            detail: serde_json::json!({ "peers": status.peers }),
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How often the catch-up task turns without being woken: gaps held too
/// long are given up, and peers still unlinked asked for again.
const CATCH_UP_TICK: Duration = Duration::from_secs(1);

/// Asks every reachable peer for what this node may have missed of an
/// origin: at once when woken (a peer's link came or went, a gap opened),
/// and each [`CATCH_UP_TICK`] for the gaps still open and the peers unlinked
/// for less than the history's `ttl` (what one acked while its link here
/// was down is held by the peer that confirmed it). Ends with the node.
async fn catch_up_task(
    catch_up: Arc<CatchUp>,
    links: Vec<Arc<Link>>,
    listener: Arc<Listener>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CATCH_UP_TICK);
    loop {
        let periodic = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => true,
            _ = catch_up.wake.notified() => false,
        };
        let unlinked = if periodic {
            listener.unlinked(ttl)
        } else {
            Vec::new()
        };
        for origin in catch_up.turn(unlinked) {
            let request = catch_up.request(&origin);
            for link in &links {
                link.ask(request.clone());
            }
        }
    }
}

/// The mesh secret of `config`; a clustered mesh node must have one.
pub fn secret(config: &NodeConfig) -> Result<String, ClusterError> {
    let secret = sources::cluster_secret(&config.cluster, Env::process())?;
    secret
        .map(|s| s.expose().to_owned())
        .ok_or(ClusterError::NoSecret)
}
