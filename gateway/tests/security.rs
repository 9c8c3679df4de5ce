//! The gateway's security surfaces: the admin listener's bearer token, the
//! refusal to open an unauthenticated admin listener off loopback, and TLS on
//! the public listener (a self-signed certificate made here with rcgen),
//! with long-polling and the websocket upgrade both working over it.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use stickyio_gateway::{Gateway, NODE_HEADER};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

const TOKEN: &str = "adm1n-t0ken-for-tests";

async fn admin_with(addr: SocketAddr, method: Method, path: &str, auth: Option<&str>) -> Reply {
    let mut conn = HttpConn::open(Ipv4Addr::LOCALHOST, addr)
        .await
        .expect("admin connect");
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    conn.send(method, path, &headers, "")
        .await
        .expect("admin request")
}

#[tokio::test]
async fn the_admin_token_guards_every_endpoint_but_healthz_and_the_page() {
    let node = start_node("node-a").await;
    let dir = TempDir::new("admin-token");
    std::fs::write(dir.path("admin.token"), format!("{TOKEN}\n")).unwrap();
    // The gateway watches the directory of `gateway.toml`; a symlink to a
    // file elsewhere keeps edits of that file out of its sight, so only a
    // reload asked for applies them.
    let unwatched = TempDir::new("admin-token-unwatched");
    let real = unwatched.path("gateway.toml");
    let config = dir.path("gateway.toml");
    let text = gateway_toml(
        &node_list(std::slice::from_ref(&node)),
        "admin_token_file = \"admin.token\"",
    );
    std::fs::write(&real, &text).unwrap();
    std::os::unix::fs::symlink(&real, &config).unwrap();
    let gw = Gateway::start(config.clone())
        .await
        .expect("gateway starts");
    let admin_addr = gw.admin_addr();

    let health = admin_with(admin_addr, Method::GET, "/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK, "liveness needs no token");
    // The status page is served to anyone who reaches the listener: it holds
    // no data, only the script that asks for the token.
    let page = admin_with(admin_addr, Method::GET, "/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("sessionStorage"), "{}", page.body);
    assert!(
        !page.body.contains("node-a"),
        "the page carries no node data"
    );
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    // An edit a refused reload must not apply.
    std::fs::write(&real, text.replace("fall = 2", "fall = 3")).unwrap();
    let bearer = format!("Bearer {TOKEN}");
    for (method, path) in [
        (Method::GET, "/nodes"),
        (Method::GET, "/status"),
        (Method::GET, "/route?sid=abc"),
        (Method::GET, "/metrics"),
        (Method::GET, "/route?ip=1.2.3.4"),
        (Method::POST, "/reload"),
        (Method::GET, "/nope"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some(&bearer[..bearer.len() - 1]),
            Some("Basic YWRtaW46YWRtaW4="),
            Some(TOKEN),
        ] {
            let reply = admin_with(admin_addr, method.clone(), path, auth).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(reply.json()["error"], "unauthorized");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(
        gw.config().health.fall,
        2,
        "a refused reload applied the edit"
    );
    let nodes = admin_with(admin_addr, Method::GET, "/nodes", Some(&bearer)).await;
    assert_eq!(nodes.status, StatusCode::OK);
    assert_eq!(nodes.json()[0]["name"], "node-a");
    let reload = admin_with(admin_addr, Method::POST, "/reload", Some(&bearer)).await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.body);
    assert_eq!(gw.config().health.fall, 3);
    let metrics = admin_with(admin_addr, Method::GET, "/metrics", Some(&bearer)).await;
    assert!(
        metrics.body.contains("reason=\"admin_unauthorized\""),
        "{}",
        metrics.body
    );
    gw.shutdown().await;
    let _ = node.shutdown().await;
}

/// Starts the `stickyio-gateway` binary on `config` without
/// `STICKYIO_ADMIN_TOKEN` (which would supply a token), and returns what it
/// printed on stderr once it exits, as it must, with a failure.
fn refused_start(config: &std::path::Path) -> String {
    let mut child = ChildProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_stickyio-gateway"))
            .arg("--config")
            .arg(config)
            .env_remove(stickyio_shared::config::gateway::ADMIN_TOKEN_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        "stickyio-gateway",
    );
    // It exits by itself, refusing the config; one that serves is killed.
    let status = child.wait_exit();
    let mut stderr = String::new();
    let _ = child
        .child()
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    assert!(!status.success(), "{status}: {stderr}");
    stderr
}

#[test]
fn an_open_admin_listener_off_loopback_is_refused_at_start() {
    let dir = TempDir::new("open-admin");
    let config = dir.path("gateway.toml");
    let text = gateway_toml(&[("a", "127.0.0.1:1".parse().unwrap())], "")
        .replace("admin = \"127.0.0.1:0\"", "admin = \"0.0.0.0:0\"");
    std::fs::write(&config, text).unwrap();
    let err = refused_start(&config);
    assert!(
        err.contains(":2:9: `admin`: 0.0.0.0:0 is not a loopback address, so the admin listener needs a token"),
        "{err}"
    );
    // A token file that cannot be read stops the start too, by name.
    let text = gateway_toml(
        &[("a", "127.0.0.1:1".parse().unwrap())],
        "admin_token_file = \"absent.token\"",
    );
    std::fs::write(&config, text).unwrap();
    let err = refused_start(&config);
    assert!(err.contains("admin token: admin_token_file "), "{err}");
    assert!(err.contains("absent.token: cannot read"), "{err}");
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// files, and a client config trusting only it.
fn certificate(dir: &TempDir) -> (String, Arc<ClientConfig>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    std::fs::write(dir.path("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root added");
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"".to_owned(),
        Arc::new(client),
    )
}

async fn tls_connect(
    client: &Arc<ClientConfig>,
    source: Ipv4Addr,
    target: SocketAddr,
) -> TlsStream<tokio::net::TcpStream> {
    let tcp = connect_from(source, target).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        TIMEOUT,
        TlsConnector::from(client.clone()).connect(name, tcp),
    )
    .await
    .expect("TLS handshake in time")
    .expect("TLS handshake")
}

/// Where an unmasked server frame's payload starts, and its length (7- or
/// 16-bit lengths; RFC 6455 §5.2).
fn frame_payload(frame: &[u8]) -> Option<(usize, usize)> {
    match *frame.get(1)? & 0x7f {
        126 => Some((
            4,
            usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])),
        )),
        n => Some((2, usize::from(n))),
    }
}

