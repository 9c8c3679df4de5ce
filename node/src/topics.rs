//! The topic service: per-socket subscriptions, publishing and delivery.
//!
//! It owns the node's subscription state: which patterns each socket holds
//! (for `subscriptions`, the per-socket limit and cleanup on disconnect) and
//! the pattern index (`index.rs`) that finds, for a published topic, every socket to
//! reach. A message reaches each socket once, with all of that socket's
//! matching patterns, however many of them match.
//!
//! Publishing is where the cluster backend plugs in: a local publish is handed
//! to the [`Relay`] first, and a publication relayed by a peer is delivered
//! with [`TopicService::deliver_relayed`], which never relays again. The relay
//! answers through a continuation ([`Then`]), in the order publishes were
//! handed to it: the mesh at once (fire-and-forget), the Redis backend once
//! Redis took the publication or refused it. A refused publish is delivered
//! nowhere and acked `cluster_unavailable`. Answering in order, and delivering
//! inside the continuation, keeps one socket's publishes in the order sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use serde::Serialize;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use stickyio_shared::config::node::NodeConfig;
use stickyio_shared::message::Publication;
use stickyio_shared::topic::{self, Pattern, Topic};

use crate::index::PatternIndex;
use crate::metrics::Metrics;

/// Name of the event a socket receives for each matching publication.
pub const MESSAGE_EVENT: &str = "message";

/// What a [`Relay`] calls once it knows whether the cluster took a
/// publication: `Ok` to go ahead, or the reason it was refused.
pub type Then = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Where local publications go before local delivery: the cluster backend.
pub trait Relay: Send + Sync + 'static {
    /// Called once per local publish, in the order publishes arrive. Must not
    /// block: queue and return. Calls `then` exactly once, and for successive
    /// publications in the order they were handed over.
    fn relay(&self, publication: &Arc<Publication>, then: Then);
}

/// The error codes of the topic API, as sent in `{ok:false, error:{code}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidTopic,
    InvalidPayload,
    TooManySubscriptions,
    TooLarge,
    ClusterUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPayload,
        ErrorCode::TooManySubscriptions,
        ErrorCode::TooLarge,
        ErrorCode::ClusterUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
        }
    }
}

/// Why a topic API request was refused. `Display` is the message sent to the
/// client; [`TopicError::code`] is its machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Topic(#[from] topic::TopicError),
    #[error("{0}")]
    InvalidPayload(String),
    #[error(
        "this socket already holds {limit} subscriptions, the most allowed; unsubscribe from one first"
    )]
    TooManySubscriptions { limit: usize },
    #[error("content is {size} bytes as JSON; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the cluster cannot take this publish, so it was delivered nowhere: {0}")]
    ClusterUnavailable(String),
}

impl TopicError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TopicError::Topic(_) => ErrorCode::InvalidTopic,
            TopicError::InvalidPayload(_) => ErrorCode::InvalidPayload,
            TopicError::TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
            TopicError::TooLarge { .. } => ErrorCode::TooLarge,
            TopicError::ClusterUnavailable(_) => ErrorCode::ClusterUnavailable,
        }
    }
}

/// The `message` event as a socket receives it.
#[derive(Serialize)]
struct Delivery<'a> {
    #[serde(flatten)]
    publication: &'a Publication,
    patterns: &'a [&'a str],
}

struct Subscriber {
    socket: SocketRef,
    /// In subscription order, for the `subscriptions` ack.
    patterns: Vec<Pattern>,
}

#[derive(Default)]
struct Subscriptions {
    index: PatternIndex<Sid>,
    sockets: AHashMap<Sid, Subscriber>,
}

/// Subscriptions and publishing on one node. Shared as `Arc<TopicService>`.
pub struct TopicService {
    node: Arc<str>,
    max_subscriptions: usize,
    max_message_bytes: usize,
    /// This incarnation of the node: makes ids unique across restarts, and
    /// tells apart two processes that (wrongly) share one name.
    boot: u64,
    sequence: AtomicU64,
    subscriptions: RwLock<Subscriptions>,
    relay: OnceLock<Arc<dyn Relay>>,
    metrics: Arc<Metrics>,
}

