//! Catch-up between peers: what a node missed of one origin's relays, asked
//! of the other nodes' histories, so that an acked publication is lost by no
//! surviving node (`publish_ack = "replicated"`: one peer held it before the
//! ack), even when its origin died before relaying it everywhere.
//!
//! - **Order.** Per origin incarnation, sequences are contiguous: a node
//!   delivers `seq` only after `seq - 1` ([`Sequencer`]). A relay that
//!   arrives past a gap is held back, and the gap is asked for; one not
//!   filled within [`GAP_TIMEOUT`] is given up (counted) and what was held
//!   is delivered in order. So the history, and every cursor minted from
//!   it, stays in per-publisher order, and a cursor never covers a message
//!   that was only late.
//! - **When.** A node asks for origin P's messages when P's link into it
//!   drops (and again every `retry_interval` while it stays down), when it
//!   comes back, and on a gap; see `Mesh`'s catch-up task.
//! - **Whom.** Every peer its own links reach, P included: P's history holds
//!   all of P's own messages.
//! - **Wire.** `catch_up` ([`Request`], over the asker's link) and its
//!   answer `caught_up` (back on the same socket): one JSON text each. The
//!   answer, unlike a relay, carries another node's publications: it is
//!   only taken on a link this node dialled and the peer welcomed, only of
//!   the origin asked for, never of this node itself; every entry is a relay
//!   frame checked as one. Bounded: [`MAX_ENTRIES`] entries and the peer's
//!   `max_payload` bytes a round; a full answer says `more`, and is asked
//!   again only if it brought something new. Bad messages get a typed
//!   [`CatchUpError`], counted by kind, never a panic.
//!
//! The [`Sequencer`] is pure, with time passed in, like `cluster/dedup.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use stickyio_shared::message::Publication;
use stickyio_shared::relay::{self, FrameError};
use tokio::sync::Notify;

use super::metrics::{MeshMetrics, PeerLabels};
use crate::cluster::inbound::{Deliver, Inbound};
use crate::cluster::labels::OriginLabels;
use crate::history::{Position, Wanted};

/// The catch-up message version this build writes and reads.
const VERSION: u64 = 1;
/// Most entries in one answer.
pub(super) const MAX_ENTRIES: usize = 1000;
/// Most incarnations of one origin a request names.
pub(super) const MAX_STREAMS_ASKED: usize = 64;
/// How long a gap may hold back the relays after it: as long as a
/// replicated publish waits for a peer (`confirm.rs`), so a loaded peer's
/// late answer still fills it.
pub(super) const GAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most relays held back behind one gap; past it the gap is given up.
pub(super) const MAX_HELD: usize = 10_000;
/// Most incarnations tracked; idle ones are forgotten first.
pub(super) const MAX_TRACKED: usize = 4096;
/// How long a request for an origin counts as in flight: the periodic
/// re-asks (gaps still open, peers still unlinked) skip an origin asked for
/// this recently and not answered yet, so a slow peer is not sent the same
/// request again and again, nor answers it again and again.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Longest node name (a cursor's and a route tag's limit).
const MAX_NAME: usize = 255;

/// What a node asks a peer: `origin`'s held messages from `from` on.
///
/// ```json
/// {"v":1,"origin":"node-a","from":[[7046532847,118]],"since":1700000000000}
/// ```
///
/// `from` is, per incarnation of `origin` the asker knows (its boot), the
/// first sequence it lacks; of an incarnation it does not name, it wants
/// what was made at or after `since` (ms since the Unix epoch: when it
/// started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Request {
    pub v: u64,
    pub origin: String,
    pub from: Vec<(u64, u64)>,
    pub since: u64,
}

/// A decoded answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub origin: String,
    /// The peer had more than it sent.
    pub more: bool,
    pub entries: Vec<Publication>,
}

#[derive(Serialize)]
struct AnswerOut<'a> {
    v: u64,
    origin: &'a str,
    more: bool,
    entries: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerIn<'a> {
    v: u64,
    origin: String,
    more: bool,
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

