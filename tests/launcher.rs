//! The launcher in-process: it starts the topology it prints, its demo tip
//! names the node the gateway really gives a browser on this machine, and
//! the gateway's public address shows nothing of the nodes' internals.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::time::Duration;

use stickyio::{LocalCluster, Options, Topology};
use stickyio_testkit::free_run;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A bare HTTP/1.1 GET; the head and body of the response.
async fn fetch(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// A GET that must answer 200; its body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let (head, body) = fetch(addr, path).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

#[tokio::test]
async fn summary_matches_what_is_running() {
    // Every port chosen free, the nodes' admin ports too: derived from the
    // node port they could land on a port another test holds.
    let (port, admin_port, node_port) = (free_run(1), free_run(1), free_run(3));
    let node_admin_port = free_run(3);
    let topology = Topology::resolve(&Options {
        port: Some(port),
        admin_port: Some(admin_port),
        node_port: Some(node_port),
        node_admin_port: Some(node_admin_port),
        ..Options::default()
    })
    .unwrap();
    let cluster = timeout(WAIT, LocalCluster::start(topology))
        .await
        .unwrap()
        .unwrap();
    let summary = cluster.summary();
    assert!(
        summary.contains(&format!("  public  http://127.0.0.1:{port}\n")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("  admin   http://127.0.0.1:{admin_port}")),
        "{summary}"
    );
    for (name, port) in
        [("node-a", 0), ("node-b", 1), ("node-c", 2)].map(|(name, i)| (name, node_port + i))
    {
        assert!(
            summary.contains(&format!("  {name:<8} 127.0.0.1:{port}")),
            "{summary}"
        );
    }

    let route: serde_json::Value =
        serde_json::from_str(&get(cluster.admin_addr(), "/route?ip=127.0.0.1").await).unwrap();
    let node = route["node"].as_str().unwrap();
    assert!(
        summary.contains(&format!("lands on {node} from this machine")),
        "gateway routes 127.0.0.1 to {node}:\n{summary}"
    );
    let page = get(cluster.public_addr(), "/").await;
    assert!(
        page.contains(&format!("<strong id=\"node\">{node}</strong>")),
        "{page}"
    );

    // The gateway proxies every path to a node's client port, where only
    // the bare /healthz is; readiness and metrics are on the node's admin
    // listener, which the gateway never reaches.
    for path in ["/readyz", "/metrics"] {
        let (head, body) = fetch(cluster.public_addr(), path).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
        assert!(
            !body.contains("stickyio_node") && !body.contains("checks"),
            "{path} through the gateway: {body}"
        );
    }
    assert_eq!(get(cluster.public_addr(), "/healthz").await, "ok\n");
    for (i, node) in cluster.nodes().iter().enumerate() {
        let admin = node.admin_addr();
        assert!(admin.ip().is_loopback(), "{admin}");
        assert_eq!(
            admin.port(),
            node_admin_port + i as u16,
            "--node-admin-port"
        );
        let metrics = get(admin, "/metrics").await;
        assert!(
            metrics.contains("stickyio_node_published_total"),
            "{metrics}"
        );
        assert!(get(admin, "/readyz").await.contains("\"checks\""));
    }

    timeout(WAIT, cluster.shutdown()).await.unwrap();
}
