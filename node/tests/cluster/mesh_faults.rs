//! Mesh faults: a node stopped and restarted, a cut link, a stalled peer,
//! a wrong secret, a client without one.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_relinked_when_it_restarts() {
    let mut cluster = linked_cluster(3).await;
    let (mut at_a, mut at_b) = (
        TopicClient::connect(&cluster.url(0)).await,
        TopicClient::connect(&cluster.url(1)).await,
    );
    at_a.subscribe(&["chat.#"]).await;
    at_b.subscribe(&["chat.#"]).await;

    cluster.stop_node(2).await;
    cluster.links_become(&[(0, 2), (1, 2)], "down").await;
    let id = at_a.publish("chat.room", json!("while C is down")).await;
    assert_eq!(at_b.next().await["id"], id.as_str());
    assert_eq!(at_a.next().await["id"], id.as_str());
    let id = at_b.publish("chat.room", json!("still")).await;
    assert_eq!(at_a.next().await["id"], id.as_str());
    assert_eq!(at_b.next().await["id"], id.as_str());
    let (status, body) = cluster.readyz(0).await;
    assert_eq!(
        status, 200,
        "an unreachable peer does not make A unready: {body}"
    );
    let link = cluster.link(0, 2).await;
    assert_eq!(link["flaps"], 1);
    assert!(link["lastError"].is_string(), "{link}");

    let restarted = Instant::now();
    cluster.restart(2).await;
    cluster
        .links_become(&Cluster::pairs(&[0, 1, 2]), "up")
        .await;
    let took = restarted.elapsed();
    assert!(took < RETRY + MARGIN, "links took {took:?} to re-form");

    let mut at_c = TopicClient::connect(&cluster.url(2)).await;
    at_c.subscribe(&["chat.#"]).await;
    let to_c = at_a.publish("chat.room", json!("to the restarted C")).await;
    let from_c = at_c
        .publish("chat.room", json!("from the restarted C"))
        .await;
    for client in [&mut at_a, &mut at_b, &mut at_c] {
        assert_eq!(ids(client.receive(2).await), expect(&[&to_c, &from_c]));
    }
    cluster.stop().await;
}

/// A and B reach each other only through forwarders; cutting them is a
/// network partition between two live nodes. While cut, C still hears and
/// reaches both, `/readyz` shows the link down, and what A and B publish
/// still reaches the other: not over the cut link (nothing is queued for
/// it), but by catch-up from C's history, which holds both. Restored, it
/// heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_only_that_pair_and_heals() {
    let mut cluster = Cluster::bind(3, RETRY).await;
    let a_to_b = Forwarder::start(&cluster.url(1)).await;
    let b_to_a = Forwarder::start(&cluster.url(0)).await;
    cluster.route(0, 1, &a_to_b.url);
    cluster.route(1, 0, &b_to_a.url);
    cluster.start().await;
    cluster
        .links_become(&Cluster::pairs(&[0, 1, 2]), "up")
        .await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let client = TopicClient::connect(&cluster.url(i)).await;
        client.subscribe(&["chat.#"]).await;
        clients.push(client);
    }

    a_to_b.sever();
    b_to_a.sever();
    cluster.links_become(&[(0, 1), (1, 0)], "down").await;
    cluster
        .links_become(&[(0, 2), (2, 0), (1, 2), (2, 1)], "up")
        .await;
    let link = cluster.link(0, 1).await;
    assert!(link["lastError"].is_string(), "{link}");

    let from_a = clients[0]
        .publish("chat.room", json!("from A during the cut"))
        .await;
    let from_b = clients[1]
        .publish("chat.room", json!("from B during the cut"))
        .await;
    let from_c = clients[2]
        .publish("chat.room", json!("from C during the cut"))
        .await;
    assert_eq!(
        ids(clients[0].receive(3).await),
        expect(&[&from_a, &from_b, &from_c]),
        "A gets B's from C"
    );
    assert_eq!(
        ids(clients[1].receive(3).await),
        expect(&[&from_a, &from_b, &from_c]),
        "B gets A's from C"
    );
    assert_eq!(
        ids(clients[2].receive(3).await),
        expect(&[&from_a, &from_b, &from_c]),
        "C hears both"
    );

    let restored = Instant::now();
    a_to_b.restore();
    b_to_a.restore();
    cluster.links_become(&[(0, 1), (1, 0)], "up").await;
    assert!(
        restored.elapsed() < RETRY + MARGIN,
        "healing took {:?}",
        restored.elapsed()
    );
    let from_a = clients[0]
        .publish("chat.room", json!("from A after the cut"))
        .await;
    for client in &mut clients {
        assert_eq!(client.receive(1).await[0]["id"], from_a.as_str());
    }
    cluster.stop().await;
}