/// Why a catch-up message was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum CatchUpError {
    #[error("catch-up message of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("catch-up event does not carry its message as one string")]
    NotText,
    #[error("catch-up message is not valid: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("catch-up message version {0} is not supported (this node reads version {VERSION})")]
    Version(u64),
    #[error("catch-up request names {0} incarnations; at most {MAX_STREAMS_ASKED}")]
    TooManyStreams(usize),
    #[error("catch-up answer has {0} entries; at most {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("catch-up origin {0:?} is not a node name (1 to 255 bytes, no control characters)")]
    BadOrigin(String),
    #[error("catch-up answer names this node's own publications")]
    OwnOrigin,
    #[error("catch-up answer for {origin} carries a publication of {node}")]
    OriginMismatch { origin: String, node: String },
    #[error("catch-up entry {0:?} has no position (`{{node}}-{{boot}}-{{seq}}`)")]
    NoPosition(String),
    #[error("catch-up entry: {0}")]
    Frame(#[from] FrameError),
}

impl CatchUpError {
    /// A short, stable name for the `reason` label of rejected frames.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            CatchUpError::TooLarge { .. } => "catch_up_too_large",
            CatchUpError::NotText => "catch_up_not_text",
            CatchUpError::Malformed(_) => "catch_up_malformed",
            CatchUpError::Version(_) => "catch_up_unsupported_version",
            CatchUpError::TooManyStreams(_) | CatchUpError::TooManyEntries(_) => {
                "catch_up_too_many"
            }
            CatchUpError::BadOrigin(_) => "catch_up_bad_origin",
            CatchUpError::OwnOrigin => "catch_up_own_origin",
            CatchUpError::OriginMismatch { .. } => "catch_up_origin_mismatch",
            CatchUpError::NoPosition(_) => "catch_up_no_position",
            CatchUpError::Frame(_) => "catch_up_bad_entry",
        }
    }
}

fn check_origin(origin: &str) -> Result<(), CatchUpError> {
    if origin.is_empty() || origin.len() > MAX_NAME || origin.chars().any(char::is_control) {
        return Err(CatchUpError::BadOrigin(origin.chars().take(64).collect()));
    }
    Ok(())
}

/// Decodes and checks a request of at most `max` bytes.
pub(super) fn decode_request(text: &str, max: usize) -> Result<Request, CatchUpError> {
    if text.len() > max {
        return Err(CatchUpError::TooLarge {
            size: text.len(),
            max,
        });
    }
    let request: Request = serde_json::from_str(text).map_err(CatchUpError::Malformed)?;
    if request.v != VERSION {
        return Err(CatchUpError::Version(request.v));
    }
    check_origin(&request.origin)?;
    if request.from.len() > MAX_STREAMS_ASKED {
        return Err(CatchUpError::TooManyStreams(request.from.len()));
    }
    Ok(request)
}

/// The answer to a request for `origin`: `held` (oldest first) as relay
/// frames, as many as fit in `budget` bytes and [`MAX_ENTRIES`]; `more`
/// when some were left out, or the query may have had more. With the number
/// of entries it carries.
pub(super) fn encode_answer(
    origin: &str,
    held: &[Arc<Publication>],
    budget: usize,
) -> (String, usize) {
    let mut frames = Vec::with_capacity(held.len().min(MAX_ENTRIES));
    // The envelope: version, origin, flag, brackets; and a comma per entry.
    let mut size = 64 + origin.len();
    for publication in held.iter().take(MAX_ENTRIES) {
        let Ok(frame) = relay::encode(publication) else {
            continue;
        };
        let Ok(frame) = String::from_utf8(frame) else {
            continue;
        };
        if size + frame.len() + 1 > budget {
            break;
        }
        size += frame.len() + 1;
        frames.push(frame);
    }
    let raw: Vec<Box<RawValue>> = frames
        .into_iter()
        .filter_map(|frame| RawValue::from_string(frame).ok())
        .collect();
    let more = raw.len() < held.len() || held.len() >= MAX_ENTRIES;
    let answer = AnswerOut {
        v: VERSION,
        origin,
        more,
        entries: raw.iter().map(|r| &**r).collect(),
    };
    // Serializing borrowed raw JSON and plain fields cannot fail.
    let text = serde_json::to_string(&answer).unwrap_or_default();
    (text, raw.len())
}

