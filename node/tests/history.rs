//! History and resume across in-process nodes: a client whose node died
//! resumes on another from its last cursor with nothing missing and nothing
//! twice; a history that does not reach back says so (`recovered: false`);
//! bad cursors are refused (`invalid_cursor`); a replicated publish is acked
//! only once a peer holds it. Over the mesh, and over Redis (Streams).

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use stickyio_shared::config::Duration as ConfigDuration;
use stickyio_shared::config::node::HistoryConfig;
use stickyio_testkit::RedisServer;
use stickyio_testkit::node_cluster::{Backend, Cluster};
use stickyio_testkit::topic_client::{GRACE, TopicClient};

const RETRY: Duration = Duration::from_millis(300);

async fn cluster_with(n: usize, backend: Backend, history: HistoryConfig) -> Cluster {
    let mut cluster = Cluster::bind_with_history(n, RETRY, backend, history).await;
    cluster.start().await;
    let all: Vec<usize> = (0..n).collect();
    cluster.joined(&all).await;
    cluster
}

async fn mesh(n: usize) -> Cluster {
    cluster_with(n, Backend::Mesh, HistoryConfig::default()).await
}

/// `subscribe {pattern, since}`; the ack.
async fn resume(client: &TopicClient, pattern: &str, since: &str) -> Value {
    client
        .request("subscribe", json!({ "pattern": pattern, "since": since }))
        .await
}

/// Publishes `n` messages numbered from `from` on `topic`; their ids.
async fn publish_numbered(client: &TopicClient, topic: &str, from: u64, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in from..from + n {
        ids.push(client.publish(topic, json!(i)).await);
    }
    ids
}

/// A subscribe ack without its `cursor` (the position now, a fresh string
/// each time), which must be there.
fn without_cursor(ack: Value) -> Value {
    let (ack, cursor) = split_cursor(ack);
    assert!(cursor.is_some_and(|c| c.is_string()), "no cursor: {ack}");
    ack
}

/// The ack without its `cursor`, and the cursor if there is one (over
/// Redis, only once the node delivered a message since it started).
fn split_cursor(mut ack: Value) -> (Value, Option<Value>) {
    let cursor = ack.as_object_mut().and_then(|a| a.remove("cursor"));
    (ack, cursor)
}

fn message_ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn last_cursor(messages: &[Value]) -> String {
    messages
        .last()
        .and_then(|m| m["cursor"].as_str())
        .expect("messages carry a cursor")
        .to_owned()
}

