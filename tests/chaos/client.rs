//! A load client speaking Engine.IO v4 long-polling by hand through the
//! gateway, from its own 127.x.y.z address so the gateway places it like a
//! distinct user. It subscribes to one topic, publishes on a timer, answers
//! pings, and records everything the checks need: the node of each session,
//! every error, every acked publish and every message received.
//!
//! A session ends on any failed request, or on a poll silent for longer than
//! `pingInterval + pingTimeout` (a frozen node); the client then handshakes
//! again through the gateway, as socket.io-client does, and resubscribes
//! from the last cursor it got (`subscribe {pattern, since}`: from a message,
//! or from the last subscribe ack), as the README tells apps to.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use stickyio_testkit::Reply;
use stickyio_testkit::polling::SEP;
use tokio_util::sync::CancellationToken;

use crate::processes::{ping_interval, ping_timeout};

/// Longest wait for any one request: a node silent for longer than its
/// `pingInterval + pingTimeout` is as dead to a client as one that is gone.
fn request_timeout() -> Duration {
    ping_interval() + ping_timeout()
}
/// Pause between two failed handshakes.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// An acked publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub topic: String,
    /// The node that acked it (the publisher's node then).
    pub origin: String,
    /// When it was posted: a subscription acked before this certainly
    /// covers it.
    pub sent_at: Instant,
    pub acked_at: Instant,
}

/// A session: which node, from when to when.
#[derive(Debug, Clone)]
pub struct Session {
    pub node: String,
    pub subscribed_at: Instant,
    pub ended_at: Option<Instant>,
    /// Whether it resumed every missed message: `false` when it subscribed
    /// without a cursor (the first session) or the resume was not recovered.
    pub resumed: bool,
    /// Why a resume was not recovered, as its ack said.
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
pub struct Record {
    pub sessions: Vec<Session>,
    pub errors: Vec<(Instant, String)>,
    pub published: Vec<Published>,
    /// Publishes sent whose ack never came (their session broke first).
    /// When each was sent.
    pub unconfirmed: Vec<Instant>,
    /// Every message id received, with the session (index in `sessions`)
    /// of each delivery.
    pub received: HashMap<String, Vec<usize>>,
    /// The cursor of the last message received, or of the last subscribe
    /// ack if later: where a new session resumes.
    pub cursor: Option<String>,
    /// Every resume: whether the history reached back, and what it replayed.
    pub resumes: Vec<Resume>,
    /// While a session is being opened: since when the current step runs,
    /// and which (the report of a client that is slow to come back).
    pub opening: Option<(Instant, String)>,
}

/// The ack of one `subscribe {pattern, since}`.
#[derive(Debug, Clone)]
pub struct Resume {
    pub recovered: bool,
    pub replayed: u64,
    /// Why not recovered (`restarted`, `too_old`), as the ack says.
    pub reason: Option<String>,
    /// The node that answered.
    pub node: String,
}

impl Record {
    pub fn node_at(&self, at: Instant) -> Option<&str> {
        self.sessions
            .iter()
            .find(|s| s.subscribed_at <= at && s.ended_at.is_none_or(|e| e > at))
            .map(|s| s.node.as_str())
    }
}

pub struct LoadClient {
    pub topic: String,
    pub record: Arc<Mutex<Record>>,
    /// Cancelled to end publishing while the client keeps reading.
    publishing: CancellationToken,
}

/// Why a session ended.
type Broken = String;

struct Conn {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base: String,
    sid: String,
    node: String,
    /// One POST at a time: pongs (from the poller) and publishes share it.
    posting: tokio::sync::Mutex<()>,
}

impl Conn {
    async fn request(
        &self,
        method: Method,
        query: &str,
        body: String,
        limit: Duration,
    ) -> Result<(StatusCode, Option<String>, String), Broken> {
        let req = Request::builder()
            .method(method)
            .uri(format!(
                "{}/socket.io/?EIO=4&transport=polling{query}",
                self.base
            ))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let res = self
                .http
                .request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let reply = Reply::read(res).await?;
            Ok((reply.status, reply.node, reply.body))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| format!("no answer in {limit:?}"))?
    }

    /// A failed request, saying which node answered (none: the gateway).
    fn refused(&self, what: &str, status: StatusCode, body: &str, node: Option<String>) -> Broken {
        let node = node.as_deref().unwrap_or("the gateway");
        format!(
            "{what}: {status} {body} (sid {}, answered by {node})",
            self.sid
        )
    }

    /// POSTs `payload`; the wait for an earlier POST counts in its time
    /// limit, so a dead node is noticed within one limit, not two.
    async fn post(&self, payload: String) -> Result<(), Broken> {
        let query = format!("&sid={}", self.sid);
        let exchange = async {
            let _one = self.posting.lock().await;
            self.request(Method::POST, &query, payload, request_timeout())
                .await
        };
        let (status, answered, body) =
            tokio::time::timeout(request_timeout(), exchange)
                .await
                .map_err(|_| format!("post: no answer in {:?}", request_timeout()))??;
        if status != StatusCode::OK {
            return Err(self.refused("post", status, &body, answered));
        }
        Ok(())
    }