/// Decodes and checks an answer of at most `max` bytes, for node `own`.
pub(super) fn decode_answer(text: &str, max: usize, own: &str) -> Result<Answer, CatchUpError> {
    if text.len() > max {
        return Err(CatchUpError::TooLarge {
            size: text.len(),
            max,
        });
    }
    let answer: AnswerIn<'_> = serde_json::from_str(text).map_err(CatchUpError::Malformed)?;
    if answer.v != VERSION {
        return Err(CatchUpError::Version(answer.v));
    }
    check_origin(&answer.origin)?;
    if answer.origin == own {
        return Err(CatchUpError::OwnOrigin);
    }
    if answer.entries.len() > MAX_ENTRIES {
        return Err(CatchUpError::TooManyEntries(answer.entries.len()));
    }
    let mut entries = Vec::with_capacity(answer.entries.len());
    for raw in answer.entries {
        let publication = relay::decode(raw.get().as_bytes(), max)?;
        if publication.node != answer.origin {
            return Err(CatchUpError::OriginMismatch {
                origin: answer.origin,
                node: publication.node,
            });
        }
        if Position::of(&publication).is_none() {
            return Err(CatchUpError::NoPosition(publication.id));
        }
        entries.push(publication);
    }
    Ok(Answer {
        origin: answer.origin,
        more: answer.more,
        entries,
    })
}

/// What offering one relay to the [`Sequencer`] gave.
#[derive(Debug, Default)]
pub(super) struct Offered {
    /// To deliver now, in sequence order.
    pub ready: Vec<Publication>,
    /// It opened a gap (held back, the first past it): worth asking for
    /// at once. Later relays past the same gap leave the asking to the
    /// periodic turn.
    pub gap: bool,
    /// Already delivered, or given up on: dropped.
    pub stale: bool,
}

#[derive(Debug)]
struct Stream {
    origin: Arc<str>,
    /// The first sequence not delivered yet.
    next: u64,
    /// Relays past a gap, by sequence.
    held: BTreeMap<u64, Publication>,
    /// Since when the oldest gap is open.
    gap_since: Option<Instant>,
    last_at: Instant,
}

impl Stream {
    /// Moves the contiguous run from `next` out of `held`.
    fn drain(&mut self, ready: &mut Vec<Publication>) {
        while let Some(p) = self.held.remove(&self.next) {
            ready.push(p);
            self.next += 1;
        }
        self.gap_since = if self.held.is_empty() {
            None
        } else {
            self.gap_since
        };
    }

    /// Gives the gaps up: everything held, in order; the sequence numbers
    /// skipped.
    fn skip(&mut self, ready: &mut Vec<Publication>) -> u64 {
        let mut skipped = 0;
        while let Some((&first, _)) = self.held.first_key_value() {
            skipped += first - self.next;
            self.next = first;
            self.drain(ready);
        }
        skipped
    }
}

/// Per origin incarnation, delivery in sequence order.
#[derive(Debug)]
pub(super) struct Sequencer {
    streams: AHashMap<u64, Stream>,
    gap_timeout: Duration,
    /// An incarnation with nothing held is forgotten after this long idle
    /// (the history's ttl: its messages are gone from every history then).
    idle: Duration,
    /// Sequence numbers given up, in all.
    skipped: u64,
}

impl Sequencer {
    pub(super) fn new(gap_timeout: Duration, idle: Duration) -> Sequencer {
        Sequencer {
            streams: AHashMap::new(),
            gap_timeout,
            idle,
            skipped: 0,
        }
    }

    /// Incarnation `boot` of `origin` started after this node did: its
    /// first message is sequence 1, and any before the first that arrives
    /// is a gap. Changes nothing for an incarnation already tracked.
    pub(super) fn expect(&mut self, origin: &str, boot: u64, now: Instant) {
        if self.streams.contains_key(&boot) || !self.room() {
            return;
        }
        self.streams.insert(
            boot,
            Stream {
                origin: Arc::from(origin),
                next: 1,
                held: BTreeMap::new(),
                gap_since: None,
                last_at: now,
            },
        );
    }

