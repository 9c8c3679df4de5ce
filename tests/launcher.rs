//! The launcher in-process: it starts the topology it prints, and its demo
//! tip names the node the gateway really gives a browser on this machine.

use std::time::Duration;

use stickyio::{LocalCluster, Options, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A bare HTTP/1.1 GET; the body of the response.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[tokio::test]
async fn summary_matches_what_is_running() {
    let topology = Topology::resolve(&Options {
        port: Some(24080),
        admin_port: Some(24090),
        node_port: Some(24001),
        ..Options::default()
    })
    .unwrap();
    let cluster = timeout(WAIT, LocalCluster::start(topology))
        .await
        .unwrap()
        .unwrap();
    let summary = cluster.summary();
    assert!(
        summary.contains("  public  http://127.0.0.1:24080\n"),
        "{summary}"
    );
    assert!(
        summary.contains("  admin   http://127.0.0.1:24090"),
        "{summary}"
    );
    for (name, port) in [("node-a", 24001), ("node-b", 24002), ("node-c", 24003)] {
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

    timeout(WAIT, cluster.shutdown()).await.unwrap();
}
