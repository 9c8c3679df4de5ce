//! The topic cluster end to end: real nodes in-process, rust_socketio clients
//! on each, and what they receive when nodes publish, die, come back, lose
//! a link, or hold the wrong secret. Delivery is checked over both backends
//! (the mesh, and Redis on a `redis-server` of the test's own) by one body.

mod cluster_support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster_support::client::{GRACE, TopicClient, WAIT};
use cluster_support::forwarder::Forwarder;
use cluster_support::nodes::{Backend, Cluster, REDIS_TTL, SECRET, eventually, name};
use cluster_support::peer::{next_event, no_event, raw_peer};
use cluster_support::redis_server::RedisServer;
use rust_socketio::Payload;
use serde_json::{Value, json};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use tokio::time::{sleep, timeout};

/// Short, so redial tests take seconds; the default is checked separately.
const RETRY: Duration = Duration::from_millis(500);
/// Allowed on top of `retry_interval` for a link to re-form.
const MARGIN: Duration = Duration::from_secs(3);

async fn linked_cluster(n: usize) -> Cluster {
    joined_cluster(n, Backend::Mesh).await
}

async fn joined_cluster(n: usize, backend: Backend) -> Cluster {
    let mut cluster = Cluster::bind_with(n, RETRY, backend).await;
    cluster.start().await;
    let all: Vec<usize> = (0..n).collect();
    cluster.joined(&all).await;
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

/// The sum of every series of `metric` in Prometheus text.
fn total(metrics: &str, metric: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What goes wrong with Redis while publishers publish.
enum Disruption {
    /// Redis shuts down and starts again, empty.
    Restart,
    /// Redis closes every node's command connection; subscriptions stay.
    KillCommandConnections,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_load_ends_with_every_publish_delivered_once_or_refused() {
    every_publish_is_delivered_once_or_refused_through(Disruption::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_connections_mid_load_end_with_every_publish_delivered_once_or_refused() {
    every_publish_is_delivered_once_or_refused_through(Disruption::KillCommandConnections).await;
}

/// Publishers on every node publish without pause through a `disruption`.
/// Every publish is either acked and delivered exactly once to every
/// subscriber, or refused with `cluster_unavailable` and delivered nowhere;
/// each node counts exactly its refusals; delivery resumes without
/// restarting any node.
async fn every_publish_is_delivered_once_or_refused_through(disruption: Disruption) {
    const N: usize = 3;
    /// Per publisher: bounds the load whatever happens.
    const MAX: usize = 2000;
    const PACE: Duration = Duration::from_millis(5);
    let mut redis = RedisServer::start().await;
    let cluster = joined_cluster(N, Backend::Redis(redis.url())).await;
    let mut subscribers = Vec::new();
    for i in 0..N {
        let subscriber = TopicClient::connect(&cluster.url(i)).await;
        subscriber.subscribe(&["load.#"]).await;
        subscribers.push(subscriber);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicUsize>> = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect());
    let mut publishers = Vec::new();
    for i in 0..N {
        let client = TopicClient::connect(&cluster.url(i)).await;
        let (stop, acked) = (stop.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for k in 0..MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let outcome = client
                    .try_publish(&format!("load.p{i}"), json!({ "p": i, "k": k }))
                    .await;
                if outcome.is_ok() {
                    acked[i].fetch_add(1, Ordering::Relaxed);
                }
                outcomes.push(outcome);
                sleep(PACE).await;
            }
            client.close().await;
            outcomes
        }));
    }
    let each_acked = |more: usize| {
        let acked = acked.clone();
        move || {
            let acked = acked.clone();
            async move { acked.iter().all(|n| n.load(Ordering::Relaxed) >= more) }
        }
    };
    eventually("every publisher is acked 5 times", each_acked(5)).await;

    match disruption {
        Disruption::Restart => {
            redis.stop().await;
            sleep(Duration::from_millis(300)).await;
            redis.restart().await;
        }
        Disruption::KillCommandConnections => {
            let client = redis::Client::open(redis.url()).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let killed: u64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                .query_async(&mut connection)
                .await
                .unwrap();
            assert_eq!(killed, N as u64, "one command connection per node");
        }
    }
    let all: Vec<usize> = (0..N).collect();
    cluster.joined(&all).await;
    let before: usize = acked
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .max()
        .unwrap();
    eventually(
        "every publisher is acked again after the restart",
        each_acked(before + 5),
    )
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut ok = HashMap::new();
    let mut refused = vec![0u64; N];
    for (i, publisher) in publishers.into_iter().enumerate() {
        let outcomes = timeout(WAIT * 3, publisher)
            .await
            .expect("publishers stop in time")
            .expect("a publisher task");
        for (k, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(id) => drop(ok.insert(id, json!({ "p": i, "k": k }))),
                Err(error) => {
                    assert_eq!(error["code"], "cluster_unavailable", "{error}");
                    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
                    refused[i] += 1;
                }
            }
        }
    }
    assert!(
        refused.iter().all(|&r| r > 0),
        "refused per node: {refused:?}"
    );

    for subscriber in &mut subscribers {
        let got = subscriber.receive(ok.len()).await;
        let got = by_id(&got).into_keys().collect::<BTreeSet<_>>();
        assert_eq!(got, ok.keys().cloned().collect(), "exactly the acked ones");
    }
    for (i, refused) in refused.iter().enumerate() {
        let metrics = cluster.metrics(i).await;
        let node = name(i);
        assert_eq!(
            total(&metrics, "stickyio_node_redis_refused_total"),
            *refused,
            "{node}: {metrics}"
        );
        assert_eq!(
            sample(
                &metrics,
                &format!(
                    "stickyio_node_rejected_total{{node=\"{node}\",code=\"cluster_unavailable\"}}"
                )
            ),
            Some(*refused),
            "{metrics}"
        );
        assert!(
            sample(
                &metrics,
                &format!("stickyio_node_redis_reconnects_total{{node=\"{node}\"}}")
            )
            .is_some_and(|n| n >= 1),
            "{metrics}"
        );
    }
    cluster.stop().await;
}

/// A node whose Redis is not there yet serves, reports not ready, refuses
/// publishes without delivering them, and joins once Redis appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_redis_is_unready_then_joins() {
    let port = RedisServer::unused_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut cluster = Cluster::bind_with(1, RETRY, Backend::Redis(url.clone())).await;
    cluster.start().await;
    eventually("the node reports why Redis is unusable", || async {
        let (status, body) = cluster.readyz(0).await;
        let redis = &body["checks"]["redis"];
        status == 503
            && redis["ready"] == false
            && redis["detail"]["state"] == "down"
            && redis["detail"]["lastError"]
                .as_str()
                .is_some_and(|e| e.starts_with("cannot connect"))
    })
    .await;

    let mut client = TopicClient::connect(&cluster.url(0)).await;
    client.subscribe(&["chat.#"]).await;
    let error = client
        .try_publish("chat.room", json!("nobody hears this"))
        .await
        .unwrap_err();
    assert_eq!(error["code"], "cluster_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the cluster cannot take this publish, so it was delivered nowhere: this node is not connected to Redis at {url}: cannot connect"
        )),
        "{message}"
    );
    client.quiet().await;

    let _redis = RedisServer::start_on(port).await;
    cluster.joined(&[0]).await;
    let id = client.publish("chat.room", json!("now it does")).await;
    assert_eq!(client.receive(1).await[0]["id"], id.as_str());
    let metrics = cluster.metrics(0).await;
    let disconnected = "stickyio_node_redis_refused_total{node=\"node-a\",reason=\"disconnected\"}";
    assert_eq!(sample(&metrics, disconnected), Some(1), "{metrics}");
    cluster.stop().await;
}