    /// Takes relay `seq` of `origin`'s incarnation `boot`.
    pub(super) fn offer(
        &mut self,
        origin: &str,
        boot: u64,
        seq: u64,
        publication: Publication,
        now: Instant,
    ) -> Offered {
        let mut offered = Offered::default();
        if !self.streams.contains_key(&boot) {
            // First seen: it starts the stream (what came before it
            // here, if anything, came before this node knew the origin).
            if !self.room() {
                offered.ready.push(publication);
                return offered;
            }
            self.streams.insert(
                boot,
                Stream {
                    origin: Arc::from(origin),
                    next: seq,
                    held: BTreeMap::new(),
                    gap_since: None,
                    last_at: now,
                },
            );
        }
        let Some(stream) = self.streams.get_mut(&boot) else {
            return offered;
        };
        if *stream.origin != *origin {
            // Two names on one random boot: not one incarnation, so not
            // sequenced together; delivered as it comes.
            offered.ready.push(publication);
            return offered;
        }
        stream.last_at = now;
        if seq < stream.next || stream.held.contains_key(&seq) {
            offered.stale = true;
            return offered;
        }
        if seq == stream.next {
            offered.ready.push(publication);
            stream.next += 1;
            stream.drain(&mut offered.ready);
            return offered;
        }
        stream.held.insert(seq, publication);
        offered.gap = stream.gap_since.is_none();
        stream.gap_since.get_or_insert(now);
        if stream.held.len() > MAX_HELD {
            self.skipped += stream.skip(&mut offered.ready);
        }
        offered
    }

    /// Gives up gaps open for longer than the timeout (their held relays
    /// are returned, in order) and forgets idle incarnations.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Publication> {
        let mut ready = Vec::new();
        for stream in self.streams.values_mut() {
            if stream
                .gap_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.gap_timeout)
            {
                self.skipped += stream.skip(&mut ready);
            }
        }
        let idle = self.idle;
        self.streams
            .retain(|_, s| !s.held.is_empty() || now.saturating_duration_since(s.last_at) < idle);
        ready
    }

    /// Per incarnation of `origin` tracked, the first sequence it lacks.
    pub(super) fn positions(&self, origin: &str) -> Vec<(u64, u64)> {
        let mut positions: Vec<(u64, u64)> = self
            .streams
            .iter()
            .filter(|(_, s)| *s.origin == *origin)
            .map(|(boot, s)| (*boot, s.next))
            .collect();
        positions.sort_unstable();
        positions.truncate(MAX_STREAMS_ASKED);
        positions
    }

    /// Origins with a gap open.
    pub(super) fn gaps(&self) -> Vec<Arc<str>> {
        let mut origins: Vec<Arc<str>> = self
            .streams
            .values()
            .filter(|s| s.gap_since.is_some())
            .map(|s| s.origin.clone())
            .collect();
        origins.sort_unstable();
        origins.dedup();
        origins
    }

    pub(super) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Room for one more incarnation: forgets the idlest with nothing held
    /// when full; false when every one holds relays.
    fn room(&mut self) -> bool {
        if self.streams.len() < MAX_TRACKED {
            return true;
        }
        let idlest = self
            .streams
            .iter()
            .filter(|(_, s)| s.held.is_empty())
            .min_by_key(|(_, s)| s.last_at)
            .map(|(boot, _)| *boot);
        match idlest {
            Some(boot) => {
                self.streams.remove(&boot);
                true
            }
            None => false,
        }
    }
}

/// Where the mesh's inbound publications go in order, and where catch-up
/// requests and answers are made and taken. One per node, shared by its
/// listener (relays in, requests in) and its links (answers in).
pub(super) struct CatchUp {
    node: String,
    /// When this node started (ms since the Unix epoch).
    started_at: u64,
    /// Off with `history.size = 0`: nothing to answer from, so nothing is
    /// asked and relays are delivered as they come.
    enabled: bool,
    max_frame: usize,
    sequencer: Mutex<Sequencer>,
    inbound: Inbound,
    deliver: Arc<dyn Deliver>,
    metrics: Arc<MeshMetrics>,
    /// Origins to ask for at the catch-up task's next turn.
    wanted: Mutex<AHashSet<String>>,
    pub(crate) wake: Notify,
    /// Sequence numbers given up, as last counted on `/metrics`.
    skipped: AtomicU64,
    /// Origins asked for and not answered yet, since when.
    in_flight: Mutex<AHashMap<String, Instant>>,
}

impl CatchUp {
    pub(super) fn new(
        node: String,
        enabled: bool,
        max_frame: usize,
        idle: Duration,
        inbound: Inbound,
        deliver: Arc<dyn Deliver>,
        metrics: Arc<MeshMetrics>,
    ) -> CatchUp {
        CatchUp {
            node,
            started_at: deliver.started_at(),
            enabled,
            max_frame,
            sequencer: Mutex::new(Sequencer::new(GAP_TIMEOUT, idle)),
            inbound,
            deliver,
            metrics,
            wanted: Mutex::new(AHashSet::new()),
            wake: Notify::new(),
            skipped: AtomicU64::new(0),
            in_flight: Mutex::new(AHashMap::new()),
        }
    }

