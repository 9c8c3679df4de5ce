//! Per-session order through the gateway: two requests of one Engine.IO
//! session, written microseconds apart on two kept-alive client connections,
//! reach the node in the order they were sent. The cases that found the bug:
//! - a long-poll `GET`, then a `POST` carrying the close packet: swapped, a
//!   node answers the poll with 400 instead of a noop;
//! - after an upgrade, a frame on the websocket, then a polling `GET`:
//!   swapped, the node serves the poll as if the upgrade had not happened.
//!
//! The node here is a recorder: one thread that logs each request head and
//! each websocket read the moment it has it, so its log is the order in
//! which the gateway's writes reached it. (A real Socket.IO server is no
//! instrument at these gaps: socketioxide and Node.js each handle a POST
//! that arrived after a GET first some of the time, even direct.) Each case
//! runs 40 rounds. Against the gateway as it was before it kept order, 9 to
//! 33 rounds in 40 swapped; since, about one round in 2,000. That one is
//! below what any reader of two sockets can promise: two requests that
//! become readable in the same microseconds can come out of epoll in either
//! order. So a run may show one swap, never more ([`TOLERATED`]).

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUNDS: usize = 40;
/// Swaps a run may show (see the module doc): without per-session order it
/// is 9 or more.
const TOLERATED: usize = 1;

type Log = Arc<Mutex<Vec<String>>>;

/// The recording node, on a single-threaded runtime of its own.
struct Recorder {
    addr: SocketAddr,
    log: Log,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn sid_of<B>(req: &Request<B>) -> String {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("sid="))
        .unwrap_or("-")
        .to_owned()
}

