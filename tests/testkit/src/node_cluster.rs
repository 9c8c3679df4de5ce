//! A cluster of real in-process nodes on ephemeral loopback ports, over
//! either backend.
//!
//! Every node is bound on port 0 first; only then are the URLs known, so the
//! backend is attached afterwards ([`stickyio_node::Cluster::attach`]),
//! exactly as `Node::bind` does.
//! Mesh links can be routed through a forwarder, and a node can be given
//! another secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::Value;
use stickyio_node::{Node, RunningNode};
use stickyio_shared::config::Duration as ConfigDuration;
use stickyio_shared::config::node::{self, HistoryConfig, NodeConfig};

use crate::http_conn::{Reply, get};
use crate::wait::eventually;

pub const SECRET: &str = "cluster-test-secret";
/// Heartbeat TTL of Redis-backed test nodes: short, so a member that is
/// gone stops being expected soon.
pub const REDIS_TTL: Duration = Duration::from_millis(1500);

/// What carries publications between the nodes of a test cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Mesh,
    /// A Redis at this URL.
    Redis(String),
}

impl Backend {
    /// The key of its check in `/readyz`.
    pub fn check(&self) -> &'static str {
        match self {
            Backend::Mesh => "mesh",
            Backend::Redis(_) => "redis",
        }
    }
}

/// Clusters started so far by this test binary; `127.77.0.*` stays unused.
static CLUSTERS: AtomicU8 = AtomicU8::new(1);

enum Slot {
    Prepared(Node),
    Running(RunningNode),
    Stopped,
}

pub struct Cluster {
    pub backend: Backend,
    pub retry: Duration,
    /// `cluster.link_queue` of every node.
    pub link_queue: usize,
    /// `[history]` of every node.
    history: HistoryConfig,
    addrs: Vec<SocketAddr>,
    names: Vec<String>,
    routes: HashMap<(usize, usize), String>,
    secrets: Vec<String>,
    slots: Vec<Slot>,
}

pub fn name(i: usize) -> String {
    format!("node-{}", char::from(b'a' + i as u8))
}

async fn prepare(name: &str, listen: SocketAddr, history: &HistoryConfig) -> Node {
    let mut config = NodeConfig::standalone(name, listen);
    config.history = history.clone();
    Node::prepare(config)
        .await
        .unwrap_or_else(|e| panic!("prepare {name}: {e}"))
}

impl Cluster {
    /// Binds `n` nodes on port 0; none serves until [`Cluster::start`].
    /// Each cluster has loopback addresses of its own (`127.77.<k>.<i>`), so
    /// a node restarted on its port cannot find it taken by another test.
    pub async fn bind(n: usize, retry: Duration) -> Cluster {
        Cluster::bind_with(n, retry, Backend::Mesh).await
    }

    pub async fn bind_with(n: usize, retry: Duration, backend: Backend) -> Cluster {
        Cluster::bind_with_history(n, retry, backend, HistoryConfig::default()).await
    }

