//! Two gateway replicas with no shared state, one `route_key`, and clients
//! that send every request to the other replica in turn.
//!
//! Each replica is its own `Gateway::start` from its own config file: its
//! own pins, health view and node list. A session still reaches its node
//! through either replica because the route travels in the sid. Every
//! scenario ends with no `Session ID unknown` (and no other error) and every
//! client answered by one node: a rolling add and removal of a node reaching
//! the replicas seconds apart, replicas that disagree about a node's health,
//! a replica restarted mid-session, and a key rotation by rolling restarts.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use stickyio_gateway::route_tag::RouteKeys;
use stickyio_gateway::{Gateway, RunningGateway};
use stickyio_node::RunningNode;
use stickyio_shared::config::node::NodeConfig;
use support::*;

const KEY: &str = "replica-test-route-key-0123456789";
const NEW_KEY: &str = "replica-test-rotated-key-9876543210";
const SEP: char = '\u{1e}';

/// The scenarios run one at a time: each is a load of its own, and timing
/// (a replica listing a node seconds after the other) is part of them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where each replica listens now, and how many times it has started; `None`
/// while it is out (as a load balancer takes a replica out before stopping it).
#[derive(Default)]
struct Slots([Mutex<Option<(SocketAddr, usize)>>; 2]);

impl Slots {
    fn get(&self, i: usize) -> Option<(SocketAddr, usize)> {
        *self.0[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, i: usize, value: Option<(SocketAddr, usize)>) {
        *self.0[i].lock().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// Two replicas, each from its own file in one directory.
struct Replicas {
    dir: TempDir,
    gateways: [Option<RunningGateway>; 2],
    starts: [usize; 2],
    slots: Arc<Slots>,
}

impl Replicas {
    async fn start(tag: &str, configs: [String; 2]) -> Replicas {
        let dir = TempDir::new(tag);
        let mut replicas = Replicas {
            dir,
            gateways: [None, None],
            starts: [0, 0],
            slots: Arc::new(Slots::default()),
        };
        for (i, text) in configs.iter().enumerate() {
            std::fs::write(replicas.config(i), text).expect("write config");
            replicas.boot(i).await;
        }
        replicas
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path(&format!("gateway-{}.toml", i + 1))
    }

    fn gateway(&self, i: usize) -> &RunningGateway {
        self.gateways[i].as_ref().expect("replica running")
    }

    async fn boot(&mut self, i: usize) {
        let gateway = Gateway::start(self.config(i))
            .await
            .unwrap_or_else(|e| panic!("replica {} starts: {e}", i + 1));
        self.slots
            .set(i, Some((gateway.local_addr(), self.starts[i])));
        self.starts[i] += 1;
        self.gateways[i] = Some(gateway);
    }

    /// Takes replica `i` out, stops it, writes `config` (if any) and starts
    /// it again from its file.
    async fn restart(&mut self, i: usize, config: Option<String>) {
        self.slots.set(i, None);
        if let Some(gateway) = self.gateways[i].take() {
            gateway.shutdown().await;
        }
        if let Some(text) = config {
            replace_file(&self.config(i), &text);
        }
        self.boot(i).await;
    }

    /// Rewrites replica `i`'s config and reloads it now (not waiting for the
    /// file watcher), failing on a refused config.
    async fn edit(&self, i: usize, text: &str) {
        replace_file(&self.config(i), text);
        self.gateway(i)
            .reload()
            .await
            .unwrap_or_else(|e| panic!("replica {} reloads: {e}", i + 1));
    }

    async fn stop(mut self) {
        for gateway in self.gateways.iter_mut().filter_map(Option::take) {
            gateway.shutdown().await;
        }
    }
}

/// A polling client that sends each request to the other replica in turn,
/// on a new connection each time, from its own address.
struct Walker {
    ip: Ipv4Addr,
    slots: Arc<Slots>,
    turn: usize,
    sid: String,
    next_ack: u32,
    /// Every node that answered.
    nodes: BTreeSet<String>,
    /// Every (replica, start) that answered.
    served_by: BTreeSet<(usize, usize)>,
    /// The (replica, start) that answered the handshake.
    handshake: (usize, usize),
}

/// What one client saw.
#[derive(Debug)]
struct Outcome {
    sid: String,
    /// The node and replica (and its start) of the handshake.
    first: (String, usize, usize),
    nodes: BTreeSet<String>,
    served_by: BTreeSet<(usize, usize)>,
}

impl Walker {
    /// Sends one request to the next replica in turn that is in. A
    /// connection that fails before any answer (a replica stopping) is
    /// retried on the other one, as a load balancer in front would.
    async fn send(&mut self, method: Method, path: &str, body: &str) -> Result<String, String> {
        let mut failures = Vec::new();
        for _ in 0..4 {
            let i = self.turn % 2;
            self.turn += 1;
            let Some((addr, start)) = self.slots.get(i) else {
                continue;
            };
            let exchange = async {
                let mut conn = HttpConn::open(self.ip, addr).await?;
                conn.send(
                    method.clone(),
                    path,
                    &[("content-type", "text/plain;charset=UTF-8")],
                    body,
                )
                .await
            };
            let reply = match exchange.await {
                Ok(reply) => reply,
                Err(e) => {
                    failures.push(format!("replica {}: {e}", i + 1));
                    continue;
                }
            };
            if reply.status != StatusCode::OK {
                return Err(format!(
                    "replica {} {path}: {} {}",
                    i + 1,
                    reply.status,
                    reply.body
                ));
            }
            self.nodes.extend(reply.node);
            self.served_by.insert((i, start));
            return Ok(reply.body);
        }
        Err(format!("no replica answered: {failures:?}"))
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    async fn post(&mut self, payload: &str) -> Result<(), String> {
        let path = self.path();
        match self.send(Method::POST, &path, payload).await?.as_str() {
            "ok" => Ok(()),
            other => Err(format!("post answered {other:?}")),
        }
    }

    /// Polls until a packet starts with `prefix`, answering pings.
    async fn poll_for(&mut self, prefix: &str) -> Result<String, String> {
        for _ in 0..20 {
            let path = self.path();
            let body = self.send(Method::GET, &path, "").await?;
            let mut found = None;
            for packet in body.split(SEP) {
                match packet {
                    "2" => self.post("3").await?,
                    "1" => return Err("the node closed the session".into()),
                    p if p.starts_with(prefix) && found.is_none() => found = Some(p.to_owned()),
                    _ => {}
                }
            }
            if let Some(packet) = found {
                return Ok(packet);
            }
        }
        Err(format!("no {prefix:?} in 20 polls"))
    }

    /// Handshake (on replica `first`) and namespace connect.
    async fn open(ip: Ipv4Addr, slots: Arc<Slots>, first: usize) -> Result<Walker, String> {
        let mut walker = Walker {
            ip,
            slots,
            turn: first,
            sid: String::new(),
            next_ack: 0,
            nodes: BTreeSet::new(),
            served_by: BTreeSet::new(),
            handshake: (0, 0),
        };
        let open = walker
            .send(Method::GET, "/socket.io/?EIO=4&transport=polling", "")
            .await?;
        walker.handshake = walker.served_by.first().copied().unwrap_or_default();
        let json: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
            .map_err(|e| format!("open packet {open:?}: {e}"))?;
        walker.sid = json["sid"]
            .as_str()
            .ok_or(format!("no sid in {open:?}"))?
            .to_owned();
        if walker.sid.matches('.').count() != 2 {
            return Err(format!("the sid is not route-tagged: {}", walker.sid));
        }
        walker.post("40").await?;
        walker.poll_for("40{").await?;
        Ok(walker)
    }

    async fn publish(&mut self, topic: &str, n: usize) -> Result<(), String> {
        let id = self.next_ack;
        self.next_ack += 1;
        let event = serde_json::json!(["publish", { "topic": topic, "content": n }]);
        self.post(&format!("42{id}{event}")).await?;
        let prefix = format!("43{id}");
        let ack = self.poll_for(&prefix).await?;
        let args: Value =
            serde_json::from_str(&ack[prefix.len()..]).map_err(|e| format!("ack {ack:?}: {e}"))?;
        if args[0]["ok"] != true {
            return Err(format!("publish refused: {ack}"));
        }
        Ok(())
    }
}

/// One client: handshake, `rounds` acked publishes `pause` apart, close.
async fn client(i: usize, slots: Arc<Slots>, rounds: usize, pause: Duration) -> Outcome {
    let run = async {
        let mut walker = Walker::open(client_ip(i), slots, i % 2).await?;
        let (node, (replica, start)) = (
            walker.nodes.first().cloned().unwrap_or_default(),
            walker.handshake,
        );
        for n in 0..rounds {
            walker.publish(&format!("replicas.{i}"), n).await?;
            tokio::time::sleep(pause).await;
        }
        walker.post("1").await?;
        Ok::<_, String>(Outcome {
            sid: walker.sid,
            first: (node, replica, start),
            nodes: walker.nodes,
            served_by: walker.served_by,
        })
    };
    run.await
        .unwrap_or_else(|e| panic!("client {i} ({}): {e}", client_ip(i)))
}

/// Starts `count` clients from `first_ip` on, one every `every`, and
/// returns their handles.
fn arrivals(
    slots: &Arc<Slots>,
    first_ip: usize,
    count: usize,
    every: Duration,
    rounds: usize,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    let slots = slots.clone();
    tokio::spawn(async move {
        let mut running = Vec::new();
        for i in first_ip..first_ip + count {
            running.push(tokio::spawn(client(
                i,
                slots.clone(),
                rounds,
                Duration::from_millis(250),
            )));
            tokio::time::sleep(every).await;
        }
        let mut outcomes = Vec::new();
        for task in running {
            match task.await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        outcomes
    })
}

async fn finish(handle: tokio::task::JoinHandle<Vec<Outcome>>) -> Vec<Outcome> {
    let outcomes = match handle.await {
        Ok(outcomes) => outcomes,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    for outcome in &outcomes {
        assert_eq!(
            outcome.nodes.len(),
            1,
            "one session, one node: {} saw {:?}",
            outcome.sid,
            outcome.nodes
        );
        assert!(
            outcome.served_by.iter().any(|(r, _)| *r == 0)
                && outcome.served_by.iter().any(|(r, _)| *r == 1),
            "{} went through both replicas: {:?}",
            outcome.sid,
            outcome.served_by
        );
    }
    outcomes
}

/// A replica's config: the fast health checks of the tests, the shared key.
fn replica_toml(nodes: &[&RunningNode]) -> String {
    let list: Vec<(&str, SocketAddr)> = nodes
        .iter()
        .map(|n| (n.config().name.as_str(), n.local_addr()))
        .collect();
    gateway_toml(
        &list,
        &format!("route_key = \"{KEY}\"\n[limits]\nshutdown_timeout = \"2s\"\n"),
    )
}

async fn gateway_metrics(gateway: &RunningGateway) -> String {
    admin(gateway.admin_addr(), Method::GET, "/metrics")
        .await
        .body
}

/// The sum of `name`'s samples labelled `label`.
fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    let lines: String = text
        .lines()
        .filter(|l| l.contains(label))
        .map(|l| format!("{l}\n"))
        .collect();
    metric_sum(&lines, name)
}

async fn nodes(names: &[&str]) -> Vec<RunningNode> {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(start_node(name).await);
    }
    nodes
}

/// Nodes a, b and c, and a replica config listing them.
async fn three_nodes() -> (Vec<RunningNode>, String) {
    let pool = nodes(&["a", "b", "c"]).await;
    let config = replica_toml(&pool.iter().collect::<Vec<_>>());
    (pool, config)
}

async fn stop_nodes(nodes: Vec<RunningNode>) {
    for node in nodes {
        let _ = node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_then_removed_replica_by_replica_breaks_no_session() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pool = nodes(&["a", "b", "c", "d"]).await;
    let (abc, abcd): (Vec<&RunningNode>, Vec<&RunningNode>) =
        (pool[..3].iter().collect(), pool.iter().collect());
    let (without, with) = (replica_toml(&abc), replica_toml(&abcd));
    let replicas = Replicas::start("rolling", [without.clone(), without.clone()]).await;
    let clients = arrivals(&replicas.slots, 0, 120, Duration::from_millis(90), 12);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    replicas.edit(1, &with).await;
    // Replica 2's sessions on d reach d through replica 1 too, which does
    // not list it yet.
    let first = replicas.gateway(0);
    eventually("replica 1 serving d unlisted", || async {
        let text = gateway_metrics(first).await;
        metric_with(&text, "stickyio_gateway_requests_total", "node=\"d\"") > 0.0
    })
    .await;
    replicas.edit(0, &with).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    replicas.edit(1, &without).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    replicas.edit(0, &without).await;

    let outcomes = finish(clients).await;
    let on_d = outcomes.iter().filter(|o| o.first.0 == "d").count();
    assert!(on_d >= 5, "some sessions lived on d: {on_d}");
    assert!(
        outcomes.iter().any(|o| o.first.0 == "d" && o.first.1 == 1),
        "d took handshakes through replica 2"
    );
    replicas.stop().await;
    stop_nodes(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_disagree_on_a_nodes_health_both_serve_its_sessions() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut pool = nodes(&["a", "b"]).await;
    // c's `/readyz` fails: it dials a mesh peer (a, which has no /cluster)
    // that answers but never links. Its `/healthz` passes.
    let mut config = NodeConfig::standalone("c", "127.0.0.1:0".parse().expect("addr"));
    config.cluster.standalone = false;
    config.cluster.host = Some("http://127.0.0.1:1".into());
    config.cluster.cluster_nodes = vec![format!("http://{}", pool[0].local_addr())];
    config.cluster.secret = Some("replica-tests-mesh-secret-0123456789".into());
    pool.push(
        stickyio_node::Node::bind(config)
            .await
            .expect("node c starts"),
    );
    let all: Vec<&RunningNode> = pool.iter().collect();
    let strict = "[health]\npath = \"/readyz\"\nexpect_status = \"200-299\"\npanic_threshold = 0\n";
    // `[health]` comes once: the strict replica's replaces the tests' default.
    // Its checks go to each node's admin listener, where `/readyz` lives.
    let mut strict_toml = replica_toml(&all).replace("[health]\n", strict);
    for node in &all {
        let entry = format!("addr = \"{}\"\n", node.local_addr());
        let with_check = format!("{entry}check_port = {}\n", node.admin_addr().port());
        strict_toml = strict_toml.replace(&entry, &with_check);
    }
    let replicas = Replicas::start("health", [strict_toml, replica_toml(&all)]).await;
    let healthy = |nodes: Vec<Value>| {
        nodes
            .iter()
            .find(|n| n["name"] == "c")
            .map(|n| n["healthy"] == true)
    };
    eventually("the replicas disagree about c", || async {
        healthy(nodes_json(replicas.gateway(0).admin_addr()).await) == Some(false)
            && healthy(nodes_json(replicas.gateway(1).admin_addr()).await) == Some(true)
    })
    .await;

    let outcomes = finish(arrivals(
        &replicas.slots,
        0,
        90,
        Duration::from_millis(40),
        6,
    ))
    .await;
    let on_c: Vec<&Outcome> = outcomes.iter().filter(|o| o.first.0 == "c").collect();
    assert!(on_c.len() >= 5, "some sessions lived on c: {}", on_c.len());
    assert!(
        on_c.iter().all(|o| o.first.1 == 1),
        "only replica 2 placed clients on c"
    );
    assert_eq!(
        healthy(nodes_json(replicas.gateway(0).admin_addr()).await),
        Some(false),
        "replica 1 saw c down throughout"
    );
    replicas.stop().await;
    stop_nodes(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_mid_session_serves_the_sessions_it_never_saw() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (pool, config) = three_nodes().await;
    let mut replicas = Replicas::start("restart", [config.clone(), config]).await;
    let clients = arrivals(&replicas.slots, 0, 100, Duration::from_millis(60), 16);
    tokio::time::sleep(Duration::from_secs(3)).await;
    replicas.restart(0, None).await;

    let outcomes = finish(clients).await;
    let across = outcomes
        .iter()
        .filter(|o| o.first.1 == 0 && o.first.2 == 0 && o.served_by.contains(&(0, 1)))
        .count();
    assert!(
        across >= 10,
        "sessions opened on replica 1 continued on its restart: {across}"
    );
    replicas.stop().await;
    stop_nodes(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_key_rotates_by_rolling_restarts_with_no_broken_session() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (pool, old) = three_nodes().await;
    // Step 1 accepts the new key everywhere; step 2 makes tags with it.
    let accept_new = old.replace(
        &format!("route_key = \"{KEY}\"\n"),
        &format!("route_key = \"{KEY}\"\nroute_key_previous = \"{NEW_KEY}\"\n"),
    );
    let rotated = old.replace(
        &format!("route_key = \"{KEY}\"\n"),
        &format!("route_key = \"{NEW_KEY}\"\nroute_key_previous = \"{KEY}\"\n"),
    );
    assert!(accept_new != old && rotated != old);
    let mut replicas = Replicas::start("rotate", [old.clone(), old]).await;
    // Long-lived clients that see every step, and newcomers throughout.
    let early = arrivals(&replicas.slots, 0, 30, Duration::from_millis(30), 50);
    let later = arrivals(&replicas.slots, 30, 90, Duration::from_millis(120), 6);
    for step in [accept_new, rotated] {
        for i in 0..2 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            replicas.restart(i, Some(step.clone())).await;
        }
    }
    let (early, later) = (finish(early).await, finish(later).await);
    let (old_keys, new_keys) = (
        RouteKeys::new(KEY.as_bytes(), None),
        RouteKeys::new(NEW_KEY.as_bytes(), None),
    );
    for outcome in &early {
        assert!(
            old_keys.open(&outcome.sid).is_ok(),
            "{} was tagged with the old key",
            outcome.sid
        );
        assert_eq!(
            outcome.served_by.iter().filter(|(_, s)| *s == 2).count(),
            2,
            "{} was served by both rotated replicas",
            outcome.sid
        );
    }
    let fresh: Vec<&Outcome> = later
        .iter()
        .filter(|o| o.first.2 == 2 && o.served_by.iter().all(|(_, s)| *s == 2))
        .collect();
    assert!(fresh.len() >= 5, "sessions opened after the rotation");
    for outcome in fresh {
        assert!(
            new_keys.open(&outcome.sid).is_ok() && old_keys.open(&outcome.sid).is_err(),
            "{} is tagged with the new key only",
            outcome.sid
        );
    }
    replicas.stop().await;
    stop_nodes(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sids_are_explained_on_both_replicas_and_bad_ones_refused() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pool = nodes(&["a", "b", "c", "d"]).await;
    let (abc, abcd): (Vec<&RunningNode>, Vec<&RunningNode>) =
        (pool[..3].iter().collect(), pool.iter().collect());
    let replicas = Replicas::start("explain", [replica_toml(&abc), replica_toml(&abcd)]).await;
    // A client replica 2 places on d, which replica 1 does not list.
    let i = (0..2000)
        .find(|&i| ranking(client_ip(i), &["a", "b", "c", "d"])[0] == "d")
        .expect("an address placed on d");
    let mut walker = Walker::open(client_ip(i), replicas.slots.clone(), 1)
        .await
        .expect("session through replica 2");
    let d = pool[3].local_addr().to_string();
    let mut explained = Vec::new();
    for r in 0..2 {
        let reply = admin(
            replicas.gateway(r).admin_addr(),
            Method::GET,
            &format!("/route?sid={}", walker.sid),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let json = reply.json();
        assert_eq!(json["valid"], true);
        assert_eq!(json["node"], "d");
        assert_eq!(json["addr"], d.as_str());
        assert_eq!(json["listed"], r == 1, "replica {} lists d: {json}", r + 1);
        assert!(
            walker
                .sid
                .ends_with(&format!(".{}", json["node_sid"].as_str().unwrap_or("?")))
        );
        explained.push(json["node_sid"].clone());
    }
    assert_eq!(explained[0], explained[1]);
    walker
        .publish("explained", 0)
        .await
        .expect("served through both");
    assert_eq!(walker.nodes, BTreeSet::from(["d".to_owned()]));

    let foreign = RouteKeys::new(b"another pool's route key 0123", None).seal(
        "d",
        &d,
        walker.sid.rsplit('.').next().unwrap_or_default(),
    );
    let truncated = walker.sid[..walker.sid.len() - 3].to_owned();
    let cut_in_tag = walker.sid[..walker.sid.find('.').unwrap_or(0) + 4].to_owned();
    for r in 0..2 {
        let gateway = replicas.gateway(r);
        let before = metric_with(
            &gateway_metrics(gateway).await,
            "stickyio_gateway_rejected_total",
            "reason=\"invalid_sid\"",
        );
        let bad = [&foreign, &truncated, &cut_in_tag, "garbage-sid"];
        for sid in bad {
            let mut conn = HttpConn::open(client_ip(i), gateway.local_addr())
                .await
                .expect("connect");
            let reply = conn
                .get(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
                .await
                .expect("answered");
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{sid}: {}",
                reply.body
            );
            assert_eq!(
                reply.json()["error"],
                "invalid_sid",
                "{sid}: {}",
                reply.body
            );
            assert_eq!(
                reply.node, None,
                "{sid} was refused by the gateway, not a node"
            );
            let route = admin(
                gateway.admin_addr(),
                Method::GET,
                &format!("/route?sid={sid}"),
            )
            .await;
            assert_eq!(route.status, StatusCode::BAD_REQUEST, "{sid}");
            assert_eq!(route.json()["error"], "invalid_sid");
        }
        let after = metric_with(
            &gateway_metrics(gateway).await,
            "stickyio_gateway_rejected_total",
            "reason=\"invalid_sid\"",
        );
        assert_eq!(
            after - before,
            bad.len() as f64,
            "replica {} counted them",
            r + 1
        );
    }
    walker.post("1").await.expect("close");
    replicas.stop().await;
    stop_nodes(pool).await;
}
