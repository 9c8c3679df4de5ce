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
//!
//! History and resume: every delivered message is recorded in the node's
//! `History` and carries the cursor after it. Recording and emitting happen
//! under one lock, so each socket gets messages in the order of the history
//! and the last cursor it holds covers all it got. A `subscribe` with
//! `since` replays, under the subscriptions' write lock (no delivery runs
//! meanwhile), what the history holds after the cursor, then goes live:
//! no gap and no duplicate at the seam. The cursor also becomes the
//! socket's floor: a message of the resumed pattern it covers that reaches
//! this node late (this node lagged the one that minted it) is not
//! delivered again. Over Redis the floor is the stream read's end. Either
//! way it covers only what the resume replayed: a message of a pattern the
//! socket already held still comes live, though it may reach this node
//! after the resume, and its cursor claims no more than this node's
//! position (the client keeps it for that pattern).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use serde::Serialize;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use stickyio_shared::config::node::{Backend, NodeConfig, PublishAck};
use stickyio_shared::config::{Env, sources};
use stickyio_shared::message::Publication;
use stickyio_shared::topic::{self, Pattern, Topic};

use crate::cursor::{Cursor, CursorError, CursorKey, Frontier, Stamp};
use crate::history::{History, Position, Wanted};
use crate::index::PatternIndex;
use crate::metrics::Metrics;

/// Name of the event a socket receives for each matching publication.
pub const MESSAGE_EVENT: &str = "message";

/// What a [`Relay`] calls once it knows what the cluster did with a
/// publication.
pub type Then = Box<dyn FnOnce(Handed) + Send>;

/// What the cluster did with a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// Taken (and, when asked, held by another node or Redis): go ahead.
    Taken,
    /// Taken, and already delivered here by the backend (Redis delivers a
    /// node's own publications in the stream's order): only ack.
    Delivered,
    /// Refused, and delivered nowhere: deliver nowhere here either.
    Refused(String),
    /// Relayed, but no other node confirmed holding it in time: it is
    /// delivered, but may be lost if this node fails.
    Unconfirmed(String),
}

/// Where local publications go before local delivery: the cluster backend.
pub trait Relay: Send + Sync + 'static {
    /// Called once per local publish, in the order publishes arrive. Must not
    /// block: queue and return. Calls `then` exactly once, and for successive
    /// publications in the order they were handed over; with
    /// [`PublishAck::Replicated`], only once another node or Redis holds it.
    fn relay(&self, publication: &Arc<Publication>, ack: PublishAck, then: Then);
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
    InvalidCursor,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPayload,
        ErrorCode::TooManySubscriptions,
        ErrorCode::TooLarge,
        ErrorCode::ClusterUnavailable,
        ErrorCode::InvalidCursor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::InvalidCursor => "invalid_cursor",
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
    #[error("{0}")]
    NotReplicated(String),
    #[error("`since` is not a usable cursor: {0}")]
    InvalidCursor(#[from] CursorError),
}

impl TopicError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TopicError::Topic(_) => ErrorCode::InvalidTopic,
            TopicError::InvalidPayload(_) => ErrorCode::InvalidPayload,
            TopicError::TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
            TopicError::TooLarge { .. } => ErrorCode::TooLarge,
            TopicError::ClusterUnavailable(_) | TopicError::NotReplicated(_) => {
                ErrorCode::ClusterUnavailable
            }
            TopicError::InvalidCursor(_) => ErrorCode::InvalidCursor,
        }
    }
}

/// The `message` event as a socket receives it.
#[derive(Serialize)]
struct Delivery<'a> {
    #[serde(flatten)]
    publication: &'a Publication,
    patterns: &'a [&'a str],
    /// The position just after this message; absent with history off.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
    /// Only on messages replayed by a resume.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