    /// Like [`Cluster::bind_with`], every node keeping `history`.
    pub async fn bind_with_history(
        n: usize,
        retry: Duration,
        backend: Backend,
        history: HistoryConfig,
    ) -> Cluster {
        let k = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let mut slots = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let addr = SocketAddr::from(([127, 77, k, i as u8 + 1], 0));
            let node = prepare(&name(i), addr, &history).await;
            addrs.push(node.local_addr());
            slots.push(Slot::Prepared(node));
        }
        Cluster {
            backend,
            retry,
            link_queue: NodeConfig::standalone("n", addrs[0]).cluster.link_queue,
            history,
            names: (0..n).map(name).collect(),
            addrs,
            routes: HashMap::new(),
            secrets: vec![SECRET.to_owned(); n],
            slots,
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Node `from` dials node `to` at `via` instead of its own address.
    pub fn route(&mut self, from: usize, to: usize, via: &str) {
        self.routes.insert((from, to), via.to_owned());
    }

    /// Gives node `i`, bound but not started, another name.
    pub async fn rename(&mut self, i: usize, name: &str) {
        self.names[i] = name.to_owned();
        // Drops the bound listener first, so its port is free again.
        self.slots[i] = Slot::Stopped;
        self.slots[i] = Slot::Prepared(prepare(name, self.addrs[i], &self.history).await);
    }

    pub fn set_secret(&mut self, i: usize, secret: &str) {
        self.secrets[i] = secret.to_owned();
    }

    /// The URL node `from` dials for node `to`.
    pub fn peer_url(&self, from: usize, to: usize) -> String {
        self.routes
            .get(&(from, to))
            .cloned()
            .unwrap_or_else(|| self.url(to))
    }

    fn config(&self, i: usize) -> NodeConfig {
        let mut config = NodeConfig::standalone(&self.names[i], self.addrs[i]);
        config.cluster.standalone = false;
        config.cluster.retry_interval = ConfigDuration(self.retry);
        match &self.backend {
            Backend::Mesh => {
                config.cluster.host = Some(self.url(i));
                config.cluster.cluster_nodes = (0..self.addrs.len())
                    .map(|to| self.peer_url(i, to))
                    .collect();
                config.cluster.secret = Some(self.secrets[i].clone());
                config.cluster.link_queue = self.link_queue;
            }
            Backend::Redis(url) => {
                config.cluster.backend = node::Backend::Redis;
                config.cluster.redis_url = Some(url.clone());
                config.cluster.redis_heartbeat_ttl = ConfigDuration(REDIS_TTL);
            }
        }
        config
    }

    /// Joins every bound node to the mesh and starts serving.
    pub async fn start(&mut self) {
        for i in 0..self.slots.len() {
            if let Slot::Prepared(node) = std::mem::replace(&mut self.slots[i], Slot::Stopped) {
                self.slots[i] = Slot::Running(self.serve(i, node));
            }
        }
    }

    fn serve(&self, i: usize, mut node: Node) -> RunningNode {
        let config = self.config(i);
        stickyio_node::Cluster::attach(&mut node, &config)
            .unwrap_or_else(|e| panic!("attach {}: {e}", self.names[i]));
        node.serve()
    }

    /// Shuts node `i` down gracefully: its sockets and links close.
    pub async fn stop_node(&mut self, i: usize) {
        if let Slot::Running(node) = std::mem::replace(&mut self.slots[i], Slot::Stopped) {
            node.shutdown().await.unwrap();
        }
    }

    /// Starts node `i` again on the port it had.
    pub async fn restart(&mut self, i: usize) {
        let node = prepare(&self.names[i], self.addrs[i], &self.history).await;
        self.slots[i] = Slot::Running(self.serve(i, node));
    }

    /// Node `i`'s admin listener (a new port each time it is prepared).
    fn admin_addr(&self, i: usize) -> SocketAddr {
        match &self.slots[i] {
            Slot::Prepared(node) => node.admin_addr(),
            Slot::Running(node) => node.admin_addr(),
            Slot::Stopped => panic!("node {i} is stopped: no admin listener"),
        }
    }

    async fn get(&self, i: usize, path: &str) -> Reply {
        get(self.admin_addr(i), path).await
    }

    pub async fn readyz(&self, i: usize) -> (u16, Value) {
        let reply = self.get(i, "/readyz").await;
        let body = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", reply.body));
        (reply.status.as_u16(), body)
    }

    pub async fn metrics(&self, i: usize) -> String {
        self.get(i, "/metrics").await.body
    }

    /// Node `from`'s link to node `to`, as its `/readyz` reports it.
    pub async fn link(&self, from: usize, to: usize) -> Value {
        let (_, body) = self.readyz(from).await;
        let url = self.peer_url(from, to);
        body["checks"]["mesh"]["detail"]["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["url"] == url.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("{} reports no link to {url}: {body}", name(from)))
    }

    pub async fn link_state(&self, from: usize, to: usize) -> String {
        self.link(from, to).await["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until every link between the given nodes is in `state`.
    pub async fn links_become(&self, pairs: &[(usize, usize)], state: &str) {
        eventually(&format!("links {pairs:?} are {state}"), || async {
            for &(from, to) in pairs {
                if self.link_state(from, to).await != state {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Waits until the given nodes are joined: mesh links up between them
    /// all, or each ready on Redis and listing them all as members.
    pub async fn joined(&self, nodes: &[usize]) {
        if self.backend == Backend::Mesh {
            return self.links_become(&Cluster::pairs(nodes), "up").await;
        }
        let members: Vec<String> = nodes.iter().map(|&i| self.names[i].clone()).collect();
        eventually(&format!("{members:?} are ready Redis members"), || async {
            for &i in nodes {
                let (status, body) = self.readyz(i).await;
                let listed: Vec<&str> = body["checks"]["redis"]["detail"]["members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|m| m["name"].as_str()).collect())
                    .unwrap_or_default();
                if status != 200 || members.iter().any(|m| !listed.contains(&m.as_str())) {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Every ordered pair among `nodes`.
    pub fn pairs(nodes: &[usize]) -> Vec<(usize, usize)> {
        nodes
            .iter()
            .flat_map(|&a| nodes.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
            .collect()
    }

    pub async fn stop(mut self) {
        for i in 0..self.slots.len() {
            self.stop_node(i).await;
        }
    }
}