    /// One long-poll: the packets, pings already answered.
    async fn poll(&self) -> Result<Vec<String>, Broken> {
        let query = format!("&sid={}", self.sid);
        let (status, answered, body) = self
            .request(Method::GET, &query, String::new(), request_timeout())
            .await?;
        if status != StatusCode::OK {
            return Err(self.refused("poll", status, &body, answered));
        }
        let packets: Vec<String> = body.split(SEP).map(str::to_owned).collect();
        for packet in &packets {
            match packet.as_str() {
                "2" => self.post("3".to_owned()).await?,
                "1" => return Err("the node closed the session".into()),
                _ => {}
            }
        }
        Ok(packets)
    }
}

/// The packet emitting `event` with `arg`, asking for ack `id`.
fn emit(id: u64, event: &str, arg: &Value) -> String {
    format!("42{id}{}", json!([event, arg]))
}

/// The first argument of an ack packet `43<id>[…]` for `id`.
fn ack_of(packet: &str, id: u64) -> Option<Value> {
    let rest = packet.strip_prefix(&format!("43{id}"))?;
    let args: Value = serde_json::from_str(rest).ok()?;
    Some(args[0].clone())
}

impl LoadClient {
    pub fn new(topic: String, publishing: CancellationToken) -> Self {
        LoadClient {
            topic,
            record: Arc::new(Mutex::new(Record::default())),
            publishing,
        }
    }

    /// Records the `message` packets among `packets`: their ids, under the
    /// current session (`in_session`) or the one being opened, and the
    /// last cursor.
    fn record_messages(&self, packets: &[String], in_session: bool) {
        let mut record = self.record.lock().expect("record");
        for packet in packets {
            let Some(rest) = packet.strip_prefix("42[\"message\",") else {
                continue;
            };
            let message: Value =
                serde_json::from_str(rest.trim_end_matches(']')).unwrap_or(Value::Null);
            let id = message["id"].as_str().unwrap_or("?").to_owned();
            let session = record.sessions.len() - usize::from(in_session);
            record.received.entry(id).or_default().push(session);
            if let Some(cursor) = message["cursor"].as_str() {
                record.cursor = Some(cursor.to_owned());
            }
        }
    }

    fn step(&self, step: &str) {
        self.record.lock().expect("record").opening = Some((Instant::now(), step.to_owned()));
    }

    fn note_error(&self, error: String) {
        let mut record = self.record.lock().expect("record");
        record.errors.push((Instant::now(), error));
    }

