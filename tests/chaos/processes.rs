//! The cluster under test as real processes: three `stickyio-node` binaries
//! meshed with a secret and one `stickyio-gateway` in front, so a node can be
//! killed with SIGKILL, frozen with SIGSTOP and restarted like in production.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stickyio_testkit::{ChildProcess, HttpConn, TempDir, free_ports, metric_sum};

/// Engine.IO ping interval of every node: short, so failures show quickly
/// (`STICKYIO_CHAOS_PING_INTERVAL_MS`, default 1000).
pub fn ping_interval() -> Duration {
    env_millis("STICKYIO_CHAOS_PING_INTERVAL_MS", 1000)
}

/// Engine.IO ping timeout of every node (`STICKYIO_CHAOS_PING_TIMEOUT_MS`,
/// default 3000): a client silent this long after a ping loses its session,
/// so it must cover the longest stall of a loaded machine.
pub fn ping_timeout() -> Duration {
    env_millis("STICKYIO_CHAOS_PING_TIMEOUT_MS", 3000)
}

fn env_millis(name: &str, default: u64) -> Duration {
    let ms = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_millis(ms)
}
/// Gateway health checks: `fall` failures of `interval` + `timeout` each.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(300);
pub const HEALTH_FALL: u32 = 2;

/// `STICKYIO_CHAOS_FAIL_OPEN=1`: every health check fails (a path the nodes
/// answer 404, and only 2xx passes), so the gateway fails open for the whole
/// run and only passive ejection and the handshake timeout steer clients
/// away from a failed node.
pub fn fail_open() -> bool {
    std::env::var("STICKYIO_CHAOS_FAIL_OPEN").is_ok_and(|v| v == "1")
}
const SECRET: &str = "chaos-mesh-secret";
const START_WAIT: Duration = Duration::from_secs(20);

/// `target/<profile>/`, where `cargo build --workspace --bins` puts binaries.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub struct NodeProcess {
    pub name: String,
    pub addr: SocketAddr,
    /// Its admin listener: `/readyz`, `/metrics`.
    pub admin: SocketAddr,
    config: PathBuf,
    process: Option<ChildProcess>,
}

impl NodeProcess {
    /// Starts the node; its log (warnings, and the mesh at info) goes to
    /// `$STICKYIO_CHAOS_LOG_DIR/{name}.log` when that is set, appended
    /// across restarts, else nowhere.
    fn spawn(&mut self) {
        let mut command = ChildProcess::quiet(bin("stickyio-node"));
        command.arg("--config").arg(&self.config);
        if let Some(dir) = std::env::var_os("STICKYIO_CHAOS_LOG_DIR") {
            // Node logs kept for debugging a failed run.
            let path = Path::new(&dir).join(format!("{}.log", self.name));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let stdout = log.try_clone().map_or_else(|_| Stdio::null(), Stdio::from);
            command
                .env(
                    "RUST_LOG",
                    "warn,stickyio_node::cluster::mesh=info,stickyio_node::api=debug",
                )
                .stdout(stdout)
                .stderr(Stdio::from(log));
        }
        self.process = Some(ChildProcess::spawn(&mut command, &self.name));
    }

