//! One virtual client: an Engine.IO session with a connected Socket.IO
//! socket on the main namespace, over long polling, websocket, or polling
//! upgraded to websocket (the official client's default).
//!
//! A session runs a reader task (long-poll GETs or websocket frames) that
//! answers pings and hands Socket.IO packets to [`Session::recv`], and a
//! writer task that sends what [`Session::send`] queues (batched POSTs or
//! websocket frames). Both bind the client's own source address.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol::{
    self, EnginePacket, RECORD_SEPARATOR, RawPacket, SocketPacket, parse_engine, parse_handshake,
};
use crate::report::Failure;
use crate::source;

/// How a session reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Polling,
    Websocket,
    /// Polling handshake and connect, then the websocket upgrade
    /// (`2probe`/`3probe`/`5`).
    Upgrade,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
            Transport::Upgrade => "upgrade",
        })
    }
}

/// Where sessions go.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The Engine.IO path, `/socket.io/` by default.
    pub path: String,
    /// How long one step (connect, handshake, a request) may take.
    pub timeout: Duration,
}

impl Target {
    fn uri(&self, transport: &str, sid: Option<&str>) -> String {
        let mut uri = format!("{}?EIO=4&transport={transport}", self.path);
        if let Some(sid) = sid {
            uri.push_str("&sid=");
            uri.push_str(sid);
        }
        uri
    }
}

/// What the reader hands a session: a packet, or why the session ended.
pub type Incoming = Result<RawPacket, Failure>;

/// Most packets [`Session::recv_raw_many`] takes at once.
const RECV_BATCH: usize = 256;

enum Outgoing {
    Packet(String),
    Close(oneshot::Sender<()>),
}

/// A connected client.
pub struct Session {
    pub sid: String,
    out: mpsc::UnboundedSender<Outgoing>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    tasks: Vec<JoinHandle<()>>,
    timeout: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Session {
    fn running(
        sid: String,
        out: mpsc::UnboundedSender<Outgoing>,
        incoming: mpsc::UnboundedReceiver<Incoming>,
        tasks: Vec<JoinHandle<()>>,
        target: &Target,
    ) -> Session {
        Session {
            sid,
            out,
            incoming,
            tasks,
            timeout: target.timeout,
        }
    }

    /// Handshake and Socket.IO connect; returns once the server has
    /// confirmed the socket (`40{"sid":…}`).
    pub async fn open(
        target: &Target,
        source: Ipv4Addr,
        transport: Transport,
    ) -> Result<Session, Failure> {
        match transport {
            Transport::Websocket => open_websocket(target, source).await,
            Transport::Polling | Transport::Upgrade => {
                open_polling(target, source, transport == Transport::Upgrade).await
            }
        }
    }

    /// Queues an Engine.IO packet (e.g. from [`protocol::event`]).
    pub fn send(&self, packet: String) -> Result<(), Failure> {
        self.out
            .send(Outgoing::Packet(packet))
            .map_err(|_| Failure::Closed)
    }

    /// The next Socket.IO packet as received, within `within`: for a hot
    /// path that reads only some fields of it.
    pub async fn recv_raw_within(&mut self, within: Duration) -> Result<RawPacket, Failure> {
        match tokio::time::timeout(within, self.incoming.recv()).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(Failure::Closed),
            Err(_) => Err(Failure::Timeout("packet")),
        }
    }

    /// Every packet already queued (at least one, waiting at most `within`
    /// for it), appended to `batch`: one wake-up and one timer per batch
    /// rather than per packet, for a subscriber receiving a flood. A
    /// reader's failure arrives as an `Err` item after its last packet.
    pub async fn recv_raw_many(
        &mut self,
        batch: &mut Vec<Incoming>,
        within: Duration,
    ) -> Result<(), Failure> {
        match tokio::time::timeout(within, self.incoming.recv_many(batch, RECV_BATCH)).await {
            Ok(0) => Err(Failure::Closed),
            Ok(_) => Ok(()),
            Err(_) => Err(Failure::Timeout("packet")),
        }
    }

