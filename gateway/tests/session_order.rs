//! Per-session order through the gateway, with real stickyio nodes: two
//! requests of one Engine.IO session, written microseconds apart on two
//! client connections, reach the node in the order they were sent.
//!
//! Each case runs many times, because a proxy that reorders does so only
//! some of the time (about one run in three before the gateway kept order).
//! Raw sockets fix the client-side order exactly: the first request's bytes
//! are written before the second's.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUNDS: usize = 40;

/// A stickyio node on a runtime of its own with one thread, so that it
/// handles requests in the order they arrive, as a Node.js server does. (On
/// a multi-threaded runtime a node itself swaps two requests a few
/// microseconds apart about half the time, direct as well.)
struct SerialNode {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SerialNode {
    fn start(name: &'static str) -> SerialNode {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let node = start_node(name).await;
                addr_tx.send(node.local_addr()).unwrap();
                let _ = stopped.await;
                node.shutdown().await.unwrap();
            });
        });
        SerialNode {
            addr: addr_rx.recv().expect("node started"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for SerialNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn start_gateway(text: &str) -> stickyio_gateway::RunningGateway {
    let config: stickyio_shared::config::gateway::GatewayConfig =
        stickyio_shared::config::parse(text, "t.toml").expect("valid config");
    stickyio_gateway::Gateway::start(config)
        .await
        .expect("gateway starts")
}

/// One HTTP/1.1 keep-alive connection written to by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(source: Ipv4Addr, target: SocketAddr) -> Raw {
        Raw {
            stream: connect_from(source, target).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.expect("write");
    }

    /// Status and body of the next response (nodes send `Content-Length`).
    async fn response(&mut self) -> (u16, String) {
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
                        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                        .expect("content-length");
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

/// Opens a session and connects the main namespace on `conn`; returns the sid.
async fn open_session(conn: &mut Raw) -> String {
    conn.send("GET", "/socket.io/?EIO=4&transport=polling", "")
        .await;
    let (status, open) = conn.response().await;
    assert_eq!(status, 200, "{open}");
    let json: serde_json::Value = serde_json::from_str(&open[1..]).expect("open packet");
    let sid = json["sid"].as_str().expect("sid").to_owned();
    conn.send("POST", &poll_path(&sid), "40").await;
    assert_eq!(conn.response().await, (200, "ok".to_owned()));
    // socketioxide pings at once, so the connect may come second.
    for _ in 0..3 {
        conn.send("GET", &poll_path(&sid), "").await;
        let (status, packets) = conn.response().await;
        assert_eq!(status, 200, "{packets}");
        if packets.split('\u{1e}').any(|p| p.starts_with("40{")) {
            return sid;
        }
    }
    panic!("no namespace connect for {sid}");
}

fn poll_path(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// A masked client text frame (RFC 6455 §5.2), payload under 126 bytes.
fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server text frame, payload under 126 bytes.
async fn ws_read(stream: &mut TcpStream) -> String {
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.expect("frame head");
        let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
        stream
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        String::from_utf8(payload).expect("text")
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("frame in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_posted_right_after_a_long_poll_reaches_the_node_second() {
    let node = SerialNode::start("order-a");
    let text = gateway_toml(&[("order-a", node.addr)], "");
    let gw = start_gateway(&text).await;
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        let ip = client_ip(round);
        let mut setup = Raw::open(ip, gw.local_addr()).await;
        let sid = open_session(&mut setup).await;
        // Two kept-alive client connections, warmed by one request each (a
        // node only keeps order between connections it is already reading:
        // two fresh ones race in its accept loop, direct too).
        let mut poll = Raw::open(ip, gw.local_addr()).await;
        let mut close = Raw::open(ip, gw.local_addr()).await;
        for conn in [&mut poll, &mut close] {
            conn.send("GET", "/healthz", "").await;
            assert_eq!(conn.response().await.0, 200);
        }
        poll.send("GET", &poll_path(&sid), "").await;
        close.send("POST", &poll_path(&sid), "1").await;
        let (poll_reply, close_reply) = tokio::join!(poll.response(), close.response());
        assert_eq!(close_reply, (200, "ok".to_owned()), "round {round}");
        // In order, the pending poll is answered (a noop, or a ping sent just
        // before); swapped, the poll finds the session closed and gets 400.
        if poll_reply.0 != 200 {
            wrong.push((round, poll_reply));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} long polls reached the node after the close: {wrong:?}",
        wrong.len()
    );
    gw.shutdown().await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_frame_sent_before_a_poll_reaches_the_node_first() {
    let node = SerialNode::start("order-b");
    let text = gateway_toml(&[("order-b", node.addr)], "");
    let gw = start_gateway(&text).await;
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        let ip = client_ip(1000 + round);
        let mut polling = Raw::open(ip, gw.local_addr()).await;
        let sid = open_session(&mut polling).await;
        let mut ws = connect_from(ip, gw.local_addr()).await.expect("connect");
        let upgrade = format!(
            "GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nhost: gw\r\n\
             connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        ws.write_all(upgrade.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::time::timeout(TIMEOUT, ws.read_exact(&mut byte))
                .await
                .expect("101 in time")
                .unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        ws.write_all(&ws_frame("2probe")).await.unwrap();
        assert_eq!(ws_read(&mut ws).await, "3probe");
        // The upgrade completes, then a poll of the same session follows on
        // the kept-alive polling connection: the node must see the `5` first.
        ws.write_all(&ws_frame("5")).await.unwrap();
        polling.send("GET", &poll_path(&sid), "").await;
        let reply = polling.response().await;
        if reply.0 != 400 {
            wrong.push((round, reply));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} polls after an upgrade were served as if it had not happened: {wrong:?}",
        wrong.len()
    );
    gw.shutdown().await;
    drop(node);
}
