//! Redis faults: a restart or killed connections mid-load, a Redis that is
//! not there yet, a silent member, two nodes with one name.

use super::*;
use stickyio_testkit::metric_sum;

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
            metric_sum(&metrics, "stickyio_node_redis_refused_total") as u64,
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
    cluster.stop_node(2).await;
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

    cluster.stop_node(1).await;
    cluster.joined(&[0]).await;
    cluster.stop().await;
}
