//! The cluster under test as real processes: three `stickyio-node` binaries
//! meshed with a secret and one `stickyio-gateway` in front, so a node can be
//! killed with SIGKILL, frozen with SIGSTOP and restarted like in production.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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

/// Ports for the nodes, chosen by the kernel and released for the nodes to
/// bind (they must be known before start: every node lists every peer).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("reserved address").port())
        .collect()
}

pub struct NodeProcess {
    pub name: String,
    pub addr: SocketAddr,
    /// Its admin listener: `/readyz`, `/metrics`.
    pub admin: SocketAddr,
    config: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts the node; its log (warnings, and the mesh at info) goes to
    /// `$STICKYIO_CHAOS_LOG_DIR/{name}.log` when that is set, appended
    /// across restarts, else nowhere.
    fn spawn(&mut self) {
        let log = std::env::var_os("STICKYIO_CHAOS_LOG_DIR").map(|dir| {
            let path = Path::new(&dir).join(format!("{}.log", self.name));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        });
        let stdout = log
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .map_or_else(Stdio::null, Stdio::from);
        let stderr = log.map_or_else(Stdio::null, Stdio::from);
        let child = Command::new(bin("stickyio-node"))
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                "warn,stickyio_node::cluster::mesh=info,stickyio_node::api=debug",
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start stickyio-node");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} {}", self.name);
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.kill();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<NodeProcess>,
    gateway: Child,
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway_config: PathBuf,
    pub gateway_text: String,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("stickyio-chaos-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let names = ["node-a", "node-b", "node-c"];
        let all = free_ports(names.len() * 2);
        let (ports, admins) = all.split_at(names.len());
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect();
        let mut nodes = Vec::new();
        for ((name, port), admin) in names.iter().zip(ports).zip(admins) {
            let config = dir.join(format!("{name}.toml"));
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
                child: None,
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
        let gateway_config = dir.join("gateway.toml");
        std::fs::write(&gateway_config, &gateway_text).expect("write gateway config");
        let mut gateway = Command::new(bin("stickyio-gateway"))
            .arg("--config")
            .arg(&gateway_config)
            .arg("--log-json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stickyio-gateway");
        let (gateway_addr, admin_addr) = listening_addrs(gateway.stdout.take().expect("stdout"));
        let cluster = Cluster {
            dir,
            nodes,
            gateway,
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

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
    let client: Client<HttpConnector, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let Ok(req) = http::Request::get(format!("http://{addr}/metrics")).body(Full::default()) else {
        return 0.0;
    };
    let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(2), client.request(req)).await
    else {
        return 0.0;
    };
    let Ok(body) = res.into_body().collect().await else {
        return 0.0;
    };
    String::from_utf8_lossy(&body.to_bytes())
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
