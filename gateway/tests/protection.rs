//! Bad and hostile input: spoofed forwarding headers, malformed requests,
//! oversized or slow headers, large bodies, too many connections, dead and
//! failing nodes. Every case gets a clear status, and the gateway keeps
//! serving.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use stickyio_gateway::{Gateway, RunningGateway};
use stickyio_shared::config::gateway::GatewayConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend answering every request with the headers and body size it got.
async fn echo_backend(name: &'static str) -> SocketAddr {
    slow_echo_backend(name, Duration::ZERO).await
}

/// [`echo_backend`] answering after `delay`.
async fn slow_echo_backend(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<Incoming>| async move {
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
                            .collect();
                        let body = req.into_body().collect().await?.to_bytes();
                        tokio::time::sleep(delay).await;
                        let reply = json!({ "backend": name, "headers": headers, "body_bytes": body.len() });
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                            reply.to_string(),
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A backend that reads a little of each request, says nothing, and hangs
/// up after `hold`.
async fn mute_backend(hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    addr
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn gateway(nodes: &[(&str, SocketAddr)], extra: &str) -> RunningGateway {
    let text = gateway_toml(nodes, extra);
    let config: GatewayConfig =
        stickyio_shared::config::parse(&text, "test.toml").expect("valid test config");
    Gateway::start(config).await.expect("gateway starts")
}

/// Writes raw bytes from `source` and reads what comes back until the
/// gateway closes or [`TIMEOUT`] passes.
async fn raw(source: Ipv4Addr, target: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = connect_from(source, target).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn untrusted_peers_cannot_spoof_their_address() {
    let node = echo_backend("echo").await;
    let gw = gateway(&[("echo", node)], "").await;
    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 7), gw.local_addr())
        .await
        .unwrap();
    let reply = conn
        .send(
            Method::GET,
            "/app",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("connection", "x-hop"),
                ("x-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("cookie", "io=abc"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.node.as_deref(), Some("echo"));
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.7");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.7;proto=http;host=\"gateway.test\""
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["host"], "gateway.test");
    assert_eq!(seen["cookie"], "io=abc");
    for hop in ["x-hop", "keep-alive", "te"] {
        assert!(
            seen.get(hop).is_none(),
            "{hop} must not reach the node: {seen}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_forwarded_for_is_honoured_and_untrusted_is_not() {
    let nodes = [
        start_node("node-a").await,
        start_node("node-b").await,
        start_node("node-c").await,
    ];
    let gw = gateway(&node_list(&nodes), "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let names = ["node-a", "node-b", "node-c"];
    let proxy = Ipv4Addr::LOCALHOST;
    let outsider = Ipv4Addr::new(127, 0, 0, 9);
    // A client whose placement differs from both peers', so the outcome tells.
    let client = (100..400)
        .map(client_ip)
        .find(|ip| {
            let first = &ranking(*ip, &names)[0];
            *first != ranking(proxy, &names)[0] && *first != ranking(outsider, &names)[0]
        })
        .expect("a distinguishing client");
    let xff = format!("203.0.113.9, {client}");
    let forwarded = format!("for=203.0.113.9, for=\"{client}:5555\"");
    for (peer, header, value, expected) in [
        (proxy, "x-forwarded-for", &xff, client),
        (proxy, "forwarded", &forwarded, client),
        (outsider, "x-forwarded-for", &xff, outsider),
        (outsider, "forwarded", &forwarded, outsider),
    ] {
        let mut conn = HttpConn::open(peer, gw.local_addr()).await.unwrap();
        let reply = conn
            .send(
                Method::GET,
                "/socket.io/?EIO=4&transport=polling",
                &[(header, value)],
                "",
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.node.unwrap(),
            ranking(expected, &names)[0],
            "peer {peer} sending {header}: {value}"
        );
    }
    gw.shutdown().await;
    for node in nodes {
        let _ = node.shutdown().await;
    }
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx_and_the_gateway_keeps_serving() {
    let node = echo_backend("echo").await;
    let gw = gateway(
        &[("echo", node)],
        "[limits]\nmax_header_bytes = 4096\nmax_headers = 20",
    )
    .await;
    let target = gw.local_addr();
    let src = Ipv4Addr::new(127, 0, 0, 11);

    let reply = raw(src, target, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");

    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let reply = raw(src, target, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");

    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let reply = raw(
        src,
        target,
        format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");

    let reply = raw(
        src,
        target,
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");

    let mut conn = HttpConn::open(src, target).await.unwrap();
    assert_eq!(
        conn.get("/still-fine").await.unwrap().status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off() {
    let node = echo_backend("echo").await;
    let gw = gateway(
        &[("echo", node)],
        "[limits]\nheader_read_timeout = \"300ms\"",
    )
    .await;
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 12), gw.local_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, async {
        // Keep dribbling a byte now and then, as a slowloris does.
        loop {
            tokio::select! {
                read = stream.read_to_end(&mut out) => return read,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if stream.write_all(b"x").await.is_err() {
                        return Ok(0);
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection must be closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let node = echo_backend("echo").await;
    let gw = gateway(&[("echo", node)], "[limits]\nmax_body_bytes = 2048").await;
    let src = Ipv4Addr::new(127, 0, 0, 13);
    let mut conn = HttpConn::open(src, gw.local_addr()).await.unwrap();
    let reply = conn
        .send(Method::POST, "/up", &[], &"x".repeat(2048))
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.json()["body_bytes"].clone()),
        (StatusCode::OK, json!(2048))
    );
    let reply = conn
        .send(Method::POST, "/up", &[], &"x".repeat(2049))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"], "body_too_large");

    let chunk = "y".repeat(3000);
    let chunked = format!(
        "POST /up HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let reply = raw(src, gw.local_addr(), chunked.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503() {
    let node = echo_backend("echo").await;
    let gw = gateway(&[("echo", node)], "[limits]\nmax_connections = 2").await;
    let target = gw.local_addr();
    let mut held = Vec::new();
    for i in 0..2 {
        let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 1, i + 1), target)
            .await
            .unwrap();
        assert_eq!(conn.get("/").await.unwrap().status, StatusCode::OK);
        held.push(conn);
    }
    let reply = raw(
        Ipv4Addr::new(127, 0, 1, 9),
        target,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply:?}");
    assert!(reply.contains("too_many_connections"), "{reply:?}");
    drop(held);
    eventually("a slot frees up", || async {
        let mut conn = match HttpConn::open(Ipv4Addr::new(127, 0, 1, 10), target).await {
            Ok(c) => c,
            Err(_) => return false,
        };
        matches!(conn.get("/").await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn no_reachable_node_gives_503_with_a_reason_and_a_failing_node_502() {
    // By default the gateway fails open: with every check failing it still
    // tries each node, and says which refused.
    let gw = gateway(
        &[("dead-a", dead_addr().await), ("dead-b", dead_addr().await)],
        "",
    )
    .await;
    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 14), gw.local_addr())
        .await
        .unwrap();
    for _ in 0..3 {
        let reply = conn
            .get("/socket.io/?EIO=4&transport=polling")
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert_eq!(reply.json()["error"], "no_healthy_node", "{}", reply.body);
        let message = reply.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(
            message.starts_with("no node accepted the connection: cannot connect to dead-")
                && message.contains("dead-a")
                && message.contains("dead-b"),
            "{message}"
        );
    }
    gw.shutdown().await;

    // With fail-open turned off, ejected nodes are not tried at all.
    let text = gateway_toml(
        &[("dead-a", dead_addr().await), ("dead-b", dead_addr().await)],
        "",
    )
    .replace("[health]\n", "[health]\npanic_threshold = 0\n");
    let config: GatewayConfig = stickyio_shared::config::parse(&text, "t.toml").unwrap();
    let gw = Gateway::start(config).await.unwrap();
    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 14), gw.local_addr())
        .await
        .unwrap();
    for _ in 0..2 {
        let reply = conn
            .get("/socket.io/?EIO=4&transport=polling")
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
    }
    let reply = conn
        .get("/socket.io/?EIO=4&transport=polling")
        .await
        .unwrap();
    let message = reply.json()["message"].as_str().unwrap_or("").to_owned();
    assert!(message.starts_with("no healthy node: "), "{message}");
    assert!(
        message.contains("dead-a") && message.contains("dead-b"),
        "{message}"
    );
    gw.shutdown().await;

    let gw = gateway(&[("flaky", mute_backend(Duration::ZERO).await)], "").await;
    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 15), gw.local_addr())
        .await
        .unwrap();
    let reply = conn.get("/anything").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert_eq!(reply.json()["error"], "node_failed");
    assert_eq!(reply.json()["node"], "flaky");
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_answer_and_refuse_bad_queries() {
    let node = echo_backend("echo").await;
    let gw = gateway(&[("echo", node)], "ipv4_prefix = 24").await;
    let admin_addr = gw.admin_addr();
    let health = admin(admin_addr, Method::GET, "/healthz").await;
    assert_eq!(
        (health.status, health.json()),
        (StatusCode::OK, json!({ "status": "ok" }))
    );
    let route = admin(admin_addr, Method::GET, "/route?ip=10.1.2.3")
        .await
        .json();
    assert_eq!(route["key"], "10.1.2.0/24");
    assert_eq!(route["node"], "echo");
    assert_eq!(
        route["reason"],
        "placement: first rendezvous choice for the client key"
    );
    let bad = admin(admin_addr, Method::GET, "/route?ip=banana").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["message"], "\"banana\" is not an IP address");
    assert_eq!(
        admin(admin_addr, Method::GET, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin(admin_addr, Method::GET, "/reload").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let reload = admin(admin_addr, Method::POST, "/reload").await;
    assert_eq!(
        reload.status,
        StatusCode::CONFLICT,
        "in-memory config cannot be reloaded"
    );

    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 16), gw.local_addr())
        .await
        .unwrap();
    conn.get("/x").await.unwrap();
    let metrics = admin(admin_addr, Method::GET, "/metrics").await.body;
    assert!(
        metrics.contains("stickyio_gateway_requests_total{node=\"echo\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stickyio_gateway_node_up{node=\"echo\"} 1"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_node_that_never_answers_gets_504_after_the_idle_timeout() {
    let gw = gateway(
        &[("mute", mute_backend(Duration::from_secs(30)).await)],
        "[limits]\nidle_timeout = \"1s\"",
    )
    .await;
    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 17), gw.local_addr())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    // Not a handshake (those move on after handshake_timeout): an app route.
    let reply = conn.get("/api/report").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert_eq!(reply.json()["error"], "node_timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let node = slow_echo_backend("slow", Duration::from_millis(500)).await;
    let gw = gateway(&[("slow", node)], "").await;
    let target = gw.local_addr();
    let mut conn = HttpConn::open(Ipv4Addr::new(127, 0, 0, 18), target)
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move { conn.get("/slow").await });
    let admin_addr = gw.admin_addr();
    eventually("the request on its way to the node", || async move {
        let text = admin(admin_addr, Method::GET, "/metrics").await.body;
        metric_sum(&text, "stickyio_gateway_requests_total") >= 1.0
    })
    .await;
    gw.shutdown().await;
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(
        (reply.status, reply.node.as_deref()),
        (StatusCode::OK, Some("slow"))
    );
    assert!(
        connect_from(Ipv4Addr::new(127, 0, 0, 19), target)
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn an_unanswered_handshake_goes_to_the_next_node_and_other_requests_wait() {
    // A node that accepts connections and never answers: a frozen process.
    let frozen = mute_backend(Duration::from_secs(30)).await;
    let names = ["frozen", "echo"];
    let gw = gateway(
        &[("frozen", frozen), ("echo", echo_backend("echo").await)],
        "[limits]\nhandshake_timeout = \"1s\"\nidle_timeout = \"3s\"\n",
    )
    .await;
    let ip = (1..=250)
        .map(|i| Ipv4Addr::new(127, 0, 3, i))
        .find(|ip| ranking(*ip, &names)[0] == "frozen")
        .expect("an address ranking the frozen node first");
    let mut conn = HttpConn::open(ip, gw.local_addr()).await.unwrap();
    let started = std::time::Instant::now();
    let reply = conn
        .get("/socket.io/?EIO=4&transport=polling")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.node.as_deref(), Some("echo"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let nodes = nodes_json(gw.admin_addr()).await;
    assert_eq!(nodes[0]["name"], "frozen");
    assert_eq!(nodes[0]["ejected"], true, "{nodes:?}");

    // A request that is not a handshake may take long by design (an app
    // route): it waits for the idle timeout and is not sent twice.
    let gw2 = gateway(
        &[("frozen", frozen)],
        "[limits]\nhandshake_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    )
    .await;
    let mut conn = HttpConn::open(ip, gw2.local_addr()).await.unwrap();
    let reply = conn.get("/api/slow-report").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert_eq!(reply.json()["error"], "node_timeout");
    gw.shutdown().await;
    gw2.shutdown().await;
}
