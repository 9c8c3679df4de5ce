//! A node's shutdown waits for its cluster backend: once
//! `RunningNode::shutdown` returns, every mesh link task has finished.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::Ipv4Addr;

use stickyio_node::{Cluster, Node};
use stickyio_shared::config::node::NodeConfig;
use stickyio_testkit::net::refused_url;
use stickyio_testkit::{TIMEOUT as WAIT, eventually};
use tokio::time::timeout;

#[tokio::test]
async fn shutdown_joins_every_mesh_link() {
    // An address no other test of this binary binds.
    let peer = refused_url(Ipv4Addr::new(127, 78, 0, 1));
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nname = \"node-a\"\n[cluster]\n\
         host = \"http://node-a.invalid:3001\"\nstandalone = false\ncluster_nodes = [\"{peer}\"]\n\
         secret = \"s\"\nretry_interval = \"100ms\"\n"
    );
    let config: NodeConfig = stickyio_shared::config::parse(&toml, "node.toml").unwrap();
    let node = timeout(WAIT, Node::bind(config)).await.unwrap().unwrap();
    let Cluster::Mesh(mesh) = node.cluster().clone() else {
        panic!("a clustered node.toml with the default backend runs the mesh");
    };
    // The link has failed a dial, so it is between retries.
    eventually("the first dial fails", || {
        std::future::ready(mesh.status().peers[0].link.last_error.is_some())
    })
    .await;
    timeout(WAIT, node.shutdown()).await.unwrap().unwrap();
    let link = &mesh.status().peers[0].link;
    assert_eq!(
        link.last_error.as_deref(),
        Some("this node is shutting down"),
        "the link task ran to its end before shutdown returned: {link:?}"
    );
}
