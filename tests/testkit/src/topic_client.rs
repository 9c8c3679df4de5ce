//! A topic API client on rust_socketio for the cluster tests. Its callbacks
//! only forward into channels; every wait is bounded by [`TIMEOUT`].

use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use crate::wait::TIMEOUT;

/// How long to watch for a message that must not come.
pub const GRACE: Duration = Duration::from_millis(500);

pub struct TopicClient {
    client: Client,
    messages: mpsc::UnboundedReceiver<Value>,
}

/// The first value of a payload; acks arrive wrapped in one more array.
fn first_value(payload: Payload) -> Option<Value> {
    match payload {
        Payload::Text(values) => match values.into_iter().next()? {
            Value::Array(inner) if inner.len() == 1 => inner.into_iter().next(),
            value => Some(value),
        },
        _ => None,
    }
}

impl TopicClient {
    /// Connects to a node's main namespace and waits until it is accepted.
    pub async fn connect(url: &str) -> TopicClient {
        let (message_tx, messages) = mpsc::unbounded_channel();
        let (connected_tx, mut connected) = mpsc::unbounded_channel();
        let client = ClientBuilder::new(url)
            .reconnect(false)
            .on("message", move |payload, _| {
                if let Some(message) = first_value(payload) {
                    let _ = message_tx.send(message);
                }
                async {}.boxed()
            })
            .on(Event::Connect, move |_, _| {
                let _ = connected_tx.send(());
                async {}.boxed()
            })
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        timeout(TIMEOUT, connected.recv())
            .await
            .unwrap_or_else(|_| panic!("{url} did not accept the socket in time"));
        TopicClient { client, messages }
    }

    /// Emits `event` and waits for its ack.
    pub async fn request(&self, event: &str, data: Value) -> Value {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.client
            .emit_with_ack(event, data, TIMEOUT, move |payload, _| {
                if let Some(ack) = first_value(payload) {
                    let _ = tx.send(ack);
                }
                async {}.boxed()
            })
            .await
            .unwrap_or_else(|e| panic!("emit {event}: {e}"));
        timeout(TIMEOUT, rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no ack for {event} in time"))
    }

    pub async fn subscribe(&self, patterns: &[&str]) {
        for pattern in patterns {
            let mut ack = self.request("subscribe", json!(pattern)).await;
            // The position now, to resume from if no message comes first
            // (over Redis, once the node delivered one).
            let cursor = ack.as_object_mut().and_then(|a| a.remove("cursor"));
            assert!(cursor.is_none_or(|c| c.is_string()), "{ack}");
            assert_eq!(ack, json!({ "ok": true, "pattern": pattern }));
        }
    }

    /// Publishes and returns the publication's id.
    pub async fn publish(&self, topic: &str, content: Value) -> String {
        self.try_publish(topic, content)
            .await
            .unwrap_or_else(|error| panic!("publish refused: {error}"))
    }

    /// Publishes: the id when accepted, else the ack's `error` object.
    pub async fn try_publish(&self, topic: &str, content: Value) -> Result<String, Value> {
        let ack = self
            .request("publish", json!({ "topic": topic, "content": content }))
            .await;
        match ack["ok"].as_bool() {
            Some(true) => Ok(ack["id"].as_str().expect("an id in the ack").to_owned()),
            _ => Err(ack["error"].clone()),
        }
    }

    /// Publishes without waiting for the ack, as a client in a hurry does.
    pub async fn publish_unacked(&self, topic: &str, content: Value) {
        timeout(
            TIMEOUT,
            self.client
                .emit("publish", json!({ "topic": topic, "content": content })),
        )
        .await
        .expect("emit in time")
        .expect("emit");
    }

    /// The next `message` event.
    pub async fn next(&mut self) -> Value {
        timeout(TIMEOUT, self.messages.recv())
            .await
            .ok()
            .flatten()
            .expect("a message in time")
    }

    /// The next `message` event, if one comes within `wait`.
    pub async fn within(&mut self, wait: Duration) -> Option<Value> {
        timeout(wait, self.messages.recv()).await.ok().flatten()
    }

    /// The next `count` messages.
    pub async fn take(&mut self, count: usize) -> Vec<Value> {
        let mut received = Vec::with_capacity(count);
        for _ in 0..count {
            received.push(self.next().await);
        }
        received
    }

    /// Exactly `count` messages, then none for a while.
    pub async fn receive(&mut self, count: usize) -> Vec<Value> {
        let received = self.take(count).await;
        self.quiet().await;
        received
    }

    /// Asserts that no message arrives within a short grace period.
    pub async fn quiet(&mut self) {
        sleep(GRACE).await;
        self.drained();
    }

    /// Asserts that no message is waiting; after a [`GRACE`] wait shared by
    /// many clients.
    pub fn drained(&mut self) {
        if let Ok(extra) = self.messages.try_recv() {
            panic!("unexpected message: {extra}");
        }
    }

    pub async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}
