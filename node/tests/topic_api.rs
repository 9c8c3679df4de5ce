//! The topic API of a running node, driven by a Rust Socket.IO client
//! (rust_socketio): acks, wildcard delivery, exactly-once, every error code,
//! the transport limit, cleanup on disconnect, and the mesh hooks.
//!
//! Negative checks ("this message did not arrive") publish a marker that the
//! client does receive afterwards and assert it is the next message: a node
//! delivers before it acks, so the marker cannot overtake an earlier message.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::{Value, json};
use stickyio_node::{Handed, Node, Relay, RunningNode, Then};
use stickyio_shared::config::node::{NodeConfig, PublishAck};
use stickyio_shared::message::Publication;
use stickyio_testkit::connect_from;
use stickyio_testkit::websocket::subscribe_over_websocket;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> NodeConfig {
    NodeConfig::standalone("node-a", "127.0.0.1:0".parse().unwrap())
}

async fn start(config: NodeConfig) -> RunningNode {
    timeout(WAIT, Node::bind(config))
        .await
        .expect("bind timed out")
        .expect("bind failed")
}

/// A connected test client and the `message` events it received.
struct TestClient {
    socket: Client,
    messages: mpsc::UnboundedReceiver<Value>,
}

impl TestClient {
    async fn connect(node: &RunningNode) -> TestClient {
        TestClient::connect_with(node, TransportType::Any).await
    }

    async fn connect_with(node: &RunningNode, transport: TransportType) -> TestClient {
        let (tx, messages) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel();
        let connected_tx = Arc::new(Mutex::new(Some(connected_tx)));
        let builder = ClientBuilder::new(format!("http://{}/", node.local_addr()))
            .transport_type(transport)
            .reconnect(false)
            .on(Event::Connect, move |_, _| {
                let tx = connected_tx.lock().unwrap().take();
                async move {
                    if let Some(tx) = tx {
                        tx.send(()).ok();
                    }
                }
                .boxed()
            })
            .on("message", move |payload, _| {
                let tx = tx.clone();
                async move {
                    if let Payload::Text(values) = payload {
                        for value in values {
                            tx.send(value).ok();
                        }
                    }
                }
                .boxed()
            });
        let socket = timeout(WAIT, builder.connect())
            .await
            .expect("connect timed out")
            .expect("connect failed");
        // Requests sent before the namespace is joined are lost.
        timeout(WAIT, connected)
            .await
            .expect("namespace connect timed out")
            .expect("connect callback dropped");
        TestClient { socket, messages }
    }

    /// Emits `event` with `args` and returns the ack's first value.
    async fn request(&self, event: &str, args: Vec<Value>) -> Value {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        self.socket
            .emit_with_ack(event, Payload::Text(args), WAIT, move |payload, _| {
                let tx = tx.clone();
                async move {
                    // rust_socketio hands the ack's argument list over as one array.
                    let first = match payload {
                        Payload::Text(values) => match values.into_iter().next() {
                            Some(Value::Array(args)) => args.into_iter().next(),
                            other => other,
                        },
                        _ => None,
                    };
                    let first = first.unwrap_or_else(|| json!("ack without a JSON argument"));
                    if let Some(tx) = tx.lock().unwrap().take() {
                        tx.send(first).ok();
                    }
                }
                .boxed()
            })
            .await
            .expect("emit failed");
        timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack for {event}"))
            .expect("ack callback dropped")
    }

    async fn subscribe(&self, pattern: &str) {
        let mut ack = self.request("subscribe", vec![json!(pattern)]).await;
        // The position now, to resume from if no message comes first.
        let cursor = ack.as_object_mut().and_then(|a| a.remove("cursor"));
        assert!(cursor.is_some_and(|c| c.is_string()), "no cursor: {ack}");
        assert_eq!(ack, json!({"ok": true, "pattern": pattern}));
    }

    async fn publish(&self, topic: &str, content: Value) -> String {
        let ack = self
            .request("publish", vec![json!({"topic": topic, "content": content})])
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        ack["id"]
            .as_str()
            .expect("publish ack has an id")
            .to_owned()
    }

