//! Test support of the gateway's tests: real in-process nodes, a gateway on
//! port 0 started from a file, its admin endpoints, and a naive round-robin
//! forwarder as the control that shows the tests can tell. The generic
//! parts (waits, temp dirs, the polling client, source addresses) are the
//! test kit's, re-exported here.
//!
//! Every wait is bounded by [`TIMEOUT`].

#![allow(dead_code)] // each test binary uses its own part of the support

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use stickyio_gateway::{Gateway, RunningGateway};
use stickyio_node::{Node, RunningNode};
use stickyio_shared::config::node::NodeConfig;
#[allow(unused_imports)] // each test binary uses its own part of the kit too
pub use stickyio_testkit::{
    ChildProcess, HttpConn, PollingSession, Reply, TIMEOUT, TempDir, client_ip, connect_from,
    eventually, free_port, metric_sum, run_session,
};
use tokio::net::{TcpListener, TcpStream};

pub async fn start_node(name: &str) -> RunningNode {
    start_node_at(name, "127.0.0.1:0".parse().unwrap()).await
}

pub async fn start_node_at(name: &str, addr: SocketAddr) -> RunningNode {
    Node::bind(NodeConfig::standalone(name, addr))
        .await
        .expect("node starts")
}

/// A node relaying over the Redis at `redis_url`.
pub async fn redis_node(name: &str, redis_url: &str) -> RunningNode {
    let mut config = NodeConfig::standalone(name, "127.0.0.1:0".parse().unwrap());
    config.cluster.standalone = false;
    config.cluster.backend = stickyio_shared::config::node::Backend::Redis;
    config.cluster.redis_url = Some(redis_url.to_owned());
    config.cluster.retry_interval = stickyio_shared::config::Duration(Duration::from_millis(500));
    Node::bind(config).await.expect("node starts")
}

/// Nodes named `names` linked in a mesh (plus `absent_peers`, URLs nobody
/// serves), once every link between them is up.
pub async fn start_mesh(names: &[&str], absent_peers: &[String]) -> Vec<RunningNode> {
    let urls: Vec<(SocketAddr, String)> = names
        .iter()
        .map(|_| {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            (addr, format!("http://{addr}"))
        })
        .collect();
    let mut peers: Vec<String> = urls.iter().map(|(_, url)| url.clone()).collect();
    peers.extend_from_slice(absent_peers);
    let mut nodes = Vec::new();
    for (name, (addr, url)) in names.iter().zip(&urls) {
        let mut config = NodeConfig::standalone(*name, *addr);
        config.cluster.standalone = false;
        config.cluster.host = Some(url.clone());
        config.cluster.cluster_nodes = peers.clone();
        config.cluster.secret = Some("gateway-tests-mesh-secret-0123456789".into());
        nodes.push(Node::bind(config).await.expect("mesh node starts"));
    }
    for node in &nodes {
        eventually("every mesh link up", || async {
            let text = node_metrics(node).await;
            metric_sum(&text, "stickyio_node_cluster_link_up") >= (names.len() - 1) as f64
        })
        .await;
    }
    nodes
}

/// A `gateway.toml` on port 0 with fast health checks.
pub fn gateway_toml(nodes: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{extra}\n[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n"
    );
    for (name, addr) in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    text
}

/// Writes a config the way editors do: a new file renamed over the old one.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Three nodes behind a gateway started from a file.
pub struct Cluster {
    pub dir: TempDir,
    pub config: PathBuf,
    pub nodes: Vec<RunningNode>,
    pub gateway: RunningGateway,
}

impl Cluster {
    pub async fn start(tag: &str, names: &[&str], extra: &str) -> Cluster {
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(start_node(name).await);
        }
        Cluster::with_nodes(tag, nodes, extra).await
    }

    /// A gateway in front of `nodes`.
    pub async fn with_nodes(tag: &str, nodes: Vec<RunningNode>, extra: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let config = dir.path("gateway.toml");
        std::fs::write(&config, gateway_toml(&node_list(&nodes), extra)).unwrap();
        let gateway = Gateway::start(config.clone())
            .await
            .expect("gateway starts");
        Cluster {
            dir,
            config,
            nodes,
            gateway,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.gateway.admin_addr()
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
        for node in self.nodes {
            let _ = node.shutdown().await;
        }
    }
}

pub fn node_list(nodes: &[RunningNode]) -> Vec<(&str, SocketAddr)> {
    nodes
        .iter()
        .map(|n| (n.config().name.as_str(), n.local_addr()))
        .collect()
}

pub async fn admin(addr: SocketAddr, method: Method, path: &str) -> Reply {
    let mut conn = HttpConn::open(Ipv4Addr::LOCALHOST, addr)
        .await
        .expect("admin connect");
    conn.send(method, path, &[], "")
        .await
        .expect("admin request")
}

/// A node's Prometheus text. Every test reads node metrics through here, so
/// moving them to another listener changes only this function.
pub async fn node_metrics(node: &RunningNode) -> String {
    let mut conn = HttpConn::open(Ipv4Addr::LOCALHOST, node.admin_addr())
        .await
        .expect("node connect");
    let reply = conn.get("/metrics").await.expect("node /metrics");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

/// The gateway's `/nodes`, checked for its shape first, so a broken body
/// fails here rather than reading as zero sessions or an empty pool.
pub async fn nodes_json(addr: SocketAddr) -> Vec<Value> {
    let reply = admin(addr, Method::GET, "/nodes").await;
    assert_eq!(reply.status, StatusCode::OK, "/nodes: {}", reply.body);
    let Value::Array(nodes) = reply.json() else {
        panic!("/nodes is not a JSON array: {}", reply.body);
    };
    for node in &nodes {
        assert!(
            node["name"].is_string(),
            "/nodes entry without a name: {node}"
        );
        for key in ["sessions", "websockets"] {
            assert!(node[key].is_u64(), "/nodes entry without `{key}`: {node}");
        }
        for key in ["healthy", "draining", "ejected"] {
            assert!(
                node[key].is_boolean(),
                "/nodes entry without `{key}`: {node}"
            );
        }
    }
    nodes
}

/// The sum of a count (`sessions`, `websockets`) over [`nodes_json`] entries.
pub fn total(nodes: &[Value], key: &str) -> u64 {
    nodes
        .iter()
        .map(|n| {
            n[key]
                .as_u64()
                .unwrap_or_else(|| panic!("`{key}` is not a count: {n}"))
        })
        .sum()
}

/// A naive forwarder that sends each request to the next node in turn, as a
/// round-robin balancer without stickiness does.
pub async fn round_robin(nodes: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (nodes, next) = (nodes.clone(), next.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let target = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
                        forward_to(target, req)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn forward_to(
    target: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
    let stream = TcpStream::connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// The node placement picks for `ip` among equal-weight `names`, in order.
pub fn ranking(ip: Ipv4Addr, names: &[&str]) -> Vec<String> {
    let key = stickyio_shared::placement::ClientKey::new(IpAddr::V4(ip), 32, 64);
    stickyio_shared::placement::rank(&key, names, |n| (n, 1))
        .into_iter()
        .map(|n| n.to_string())
        .collect()
}

/// The one node that served a session.
pub fn only(nodes: &BTreeSet<String>) -> String {
    assert_eq!(nodes.len(), 1, "one session, one node: {nodes:?}");
    nodes.iter().next().cloned().unwrap_or_default()
}
