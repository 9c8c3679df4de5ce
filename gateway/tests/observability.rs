//! `deploy/observability/` matches the metrics: every metric the Grafana
//! dashboard, the alert rules and their unit tests name is exported by a
//! running gateway or node (mesh and Redis backends), and `promtool` accepts
//! the rules, passes their unit tests and accepts the scrape config.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use http::Method;
use stickyio_gateway::Gateway;
use stickyio_testkit::RedisServer;
use support::*;

fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

/// The series names a Prometheus text exposes: every sample's name, and for
/// each declared family the names its type implies, so a family with no
/// sample yet still counts.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_owned());
            }
        }
    }
    names
}

/// Every `stickyio_…` identifier in a file's text.
fn referenced(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("stickyio_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_ident);
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_exported_metrics() {
    // Two linked mesh nodes, and a peer that is not there: link series up and down.
    let absent = format!("http://127.0.0.1:{}", free_port());
    let mesh = start_mesh(&["node-mesh-0", "node-mesh-1"], &[absent]).await;
    let redis = RedisServer::start().await;
    let redis_backed = redis_node("node-redis", &redis.url()).await;

    let dir = TempDir::new("observability");
    let config = dir.path("gateway.toml");
    std::fs::write(
        &config,
        gateway_toml(&node_list(&mesh), "[limits]\nmax_body_bytes = 1024"),
    )
    .unwrap();
    let gateway = Gateway::start(config).await.expect("gateway starts");
    // Traffic that gives every family a sample: a session (relayed to the
    // other mesh node) and a refused oversized body.
    run_session(client_ip(1), gateway.local_addr(), "obs.t")
        .await
        .expect("a session through the gateway");
    eventually("a publish relayed over the mesh", || async {
        let mut relayed = 0.0;
        for node in &mesh {
            relayed += metric_sum(
                &node_metrics(node).await,
                "stickyio_node_cluster_relayed_in_total",
            );
        }
        relayed >= 1.0
    })
    .await;
    let mut conn = HttpConn::open(client_ip(2), gateway.local_addr())
        .await
        .unwrap();
    let refused = conn
        .send(
            Method::POST,
            "/socket.io/?EIO=4&transport=polling",
            &[],
            &"x".repeat(4000),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, http::StatusCode::PAYLOAD_TOO_LARGE);

    let mut names = exported(
        &admin(gateway.admin_addr(), Method::GET, "/metrics")
            .await
            .body,
    );
    for node in mesh.iter().chain([&redis_backed]) {
        names.extend(exported(&node_metrics(node).await));
    }
    let mut checked = 0;
    for file in ["grafana-dashboard.json", "alerts.yml", "alerts-test.yml"] {
        let text = std::fs::read_to_string(observability_dir().join(file)).unwrap();
        let used = referenced(&text);
        assert!(used.len() >= 5, "{file} names only {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics nothing exports: {unknown:?}\nexported: {names:?}"
        );
        checked += used.len();
    }
    assert!(checked > 30);
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(observability_dir().join("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");

    gateway.shutdown().await;
    for node in mesh.into_iter().chain([redis_backed]) {
        let _ = node.shutdown().await;
    }
}

/// Runs promtool (Debian's `prometheus` package; scripts/test.sh installs it).
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_their_tests_and_the_scrape_config() {
    let dir = observability_dir();
    let rules = promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert!(rules.contains("SUCCESS: 9 rules found"), "{rules}");
    promtool(&dir, &["test", "rules", "alerts-test.yml"]);
    // The scrape config names token files that deployments provide.
    let copy = TempDir::new("promtool");
    for file in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(dir.join(file), copy.path(file)).unwrap();
    }
    for token in ["gateway-admin.token", "node-admin.token"] {
        std::fs::write(copy.path(token), "token\n").unwrap();
    }
    promtool(copy.dir(), &["check", "config", "prometheus.yml"]);
}

#[test]
fn a_bad_rule_fails_promtool() {
    let copy = TempDir::new("promtool-bad");
    std::fs::write(
        copy.path("bad.yml"),
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(stickyio_node_dropped_total[5m] > 0\n",
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules", "bad.yml"])
        .current_dir(copy.dir())
        .output()
        .expect("promtool runs");
    assert!(
        !out.status.success(),
        "promtool let a broken expression pass"
    );
}

#[test]
fn referenced_and_exported_read_names_exactly() {
    let text = "# TYPE stickyio_x counter\n# TYPE stickyio_up gauge\nstickyio_up{node=\"a\"} 1\nstickyio_x_total 3\n";
    assert_eq!(
        exported(text),
        ["stickyio_up", "stickyio_x_total"].map(String::from).into()
    );
    assert_eq!(
        referenced("rate(stickyio_x_total[5m]) and not_stickyio_y, \"uid\": \"stickyio\""),
        ["stickyio_x_total"].map(String::from).into()
    );
}