    /// Handshake, namespace connect and subscribe; the open session.
    /// The open session, and whether it resumed from a cursor with nothing
    /// missing.
    async fn open(
        &self,
        source: Ipv4Addr,
        gateway: SocketAddr,
    ) -> Result<(Conn, bool, Option<String>), Broken> {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(IpAddr::V4(source)));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(connector);
        let mut conn = Conn {
            http,
            base: format!("http://{gateway}"),
            sid: String::new(),
            node: String::new(),
            posting: tokio::sync::Mutex::new(()),
        };
        self.step("handshake");
        let (status, node, body) = conn
            .request(Method::GET, "", String::new(), request_timeout())
            .await?;
        if status != StatusCode::OK {
            return Err(format!("handshake: {status} {body}"));
        }
        let open: Value =
            serde_json::from_str(body.split(SEP).next().unwrap_or("").trim_start_matches('0'))
                .map_err(|e| format!("open packet {body:?}: {e}"))?;
        conn.sid = open["sid"].as_str().ok_or("no sid")?.to_owned();
        conn.node = node.ok_or("no node header")?;
        self.step(&format!("namespace connect on {}", conn.node));
        conn.post("40".to_owned()).await?;
        // Nothing is emitted before the namespace connect is acked, as
        // socket.io-client does: the server closes a session whose event
        // arrives before its connect has completed (socket.io does the same).
        let mut connected = false;
        for _ in 0..10 {
            for packet in conn.poll().await? {
                if packet.starts_with("44") {
                    return Err(format!("connect refused: {packet}"));
                }
                connected |= packet.starts_with("40{");
            }
            if connected {
                break;
            }
        }
        if !connected {
            return Err("no connect ack in 10 polls".into());
        }
        let ack = 0;
        let since = self.record.lock().expect("record").cursor.clone();
        let subscribe = match &since {
            Some(since) => json!({ "pattern": self.topic, "since": since }),
            None => json!(self.topic),
        };
        self.step(&format!("subscribe on {}", conn.node));
        conn.post(emit(ack, "subscribe", &subscribe)).await?;
        for _ in 0..10 {
            let packets = conn.poll().await?;
            // Replayed messages come before the ack, live ones after it,
            // maybe in the same poll: taken in order, so the cursor kept is
            // the latest.
            let mut acked = None;
            for packet in packets {
                let Some(reply) = ack_of(&packet, ack).filter(|_| acked.is_none()) else {
                    self.record_messages(std::slice::from_ref(&packet), false);
                    continue;
                };
                if reply["ok"] != true {
                    return Err(format!("subscribe refused: {reply}"));
                }
                let recovered = reply["recovered"] == true;
                let mut record = self.record.lock().expect("record");
                if since.is_some() {
                    record.resumes.push(Resume {
                        recovered,
                        replayed: reply["replayed"].as_u64().unwrap_or(0),
                        reason: reply["reason"].as_str().map(str::to_owned),
                        node: conn.node.clone(),
                    });
                }
                // The position as the subscription began: a session that
                // gets no message before it breaks resumes here.
                match reply["cursor"].as_str() {
                    Some(cursor) => record.cursor = Some(cursor.to_owned()),
                    None => return Err(format!("a subscribe ack without a cursor: {reply}")),
                }
                acked = Some((recovered, reply["reason"].as_str().map(str::to_owned)));
            }
            if let Some((recovered, reason)) = acked {
                return Ok((conn, recovered, reason));
            }
        }
        Err("no subscribe ack in 10 polls".into())
    }

    /// Runs sessions until `stop`, publishing every `every` once subscribed
    /// (not at all when `every` is `None`).
    pub async fn run(
        self: Arc<Self>,
        source: Ipv4Addr,
        gateway: SocketAddr,
        topics: Vec<String>,
        every: Option<Duration>,
        stop: CancellationToken,
    ) {
        let mut seq = 0usize;
        while !stop.is_cancelled() {
            let (conn, resumed, reason) = match self.open(source, gateway).await {
                Ok((conn, resumed, reason)) => (Arc::new(conn), resumed, reason),
                Err(e) => {
                    self.note_error(e);
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_PAUSE) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            let session = {
                let mut record = self.record.lock().expect("record");
                record.opening = None;
                record.sessions.push(Session {
                    node: conn.node.clone(),
                    subscribed_at: Instant::now(),
                    ended_at: None,
                    resumed,
                    reason,
                });
                record.sessions.len() - 1
            };
            let ended = self.serve(conn, &topics, every, &mut seq, &stop).await;
            let mut record = self.record.lock().expect("record");
            record.sessions[session].ended_at = Some(Instant::now());
            if let Err(e) = ended {
                record.errors.push((Instant::now(), e));
            }
        }
    }

    /// One session: polls (in a task of its own, so a publish never cuts a
    /// long-poll short), publishes and records until it breaks or `stop`.
    async fn serve(
        &self,
        conn: Arc<Conn>,
        topics: &[String],
        every: Option<Duration>,
        seq: &mut usize,
        stop: &CancellationToken,
    ) -> Result<(), Broken> {
        // Unbounded: the poller never waits for this loop, so a ping is
        // answered as soon as it arrives, as a socket.io transport does.
        let (tx, mut polls) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn({
            let conn = conn.clone();
            async move {
                loop {
                    let polled = conn.poll().await;
                    let failed = polled.is_err();
                    if tx.send(polled).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let mut pending: HashMap<u64, (String, Instant)> = HashMap::new();
        let mut next_ack = 1;
        let mut ticker = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
        ticker.tick().await;
        // On `stop`, publishing ends and the acks still due are awaited.
        let mut drain_until: Option<tokio::time::Instant> = None;
        let result = loop {
            if drain_until.is_some() && pending.is_empty() {
                break Ok(());
            }
            let packets = tokio::select! {
                () = stop.cancelled(), if drain_until.is_none() => {
                    drain_until = Some(tokio::time::Instant::now() + request_timeout());
                    continue;
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => {
                    break Ok(());
                }
                _ = ticker.tick(), if every.is_some() && drain_until.is_none() && !self.publishing.is_cancelled() => {
                    let topic = topics[*seq % topics.len()].clone();
                    *seq += 1;
                    let packet = emit(next_ack, "publish", &json!({ "topic": topic, "content": *seq }));
                    pending.insert(next_ack, (topic, Instant::now()));
                    next_ack += 1;
                    if let Err(e) = conn.post(packet).await {
                        break Err(e);
                    }
                    continue;
                }
                polled = polls.recv() => match polled {
                    Some(Ok(packets)) => packets,
                    Some(Err(e)) => break Err(e),
                    None => break Err("the poller stopped".into()),
                },
            };
            self.record_messages(&packets, true);
            let mut record = self.record.lock().expect("record");
            for packet in packets {
                if let Some(rest) = packet.strip_prefix("43") {
                    let digits = rest.chars().take_while(char::is_ascii_digit).count();
                    let Ok(id) = rest[..digits].parse::<u64>() else {
                        continue;
                    };
                    let Some((topic, sent_at)) = pending.remove(&id) else {
                        continue;
                    };
                    let reply = ack_of(&packet, id).unwrap_or(Value::Null);
                    match reply["id"].as_str() {
                        Some(message) if reply["ok"] == true => record.published.push(Published {
                            id: message.to_owned(),
                            topic,
                            origin: conn.node.clone(),
                            sent_at,
                            acked_at: Instant::now(),
                        }),
                        _ => record
                            .errors
                            .push((Instant::now(), format!("publish refused: {reply}"))),
                    }
                }
            }
        };
        poller.abort();
        self.record
            .lock()
            .expect("record")
            .unconfirmed
            .extend(pending.values().map(|(_, sent_at)| *sent_at));
        result
    }
}
