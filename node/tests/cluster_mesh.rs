//! The mesh on its own: links, authentication, one hop and dedup, between
//! bare socketioxide servers that host only `/cluster`, with raw
//! rust_socketio clients playing well-behaved and hostile peers.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use rust_socketio::Payload;
use serde_json::json;
use socketioxide::SocketIo;
use stickyio_node::Relay;
use stickyio_node::cluster::mesh::{Deliver, LinkState, Mesh};
use stickyio_shared::config::Duration as ConfigDuration;
use stickyio_shared::config::node::{NodeConfig, PublishAck};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use stickyio_testkit::peer::{next_event, no_event, raw_peer};
use stickyio_testkit::{TIMEOUT as WAIT, eventually};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "mesh-test-secret";
const RETRY: Duration = Duration::from_millis(300);

/// Relayed publications land here instead of on sockets.
struct Inbox(mpsc::UnboundedSender<Publication>);

impl Deliver for Inbox {
    fn deliver(&self, publication: &Arc<Publication>, _: Option<stickyio_node::Stamp>) -> usize {
        usize::from(self.0.send((**publication).clone()).is_ok())
    }
}

struct Bare {
    name: String,
    url: String,
    mesh: Arc<Mesh>,
    io: SocketIo,
    inbox: mpsc::UnboundedReceiver<Publication>,
    server: tokio::task::JoinHandle<()>,
}

impl Bare {
    fn publication(&self, id: u64, topic: &str) -> Publication {
        publication(&self.name, &format!("{}-{id}", self.name), topic)
    }

    fn relay(&self, publication: &Publication) {
        self.mesh.relay(
            &Arc::new(publication.clone()),
            PublishAck::Local,
            Box::new(|_| {}),
        );
    }

    /// Stops like a node: links first, then every socket, then the listener.
    async fn stop(self) {
        self.mesh.shutdown().await;
        self.io.close().await;
        self.server.abort();
    }
}

fn publication(node: &str, id: &str, topic: &str) -> Publication {
    Publication {
        id: id.into(),
        topic: topic.into(),
        content: json!({ "id": id }),
        sender_id: "sender".into(),
        created_at: 1,
        node: node.into(),
    }
}

async fn bind() -> (TcpListener, String) {
    bind_at("127.0.0.1").await
}

/// Binds on a loopback address of its own, for a test that frees a port and
/// binds it again: no other test or client can take it in between.
async fn bind_at(ip: &str) -> (TcpListener, String) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn config(name: &str, url: &str, nodes: &[&str], secret: &str) -> NodeConfig {
    let mut config = NodeConfig::standalone(name, "127.0.0.1:0".parse().unwrap());
    config.cluster.host = Some(url.to_owned());
    config.cluster.standalone = false;
    config.cluster.cluster_nodes = nodes.iter().map(|u| u.to_string()).collect();
    config.cluster.secret = Some(secret.to_owned());
    config.cluster.retry_interval = ConfigDuration(RETRY);
    config
}

/// Serves `/cluster` of a mesh on `listener`.
fn serve(
    listener: TcpListener,
    io_config: &NodeConfig,
    deliver: Arc<dyn Deliver>,
) -> (Arc<Mesh>, SocketIo, tokio::task::JoinHandle<()>) {
    let (svc, io) = SocketIo::builder()
        .max_payload(io_config.max_payload)
        .build_svc();
    let mesh = Mesh::start(io_config, rand::random(), deliver, CancellationToken::new()).unwrap();
    mesh.register(&io);
    let server = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let svc = svc.clone();
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    (mesh, io, server)
}

async fn start(name: &str, listener: TcpListener, url: &str, nodes: &[&str], secret: &str) -> Bare {
    let (tx, inbox) = mpsc::unbounded_channel();
    let (mesh, io, server) = serve(
        listener,
        &config(name, url, nodes, secret),
        Arc::new(Inbox(tx)),
    );
    Bare {
        name: name.into(),
        url: url.into(),
        mesh,
        io,
        inbox,
        server,
    }
}

/// Node A with one peer that never answers: for tests of what arrives at A.
async fn start_alone(listener: TcpListener, url: &str) -> Bare {
    start(
        "node-a",
        listener,
        url,
        &[url, "http://127.0.0.1:9"],
        SECRET,
    )
    .await
}

fn linked(node: &Bare) -> bool {
    node.mesh
        .status()
        .peers
        .iter()
        .all(|p| p.link.state == LinkState::Up)
}

async fn next(inbox: &mut mpsc::UnboundedReceiver<Publication>) -> Publication {
    timeout(WAIT, inbox.recv())
        .await
        .expect("a relayed publication in time")
        .expect("inbox open")
}

