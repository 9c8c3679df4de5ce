//! The `/cluster` namespace: where peers' links arrive and their relayed
//! publications are delivered to this node's own subscribers.
//!
//! A connect middleware checks the secret before the socket joins the
//! namespace, so an unauthenticated client never gets a handler: its `relay`
//! events go nowhere. An accepted peer gets `welcome` (its link waits for it)
//! and each frame it sends is decoded, checked to come from that peer itself
//! (one hop: a node only relays its own publications), deduplicated, and
//! handed to the cluster's one inbound path (`inbound.rs`), in each
//! origin's sequence order (`catchup.rs`), which never relays it further.
//! A peer's `catch_up` request is answered here from this node's history,
//! and a peer's link coming or going makes this node ask the others for
//! what that peer may not have relayed to it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use stickyio_shared::relay;
use stickyio_shared::secret::Secret;

use super::catchup::{CatchUp, CatchUpError};
use super::metrics::MeshMetrics;
use crate::cluster::millis;

/// The namespace peers link to.
pub(super) const NAMESPACE: &str = "/cluster";

/// Why a `/cluster` connection was refused. The text goes back to the client
/// in its `connect_error`; it never contains the secret.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("unauthorized: no cluster secret")]
    MissingSecret,
    #[error("unauthorized: wrong cluster secret")]
    WrongSecret,
    #[error("bad handshake: auth needs `node` (a name) and `boot` (a number)")]
    BadHandshake,
    #[error("refused: {0:?} is this node's own name (check cluster.host and the node names)")]
    OwnName(String),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::MissingSecret => "missing_secret",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::BadHandshake => "bad_handshake",
            Refusal::OwnName(_) => "own_name",
        }
    }
}

/// Who a peer link says it is, once its secret was accepted.
#[derive(Debug, Clone, Deserialize)]
struct PeerId {
    node: String,
    boot: u64,
    /// When the peer started (ms since the Unix epoch); older peers do not say.
    #[serde(default)]
    started: Option<u64>,
}

/// The link from one peer into this node, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundStatus {
    /// Whether the peer's link to this node is connected.
    pub connected: bool,
    /// When it last connected or disconnected, in ms since the Unix epoch.
    pub since: u64,
}

#[derive(Debug)]
struct InboundLink {
    /// Sockets from this peer: briefly two while a lost one times out.
    sockets: usize,
    since: SystemTime,
}

pub(super) struct Listener {
    node: String,
    secret: Secret,
    max_frame: usize,
    catch_up: Arc<CatchUp>,
    inbound: Mutex<AHashMap<String, InboundLink>>,
    metrics: Arc<MeshMetrics>,
}

impl Listener {
    pub(super) fn new(
        node: String,
        secret: Secret,
        max_frame: usize,
        catch_up: Arc<CatchUp>,
        metrics: Arc<MeshMetrics>,
    ) -> Arc<Self> {
        Arc::new(Listener {
            node,
            secret,
            max_frame,
            catch_up,
            inbound: Mutex::new(AHashMap::new()),
            metrics,
        })
    }

    /// Adds the `/cluster` namespace to `io`.
    pub(super) fn register(self: &Arc<Self>, io: &SocketIo) {
        let guard = self.clone();
        let host = self.clone();
        io.ns(
            NAMESPACE,
            (move |s: SocketRef, Data(peer): Data<PeerId>| {
                host.accept(s, peer);
                std::future::ready(())
            })
            .with(
                move |s: SocketRef, TryData(auth): TryData<serde_json::Value>| {
                    std::future::ready(guard.authenticate(&s, auth.ok()))
                },
            ),
        );
    }

    /// The connect middleware: runs before the socket joins the namespace.
    fn authenticate(&self, s: &SocketRef, auth: Option<serde_json::Value>) -> Result<(), Refusal> {
        let result = self.check(auth.as_ref());
        if let Err(refusal) = &result {
            self.metrics.refuse_peer(refusal.kind());
            let claimed = auth
                .as_ref()
                .and_then(|a| a.get("node"))
                .and_then(|n| n.as_str());
            tracing::warn!(sid = %s.id, node = claimed, namespace = NAMESPACE, reason = %refusal, "Refused a peer link");
        }
        result
    }