struct Subscriber {
    socket: SocketRef,
    /// In subscription order, for the `subscriptions` ack.
    patterns: Vec<Pattern>,
    /// Set while the socket resumed from a position this node has not
    /// delivered past: messages at or below it were delivered already (by
    /// the node that minted the cursor, or by the replay) and are skipped;
    /// the flag keeps the common case lock-free.
    has_floor: AtomicBool,
    floor: Mutex<Option<Floor>>,
}

/// Below what a resumed socket has already had, per resume.
enum Floor {
    /// Mesh: up to the resumed cursor, per origin incarnation.
    Frontier(Vec<Covered<Frontier>>),
    /// Redis: up to the position in the stream the resume read to, whose
    /// order every node delivers in.
    Stream(Vec<Covered<Stamp>>),
}

/// What one resume covered: up to `below`, the messages of `pattern` that
/// no pattern the socket `held` then matches. Those it held still arrive
/// live: the resume did not replay them, and this node may get ones below
/// `below` after the resume (its origin's relay lagged, or Redis was still
/// handing them over).
struct Covered<B> {
    below: B,
    pattern: Pattern,
    held: Vec<Pattern>,
}

impl<B> Covered<B> {
    /// Whether the resume replayed (or the socket had) a message of `topic`.
    fn replays(&self, topic: &Topic) -> bool {
        replays(&self.pattern, &self.held, topic)
    }
}

/// What to do with one live message for a socket with a floor.
enum Pass {
    Deliver,
    Skip,
    /// Deliver with this cursor: the node's frontier, the floor merged in.
    DeliverWith(Frontier),
}

impl Subscriber {
    fn new(socket: &SocketRef) -> Subscriber {
        Subscriber {
            socket: socket.clone(),
            patterns: Vec::new(),
            has_floor: AtomicBool::new(false),
            floor: Mutex::new(None),
        }
    }

    fn set_floor(&self, floor: Floor) {
        let mut current = lock(&self.floor);
        match (current.as_mut(), floor) {
            (Some(Floor::Frontier(covered)), Floor::Frontier(new)) => covered.extend(new),
            (Some(Floor::Stream(covered)), Floor::Stream(new)) => covered.extend(new),
            (_, floor) => *current = Some(floor),
        }
        self.has_floor.store(true, Ordering::Release);
    }

    /// For a socket with a floor: whether this message (of `topic`,
    /// matching the socket's `patterns`) is below it. The floor is dropped
    /// once the node delivers past it.
    fn through_floor(
        &self,
        position: Option<&Position>,
        stamp: Option<Stamp>,
        frontier: Option<&Frontier>,
        topic: &Topic,
        patterns: &[&str],
    ) -> Pass {
        let mut floor = lock(&self.floor);
        let below = match floor.as_mut() {
            None => return Pass::Deliver,
            Some(Floor::Stream(covered)) => below_stream(covered, stamp, topic),
            Some(Floor::Frontier(covered)) => {
                below_frontier(covered, position, frontier, topic, patterns)
            }
        };
        below.unwrap_or_else(|| {
            *floor = None;
            self.has_floor.store(false, Ordering::Release);
            Pass::Deliver
        })
    }
}

/// A live message against what stream resumes covered; `None` once past
/// them all. A resume's read is the stream's order: nothing later is below.
fn below_stream(
    covered: &mut Vec<Covered<Stamp>>,
    stamp: Option<Stamp>,
    topic: &Topic,
) -> Option<Pass> {
    let stamp = stamp?;
    covered.retain(|c| stamp <= c.below);
    if covered.iter().any(|c| c.replays(topic)) {
        return Some(Pass::Skip);
    }
    // Below a read, but of a pattern held: it is live.
    (!covered.is_empty()).then_some(Pass::Deliver)
}