async fn nothing_more(inbox: &mut mpsc::UnboundedReceiver<Publication>) {
    if let Ok(Some(p)) = timeout(Duration::from_millis(300), inbox.recv()).await {
        panic!("unexpected delivery: {p:?}");
    }
}

#[tokio::test]
async fn two_nodes_relay_each_publication_once_each_way() {
    let (la, a_url) = bind().await;
    let (lb, b_url) = bind().await;
    let nodes = [a_url.as_str(), b_url.as_str()];
    let mut a = start("node-a", la, &a_url, &nodes, SECRET).await;
    let mut b = start("node-b", lb, &b_url, &nodes, SECRET).await;
    eventually("both links are up", || ready(linked(&a) && linked(&b))).await;

    for i in 0..20 {
        a.relay(&a.publication(i, "chat.room1"));
        b.relay(&b.publication(i, "chat.room2"));
    }
    for i in 0..20 {
        assert_eq!(
            next(&mut b.inbox).await,
            a.publication(i, "chat.room1"),
            "in publish order"
        );
        assert_eq!(next(&mut a.inbox).await, b.publication(i, "chat.room2"));
    }
    nothing_more(&mut a.inbox).await;
    nothing_more(&mut b.inbox).await;

    let status = a.mesh.status();
    assert!(status.ready);
    let peer = &status.peers[0];
    assert_eq!(
        (peer.link.url.as_str(), peer.link.node.as_deref()),
        (b.url.as_str(), Some("node-b"))
    );
    assert_eq!((peer.link.messages_out, peer.messages_in), (20, 20));
    assert!(peer.inbound.as_ref().is_some_and(|i| i.connected));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn relayed_publications_are_never_relayed_again() {
    let (la, a_url) = bind().await;
    let (lb, b_url) = bind().await;
    let (lc, c_url) = bind().await;
    let nodes = [a_url.as_str(), b_url.as_str(), c_url.as_str()];
    let a = start("node-a", la, &a_url, &nodes, SECRET).await;
    let mut b = start("node-b", lb, &b_url, &nodes, SECRET).await;
    let mut c = start("node-c", lc, &c_url, &nodes, SECRET).await;
    eventually("all links are up", || {
        ready(linked(&a) && linked(&b) && linked(&c))
    })
    .await;

    let original = a.publication(1, "news.eu");
    a.relay(&original);
    let at_b = next(&mut b.inbox).await;
    assert_eq!(next(&mut c.inbox).await, original);
    // Even if a node tried, a publication of another origin does not leave
    // it. The receivers' origin check and dedup would hide a relay, so B's
    // own links must have sent nothing at all.
    b.relay(&at_b);
    nothing_more(&mut b.inbox).await;
    nothing_more(&mut c.inbox).await;
    let sent: Vec<u64> = b
        .mesh
        .status()
        .peers
        .iter()
        .map(|p| p.link.messages_out)
        .collect();
    assert_eq!(sent, [0, 0], "B relayed a publication of node-a");
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_first_dial_that_fails_is_retried_until_the_peer_appears() {
    let (la, a_url) = bind().await;
    let (lb, b_url) = bind_at("127.78.0.1").await;
    // Nothing listens on B's port yet.
    drop(lb);
    let nodes = [a_url.as_str(), b_url.as_str()];
    let a = start("node-a", la, &a_url, &nodes, SECRET).await;
    eventually("the first dial has failed", || {
        ready(a.mesh.status().peers[0].link.state == LinkState::Down)
    })
    .await;
    assert!(
        a.mesh.status().ready,
        "an unreachable peer does not hold readiness back"
    );
    a.relay(&a.publication(1, "lost.while.down"));

    let lb = TcpListener::bind(b_url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut b = start("node-b", lb, &b_url, &nodes, SECRET).await;
    eventually("A's link to B is up", || ready(linked(&a))).await;
    a.relay(&a.publication(2, "after.the.redial"));
    assert_eq!(
        next(&mut b.inbox).await.id,
        "node-a-2",
        "what was published while down is not replayed"
    );
    assert!(a.mesh.status().peers[0].link.dropped >= 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_is_refused_both_ways() {
    let (la, a_url) = bind().await;
    let (lb, b_url) = bind().await;
    let nodes = [a_url.as_str(), b_url.as_str()];
    let mut a = start("node-a", la, &a_url, &nodes, SECRET).await;
    let mut b = start("node-b", lb, &b_url, &nodes, "not-the-secret").await;
    eventually("both links are refused", || {
        ready({
            [&a, &b]
                .iter()
                .all(|n| n.mesh.status().peers[0].link.state == LinkState::Refused)
        })
    })
    .await;
    let peer = &a.mesh.status().peers[0];
    assert_eq!(
        peer.link.last_error.as_deref(),
        Some("unauthorized: wrong cluster secret")
    );
    assert!(
        !a.mesh.status().ready,
        "a peer that answers but refuses is a problem to report"
    );

    a.relay(&a.publication(1, "x"));
    b.relay(&b.publication(1, "x"));
    nothing_more(&mut a.inbox).await;
    nothing_more(&mut b.inbox).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn clients_without_the_secret_are_refused_and_cannot_inject() {
    let (la, a_url) = bind().await;
    let mut a = start_alone(la, &a_url).await;
    let frame = relay::encode(&publication("rogue", "rogue-1", "chat.room1")).unwrap();

    let cases = [
        (
            json!({ "secret": "wrong", "node": "rogue", "boot": 1 }),
            "unauthorized: wrong cluster secret",
        ),
        (
            json!({ "node": "rogue", "boot": 1 }),
            "unauthorized: no cluster secret",
        ),
        (
            json!({ "secret": SECRET }),
            "bad handshake: auth needs `node` (a name) and `boot` (a number)",
        ),
        (
            json!({ "secret": SECRET, "node": "node-a", "boot": 1 }),
            "is this node's own name",
        ),
    ];
    for (auth, refusal) in cases {
        let (client, mut events) = raw_peer(&a_url, auth).await;
        let (event, payload) = next_event(&mut events).await;
        assert_eq!(event, "error");
        assert!(payload.contains(refusal), "{payload}");
        let _ = client
            .emit("relay", Payload::Binary(frame.clone().into()))
            .await;
        no_event(&mut events, Duration::from_millis(200)).await;
        let _ = client.disconnect().await;
    }
    nothing_more(&mut a.inbox).await;
    a.stop().await;
}

#[tokio::test]
async fn a_duplicated_frame_is_delivered_once_and_bad_frames_are_dropped() {
    let (la, a_url) = bind().await;
    let mut a = start_alone(la, &a_url).await;
    let (client, mut events) = raw_peer(
        &a_url,
        json!({ "secret": SECRET, "node": "node-z", "boot": 7 }),
    )
    .await;
    assert_eq!(next_event(&mut events).await.0, "welcome");

    let send = |bytes: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .emit("relay", Payload::Binary(bytes.into()))
                .await
                .unwrap()
        }
    };
    let first = publication("node-z", "node-z-1", "chat.room1");
    send(relay::encode(&first).unwrap()).await;
    send(relay::encode(&first).unwrap()).await;
    send(b"{\"v\":1,\"garbage\"".to_vec()).await;
    send(relay::encode(&publication("node-a", "node-a-9", "chat.room1")).unwrap()).await;
    client
        .emit("relay", json!({ "not": "binary" }))
        .await
        .unwrap();
    let second = publication("node-z", "node-z-2", "chat.room1");
    send(relay::encode(&second).unwrap()).await;

    assert_eq!(next(&mut a.inbox).await, first);
    assert_eq!(
        next(&mut a.inbox).await,
        second,
        "the duplicate and the bad frames were dropped"
    );
    nothing_more(&mut a.inbox).await;
    let _ = client.disconnect().await;
    a.stop().await;
}

#[tokio::test]
async fn a_lost_link_is_noticed_and_redialled_when_the_peer_returns() {
    let (la, a_url) = bind().await;
    let (lb, b_url) = bind_at("127.78.0.2").await;
    let nodes = [a_url.as_str(), b_url.as_str()];
    let a = start("node-a", la, &a_url, &nodes, SECRET).await;
    let b = start("node-b", lb, &b_url, &nodes, SECRET).await;
    eventually("both links are up", || ready(linked(&a) && linked(&b))).await;

    b.stop().await;
    eventually("A noticed B is gone", || {
        ready(a.mesh.status().peers[0].link.state == LinkState::Down)
    })
    .await;
    let peer = &a.mesh.status().peers[0];
    assert_eq!(peer.link.flaps, 1);
    assert!(
        !peer.inbound.as_ref().unwrap().connected,
        "B's link into A closed with B"
    );

    let lb = TcpListener::bind(b_url.trim_start_matches("http://"))
        .await
        .unwrap();
    let restarted = std::time::Instant::now();
    let mut b = start("node-b", lb, &b_url, &nodes, SECRET).await;
    eventually("A's link to B is back", || ready(linked(&a))).await;
    assert!(
        restarted.elapsed() < RETRY + Duration::from_secs(3),
        "{:?}",
        restarted.elapsed()
    );
    a.relay(&a.publication(1, "after.restart"));
    assert_eq!(next(&mut b.inbox).await.id, "node-a-1");
    a.stop().await;
    b.stop().await;
}
