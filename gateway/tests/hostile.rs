//! Hostile clients against a spawned `stickyio-gateway` process (so its
//! memory can be read from /proc), in front of real in-process nodes:
//! thousands of idle connections, slowloris headers, slow bodies, header
//! floods, oversized bodies, invalid Engine.IO requests, duplicate polls on
//! one sid, and a websocket client that never reads. Each gets a clear status
//! or a close, real clients keep being served, memory stays bounded, and the
//! process never dies.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use http::StatusCode;
use stickyio_node::Node;
use stickyio_shared::config::node::NodeConfig;
use stickyio_testkit::ChildProcess;
use stickyio_testkit::websocket::subscribe_over_websocket;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_stickyio-gateway");

/// A gateway process; killed when dropped.
struct GatewayProcess {
    process: ChildProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

impl GatewayProcess {
    async fn start(tag: &str, nodes: &[(&str, SocketAddr)], limits: &str) -> Self {
        let dir = TempDir::new(tag);
        let port = free_port();
        let text = gateway_toml(nodes, "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ) + &format!("\n[limits]\n{limits}\n");
        let config = dir.path("gateway.toml");
        std::fs::write(&config, text).unwrap();
        let process = ChildProcess::spawn(
            ChildProcess::quiet(BIN).arg("--config").arg(&config),
            "stickyio-gateway",
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let gateway = GatewayProcess {
            process,
            addr,
            _dir: dir,
        };
        eventually("the gateway to listen", || async {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
        gateway
    }

    /// Resident memory, in KiB.
    fn rss_kb(&self) -> u64 {
        self.process.rss_kb()
    }

    fn assert_alive(&mut self) {
        self.process.assert_running("the hostile clients");
    }

    /// A few full sessions from fresh addresses all succeed.
    async fn serves_real_clients(&self, first: usize) {
        for i in first..first + 5 {
            run_session(client_ip(i), self.addr, "hostile.ok")
                .await
                .unwrap_or_else(|e| panic!("a real client was not served: {e}"));
        }
    }
}

/// Reads until the peer closes; what it sent. `None` if still open at `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn five_thousand_idle_connections_are_closed_and_real_clients_served_meanwhile() {
    let node = start_node("node-a").await;
    let mut gw = GatewayProcess::start(
        "idle",
        &node_list(std::slice::from_ref(&node)),
        "header_read_timeout = \"6s\"",
    )
    .await;
    let before = gw.rss_kb();
    let mut idle = Vec::with_capacity(5000);
    for i in 0..5000 {
        // 127.40.x.y: distinct sources, as from that many clients.
        let source = Ipv4Addr::new(127, 40, (i / 250) as u8, (i % 250) as u8 + 1);
        idle.push(connect_from(source, gw.addr).await.expect("idle connect"));
    }
    let opened = Instant::now();
    gw.serves_real_clients(0).await;
    gw.process
        .assert_rss_bounded(before, "5,000 idle connections");
    // Every idle connection is closed by the header read timeout.
    let mut reads = tokio::task::JoinSet::new();
    for mut stream in idle {
        reads.spawn(async move { read_until_closed(&mut stream, Duration::from_secs(20)).await });
    }
    let mut closed = 0;
    while let Some(read) = reads.join_next().await {
        if read.expect("reader").is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 5000, "idle connections left open");
    assert!(
        opened.elapsed() < Duration::from_secs(20),
        "{:?}",
        opened.elapsed()
    );
    gw.serves_real_clients(10).await;
    gw.assert_alive();
    let _ = node.shutdown().await;
}

#[tokio::test]
async fn slowloris_headers_and_slow_bodies_are_cut_off() {
    let node = start_node("node-a").await;
    let mut gw = GatewayProcess::start(
        "slow",
        &node_list(std::slice::from_ref(&node)),
        "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"",
    )
    .await;
    let before = gw.rss_kb();
    let started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..200usize {
        let addr = gw.addr;
        attackers.spawn(async move {
            let source = Ipv4Addr::new(127, 41, 0, (i % 250) as u8 + 1);
            let mut stream = connect_from(source, addr).await.expect("connect");
            let _ = stream
                .write_all(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nhost: x\r\n")
                .await;
            // One header byte every 200 ms, forever.
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    tokio::select! {
                        // EOF or a reset (the gateway closed with our
                        // trickled bytes unread): closed either way.
                        _ = stream.read_to_end(&mut out) => return true,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stream.write_all(b"x").await.is_err() {
                                return true;
                            }
                        }
                    }
                }
            })
            .await
            .unwrap_or(false)
        });
    }
    // Slow bodies: a live session, then POSTs that promise 64 KiB and
    // trickle it. The node is kept waiting; the gateway answers 504.
    let session = PollingSession::open(client_ip(100), gw.addr)
        .await
        .expect("session");
    let sid = session.sid.clone();
    let mut bodies = tokio::task::JoinSet::new();
    for i in 0..20usize {
        let (addr, sid) = (gw.addr, sid.clone());
        bodies.spawn(async move {
            let source = Ipv4Addr::new(127, 42, 0, i as u8 + 1);
            let mut stream = connect_from(source, addr).await.expect("connect");
            let head = format!(
                "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 65536\r\n\r\n4"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let mut out = vec![0u8; 4096];
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    tokio::select! {
                        read = stream.read(&mut out) => {
                            return String::from_utf8_lossy(&out[..read.unwrap_or(0)]).into_owned();
                        }
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            let _ = stream.write_all(b"2").await;
                        }
                    }
                }
            })
            .await
            .unwrap_or_else(|_| "still open".to_owned())
        });
    }
    gw.serves_real_clients(20).await;
    while let Some(cut) = attackers.join_next().await {
        assert!(
            cut.expect("attacker"),
            "a slowloris connection was not closed"
        );
    }
    while let Some(reply) = bodies.join_next().await {
        let reply = reply.expect("slow body");
        assert!(
            reply.is_empty()
                || reply.starts_with("HTTP/1.1 504")
                || reply.starts_with("HTTP/1.1 408"),
            "a slow body got {reply:?}"
        );
        assert_ne!(reply, "still open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    gw.process
        .assert_rss_bounded(before, "slowloris and slow bodies");
    gw.serves_real_clients(30).await;
    gw.assert_alive();
    let _ = node.shutdown().await;
}

#[tokio::test]
async fn header_floods_and_oversized_bodies_get_4xx_and_memory_stays_bounded() {
    let node = start_node("node-a").await;
    let mut gw = GatewayProcess::start(
        "flood",
        &node_list(std::slice::from_ref(&node)),
        "max_body_bytes = 65536",
    )
    .await;
    let before = gw.rss_kb();
    let many_headers: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "a".repeat(64 * 1024));
    let mut floods = tokio::task::JoinSet::new();
    for i in 0..300usize {
        let addr = gw.addr;
        let headers = if i % 2 == 0 {
            many_headers.clone()
        } else {
            huge_header.clone()
        };
        floods.spawn(async move {
            let source = Ipv4Addr::new(127, 43, (i / 250) as u8, (i % 250) as u8 + 1);
            let mut stream = connect_from(source, addr).await.expect("connect");
            let request = format!(
                "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nhost: x\r\n{headers}\r\n"
            );
            let _ = stream.write_all(request.as_bytes()).await;
            read_until_closed(&mut stream, TIMEOUT)
                .await
                .unwrap_or_default()
        });
    }
    while let Some(reply) = floods.join_next().await {
        let reply = reply.expect("flood");
        assert!(
            reply.starts_with("HTTP/1.1 431"),
            "a header flood got {reply:?}"
        );
    }
    // Oversized bodies on live sessions' POSTs, refused by the gateway in
    // its own words (a node refuses 4 MiB too, but not as
    // `body_too_large`): declared (413 before any byte of the body is
    // read) and chunked (413 once past the limit). The chunked body stops
    // one byte past the limit, all of it read, so the gateway's close
    // sends no reset that could discard its answer. A fresh session each
    // time: a cut-off body ends the node's session.
    let over = 65536 + 1;
    for i in 0..10u8 {
        let session = PollingSession::open(client_ip(45 + usize::from(i)), gw.addr)
            .await
            .unwrap();
        let post = format!("/socket.io/?EIO=4&transport=polling&sid={}", session.sid);
        let declared = format!(
            "POST {post} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            4 * 1024 * 1024
        );
        let chunked = format!(
            "POST {post} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{over:x}\r\n{}",
            "z".repeat(over)
        );
        for (j, request) in [declared, chunked].into_iter().enumerate() {
            let source = Ipv4Addr::new(127, 44, j as u8, i + 1);
            let mut stream = connect_from(source, gw.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let reply = read_until_closed(&mut stream, TIMEOUT)
                .await
                .expect("the gateway answers and closes");
            assert!(
                reply.starts_with("HTTP/1.1 413") && reply.contains("\"error\":\"body_too_large\""),
                "{reply:?}"
            );
        }
    }
    gw.process
        .assert_rss_bounded(before, "header floods and oversized bodies");
    gw.serves_real_clients(40).await;
    gw.assert_alive();
    let _ = node.shutdown().await;
}

#[tokio::test]
async fn invalid_engine_io_requests_and_duplicate_polls_get_clear_answers() {
    // A short ping interval: a poll left waiting returns within it.
    let mut config = NodeConfig::standalone("node-a", "127.0.0.1:0".parse().unwrap());
    config.ping_interval = stickyio_shared::config::Duration::from_secs(2);
    let node = Node::bind(config).await.expect("node starts");
    let mut gw = GatewayProcess::start("eio", &node_list(std::slice::from_ref(&node)), "").await;
    let mut conn = HttpConn::open(client_ip(50), gw.addr).await.unwrap();
    for path in [
        "/socket.io/?EIO=9&transport=polling",
        "/socket.io/?EIO=banana&transport=polling",
        "/socket.io/?EIO=4&transport=carrier-pigeon",
        "/socket.io/?EIO=4&transport=polling&sid=no-such-session",
        "/socket.io/?EIO=4&transport=polling&sid=%00%ff%0d%0a",
        "/socket.io/?EIO=4&transport=websocket&sid=no-such-session",
    ] {
        let reply = conn
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.body
        );
        assert!(!reply.body.is_empty(), "{path}: a reason is given");
    }
    // Two polls at once on one sid: neither hangs, neither is a 5xx, and the
    // node ends the session (Engine.IO forbids overlapping polls).
    let session = PollingSession::open(client_ip(51), gw.addr).await.unwrap();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", session.sid);
    let mut a = HttpConn::open(client_ip(51), gw.addr).await.unwrap();
    let mut b = HttpConn::open(client_ip(51), gw.addr).await.unwrap();
    let (ra, rb) = tokio::join!(a.get(&path), b.get(&path));
    let (ra, rb) = (
        ra.expect("first poll answered"),
        rb.expect("second poll answered"),
    );
    let statuses = [ra.status, rb.status];
    assert!(
        statuses.contains(&StatusCode::BAD_REQUEST),
        "one of two overlapping polls is refused: {statuses:?} {} {}",
        ra.body,
        rb.body
    );
    assert!(
        statuses.iter().all(|s| !s.is_server_error()),
        "{statuses:?}"
    );
    gw.serves_real_clients(60).await;
    gw.assert_alive();
    let _ = node.shutdown().await;
}