    /// The next Socket.IO packet, within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Result<SocketPacket, Failure> {
        let raw = self.recv_raw_within(within).await?;
        raw.parse().map_err(|e| Failure::Protocol(e.to_string()))
    }

    /// The next Socket.IO packet, within the target's step timeout.
    pub async fn recv(&mut self) -> Result<SocketPacket, Failure> {
        self.recv_within(self.timeout).await
    }

    /// Emits `name` with an ack id and waits for that ack, queueing no
    /// other packet meanwhile (used before a workload starts).
    pub async fn request(
        &mut self,
        name: &str,
        arg: &serde_json::Value,
    ) -> Result<serde_json::Value, Failure> {
        const ID: u64 = 0;
        self.send(protocol::event(name, arg, Some(ID)))?;
        loop {
            match self.recv().await? {
                SocketPacket::Ack { id: ID, mut args } if !args.is_empty() => {
                    let reply = args.swap_remove(0);
                    if reply.get("ok") == Some(&serde_json::Value::Bool(true)) {
                        return Ok(reply);
                    }
                    return Err(Failure::Refused(format!("{name}: {reply}")));
                }
                SocketPacket::Event { .. } => continue,
                other => return Err(Failure::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Sends the Engine.IO close packet and waits until it is written.
    pub async fn close(mut self) -> Result<(), Failure> {
        let (done, written) = oneshot::channel();
        self.out
            .send(Outgoing::Close(done))
            .map_err(|_| Failure::Closed)?;
        // Once the close is out the reader may see the session end (a close
        // packet, or 400 for a poll that raced it): that is the point, not
        // a failure. Only the writer's own failure counts.
        match tokio::time::timeout(self.timeout, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.writer_failure()),
            Err(_) => Err(Failure::Timeout("close")),
        }
    }

    /// The failure a stopped writer reported, skipping packets.
    fn writer_failure(&mut self) -> Failure {
        while let Ok(item) = self.incoming.try_recv() {
            if let Err(failure) = item {
                return failure;
            }
        }
        Failure::Closed
    }
}

type HttpSender = SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection from `source`, its driver spawned.
async fn http_connection(
    target: &Target,
    source: Ipv4Addr,
) -> Result<(HttpSender, JoinHandle<()>), Failure> {
    let stream = step(target, "connect", source::connect(source, target.addr))
        .await?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let (sender, connection) = step(
        target,
        "http handshake",
        http1::handshake(TokioIo::new(stream)),
    )
    .await?
    .map_err(|e| Failure::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, driver))
}

async fn step<F: std::future::Future>(
    target: &Target,
    what: &'static str,
    future: F,
) -> Result<F::Output, Failure> {
    tokio::time::timeout(target.timeout, future)
        .await
        .map_err(|_| Failure::Timeout(what))
}

/// One HTTP/1.1 connection of a client, reopened from the same source
/// address when the server closed it: `@socket.io/sticky` (the Node.js
/// baseline) answers every request with `Connection: close`, as browsers
/// cope with too.
struct HttpLink {
    target: Target,
    source: Ipv4Addr,
    connection: Option<(HttpSender, JoinHandle<()>)>,
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.disconnect();
    }
}

impl HttpLink {
    fn new(target: &Target, source: Ipv4Addr) -> Self {
        HttpLink {
            target: target.clone(),
            source,
            connection: None,
        }
    }

    fn disconnect(&mut self) {
        if let Some((_, driver)) = self.connection.take() {
            driver.abort();
        }
    }

    /// The body of a 200 to `uri` (a POST of `post` if any), within `within`.
    async fn request(
        &mut self,
        uri: String,
        post: Option<String>,
        within: Duration,
    ) -> Result<String, Failure> {
        if self
            .connection
            .as_ref()
            .is_none_or(|(sender, _)| sender.is_closed())
        {
            self.disconnect();
            self.connection = Some(http_connection(&self.target, self.source).await?);
        }
        let Some((sender, _)) = self.connection.as_mut() else {
            return Err(Failure::Closed);
        };
        match exchange(sender, &self.target, uri, post, within).await {
            Ok((body, true)) => Ok(body),
            Ok((body, false)) => {
                self.disconnect();
                Ok(body)
            }
            Err(failure) => {
                self.disconnect();
                Err(failure)
            }
        }
    }
}