/// A live message against what mesh resumes covered; `None` once this
/// node's `frontier` (with the message) is past every resumed cursor.
fn below_frontier(
    covered: &mut Vec<Covered<Frontier>>,
    position: Option<&Position>,
    frontier: Option<&Frontier>,
    topic: &Topic,
    patterns: &[&str],
) -> Option<Pass> {
    let below = |c: &Covered<Frontier>| position.is_some_and(|p| c.below.covers(p.boot, p.seq));
    if covered.iter().any(|c| below(c) && c.replays(topic)) {
        return Some(Pass::Skip);
    }
    let frontier = frontier?;
    covered.retain(|c| !frontier.dominates(&c.below));
    if covered.is_empty() {
        return None;
    }
    // A client keeps a message's cursor for the patterns it matched: it
    // may claim a resumed cursor only for that resume's pattern alone. Of
    // another, the socket may not have had all below it yet.
    Some(
        match covered.iter().find(|c| patterns == [c.pattern.as_str()]) {
            Some(resumed) => {
                let mut merged = frontier.clone();
                merged.merge(&resumed.below);
                Pass::DeliverWith(merged)
            }
            None => Pass::Deliver,
        },
    )
}

/// Where a Redis-backed node's resumes read the stream: the backend, which
/// answers in its delivery order (see [`TopicService::subscribe_since`]).
pub trait Resumer: Send + Sync + 'static {
    /// Reads the entries after `since` (at most `limit`) and calls `then`
    /// with them, or with `None` when the stream no longer holds `since`
    /// (trimmed, or Redis restarted) or cannot be read; between two
    /// deliveries, so no live message falls between replay and subscription.
    fn resume(&self, since: Stamp, limit: usize, then: ResumeThen);
}

/// What a [`Resumer`] calls with the entries after the cursor.
pub type ResumeThen = Box<dyn FnOnce(Option<Vec<(Stamp, Publication)>>) + Send>;

/// What a `subscribe` with `since` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Every missed message was replayed: this many.
    Recovered(usize),
    /// The history does not reach back; live from now. Why, as the ack's
    /// `reason`: `too_old` (forgotten, by size or ttl, or not in the Redis
    /// stream any more), `restarted` (this node started after the cursor
    /// was made: what came before is not here), `history_off`.
    NotRecovered(&'static str),
}

/// The outcome of a `subscribe`: the pattern, what a resume found (`None`
/// without `since`), and the position now (the cursor the ack carries, so a
/// socket that gets no message before it fails can still resume; `None`
/// with history off, or over Redis before this node delivered anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub pattern: Pattern,
    pub resumed: Option<Resumed>,
    pub cursor: Option<String>,
}

#[derive(Default)]
struct Subscriptions {
    index: PatternIndex<Sid>,
    sockets: AHashMap<Sid, Subscriber>,
    /// Sockets recently removed on disconnect, so a subscribe still in
    /// flight for one cannot outlive its cleanup. `socket.connected()` does
    /// not tell: socketioxide sends the connect packet before it marks the
    /// socket connected, so a client's first subscribe may see `false`.
    gone: Gone,
}

/// A bounded set of recently gone sockets, the oldest forgotten first: a
/// late event arrives within moments of its socket's disconnect.
#[derive(Default)]
struct Gone {
    set: ahash::AHashSet<Sid>,
    order: std::collections::VecDeque<Sid>,
}

/// Gone sockets remembered; far more than disconnect at once.
const GONE_LIMIT: usize = 65_536;

impl Gone {
    fn insert(&mut self, sid: Sid) {
        while self.order.len() >= GONE_LIMIT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        if self.set.insert(sid) {
            self.order.push_back(sid);
        }
    }

