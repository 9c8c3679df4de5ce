//! The `stickyio-node` binary: `check` on good and bad configs, serving
//! until SIGTERM with a clean exit, and reaching Redis over TLS.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use stickyio_shared::config::node::NodeConfig;
use stickyio_testkit::{ChildProcess, RedisServer, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_stickyio-node");
const WAIT: Duration = Duration::from_secs(15);

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config: &Path) -> Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .env_remove("STICKYIO_CLUSTER_SECRET")
        .output()
        .expect("cannot run stickyio-node")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `check` on a config that must pass, asserts that what it printed
/// holds each of `lines`, and returns it.
fn check_prints(config: &Path, lines: &[&str]) -> String {
    let output = check(config);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    for line in lines {
        assert!(
            printed.lines().any(|l| l == *line),
            "missing {line} in\n{printed}"
        );
    }
    printed
}

#[test]
fn check_prints_the_effective_config_with_defaults() {
    let dir = TempDir::new("good");
    let path = write(
        &dir,
        "node.toml",
        "listen = \"127.0.0.1:3001\"\nname = \"node-a\"\n",
    );
    let printed = check_prints(
        &path,
        &[
            "listen = \"127.0.0.1:3001\"",
            "admin = \"127.0.0.1:9100\"",
            "ping_interval = \"25s\"",
            "max_message_bytes = 65536",
            "[cluster]",
            "standalone = true",
        ],
    );
    let reparsed: NodeConfig = stickyio_shared::config::parse(&printed, "printed").unwrap();
    assert_eq!(reparsed, NodeConfig::load(&path).unwrap());
}

#[test]
fn check_never_prints_the_inline_secret() {
    let dir = TempDir::new("secret");
    let text = "listen = \"127.0.0.1:3001\"\nname = \"node-a\"\n[cluster]\nhost = \"http://127.0.0.1:3001\"\n\
                standalone = false\ncluster_nodes = [\"http://127.0.0.1:3002\"]\nsecret = \"hunter2\"\n";
    let output = check(&write(&dir, "node.toml", text));
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("standalone = false"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[test]
fn check_accepts_a_redis_node_and_never_prints_its_password() {
    let dir = TempDir::new("redis");
    write(&dir, "redis.password", "correct-horse\n");
    let text = "listen = \"127.0.0.1:3001\"\nname = \"node-a\"\n[cluster]\nstandalone = false\n\
                backend = \"redis\"\nredis_url = \"rediss://stickyio@127.0.0.1:6380/2\"\n\
                redis_password_file = \"redis.password\"\n";
    let path = write(&dir, "node.toml", text);
    let printed = check_prints(
        &path,
        &[
            "backend = \"redis\"",
            "redis_url = \"rediss://stickyio@127.0.0.1:6380/2\"",
            "redis_prefix = \"stickyio\"",
        ],
    );
    assert!(!printed.contains("correct-horse"), "{printed}");

    std::fs::remove_file(dir.path("redis.password")).unwrap();
    let output = check(&path);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("cluster.redis_password_file") && err.contains("redis.password: cannot read"),
        "{err}"
    );

    let path = write(
        &dir,
        "bad.toml",
        &text.replace("rediss://", "redis://user:pw@"),
    );
    let err = stderr(&check(&path));
    assert!(
        err.contains("bad.toml:6:13: `cluster.redis_url`: holds a password")
            && !err.contains("pw@"),
        "{err}"
    );
}

#[test]
fn check_rejects_bad_configs_with_file_line_column() {
    let dir = TempDir::new("bad");
    let cases = [
        (
            "unknown.toml",
            "listen = \"127.0.0.1:1\"\nname = \"n\"\nnmae = 1\n",
            ":3:1: unknown field `nmae`",
        ),
        (
            "value.toml",
            "listen = \"127.0.0.1:1\"\nname = \"n\"\nmax_payload = 10\n",
            ":3:15: `max_payload`: must be at least 1024 bytes",
        ),
        (
            "syntax.toml",
            "listen = \"127.0.0.1:1\nname = \"n\"\n",
            ":1:",
        ),
        (
            "duration.toml",
            "listen = \"127.0.0.1:1\"\nname = \"n\"\nping_timeout = 20\n",
            ":3:16: ",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write(&dir, name, text);
        let output = check(&path);
        assert!(!output.status.success(), "{name} was accepted");
        let err = stderr(&output);
        let located = format!("{}{expected}", path.display());
        assert!(
            err.contains(&located),
            "{name}: wanted {located:?} in {err:?}"
        );
        assert!(output.stdout.is_empty(), "{name}: printed a config");
    }
}

#[test]
fn check_reports_missing_files() {
    let dir = TempDir::new("missing");
    let output = check(&dir.path("absent.toml"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("absent.toml: cannot read config"),
        "{}",
        stderr(&output)
    );

    let text = "listen = \"127.0.0.1:3001\"\nname = \"node-a\"\n[cluster]\nhost = \"http://127.0.0.1:3001\"\n\
                standalone = false\ncluster_nodes = [\"http://127.0.0.1:3002\"]\nsecret_file = \"no.secret\"\n";
    let output = check(&write(&dir, "node.toml", text));
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("cluster.secret_file") && err.contains("no.secret"),
        "{err}"
    );
}

/// Starts `stickyio-node --log-json --config <config>` with `envs`; its log
/// lines arrive on the returned channel. Killed if a test fails before it
/// exits by itself.
fn spawn_logged(config: &Path, envs: &[(&str, String)]) -> (ChildProcess, mpsc::Receiver<String>) {
    let mut child = ChildProcess::spawn(
        Command::new(BIN)
            .args(["--log-json", "--config"])
            .arg(config)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        "stickyio-node",
    );
    let stdout = child.child().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            tx.send(line).ok();
        }
    });
    (child, rx)
}

