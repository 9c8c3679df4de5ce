//! Test support: real in-process nodes, a gateway on port 0, a raw Engine.IO
//! polling client that binds its own 127.x.y.z source address, and a naive
//! round-robin forwarder as the control that shows the tests can tell.
//!
//! Every wait is bounded by [`TIMEOUT`].

#![allow(dead_code)] // each test binary uses its own part of the support

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use stickyio_gateway::{Gateway, NODE_HEADER, RunningGateway};
use stickyio_node::{Node, RunningNode};
use stickyio_shared::config::node::NodeConfig;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Upper bound of any single wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("stickyio-gw-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// A loopback port free at the time of asking, for a node that must know
/// its own URL before it binds.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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

/// The i-th distinct client address, 127.20.0.1 upwards.
pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        20 + (i / 60_000) as u8,
        ((i % 60_000) / 250) as u8,
        (i % 250) as u8 + 1,
    )
}

/// A TCP connection to `target` from `source`.
pub async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    tokio::time::timeout(TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub node: Option<String>,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One keep-alive HTTP/1 client connection from a chosen source address.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn open(source: Ipv4Addr, target: SocketAddr) -> Result<Self, String> {
        let stream = connect_from(source, target)
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpConn { sender })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            let res = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("request {path}: {e}"))?;
            let status = res.status();
            let headers = res.headers().clone();
            let node = headers
                .get(NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status,
                node,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{path}: timed out"))?
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(Method::GET, path, &[], "").await
    }
}

/// A Socket.IO client speaking Engine.IO v4 long-polling by hand, so each
/// request and the node that served it can be checked.
pub struct PollingSession {
    conn: HttpConn,
    pub sid: String,
    /// Every node that answered a request of this session.
    pub nodes: BTreeSet<String>,
    next_ack: u32,
}

const SEP: char = '\u{1e}';

impl PollingSession {
    /// Handshake and Socket.IO connect to the main namespace.
    pub async fn open(source: Ipv4Addr, target: SocketAddr) -> Result<Self, String> {
        let mut conn = HttpConn::open(source, target).await?;
        let reply = conn.get("/socket.io/?EIO=4&transport=polling").await?;
        let open = ok_body(&reply, "handshake")?;
        let json: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
            .map_err(|e| format!("open packet {open:?}: {e}"))?;
        let sid = json["sid"]
            .as_str()
            .ok_or(format!("no sid in {open:?}"))?
            .to_owned();
        let mut session = PollingSession {
            conn,
            sid,
            nodes: BTreeSet::new(),
            next_ack: 0,
        };
        session.nodes.extend(reply.node);
        session.post("40").await?;
        let packets = session
            .poll_until(|p| p.starts_with("40") || p.starts_with("44"))
            .await?;
        if !packets.iter().any(|p| p.starts_with("40{")) {
            return Err(format!("namespace connect refused: {packets:?}"));
        }
        Ok(session)
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    pub async fn post(&mut self, payload: &str) -> Result<(), String> {
        let path = self.path();
        let reply = self
            .conn
            .send(
                Method::POST,
                &path,
                &[("content-type", "text/plain;charset=UTF-8")],
                payload,
            )
            .await?;
        self.nodes.extend(reply.node.clone());
        let body = ok_body(&reply, "post")?;
        if body != "ok" {
            return Err(format!("post answered {body:?}"));
        }
        Ok(())
    }

    /// Long-polls until a packet satisfies `done`, answering pings.
    pub async fn poll_until(&mut self, done: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let path = self.path();
            let reply = self.conn.get(&path).await?;
            self.nodes.extend(reply.node.clone());
            let body = ok_body(&reply, "poll")?;
            let mut finished = false;
            for packet in body.split(SEP) {
                if packet == "2" {
                    self.post("3").await?;
                }
                if packet == "1" {
                    return Err("the node closed the session".into());
                }
                finished |= done(packet);
                seen.push(packet.to_owned());
            }
            if finished {
                return Ok(seen);
            }
        }
        Err(format!("no expected packet in 20 polls: {seen:?}"))
    }

    /// Emits `event` with `arg` and returns the ack's first argument.
    pub async fn emit_ack(&mut self, event: &str, arg: &Value) -> Result<Value, String> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.post(&format!("42{id}{}", serde_json::json!([event, arg])))
            .await?;
        let prefix = format!("43{id}");
        let packets = self.poll_until(|p| p.starts_with(&prefix)).await?;
        let ack = packets
            .iter()
            .find(|p| p.starts_with(&prefix))
            .ok_or("ack vanished")?;
        let args: Value =
            serde_json::from_str(&ack[prefix.len()..]).map_err(|e| format!("ack {ack:?}: {e}"))?;
        Ok(args[0].clone())
    }

    /// Subscribes, publishes twice and checks both acks.
    pub async fn round_trips(&mut self, topic: &str) -> Result<(), String> {
        let ack = self.emit_ack("subscribe", &Value::from(topic)).await?;
        if ack["ok"] != true {
            return Err(format!("subscribe: {ack}"));
        }
        for n in 0..2 {
            let ack = self
                .emit_ack(
                    "publish",
                    &serde_json::json!({ "topic": topic, "content": n }),
                )
                .await?;
            if ack["ok"] != true {
                return Err(format!("publish: {ack}"));
            }
        }
        Ok(())
    }

    /// Sends the close packet.
    pub async fn close(mut self) -> Result<BTreeSet<String>, String> {
        self.post("1").await?;
        Ok(self.nodes)
    }
}

/// The body of a 200 response, or an error naming the status and body.
fn ok_body(reply: &Reply, what: &str) -> Result<String, String> {
    if reply.status != StatusCode::OK {
        return Err(format!("{what}: {} {}", reply.status, reply.body));
    }
    Ok(reply.body.clone())
}

/// A full polling session: handshake, connect, round trips, close.
pub async fn run_session(
    source: Ipv4Addr,
    target: SocketAddr,
    topic: &str,
) -> Result<BTreeSet<String>, String> {
    let mut session = PollingSession::open(source, target).await?;
    session.round_trips(topic).await?;
    session.close().await
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

/// The sum of every sample of `name` (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

/// Polls `check` every 50 ms until it holds or [`TIMEOUT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
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
