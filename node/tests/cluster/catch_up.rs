//! Catch-up between peers of the mesh, with in-process nodes: a message a
//! node acked (`ack: "replicated"`, one peer confirmed holding it) reaches
//! the subscribers of a third node that its origin never relayed it to,
//! from the confirming peer's history, once, in publish order; and the
//! `subscribe` ack carries a cursor a socket that got no message can resume
//! from.

use super::*;

/// Faster redials than the other cluster tests: the partition is cut and
/// healed within one test.
const RETRY: Duration = Duration::from_millis(300);
/// Longest wait for a caught-up message: the peer's link into the third
/// node drops at once (the forwarder closes it), and the catch-up task asks
/// every second while it stays down.
const CAUGHT_UP: Duration = Duration::from_secs(10);

/// The sum of the `stickyio_node_{name}` series whose labels include `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("stickyio_node_{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn publish_replicated(client: &TopicClient, topic: &str, content: Value) -> String {
    let ack = client
        .request(
            "publish",
            json!({ "topic": topic, "content": content, "ack": "replicated" }),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    ack["id"].as_str().expect("an id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_message_reaches_a_node_its_origin_never_relayed_it_to() {
    // node-a (0) publishes, node-b (1) confirms, node-c (2) subscribes; the
    // links between node-a and node-c, both ways, go through forwarders.
    let mut cluster = Cluster::bind(3, RETRY).await;
    let a_to_c = Forwarder::start(&cluster.url(2)).await;
    let c_to_a = Forwarder::start(&cluster.url(0)).await;
    cluster.route(0, 2, &a_to_c.url);
    cluster.route(2, 0, &c_to_a.url);
    cluster.start().await;
    cluster.joined(&[0, 1, 2]).await;

    let mut at_c = TopicClient::connect(&cluster.url(2)).await;
    at_c.subscribe(&["t.#"]).await;
    let at_a = TopicClient::connect(&cluster.url(0)).await;
    let first = publish_replicated(&at_a, "t.x", json!(0)).await;
    assert_eq!(at_c.next().await["id"], first.as_str());

    // node-a and node-c can no longer reach each other; node-a's acks are
    // confirmed by node-b alone.
    a_to_c.sever();
    c_to_a.sever();
    cluster.links_become(&[(0, 2), (2, 0)], "down").await;
    let mut acked = Vec::new();
    for i in 1..=3 {
        acked.push(publish_replicated(&at_a, "t.x", json!(i)).await);
    }
    // And node-a dies: only node-b holds these three.
    cluster.stop_node(0).await;

    let mut got = Vec::new();
    for _ in 0..acked.len() {
        let message = tokio::time::timeout(CAUGHT_UP, at_c.next())
            .await
            .unwrap_or_else(|_| panic!("node-c never caught up; got {got:?} of {acked:?}"));
        assert!(
            message["cursor"].is_string(),
            "a caught-up message has a cursor: {message}"
        );
        got.push(message["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(got, acked, "every acked message, once, in publish order");
    assert!(at_c.within(GRACE).await.is_none(), "nothing twice");

    let at_b = cluster.metrics(1).await;
    let at_c_metrics = cluster.metrics(2).await;
    assert!(
        metric(&at_b, "cluster_catch_up_served_total", "") >= 3.0,
        "node-b answered from its history:\n{at_b}"
    );
    assert_eq!(
        metric(
            &at_c_metrics,
            "cluster_catch_up_delivered_total",
            "origin=\"node-a\""
        ),
        3.0,
        "{at_c_metrics}"
    );
    assert!(
        metric(&at_c_metrics, "cluster_catch_up_requests_total", "") >= 1.0,
        "{at_c_metrics}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_ack_carries_a_cursor_to_resume_from() {
    let mut cluster = Cluster::bind(2, RETRY).await;
    cluster.start().await;
    cluster.joined(&[0, 1]).await;
    let quiet = TopicClient::connect(&cluster.url(0)).await;
    let ack = quiet.request("subscribe", json!("q.#")).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let cursor = ack["cursor"]
        .as_str()
        .expect("a cursor in the ack")
        .to_owned();
    // The socket gets nothing, then its node is gone; what was published
    // meanwhile is replayed on the other node from the ack's cursor.
    quiet.close().await;
    let publisher = TopicClient::connect(&cluster.url(1)).await;
    let missed = publish_replicated(&publisher, "q.a", json!("missed")).await;
    cluster.stop_node(0).await;
    let mut resumed = TopicClient::connect(&cluster.url(1)).await;
    let ack = resumed
        .request("subscribe", json!({ "pattern": "q.#", "since": cursor }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["replayed"], 1, "{ack}");
    assert!(ack["cursor"].is_string(), "{ack}");
    let replayed = resumed.next().await;
    assert_eq!(replayed["id"], missed.as_str());
    assert_eq!(replayed["replayed"], true);
    assert!(resumed.within(GRACE).await.is_none());
    cluster.stop().await;
}
