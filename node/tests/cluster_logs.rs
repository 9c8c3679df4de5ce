//! What a clustered node logs about its links, through `Node::bind` as
//! `stickyio-node` starts. Alone in its test binary: it installs the global
//! log subscriber, which tests running in parallel would otherwise share.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stickyio_node::Node;
use stickyio_shared::config::node::NodeConfig;
use stickyio_testkit::eventually;
use stickyio_testkit::net::refused_url;

/// Log lines, captured for one test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Through `Node::bind`, as `stickyio-node` starts: a clustered node.toml
/// without `retry_interval` redials every 5 s, and says so.
#[tokio::test]
async fn by_default_a_failed_dial_is_retried_every_five_seconds() {
    // An address no other test of this binary binds.
    let peer = refused_url(Ipv4Addr::new(127, 77, 0, 1));
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nname = \"node-a\"\n[cluster]\nhost = \"http://node-a.invalid:3001\"\n\
         standalone = false\ncluster_nodes = [\"{peer}\"]\nsecret = \"s\"\n"
    );
    let config: NodeConfig = stickyio_shared::config::parse(&toml, "node.toml").unwrap();
    assert_eq!(config.cluster.retry_interval.get(), Duration::from_secs(5));

    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let node = Node::bind(config).await.unwrap();
    eventually("the node says when it retries", || {
        std::future::ready(logs.text().contains("Waiting 5s before retrying"))
    })
    .await;
    let text = logs.text();
    assert!(text.contains("Waiting 5s before retrying"), "{text}");
    assert!(
        text.contains(&format!("Trying to connect to {peer}")),
        "{text}"
    );
    assert!(text.contains(&format!("Link to {peer} failed")), "{text}");
    assert!(
        text.contains("Connection refused"),
        "the cause is named: {text}"
    );
    node.shutdown().await.unwrap();
}