    async fn next_message(&mut self) -> Value {
        timeout(WAIT, self.messages.recv())
            .await
            .expect("no message arrived")
            .expect("client closed")
    }

    async fn disconnect(self) {
        timeout(WAIT, self.socket.disconnect())
            .await
            .expect("disconnect timed out")
            .expect("disconnect failed");
    }
}

fn error_code(ack: &Value) -> &str {
    assert_eq!(ack["ok"], false, "{ack}");
    assert!(
        ack["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{ack}"
    );
    ack["error"]["code"].as_str().unwrap_or("")
}

/// The value of metric `stickyio_node_{name}` (counters end in `_total`).
async fn metric(node: &RunningNode, name: &str) -> f64 {
    labelled_metric(node, name, "").await
}

/// Like [`metric`], for the series whose labels include `label` (`key="value"`).
async fn labelled_metric(node: &RunningNode, name: &str, label: &str) -> f64 {
    let url = format!("http://{}/metrics", node.admin_addr());
    let text = timeout(WAIT, async { reqwest::get(&url).await?.text().await })
        .await
        .expect("metrics timed out")
        .expect("metrics failed");
    let prefix = format!("stickyio_node_{name}{{");
    text.lines()
        .find(|line| line.starts_with(&prefix) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} {label} not found in\n{text}"))
}

/// Polls a metric until it has `want`, for at most [`WAIT`].
async fn wait_for_metric(node: &RunningNode, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = metric(node, name).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn subscribe_then_publish_delivers_the_documented_message() {
    let node = start(config()).await;
    let mut sub = TestClient::connect(&node).await;
    let publisher = TestClient::connect(&node).await;
    sub.subscribe("chat.room1").await;

    let id = publisher.publish("chat.room1", json!({"text": "hi"})).await;
    let message = sub.next_message().await;
    assert_eq!(message["id"], id.as_str());
    assert!(id.starts_with("node-a-"), "{id}");
    assert_eq!(message["topic"], "chat.room1");
    assert_eq!(message["content"], json!({"text": "hi"}));
    assert_eq!(message["node"], "node-a");
    assert_eq!(message["patterns"], json!(["chat.room1"]));
    assert!(message["senderId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        message["createdAt"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    assert!(
        message["cursor"].as_str().is_some_and(|c| c.len() > 20),
        "{message}"
    );
    let keys: Vec<&String> = message.as_object().unwrap().keys().collect();
    assert_eq!(
        keys.len(),
        8,
        "exactly id, topic, content, senderId, createdAt, node, patterns, cursor: {message}"
    );

    let second = publisher.publish("chat.room1", json!(2)).await;
    assert_ne!(second, id, "ids are unique");
    assert_eq!(sub.next_message().await["id"], second.as_str());
}

#[tokio::test]
async fn star_matches_one_segment_and_hash_matches_the_rest() {
    let node = start(config()).await;
    let mut star = TestClient::connect_with(&node, TransportType::Polling).await;
    let mut hash = TestClient::connect_with(&node, TransportType::Websocket).await;
    let publisher = TestClient::connect(&node).await;
    star.subscribe("news.*").await;
    hash.subscribe("news.#").await;

    publisher.publish("news.eu", json!("eu")).await;
    publisher.publish("news.eu.fr", json!("fr")).await;
    publisher.publish("news", json!("bare")).await;
    publisher.publish("news.us", json!("marker")).await;

    assert_eq!(star.next_message().await["content"], "eu");
    assert_eq!(
        star.next_message().await["content"],
        "marker",
        "news.* must not get news.eu.fr nor news"
    );
    assert_eq!(hash.next_message().await["content"], "eu");
    assert_eq!(hash.next_message().await["content"], "fr");
    assert_eq!(
        hash.next_message().await["content"],
        "marker",
        "news.# must not get news"
    );
}

#[tokio::test]
async fn matching_is_anchored() {
    let node = start(config()).await;
    let mut sub = TestClient::connect(&node).await;
    let publisher = TestClient::connect(&node).await;
    sub.subscribe("a.b").await;
    publisher.publish("x.a.b", json!("suffix")).await;
    publisher.publish("a.b.c", json!("prefix")).await;
    publisher.publish("a.b", json!("exact")).await;
    assert_eq!(sub.next_message().await["content"], "exact");
}

#[tokio::test]
async fn overlapping_patterns_deliver_once_with_every_matching_pattern() {
    let node = start(config()).await;
    let mut sub = TestClient::connect(&node).await;
    let publisher = TestClient::connect(&node).await;
    for pattern in ["news.eu", "news.*", "news.#", "*.eu", "sport.#"] {
        sub.subscribe(pattern).await;
    }
    publisher.publish("news.eu", json!(1)).await;
    publisher.publish("sport.x", json!("marker")).await;

    let message = sub.next_message().await;
    assert_eq!(message["content"], 1);
    let mut patterns: Vec<String> = serde_json::from_value(message["patterns"].clone()).unwrap();
    patterns.sort();
    assert_eq!(patterns, ["*.eu", "news.#", "news.*", "news.eu"]);
    assert_eq!(
        sub.next_message().await["content"],
        "marker",
        "the first message arrived more than once"
    );
    assert_eq!(metric(&node, "delivered_total").await, 2.0);
}

#[tokio::test]
async fn a_publisher_subscribed_to_its_topic_receives_its_own_message() {
    let node = start(config()).await;
    let mut client = TestClient::connect(&node).await;
    client.subscribe("echo").await;
    let id = client.publish("echo", json!(null)).await;
    let message = client.next_message().await;
    assert_eq!(message["id"], id.as_str());
    assert_eq!(message["content"], Value::Null);
}

/// On a multi-threaded runtime, as in production: a burst of publishes from
/// one socket, sent without waiting for acks, arrives in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sockets_publishes_arrive_in_the_order_sent() {
    // Under the node's per-socket send buffer (1024 packets): past it, a
    // subscriber that reads slower than the burst comes loses deliveries,
    // counted in dropped_total.
    const BURST: u64 = 300;
    let node = start(config()).await;
    let mut sub = TestClient::connect(&node).await;
    let publisher = TestClient::connect(&node).await;
    sub.subscribe("chat.order").await;
    for i in 0..BURST {
        let publish = json!({"topic": "chat.order", "content": i});
        timeout(
            WAIT,
            publisher
                .socket
                .emit("publish", Payload::Text(vec![publish])),
        )
        .await
        .expect("emit timed out")
        .expect("emit failed");
    }
    let mut received = Vec::new();
    for _ in 0..BURST {
        received.push(sub.next_message().await["content"].as_u64().unwrap());
    }
    assert_eq!(received, (0..BURST).collect::<Vec<_>>());
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_subscriptions_lists_what_is_held() {
    let node = start(config()).await;
    let mut sub = TestClient::connect(&node).await;
    let publisher = TestClient::connect(&node).await;
    sub.subscribe("a.*").await;
    sub.subscribe("b.#").await;
    sub.subscribe("a.*").await;
    assert_eq!(
        sub.request("subscriptions", vec![]).await,
        json!({"ok": true, "patterns": ["a.*", "b.#"]}),
        "subscribing twice is idempotent"
    );

    let ack = sub.request("unsubscribe", vec![json!("a.*")]).await;
    assert_eq!(ack, json!({"ok": true, "pattern": "a.*"}));
    let ack = sub.request("unsubscribe", vec![json!("never.held")]).await;
    assert_eq!(ack, json!({"ok": true, "pattern": "never.held"}));
    assert_eq!(
        sub.request("subscriptions", vec![]).await,
        json!({"ok": true, "patterns": ["b.#"]})
    );

    publisher.publish("a.x", json!("gone")).await;
    publisher.publish("b.x", json!("marker")).await;
    assert_eq!(sub.next_message().await["content"], "marker");
    assert_eq!(metric(&node, "subscriptions").await, 1.0);
}

#[tokio::test]
async fn invalid_topics_and_patterns_are_refused_with_invalid_topic() {
    let node = start(config()).await;
    let client = TestClient::connect(&node).await;
    let cases = [
        (
            "subscribe",
            json!("a..b"),
            "segment 2 of pattern \"a..b\" is empty",
        ),
        ("subscribe", json!("a*"), "mixes the wildcard"),
        (
            "subscribe",
            json!("a.#.b"),
            "only allowed as the last segment",
        ),
        ("subscribe", json!(""), "pattern is empty"),
        ("subscribe", json!("a b"), "contains whitespace"),
        (
            "unsubscribe",
            json!("a."),
            "segment 2 of pattern \"a.\" is empty",
        ),
        ("subscribe", json!("x".repeat(300)), "the limit is 256"),
    ];
    for (event, arg, message) in cases {
        let ack = client.request(event, vec![arg.clone()]).await;
        assert_eq!(error_code(&ack), "invalid_topic", "{event} {arg}: {ack}");
        assert!(
            ack["error"]["message"].as_str().unwrap().contains(message),
            "{ack}"
        );
    }
    for topic in ["news.*", "news.#", "a\u{1}b", ".a"] {
        let ack = client
            .request("publish", vec![json!({"topic": topic, "content": 1})])
            .await;
        assert_eq!(error_code(&ack), "invalid_topic", "{topic}: {ack}");
    }
    assert_eq!(
        client.request("subscriptions", vec![]).await,
        json!({"ok": true, "patterns": []})
    );
}

#[tokio::test]
async fn malformed_arguments_are_refused_with_invalid_payload() {
    let node = start(config()).await;
    let client = TestClient::connect(&node).await;
    let cases: [(&str, Vec<Value>); 8] = [
        ("publish", vec![json!(42)]),
        ("publish", vec![json!("news.eu")]),
        ("publish", vec![json!({"content": 1})]),
        ("publish", vec![json!({"topic": 5, "content": 1})]),
        ("publish", vec![json!({"topic": "a"})]),
        ("publish", vec![]),
        ("subscribe", vec![json!({"topic": "a"})]),
        ("unsubscribe", vec![json!(["a"])]),
    ];
    for (event, args) in cases {
        let ack = client.request(event, args.clone()).await;
        assert_eq!(
            error_code(&ack),
            "invalid_payload",
            "{event} {args:?}: {ack}"
        );
    }
    let ack = client.request("subscribe", vec![]).await;
    assert_eq!(
        ack["error"]["message"],
        "subscribe takes a pattern string such as \"news.*\", or {pattern, since} as its argument; none was sent"
    );
    let rejected = labelled_metric(&node, "rejected_total", "code=\"invalid_payload\"").await;
    assert_eq!(rejected, 9.0);
}

#[tokio::test]
async fn the_subscription_limit_is_per_socket() {
    let mut config = config();
    config.max_subscriptions = 2;
    let node = start(config).await;
    let client = TestClient::connect(&node).await;
    let other = TestClient::connect(&node).await;
    client.subscribe("a").await;
    client.subscribe("b").await;
    let ack = client.request("subscribe", vec![json!("c")]).await;
    assert_eq!(error_code(&ack), "too_many_subscriptions", "{ack}");
    assert!(
        ack["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 subscriptions"),
        "{ack}"
    );
    client.subscribe("a").await;
    other.subscribe("c").await;
    other.subscribe("d").await;
    client.request("unsubscribe", vec![json!("a")]).await;
    client.subscribe("c").await;
}

#[tokio::test]
async fn content_over_max_message_bytes_is_refused_with_too_large() {
    let mut config = config();
    config.max_message_bytes = 100;
    let node = start(config).await;
    let mut client = TestClient::connect(&node).await;
    client.subscribe("big").await;
    let ack = client
        .request(
            "publish",
            vec![json!({"topic": "big", "content": "x".repeat(200)})],
        )
        .await;
    assert_eq!(error_code(&ack), "too_large", "{ack}");
    assert_eq!(
        ack["error"]["message"],
        "content is 202 bytes as JSON; the limit is 100"
    );
    client.publish("big", json!("x".repeat(98))).await;
    assert_eq!(client.next_message().await["content"], "x".repeat(98));
}

#[tokio::test]
async fn a_frame_over_max_payload_closes_that_connection_only() {
    for (name, transport) in [
        ("polling", TransportType::Polling),
        ("websocket", TransportType::Websocket),
    ] {
        let mut config = config();
        config.max_payload = 2048;
        let node = start(config).await;
        let bystander = TestClient::connect(&node).await;
        bystander.subscribe("ok").await;
        let big = TestClient::connect_with(&node, transport).await;
        wait_for_metric(&node, "connected_sockets", 2.0).await;
        big.socket
            .emit(
                "publish",
                json!({"topic": "ok", "content": "x".repeat(4096)}),
            )
            .await
            .ok();
        wait_for_metric(&node, "connected_sockets", 1.0).await;
        assert_eq!(metric(&node, "published_total").await, 0.0, "{name}");
        bystander.publish("ok", json!("still serving")).await;
    }
}

#[tokio::test]
async fn subscriptions_are_removed_on_disconnect() {
    let node = start(config()).await;
    let client = TestClient::connect(&node).await;
    for pattern in ["a", "b.*", "c.#"] {
        client.subscribe(pattern).await;
    }
    assert_eq!(metric(&node, "subscriptions").await, 3.0);
    assert_eq!(metric(&node, "connected_sockets").await, 1.0);
    client.disconnect().await;
    wait_for_metric(&node, "connected_sockets", 0.0).await;
    assert_eq!(metric(&node, "subscriptions").await, 0.0);

    let mut fresh = TestClient::connect(&node).await;
    fresh.subscribe("c.#").await;
    fresh.publish("c.d", json!("only once")).await;
    assert_eq!(fresh.next_message().await["patterns"], json!(["c.#"]));
    assert_eq!(metric(&node, "delivered_total").await, 1.0);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Arc<Publication>>>);

impl Relay for Recorder {
    fn relay(&self, publication: &Arc<Publication>, _: PublishAck, then: Then) {
        self.0.lock().unwrap().push(publication.clone());
        then(Handed::Taken);
    }
}

#[tokio::test]
async fn local_publishes_go_to_the_relay_and_relayed_ones_do_not() {
    let node = start(config()).await;
    let recorder = Arc::new(Recorder::default());
    node.topics().set_relay(recorder.clone());
    let mut sub = TestClient::connect(&node).await;
    sub.subscribe("news.#").await;

    let id = sub.publish("news.local", json!(1)).await;
    assert_eq!(sub.next_message().await["id"], id.as_str());
    let relayed: Vec<String> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(relayed, [id]);

    let from_peer = Arc::new(Publication {
        id: "node-b-1-1".into(),
        topic: "news.remote".into(),
        content: json!("from b"),
        sender_id: "abc".into(),
        created_at: 1,
        node: "node-b".into(),
    });
    assert_eq!(node.topics().deliver_relayed(&from_peer, None), 1);
    let message = sub.next_message().await;
    assert_eq!(message["node"], "node-b");
    assert_eq!(message["id"], "node-b-1-1");
    assert_eq!(message["senderId"], "abc");
    assert_eq!(message["patterns"], json!(["news.#"]));
    assert_eq!(
        recorder.0.lock().unwrap().len(),
        1,
        "relayed ones are never relayed again"
    );

    let nobody = Arc::new(Publication {
        topic: "sport.x".into(),
        ..(*from_peer).clone()
    });
    assert_eq!(node.topics().deliver_relayed(&nobody, None), 0);
}

#[tokio::test]
async fn shutdown_disconnects_clients_and_stops_listening() {
    let node = start(config()).await;
    let addr = node.local_addr();
    let client = TestClient::connect(&node).await;
    client.subscribe("a").await;
    // A raw websocket client, to see its transport close: socketioxide
    // closes the Engine.IO transport at shutdown, which rust_socketio does
    // not report.
    let mut raw = connect_from(Ipv4Addr::LOCALHOST, addr)
        .await
        .expect("connect");
    subscribe_over_websocket(&mut raw, "a").await;
    timeout(WAIT, node.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown failed");
    let mut rest = Vec::new();
    // EOF or a reset: either way the client sees its session end.
    let _ = timeout(WAIT, raw.read_to_end(&mut rest))
        .await
        .expect("the node closed the client's websocket");
    let refused = timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out");
    assert!(refused.is_err(), "still listening after shutdown");
}