/// B reads nothing from A (its link stalls), with a queue of 8 per link:
/// A keeps acking publishes and C gets every one, while what B cannot take
/// is dropped and counted. When B reads again it gets what was in flight,
/// each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_never_holds_back_publishes_to_others() {
    const COUNT: usize = 200;
    let mut cluster = Cluster::bind(3, RETRY).await;
    cluster.link_queue = 8;
    let a_to_b = Forwarder::start(&cluster.url(1)).await;
    cluster.route(0, 1, &a_to_b.url);
    cluster.start().await;
    cluster
        .links_become(&Cluster::pairs(&[0, 1, 2]), "up")
        .await;
    let publisher = TopicClient::connect(&cluster.url(0)).await;
    let mut at_b = TopicClient::connect(&cluster.url(1)).await;
    let mut at_c = TopicClient::connect(&cluster.url(2)).await;
    at_b.subscribe(&["bulk.*"]).await;
    at_c.subscribe(&["bulk.*"]).await;

    a_to_b.stall();
    let bulk = "x".repeat(40_000);
    let mut published = Vec::new();
    for _ in 0..COUNT {
        published.push(publisher.publish("bulk.data", json!(bulk)).await);
    }
    let at_c_ids: Vec<String> = at_c.take(COUNT).await.iter().map(id).collect();
    assert_eq!(at_c_ids, published, "C gets every publish, in order");
    let link = cluster.link(0, 1).await;
    assert!(link["dropped"].as_u64().unwrap() > 0, "{link}");
    let queue_full = format!(
        "stickyio_node_cluster_dropped_total{{node=\"node-a\",peer=\"{}\",reason=\"queue_full\"}}",
        a_to_b.url
    );
    let metrics = cluster.metrics(0).await;
    assert!(
        sample(&metrics, &queue_full).is_some_and(|n| n > 0),
        "{metrics}"
    );

    a_to_b.restore();
    let mut at_b_ids = Vec::new();
    for _ in 0..COUNT {
        match at_b.within(GRACE * 2).await {
            Some(m) => at_b_ids.push(id(&m)),
            None => break,
        }
    }
    assert!(
        !at_b_ids.is_empty() && at_b_ids.len() < COUNT,
        "B got {} of {COUNT}",
        at_b_ids.len()
    );
    let mut expected = published.iter().filter(|id| at_b_ids.contains(id));
    assert!(
        at_b_ids.iter().all(|id| Some(id) == expected.next()),
        "each once, in order: {at_b_ids:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_never_joins() {
    let mut cluster = Cluster::bind(3, RETRY).await;
    cluster.set_secret(2, "not-the-mesh-secret");
    cluster.start().await;
    cluster.links_become(&[(0, 1), (1, 0)], "up").await;
    cluster
        .links_become(&[(0, 2), (1, 2), (2, 0), (2, 1)], "refused")
        .await;
    assert_eq!(
        cluster.link(2, 0).await["lastError"],
        "unauthorized: wrong cluster secret"
    );
    let (status, body) = cluster.readyz(2).await;
    assert_eq!((status, &body["ready"]), (503, &json!(false)), "{body}");

    let mut clients = Vec::new();
    for i in 0..3 {
        let client = TopicClient::connect(&cluster.url(i)).await;
        client.subscribe(&["chat.#"]).await;
        clients.push(client);
    }
    let from_a = clients[0].publish("chat.room", json!("members only")).await;
    assert_eq!(clients[1].receive(1).await[0]["id"], from_a.as_str());
    assert_eq!(clients[0].receive(1).await[0]["id"], from_a.as_str());
    let from_c = clients[2].publish("chat.room", json!("let me in")).await;
    assert_eq!(
        clients[2].receive(1).await[0]["id"],
        from_c.as_str(),
        "C only hears itself"
    );
    clients[0].quiet().await;
    clients[1].quiet().await;
    let refused =
        "stickyio_node_cluster_refused_peers_total{node=\"node-a\",reason=\"wrong_secret\"}";
    assert!(cluster.metrics(0).await.contains(refused));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_secret_is_refused_and_hears_nothing() {
    let cluster = linked_cluster(2).await;
    for auth in [
        json!({ "secret": "guess", "node": "spy", "boot": 1 }),
        json!({ "node": "spy", "boot": 1 }),
    ] {
        let (spy, mut events) = raw_peer(&cluster.url(0), auth).await;
        let (event, refusal) = next_event(&mut events).await;
        assert_eq!(event, "error");
        assert!(refusal.contains("unauthorized"), "{refusal}");

        let client = TopicClient::connect(&cluster.url(1)).await;
        client.publish("chat.room", json!("not for spies")).await;
        client.close().await;
        no_event(&mut events, GRACE).await;
        let _ = spy.disconnect().await;
    }
    cluster.stop().await;
}
