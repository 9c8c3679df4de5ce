//! The `stickyio-gateway` binary: `check` prints the effective config or a
//! located error, and SIGTERM stops a running gateway with exit code 0.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{ChildProcess, TempDir};

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

/// The child's log lines, read on a thread so waits can time out.
fn log_lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_within(lines: &mpsc::Receiver<String>, text: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn wait_for(lines: &mpsc::Receiver<String>, text: &str) -> Option<String> {
    wait_for_within(lines, text, Duration::from_secs(10))
}

#[cfg(unix)]
#[test]
fn sighup_reloads_and_sigterm_stops_the_gateway_with_exit_code_zero() {
    // The config is a link to a file in another directory: the watcher sees
    // the link's directory only, so an edit of the target is picked up by
    // SIGHUP alone.
    let (watched, elsewhere) = (TempDir::new("cli-term"), TempDir::new("cli-term-target"));
    let target = elsewhere.path("real.toml");
    std::fs::write(
        &target,
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let path = watched.path("gateway.toml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let mut child = ChildProcess::spawn(
        Command::new(BIN)
            .args(["--log-json", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped()),
        "stickyio-gateway",
    );
    let lines = log_lines(child.child().stdout.take().unwrap());
    let line = wait_for(&lines, "gateway listening").expect("the gateway logs that it listens");
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        "JSON log line: {line}"
    );

    std::fs::write(
        &target,
        std::fs::read_to_string(&target).unwrap() + "weight = 2\n",
    )
    .unwrap();
    assert!(
        wait_for_within(&lines, "config reloaded", Duration::from_millis(500)).is_none(),
        "the watcher must not see the target's directory"
    );
    child.signal("HUP");
    let line = wait_for(&lines, "config reloaded").expect("SIGHUP reloads the config");
    assert!(line.contains("reweighted"), "{line}");

    child.signal("TERM");
    let status = child.wait_exit();
    assert!(status.success(), "{status}");
}