/// One request; the body of a 200 and whether the connection stays open,
/// or the failure (a 400 with `Session ID unknown` counted on its own).
async fn exchange(
    sender: &mut HttpSender,
    target: &Target,
    uri: String,
    post: Option<String>,
    within: Duration,
) -> Result<(String, bool), Failure> {
    let mut builder = Request::builder()
        .uri(uri)
        .header(header::HOST, target.addr.to_string());
    let body = match post {
        Some(text) => {
            builder = builder
                .method(http::Method::POST)
                .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8");
            Full::new(Bytes::from(text))
        }
        None => Full::new(Bytes::new()),
    };
    let request = builder
        .body(body)
        .map_err(|e| Failure::Http(e.to_string()))?;
    let work = async {
        sender
            .ready()
            .await
            .map_err(|e| Failure::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Http(e.to_string()))?;
        let status = response.status();
        let keep_alive = !response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Http(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status == StatusCode::OK {
            Ok((text, keep_alive))
        } else if status == StatusCode::BAD_REQUEST && text.contains("Session ID unknown") {
            Err(Failure::SessionIdUnknown)
        } else {
            Err(Failure::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(within, work)
        .await
        .map_err(|_| Failure::Timeout("http response"))?
}

/// Splits a polling payload (or one websocket frame) into Engine.IO
/// packets, answering pings through `out` and passing Socket.IO packets on
/// unparsed, each sharing `payload`. `Ok(false)` when the server closed the
/// session.
fn dispatch(
    payload: &Utf8Bytes,
    out: &mpsc::UnboundedSender<Outgoing>,
    incoming: &mpsc::UnboundedSender<Incoming>,
) -> Result<bool, Failure> {
    let mut start = 0;
    for text in payload.as_str().split(RECORD_SEPARATOR) {
        let end = start + text.len();
        match parse_engine(text).map_err(|e| Failure::Protocol(e.to_string()))? {
            EnginePacket::Ping(data) => {
                let _ = out.send(Outgoing::Packet(format!("3{data}")));
            }
            EnginePacket::Message(_) => {
                // Past the one-byte Engine.IO type.
                let _ = incoming.send(Ok(RawPacket::new(payload.clone(), start + 1, end)));
            }
            EnginePacket::Close => return Ok(false),
            EnginePacket::Noop | EnginePacket::Pong(_) | EnginePacket::Upgrade => {}
            EnginePacket::Open(_) => return Err(Failure::Protocol("second open packet".into())),
        }
        start = end + RECORD_SEPARATOR.len_utf8();
    }
    Ok(true)
}

/// Sorts one packet that arrived before the server's `40{sid}`: `true`
/// when it is that confirmation, others kept in `early` for the workload.
fn connect_seen(item: Incoming, early: &mut Vec<RawPacket>) -> Result<bool, Failure> {
    let raw = item?;
    match raw.parse().map_err(|e| Failure::Protocol(e.to_string()))? {
        SocketPacket::Connect(_) => Ok(true),
        SocketPacket::ConnectError(e) => Err(Failure::Refused(format!("connect: {e}"))),
        _ => {
            early.push(raw);
            Ok(false)
        }
    }
}

/// Waits for the server's `40{sid}`, keeping earlier packets.
async fn await_connect(
    incoming: &mut mpsc::UnboundedReceiver<Incoming>,
    within: Duration,
) -> Result<Vec<RawPacket>, Failure> {
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, incoming.recv())
            .await
            .map_err(|_| Failure::Timeout("socket.io connect"))?
            .ok_or(Failure::Closed)?;
        if connect_seen(next, &mut early)? {
            return Ok(early);
        }
    }
}

async fn open_polling(
    target: &Target,
    source: Ipv4Addr,
    upgrade: bool,
) -> Result<Session, Failure> {
    let mut get = HttpLink::new(target, source);
    let open = get
        .request(target.uri("polling", None), None, target.timeout)
        .await?;
    let first = open.split(RECORD_SEPARATOR).next().unwrap_or_default();
    let handshake = match parse_engine(first) {
        Ok(EnginePacket::Open(json)) => {
            parse_handshake(json).map_err(|e| Failure::Protocol(e.to_string()))?
        }
        _ => {
            return Err(Failure::Protocol(format!(
                "expected an open packet, got {open:.80}"
            )));
        }
    };
    let sid = handshake.sid;
    // The connect request goes on the same connection, before any long poll.
    let ok = get
        .request(
            target.uri("polling", Some(&sid)),
            Some("40".into()),
            target.timeout,
        )
        .await?;
    if ok != "ok" {
        return Err(Failure::Protocol(format!("connect POST answered {ok:.80}")));
    }
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    // Until `40{sid}` arrives, GET on this connection.
    let deadline = tokio::time::Instant::now() + target.timeout;
    let mut early = Vec::new();
    'connect: loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let payload = get
            .request(target.uri("polling", Some(&sid)), None, left)
            .await?;
        if !dispatch(&payload.into(), &out_tx, &in_tx)? {
            return Err(Failure::Closed);
        }
        while let Ok(item) = in_rx.try_recv() {
            if connect_seen(item, &mut early)? {
                break 'connect;
            }
        }
    }
    for packet in early {
        let _ = in_tx.send(Ok(packet));
    }
    if upgrade {
        drop(get);
        return upgrade_to_websocket(target, source, sid, out_tx, out_rx, in_tx, in_rx).await;
    }
    let long_poll =
        Duration::from_millis(handshake.ping_interval + handshake.ping_timeout) + target.timeout;
    let reader = tokio::spawn(poll_loop(
        get,
        sid.clone(),
        long_poll,
        out_tx.clone(),
        in_tx.clone(),
    ));
    let writer = tokio::spawn(post_loop(
        HttpLink::new(target, source),
        sid.clone(),
        out_rx,
        in_tx,
    ));
    Ok(Session::running(
        sid,
        out_tx,
        in_rx,
        vec![reader, writer],
        target,
    ))
}

async fn poll_loop(
    mut get: HttpLink,
    sid: String,
    long_poll: Duration,
    out: mpsc::UnboundedSender<Outgoing>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let uri = get.target.uri("polling", Some(&sid));
    loop {
        let result = get
            .request(uri.clone(), None, long_poll)
            .await
            .and_then(|payload| dispatch(&payload.into(), &out, &incoming));
        match result {
            Ok(true) => {}
            Ok(false) => {
                let _ = incoming.send(Err(Failure::Closed));
                return;
            }
            Err(failure) => {
                let _ = incoming.send(Err(failure));
                return;
            }
        }
    }
}

/// Sends queued packets as POSTs on a second connection (opened on first
/// use), batching whatever queued up while the previous POST was out.
async fn post_loop(
    mut post: HttpLink,
    sid: String,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let uri = post.target.uri("polling", Some(&sid));
    let timeout = post.target.timeout;
    while let Some(first) = out.recv().await {
        let mut batch = Vec::new();
        let mut closing = None;
        let mut item = Some(first);
        while let Some(next) = item.take() {
            match next {
                Outgoing::Packet(p) => batch.push(p),
                Outgoing::Close(done) => {
                    batch.push("1".to_owned());
                    closing = Some(done);
                    break;
                }
            }
            item = out.try_recv().ok();
        }
        let body = batch.join(&RECORD_SEPARATOR.to_string());
        match post.request(uri.clone(), Some(body), timeout).await {
            Ok(_) => {
                if let Some(done) = closing {
                    let _ = done.send(());
                    return;
                }
            }
            Err(failure) => {
                let _ = incoming.send(Err(failure));
                return;
            }
        }
    }
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Bytes a websocket read asks for at most.
const READ_BUFFER: usize = 8 * 1024;

async fn ws_connect(target: &Target, source: Ipv4Addr, sid: Option<&str>) -> Result<Ws, Failure> {
    let stream = step(target, "connect", source::connect(source, target.addr))
        .await?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let url = format!("ws://{}{}", target.addr, target.uri("websocket", sid));
    // tungstenite zeroes its whole free read buffer before every read: at
    // the default 128 KiB that memset cost more than parsing the few
    // hundred bytes a fan-out read brings. Larger frames still fit, as the
    // buffer grows to the frame being read.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = step(
        target,
        "websocket handshake",
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
    )
    .await?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            if response.status() == StatusCode::BAD_REQUEST && body.contains("Session ID unknown") {
                Failure::SessionIdUnknown
            } else {
                Failure::Status(response.status().as_u16())
            }
        }
        other => Failure::WebSocket(other.to_string()),
    })?;
    Ok(ws)
}

