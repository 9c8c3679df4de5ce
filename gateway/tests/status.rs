//! What the status page reads: `/status` (nodes with their counters, the
//! last reload, the check interval), `/route` by sid, and the reload series
//! on `/metrics`, across a bad and a good edit of `gateway.toml` (picked up
//! by the file watcher).

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use http::{Method, StatusCode};
use serde_json::Value;
use support::*;

async fn status(admin_addr: std::net::SocketAddr) -> Value {
    let reply = admin(admin_addr, Method::GET, "/status").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_nodes_counters_and_the_last_reload() {
    let cluster = Cluster::start("status", &["node-a", "node-b"], "").await;
    let admin_addr = cluster.admin();

    let first = status(admin_addr).await;
    assert_eq!(first["last_reload"], Value::Null, "no reload yet");
    assert_eq!(first["health"]["interval_ms"], 100);
    assert_eq!(
        first["fail_open"],
        serde_json::json!({ "active": false, "healthy": null, "total": null, "panic_threshold": 50 })
    );
    let names: Vec<&str> = first["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);

    // A session counts requests on its node, and /route finds it by sid.
    let mut session = PollingSession::open(client_ip(7), cluster.addr())
        .await
        .unwrap();
    session.round_trips("status.t").await.unwrap();
    let node = only(&session.nodes);
    let after = status(admin_addr).await;
    let served = after["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node.as_str())
        .unwrap()
        .clone();
    assert!(served["requests"].as_u64().unwrap() >= 6, "{served}");
    assert_eq!(served["upstream_errors"], 0);
    assert_eq!(served["sessions"], 1);
    let route = admin(
        admin_addr,
        Method::GET,
        &format!("/route?sid={}", session.sid),
    )
    .await;
    assert_eq!(route.status, StatusCode::OK, "{}", route.body);
    assert_eq!(route.json()["node"], node.as_str());
    assert!(
        route.json()["reason"]
            .as_str()
            .unwrap()
            .starts_with("session: the sid's route tag"),
        "{}",
        route.body
    );
    assert_eq!(route.json()["listed"], true);
    let forged = admin(admin_addr, Method::GET, "/route?sid=not-a-tagged-sid").await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert_eq!(forged.json()["error"], "invalid_sid");
    assert_eq!(forged.json()["valid"], false);

    // A bad edit is refused and shown with its location; the series follow.
    let good = std::fs::read_to_string(&cluster.config).unwrap();
    let bad = good.replace("rise = 2", "rise = \"two\"");
    let line = bad.lines().position(|l| l.starts_with("rise")).unwrap() + 1;
    replace_file(&cluster.config, &bad);
    eventually("the bad edit refused", || async {
        status(admin_addr).await["last_reload"]["ok"] == false
    })
    .await;
    let last = status(admin_addr).await["last_reload"].clone();
    let location = last["location"].as_str().unwrap();
    assert!(
        location.ends_with(&format!("gateway.toml:{line}:8")),
        "{location}"
    );
    assert!(
        last["error"].as_str().unwrap().starts_with(location),
        "{last}"
    );
    let metrics = admin(admin_addr, Method::GET, "/metrics").await.body;
    assert!(
        metrics.contains("stickyio_gateway_config_last_reload_ok 0"),
        "{metrics}"
    );
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stickyio_gateway_config_reloads_total{result=\"error\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(errors >= 1, "{metrics}");

    // A good edit that removes node-b is applied and recorded.
    let without_b = gateway_toml(&node_list(&cluster.nodes[..1]), "");
    replace_file(&cluster.config, &without_b);
    eventually("the good edit applied", || async {
        status(admin_addr).await["last_reload"]["removed"] == serde_json::json!(["node-b"])
    })
    .await;
    let after = status(admin_addr).await;
    let last = &after["last_reload"];
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["error"], Value::Null);
    assert!(last["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let metrics = admin(admin_addr, Method::GET, "/metrics").await.body;
    assert!(
        metrics.contains("stickyio_gateway_config_last_reload_ok 1"),
        "{metrics}"
    );
    session.close().await.unwrap();
    cluster.stop().await;
}