#[test]
fn serves_until_sigterm_then_exits_zero() {
    let dir = TempDir::new("serve");
    let path = write(
        &dir,
        "node.toml",
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nname = \"node-z\"\n",
    );
    let (mut child, rx) = spawn_logged(&path, &[("RUST_LOG", "info".to_owned())]);

    // The JSON log line "listening" carries the bound address.
    let addr = loop {
        let line = rx.recv_timeout(WAIT).expect("no \"listening\" log line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if event["fields"]["message"] == "listening" {
            assert_eq!(event["fields"]["node"], "node-z");
            break event["fields"]["addr"].as_str().unwrap().to_owned();
        }
    };

    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    child.signal("TERM");
    let status = child.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let stopped =
        std::iter::from_fn(|| rx.recv_timeout(WAIT).ok()).any(|line| line.contains("\"stopped\""));
    assert!(stopped, "no \"stopped\" log line");
}

/// `rediss://` with a private CA, trusted through `SSL_CERT_FILE` as
/// operators do: the node connects over TLS (rustls) and joins the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_redis_over_tls() {
    let dir = TempDir::new("tls");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let cert = write(&dir, "redis.pem", &server.pem());
    let key = write(&dir, "redis.key", &server_key.serialize_pem());
    let tls_port = RedisServer::unused_port();
    let tls = [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert.display().to_string(),
        "--tls-key-file",
        &key.display().to_string(),
        "--tls-auth-clients",
        "no",
    ]
    .map(str::to_owned);
    let _redis = RedisServer::start_with(tls.to_vec()).await;

    let url = format!("rediss://127.0.0.1:{tls_port}");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nname = \"node-tls\"\n[cluster]\nstandalone = false\n\
         backend = \"redis\"\nredis_url = \"{url}\"\n"
    );
    let (_child, rx) = spawn_logged(
        &write(&dir, "node.toml", &text),
        &[("SSL_CERT_FILE", ca_file.display().to_string())],
    );
    let connected = format!("Connected to Redis at {url}");
    // The node logs its retries for as long as TLS fails: bounded by a deadline.
    let deadline = std::time::Instant::now() + WAIT;
    let joined = tokio::task::spawn_blocking(move || {
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(&connected) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(joined, "no \"Connected to Redis\" over TLS");
}