    /// When this node started, as its links tell peers.
    pub(super) fn started_at(&self) -> u64 {
        self.started_at
    }

    fn sequencer(&self) -> std::sync::MutexGuard<'_, Sequencer> {
        self.sequencer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A relay of `origin` (its link's incarnation `link_boot`), delivered
    /// in sequence order; false when it was already delivered.
    pub(super) fn relayed(&self, origin: &str, link_boot: u64, publication: Publication) -> bool {
        let now = Instant::now();
        let Some(position) = Position::of(&publication).filter(|_| self.enabled) else {
            return self
                .inbound
                .receive(origin, link_boot, publication, None, now);
        };
        self.offer(origin, position, publication, now).0
    }

    /// Offers one publication to the sequencer and delivers what is ready,
    /// under its lock, so two paths (a link, the listener) never deliver
    /// one origin out of order. Whether it was new, and whether it opened a
    /// gap.
    fn offer(
        &self,
        origin: &str,
        position: Position,
        publication: Publication,
        now: Instant,
    ) -> (bool, bool) {
        let mut sequencer = self.sequencer();
        let offered = sequencer.offer(origin, position.boot, position.seq, publication, now);
        if offered.stale {
            self.inbound.duplicate(origin);
        }
        for ready in offered.ready {
            self.inbound
                .receive(origin, position.boot, ready, None, now);
        }
        drop(sequencer);
        if offered.gap {
            self.want(origin);
        }
        (!offered.stale, offered.gap)
    }

    /// Peer `origin` (incarnation `boot`, started at `started`) linked into
    /// this node: what it sent while unlinked is asked for.
    pub(super) fn linked(&self, origin: &str, boot: u64, started: Option<u64>) {
        if !self.enabled {
            return;
        }
        if started.is_some_and(|started| started >= self.started_at) {
            self.sequencer().expect(origin, boot, Instant::now());
        }
        self.want(origin);
    }

    /// Asks for `origin` at the catch-up task's next turn (at once).
    pub(super) fn want(&self, origin: &str) {
        if !self.enabled || origin == self.node {
            return;
        }
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(origin.to_owned());
        self.wake.notify_one();
    }

    /// Origins to ask for now: those wanted since the last turn (a link
    /// came or went, a gap opened), and, unless a request for them is still
    /// in flight ([`ANSWER_WAIT`]), those with a gap open and `also` (peers
    /// still unlinked). Gaps open too long are given up first (their relays
    /// delivered).
    pub(super) fn turn(&self, also: impl IntoIterator<Item = String>) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        let now = Instant::now();
        let mut sequencer = self.sequencer();
        let released = sequencer.expire(now);
        for ready in released {
            let origin = ready.node.clone();
            let boot = Position::of(&ready).map_or(0, |p| p.boot);
            self.inbound.receive(&origin, boot, ready, None, now);
        }
        let skipped = sequencer.skipped();
        let reported = self.skipped.swap(skipped, Ordering::Relaxed);
        self.metrics
            .catch_up_skipped
            .inc_by(skipped.saturating_sub(reported));
        let mut periodic: AHashSet<String> =
            sequencer.gaps().iter().map(|o| o.to_string()).collect();
        drop(sequencer);
        periodic.extend(also);
        {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            in_flight.retain(|_, at| now.saturating_duration_since(*at) < ANSWER_WAIT);
            periodic.retain(|origin| !in_flight.contains_key(origin));
        }
        let mut origins =
            std::mem::take(&mut *self.wanted.lock().unwrap_or_else(PoisonError::into_inner));
        origins.extend(periodic);
        origins.remove(&self.node);
        let mut origins: Vec<String> = origins.into_iter().collect();
        origins.sort_unstable();
        origins
    }

    /// The request for `origin`'s messages this node lacks, as sent; it is
    /// in flight from now until an answer for `origin` is taken.
    pub(super) fn request(&self, origin: &str) -> String {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(origin.to_owned(), Instant::now());
        let request = Request {
            v: VERSION,
            origin: origin.to_owned(),
            from: self.sequencer().positions(origin),
            since: self.started_at,
        };
        // Plain fields: serializing cannot fail.
        serde_json::to_string(&request).unwrap_or_default()
    }