impl TopicService {
    pub fn new(config: &NodeConfig, metrics: Arc<Metrics>) -> TopicService {
        TopicService {
            node: Arc::from(config.name.as_str()),
            max_subscriptions: config.max_subscriptions,
            max_message_bytes: config.max_message_bytes,
            boot: rand::random(),
            sequence: AtomicU64::new(0),
            subscriptions: RwLock::default(),
            relay: OnceLock::new(),
            metrics,
        }
    }

    /// Adds `pattern` to the socket's subscriptions. Subscribing again to a
    /// pattern already held changes nothing and succeeds.
    pub fn subscribe(&self, socket: &SocketRef, pattern: &str) -> Result<Pattern, TopicError> {
        let pattern = Pattern::parse(pattern)?;
        let mut state = self.write();
        // Checked under the lock: a socket is marked disconnected before its
        // disconnect handler runs, so a late subscribe cannot outlive cleanup.
        if !socket.connected() {
            return Ok(pattern);
        }
        let Subscriptions { index, sockets } = &mut *state;
        let subscriber = sockets.entry(socket.id).or_insert_with(|| Subscriber {
            socket: socket.clone(),
            patterns: Vec::new(),
        });
        if subscriber.patterns.contains(&pattern) {
            return Ok(pattern);
        }
        if subscriber.patterns.len() >= self.max_subscriptions {
            return Err(TopicError::TooManySubscriptions {
                limit: self.max_subscriptions,
            });
        }
        subscriber.patterns.push(pattern.clone());
        index.insert(&pattern, socket.id);
        self.metrics.subscriptions.inc();
        Ok(pattern)
    }

    /// Removes `pattern` from the socket's subscriptions; succeeds whether or
    /// not it was held.
    pub fn unsubscribe(&self, sid: Sid, pattern: &str) -> Result<Pattern, TopicError> {
        let pattern = Pattern::parse(pattern)?;
        let mut state = self.write();
        let Subscriptions { index, sockets } = &mut *state;
        let Some(subscriber) = sockets.get_mut(&sid) else {
            return Ok(pattern);
        };
        let Some(at) = subscriber.patterns.iter().position(|p| *p == pattern) else {
            return Ok(pattern);
        };
        subscriber.patterns.remove(at);
        if subscriber.patterns.is_empty() {
            sockets.remove(&sid);
        }
        index.remove(&pattern, sid);
        self.metrics.subscriptions.dec();
        Ok(pattern)
    }

    /// The socket's patterns, in the order they were subscribed.
    pub fn subscriptions(&self, sid: Sid) -> Vec<String> {
        self.read().sockets.get(&sid).map_or_else(Vec::new, |s| {
            s.patterns.iter().map(|p| p.to_string()).collect()
        })
    }

    /// Drops every subscription of a socket that went away.
    pub fn remove_socket(&self, sid: Sid) {
        let mut state = self.write();
        let Subscriptions { index, sockets } = &mut *state;
        let Some(subscriber) = sockets.remove(&sid) else {
            return;
        };
        for pattern in &subscriber.patterns {
            index.remove(pattern, sid);
        }
        self.metrics
            .subscriptions
            .dec_by(subscriber.patterns.len() as i64);
    }

    /// This node's incarnation, part of every id it mints.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Validates and builds the [`Publication`], hands it to the relay (if
    /// any) and, unless the relay refuses it, delivers it locally; then calls
    /// `done` with the outcome. Without a relay, or with the mesh, all of it
    /// happens before this returns; with Redis, `done` runs once Redis answers,
    /// in the order publishes were made.
    pub fn publish(
        self: &Arc<Self>,
        sender_id: &str,
        topic: &str,
        content: serde_json::Value,
        done: impl FnOnce(Result<Arc<Publication>, TopicError>) + Send + 'static,
    ) {
        let (publication, topic) = match self.prepare(sender_id, topic, content) {
            Ok(prepared) => prepared,
            Err(e) => return done(Err(e)),
        };
        let Some(relay) = self.relay.get() else {
            self.deliver_published(&publication, &topic);
            return done(Ok(publication));
        };
        let service = self.clone();
        let handed = publication.clone();
        relay.relay(
            &handed,
            Box::new(move |taken| match taken {
                Ok(()) => {
                    service.deliver_published(&publication, &topic);
                    done(Ok(publication));
                }
                Err(why) => done(Err(TopicError::ClusterUnavailable(why))),
            }),
        );
    }

