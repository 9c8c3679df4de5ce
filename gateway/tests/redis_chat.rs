//! Through the gateway with the Redis backend: three nodes that relay over a
//! `redis-server` of the test's own, clients that the gateway places one on
//! each node (by their 127.x.y.z address), and a chat over one topic where
//! every message reaches every client exactly once, whichever node it was
//! published on.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use http::Method;
use serde_json::{Value, json};
use stickyio_gateway::Gateway;
use stickyio_testkit::RedisServer;
use support::*;

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The `message` events and the ack with `ack_id` among polled packets.
fn sort_packets(
    packets: Vec<String>,
    ack_id: u32,
    messages: &mut Vec<Value>,
    ack: &mut Option<Value>,
) {
    let ack_prefix = format!("43{ack_id}");
    for packet in packets {
        if let Some(args) = packet.strip_prefix("42") {
            let args: Value = serde_json::from_str(args).expect("an event packet");
            if args[0] == "message" {
                messages.push(args[1].clone());
            }
        } else if let Some(args) = packet.strip_prefix(&ack_prefix) {
            let args: Value = serde_json::from_str(args).expect("an ack packet");
            *ack = Some(args[0].clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_redis_backed_nodes_chat_through_the_gateway() {
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for name in NAMES {
        nodes.push(redis_node(name, &redis.url()).await);
    }
    for node in &nodes {
        eventually(
            "every node is a ready Redis member of a pool of three",
            || async {
                let reply = admin(node.admin_addr(), Method::GET, "/readyz").await;
                let members = reply.json()["checks"]["redis"]["detail"]["members"]
                    .as_array()
                    .map_or(0, Vec::len);
                reply.status == 200 && members == 3
            },
        )
        .await;
    }
    let dir = TempDir::new("redis-chat");
    let config = dir.path("gateway.toml");
    std::fs::write(&config, gateway_toml(&node_list(&nodes), "")).unwrap();
    let gateway = Gateway::start(config).await.expect("gateway starts");

    // One client address that the gateway places on each node.
    let mut sessions = Vec::new();
    for name in NAMES {
        let ip = (0..1000)
            .map(client_ip)
            .find(|ip| ranking(*ip, &NAMES)[0] == name)
            .expect("an address for every node");
        let mut session = PollingSession::open(ip, gateway.local_addr())
            .await
            .expect("session opens");
        let ack = session
            .emit_ack("subscribe", &json!("chat.lobby"))
            .await
            .unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
        sessions.push(session);
    }

    // Every delivery is kept, in a list: a duplicate counts twice.
    let mut sent: Vec<(String, &str)> = Vec::new();
    let mut received: Vec<Vec<Value>> = vec![Vec::new(); NAMES.len()];
    for (from, name) in NAMES.iter().enumerate() {
        let ack_id = 100 + from as u32;
        let publish =
            json!(["publish", {"topic": "chat.lobby", "content": format!("hello from {name}")}]);
        sessions[from]
            .post(&format!("42{ack_id}{publish}"))
            .await
            .unwrap();
        for (to, session) in sessions.iter_mut().enumerate() {
            let mut ack = None;
            let mut messages = Vec::new();
            for _ in 0..10 {
                let wanted_ack = to != from || ack.is_some();
                if wanted_ack && !messages.is_empty() {
                    break;
                }
                let packets = session.poll_until(|_| true).await.unwrap();
                sort_packets(packets, ack_id, &mut messages, &mut ack);
            }
            if to == from {
                let ack = ack.expect("the publish is acked");
                assert_eq!(ack["ok"], true, "{ack}");
                sent.push((ack["id"].as_str().unwrap().to_owned(), name));
            }
            received[to].extend(messages);
        }
    }
    // A last publish from each node: a late duplicate of a message from
    // that node would arrive before it, so it is counted too.
    let is_end = |m: &Value| {
        m["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("end from"))
    };
    for (from, session) in sessions.iter_mut().enumerate() {
        let publish = json!(["publish", {"topic": "chat.lobby", "content": format!("end from {}", NAMES[from])}]);
        session
            .post(&format!("42{}{publish}", 200 + from))
            .await
            .unwrap();
    }
    for (to, session) in sessions.iter_mut().enumerate() {
        let mut ack = None;
        for _ in 0..20 {
            let ends = received[to].iter().filter(|m| is_end(m)).count();
            if ends == NAMES.len() && ack.is_some() {
                break;
            }
            let packets = session.poll_until(|_| true).await.unwrap();
            sort_packets(packets, 200 + to as u32, &mut received[to], &mut ack);
        }
        let ack = ack.expect("the last publish is acked");
        assert_eq!(ack["ok"], true, "{ack}");
        received[to].retain(|m| !is_end(m));
    }

    sent.sort();
    for (to, messages) in received.iter().enumerate() {
        let mut got: Vec<(String, &str)> = messages
            .iter()
            .map(|m| {
                let origin = NAMES
                    .iter()
                    .find(|n| m["node"] == **n)
                    .expect("a message from one of the nodes");
                assert_eq!(m["content"], format!("hello from {origin}"));
                assert_eq!(m["patterns"], json!(["chat.lobby"]));
                (m["id"].as_str().unwrap().to_owned(), *origin)
            })
            .collect();
        got.sort();
        assert_eq!(got, sent, "{} got each message once", NAMES[to]);
    }
    for (session, name) in sessions.into_iter().zip(NAMES) {
        let served_by = session.close().await.unwrap();
        assert_eq!(
            only(&served_by),
            name,
            "the gateway kept the client on its node"
        );
    }
    gateway.shutdown().await;
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
