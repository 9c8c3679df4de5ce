//! The HTTP side of a running node: on the client port the demo page, its
//! client script and a bare `/healthz`; on the admin listener health,
//! readiness and metrics; and what unknown routes get on each.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use stickyio_node::{Check, Node, Readiness, RunningNode};
use stickyio_shared::config::node::NodeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn config(name: &str) -> NodeConfig {
    NodeConfig::standalone(name, "127.0.0.1:0".parse().unwrap())
}

async fn start(name: &str) -> RunningNode {
    timeout(WAIT, Node::bind(config(name)))
        .await
        .expect("bind timed out")
        .expect("bind failed")
}

/// Status, content type and body of one request to the client port.
async fn fetch(node: &RunningNode, method: reqwest::Method, path: &str) -> (u16, String, String) {
    fetch_at(node.local_addr(), method, path).await
}

async fn fetch_at(
    addr: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
) -> (u16, String, String) {
    let url = format!("http://{addr}{path}");
    timeout(WAIT, async {
        let response = reqwest::Client::new().request(method, &url).send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok::<_, reqwest::Error>((status, content_type, response.text().await?))
    })
    .await
    .expect("request timed out")
    .expect("request failed")
}

async fn get(node: &RunningNode, path: &str) -> (u16, String, String) {
    fetch(node, reqwest::Method::GET, path).await
}

/// A GET on the node's admin listener.
async fn admin(node: &RunningNode, path: &str) -> (u16, String, String) {
    fetch_at(node.admin_addr(), reqwest::Method::GET, path).await
}

#[tokio::test]
async fn healthz_answers_ok() {
    let node = start("node-a").await;
    let (status, _, body) = get(&node, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = admin(&node, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// The client port (which the gateway exposes) reveals no node internals.
#[tokio::test]
async fn readiness_and_metrics_are_not_on_the_client_port() {
    let node = start("node-a").await;
    assert_ne!(node.admin_addr(), node.local_addr());
    assert!(node.admin_addr().ip().is_loopback());
    for path in ["/readyz", "/metrics"] {
        let (status, _, body) = get(&node, path).await;
        assert_eq!((status, body), (404, format!("no route for {path}\n")));
    }
}

#[tokio::test]
async fn an_admin_token_guards_all_but_healthz() {
    let mut config = config("node-t");
    config.admin_token = Some(stickyio_shared::secret::Secret::new("t0ken"));
    let node = timeout(WAIT, Node::bind(config)).await.unwrap().unwrap();
    assert_eq!(admin(&node, "/healthz").await.0, 200);
    assert_eq!(admin(&node, "/metrics").await.0, 401);
    let url = format!("http://{}/readyz", node.admin_addr());
    let authorized = reqwest::Client::new()
        .get(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 200);
}

#[tokio::test]
async fn readyz_is_ready_when_listening_standalone() {
    let node = start("node-a").await;
    let (status, content_type, body) = admin(&node, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report,
        json!({"ready": true, "node": "node-a", "checks": {"listening": {"ready": true}}})
    );
}

struct Unlinked;

impl Readiness for Unlinked {
    fn name(&self) -> &str {
        "mesh"
    }
    fn check(&self) -> Check {
        Check {
            ready: false,
            detail: json!({"unlinked": ["http://127.0.0.1:9"]}),
        }
    }
}

#[tokio::test]
async fn plugged_in_checks_and_metrics_are_served() {
    let node = timeout(WAIT, Node::prepare(config("node-b")))
        .await
        .expect("prepare timed out")
        .expect("prepare failed");
    node.add_readiness(Arc::new(Unlinked));
    let links = Counter::<u64>::default();
    node.with_registry(|registry| {
        registry.sub_registry_with_prefix("mesh").register(
            "links_opened",
            "Peer links opened",
            links.clone(),
        );
    });
    links.inc_by(3);
    let node = node.serve();

    let (status, _, body) = admin(&node, "/readyz").await;
    assert_eq!(status, 503);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    assert_eq!(report["checks"]["listening"]["ready"], true);
    assert_eq!(
        report["checks"]["mesh"],
        json!({"ready": false, "detail": {"unlinked": ["http://127.0.0.1:9"]}})
    );

    let (_, _, metrics) = admin(&node, "/metrics").await;
    assert!(
        metrics.contains("stickyio_node_mesh_links_opened_total{node=\"node-b\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_series() {
    let node = start("node-a").await;
    let (status, content_type, body) = admin(&node, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for series in [
        "stickyio_node_connected_sockets{node=\"node-a\"} 0",
        "stickyio_node_subscriptions{node=\"node-a\"} 0",
        "stickyio_node_published_total{node=\"node-a\"} 0",
        "stickyio_node_delivered_total{node=\"node-a\"} 0",
        "stickyio_node_dropped_total{node=\"node-a\"} 0",
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "missing {series} in\n{body}"
        );
    }
    for code in [
        "invalid_topic",
        "invalid_payload",
        "too_many_subscriptions",
        "too_large",
    ] {
        assert!(
            body.lines()
                .any(|l| l.starts_with("stickyio_node_rejected_total{")
                    && l.contains(&format!("code=\"{code}\""))
                    && l.ends_with(" 0")),
            "missing rejected {code} in\n{body}"
        );
    }
    assert!(body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn demo_page_names_the_node_and_loads_the_client_from_the_node() {
    let node = start("node-c").await;
    let (status, content_type, page) = get(&node, "/").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        page.contains("<strong id=\"node\">node-c</strong>"),
        "{page}"
    );
    assert!(page.contains("<script src=\"socket.io.min.js\"></script>"));

    let (status, content_type, script) = get(&node, "/socket.io.min.js").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/javascript; charset=utf-8");
    assert!(
        script.starts_with("/*!\n * Socket.IO v4."),
        "{}",
        &script[..40]
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_clear_errors() {
    let node = start("node-a").await;
    let (status, _, body) = get(&node, "/nope").await;
    assert_eq!((status, body.as_str()), (404, "no route for /nope\n"));
    let (status, _, body) = fetch(&node, reqwest::Method::POST, "/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (405, "/healthz only answers GET and HEAD, not POST\n")
    );
    // An HTTP client never reads a body after a HEAD response, so it would
    // not see one: read the raw bytes until the node closes instead.
    let raw = timeout(WAIT, async {
        let mut stream = tokio::net::TcpStream::connect(node.local_addr()).await?;
        stream
            .write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).into_owned())
    })
    .await
    .expect("HEAD answered in time")
    .expect("HEAD exchange");
    let (head, after) = raw.split_once("\r\n\r\n").expect("a whole response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(after, "", "HEAD has no body");
}

#[tokio::test]
async fn engine_io_is_served_under_socket_io() {
    let node = start("node-a").await;
    let (status, _, body) = get(&node, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200);
    let handshake: Value = serde_json::from_str(body.strip_prefix('0').expect(&body)).unwrap();
    assert_eq!(handshake["pingInterval"], 25000);
    assert_eq!(handshake["pingTimeout"], 20000);
    assert_eq!(handshake["maxPayload"], 1_000_000);
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
}