/// A member that keeps a heartbeat key but hears nothing (a node that died
/// without leaving) would miss publishes: they are refused, naming it, until
/// its key expires. A node that shuts down leaves at once and is not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_for_a_silent_member_only_until_its_key_expires() {
    let redis = RedisServer::start().await;
    let mut cluster = joined_cluster(3, Backend::Redis(redis.url())).await;
    let mut at_a = TopicClient::connect(&cluster.url(0)).await;
    let mut at_b = TopicClient::connect(&cluster.url(1)).await;
    at_a.subscribe(&["chat.#"]).await;
    at_b.subscribe(&["chat.#"]).await;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    cluster.kill(2).await;
    let (key, member): (bool, bool) = redis::pipe()
        .exists("stickyio:node:node-c")
        .sismember("stickyio:members", "node-c")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        (key, member),
        (false, false),
        "C left the pool as it stopped"
    );
    let id = at_a.publish("chat.room", json!("C has left")).await;
    assert_eq!(at_a.receive(1).await[0]["id"], id.as_str());
    assert_eq!(at_b.receive(1).await[0]["id"], id.as_str());

    redis::pipe()
        .cmd("SET")
        .arg("stickyio:node:node-z")
        .arg("7")
        .arg("PX")
        .arg(3000)
        .cmd("SADD")
        .arg("stickyio:members")
        .arg("node-z")
        .exec_async(&mut connection)
        .await
        .unwrap();
    eventually("node-a lists node-z", || async {
        let (_, body) = cluster.readyz(0).await;
        body["checks"]["redis"]["detail"]["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "node-z"))
    })
    .await;
    let error = at_a
        .try_publish("chat.room", json!("z would miss it"))
        .await
        .unwrap_err();
    assert_eq!(error["code"], "cluster_unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("node node-z is not subscribed to Redis"),
        "{error}"
    );
    at_a.quiet().await;
    at_b.quiet().await;

    let accepted = Instant::now();
    let mut id = None;
    for _ in 0..100 {
        if let Ok(accepted) = at_a.try_publish("chat.room", json!("z is gone")).await {
            id = Some(accepted);
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("accepted once node-z's key expired");
    assert!(
        accepted.elapsed() < Duration::from_secs(5),
        "{:?}",
        accepted.elapsed()
    );
    assert_eq!(at_a.receive(1).await[0]["id"], id.as_str());
    assert_eq!(at_b.receive(1).await[0]["id"], id.as_str());
    let metrics = cluster.metrics(0).await;
    let unsubscribed =
        "stickyio_node_redis_refused_total{node=\"node-a\",reason=\"member_unsubscribed\"}";
    assert!(
        sample(&metrics, unsubscribed).is_some_and(|n| n >= 1),
        "{metrics}"
    );
    cluster.stop().await;
}

/// Two processes named `node-a` on one Redis: both report it, on /readyz
/// (not ready) and /metrics, for as long as both run; when one stops, the
/// other is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_one_name_are_reported_and_not_ready() {
    let redis = RedisServer::start().await;
    let mut cluster = Cluster::bind_with(2, RETRY, Backend::Redis(redis.url())).await;
    cluster.rename(1, "node-a").await;
    cluster.start().await;
    eventually("both report the name conflict", || async {
        for i in 0..2 {
            let (status, body) = cluster.readyz(i).await;
            let conflict = &body["checks"]["redis"]["detail"]["nameConflict"];
            if status != 503 || !conflict["otherBoot"].is_string() {
                return false;
            }
        }
        true
    })
    .await;
    let metrics = cluster.metrics(1).await;
    assert_eq!(
        sample(
            &metrics,
            "stickyio_node_redis_name_conflict{node=\"node-a\"}"
        ),
        Some(1),
        "{metrics}"
    );
    // Still reported a few heartbeats later: not a one-off that flaps away.
    sleep(REDIS_TTL).await;
    assert_eq!(cluster.readyz(0).await.0, 503);

    cluster.kill(1).await;
    cluster.joined(&[0]).await;
    cluster.stop().await;
}