#[tokio::test]
async fn tls_serves_polling_and_websocket_upgrades() {
    let node = start_node("node-a").await;
    let dir = TempDir::new("tls");
    let (tls_table, client) = certificate(&dir);
    let config = dir.path("gateway.toml");
    // `[tls]` goes after the plain keys, before `[health]`.
    std::fs::write(
        &config,
        gateway_toml(&node_list(std::slice::from_ref(&node)), &tls_table),
    )
    .unwrap();
    let gw = Gateway::start(config)
        .await
        .expect("gateway starts with TLS");
    let addr = gw.local_addr();

    // Long-polling: handshake, then a poll on the pinned sid.
    let tls = tls_connect(&client, Ipv4Addr::new(127, 0, 9, 1), addr).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http over tls");
    tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let res = tokio::time::timeout(
        TIMEOUT,
        sender.send_request(get("/socket.io/?EIO=4&transport=polling")),
    )
    .await
    .expect("in time")
    .expect("handshake response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[NODE_HEADER], "node-a");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let open: serde_json::Value =
        serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let post = Request::post(format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"40")))
        .unwrap();
    let res = tokio::time::timeout(TIMEOUT, sender.send_request(post))
        .await
        .expect("in time")
        .expect("post");
    assert_eq!(res.status(), StatusCode::OK);
    let res = tokio::time::timeout(
        TIMEOUT,
        sender.send_request(get(&format!(
            "/socket.io/?EIO=4&transport=polling&sid={sid}"
        ))),
    )
    .await
    .expect("in time")
    .expect("poll");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let packets = String::from_utf8_lossy(&body).into_owned();
    assert!(
        packets.split('\u{1e}').any(|p| p.starts_with("40{")),
        "namespace connect over TLS: {packets:?}"
    );

    // A websocket upgrade over TLS: the 101, then the open packet as the
    // first (unmasked, server-sent) text frame.
    let mut tls = tls_connect(&client, Ipv4Addr::new(127, 0, 9, 2), addr).await;
    tls.write_all(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let frame = tokio::time::timeout(TIMEOUT, async {
        loop {
            let n = tls.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = &text[..end];
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                assert!(
                    head.to_ascii_lowercase()
                        .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
                    "{head}"
                );
                let frame = &got[end + 4..];
                if let Some((start, len)) = frame_payload(frame)
                    && frame.len() >= start + len
                {
                    return frame.to_vec();
                }
            }
        }
    })
    .await
    .expect("101 and the first frame in time");
    assert_eq!(frame[0], 0x81, "a final text frame");
    let (start, len) = frame_payload(&frame).expect("a frame head");
    let payload = String::from_utf8_lossy(&frame[start..start + len]).into_owned();
    assert!(payload.starts_with("0{\"sid\":"), "{payload}");
    let open: serde_json::Value = serde_json::from_str(&payload[1..]).expect("open packet");
    let sid = open["sid"].as_str().expect("sid");
    assert_eq!(
        sid.matches('.').count(),
        2,
        "the client sees a route-tagged sid: {sid}"
    );
    drop((tls, sender));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = connect_from(Ipv4Addr::new(127, 0, 9, 3), addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_end(&mut out)).await;
    assert!(
        !out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    gw.shutdown().await;
    let _ = node.shutdown().await;
}
