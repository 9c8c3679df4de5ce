//! The outbound link to one peer: a rust_socketio client on the peer's
//! `/cluster` namespace that carries this node's own publications to it.
//!
//! Each link has a bounded queue. [`Link::relay`] only ever `try_send`s into
//! it, so a slow or dead peer costs a counted drop, never a blocked publish.
//! One task owns the client: it dials, waits for the peer's `welcome` (the
//! sign the secret was accepted), drains the queue, and on any failure closes
//! the client and redials every `retry_interval`, the first dial included
//! (rust_socketio retries nothing itself here: its reconnect is turned off).
//!
//! rust_socketio runs callbacks inline on its reader task, so they only push
//! an event into a small bounded channel that the link task reads.
//!
//! While a link is down, publications for that peer are dropped and counted
//! (`link_down`): a link alone is at-most-once across a break, exactly-once
//! while it is up. The one frame whose write failed is resent first if the very
//! next dial succeeds; the peer's dedup set drops it if the write had landed.
//! What a peer still misses it gets back by catch-up (`catchup.rs`): the
//! link also carries this node's `catch_up` requests, and takes the peer's
//! `caught_up` answers in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use bytes::Bytes;
use futures_util::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use stickyio_shared::config;

use super::catchup::{CatchUp, CatchUpError};
use super::confirm::Waiter;
use super::metrics::{DropLabels, MeshMetrics, PeerLabels};
use crate::cluster::{LinkState, millis};
use stickyio_shared::secret::Secret;

/// How long a dial (handshake and the peer's answer) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that accepts no bytes for this long is considered lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the few client events a link sees (welcome, error, close).
const EVENT_QUEUE: usize = 16;
/// Catch-up requests waiting for the link, and answers for its task: a few
/// origins at a time (a full queue drops a request; the catch-up task asks
/// again at its next turn).
const CATCH_UP_QUEUE: usize = 16;

/// One publication for a peer: its encoded frame and, when its publisher
/// waits for a peer to hold it, the [`Waiter`] to tell.
#[derive(Clone)]
pub(super) struct Frame {
    pub bytes: Bytes,
    pub id: Arc<str>,
    pub waiter: Option<Arc<Waiter>>,
}

impl Frame {
    /// This link will never confirm the frame.
    pub(super) fn fail(&self, why: &str) {
        if let Some(waiter) = &self.waiter {
            waiter.failed(why);
        }
    }

    /// The event carrying it. `relay_held` asks the peer to answer `held`
    /// with the id once it holds it, and carries the frame as text: a binary
    /// event is two websocket messages, and the second waits for the peer's
    /// delayed TCP ack of the first (Nagle; rust_socketio leaves it on),
    /// some 40 ms that a publisher waiting for `held` would feel. Plain
    /// relays stay binary: a busy link coalesces them.
    fn payload(&self) -> (&'static str, Payload) {
        match &self.waiter {
            // A frame is JSON, so UTF-8: nothing is lost.
            Some(_) => (
                "relay_held",
                Payload::Text(vec![json!(String::from_utf8_lossy(&self.bytes))]),
            ),
            None => ("relay", Payload::Binary(self.bytes.clone())),
        }
    }
}

/// Who dials whom, and how.
#[derive(Debug, Clone)]
pub(super) struct LinkSettings {
    /// The peer's URL, from `cluster.cluster_nodes`.
    pub url: String,
    /// This node's name, sent so the peer knows the origin of what it relays.
    pub node: String,
    /// This node's incarnation: ids restart with the process, so the peer's
    /// dedup set keys on it too.
    pub boot: u64,
    pub secret: Secret,
    pub retry_interval: Duration,
    pub queue: usize,
}

/// A snapshot of a link for `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub url: String,
    /// The peer's node name, once a dial has reached it.
    pub node: Option<String>,
    pub state: LinkState,
    /// When `state` last changed, in milliseconds since the Unix epoch.
    pub since: u64,
    /// Publications written to the peer.
    pub messages_out: u64,
    /// Publications for the peer that were dropped (link down, queue full, too large).
    pub dropped: u64,
    /// Times the link went from up to down.
    pub flaps: u64,
    /// Why the last dial or the link failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Status {
    state: LinkState,
    since: SystemTime,
    node: Option<String>,
    last_error: Option<String>,
}

