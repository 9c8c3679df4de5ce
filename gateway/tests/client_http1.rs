//! HTTP/1 as the gateway serves it to clients: pipelining, HTTP/1.0,
//! `Expect: 100-continue`, request smuggling attempts, chunked bodies in
//! both directions, `HEAD`, and a client that leaves while its request
//! waits on the node.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use stickyio_gateway::{Gateway, RunningGateway};
use stickyio_shared::config::gateway::GatewayConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A hyper backend: `/chunked` answers `hello world` in two chunks (no
/// length), anything else a JSON echo of path, headers and body size.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/chunked" {
                        let frames = ["hello ", "world"].map(|s| {
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(s.as_bytes())))
                        });
                        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
                        return Ok::<_, hyper::Error>(Response::new(body));
                    }
                    let path = req.uri().path().to_owned();
                    let headers: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
                        .collect();
                    let body = req.into_body().collect().await?.to_bytes();
                    let reply =
                        json!({ "path": path, "headers": headers, "body_bytes": body.len() });
                    let body = Full::new(Bytes::from(reply.to_string()))
                        .map_err(|never| match never {})
                        .boxed();
                    Ok(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A raw backend that answers health checks, and holds any request for
/// `/hold` unanswered, reporting on `held` when it arrives and on `closed`
/// when the gateway closes that connection.
async fn holding_backend() -> (SocketAddr, mpsc::Receiver<()>, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, held) = mpsc::channel(8);
    let (closed_tx, closed) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (held_tx, closed_tx) = (held_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if !got.starts_with(b"GET /hold") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let _ = held_tx.send(()).await;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = closed_tx.send(()).await;
            });
        }
    });
    (addr, held, closed)
}

async fn gateway(node: SocketAddr, extra: &str) -> RunningGateway {
    let text = gateway_toml(&[("n", node)], extra);
    let config: GatewayConfig = stickyio_shared::config::parse(&text, "test.toml").unwrap();
    Gateway::start(config).await.unwrap()
}

async fn open(gw: &RunningGateway, last: u8) -> TcpStream {
    connect_from(Ipv4Addr::new(127, 0, 7, last), gw.local_addr())
        .await
        .unwrap()
}

