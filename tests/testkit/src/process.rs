//! A spawned binary under test: killed (SIGKILL) and reaped when dropped,
//! so a failing test leaves no process behind, with what the tests read of
//! it: alive or not, resident memory, exit status.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::wait::TIMEOUT;

/// Growth of a server's resident memory any one attack of the hostile-client
/// tests may cause.
pub const RSS_GROWTH_BOUND_KB: u64 = 96 * 1024;

pub struct ChildProcess {
    child: Child,
    /// What it is, for messages.
    what: String,
}

impl ChildProcess {
    /// `program` with stdin, stdout and stderr on /dev/null and `RUST_LOG`
    /// at `warn`: a quiet server for a test to start with [`Self::spawn`].
    pub fn quiet(program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Spawns `command`; panics naming `what` when it cannot run.
    pub fn spawn(command: &mut Command, what: &str) -> ChildProcess {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        ChildProcess {
            child,
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process itself, e.g. to take a piped stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether it is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait on the child").is_none()
    }

    /// Resident memory, in KiB, from /proc.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{} is not running: {e}", self.what));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Asserts it has not died (`what`: of what it went through).
    pub fn assert_running(&mut self, what: &str) {
        assert!(self.is_running(), "{} died: {what}", self.what);
    }

    /// Asserts its memory grew by less than [`RSS_GROWTH_BOUND_KB`] since it
    /// was `before_kb`.
    pub fn assert_rss_bounded(&self, before_kb: u64, what: &str) {
        let after = self.rss_kb();
        assert!(
            after.saturating_sub(before_kb) < RSS_GROWTH_BOUND_KB,
            "{what}: {} RSS grew from {before_kb} KiB to {after} KiB",
            self.what
        );
    }

    /// Sends signal `name` (`TERM`, `STOP`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.what);
    }

    /// Waits up to [`TIMEOUT`] for it to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in {TIMEOUT:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
