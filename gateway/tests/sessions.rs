//! Long-polling sessions through the gateway and three real nodes: every
//! request of a session reaches one node, sessions spread over all nodes,
//! and the same traffic through a round-robin forwarder breaks, which shows
//! the test can tell.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::collections::BTreeMap;

use futures_util::StreamExt;
use support::*;

const SESSIONS: usize = 300;
/// Sessions in flight at once.
const PARALLEL: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_polling_sessions_stick_to_one_node_each() {
    let cluster = Cluster::start("sessions", &["node-a", "node-b", "node-c"], "").await;
    let target = cluster.addr();
    let results: Vec<(usize, Result<_, String>)> = futures_util::stream::iter(0..SESSIONS)
        .map(|i| async move {
            (
                i,
                run_session(client_ip(i), target, &format!("room.{i}")).await,
            )
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (i, result) in &results {
        let nodes = result
            .as_ref()
            .unwrap_or_else(|e| panic!("session {i} from {} failed: {e}", client_ip(*i)));
        assert_eq!(nodes.len(), 1, "session {i} was served by {nodes:?}");
        *per_node
            .entry(nodes.iter().next().unwrap().clone())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.keys().collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"],
        "{per_node:?}"
    );
    for (node, count) in &per_node {
        assert!(
            *count >= SESSIONS / 6,
            "{node} got only {count} sessions: {per_node:?}"
        );
    }
    let nodes = nodes_json(cluster.admin()).await;
    let handshakes: u64 = {
        let metrics = admin(cluster.admin(), http::Method::GET, "/metrics")
            .await
            .body;
        metrics
            .lines()
            .filter(|l| l.starts_with("stickyio_gateway_handshakes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        handshakes, SESSIONS as u64,
        "one handshake pinned per session"
    );
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(
        total(&nodes, "sessions"),
        0,
        "closed sessions are unpinned: {nodes:?}"
    );
    for node in &cluster.nodes {
        let text = node_metrics(node).await;
        assert_eq!(
            metric_sum(&text, "stickyio_node_session_unknown_total"),
            0.0,
            "{text}"
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sessions_through_round_robin_fail_with_session_id_unknown() {
    let nodes = vec![
        start_node("rr-a").await,
        start_node("rr-b").await,
        start_node("rr-c").await,
    ];
    let target = round_robin(nodes.iter().map(|n| n.local_addr()).collect()).await;
    let mut failures = Vec::new();
    for i in 0..10 {
        if let Err(e) = run_session(client_ip(i), target, "room.rr").await {
            failures.push(e);
        }
    }
    assert!(!failures.is_empty(), "round robin cannot keep sessions");
    assert!(
        failures.iter().all(|e| e.contains("Session ID unknown")),
        "failures should be unknown sessions: {failures:?}"
    );
    // The nodes count what an operator's alert watches for.
    let mut unknown = 0.0;
    for node in &nodes {
        unknown += metric_sum(
            &node_metrics(node).await,
            "stickyio_node_session_unknown_total",
        );
    }
    assert!(unknown >= failures.len() as f64, "{unknown} < {failures:?}");
    for node in nodes {
        let _ = node.shutdown().await;
    }
}
