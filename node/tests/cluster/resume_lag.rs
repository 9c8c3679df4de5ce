//! A resume over the mesh on a node that lags the origin: the link from the
//! publishing node into the resuming one is stalled, so the cursor covers
//! messages the resuming node has not had yet. Once they arrive, those of
//! the resumed pattern (the socket had them where the cursor was minted)
//! are not delivered again, and those of a pattern the socket already held
//! are delivered: the resume did not replay them. The cursors the socket
//! gets meanwhile claim nothing of the held pattern it has not had.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_lagging_node_skips_only_what_it_covered_for_the_resumed_pattern() {
    // node-a (0) publishes; its link into node-b (1) goes through a forwarder.
    let mut cluster = Cluster::bind(2, RETRY).await;
    let a_to_b = Forwarder::start(&cluster.url(1)).await;
    cluster.route(0, 1, &a_to_b.url);
    cluster.start().await;
    cluster.joined(&[0, 1]).await;

    let mut first = TopicClient::connect(&cluster.url(0)).await;
    first.subscribe(&["seam.#"]).await;
    let mut resumed = TopicClient::connect(&cluster.url(1)).await;
    resumed.subscribe(&["side.#"]).await;
    let publisher = TopicClient::connect(&cluster.url(0)).await;

    // node-b lags: what node-a publishes now waits in the stalled link.
    a_to_b.stall();
    // A read the forwarder already waits on still passes one chunk: let a
    // message nobody here holds be it.
    publisher.publish("lead.a", json!(0)).await;
    sleep(Duration::from_millis(200)).await;
    let side = [
        publisher.publish("side.a", json!(1)).await,
        publisher.publish("side.a", json!(2)).await,
    ];
    let seen_first = publisher.publish("seam.a", json!(3)).await;
    let seen = first.next().await;
    assert_eq!(id(&seen), seen_first);
    let cursor = seen["cursor"].as_str().expect("a cursor").to_owned();
    first.close().await;

    // The socket that holds side.# resumes seam.# from a cursor past all
    // three: node-b has none of them, so nothing is replayed.
    let ack = resumed
        .request("subscribe", json!({ "pattern": "seam.#", "since": cursor }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["replayed"], 0, "{ack}");

    a_to_b.restore();
    let after = publisher.publish("seam.a", json!(4)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        match resumed.within(WAIT).await {
            Some(message) => got.push(message),
            None => break,
        }
    }
    let got_ids: Vec<String> = got.iter().map(id).collect();
    assert_eq!(
        got_ids,
        vec![side[0].clone(), side[1].clone(), after],
        "the held pattern's late messages live, the resumed one's not twice"
    );
    assert!(got.iter().all(|m| m["replayed"] != true), "{got:?}");
    resumed.quiet().await;

    // The cursor after the first late side.a does not cover the second.
    let cursor = got[0]["cursor"].as_str().expect("a cursor").to_owned();
    let mut again = TopicClient::connect(&cluster.url(1)).await;
    let ack = again
        .request("subscribe", json!({ "pattern": "side.#", "since": cursor }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let replayed = again.next().await;
    assert_eq!(id(&replayed), side[1], "{ack}");
    assert_eq!(replayed["replayed"], true);
    again.quiet().await;
    cluster.stop().await;
}
