//! A cluster of real in-process nodes on ephemeral loopback ports.
//!
//! Every node is bound on port 0 first; only then are the URLs known, so the
//! mesh is attached afterwards with [`stickyio_node::mesh::attach`], exactly
//! as `Node::bind` does for a node whose config lists its peers. Links can be
//! routed through a forwarder, and a node can be given another secret.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::Value;
use stickyio_node::{Node, RunningNode, mesh};
use stickyio_shared::config::Duration as ConfigDuration;
use stickyio_shared::config::node::NodeConfig;
use tokio::time::{sleep, timeout};

use super::client::WAIT;

pub const SECRET: &str = "cluster-test-secret";

/// Clusters started so far by this test binary; `127.77.0.*` stays unused.
static CLUSTERS: AtomicU8 = AtomicU8::new(1);

enum Slot {
    Prepared(Node),
    Running(RunningNode),
    Stopped,
}

pub struct Cluster {
    pub retry: Duration,
    /// `cluster.link_queue` of every node.
    pub link_queue: usize,
    addrs: Vec<SocketAddr>,
    routes: HashMap<(usize, usize), String>,
    secrets: Vec<String>,
    slots: Vec<Slot>,
    http: reqwest::Client,
}

pub fn name(i: usize) -> String {
    format!("node-{}", char::from(b'a' + i as u8))
}

async fn prepare(i: usize, listen: SocketAddr) -> Node {
    Node::prepare(NodeConfig::standalone(name(i), listen))
        .await
        .unwrap_or_else(|e| panic!("prepare {}: {e}", name(i)))
}

impl Cluster {
    /// Binds `n` nodes on port 0; none serves until [`Cluster::start`].
    /// Each cluster has loopback addresses of its own (`127.77.<k>.<i>`), so
    /// a node restarted on its port cannot find it taken by another test.
    pub async fn bind(n: usize, retry: Duration) -> Cluster {
        let k = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let mut slots = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let node = prepare(i, SocketAddr::from(([127, 77, k, i as u8 + 1], 0))).await;
            addrs.push(node.local_addr());
            slots.push(Slot::Prepared(node));
        }
        Cluster {
            retry,
            link_queue: NodeConfig::standalone("n", addrs[0]).cluster.link_queue,
            addrs,
            routes: HashMap::new(),
            secrets: vec![SECRET.to_owned(); n],
            slots,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Node `from` dials node `to` at `via` instead of its own address.
    pub fn route(&mut self, from: usize, to: usize, via: &str) {
        self.routes.insert((from, to), via.to_owned());
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
        let mut config = NodeConfig::standalone(name(i), self.addrs[i]);
        config.cluster.host = Some(self.url(i));
        config.cluster.standalone = false;
        config.cluster.cluster_nodes = (0..self.addrs.len())
            .map(|to| self.peer_url(i, to))
            .collect();
        config.cluster.secret = Some(self.secrets[i].clone());
        config.cluster.retry_interval = ConfigDuration(self.retry);
        config.cluster.link_queue = self.link_queue;
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

    fn serve(&self, i: usize, node: Node) -> RunningNode {
        mesh::attach(&node, &self.config(i)).unwrap_or_else(|e| panic!("attach {}: {e}", name(i)));
        node.serve()
    }

    /// Shuts node `i` down gracefully: its sockets and links close.
    pub async fn kill(&mut self, i: usize) {
        if let Slot::Running(node) = std::mem::replace(&mut self.slots[i], Slot::Stopped) {
            node.shutdown().await.unwrap();
        }
    }

    /// Starts node `i` again on the port it had.
    pub async fn restart(&mut self, i: usize) {
        let node = prepare(i, self.addrs[i]).await;
        self.slots[i] = Slot::Running(self.serve(i, node));
    }

    async fn get(&self, i: usize, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.url(i));
        timeout(WAIT, self.http.get(&url).send())
            .await
            .unwrap_or_else(|_| panic!("GET {url} timed out"))
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub async fn readyz(&self, i: usize) -> (u16, Value) {
        let response = self.get(i, "/readyz").await;
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn metrics(&self, i: usize) -> String {
        self.get(i, "/metrics").await.text().await.unwrap()
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

    /// Every ordered pair among `nodes`.
    pub fn pairs(nodes: &[usize]) -> Vec<(usize, usize)> {
        nodes
            .iter()
            .flat_map(|&a| nodes.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
            .collect()
    }

    pub async fn stop(mut self) {
        for i in 0..self.slots.len() {
            self.kill(i).await;
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics after about [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polls = WAIT.as_millis() / 50;
    let outcome = timeout(WAIT * 2, async {
        for _ in 0..polls {
            if check().await {
                return true;
            }
            sleep(Duration::from_millis(50)).await;
        }
        false
    })
    .await;
    assert_eq!(outcome, Ok(true), "timed out waiting until {what}");
}
