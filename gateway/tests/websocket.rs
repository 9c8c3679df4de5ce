//! Polling-to-websocket upgrade through the gateway with rust_socketio: the
//! upgrade request carries the pinned sid, the gateway relays the 101 and
//! then bytes both ways, and messages flow over the relayed websocket.

mod support;

use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

/// A connected client: returns once the server has acknowledged the
/// namespace connect (rust_socketio calls that event "open"), as socket.io
/// clients wait before emitting.
async fn client(url: &str, messages: mpsc::UnboundedSender<Value>) -> Client {
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let client = ClientBuilder::new(url)
        .transport_type(TransportType::WebsocketUpgrade)
        .reconnect(false)
        .on("open", move |_, _| {
            let _ = connected_tx.send(());
            async {}.boxed()
        })
        .on("message", move |payload: Payload, _| {
            let messages = messages.clone();
            async move {
                if let Payload::Text(values) = payload {
                    let _ = messages.send(first(values));
                }
            }
            .boxed()
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

fn websockets(nodes: &[Value]) -> i64 {
    nodes
        .iter()
        .map(|n| n["websockets"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_socketio_upgrades_to_websocket_through_the_gateway() {
    let cluster = Cluster::start("ws", &["node-a", "node-b", "node-c"], "").await;
    let url = format!("http://{}/", cluster.addr());
    let (tx, mut received) = mpsc::unbounded_channel();
    let subscriber = client(&url, tx).await;
    let (other_tx, _other_rx) = mpsc::unbounded_channel();
    let publisher = client(&url, other_tx).await;
    let admin = cluster.admin();
    eventually("two relayed websockets", || async {
        websockets(&nodes_json(admin).await) == 2
    })
    .await;

    let sub = ack(&subscriber, "subscribe", json!("chat.*")).await;
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
        let sessions: i64 = nodes
            .iter()
            .map(|n| n["sessions"].as_i64().unwrap_or(0))
            .sum();
        websockets(&nodes) == 0 && sessions == 0
    })
    .await;
    cluster.stop().await;
}
