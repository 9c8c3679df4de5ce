//! A resume over Redis while publishes race it: the seam between the
//! stream read (replayed) and live delivery. A socket that already holds a
//! pattern resumes another from a cursor while a burst on both goes on:
//! every message after the cursor (and every one of the held pattern)
//! arrives once, in order; every one that reached the pool before the
//! resume was asked for comes `replayed: true`, before any live one.

use super::*;

/// Rounds per run; each is one resume racing one burst.
const ROUNDS: usize = 12;
/// Publications per burst, alternating the resumed and the held pattern.
const BURST: usize = 120;
/// Of them, seen by a watcher before the resume is sent: missed for sure.
const MISSED: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_racing_publishes_over_redis_replays_what_was_missed_and_loses_nothing() {
    let redis = RedisServer::start().await;
    let cluster = joined_cluster(2, Backend::Redis(redis.url())).await;
    let mut watcher = TopicClient::connect(&cluster.url(0)).await;
    watcher.subscribe(&["seam.#", "side.#"]).await;
    let publisher = Arc::new(TopicClient::connect(&cluster.url(0)).await);
    for round in 0..ROUNDS {
        // The publisher's own node and a relaying one take turns.
        let node = round % 2;
        let mut first = TopicClient::connect(&cluster.url(node)).await;
        first.subscribe(&["seam.#"]).await;
        let before = publisher.publish("seam.a", json!({"round": round})).await;
        let seen = first.next().await;
        assert_eq!(id(&seen), before);
        let cursor = seen["cursor"].as_str().expect("a cursor").to_owned();
        first.close().await;
        assert_eq!(id(&watcher.next().await), before);

        let mut resumed = TopicClient::connect(&cluster.url(node)).await;
        resumed.subscribe(&["side.#"]).await;
        let burst = tokio::spawn({
            let publisher = publisher.clone();
            async move {
                for k in 0..BURST {
                    let topic = if k % 2 == 0 { "seam.a" } else { "side.a" };
                    publisher
                        .publish_unacked(topic, json!({"round": round, "k": k}))
                        .await;
                    if k % 8 == 7 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        // What the watcher got reached Redis: before the resume, so missed.
        let mut published = watcher.take(MISSED).await;
        let ack = resume(&resumed, "seam.#", &cursor).await;
        assert_eq!(ack["recovered"], true, "round {round}: {ack}");
        burst.await.unwrap();
        published.extend(watcher.take(BURST - MISSED).await);
        let missed: BTreeSet<String> = published[..MISSED]
            .iter()
            .filter(|m| m["topic"] == "seam.a")
            .map(id)
            .collect();

        let got = collect(&mut resumed, BURST).await;
        // Replays come as the resume runs, after live messages of the held
        // pattern published later: the order holds per pattern.
        for topic in ["seam.a", "side.a"] {
            let of = |messages: &[Value]| -> Vec<String> {
                messages
                    .iter()
                    .filter(|m| m["topic"] == topic)
                    .map(id)
                    .collect()
            };
            let (got, want) = (of(&got), of(&published));
            let lost: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            assert!(
                lost.is_empty(),
                "round {round} on node {node}: {topic} lost {lost:?}"
            );
            assert_eq!(
                got, want,
                "round {round} on node {node}: {topic} once each, in order"
            );
        }
        assert_eq!(got.len(), BURST, "round {round}: nothing else");
        for m in &got {
            let flagged = m["replayed"] == true;
            if missed.contains(&id(m)) {
                assert!(flagged, "round {round}: missed but not replayed: {m}");
            }
            if m["topic"] == "side.a" {
                assert!(
                    !flagged,
                    "round {round}: a held pattern's message replayed: {m}"
                );
            }
        }
        let seam: Vec<bool> = got
            .iter()
            .filter(|m| m["topic"] == "seam.a")
            .map(|m| m["replayed"] == true)
            .collect();
        assert!(
            seam.windows(2).all(|w| w[0] || !w[1]),
            "round {round}: a replayed message after a live one: {seam:?}"
        );
        assert_eq!(
            ack["replayed"].as_u64(),
            Some(seam.iter().filter(|r| **r).count() as u64),
            "round {round}: {ack}"
        );
        resumed.close().await;
    }
    cluster.stop().await;
}

/// `subscribe {pattern, since}`; the ack.
async fn resume(client: &TopicClient, pattern: &str, since: &str) -> Value {
    client
        .request("subscribe", json!({ "pattern": pattern, "since": since }))
        .await
}

/// Up to `count` messages, stopping early once none came for a [`GRACE`]
/// (so a lost one shows as a short list, not a timeout); then none more.
async fn collect(client: &mut TopicClient, count: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match client.within(GRACE).await {
            Some(message) => got.push(message),
            None => break,
        }
    }
    if got.len() == count {
        client.quiet().await;
    }
    got
}