    fn check(&self, auth: Option<&serde_json::Value>) -> Result<(), Refusal> {
        let secret = auth.and_then(|a| a.get("secret")).and_then(|s| s.as_str());
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return Err(Refusal::MissingSecret);
        };
        if !self.secret.matches(secret) {
            return Err(Refusal::WrongSecret);
        }
        let peer = auth
            .and_then(|a| PeerId::deserialize(a).ok())
            .filter(|p| !p.node.is_empty())
            .ok_or(Refusal::BadHandshake)?;
        if peer.node == self.node {
            return Err(Refusal::OwnName(peer.node));
        }
        Ok(())
    }

    fn accept(self: &Arc<Self>, s: SocketRef, peer: PeerId) {
        tracing::info!(sid = %s.id, node = peer.node, "a peer linked to this node");
        self.connected(&peer.node, 1);
        // socketioxide spawns the future a handler returns, and spawned tasks
        // may run out of order; the closure body itself runs in arrival order,
        // so the frame is handled there and the future is empty.
        let listener = self.clone();
        let from = peer.clone();
        s.on("relay", move |TryData(frame): TryData<Bytes>| {
            listener.receive(&from, frame.map_err(|e| e.to_string()));
            std::future::ready(())
        });
        // The same, from a publisher waiting for a peer to hold it (the
        // frame as text, see `link.rs`): once it is delivered here (and in
        // this node's history), say so.
        let listener = self.clone();
        let from = peer.clone();
        s.on(
            "relay_held",
            move |s: SocketRef, TryData(frame): TryData<serde_json::Value>| {
                let frame = match frame {
                    Ok(serde_json::Value::String(text)) => Ok(Bytes::from(text)),
                    Ok(_) => Err("relay_held carries its frame as a string".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                if let Some(id) = listener.receive(&from, frame)
                    && let Err(e) = s.emit("held", &id)
                {
                    tracing::debug!(node = from.node, error = %e, "could not confirm a held publication");
                }
                std::future::ready(())
            },
        );
        // A peer catching up on a third node's publications: answered from
        // this node's history, on the same socket.
        let listener = self.clone();
        let from = peer.clone();
        s.on(
            "catch_up",
            move |s: SocketRef, TryData(request): TryData<serde_json::Value>| {
                let text = match request {
                    Ok(serde_json::Value::String(text)) => Ok(text),
                    _ => Err(CatchUpError::NotText),
                };
                if let Some(answer) = listener.catch_up.answer(&from.node, text)
                    && let Err(e) = s.emit("caught_up", &answer)
                {
                    tracing::debug!(node = from.node, error = %e, "could not answer a catch-up request");
                }
                std::future::ready(())
            },
        );
        let listener = self.clone();
        let node = peer.node.clone();
        s.on_disconnect(move || {
            tracing::info!(node, "a peer unlinked from this node");
            // What it acked but had not relayed here yet is held by a peer
            // that confirmed it: ask them.
            if listener.connected(&node, -1) {
                listener.catch_up.want(&node);
            }
            std::future::ready(())
        });
        // What it published while unlinked from here (link down, queue
        // full) is asked of every peer, itself included.
        self.catch_up.linked(&peer.node, peer.boot, peer.started);
        // Last: a link sends nothing before `welcome`, so its frames always
        // find the handlers above in place.
        if let Err(e) = s.emit("welcome", &serde_json::json!({ "node": self.node })) {
            tracing::warn!(sid = %s.id, error = %e, "could not welcome a peer");
        }
    }

    /// Handles one relay frame; the id of the publication it carried when it
    /// was valid (delivered now, or already before).
    fn receive(&self, peer: &PeerId, frame: Result<Bytes, String>) -> Option<String> {
        let bytes = match frame {
            Ok(bytes) => bytes,
            Err(e) => {
                self.metrics.reject_frame("not_binary");
                tracing::warn!(
                    node = peer.node,
                    error = %e,
                    "dropped a relay event without a binary frame"
                );
                return None;
            }
        };
        let publication = match relay::decode(&bytes, self.max_frame) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.reject_frame(e.kind());
                tracing::warn!(node = peer.node, error = %e, "dropped a relay frame");
                return None;
            }
        };
        if publication.node != peer.node {
            self.metrics.reject_frame("origin_mismatch");
            tracing::warn!(
                node = peer.node,
                origin = publication.node,
                "dropped a relay frame carrying another node's publication: nodes relay only their own"
            );
            return None;
        }
        let id = publication.id.clone();
        self.catch_up.relayed(&peer.node, peer.boot, publication);
        Some(id)
    }

    /// Counts a socket of peer `node` in (`1`) or out (`-1`); true when the
    /// peer went from linked to unlinked.
    fn connected(&self, node: &str, change: isize) -> bool {
        let mut inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = inbound
            .entry(node.to_owned())
            .or_insert_with(|| InboundLink {
                sockets: 0,
                since: SystemTime::now(),
            });
        let was = entry.sockets > 0;
        entry.sockets = entry.sockets.saturating_add_signed(change);
        if was != (entry.sockets > 0) {
            entry.since = SystemTime::now();
        }
        was && entry.sockets == 0
    }

    /// Peers that linked into this node once and have been unlinked for
    /// less than `within`.
    pub(super) fn unlinked(&self, within: Duration) -> Vec<String> {
        let inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        inbound
            .iter()
            .filter(|(_, link)| {
                link.sockets == 0 && link.since.elapsed().is_ok_and(|down| down < within)
            })
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// The link from peer `node` into this node, if it ever connected.
    pub(super) fn inbound(&self, node: &str) -> Option<InboundStatus> {
        let inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = inbound.get(node)?;
        Some(InboundStatus {
            connected: entry.sockets > 0,
            since: millis(entry.since),
        })
    }

    /// Relayed publications received from peer `node` and delivered.
    pub(super) fn messages_in(&self, node: &str) -> u64 {
        self.catch_up.messages_in(node)
    }
}
