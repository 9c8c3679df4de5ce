//! The topic cluster end to end: real nodes in-process, rust_socketio clients
//! on each, and what they receive when nodes publish, stop, come back, lose
//! a link, or hold the wrong secret. Delivery is checked over both backends
//! (the mesh, and Redis on a `redis-server` of the test's own) by one body.
//!
//! By concern: `delivery` (both backends), `mesh_faults`, `redis_faults`,
//! `catch_up` (the mesh's catch-up between peers), `resume_seam` (a resume
//! over Redis racing publishes), `resume_lag` (a resume over the mesh on a
//! node that lags the origin);
//! here, what they share.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod catch_up;
mod delivery;
mod forwarder;
mod mesh_faults;
mod redis_faults;
mod resume_lag;
mod resume_seam;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use forwarder::Forwarder;
use rust_socketio::Payload;
use serde_json::{Value, json};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use stickyio_testkit::node_cluster::{Backend, Cluster, REDIS_TTL, SECRET, name};
use stickyio_testkit::peer::{next_event, no_event, raw_peer};
use stickyio_testkit::topic_client::{GRACE, TopicClient};
use stickyio_testkit::{RedisServer, TIMEOUT as WAIT, eventually};
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
