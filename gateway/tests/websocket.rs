//! rust_socketio (a Rust Socket.IO client, neither JS nor Python) through the
//! gateway. Polling-to-websocket upgrade: the upgrade request carries the
//! pinned sid, the gateway relays the 101 and then bytes both ways, and
//! messages flow over the relayed websocket. And over each transport alone
//! (polling, websocket, upgrade), clients placed on different nodes of a mesh
//! chat through the topic API.
//!
//! rust_socketio 0.6 emits before the namespace connect is acked, so every
//! client waits for its Connect event first; its callbacks only push into
//! channels, since they run inline on its reader.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

/// A connected client: returns once the server has acknowledged the
/// namespace connect, as socket.io clients wait before emitting. With
/// `forwarded_for`, the gateway (trusting loopback) places it by that address.
async fn client(
    url: &str,
    transport: TransportType,
    forwarded_for: Option<Ipv4Addr>,
    messages: mpsc::UnboundedSender<Value>,
) -> Client {
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let mut builder = ClientBuilder::new(url)
        .transport_type(transport)
        .reconnect(false);
    if let Some(ip) = forwarded_for {
        builder = builder.opening_header("x-forwarded-for", ip.to_string());
    }
    let client = builder
        .on(Event::Connect, move |_, _| {
            let _ = connected_tx.send(());
            async {}.boxed()
        })
        .on("message", move |payload: Payload, _| {
            if let Payload::Text(values) = payload {
                let _ = messages.send(first(values));
            }
            async {}.boxed()
        })
        .connect()
        .await
        .expect("rust_socketio connects through the gateway");
    tokio::time::timeout(TIMEOUT, connected.recv())
        .await
        .expect("namespace connect acknowledged in time");
    client
}

/// Emits with an ack and returns the ack's first value.
async fn ack(client: &Client, event: &str, arg: Value) -> Value {
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .emit_with_ack(
            event,
            arg,
            Duration::from_secs(5),
            move |payload: Payload, _| {
                let tx = tx.clone();
                async move {
                    if let Payload::Text(values) = payload {
                        let _ = tx.send(first(values));
                    }
                }
                .boxed()
            },
        )
        .await
        .expect("emit");
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no ack to {event} in time"))
        .expect("ack")
}

/// The first argument; rust_socketio hands ack arguments over as one array.
fn first(values: Vec<Value>) -> Value {
    match values.into_iter().next() {
        Some(Value::Array(inner)) => inner.into_iter().next().unwrap_or(Value::Null),
        Some(v) => v,
        None => Value::Null,
    }
}

