//! Delivery over both backends: every publish reaches every matching
//! socket once, one socket's burst keeps its order, a duplicated frame is
//! delivered once.

use super::*;

/// On every node: a `chat.*` socket, a `chat.#` + `chat.*` socket, a
/// `news.*` socket, and a publisher that also listens on `chat.#`. Every
/// publisher publishes on `chat.<room>` and `chat.<room>.typing`.
async fn every_publish_reaches_every_matching_socket_once(n: usize, backend: Backend) {
    const ROUNDS: usize = 2;
    let cluster = joined_cluster(n, backend).await;
    let mut star = Vec::new();
    let mut hash = Vec::new();
    let mut other = Vec::new();
    let mut publishers = Vec::new();
    for i in 0..n {
        let url = cluster.url(i);
        let (s, h, o, p) = tokio::join!(
            TopicClient::connect(&url),
            TopicClient::connect(&url),
            TopicClient::connect(&url),
            TopicClient::connect(&url)
        );
        s.subscribe(&["chat.*"]).await;
        h.subscribe(&["chat.#", "chat.*"]).await;
        o.subscribe(&["news.*"]).await;
        p.subscribe(&["chat.#"]).await;
        star.push(s);
        hash.push(h);
        other.push(o);
        publishers.push(p);
    }

    let mut flat = HashMap::new();
    let mut deep = HashMap::new();
    for round in 0..ROUNDS {
        for (i, publisher) in publishers.iter().enumerate() {
            let room = format!("chat.room{i}");
            let id = publisher.publish(&room, json!({ "round": round })).await;
            flat.insert(id, (name(i), room.clone()));
            let id = publisher
                .publish(&format!("{room}.typing"), json!(true))
                .await;
            deep.insert(id, (name(i), format!("{room}.typing")));
        }
    }

    let total = flat.len() + deep.len();
    for i in 0..n {
        let got = star[i].take(flat.len()).await;
        for m in &got {
            let (origin, topic) = &flat[m["id"].as_str().unwrap()];
            assert_eq!((&m["node"], &m["topic"]), (&json!(origin), &json!(topic)));
        }
        let got = by_id(&got);
        assert!(got.values().all(|p| *p == set(&["chat.*"])));

        let got = by_id(&hash[i].take(total).await);
        for (id, patterns) in &got {
            let expected = if flat.contains_key(id) {
                set(&["chat.#", "chat.*"])
            } else {
                set(&["chat.#"])
            };
            assert_eq!(*patterns, expected, "{id} on {}", name(i));
        }

        let got = by_id(&publishers[i].take(total).await);
        assert!(
            flat.keys()
                .chain(deep.keys())
                .all(|id| got.contains_key(id)),
            "publisher on {} missed one",
            name(i)
        );
    }
    // Nothing more: no duplicates, nothing for chat.* from chat.<room>.typing,
    // nothing at all for news.*.
    sleep(GRACE).await;
    for client in star
        .iter_mut()
        .chain(&mut hash)
        .chain(&mut other)
        .chain(&mut publishers)
    {
        client.drained();
    }

    let metrics = cluster.metrics(0).await;
    let (sent, from_b) = match &cluster.backend {
        Backend::Mesh => (
            format!(
                "stickyio_node_cluster_relayed_out_total{{node=\"node-a\",peer=\"{}\"}}",
                cluster.url(1)
            ),
            "stickyio_node_cluster_relayed_in_total{node=\"node-a\",origin=\"node-b\"}",
        ),
        Backend::Redis(_) => (
            "stickyio_node_redis_published_total{node=\"node-a\"}".to_owned(),
            "stickyio_node_redis_relayed_in_total{node=\"node-a\",origin=\"node-b\"}",
        ),
    };
    assert_eq!(
        sample(&metrics, &sent),
        Some(2 * ROUNDS as u64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, from_b),
        Some(2 * ROUNDS as u64),
        "{metrics}"
    );
    let (status, body) = cluster.readyz(0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][cluster.backend.check()]["ready"], true);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_each_publish_once_to_each_matching_socket() {
    every_publish_reaches_every_matching_socket_once(3, Backend::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_deliver_each_publish_once_to_each_matching_socket() {
    every_publish_reaches_every_matching_socket_once(5, Backend::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_redis_deliver_each_publish_once_to_each_matching_socket() {
    let redis = RedisServer::start().await;
    every_publish_reaches_every_matching_socket_once(3, Backend::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_on_redis_deliver_each_publish_once_to_each_matching_socket() {
    let redis = RedisServer::start().await;
    every_publish_reaches_every_matching_socket_once(5, Backend::Redis(redis.url())).await;
}

/// A burst from one socket, sent without waiting for acks, arrives in the
/// order sent on every node.
async fn one_sockets_burst_arrives_in_order_everywhere(backend: Backend) {
    // Under a socket's send buffer (socketioxide's 128 packets): a burst that
    // reaches a node at once is emitted at once, and past the buffer a slow
    // socket's deliveries are dropped (and counted), which is not this test.
    const BURST: u64 = 100;
    let cluster = joined_cluster(3, backend).await;
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let subscriber = TopicClient::connect(&cluster.url(i)).await;
        subscriber.subscribe(&["burst.#"]).await;
        subscribers.push(subscriber);
    }
    let publisher = TopicClient::connect(&cluster.url(0)).await;
    for n in 0..BURST {
        publisher.publish_unacked("burst.x", json!(n)).await;
    }
    for subscriber in &mut subscribers {
        let got: Vec<u64> = subscriber
            .receive(BURST as usize)
            .await
            .iter()
            .map(|m| m["content"].as_u64().expect("a number"))
            .collect();
        assert_eq!(got, (0..BURST).collect::<Vec<_>>());
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sockets_burst_arrives_in_order_on_every_node() {
    one_sockets_burst_arrives_in_order_everywhere(Backend::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sockets_burst_arrives_in_order_on_every_node_on_redis() {
    let redis = RedisServer::start().await;
    one_sockets_burst_arrives_in_order_everywhere(Backend::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_frame_is_delivered_once() {
    let cluster = linked_cluster(2).await;
    let mut subscriber = TopicClient::connect(&cluster.url(0)).await;
    subscriber.subscribe(&["chat.*"]).await;
    let (peer, mut events) = raw_peer(
        &cluster.url(0),
        json!({ "secret": SECRET, "node": "node-z", "boot": 1 }),
    )
    .await;
    assert_eq!(next_event(&mut events).await.0, "welcome");

    let publication = Publication {
        id: "node-z-1".into(),
        topic: "chat.room".into(),
        content: json!("once"),
        sender_id: "z".into(),
        created_at: 1,
        node: "node-z".into(),
    };
    let frame = relay::encode(&publication).unwrap();
    for _ in 0..2 {
        peer.emit("relay", Payload::Binary(frame.clone().into()))
            .await
            .unwrap();
    }
    let got = subscriber.receive(1).await;
    assert_eq!(
        (&got[0]["id"], &got[0]["node"], &got[0]["content"]),
        (&json!("node-z-1"), &json!("node-z"), &json!("once"))
    );
    let deduplicated =
        "stickyio_node_cluster_deduplicated_total{node=\"node-a\",origin=\"node-z\"} 1";
    let metrics = cluster.metrics(0).await;
    assert!(metrics.contains(deduplicated), "{metrics}");
    let _ = peer.disconnect().await;
    cluster.stop().await;
}