pub(super) struct Link {
    url: String,
    retry_interval: Duration,
    queue: mpsc::Sender<Frame>,
    /// Catch-up requests for the peer.
    asks: mpsc::Sender<String>,
    catch_up: Arc<CatchUp>,
    up: AtomicBool,
    status: Mutex<Status>,
    out: Counter,
    flaps: Counter,
    up_gauge: Gauge,
    dropped_link_down: Counter,
    dropped_queue_full: Counter,
    dropped_too_large: Counter,
}

/// Why a link went down or a dial failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Client(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("the peer closed the link")]
    Closed,
    #[error("{0}")]
    Transport(String),
    #[error("this node is shutting down")]
    ShuttingDown,
}

impl From<rust_socketio::Error> for LinkError {
    /// rust_socketio's own messages are terse ("EngineIO Error"): the causes
    /// say what actually failed, e.g. "Connection refused".
    fn from(e: rust_socketio::Error) -> Self {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        LinkError::Client(text)
    }
}

/// What rust_socketio's callbacks report to the link task.
#[derive(Debug)]
enum PeerEvent {
    /// The peer accepted this node and named itself.
    Welcome(Option<String>),
    Error(String),
    Closed,
}

/// How a session with the peer ended.
enum End {
    Shutdown,
    Lost(LinkError),
}

impl Link {
    /// Creates the link and spawns its task; the task stops on `shutdown`.
    pub(super) fn spawn(
        settings: LinkSettings,
        metrics: &MeshMetrics,
        catch_up: Arc<CatchUp>,
        shutdown: CancellationToken,
    ) -> (Arc<Link>, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(settings.queue.max(1));
        let (asks, asked) = mpsc::channel(CATCH_UP_QUEUE);
        let peer = PeerLabels {
            peer: settings.url.clone(),
        };
        let dropped = |reason| {
            metrics
                .dropped
                .get_or_create(&DropLabels {
                    peer: settings.url.clone(),
                    reason,
                })
                .clone()
        };
        let link = Arc::new(Link {
            url: settings.url.clone(),
            retry_interval: settings.retry_interval,
            queue,
            asks,
            catch_up,
            up: AtomicBool::new(false),
            status: Mutex::new(Status {
                state: LinkState::Connecting,
                since: SystemTime::now(),
                node: None,
                last_error: None,
            }),
            out: metrics.relayed_out.get_or_create(&peer).clone(),
            flaps: metrics.link_flaps.get_or_create(&peer).clone(),
            up_gauge: metrics.link_up.get_or_create(&peer).clone(),
            dropped_link_down: dropped("link_down"),
            dropped_queue_full: dropped("queue_full"),
            dropped_too_large: dropped("too_large"),
        });
        let task = tokio::spawn(link.clone().run(settings, rx, asked, shutdown));
        (link, task)
    }

    /// Queues a catch-up request for the peer, if the link is up; never
    /// waits.
    pub(super) fn ask(&self, request: String) {
        if self.up.load(Ordering::Acquire) && self.asks.try_send(request).is_ok() {
            self.catch_up.asked(&self.url);
        }
    }