#[tokio::test]
async fn websockets_keep_their_place_under_the_connection_limit() {
    let node = start_node("node-a").await;
    let mut gw = GatewayProcess::start(
        "ws-limit",
        &node_list(std::slice::from_ref(&node)),
        "max_connections = 5",
    )
    .await;
    let mut sockets = Vec::new();
    for i in 0..5 {
        let mut stream = connect_from(client_ip(80 + i), gw.addr).await.unwrap();
        subscribe_over_websocket(&mut stream, "hostile.limit").await;
        sockets.push(stream);
    }
    let mut over = connect_from(client_ip(90), gw.addr).await.unwrap();
    let reply = read_until_closed(&mut over, TIMEOUT)
        .await
        .unwrap_or_default();
    assert!(
        reply.starts_with("HTTP/1.1 503")
            && reply.contains("the gateway is at its connection limit"),
        "a connection over max_connections, with 5 websockets relayed, got {reply:?}"
    );
    // Closed websockets give their places back.
    sockets.truncate(2);
    let addr = gw.addr;
    eventually("a place under the limit again", || async move {
        run_session(client_ip(90), addr, "hostile.ok").await.is_ok()
    })
    .await;
    gw.serves_real_clients(91).await;
    gw.assert_alive();
    drop(sockets);
    let _ = node.shutdown().await;
}