    /// Sends signal `name` (`STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .signal(name);
    }

    /// SIGKILL (a frozen node too), then reap.
    pub fn kill(&mut self) {
        self.process = None;
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

pub struct Cluster {
    /// The configs, removed with the cluster.
    _dir: TempDir,
    pub nodes: Vec<NodeProcess>,
    _gateway: ChildProcess,
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway_config: PathBuf,
    pub gateway_text: String,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = TempDir::new("chaos");
        let names = ["node-a", "node-b", "node-c"];
        let all: [u16; 6] = free_ports();
        let (ports, admins) = all.split_at(names.len());
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect();
        let mut nodes = Vec::new();
        for ((name, port), admin) in names.iter().zip(ports).zip(admins) {
            let config = dir.path(&format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\nname = \"{name}\"\npublish_ack = \"replicated\"\nping_interval = \"{}ms\"\nping_timeout = \"{}ms\"\n\
                     [cluster]\nhost = \"http://127.0.0.1:{port}\"\nstandalone = false\ncluster_nodes = [{}]\n\
                     secret = \"{SECRET}\"\nretry_interval = \"300ms\"\n",
                    ping_interval().as_millis(),
                    ping_timeout().as_millis(),
                    urls.join(", ")
                ),
            )
            .expect("write node config");
            let mut node = NodeProcess {
                name: name.to_string(),
                addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                admin: SocketAddr::from(([127, 0, 0, 1], *admin)),
                config,
                process: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let failing_checks = if fail_open() {
            "path = \"/chaos-no-such-path\"\nexpect_status = \"200-299\"\n"
        } else {
            ""
        };
        // A handshake left unanswered (the frozen node) moves on after what
        // the checks would take to find the node down.
        let handshake = HEALTH_FALL * (HEALTH_INTERVAL + HEALTH_TIMEOUT);
        let mut gateway_text = format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[health]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = 2\nfall = {HEALTH_FALL}\n{failing_checks}\
             [limits]\nidle_timeout = \"5s\"\nmax_headers = 100\nhandshake_timeout = \"{}ms\"\n",
            HEALTH_INTERVAL.as_millis(),
            HEALTH_TIMEOUT.as_millis(),
            handshake.as_millis()
        );
        for node in &nodes {
            gateway_text.push_str(&format!(
                "[[nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
                node.name, node.addr
            ));
        }
        let gateway_config = dir.path("gateway.toml");
        std::fs::write(&gateway_config, &gateway_text).expect("write gateway config");
        let mut gateway = ChildProcess::spawn(
            Command::new(bin("stickyio-gateway"))
                .arg("--config")
                .arg(&gateway_config)
                .arg("--log-json")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
            "stickyio-gateway",
        );
        let (gateway_addr, admin_addr) =
            listening_addrs(gateway.child().stdout.take().expect("stdout"));
        let cluster = Cluster {
            _dir: dir,
            nodes,
            _gateway: gateway,
            gateway_addr,
            admin_addr,
            gateway_config,
            gateway_text,
        };
        cluster.healed("the start").await;
        cluster
    }

    /// Every node answers `/readyz` with 200: listening and linked to every
    /// reachable peer.
    pub async fn all_ready(&self) -> bool {
        for node in &self.nodes {
            if get_status(node.admin, "/readyz").await != Some(200) {
                return false;
            }
        }
        true
    }

    /// Waits until every node is ready again after `what`; how long it took.
    pub async fn healed(&self, what: &str) -> Duration {
        let start = Instant::now();
        while !self.all_ready().await {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the mesh did not heal after {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    pub fn node(&mut self, name: &str) -> &mut NodeProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("known node")
    }

    /// Writes `text` as gateway.toml and asks for a reload; the status.
    pub async fn reload(&self, text: &str) -> u16 {
        let tmp = self.gateway_config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.gateway_config).expect("replace config");
        let client: Client<HttpConnector, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = http::Request::post(format!("http://{}/reload", self.admin_addr))
            .body(Full::default())
            .expect("request");
        match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(res)) => res.status().as_u16(),
            _ => 0,
        }
    }
}

/// Reads the gateway's JSON log until it names its bound addresses.
fn listening_addrs(log: std::process::ChildStdout) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + START_WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &json["fields"];
        if fields["message"] == "gateway listening" {
            let addr = |key: &str| {
                fields[key]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("bound address in the log")
            };
            // Keep draining the log so the gateway never blocks writing it.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (addr("local_addr"), addr("admin_addr"));
        }
    }
    panic!("the gateway did not report its addresses in {START_WAIT:?}");
}

/// Sum of the samples of metric `name` on `addr`'s `/metrics` (0 when it
/// cannot be read).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let exchange = async {
        let mut conn = HttpConn::open(Ipv4Addr::LOCALHOST, addr).await?;
        conn.get("/metrics").await
    };
    match exchange.await {
        Ok(reply) => metric_sum(&reply.body, name),
        Err(_) => 0.0,
    }
}

/// The status of `GET path` on `addr`, or `None` when there is no answer in 1 s.
pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let client: Client<HttpConnector, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .ok()?;
    let res = tokio::time::timeout(Duration::from_secs(1), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    Some(status)
}