async fn ws_text(ws: &mut Ws, target: &Target) -> Result<String, Failure> {
    loop {
        let frame = step(target, "websocket frame", ws.next()).await?;
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err(Failure::Closed),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Failure::WebSocket(e.to_string())),
        }
    }
}

async fn open_websocket(target: &Target, source: Ipv4Addr) -> Result<Session, Failure> {
    let mut ws = ws_connect(target, source, None).await?;
    let open = ws_text(&mut ws, target).await?;
    let sid = match parse_engine(&open) {
        Ok(EnginePacket::Open(json)) => {
            parse_handshake(json)
                .map_err(|e| Failure::Protocol(e.to_string()))?
                .sid
        }
        _ => {
            return Err(Failure::Protocol(format!(
                "expected an open packet, got {open:.80}"
            )));
        }
    };
    ws.send(Message::text("40"))
        .await
        .map_err(|e| Failure::WebSocket(e.to_string()))?;
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let requeue = in_tx.clone();
    // On failure the session drops, which stops its tasks.
    let mut session = over_websocket(ws, sid, (out_tx, out_rx), (in_tx, in_rx), target);
    for packet in await_connect(&mut session.incoming, target.timeout).await? {
        let _ = requeue.send(Ok(packet));
    }
    Ok(session)
}

