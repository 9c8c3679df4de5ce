//! A throwaway `redis-server` on a free loopback port, for the Redis backend
//! tests: no persistence, stopped (and restartable on the same port) at will,
//! killed when dropped.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};

use crate::net::free_port;

const BINARY: &str = "redis-server";
/// Longest wait for redis-server to accept connections, or to exit.
const STARTUP: Duration = Duration::from_secs(10);

pub struct RedisServer {
    port: u16,
    /// Arguments beyond port and persistence, e.g. a TLS listener.
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port of 127.0.0.1. Fails the test when
    /// the binary is missing: scripts/test.sh installs it.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(Vec::new()).await
    }

    /// Starts redis-server with `extra` arguments, e.g. a TLS listener.
    pub async fn start_with(extra: Vec<String>) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                extra: extra.clone(),
                child: None,
            };
            if server.launch().await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A port with nothing listening, for a node whose Redis is not there
    /// yet ([`RedisServer::start_on`] can start one on it later), or for
    /// another listener of one.
    pub fn unused_port() -> u16 {
        free_port()
    }

    pub async fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer {
            port,
            extra: Vec::new(),
            child: None,
        };
        assert!(
            server.launch().await,
            "redis-server did not start on port {port}"
        );
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Shuts the server down as an operator would (`SHUTDOWN NOSAVE`): every
    /// client connection closes.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(Ok(mut connection)) =
                timeout(STARTUP, client.get_multiplexed_async_connection()).await
        {
            // The server closes the connection instead of answering.
            let _ = timeout(
                STARTUP,
                redis::cmd("SHUTDOWN")
                    .arg("NOSAVE")
                    .exec_async(&mut connection),
            )
            .await;
        }
        if timeout(STARTUP, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        assert!(
            self.launch().await,
            "redis-server did not restart on {}",
            self.port
        );
    }

    /// Spawns redis-server and waits until it answers PING; false if it
    /// exited first (e.g. the port was taken meanwhile).
    async fn launch(&mut self) -> bool {
        let spawned = Command::new(BINARY)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{BINARY} is not installed: run scripts/test.sh, which installs it \
                 (or apt-get install redis-server)"
            ),
            Err(e) => panic!("cannot run {BINARY}: {e}"),
        };
        let client = redis::Client::open(self.url()).expect("a redis URL");
        let polls = STARTUP.as_millis() / 20;
        for _ in 0..polls {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if let Ok(Ok(mut connection)) =
                timeout(STARTUP, client.get_multiplexed_async_connection()).await
                && redis::cmd("PING").exec_async(&mut connection).await.is_ok()
            {
                self.child = Some(child);
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill().await;
        false
    }
}
