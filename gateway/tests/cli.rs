//! The `stickyio-gateway` binary: `check` prints the effective config or a
//! located error, and SIGTERM stops a running gateway with exit code 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_stickyio-gateway");

/// Runs `stickyio-gateway check` on `text` written as a config file.
fn check(text: &str) -> (std::process::Output, std::path::PathBuf, TempDir) {
    let dir = TempDir::new("cli-check");
    let path = dir.path("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (out, path, dir)
}

#[test]
fn check_prints_the_effective_config() {
    let (out, _, _dir) = check("[[nodes]]\nname = \"node-a\"\naddr = \"127.0.0.1:3001\"\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "listen = \"0.0.0.0:8080\"",
        "admin = \"127.0.0.1:9090\"",
        "ipv6_prefix = 64",
        "interval = \"2s\"",
        "weight = 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn check_reports_a_bad_config_with_its_location() {
    let (out, path, _dir) =
        check("ipv4_prefix = 40\n[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:1:15: `ipv4_prefix`: must be between 1 and 32",
        path.display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn sigterm_stops_the_gateway_with_exit_code_zero() {
    let dir = TempDir::new("cli-term");
    let path = dir.path("gateway.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-json", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .take(20)
        .map_while(Result::ok)
        .find(|l| l.contains("gateway listening"));
    let line = listening.expect("the gateway logs that it listens");
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        "JSON log line: {line}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