fn websockets(nodes: &[Value]) -> u64 {
    assert_eq!(nodes.len(), 3, "/nodes lists the pool: {nodes:?}");
    total(nodes, "websockets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_socketio_upgrades_to_websocket_through_the_gateway() {
    let cluster = Cluster::start("ws", &["node-a", "node-b", "node-c"], "").await;
    let url = format!("http://{}/", cluster.addr());
    let (tx, mut received) = mpsc::unbounded_channel();
    let subscriber = client(&url, TransportType::WebsocketUpgrade, None, tx).await;
    let (other_tx, _other_rx) = mpsc::unbounded_channel();
    let publisher = client(&url, TransportType::WebsocketUpgrade, None, other_tx).await;
    let admin = cluster.admin();
    eventually("two relayed websockets", || async {
        websockets(&nodes_json(admin).await) == 2
    })
    .await;

    let mut sub = ack(&subscriber, "subscribe", json!("chat.*")).await;
    let cursor = sub.as_object_mut().and_then(|s| s.remove("cursor"));
    assert!(cursor.is_some_and(|c| c.is_string()), "no cursor: {sub}");
    assert_eq!(sub, json!({ "ok": true, "pattern": "chat.*" }));
    let published = ack(
        &publisher,
        "publish",
        json!({ "topic": "chat.lobby", "content": "hello over ws" }),
    )
    .await;
    assert_eq!(published["ok"], true, "{published}");
    let message = tokio::time::timeout(TIMEOUT, received.recv())
        .await
        .expect("message in time")
        .expect("message");
    assert_eq!(message["topic"], "chat.lobby");
    assert_eq!(message["content"], "hello over ws");
    assert_eq!(message["id"], published["id"]);

    subscriber.disconnect().await.expect("disconnect");
    publisher.disconnect().await.expect("disconnect");
    drop((subscriber, publisher));
    eventually("relays closed and sessions unpinned", || async {
        let nodes = nodes_json(admin).await;
        websockets(&nodes) == 0 && total(&nodes, "sessions") == 0
    })
    .await;
    cluster.stop().await;
}

async fn next_message(inbox: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(TIMEOUT, inbox.recv())
        .await
        .expect("message in time")
        .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_socketio_chats_across_nodes_over_each_transport() {
    const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
    let nodes = start_mesh(&NAMES, &[]).await;
    let cluster = Cluster::with_nodes(
        "rs-transports",
        nodes,
        "trusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    let url = format!("http://{}/", cluster.addr());
    // Two client addresses the gateway places on two different nodes.
    let alice_ip = Ipv4Addr::new(203, 0, 113, 10);
    let alice_node = ranking(alice_ip, &NAMES)[0].clone();
    let bob_ip = (11..=250)
        .map(|d| Ipv4Addr::new(203, 0, 113, d))
        .find(|ip| ranking(*ip, &NAMES)[0] != alice_node)
        .expect("an address placed elsewhere");
    let bob_node = ranking(bob_ip, &NAMES)[0].clone();

    // TransportType is neither Copy nor Debug: make one per client, by name.
    let transport = |name| match name {
        "polling" => TransportType::Polling,
        "websocket" => TransportType::Websocket,
        _ => TransportType::WebsocketUpgrade,
    };
    for (k, name) in ["polling", "websocket", "upgrade"].into_iter().enumerate() {
        let (alice_tx, mut alice_inbox) = mpsc::unbounded_channel();
        let (bob_tx, mut bob_inbox) = mpsc::unbounded_channel();
        let alice = client(&url, transport(name), Some(alice_ip), alice_tx).await;
        let bob = client(&url, transport(name), Some(bob_ip), bob_tx).await;
        // The transport is the one asked for: relayed websockets, or none.
        let expected = if name == "polling" { 0 } else { 2 };
        let admin = cluster.admin();
        eventually("the transport in use", || async {
            websockets(&nodes_json(admin).await) == expected
        })
        .await;
        let topic = format!("rs.chat{k}");
        for c in [&alice, &bob] {
            let mut sub = ack(c, "subscribe", json!("rs.*")).await;
            let cursor = sub.as_object_mut().and_then(|s| s.remove("cursor"));
            assert!(cursor.is_some_and(|c| c.is_string()), "no cursor: {sub}");
            assert_eq!(sub, json!({ "ok": true, "pattern": "rs.*" }), "{name}");
        }
        let subs = ack(&alice, "subscriptions", Value::Null).await;
        assert_eq!(subs, json!({ "ok": true, "patterns": ["rs.*"] }));

        let hello = ack(
            &alice,
            "publish",
            json!({ "topic": topic, "content": { "k": k } }),
        )
        .await;
        assert_eq!(hello["ok"], true, "{name}: {hello}");
        for inbox in [&mut bob_inbox, &mut alice_inbox] {
            let m = next_message(inbox).await;
            assert_eq!(m["id"], hello["id"], "{name}");
            assert_eq!(
                m["node"],
                alice_node.as_str(),
                "{name}: published on alice's node"
            );
            assert_eq!(m["content"], json!({ "k": k }));
            assert_eq!(m["patterns"], json!(["rs.*"]));
        }
        let reply = ack(&bob, "publish", json!({ "topic": topic, "content": "re" })).await;
        let m = next_message(&mut alice_inbox).await;
        assert_eq!(m["id"], reply["id"], "{name}");
        assert_eq!(
            m["node"],
            bob_node.as_str(),
            "{name}: relayed from bob's node"
        );
        assert_eq!(next_message(&mut bob_inbox).await["id"], reply["id"]);

        let bad = ack(&bob, "publish", json!({ "topic": "rs.*", "content": 1 })).await;
        assert_eq!(bad["error"]["code"], "invalid_topic", "{name}: {bad}");
        // Exactly once: a last publish from each side arrives behind any
        // duplicate of theirs (one link per pair keeps a publisher's
        // order), and nothing but those two comes first.
        let mut ends = Vec::new();
        for c in [&alice, &bob] {
            let end = ack(c, "publish", json!({ "topic": topic, "content": "end" })).await;
            assert_eq!(end["ok"], true, "{name}: {end}");
            ends.push(end["id"].clone());
        }
        for inbox in [&mut alice_inbox, &mut bob_inbox] {
            let mut got = vec![
                next_message(inbox).await["id"].clone(),
                next_message(inbox).await["id"].clone(),
            ];
            got.sort_by_key(|id| ends.iter().position(|e| e == id));
            assert_eq!(got, ends, "{name}: only the two last publishes came next");
        }
        alice.disconnect().await.expect("disconnect");
        bob.disconnect().await.expect("disconnect");
        drop((alice, bob));
        eventually("both clients gone", || async {
            websockets(&nodes_json(admin).await) == 0
        })
        .await;
    }
    cluster.stop().await;
}