    /// Queues one encoded frame for the peer without ever waiting.
    pub(super) fn relay(&self, frame: Frame) {
        if !self.up.load(Ordering::Acquire) {
            self.dropped_link_down.inc();
            frame.fail("link_down");
            return;
        }
        match self.queue.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(frame)) => {
                self.dropped_queue_full.inc();
                frame.fail("queue_full");
            }
            Err(TrySendError::Closed(frame)) => {
                self.dropped_link_down.inc();
                frame.fail("link_down");
            }
        }
    }

    /// Counts a frame that could not be relayed to any peer because of its size.
    pub(super) fn drop_too_large(&self, frame: &Frame) {
        self.dropped_too_large.inc();
        frame.fail("too_large");
    }

    pub(super) fn status(&self) -> LinkStatus {
        let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        LinkStatus {
            url: self.url.clone(),
            node: status.node.clone(),
            state: status.state,
            since: millis(status.since),
            messages_out: self.out.get(),
            dropped: self.dropped_link_down.get()
                + self.dropped_queue_full.get()
                + self.dropped_too_large.get(),
            flaps: self.flaps.get(),
            last_error: status.last_error.clone(),
        }
    }

    async fn run(
        self: Arc<Self>,
        settings: LinkSettings,
        mut queue: mpsc::Receiver<Frame>,
        mut asked: mpsc::Receiver<String>,
        shutdown: CancellationToken,
    ) {
        let url = settings.url.as_str();
        let mut unsent: Option<Frame> = None;
        loop {
            // This line, the failure and the wait keep the URL in their text
            // too: operators and docs grep for them (DESIGN.md).
            tracing::info!(peer = url, "Trying to connect to {url}");
            let dialed = dial(&settings, self.catch_up.started_at(), &shutdown).await;
            let end = match dialed {
                Ok((client, mut events, node)) => {
                    tracing::info!(peer = url, node = node.as_deref(), "peer link up");
                    self.set_up(node);
                    let mut pending = AHashMap::new();
                    let end = self
                        .pump(
                            &client,
                            &mut events,
                            &mut queue,
                            &mut asked,
                            &mut unsent,
                            &mut pending,
                            &shutdown,
                        )
                        .await;
                    for waiter in pending.into_values() {
                        waiter.failed("the link was lost before the peer confirmed");
                    }
                    self.up.store(false, Ordering::Release);
                    close(&client).await;
                    end
                }
                Err(e) => {
                    // The frame whose write failed is only worth resending
                    // on the very next link, not after a longer outage.
                    if let Some(frame) = unsent.take() {
                        self.dropped_link_down.inc();
                        frame.fail("link_down");
                    }
                    End::Lost(e)
                }
            };
            match end {
                End::Shutdown | End::Lost(LinkError::ShuttingDown) => {
                    self.set_down(LinkState::Down, Some("this node is shutting down".into()));
                    return;
                }
                End::Lost(LinkError::Refused(reason)) => {
                    tracing::error!(peer = url, %reason, "the peer refused this node's link");
                    self.set_down(LinkState::Refused, Some(reason));
                }
                End::Lost(e) => {
                    tracing::warn!(peer = url, error = %e, "Link to {url} failed");
                    self.set_down(LinkState::Down, Some(e.to_string()));
                }
            }
            // Publications queued for a link that is gone are not kept for
            // later: a peer that comes back gets what is published from then on.
            while let Ok(frame) = queue.try_recv() {
                self.dropped_link_down.inc();
                frame.fail("link_down");
            }
            // Requests for a peer that is gone: the catch-up task asks again.
            while asked.try_recv().is_ok() {}
            let retry_interval = config::Duration(settings.retry_interval);
            tracing::info!(
                peer = url,
                %retry_interval,
                "Waiting {retry_interval} before retrying"
            );
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.set_down(LinkState::Down, Some("this node is shutting down".into()));
                    return;
                }
                _ = tokio::time::sleep(settings.retry_interval) => {}
            }
        }
    }

    /// Writes queued frames until the link fails or the node shuts down. An
    /// idle link is probed every `retry_interval`, so a link the peer closed
    /// without a word is noticed even when nothing is published.
    /// Frames sent with `relay_held` wait in `pending` for the peer's
    /// `held`.
    #[allow(clippy::too_many_arguments)]
    async fn pump(
        &self,
        client: &Client,
        events: &mut PeerEvents,
        queue: &mut mpsc::Receiver<Frame>,
        asked: &mut mpsc::Receiver<String>,
        unsent: &mut Option<Frame>,
        pending: &mut AHashMap<Arc<str>, Arc<Waiter>>,
        shutdown: &CancellationToken,
    ) -> End {
        if let Some(frame) = unsent.take()
            && let Err(e) = self.send(client, frame, unsent, pending).await
        {
            return End::Lost(e);
        }
        let mut probe = tokio::time::interval(self.retry_interval);
        probe.reset();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                event = events.control.recv() => match event {
                    Some(PeerEvent::Welcome(_)) => {}
                    Some(PeerEvent::Error(e)) => return End::Lost(LinkError::Transport(e)),
                    Some(PeerEvent::Closed) | None => return End::Lost(LinkError::Closed),
                },
                Some(id) = events.held.recv() => {
                    if let Some(waiter) = pending.remove(id.as_str()) {
                        waiter.confirmed();
                    }
                }
                Some(request) = asked.recv() => {
                    if let Err(e) = write(client, "catch_up", Payload::Text(vec![json!(request)])).await {
                        return End::Lost(e);
                    }
                }
                Some(answer) = events.caught_up.recv() => {
                    // A full answer that brought news: ask this peer for
                    // the rest (each round moves the position on).
                    if let Some(origin) = self.catch_up.take(&self.url, answer) {
                        let request = self.catch_up.request(&origin);
                        self.catch_up.asked(&self.url);
                        if let Err(e) = write(client, "catch_up", Payload::Text(vec![json!(request)])).await {
                            return End::Lost(e);
                        }
                    }
                }
                frame = queue.recv() => {
                    let Some(frame) = frame else { return End::Shutdown };
                    if let Err(e) = self.send(client, frame, unsent, pending).await {
                        return End::Lost(e);
                    }
                    probe.reset();
                }
                _ = probe.tick() => {
                    if let Err(e) = write(client, "heartbeat", Payload::Text(vec![json!({})])).await {
                        return End::Lost(e);
                    }
                }
            }
        }
    }

    /// Writes one frame; a frame whose write failed is kept in `unsent`.
    async fn send(
        &self,
        client: &Client,
        frame: Frame,
        unsent: &mut Option<Frame>,
        pending: &mut AHashMap<Arc<str>, Arc<Waiter>>,
    ) -> Result<(), LinkError> {
        let (event, payload) = frame.payload();
        if let Err(e) = write(client, event, payload).await {
            *unsent = Some(frame);
            return Err(e);
        }
        self.out.inc();
        if let Some(waiter) = frame.waiter {
            pending.insert(frame.id, waiter);
        }
        Ok(())
    }

    fn set_up(&self, node: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.state = LinkState::Up;
        status.since = SystemTime::now();
        status.node = node.or(status.node.take());
        status.last_error = None;
        self.up_gauge.set(1);
        self.up.store(true, Ordering::Release);
    }

    /// Records a failed dial or a lost link; `since` keeps the first failure.
    fn set_down(&self, state: LinkState, error: Option<String>) {
        self.up.store(false, Ordering::Release);
        self.up_gauge.set(0);
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.state == LinkState::Up {
            self.flaps.inc();
        }
        if status.state != state {
            status.state = state;
            status.since = SystemTime::now();
        }
        status.last_error = error;
    }
}