/// Reads until the connection closes (or [`TIMEOUT`]).
async fn to_end(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `out` holds `needle`.
async fn until(stream: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(TIMEOUT, async {
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&out)));
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `head` from source `last` and reads the gateway's one answer, a 400,
/// up to its close.
async fn refused(gw: &RunningGateway, last: u8, head: &str) -> String {
    let mut stream = open(gw, last).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let reply = to_end(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    reply
}

#[tokio::test]
async fn pipelined_requests_are_answered_one_after_another_in_order() {
    let gw = gateway(backend().await, "").await;
    let mut stream = open(&gw, 1).await;
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
              GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    let (a, b, c) = (
        reply.find("\"path\":\"/a\"").unwrap(),
        reply.find("\"path\":\"/b\"").unwrap(),
        reply.find("\"path\":\"/c\"").unwrap(),
    );
    assert!(a < b && b < c, "{reply}");
    assert!(reply.contains("\"body_bytes\":3"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    gw.shutdown().await;
}

#[tokio::test]
async fn http_1_0_clients_get_closed_or_kept_alive_as_they_ask() {
    let gw = gateway(backend().await, "").await;
    // No keep-alive: answered, then closed; a chunked node body is sent
    // until the close, HTTP/1.0 having no chunks.
    let mut stream = open(&gw, 2).await;
    stream
        .write_all(b"GET /chunked HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(!reply.contains("transfer-encoding"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nhello world"), "{reply}");
    // Keep-alive asked for: kept, and told so.
    let mut stream = open(&gw, 3).await;
    stream
        .write_all(b"GET /one HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let reply = until(&mut stream, "}").await;
    assert!(reply.contains("connection: keep-alive"), "{reply}");
    stream
        .write_all(b"GET /two HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert!(reply.contains("\"path\":\"/two\""), "{reply}");
    // HTTP/1.1 gets the chunks.
    let mut stream = open(&gw, 4).await;
    stream
        .write_all(b"GET /chunked HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert!(reply.contains("transfer-encoding: chunked\r\n"), "{reply}");
    assert!(reply.ends_with("0\r\n\r\n"), "{reply}");
    assert!(
        reply.contains("hello ") && reply.contains("world"),
        "{reply}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    let gw = gateway(backend().await, "[limits]\nmax_body_bytes = 2048").await;
    let mut stream = open(&gw, 5).await;
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = until(&mut stream, "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let reply = until(&mut stream, "}").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains("\"body_bytes\":5"), "{reply}");
    assert!(!reply.contains("100-continue"), "{reply}");
    // Too large a body is refused without a 100.
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"error\":\"body_too_large\""), "{reply}");
    assert!(
        reply.contains("request bodies are limited to 2048 bytes"),
        "{reply}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn ambiguous_body_lengths_are_refused_as_smuggling() {
    let gw = gateway(backend().await, "").await;
    for (i, head) in [
        "POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        "POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 40\r\n\r\nabcd",
        "POST /s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabcd",
    ]
    .into_iter()
    .enumerate()
    {
        let reply = refused(&gw, 10 + i as u8, head).await;
        assert!(
            reply.contains("\"error\":\"ambiguous_body_length\""),
            "{reply}"
        );
        assert!(reply.contains("ambiguous request body length"), "{reply}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_stream_to_the_node_and_over_the_limit_get_413() {
    let gw = gateway(backend().await, "[limits]\nmax_body_bytes = 2048").await;
    let mut stream = open(&gw, 20).await;
    stream
        .write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for piece in [
        "5\r\nhello\r\n",
        "3;ext=1\r\n, w",
        "\r\n",
        "5\r\norld!\r\n0\r\n\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = until(&mut stream, "}").await;
    assert!(reply.contains("\"body_bytes\":13"), "{reply}");
    assert!(
        reply.contains("\"transfer-encoding\":\"chunked\""),
        "{reply}"
    );
    // Over the limit in small chunks: 413 once past it.
    stream
        .write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("3e8\r\n{}\r\n", "z".repeat(1000));
    for _ in 0..3 {
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    let reply = to_end(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"error\":\"body_too_large\""), "{reply}");
    gw.shutdown().await;
}

#[tokio::test]
async fn head_answers_have_no_body_and_keep_the_connection() {
    let gw = gateway(backend().await, "").await;
    let mut stream = open(&gw, 21).await;
    stream
        .write_all(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = until(&mut stream, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    stream
        .write_all(b"GET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert!(
        reply.starts_with("HTTP/1.1 200 OK"),
        "a HEAD body was sent: {reply}"
    );
    assert!(reply.contains("\"path\":\"/after\""), "{reply}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_while_its_request_waits_ends_the_node_request() {
    let (node, mut held, mut closed) = holding_backend().await;
    let gw = gateway(node, "").await;
    let mut stream = open(&gw, 22).await;
    stream
        .write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, held.recv())
        .await
        .expect("the request reached the node");
    drop(stream);
    tokio::time::timeout(Duration::from_secs(3), closed.recv())
        .await
        .expect("the node's request is dropped once the client has gone");
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_heads_get_400_and_the_connection_closed() {
    let gw = gateway(backend().await, "").await;
    for (i, head) in [
        "GET / HTTP/1.1\r\nho st: x\r\n\r\n",
        "CONNECT elsewhere:443 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let reply = refused(&gw, 30 + i as u8, head).await;
        assert!(reply.contains("\"error\":\"malformed_request\""), "{reply}");
    }
    // The absolute form a server must accept reaches the node as a path.
    let mut stream = open(&gw, 40).await;
    stream
        .write_all(b"GET http://elsewhere/echo?x=1 HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = to_end(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"path\":\"/echo\""), "{reply}");
    gw.shutdown().await;
}