    fn contains(&self, sid: &Sid) -> bool {
        self.set.contains(sid)
    }
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
    /// Held from minting a publication's sequence to handing it over.
    publish_order: Mutex<()>,
    subscriptions: RwLock<Subscriptions>,
    relay: OnceLock<Arc<dyn Relay>>,
    metrics: Arc<Metrics>,
    /// `None` with `history.size = 0`. Locked while a message is recorded
    /// and emitted, so sockets see history order.
    history: Option<Mutex<History>>,
    /// The pool's key, once the cluster backend joined one ([`TopicService::join_pool`]).
    pool: OnceLock<CursorKey>,
    /// The key of `node.toml`'s own cluster settings, until then.
    own: CursorKey,
    publish_ack: PublishAck,
    history_size: usize,
    history_ttl: std::time::Duration,
    /// With the Redis backend the history is its stream: cursors carry
    /// stamps, and resumes go to the [`Resumer`].
    streamed: AtomicBool,
    resumer: OnceLock<Arc<dyn Resumer>>,
    /// With the stream: the last entry delivered here, the position a
    /// plain `subscribe` acks.
    last_stamp: Mutex<Option<Stamp>>,
    /// When this node started, in ms since the Unix epoch: a peer's
    /// catch-up never hands it what came before.
    started_at: u64,
}

impl TopicService {
    pub fn new(config: &NodeConfig, metrics: Arc<Metrics>) -> TopicService {
        let started_at = now_millis();
        let history = (config.history.size > 0).then(|| {
            Mutex::new(History::new(
                config.history.size,
                config.history.ttl.get(),
                started_at,
            ))
        });
        TopicService {
            node: Arc::from(config.name.as_str()),
            max_subscriptions: config.max_subscriptions,
            max_message_bytes: config.max_message_bytes,
            boot: rand::random(),
            sequence: AtomicU64::new(0),
            publish_order: Mutex::new(()),
            subscriptions: RwLock::default(),
            relay: OnceLock::new(),
            metrics,
            history,
            pool: OnceLock::new(),
            own: CursorKey::new(pool_secret(config).as_bytes()),
            publish_ack: config.publish_ack,
            history_size: config.history.size,
            history_ttl: config.history.ttl.get(),
            streamed: AtomicBool::new(false),
            resumer: OnceLock::new(),
            last_stamp: Mutex::new(None),
            started_at,
        }
    }

    /// Adds `pattern` to the socket's subscriptions. Subscribing again to a
    /// pattern already held changes nothing and succeeds.
    pub fn subscribe(&self, socket: &SocketRef, pattern: &str) -> Result<Subscribed, TopicError> {
        let pattern = Pattern::parse(pattern)?;
        let mut state = self.write();
        if Self::add(&mut state, socket, &pattern, self.max_subscriptions)? {
            self.metrics.subscriptions.inc();
        }
        // Under the write lock no delivery runs: every message after this
        // position reaches the socket live.
        let cursor = self.position_now();
        Ok(Subscribed {
            pattern,
            resumed: None,
            cursor,
        })
    }

    /// The cursor of this node's position now: its history's frontier, or
    /// over Redis the last stream entry it delivered. Called under the
    /// subscriptions' write lock.
    fn position_now(&self) -> Option<String> {
        if self.streamed.load(Ordering::Acquire) {
            return (*lock(&self.last_stamp)).map(|stamp| self.mint_stamp(stamp));
        }
        let history = lock(self.history.as_ref()?);
        Some(self.mint(history.frontier()))
    }

