//! The topic cluster end to end: real nodes in-process, rust_socketio clients
//! on each, and what they receive when nodes publish, die, come back, lose
//! a link, or hold the wrong secret.

mod cluster_support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cluster_support::client::{GRACE, TopicClient};
use cluster_support::forwarder::Forwarder;
use cluster_support::nodes::{Cluster, SECRET, name};
use cluster_support::peer::{next_event, no_event, raw_peer};
use rust_socketio::Payload;
use serde_json::{Value, json};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use tokio::time::sleep;

/// Short, so redial tests take seconds; the default is checked separately.
const RETRY: Duration = Duration::from_millis(500);
/// Allowed on top of `retry_interval` for a link to re-form.
const MARGIN: Duration = Duration::from_secs(3);

async fn linked_cluster(n: usize) -> Cluster {
    let mut cluster = Cluster::bind(n, RETRY).await;
    cluster.start().await;
    let all: Vec<usize> = (0..n).collect();
    cluster.links_become(&Cluster::pairs(&all), "up").await;
    cluster
}

/// What one socket received: message id → the patterns it matched.
fn by_id(messages: &[Value]) -> HashMap<String, BTreeSet<String>> {
    let mut seen = HashMap::new();
    for m in messages {
        let id = m["id"].as_str().expect("an id").to_owned();
        let patterns = m["patterns"]
            .as_array()
            .expect("patterns")
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        assert!(
            seen.insert(id.clone(), patterns).is_none(),
            "{id} arrived twice"
        );
    }
    seen
}

fn ids(messages: Vec<Value>) -> BTreeSet<String> {
    by_id(&messages).into_keys().collect()
}

fn expect(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn id(message: &Value) -> String {
    message["id"].as_str().expect("an id").to_owned()
}

/// The value of one series in Prometheus text, e.g. `name{labels}`.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// On every node: a `chat.*` socket, a `chat.#` + `chat.*` socket, a
/// `news.*` socket, and a publisher that also listens on `chat.#`. Every
/// publisher publishes on `chat.<room>` and `chat.<room>.typing`.
async fn every_publish_reaches_every_matching_socket_once(n: usize) {
    const ROUNDS: usize = 2;
    let cluster = linked_cluster(n).await;
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
    let peer = cluster.url(1);
    let sent_to_b = format!(
        "stickyio_node_cluster_relayed_out_total{{node=\"node-a\",peer=\"{peer}\"}} {}",
        2 * ROUNDS
    );
    assert!(metrics.contains(&sent_to_b), "{metrics}");
    let from_b = format!(
        "stickyio_node_cluster_relayed_in_total{{node=\"node-a\",origin=\"node-b\"}} {}",
        2 * ROUNDS
    );
    assert!(metrics.contains(&from_b), "{metrics}");
    let (status, body) = cluster.readyz(0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["mesh"]["ready"], true);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_each_publish_once_to_each_matching_socket() {
    every_publish_reaches_every_matching_socket_once(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_deliver_each_publish_once_to_each_matching_socket() {
    every_publish_reaches_every_matching_socket_once(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_relinked_when_it_restarts() {
    let mut cluster = linked_cluster(3).await;
    let (mut at_a, mut at_b) = (
        TopicClient::connect(&cluster.url(0)).await,
        TopicClient::connect(&cluster.url(1)).await,
    );
    at_a.subscribe(&["chat.#"]).await;
    at_b.subscribe(&["chat.#"]).await;

    cluster.kill(2).await;
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
/// network partition between two live nodes. While cut, what A and B publish
/// does not reach each other (it is not queued for later), C still hears and
/// reaches both, and `/readyz` shows the link down. Restored, it heals.
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
        ids(clients[0].receive(2).await),
        expect(&[&from_a, &from_c]),
        "A misses B's"
    );
    assert_eq!(
        ids(clients[1].receive(2).await),
        expect(&[&from_b, &from_c]),
        "B misses A's"
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