/// What rust_socketio's callbacks hand the link task: control events, the
/// ids the peer says it holds (`held`, as many as frames in flight), and
/// its catch-up answers.
struct PeerEvents {
    control: mpsc::Receiver<PeerEvent>,
    held: mpsc::Receiver<String>,
    caught_up: mpsc::Receiver<Result<String, CatchUpError>>,
}

/// Connects to the peer's `/cluster` namespace and waits for its answer:
/// `welcome` when the secret was accepted, a connect error when refused.
/// rust_engineio dials with Nagle on (no `TCP_NODELAY`, and no way to set
/// it): a frame written while an earlier one awaits the peer's (delayed)
/// ack waits too, ~40 ms on Linux, so peers may get relays that late.
async fn dial(
    settings: &LinkSettings,
    started_at: u64,
    shutdown: &CancellationToken,
) -> Result<(Client, PeerEvents, Option<String>), LinkError> {
    let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (on_held, held) = mpsc::channel(settings.queue.max(1));
    let (on_caught_up, caught_up) = mpsc::channel(CATCH_UP_QUEUE);
    let on_welcome = tx.clone();
    let on_error = tx.clone();
    let on_close = tx;
    let builder = ClientBuilder::new(settings.url.as_str())
        .namespace("/cluster")
        .auth(json!({
            "secret": settings.secret.expose(),
            "node": settings.node,
            "boot": settings.boot,
            "started": started_at,
        }))
        .reconnect(false)
        .on("welcome", move |payload, _| {
            // A full channel only loses a duplicate signal: the task is
            // already handling an earlier one.
            let _ = on_welcome.try_send(PeerEvent::Welcome(welcome_node(&payload)));
            async {}.boxed()
        })
        .on("held", move |payload, _| {
            // A full channel loses a confirmation: that publish then waits
            // for another peer, or times out unconfirmed.
            if let Payload::Text(values) = &payload
                && let Some(id) = values.first().and_then(|v| v.as_str())
            {
                let _ = on_held.try_send(id.to_owned());
            }
            async {}.boxed()
        })
        .on("caught_up", move |payload, _| {
            let answer = match &payload {
                Payload::Text(values) => match values.first() {
                    Some(serde_json::Value::String(text)) => Ok(text.clone()),
                    _ => Err(CatchUpError::NotText),
                },
                _ => Err(CatchUpError::NotText),
            };
            // A full channel loses an answer: the catch-up task asks again.
            let _ = on_caught_up.try_send(answer);
            async {}.boxed()
        })
        .on(Event::Error, move |payload, _| {
            let _ = on_error.try_send(PeerEvent::Error(payload_text(&payload)));
            async {}.boxed()
        })
        .on(Event::Close, move |_, _| {
            let _ = on_close.try_send(PeerEvent::Closed);
            async {}.boxed()
        });
    // Cancelling the handshake is safe: rust_socketio spawns its reader
    // task only once connected, and from then on the client is closed below.
    let client = tokio::select! {
        _ = shutdown.cancelled() => return Err(LinkError::ShuttingDown),
        connected = tokio::time::timeout(CONNECT_TIMEOUT, builder.connect()) => {
            connected.map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))??
        }
    };
    let answer = tokio::select! {
        _ = shutdown.cancelled() => LinkError::ShuttingDown,
        answer = tokio::time::timeout(CONNECT_TIMEOUT, events.recv()) => match answer {
            Ok(Some(PeerEvent::Welcome(node))) => {
                return Ok((client, PeerEvents { control: events, held, caught_up }, node));
            }
            Ok(Some(PeerEvent::Error(text))) => match text.strip_prefix(CONNECT_ERROR) {
                Some(refusal) => LinkError::Refused(refusal_message(refusal)),
                None => LinkError::Transport(text),
            },
            Ok(Some(PeerEvent::Closed) | None) => LinkError::Closed,
            Err(_) => LinkError::Timeout(CONNECT_TIMEOUT),
        },
    };
    close(&client).await;
    Err(answer)
}