    /// Like [`TopicService::subscribe`], resuming from cursor `since`:
    /// first every message after it that matches `pattern` (and none of the
    /// socket's other patterns, whose messages it already has), marked
    /// `replayed`, then live ones; `done` gets the outcome. From the node's
    /// own history that happens before this returns; from the Redis stream,
    /// once the backend read it, in its delivery order.
    pub fn subscribe_since(
        self: &Arc<Self>,
        socket: &SocketRef,
        pattern: &str,
        since: &str,
        done: impl FnOnce(Result<Subscribed, TopicError>) + Send + 'static,
    ) {
        let parsed = Pattern::parse(pattern)
            .map_err(TopicError::from)
            .and_then(|pattern| Ok((pattern, self.cursors().decode(since)?)));
        let (pattern, cursor) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return done(Err(e)),
        };
        if !self.streamed.load(Ordering::Acquire) {
            return done(self.resume_locally(socket, pattern, &cursor));
        }
        let too_old =
            now_millis().saturating_sub(cursor.minted_at) >= self.history_ttl.as_millis() as u64;
        match (cursor.stamp, self.resumer.get()) {
            (Some(since), Some(resumer)) if !too_old => {
                let service = self.clone();
                let socket = socket.clone();
                let limit = self.history_size;
                resumer.resume(
                    since,
                    limit,
                    Box::new(move |entries| {
                        done(service.finish_stream_resume(&socket, pattern, since, entries));
                    }),
                );
            }
            // Too old, or a cursor of the mesh's kind: live from now.
            _ => done(self.finish_stream_resume(socket, pattern, Stamp { ms: 0, seq: 0 }, None)),
        }
    }

    fn resume_locally(
        &self,
        socket: &SocketRef,
        pattern: Pattern,
        cursor: &Cursor,
    ) -> Result<Subscribed, TopicError> {
        let mut state = self.write();
        // Held across the replay: no delivery runs (they need the read
        // lock), so what the history holds now is exactly what came before.
        let held = Self::held(&state, socket);
        let done = |resumed, cursor| Subscribed {
            pattern: pattern.clone(),
            resumed: Some(resumed),
            cursor,
        };
        if !Self::add(&mut state, socket, &pattern, self.max_subscriptions)? {
            return Ok(done(Resumed::Recovered(0), self.position_now()));
        }
        self.metrics.subscriptions.inc();
        let Some(history) = &self.history else {
            return Ok(done(Resumed::NotRecovered("history_off"), None));
        };
        let mut history = lock(history);
        let replay = history.since(cursor, Instant::now(), now_millis(), |p| {
            wanted(&pattern, &held, p)
        });
        let replay = match replay {
            Ok(replay) => replay,
            Err(why) => {
                tracing::debug!(sid = %socket.id, reason = why.as_str(), "resume not recovered");
                let now = self.mint(history.frontier());
                return Ok(done(Resumed::NotRecovered(why.as_str()), Some(now)));
            }
        };
        let Some(subscriber) = state.sockets.get(&socket.id) else {
            return Ok(done(Resumed::NotRecovered("too_old"), None));
        };
        for (publication, after) in &replay {
            let cursor = self.mint(after);
            self.replay(subscriber, publication, &cursor);
        }
        // What the cursor had seen that this node has not delivered yet is
        // the floor, for this pattern only. The position now (the ack's
        // cursor, kept for this pattern) is this node's and the cursor's.
        let mut now = history.frontier().clone();
        if !now.dominates(&cursor.frontier) {
            now.merge(&cursor.frontier);
            subscriber.set_floor(Floor::Frontier(vec![Covered {
                below: cursor.frontier.clone(),
                pattern: pattern.clone(),
                held,
            }]));
        }
        Ok(done(
            Resumed::Recovered(replay.len()),
            Some(self.mint(&now)),
        ))
    }

    /// Subscribes and replays `entries` (the stream after `since`, `None`
    /// when it does not reach back); runs in the backend's delivery order.
    fn finish_stream_resume(
        &self,
        socket: &SocketRef,
        pattern: Pattern,
        since: Stamp,
        entries: Option<Vec<(Stamp, Publication)>>,
    ) -> Result<Subscribed, TopicError> {
        let mut state = self.write();
        let held = Self::held(&state, socket);
        let done = |resumed, cursor| Subscribed {
            pattern: pattern.clone(),
            resumed: Some(resumed),
            cursor,
        };
        if !Self::add(&mut state, socket, &pattern, self.max_subscriptions)? {
            return Ok(done(Resumed::Recovered(0), self.position_now()));
        }
        self.metrics.subscriptions.inc();
        let (Some(entries), Some(subscriber)) = (entries, state.sockets.get(&socket.id)) else {
            return Ok(done(Resumed::NotRecovered("too_old"), self.position_now()));
        };
        let mut last = since;
        let mut replayed = 0;
        for (stamp, publication) in entries {
            last = last.max(stamp);
            if wanted(&pattern, &held, &publication) {
                let cursor = self.mint_stamp(stamp);
                self.replay(subscriber, &publication, &cursor);
                replayed += 1;
            }
        }
        // Live messages up to the last entry read were just replayed, but
        // for those of the patterns it held.
        subscriber.set_floor(Floor::Stream(vec![Covered {
            below: last,
            pattern: pattern.clone(),
            held,
        }]));
        let now = (*lock(&self.last_stamp)).map_or(last, |delivered| delivered.max(last));
        Ok(done(
            Resumed::Recovered(replayed),
            Some(self.mint_stamp(now)),
        ))
    }

    /// The patterns `socket` holds before this subscribe.
    fn held(state: &Subscriptions, socket: &SocketRef) -> Vec<Pattern> {
        state
            .sockets
            .get(&socket.id)
            .map(|s| s.patterns.clone())
            .unwrap_or_default()
    }

    /// Emits a replayed message with every pattern of the socket it matches.
    fn replay(&self, subscriber: &Subscriber, publication: &Publication, cursor: &str) {
        let matching: Vec<&str> = Topic::parse(&publication.topic).map_or_else(
            |_| Vec::new(),
            |topic| {
                subscriber
                    .patterns
                    .iter()
                    .filter(|p| p.matches(&topic))
                    .map(|p| p.as_str())
                    .collect()
            },
        );
        self.emit(subscriber, publication, &matching, Some(cursor), true);
    }

    /// Uses the Redis stream as the history: called by the Redis backend as
    /// it attaches (with history on).
    pub fn set_resumer(&self, resumer: Arc<dyn Resumer>) {
        if self.resumer.set(resumer).is_err() {
            tracing::warn!("a resumer is already set; ignoring another one");
            return;
        }
        self.streamed
            .store(self.history_size > 0, Ordering::Release);
    }

    /// Adds `pattern` for `socket` under the write lock; false when the
    /// socket already held it (or is gone).
    fn add(
        state: &mut Subscriptions,
        socket: &SocketRef,
        pattern: &Pattern,
        limit: usize,
    ) -> Result<bool, TopicError> {
        // Checked under the lock, against the sockets whose disconnect
        // cleanup already ran: a late subscribe cannot outlive it.
        if state.gone.contains(&socket.id) {
            return Ok(false);
        }
        let Subscriptions { index, sockets, .. } = state;
        let subscriber = sockets
            .entry(socket.id)
            .or_insert_with(|| Subscriber::new(socket));
        if subscriber.patterns.contains(pattern) {
            return Ok(false);
        }
        if subscriber.patterns.len() >= limit {
            return Err(TopicError::TooManySubscriptions { limit });
        }
        subscriber.patterns.push(pattern.clone());
        index.insert(pattern, socket.id);
        Ok(true)
    }

    /// Removes `pattern` from the socket's subscriptions; succeeds whether or
    /// not it was held.
    pub fn unsubscribe(&self, sid: Sid, pattern: &str) -> Result<Pattern, TopicError> {
        let pattern = Pattern::parse(pattern)?;
        let mut state = self.write();
        let Subscriptions { index, sockets, .. } = &mut *state;
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
        let Subscriptions {
            index,
            sockets,
            gone,
        } = &mut *state;
        gone.insert(sid);
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
    /// `done` with the outcome. `ack` (else the node's `publish_ack`) says
    /// whether `done` waits until another node or Redis holds it. Without a
    /// relay, or with the mesh and local acks, all of it happens before this
    /// returns; otherwise `done` runs once the cluster answers, in the order
    /// publishes were made.
    pub fn publish(
        self: &Arc<Self>,
        sender_id: &str,
        topic: &str,
        content: serde_json::Value,
        ack: Option<PublishAck>,
        done: impl FnOnce(Result<Arc<Publication>, TopicError>) + Send + 'static,
    ) {
        // Sequence numbers are handed out and publications handed to the
        // relay in one step: a peer then receives this node's publications
        // in sequence order, which is what a cursor's "last sequence seen"
        // relies on (two sockets publishing at once could otherwise swap).
        let _order = lock(&self.publish_order);
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
            ack.unwrap_or(self.publish_ack),
            Box::new(move |outcome| match outcome {
                Handed::Taken => {
                    service.deliver_published(&publication, &topic);
                    done(Ok(publication));
                }
                Handed::Delivered => {
                    service.metrics.published.inc();
                    done(Ok(publication));
                }
                Handed::Unconfirmed(why) => {
                    service.deliver_published(&publication, &topic);
                    done(Err(TopicError::NotReplicated(why)));
                }
                Handed::Refused(why) => done(Err(TopicError::ClusterUnavailable(why))),
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

    fn deliver_published(&self, publication: &Arc<Publication>, topic: &Topic) {
        self.metrics.published.inc();
        self.deliver(publication, topic, None);
    }

    /// Delivers a publication that came through the cluster to local
    /// sockets only (never relays it); `stamp` is its place in the Redis
    /// stream, if that is the history. Returns the number of sockets reached.
    pub fn deliver_relayed(&self, publication: &Arc<Publication>, stamp: Option<Stamp>) -> usize {
        match Topic::parse(&publication.topic) {
            Ok(topic) => self.deliver(publication, &topic, stamp),
            Err(e) => {
                tracing::warn!(id = %publication.id, node = %publication.node, error = %e, "relayed publication dropped");
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

    /// Records the publication in the history and emits it to each matching
    /// socket once, with the cursor after it. Returns the number of sockets
    /// it was handed to.
    fn deliver(
        &self,
        publication: &Arc<Publication>,
        topic: &Topic,
        stamp: Option<Stamp>,
    ) -> usize {
        let state = self.read();
        let position = Position::of(publication);
        let streamed = self.streamed.load(Ordering::Acquire);
        // Held while emitting: two deliveries never interleave, so a socket
        // never gets a message after one whose cursor already covers it.
        // (With the stream, the backend delivers from one task, in order.)
        let mut history = if streamed {
            None
        } else {
            self.history.as_ref().map(lock)
        };
        let cursor = match history.as_deref_mut() {
            Some(history) => {
                if let Some(position) = &position {
                    history.record(publication.clone(), position.clone(), Instant::now());
                }
                Some(self.mint(history.frontier()))
            }
            None => stamp.filter(|_| streamed).map(|stamp| {
                *lock(&self.last_stamp) = Some(stamp);
                self.mint_stamp(stamp)
            }),
        };
        let frontier = history.as_deref().map(History::frontier);
        let mut reached = 0;
        for group in state.index.matches(topic) {
            let patterns: Vec<&str> = group.patterns.iter().map(|p| &**p).collect();
            // Sockets with the same matching patterns get byte-identical
            // events: serialize once per group, so each socket costs a copy.
            let delivery = match serde_json::value::to_raw_value(&Delivery {
                publication,
                patterns: &patterns,
                cursor: cursor.as_deref(),
                replayed: false,
            }) {
                Ok(json) => json,
                Err(e) => {
                    tracing::warn!(id = %publication.id, error = %e, "publication not serializable, delivered nowhere");
                    self.metrics.dropped.inc_by(group.keys.len() as u64);
                    continue;
                }
            };
            for sid in group.keys {
                let Some(subscriber) = state.sockets.get(&sid) else {
                    continue;
                };
                if subscriber.has_floor.load(Ordering::Acquire) {
                    match subscriber.through_floor(
                        position.as_ref(),
                        stamp,
                        frontier,
                        topic,
                        &patterns,
                    ) {
                        Pass::Skip => continue,
                        Pass::DeliverWith(merged) => {
                            let cursor = self.mint(&merged);
                            if self.emit(subscriber, publication, &patterns, Some(&cursor), false) {
                                reached += 1;
                            }
                            continue;
                        }
                        Pass::Deliver => {}
                    }
                }
                match subscriber.socket.emit(MESSAGE_EVENT, &*delivery) {
                    Ok(()) => reached += 1,
                    Err(e) => {
                        tracing::debug!(%sid, id = %publication.id, error = %e, "delivery dropped");
                        self.metrics.dropped.inc();
                    }
                }
            }
        }
        self.metrics.delivered.inc_by(reached as u64);
        reached
    }

    /// Emits one message to one socket, serialized for it alone (replays,
    /// and sockets whose cursor differs from the group's).
    fn emit(
        &self,
        subscriber: &Subscriber,
        publication: &Publication,
        patterns: &[&str],
        cursor: Option<&str>,
        replayed: bool,
    ) -> bool {
        let sent = subscriber.socket.emit(
            MESSAGE_EVENT,
            &Delivery {
                publication,
                patterns,
                cursor,
                replayed,
            },
        );
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(sid = %subscriber.socket.id, id = %publication.id, error = %e, "delivery dropped");
                self.metrics.dropped.inc();
                false
            }
        }
    }

    /// Signs cursors with the key of the pool `config` describes. Called by
    /// the cluster backend as it attaches, with the cluster settings it
    /// joins with (tests bind nodes before they know their peers).
    pub fn join_pool(&self, config: &NodeConfig) {
        if self
            .pool
            .set(CursorKey::new(pool_secret(config).as_bytes()))
            .is_err()
        {
            tracing::warn!("a pool is already joined; ignoring another one");
        }
    }

    fn cursors(&self) -> &CursorKey {
        self.pool.get().unwrap_or(&self.own)
    }

    /// The cursor of `frontier`, minted now.
    fn mint(&self, frontier: &Frontier) -> String {
        self.cursors().encode(now_millis(), frontier, None)
    }

    /// The cursor of a stream entry, minted now.
    fn mint_stamp(&self, stamp: Stamp) -> String {
        self.cursors()
            .encode(now_millis(), &Frontier::default(), Some(stamp))
    }

    /// When this node started, in ms since the Unix epoch.
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// For a peer catching up (mesh): the held messages it wants; none
    /// with history off.
    pub fn held_of(&self, wanted: &Wanted<'_>) -> Vec<Arc<Publication>> {
        self.history.as_ref().map_or_else(Vec::new, |history| {
            lock(history).of_origin(wanted, Instant::now())
        })
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

/// Whether a resume of `pattern` replays `publication`: see [`replays`].
fn wanted(pattern: &Pattern, held: &[Pattern], publication: &Publication) -> bool {
    Topic::parse(&publication.topic).is_ok_and(|topic| replays(pattern, held, &topic))
}

/// Whether a resume of `pattern` replays a message of `topic`: it matches,
/// and no pattern the socket already `held` does (those messages it has).
fn replays(pattern: &Pattern, held: &[Pattern], topic: &Topic) -> bool {
    pattern.matches(topic) && !held.iter().any(|h| h.matches(topic))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the pool's cursors are signed with: the cluster secret, so cursors
/// of another pool or forged ones are refused. A pool without one (a
/// standalone node, the Redis backend) signs with a name of the pool: its
/// cursors are checked for integrity and origin, not secret.
fn pool_secret(config: &NodeConfig) -> String {
    let cluster = &config.cluster;
    if let Ok(Some(secret)) = sources::cluster_secret(cluster, Env::process()) {
        return format!("secret:{}", secret.expose());
    }
    match (cluster.standalone, cluster.backend) {
        (false, Backend::Redis) => {
            let password = sources::redis_password(cluster, Env::process())
                .ok()
                .flatten();
            format!(
                "redis:{}:{}",
                cluster.redis_prefix,
                password.as_ref().map_or("", |p| p.expose())
            )
        }
        _ => format!("standalone:{}", config.name),
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