/// The whole story on one backend: a subscriber on node 0 gets half the
/// stream, node 0 stops, and on node 2 it resumes from its last cursor:
/// the missed messages replayed (in order, once), then live ones.
async fn resume_after_a_node_stops(backend: Backend) {
    let mut cluster = cluster_with(3, backend, HistoryConfig::default()).await;
    let mut subscriber = TopicClient::connect(&cluster.url(0)).await;
    subscriber.subscribe(&["chat.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;

    let mut sent = publish_numbered(&publisher, "chat.room1", 0, 10).await;
    let before = subscriber.take(10).await;
    assert_eq!(message_ids(&before), sent);
    let cursor = last_cursor(&before);

    subscriber.close().await;
    cluster.stop_node(0).await;
    let missed = publish_numbered(&publisher, "chat.room1", 10, 10).await;
    sent.extend(missed.iter().cloned());

    let mut resumed = TopicClient::connect(&cluster.url(2)).await;
    let ack = without_cursor(resume(&resumed, "chat.#", &cursor).await);
    assert_eq!(
        ack,
        json!({"ok": true, "pattern": "chat.#", "recovered": true, "replayed": 10})
    );
    let replayed = resumed.take(10).await;
    assert_eq!(
        message_ids(&replayed),
        missed,
        "in publish order, once each"
    );
    assert!(
        replayed.iter().all(|m| m["replayed"] == true),
        "{replayed:?}"
    );

    let live = publish_numbered(&publisher, "chat.room1", 20, 5).await;
    let after = resumed.take(5).await;
    assert_eq!(message_ids(&after), live, "live after the replay, no gap");
    assert!(after.iter().all(|m| m.get("replayed").is_none()));
    assert!(resumed.within(GRACE).await.is_none(), "nothing twice");

    // The last cursor names everything: resuming from it replays nothing.
    let again = TopicClient::connect(&cluster.url(1)).await;
    let ack = resume(&again, "chat.#", &last_cursor(&after)).await;
    assert_eq!(ack["replayed"], 0, "{ack}");
    cluster.stop().await;
}

#[tokio::test]
async fn a_client_of_a_stopped_node_resumes_on_another_over_the_mesh() {
    resume_after_a_node_stops(Backend::Mesh).await;
}

#[tokio::test]
async fn a_client_of_a_stopped_node_resumes_on_another_over_redis() {
    let redis = RedisServer::start().await;
    resume_after_a_node_stops(Backend::Redis(redis.url())).await;
}

/// Redis holds the history: a node restarted after the cursor still
/// replays from the stream; once Redis itself restarted (and lost it), the
/// resume is not recovered, and goes live.
#[tokio::test]
async fn the_redis_stream_outlives_nodes_but_not_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let mut cluster = cluster_with(2, Backend::Redis(redis.url()), HistoryConfig::default()).await;
    let mut sub = TopicClient::connect(&cluster.url(0)).await;
    sub.subscribe(&["s.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    publish_numbered(&publisher, "s.x", 0, 3).await;
    let cursor = last_cursor(&sub.take(3).await);
    sub.close().await;
    let missed = publish_numbered(&publisher, "s.x", 3, 4).await;

    // Node 0 restarts: a fresh process, but the stream still has it all.
    cluster.stop_node(0).await;
    cluster.restart(0).await;
    cluster.joined(&[0, 1]).await;
    let mut resumed = TopicClient::connect(&cluster.url(0)).await;
    let ack = resume(&resumed, "s.#", &cursor).await;
    assert_eq!(ack["replayed"], 4, "{ack}");
    assert_eq!(message_ids(&resumed.take(4).await), missed);
    resumed.close().await;

    redis.restart().await;
    cluster.joined(&[0, 1]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    let after = TopicClient::connect(&cluster.url(0)).await;
    // Over Redis the ack has a position once the node delivered a message
    // live since it started; not what this test is about.
    let (ack, _position) = split_cursor(resume(&after, "s.#", &cursor).await);
    assert_eq!(
        ack,
        json!({"ok": true, "pattern": "s.#", "recovered": false, "reason": "too_old"})
    );
    let mut after = after;
    let live = publisher.publish("s.x", json!("live")).await;
    assert_eq!(after.next().await["id"], live.as_str(), "live from now");
    cluster.stop().await;
}

/// Live messages published while the resume runs: every one arrives once,
/// replayed or live, none missing at the seam.
async fn no_gap_and_no_duplicate_at_the_seam(backend: Backend) {
    let cluster = cluster_with(2, backend, HistoryConfig::default()).await;
    let mut first = TopicClient::connect(&cluster.url(0)).await;
    first.subscribe(&["seam.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    let sent = publish_numbered(&publisher, "seam.a", 0, 5).await;
    let cursor = last_cursor(&first.take(5).await);
    first.close().await;

    let writer = tokio::spawn(async move {
        let ids = publish_numbered(&publisher, "seam.a", 5, 200).await;
        (publisher, ids)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut resumed = TopicClient::connect(&cluster.url(1)).await;
    let ack = resume(&resumed, "seam.#", &cursor).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let (_, published) = writer.await.unwrap();
    let got = message_ids(&resumed.take(200).await);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a message arrived twice");
    assert_eq!(got, published, "every message after the cursor, in order");
    assert!(!got.iter().any(|id| sent.contains(id)));
    assert!(resumed.within(GRACE).await.is_none());
    cluster.stop().await;
}

#[tokio::test]
async fn no_gap_and_no_duplicate_at_the_seam_over_the_mesh() {
    no_gap_and_no_duplicate_at_the_seam(Backend::Mesh).await;
}

#[tokio::test]
async fn no_gap_and_no_duplicate_at_the_seam_over_redis() {
    let redis = RedisServer::start().await;
    no_gap_and_no_duplicate_at_the_seam(Backend::Redis(redis.url())).await;
}

/// Beyond `history.size`, or from before a node started: live from now,
/// and the ack says so.
#[tokio::test]
async fn a_history_that_does_not_reach_back_is_not_recovered() {
    let history = HistoryConfig {
        size: 5,
        ..HistoryConfig::default()
    };
    let mut cluster = cluster_with(2, Backend::Mesh, history).await;
    let mut sub = TopicClient::connect(&cluster.url(0)).await;
    sub.subscribe(&["t.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    publish_numbered(&publisher, "t.x", 0, 1).await;
    let cursor = last_cursor(&sub.take(1).await);
    publish_numbered(&publisher, "t.x", 1, 4).await;
    sub.take(4).await;

    // Four missed, five held: complete.
    let within = TopicClient::connect(&cluster.url(1)).await;
    assert_eq!(resume(&within, "t.#", &cursor).await["replayed"], 4);

    publish_numbered(&publisher, "t.x", 5, 6).await;
    let mut late = TopicClient::connect(&cluster.url(1)).await;
    let ack = without_cursor(resume(&late, "t.#", &cursor).await);
    assert_eq!(
        ack,
        json!({"ok": true, "pattern": "t.#", "recovered": false, "reason": "too_old"})
    );
    assert!(late.within(GRACE).await.is_none(), "nothing replayed");
    let live = publisher.publish("t.x", json!("live")).await;
    assert_eq!(late.next().await["id"], live.as_str(), "live from now");

    // A node restarted after the cursor was minted lost what came before.
    cluster.stop_node(0).await;
    cluster.restart(0).await;
    cluster.joined(&[0, 1]).await;
    let restarted = TopicClient::connect(&cluster.url(0)).await;
    let ack = resume(&restarted, "t.#", &cursor).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    cluster.stop().await;
}

#[tokio::test]
async fn a_cursor_older_than_the_ttl_is_not_recovered() {
    let history = HistoryConfig {
        ttl: ConfigDuration(Duration::from_secs(10)),
        ..HistoryConfig::default()
    };
    let cluster = cluster_with(2, Backend::Mesh, history).await;
    let mut sub = TopicClient::connect(&cluster.url(0)).await;
    sub.subscribe(&["ttl.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    publish_numbered(&publisher, "ttl.x", 0, 2).await;
    let cursor = last_cursor(&sub.take(2).await);
    publish_numbered(&publisher, "ttl.x", 2, 1).await;
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    let late = TopicClient::connect(&cluster.url(1)).await;
    let ack = resume(&late, "ttl.#", &cursor).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    cluster.stop().await;
}

#[tokio::test]
async fn garbage_forged_oversized_and_foreign_cursors_are_invalid() {
    let cluster = mesh(2).await;
    let mut sub = TopicClient::connect(&cluster.url(0)).await;
    sub.subscribe(&["c.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    publisher.publish("c.x", json!(1)).await;
    let good = last_cursor(&sub.take(1).await);

    let mut forged = good.clone().into_bytes();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();

    // Another pool: the same code, another cluster secret.
    let mut other = Cluster::bind(2, RETRY).await;
    other.set_secret(0, "another-pool");
    other.set_secret(1, "another-pool");
    other.start().await;
    other.joined(&[0, 1]).await;
    let mut foreign_sub = TopicClient::connect(&other.url(0)).await;
    foreign_sub.subscribe(&["c.#"]).await;
    TopicClient::connect(&other.url(1))
        .await
        .publish("c.x", json!(1))
        .await;
    let foreign = last_cursor(&foreign_sub.take(1).await);

    let client = TopicClient::connect(&cluster.url(1)).await;
    for (cursor, reason) in [
        ("not a cursor", "not base64url"),
        ("AAAA", "format 0 is not supported"),
        (forged.as_str(), "altered or forged"),
        (&"A".repeat(40_000), "the longest accepted"),
        (foreign.as_str(), "from another pool"),
    ] {
        let ack = resume(&client, "c.#", cursor).await;
        assert_eq!(ack["ok"], false, "{ack}");
        assert_eq!(ack["error"]["code"], "invalid_cursor", "{ack}");
        let message = ack["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{reason}: {message}");
    }
    let ack = client
        .request("subscribe", json!({"pattern": "c.#", "since": 17}))
        .await;
    assert_eq!(ack["error"]["code"], "invalid_cursor", "{ack}");
    // Refused means not subscribed: a good cursor still resumes.
    assert_eq!(resume(&client, "c.#", &good).await["recovered"], true);
    other.stop().await;
    cluster.stop().await;
}

/// A replicated publish is acked once a peer holds it; with every peer
/// gone, the ack says it may be lost.
#[tokio::test]
async fn a_replicated_publish_waits_for_a_peer() {
    let mut cluster = mesh(2).await;
    let publisher = TopicClient::connect(&cluster.url(0)).await;
    let ack = publisher
        .request(
            "publish",
            json!({"topic": "r.x", "content": 1, "ack": "replicated"}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    cluster.stop_node(1).await;
    cluster.links_become(&[(0, 1)], "down").await;
    let ack = publisher
        .request(
            "publish",
            json!({"topic": "r.x", "content": 2, "ack": "replicated"}),
        )
        .await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "cluster_unavailable", "{ack}");
    let message = ack["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no other node confirmed"), "{message}");
    cluster.stop().await;
}