    /// Answers peer `peer`'s request (text as received) from this node's
    /// history; `None` for a refused one (counted, logged).
    pub(super) fn answer(&self, peer: &str, text: Result<String, CatchUpError>) -> Option<String> {
        let request = match text.and_then(|text| decode_request(&text, self.max_frame)) {
            Ok(request) => request,
            Err(e) => {
                self.metrics.reject_frame(e.kind());
                tracing::warn!(peer, error = %e, "catch-up request refused");
                return None;
            }
        };
        let held = self.deliver.held_of(&Wanted {
            origin: &request.origin,
            from: &request.from,
            since: request.since,
            limit: MAX_ENTRIES,
        });
        let (text, sent) = encode_answer(&request.origin, &held, self.max_frame);
        self.metrics.catch_up_served.inc_by(sent as u64);
        Some(text)
    }

    /// Takes an answer from the peer at `peer` (text as received): delivers
    /// what is new in order. The origin to ask again, when the answer was
    /// full and brought something new.
    pub(super) fn take(&self, peer: &str, text: Result<String, CatchUpError>) -> Option<String> {
        let answer = match text.and_then(|text| decode_answer(&text, self.max_frame, &self.node)) {
            Ok(answer) => answer,
            Err(e) => {
                self.metrics.reject_frame(e.kind());
                tracing::warn!(peer, error = %e, "catch-up answer refused");
                return None;
            }
        };
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&answer.origin);
        let labels = OriginLabels {
            origin: answer.origin.clone(),
        };
        self.metrics
            .catch_up_received
            .get_or_create(&labels)
            .inc_by(answer.entries.len() as u64);
        let now = Instant::now();
        let mut new = 0;
        for publication in answer.entries {
            let Some(position) = Position::of(&publication) else {
                continue;
            };
            if self.offer(&answer.origin, position, publication, now).0 {
                new += 1;
            }
        }
        if new > 0 {
            self.metrics
                .catch_up_delivered
                .get_or_create(&labels)
                .inc_by(new);
            tracing::info!(peer, origin = answer.origin, messages = new, "caught up");
        }
        (answer.more && new > 0).then_some(answer.origin)
    }

    /// Counts one request sent to the peer at `peer`.
    pub(super) fn asked(&self, peer: &str) {
        self.metrics
            .catch_up_requests
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .inc();
    }

    /// Relayed publications received from `origin` and delivered.
    pub(super) fn messages_in(&self, origin: &str) -> u64 {
        self.inbound.messages_in(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn publication(node: &str, boot: u64, seq: u64) -> Publication {
        Publication {
            id: format!("{node}-{boot}-{seq}"),
            topic: "chat.a".into(),
            content: json!(seq),
            sender_id: "s".into(),
            created_at: 1_700_000_000_000 + seq,
            node: node.into(),
        }
    }

    fn offer(s: &mut Sequencer, seq: u64, now: Instant) -> (Vec<String>, bool, bool) {
        let offered = s.offer("node-a", 7, seq, publication("node-a", 7, seq), now);
        (
            offered.ready.iter().map(|p| p.id.clone()).collect(),
            offered.gap,
            offered.stale,
        )
    }

    fn ids(ready: &[Publication]) -> Vec<&str> {
        ready.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn relays_come_out_in_sequence_order_and_once() {
        let t = Instant::now();
        let mut s = Sequencer::new(GAP_TIMEOUT, Duration::from_secs(60));
        assert_eq!(
            offer(&mut s, 5, t),
            (vec!["node-a-7-5".into()], false, false)
        );
        assert_eq!(offer(&mut s, 6, t).0, ["node-a-7-6"]);
        assert_eq!(offer(&mut s, 8, t), (vec![], true, false), "7 is missing");
        assert_eq!(offer(&mut s, 9, t), (vec![], false, false), "asked already");
        assert_eq!(s.positions("node-a"), [(7, 7)]);
        assert_eq!(s.gaps().len(), 1);
        assert_eq!(offer(&mut s, 8, t), (vec![], false, true), "held already");
        assert_eq!(
            offer(&mut s, 7, t).0,
            ["node-a-7-7", "node-a-7-8", "node-a-7-9"]
        );
        assert!(s.gaps().is_empty());
        assert_eq!(
            offer(&mut s, 6, t),
            (vec![], false, true),
            "delivered already"
        );
        assert_eq!(s.positions("node-a"), [(7, 10)]);
        assert!(s.positions("node-b").is_empty());
    }

    #[test]
    fn an_expected_incarnation_starts_at_one() {
        let t = Instant::now();
        let mut s = Sequencer::new(GAP_TIMEOUT, Duration::from_secs(60));
        s.expect("node-a", 7, t);
        assert_eq!(offer(&mut s, 3, t), (vec![], true, false));
        assert_eq!(s.positions("node-a"), [(7, 1)]);
        s.expect("node-a", 7, t);
        assert_eq!(
            s.positions("node-a"),
            [(7, 1)],
            "expecting twice changes nothing"
        );
        assert!(offer(&mut s, 1, t).0 == ["node-a-7-1"]);
        assert_eq!(offer(&mut s, 2, t).0, ["node-a-7-2", "node-a-7-3"]);
    }

    #[test]
    fn a_gap_not_filled_in_time_is_given_up_in_order() {
        let t = Instant::now();
        let mut s = Sequencer::new(Duration::from_secs(3), Duration::from_secs(60));
        offer(&mut s, 1, t);
        offer(&mut s, 4, t);
        offer(&mut s, 3, t + Duration::from_secs(1));
        offer(&mut s, 7, t + Duration::from_secs(1));
        assert!(s.expire(t + Duration::from_millis(2999)).is_empty());
        let released = s.expire(t + Duration::from_secs(3));
        assert_eq!(ids(&released), ["node-a-7-3", "node-a-7-4", "node-a-7-7"]);
        assert_eq!(s.skipped(), 3, "2, 5 and 6");
        assert_eq!(
            offer(&mut s, 2, t),
            (vec![], false, true),
            "given up: too late"
        );
        assert_eq!(offer(&mut s, 8, t).0, ["node-a-7-8"]);
    }

    #[test]
    fn held_relays_and_tracked_incarnations_stay_bounded() {
        let t = Instant::now();
        let mut s = Sequencer::new(GAP_TIMEOUT, Duration::from_secs(60));
        offer(&mut s, 1, t);
        let mut released = 0;
        for seq in 3..(MAX_HELD as u64 + 4) {
            released += offer(&mut s, seq, t).0.len();
        }
        assert_eq!(released, MAX_HELD + 1, "past the limit the gap is given up");
        assert_eq!(s.skipped(), 1);
        for boot in 0..(MAX_TRACKED as u64 + 10) {
            s.offer(
                "node-b",
                1000 + boot,
                1,
                publication("node-b", 1000 + boot, 1),
                t,
            );
        }
        assert_eq!(s.streams.len(), MAX_TRACKED);
        s.expire(t + Duration::from_secs(60));
        assert!(s.streams.is_empty(), "idle incarnations are forgotten");
    }

    #[test]
    fn another_name_on_the_same_boot_is_not_sequenced_with_it() {
        let t = Instant::now();
        let mut s = Sequencer::new(GAP_TIMEOUT, Duration::from_secs(60));
        offer(&mut s, 1, t);
        let other = s.offer("node-x", 7, 9, publication("node-x", 7, 9), t);
        assert_eq!(ids(&other.ready), ["node-x-7-9"]);
    }

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        let request = Request {
            v: 1,
            origin: "node-a".into(),
            from: vec![(7, 118)],
            since: 5,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"origin":"node-a","from":[[7,118]],"since":5}"#
        );
        assert_eq!(decode_request(&text, 1000).unwrap(), request);
        let cases = [
            (
                r#"{"v":2,"origin":"a","from":[],"since":0}"#,
                "catch_up_unsupported_version",
            ),
            (
                r#"{"v":1,"origin":"","from":[],"since":0}"#,
                "catch_up_bad_origin",
            ),
            (
                r#"{"v":1,"origin":"a\u0000","from":[],"since":0}"#,
                "catch_up_bad_origin",
            ),
            (
                r#"{"v":1,"origin":"a","from":[[1]],"since":0}"#,
                "catch_up_malformed",
            ),
            (
                r#"{"v":1,"origin":"a","from":[],"since":0,"x":1}"#,
                "catch_up_malformed",
            ),
            ("garbage", "catch_up_malformed"),
        ];
        for (text, kind) in cases {
            assert_eq!(
                decode_request(text, 1000).unwrap_err().kind(),
                kind,
                "{text}"
            );
        }
        let many: Vec<(u64, u64)> = (0..=MAX_STREAMS_ASKED as u64).map(|b| (b, 1)).collect();
        let text =
            serde_json::to_string(&json!({"v":1,"origin":"a","from":many,"since":0})).unwrap();
        assert_eq!(
            decode_request(&text, 10_000).unwrap_err().to_string(),
            "catch-up request names 65 incarnations; at most 64"
        );
        assert!(matches!(
            decode_request(&text, 10),
            Err(CatchUpError::TooLarge { max: 10, .. })
        ));
    }

    #[test]
    fn answers_are_bounded_and_checked() {
        let held: Vec<Arc<Publication>> = (1..=5)
            .map(|seq| Arc::new(publication("node-a", 7, seq)))
            .collect();
        let (text, sent) = encode_answer("node-a", &held, 100_000);
        assert_eq!(sent, 5);
        let answer = decode_answer(&text, 100_000, "node-c").unwrap();
        assert_eq!(answer.origin, "node-a");
        assert!(!answer.more);
        assert_eq!(
            answer.entries,
            held.iter().map(|p| (**p).clone()).collect::<Vec<_>>()
        );

        let one = relay::encode(&held[0]).unwrap().len();
        let (text, sent) = encode_answer("node-a", &held, 64 + 6 + 2 * (one + 1) + 1);
        assert_eq!(sent, 2, "as many as fit the budget");
        assert!(decode_answer(&text, 100_000, "node-c").unwrap().more);

        assert_eq!(
            decode_answer(&text, 100_000, "node-a").unwrap_err().kind(),
            "catch_up_own_origin"
        );
        let forged = text.replace("\"origin\":\"node-a\"", "\"origin\":\"node-b\"");
        assert_eq!(
            decode_answer(&forged, 100_000, "node-c")
                .unwrap_err()
                .to_string(),
            "catch-up answer for node-b carries a publication of node-a"
        );
        let bad = r#"{"v":1,"origin":"node-a","more":false,"entries":[{"v":1}]}"#;
        assert_eq!(
            decode_answer(bad, 1000, "node-c").unwrap_err().kind(),
            "catch_up_bad_entry"
        );
        let mut unpositioned = publication("node-a", 7, 1);
        unpositioned.id = "node-a-x".into();
        let (text, _) = encode_answer("node-a", &[Arc::new(unpositioned)], 100_000);
        assert_eq!(
            decode_answer(&text, 100_000, "node-c").unwrap_err().kind(),
            "catch_up_no_position"
        );
        assert_eq!(
            decode_answer("[]", 1000, "node-c").unwrap_err().kind(),
            "catch_up_malformed"
        );
        assert_eq!(
            decode_answer(&"x".repeat(20), 10, "node-c")
                .unwrap_err()
                .kind(),
            "catch_up_too_large"
        );
    }

    struct Nowhere;
    impl Deliver for Nowhere {
        fn deliver(&self, _: &Arc<Publication>, _: Option<crate::cursor::Stamp>) -> usize {
            0
        }
    }

    #[test]
    fn a_periodic_ask_waits_for_the_answer_in_flight() {
        let metrics = Arc::new(MeshMetrics::default());
        let inbound = Inbound::new(Duration::ZERO, Arc::new(Nowhere), metrics.inbound.clone());
        let c = CatchUp::new(
            "node-c".into(),
            true,
            100_000,
            Duration::from_secs(60),
            inbound,
            Arc::new(Nowhere),
            metrics,
        );
        let unlinked = || vec!["node-a".to_owned(), "node-c".to_owned()];
        assert_eq!(c.turn(unlinked()), ["node-a"], "never itself");
        let request: Request = serde_json::from_str(&c.request("node-a")).unwrap();
        assert_eq!((request.origin.as_str(), request.from.len()), ("node-a", 0));
        assert!(c.turn(unlinked()).is_empty(), "asked, not answered yet");
        c.want("node-a");
        assert_eq!(c.turn(unlinked()), ["node-a"], "a link event asks anyway");
        let (answer, _) =
            encode_answer("node-a", &[Arc::new(publication("node-a", 7, 1))], 100_000);
        assert_eq!(
            c.take("peer", Ok(answer)),
            None,
            "not full: nothing more to ask"
        );
        let again = c.request("node-a");
        assert!(
            again.contains("[[7,2]]"),
            "from where it stands now: {again}"
        );
        c.take("peer", Ok(encode_answer("node-a", &[], 100).0));
        assert_eq!(c.turn(unlinked()), ["node-a"], "answered: asked again");
    }
}