#[tokio::test]
async fn a_websocket_client_that_never_reads_does_not_hold_up_others() {
    let node = start_node("node-a").await;
    let mut gw =
        GatewayProcess::start("never-reads", &node_list(std::slice::from_ref(&node)), "").await;
    let before = gw.rss_kb();
    // The lazy client: a websocket that subscribes, then never reads.
    let mut lazy = connect_from(client_ip(70), gw.addr).await.unwrap();
    subscribe_over_websocket(&mut lazy, "hostile.flood").await;
    let mut watcher = PollingSession::open(client_ip(71), gw.addr).await.unwrap();
    let ack = watcher
        .emit_ack("subscribe", &serde_json::json!("hostile.flood"))
        .await
        .unwrap();
    assert_eq!(ack["ok"], true);
    // The watcher reads all along, as a healthy client does.
    let watching = tokio::spawn(async move {
        let mut seen = 0;
        for _ in 0..1000 {
            let packets = watcher.poll_until(|p| p.contains("hostile.flood")).await?;
            seen += packets
                .iter()
                .filter(|p| p.contains("hostile.flood"))
                .count();
            if packets.iter().any(|p| p.contains("\"999p")) {
                return Ok(seen);
            }
        }
        Err(format!("only {seen} messages"))
    });
    let mut publisher = PollingSession::open(client_ip(72), gw.addr).await.unwrap();
    let content = "p".repeat(8 * 1024);
    for n in 0..1000 {
        let ack = publisher
            .emit_ack(
                "publish",
                &serde_json::json!({ "topic": "hostile.flood", "content": format!("{n}{content}") }),
            )
            .await
            .unwrap_or_else(|e| panic!("publish {n} while a client never reads: {e}"));
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let seen = watching
        .await
        .expect("watcher")
        .expect("a reading subscriber keeps getting messages");
    assert_eq!(seen, 1000, "every message reached the reading subscriber");
    gw.process
        .assert_rss_bounded(before, "a client that never reads");
    gw.serves_real_clients(80).await;
    gw.assert_alive();
    drop(lazy);
    let _ = node.shutdown().await;
}
