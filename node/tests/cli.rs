//! The `stickyio-node` binary: `check` on good and bad configs, serving
//! until SIGTERM with a clean exit, and reaching Redis over TLS.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[allow(dead_code)] // this binary only starts a server
#[path = "cluster_support/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use redis_server::RedisServer;
use stickyio_shared::config::node::NodeConfig;

const BIN: &str = env!("CARGO_BIN_EXE_stickyio-node");
const WAIT: Duration = Duration::from_secs(15);

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stickyio-node-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
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
    let dir = temp_dir("good");
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
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_never_prints_the_inline_secret() {
    let dir = temp_dir("secret");
    let text = "listen = \"127.0.0.1:3001\"\nname = \"node-a\"\n[cluster]\nhost = \"http://127.0.0.1:3001\"\n\
                standalone = false\ncluster_nodes = [\"http://127.0.0.1:3002\"]\nsecret = \"hunter2\"\n";
    let output = check(&write(&dir, "node.toml", text));
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("standalone = false"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_accepts_a_redis_node_and_never_prints_its_password() {
    let dir = temp_dir("redis");
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

    std::fs::remove_file(dir.join("redis.password")).unwrap();
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
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_rejects_bad_configs_with_file_line_column() {
    let dir = temp_dir("bad");
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
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_reports_missing_files() {
    let dir = temp_dir("missing");
    let output = check(&dir.join("absent.toml"));
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
    std::fs::remove_dir_all(dir).ok();
}

/// Kills the child if a test fails before it exits by itself.
struct Running(Child);

/// Starts `stickyio-node --log-json --config <config>` with `envs`; its log
/// lines arrive on the returned channel.
fn spawn_logged(config: &Path, envs: &[(&str, String)]) -> (Running, mpsc::Receiver<String>) {
    let child = Command::new(BIN)
        .args(["--log-json", "--config"])
        .arg(config)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run stickyio-node");
    let mut child = Running(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            tx.send(line).ok();
        }
    });
    (child, rx)
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Waits up to [`WAIT`] for the child to exit.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit in {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_until_sigterm_then_exits_zero() {
    let dir = temp_dir("serve");
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

    let pid = child.0.id().to_string();
    let kill = Command::new("sh")
        .args(["-c", "kill -TERM \"$0\"", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_exit(&mut child.0);
    assert!(status.success(), "exit status {status:?}");
    let stopped =
        std::iter::from_fn(|| rx.recv_timeout(WAIT).ok()).any(|line| line.contains("\"stopped\""));
    assert!(stopped, "no \"stopped\" log line");
    std::fs::remove_dir_all(dir).ok();
}

/// `rediss://` with a private CA, trusted through `SSL_CERT_FILE` as
/// operators do: the node connects over TLS (rustls) and joins the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_redis_over_tls() {
    let dir = temp_dir("tls");
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
    std::fs::remove_dir_all(dir).ok();
}