/// A session whose packets now go over `ws`: its reader and writer tasks.
fn over_websocket(
    ws: Ws,
    sid: String,
    (out_tx, out_rx): (
        mpsc::UnboundedSender<Outgoing>,
        mpsc::UnboundedReceiver<Outgoing>,
    ),
    (in_tx, in_rx): (
        mpsc::UnboundedSender<Incoming>,
        mpsc::UnboundedReceiver<Incoming>,
    ),
    target: &Target,
) -> Session {
    let (sink, stream) = ws.split();
    let reader = tokio::spawn(ws_read_loop(stream, out_tx.clone(), in_tx.clone()));
    let writer = tokio::spawn(ws_write_loop(sink, out_rx, in_tx));
    Session::running(sid, out_tx, in_rx, vec![reader, writer], target)
}

async fn upgrade_to_websocket(
    target: &Target,
    source: Ipv4Addr,
    sid: String,
    out_tx: mpsc::UnboundedSender<Outgoing>,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
    in_tx: mpsc::UnboundedSender<Incoming>,
    in_rx: mpsc::UnboundedReceiver<Incoming>,
) -> Result<Session, Failure> {
    let mut ws = ws_connect(target, source, Some(&sid)).await?;
    ws.send(Message::text("2probe"))
        .await
        .map_err(|e| Failure::WebSocket(e.to_string()))?;
    let probe = ws_text(&mut ws, target).await?;
    if probe != "3probe" {
        return Err(Failure::Protocol(format!(
            "expected 3probe, got {probe:.80}"
        )));
    }
    ws.send(Message::text("5"))
        .await
        .map_err(|e| Failure::WebSocket(e.to_string()))?;
    Ok(over_websocket(
        ws,
        sid,
        (out_tx, out_rx),
        (in_tx, in_rx),
        target,
    ))
}

async fn ws_read_loop(
    mut stream: futures_util::stream::SplitStream<Ws>,
    out: mpsc::UnboundedSender<Outgoing>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let failure = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => match dispatch(&text, &out, &incoming) {
                Ok(true) => {}
                Ok(false) => break Failure::Closed,
                Err(failure) => break failure,
            },
            Some(Ok(Message::Close(_))) | None => break Failure::Closed,
            Some(Ok(_)) => {}
            Some(Err(e)) => break Failure::WebSocket(e.to_string()),
        }
    };
    let _ = incoming.send(Err(failure));
}

async fn ws_write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    while let Some(item) = out.recv().await {
        let result = match item {
            Outgoing::Packet(text) => sink.send(Message::text(text)).await,
            Outgoing::Close(done) => {
                let result = async {
                    sink.send(Message::text("1")).await?;
                    sink.close().await
                }
                .await;
                if result.is_ok() {
                    let _ = done.send(());
                    return;
                }
                result
            }
        };
        if let Err(e) = result {
            let _ = incoming.send(Err(Failure::WebSocket(e.to_string())));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server that answers any request with `response`.
    async fn answering(response: &'static str) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(response.as_bytes()).await;
        });
        Target {
            addr,
            path: "/socket.io/".into(),
            timeout: Duration::from_secs(2),
        }
    }

    async fn get(target: &Target) -> Result<String, Failure> {
        let mut link = HttpLink::new(target, "127.0.0.1".parse().unwrap());
        link.request(target.uri("polling", Some("x")), None, target.timeout)
            .await
    }

    #[tokio::test]
    async fn session_id_unknown_is_its_own_kind() {
        let body = r#"{"code":1,"message":"Session ID unknown"}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let failure = get(&answering(response).await).await.unwrap_err();
        assert_eq!(failure.kind(), "session_id_unknown");
    }

    #[tokio::test]
    async fn other_statuses_are_counted_by_code() {
        let target =
            answering("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno").await;
        assert_eq!(get(&target).await.unwrap_err().kind(), "http_503");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = Target {
            addr,
            path: "/socket.io/".into(),
            timeout: Duration::from_secs(2),
        };
        let failure = Session::open(&target, "127.0.0.1".parse().unwrap(), Transport::Websocket)
            .await
            .err()
            .expect("nothing listens");
        assert_eq!(failure.kind(), "connect");
    }
}
