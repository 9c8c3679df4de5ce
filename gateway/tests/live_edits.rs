//! Editing `gateway.toml` while sessions are live, and node failover.
//!
//! Adding a node moves some clients' placement to it, yet every live
//! session stays on its node (pinning) while new handshakes follow the new
//! ring. A removed node drains. A bad edit is refused with its location and
//! the old config keeps serving. A stopped node's clients fail over to their
//! next choice and come back when it returns.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::collections::BTreeSet;

use futures_util::StreamExt;
use http::{Method, StatusCode};
use serde_json::Value;
use support::*;

const LIVE: usize = 100;

async fn open_sessions(
    target: std::net::SocketAddr,
    range: std::ops::Range<usize>,
) -> Vec<(usize, PollingSession)> {
    let opened: Vec<(usize, Result<PollingSession, String>)> = futures_util::stream::iter(range)
        .map(|i| async move {
            let session = async {
                let mut s = PollingSession::open(client_ip(i), target).await?;
                let ack = s
                    .emit_ack("subscribe", &Value::from(format!("live.{i}")))
                    .await?;
                if ack["ok"] != true {
                    return Err(format!("subscribe: {ack}"));
                }
                Ok(s)
            };
            (i, session.await)
        })
        .buffer_unordered(25)
        .collect()
        .await;
    opened
        .into_iter()
        .map(|(i, s)| {
            (
                i,
                s.unwrap_or_else(|e| panic!("session {i} failed to open: {e}")),
            )
        })
        .collect()
}

/// One publish round trip on every session, in parallel; panics on any failure.
async fn exercise(sessions: Vec<(usize, PollingSession)>) -> Vec<(usize, PollingSession)> {
    futures_util::stream::iter(sessions)
        .map(|(i, mut s)| async move {
            let ack = s
                .emit_ack(
                    "publish",
                    &serde_json::json!({ "topic": format!("live.{i}"), "content": i }),
                )
                .await;
            match ack {
                Ok(ack) if ack["ok"] == true => (i, s),
                other => panic!("live session {i} broke: {other:?}"),
            }
        })
        .buffer_unordered(25)
        .collect()
        .await
}

async fn handshake_node(i: usize, target: std::net::SocketAddr) -> String {
    let session = PollingSession::open(client_ip(i), target)
        .await
        .unwrap_or_else(|e| panic!("handshake {i}: {e}"));
    only(&session.close().await.expect("close"))
}

