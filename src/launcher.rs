//! Starts the local topology in-process, prints where it is, and stops it.
//!
//! Nodes start first so the gateway's first health checks find them; on
//! shutdown the gateway stops first so no request reaches a closing node.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use stickyio_gateway::{Gateway, RunningGateway, StartError};
use stickyio_node::server::{Node, NodeError, RunningNode};
use stickyio_shared::placement::{ClientKey, rank};

use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("node {name}: {source}")]
    Node {
        name: String,
        #[source]
        source: NodeError,
    },
    #[error("gateway: {0}")]
    Gateway(#[from] StartError),
}

/// A running gateway with its nodes.
pub struct LocalCluster {
    topology: Topology,
    gateway: RunningGateway,
    nodes: Vec<RunningNode>,
}

impl LocalCluster {
    pub async fn start(topology: Topology) -> Result<LocalCluster, LaunchError> {
        let mut nodes = Vec::with_capacity(topology.nodes.len());
        for config in &topology.nodes {
            match Node::bind(config.clone()).await {
                Ok(node) => nodes.push(node),
                Err(source) => {
                    stop_nodes(nodes).await;
                    return Err(LaunchError::Node {
                        name: config.name.clone(),
                        source,
                    });
                }
            }
        }
        let gateway = match Gateway::start(topology.gateway_file.clone()).await {
            Ok(gateway) => gateway,
            Err(e) => {
                stop_nodes(nodes).await;
                return Err(e.into());
            }
        };
        Ok(LocalCluster {
            topology,
            gateway,
            nodes,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.gateway.admin_addr()
    }

    pub fn nodes(&self) -> &[RunningNode] {
        &self.nodes
    }

    /// What a person needs to start using it; the `public` line is also
    /// what the end-to-end tests read.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "stickyio is up");
        let _ = writeln!(s, "  public  http://{}", self.public_addr());
        let _ = writeln!(
            s,
            "  admin   http://{}  (/nodes /metrics /route?ip=… POST /reload)",
            self.admin_addr()
        );
        let _ = writeln!(
            s,
            "  gateway config  {}  (edits reload live)",
            self.topology.gateway_file.display()
        );
        let _ = writeln!(
            s,
            "  {:<8} {:<22} {:<22} {:<10} demo",
            "node", "address", "admin", "mesh"
        );
        for node in &self.nodes {
            let config = node.config();
            let mesh = if config.cluster.standalone {
                "standalone".to_owned()
            } else {
                format!("{} peers", config.cluster.peers().len())
            };
            let _ = writeln!(
                s,
                "  {:<8} {:<22} {:<22} {:<10} http://{}/",
                config.name,
                node.local_addr(),
                node.admin_addr(),
                mesh,
                node.local_addr()
            );
        }
        if let Some(tip) = self.demo_tip() {
            let _ = writeln!(s, "{tip}");
        }
        let _ = write!(s, "Ctrl-C stops everything.");
        s
    }

    /// A browser here reaches the gateway from 127.0.0.1, so every tab it
    /// opens there lands on one node. Name that node, and a second node to
    /// open directly, so two tabs on two nodes can chat over the mesh.
    fn demo_tip(&self) -> Option<String> {
        let gateway = &self.topology.gateway;
        let key = ClientKey::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            gateway.ipv4_prefix,
            gateway.ipv6_prefix,
        );
        let ranked = rank(&key, &gateway.nodes, |n| (n.name.as_str(), n.weight));
        let yours = ranked.first()?;
        let other = self.nodes.iter().find(|n| n.config().name != yours.name)?;
        Some(format!(
            "Demo: http://{}/ lands on {} from this machine; open http://{}/ ({}) in a second tab and chat across nodes.",
            self.public_addr(),
            yours.name,
            other.local_addr(),
            other.config().name
        ))
    }

    /// Gateway first, then the nodes, each gracefully.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        stop_nodes(self.nodes).await;
    }
}

async fn stop_nodes(nodes: Vec<RunningNode>) {
    for node in nodes {
        let name = node.config().name.clone();
        if let Err(e) = node.shutdown().await {
            tracing::warn!(node = %name, error = %e, "node did not shut down cleanly");
        }
    }
}