    fn prepare(
        &self,
        sender_id: &str,
        topic: &str,
        content: serde_json::Value,
    ) -> Result<(Arc<Publication>, Topic), TopicError> {
        let topic = Topic::parse(topic)?;
        let size = json_size(&content);
        if size > self.max_message_bytes {
            return Err(TopicError::TooLarge {
                size,
                limit: self.max_message_bytes,
            });
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let publication = Arc::new(Publication {
            id: format!("{}-{}-{sequence}", self.node, self.boot),
            topic: topic.to_string(),
            content,
            sender_id: sender_id.to_owned(),
            created_at: now_millis(),
            node: self.node.to_string(),
        });
        Ok((publication, topic))
    }

    fn deliver_published(&self, publication: &Publication, topic: &Topic) {
        self.metrics.published.inc();
        self.deliver(publication, topic);
    }

    /// Delivers a publication that came from a peer to local sockets only
    /// (never relays it). Returns the number of sockets reached.
    pub fn deliver_relayed(&self, publication: &Publication) -> usize {
        match Topic::parse(&publication.topic) {
            Ok(topic) => self.deliver(publication, &topic),
            Err(e) => {
                tracing::warn!(id = %publication.id, node = %publication.node, "relayed publication dropped: {e}");
                0
            }
        }
    }

    /// Sets where local publications are relayed. Called once, by the backend;
    /// a second relay is refused with a warning rather than replacing the first.
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        if self.relay.set(relay).is_err() {
            tracing::warn!("a relay is already set; ignoring another one");
        }
    }

    /// Emits the publication to each matching socket once. Returns the
    /// number of sockets it was handed to.
    fn deliver(&self, publication: &Publication, topic: &Topic) -> usize {
        let state = self.read();
        let mut reached = 0;
        for group in state.index.matches(topic) {
            let patterns: Vec<&str> = group.patterns.iter().map(|p| &**p).collect();
            // Sockets with the same matching patterns get byte-identical
            // events: serialize once per group, so each socket costs a copy.
            let delivery = match serde_json::value::to_raw_value(&Delivery {
                publication,
                patterns: &patterns,
            }) {
                Ok(json) => json,
                Err(e) => {
                    tracing::warn!(id = %publication.id, "publication not serializable, delivered nowhere: {e}");
                    self.metrics.dropped.inc_by(group.keys.len() as u64);
                    continue;
                }
            };
            for sid in group.keys {
                let Some(subscriber) = state.sockets.get(&sid) else {
                    continue;
                };
                match subscriber.socket.emit(MESSAGE_EVENT, &*delivery) {
                    Ok(()) => reached += 1,
                    Err(e) => {
                        tracing::debug!(%sid, id = %publication.id, "delivery dropped: {e}");
                        self.metrics.dropped.inc();
                    }
                }
            }
        }
        self.metrics.delivered.inc_by(reached as u64);
        reached
    }

    fn read(&self) -> RwLockReadGuard<'_, Subscriptions> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the node, so carry on.
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Subscriptions> {
        self.subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes of `value` as compact JSON, without building the string.
fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail.
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_size_counts_compact_json_bytes() {
        assert_eq!(json_size(&serde_json::json!("héllo")), "\"héllo\"".len());
        assert_eq!(
            json_size(&serde_json::json!({"a": [1, 2]})),
            r#"{"a":[1,2]}"#.len()
        );
    }

    #[test]
    fn error_codes_are_the_documented_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