fn node<'a>(nodes: &'a [Value], name: &str) -> &'a Value {
    nodes
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {nodes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_nodes_breaks_no_live_session() {
    let mut cluster = Cluster::start("edits", &["node-a", "node-b"], "").await;
    let node_c = start_node("node-c").await;
    let (target, admin) = (cluster.addr(), cluster.admin());

    let sessions = open_sessions(target, 0..LIVE).await;
    let sessions = exercise(sessions).await;
    let before: Vec<(usize, String)> = sessions.iter().map(|(i, s)| (*i, only(&s.nodes))).collect();
    for (i, node) in &before {
        assert_eq!(
            *node,
            ranking(client_ip(*i), &["node-a", "node-b"])[0],
            "session {i}"
        );
    }

    // Add node-c by editing the file; the watcher reloads it.
    cluster.nodes.push(node_c);
    replace_file(
        &cluster.config,
        &gateway_toml(&node_list(&cluster.nodes), ""),
    );
    eventually("node-c in the ring", || async {
        nodes_json(admin).await.len() == 3
    })
    .await;

    let moved: Vec<usize> = before
        .iter()
        .filter(|(i, _)| ranking(client_ip(*i), &["node-a", "node-b", "node-c"])[0] == "node-c")
        .map(|(i, _)| *i)
        .collect();
    assert!(
        moved.len() >= LIVE / 6,
        "placement moved {} of {LIVE} clients to node-c",
        moved.len()
    );
    let sessions = exercise(sessions).await;
    for (i, s) in &sessions {
        let was = &before.iter().find(|(j, _)| j == i).unwrap().1;
        assert_eq!(&only(&s.nodes), was, "live session {i} stayed on its node");
    }
    // New handshakes follow the new ring, including from the moved clients.
    for &i in moved.iter().take(5) {
        assert_eq!(
            handshake_node(i, target).await,
            "node-c",
            "new handshake from client {i}"
        );
    }
    for i in 1000..1020 {
        assert_eq!(
            handshake_node(i, target).await,
            ranking(client_ip(i), &["node-a", "node-b", "node-c"])[0]
        );
    }

    // Remove node-a: its sessions drain, it takes no new handshakes.
    let without_a: Vec<_> = node_list(&cluster.nodes)
        .into_iter()
        .filter(|(n, _)| *n != "node-a")
        .collect();
    replace_file(&cluster.config, &gateway_toml(&without_a, ""));
    eventually("node-a draining", || async {
        node(&nodes_json(admin).await, "node-a")["draining"] == true
    })
    .await;
    let on_a = before.iter().filter(|(_, n)| n == "node-a").count() as i64;
    assert!(on_a > 0);
    assert_eq!(node(&nodes_json(admin).await, "node-a")["sessions"], on_a);
    let sessions = exercise(sessions).await;
    let a_clients: Vec<usize> = (2000..2100)
        .filter(|i| ranking(client_ip(*i), &["node-a", "node-b", "node-c"])[0] == "node-a")
        .take(5)
        .collect();
    for &i in &a_clients {
        let served = handshake_node(i, target).await;
        assert_eq!(
            served,
            ranking(client_ip(i), &["node-b", "node-c"])[0],
            "client {i} of removed node-a"
        );
    }

    let mut seen = BTreeSet::new();
    for (_, s) in sessions {
        seen.extend(s.close().await.expect("close"));
    }
    assert!(
        seen.contains("node-a"),
        "the drained node served its sessions to the end"
    );
    eventually("node-a forgotten once drained", || async {
        nodes_json(admin)
            .await
            .iter()
            .all(|n| n["name"] != "node-a")
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_edit_is_refused_with_its_location_and_the_old_config_serves() {
    let cluster = Cluster::start("bad-edit", &["node-a", "node-b"], "").await;
    let (target, admin) = (cluster.addr(), cluster.admin());
    let good = std::fs::read_to_string(&cluster.config).unwrap();
    // The bad edit also renames node-a: only the old config has that name.
    let bad = good
        .replacen("name = \"node-b\"", "name = \"node-b\"\nweight = 0", 1)
        .replacen("name = \"node-a\"", "name = \"node-z\"", 1);
    let weight_line = bad.lines().position(|l| l == "weight = 0").unwrap() + 1;
    replace_file(&cluster.config, &bad);

    let reply = admin_reload(admin).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let json = reply.json();
    let location = format!("{}:{weight_line}:10", cluster.config.display());
    assert_eq!(json["location"], location.as_str(), "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or("")
            .contains("`nodes[1].weight`: must be at least 1"),
        "{json}"
    );
    let err = cluster.gateway.reload().await.unwrap_err().to_string();
    assert!(err.contains(&location), "{err}");

    // Still serving with both nodes, by their old names.
    let names: Vec<Value> = nodes_json(admin)
        .await
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
    assert_eq!(cluster.gateway.config().nodes[0].name, "node-a");
    let nodes = run_session(client_ip(1), target, "still.here")
        .await
        .expect("old config serves");
    assert_eq!(
        only(&nodes),
        ranking(client_ip(1), &["node-a", "node-b"])[0]
    );

    // A fixed file is taken again.
    replace_file(
        &cluster.config,
        &good.replace(
            "[[nodes]]\nname = \"node-b\"",
            "[[nodes]]\nweight = 3\nname = \"node-b\"",
        ),
    );
    let reply = admin_reload(admin).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(node(&nodes_json(admin).await, "node-b")["weight"], 3);
    cluster.stop().await;
}

async fn admin_reload(admin_addr: std::net::SocketAddr) -> Reply {
    admin(admin_addr, Method::POST, "/reload").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_fails_over_and_comes_back_after_restart() {
    let mut cluster = Cluster::start("failover", &["node-a", "node-b", "node-c"], "").await;
    let (target, admin) = (cluster.addr(), cluster.admin());
    let all = ["node-a", "node-b", "node-c"];
    let b_clients: Vec<usize> = (0..200)
        .filter(|i| ranking(client_ip(*i), &all)[0] == "node-b")
        .take(6)
        .collect();
    assert_eq!(handshake_node(b_clients[0], target).await, "node-b");
    let mut orphan = PollingSession::open(client_ip(b_clients[0]), target)
        .await
        .expect("a session on node-b");

    let b = cluster.nodes.remove(1);
    let b_addr = b.local_addr();
    b.shutdown().await.expect("node-b stops");
    // The session lived only on node-b: a clear 502, so the client reconnects.
    let err = orphan.post("42[\"subscriptions\"]").await.unwrap_err();
    assert!(err.starts_with("post: 502 Bad Gateway"), "{err}");
    // node_unreachable, or node_failed when a pooled connection died first.
    assert!(err.contains("\"node\":\"node-b\""), "{err}");
    for &i in &b_clients {
        let nodes = run_session(client_ip(i), target, "failover")
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(
            only(&nodes),
            ranking(client_ip(i), &all)[1],
            "client {i} went to its next choice"
        );
    }
    eventually("node-b marked down", || async {
        node(&nodes_json(admin).await, "node-b")["healthy"] == false
    })
    .await;
    let route = admin_json(admin, &format!("/route?ip={}", client_ip(b_clients[0]))).await;
    assert!(
        route["reason"]
            .as_str()
            .unwrap_or("")
            .contains("node-b is down"),
        "{route}"
    );

    let b = start_node_at("node-b", b_addr).await;
    cluster.nodes.insert(1, b);
    eventually("node-b healthy again", || async {
        node(&nodes_json(admin).await, "node-b")["healthy"] == true
    })
    .await;
    for &i in &b_clients {
        assert_eq!(
            handshake_node(i, target).await,
            "node-b",
            "client {i} is back on node-b"
        );
    }
    cluster.stop().await;
}

async fn admin_json(addr: std::net::SocketAddr, path: &str) -> Value {
    admin(addr, Method::GET, path).await.json()
}

/// Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink;
/// the file's own name sees no event, yet the change must be picked up.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_reloaded() {
    use std::os::unix::fs::symlink;
    let nodes = [start_node("node-a").await, start_node("node-b").await];
    let dir = TempDir::new("configmap");
    let version = |n: u32, text: &str| {
        let v = dir.path(&format!("..v{n}"));
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("gateway.toml"), text).unwrap();
        symlink(format!("..v{n}"), dir.path("..data_tmp")).unwrap();
        std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    };
    let text = gateway_toml(&node_list(&nodes), "");
    version(1, &text);
    symlink("..data/gateway.toml", dir.path("gateway.toml")).unwrap();
    let gw = stickyio_gateway::Gateway::start(dir.path("gateway.toml"))
        .await
        .expect("gateway starts");
    let admin_addr = gw.admin_addr();
    assert_eq!(node(&nodes_json(admin_addr).await, "node-b")["weight"], 1);

    version(
        2,
        &text.replace("name = \"node-b\"", "name = \"node-b\"\nweight = 5"),
    );
    eventually("the swapped config is live", || async {
        node(&nodes_json(admin_addr).await, "node-b")["weight"] == 5
    })
    .await;
    gw.shutdown().await;
    for n in nodes {
        let _ = n.shutdown().await;
    }
}