/// How rust_socketio 0.6 reports a namespace `connect_error` packet.
const CONNECT_ERROR: &str = "Received an ConnectError frame: ";

/// The `message` of a connect error's `{"message": …}` data, else the raw text.
fn refusal_message(data: &str) -> String {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| data.to_owned())
}

fn welcome_node(payload: &Payload) -> Option<String> {
    match payload {
        Payload::Text(values) => values.first()?.get("node")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn payload_text(payload: &Payload) -> String {
    match payload {
        Payload::Text(values) => values
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(" "),
        Payload::Binary(bytes) => format!("{} bytes of binary data", bytes.len()),
        #[allow(deprecated)]
        Payload::String(text) => text.clone(),
    }
}

async fn write(client: &Client, event: &str, payload: Payload) -> Result<(), LinkError> {
    match tokio::time::timeout(WRITE_TIMEOUT, client.emit(event, payload)).await {
        Ok(result) => result.map_err(LinkError::from),
        Err(_) => Err(LinkError::Timeout(WRITE_TIMEOUT)),
    }
}

/// Ends the session, so rust_socketio's reader task stops too.
async fn close(client: &Client) {
    if let Ok(Err(e)) = tokio::time::timeout(WRITE_TIMEOUT, client.disconnect()).await {
        tracing::debug!(error = %e, "closing a peer link failed");
    }
}