async fn record(
    log: Log,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let sid = sid_of(&req);
    log.lock().unwrap().push(format!("{} {sid}", req.method()));
    if req.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 256];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                log.lock().unwrap().push(format!("frame {sid}"));
            }
        });
        let mut res = Response::new(Full::default());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        res.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(res);
    }
    let handshake = sid == "-" && req.uri().query().is_some_and(|q| q.contains("EIO=4"));
    let _ = req.into_body().collect().await?;
    if handshake {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let open = format!(
            "0{{\"sid\":\"rec{n}\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000}}"
        );
        return Ok(Response::new(Full::new(Bytes::from(open))));
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

impl Recorder {
    fn start() -> Recorder {
        let log: Log = Arc::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_log = log.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let serve = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let log = server_log.clone();
                        tokio::spawn(async move {
                            let service =
                                hyper::service::service_fn(move |req| record(log.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Recorder {
            addr: addr_rx.recv().expect("recorder started"),
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// What the recorder logged for `sid`, in order.
    fn of(&self, sid: &str) -> Vec<String> {
        let suffix = format!(" {sid}");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.ends_with(&suffix))
            .map(|e| e.trim_end_matches(&suffix).to_owned())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One HTTP/1.1 keep-alive connection written to by hand, so a request's
/// bytes leave exactly when the test says.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(source: Ipv4Addr, target: SocketAddr) -> Raw {
        let stream = connect_from(source, target).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.expect("write");
    }

    /// Reads the next response; returns its status. Bodies are
    /// `Content-Length` framed (the recorder's `ok`, an open packet, or
    /// empty).
    async fn response(&mut self) -> u16 {
        self.response_body().await.0
    }

    async fn response_body(&mut self) -> (u16, String) {
        let read = async {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut res = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(len) = res.parse(&self.buf).expect("a response") {
                    let status = res.code.expect("status");
                    let length: usize = res
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |h| {
                            std::str::from_utf8(h.value).unwrap().parse().unwrap()
                        });
                    if self.buf.len() >= len + length {
                        let body =
                            String::from_utf8_lossy(&self.buf[len..len + length]).into_owned();
                        self.buf.drain(..len + length);
                        return (status, body);
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed before a whole response");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("response in time")
    }
}

/// A masked client text frame (RFC 6455 §5.2), payload under 126 bytes.
fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn poll_path(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// Opens a session on `conn`, which warms it (and, through the gateway,
/// its node connection). Returns the sid the client got, and the node's.
async fn handshake(conn: &mut Raw) -> (String, String) {
    conn.send("GET", "/socket.io/?EIO=4&transport=polling", "")
        .await;
    let (status, body) = conn.response_body().await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value = serde_json::from_str(&body[1..]).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let node_sid = sid.rsplit('.').next().unwrap_or_default().to_owned();
    (sid, node_sid)
}

/// Warms a connection (and, through the gateway, its node connection).
async fn warm(conn: &mut Raw) {
    conn.send("GET", "/warm-up", "").await;
    assert_eq!(conn.response().await, 200);
}

/// Rounds in which the recorder saw the close `POST` before the long-poll
/// `GET` written just before it.
async fn close_after_poll(
    recorder: &Recorder,
    target: SocketAddr,
    block: u8,
) -> Vec<(usize, Vec<String>)> {
    let mut swapped = Vec::new();
    for round in 0..ROUNDS {
        let ip = Ipv4Addr::new(127, 0, block, round as u8 + 1);
        let mut poll = Raw::open(ip, target).await;
        let mut close = Raw::open(ip, target).await;
        let (sid, node_sid) = handshake(&mut poll).await;
        warm(&mut close).await;
        poll.send("GET", &poll_path(&sid), "").await;
        close.send("POST", &poll_path(&sid), "1").await;
        let (polled, closed) = tokio::join!(poll.response(), close.response());
        assert_eq!((polled, closed), (200, 200), "round {round}");
        let seen = recorder.of(&node_sid);
        if seen != ["GET", "POST"] {
            swapped.push((round, seen));
        }
    }
    swapped
}

/// Rounds in which the recorder saw the polling `GET` before the websocket
/// frame sent just before it.
async fn poll_after_frame(
    recorder: &Recorder,
    target: SocketAddr,
    block: u8,
) -> Vec<(usize, Vec<String>)> {
    let mut swapped = Vec::new();
    for round in 0..ROUNDS {
        let ip = Ipv4Addr::new(127, 0, block, round as u8 + 1);
        let mut polling = Raw::open(ip, target).await;
        let (sid, node_sid) = handshake(&mut polling).await;
        let mut ws = Raw::open(ip, target).await;
        let upgrade = format!(
            "GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nhost: gw\r\n\
             connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        ws.stream.write_all(upgrade.as_bytes()).await.unwrap();
        assert_eq!(ws.response().await, 101, "round {round}");
        ws.stream.write_all(&ws_frame("5")).await.unwrap();
        polling.send("GET", &poll_path(&sid), "").await;
        assert_eq!(polling.response().await, 200, "round {round}");
        let seen = recorder.of(&node_sid);
        if seen != ["GET", "frame", "GET"] {
            swapped.push((round, seen));
        }
    }
    swapped
}

async fn start_gateway(node: SocketAddr) -> stickyio_gateway::RunningGateway {
    let text = gateway_toml(&[("recorder", node)], "");
    let config: stickyio_shared::config::gateway::GatewayConfig =
        stickyio_shared::config::parse(&text, "t.toml").expect("valid config");
    stickyio_gateway::Gateway::start(config)
        .await
        .expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_posted_right_after_a_long_poll_reaches_the_node_second() {
    let recorder = Recorder::start();
    let gw = start_gateway(recorder.addr).await;
    let swapped = close_after_poll(&recorder, gw.local_addr(), 42).await;
    assert!(
        swapped.len() <= TOLERATED,
        "{} of {ROUNDS} closes reached the node before the long poll sent first: {swapped:?}",
        swapped.len()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_frame_sent_before_a_poll_reaches_the_node_first() {
    let recorder = Recorder::start();
    let gw = start_gateway(recorder.addr).await;
    let swapped = poll_after_frame(&recorder, gw.local_addr(), 44).await;
    assert!(
        swapped.len() <= TOLERATED,
        "{} of {ROUNDS} polls reached the node before the websocket frame sent first: {swapped:?}",
        swapped.len()
    );
    gw.shutdown().await;
}
