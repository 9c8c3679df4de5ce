//! `node.toml`: the settings of one `stickyio-node`, including its `[cluster]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, Duration, Validate, Violation};
pub use crate::secret::SecretError;

/// Environment variable that can carry the mesh secret instead of the file.
pub const SECRET_ENV: &str = "STICKYIO_CLUSTER_SECRET";
/// Environment variable that can carry the Redis password instead of the file.
pub const REDIS_PASSWORD_ENV: &str = "STICKYIO_REDIS_PASSWORD";
/// Largest `send_buffer`: beyond it one slow socket could hold gigabytes.
const MAX_SEND_BUFFER: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Address the Socket.IO and HTTP server binds.
    pub listen: SocketAddr,
    /// This node's name: shown on the demo page, in `message.node` and metrics.
    pub name: String,
    #[serde(default = "defaults::ping_interval")]
    pub ping_interval: Duration,
    #[serde(default = "defaults::ping_timeout")]
    pub ping_timeout: Duration,
    /// Largest Engine.IO payload accepted from a client, in bytes.
    #[serde(default = "defaults::max_payload")]
    pub max_payload: u64,
    /// Most patterns one socket may hold at once.
    #[serde(default = "defaults::max_subscriptions")]
    pub max_subscriptions: usize,
    /// Largest `content` of one publish, in bytes of JSON; bigger ones are
    /// refused with `too_large`. A frame over `max_payload` never gets that far:
    /// the transport closes the connection first.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Packets one socket may have queued for sending; a delivery to a full
    /// socket is dropped and counted. A client that never reads holds at most
    /// `send_buffer × max_message_bytes` until its ping timeout ends it.
    #[serde(default = "defaults::send_buffer")]
    pub send_buffer: usize,
    /// Open connections the node accepts; more get `503` and are closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// How long a connection may take to send a request head (slowloris).
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive, whole (slow bodies).
    #[serde(default = "defaults::body_read_timeout")]
    pub body_read_timeout: Duration,
    #[serde(default)]
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's own URL as its peers dial it; skipped in `cluster_nodes`.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "defaults::standalone")]
    pub standalone: bool,
    /// Every node of the mesh, this one included or not.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// The mesh secret inline. Prefer `secret_file` or the environment.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// A file holding the mesh secret, relative to the config file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "defaults::retry_interval")]
    pub retry_interval: Duration,
    /// Relay frames queued per peer link before new ones are dropped.
    #[serde(default = "defaults::link_queue")]
    pub link_queue: usize,
    /// What carries publications between nodes: links of their own, or Redis.
    #[serde(default)]
    pub backend: Backend,
    /// `redis://host:port[/db]` or `rediss://…` (TLS). A user name may be in
    /// the URL; the password may not (it would be printed by `check`).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// A file holding the Redis password, relative to the config file; else
    /// [`REDIS_PASSWORD_ENV`] is read.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// Start of every Redis channel and key this pool uses, so several pools
    /// can share one Redis.
    #[serde(default = "defaults::redis_prefix")]
    pub redis_prefix: String,
    /// How long a node's heartbeat key lives; refreshed every third of it.
    #[serde(default = "defaults::redis_heartbeat_ttl")]
    pub redis_heartbeat_ttl: Duration,
}

/// The cluster backend: how a publication reaches the other nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Every node links to every other node (`cluster_nodes`, `secret`).
    #[default]
    Mesh,
    /// Every node publishes to and subscribes on one Redis (`redis_url`).
    Redis,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host: None,
            standalone: defaults::standalone(),
            cluster_nodes: Vec::new(),
            secret: None,
            secret_file: None,
            retry_interval: defaults::retry_interval(),
            link_queue: defaults::link_queue(),
            backend: Backend::default(),
            redis_url: None,
            redis_password_file: None,
            redis_prefix: defaults::redis_prefix(),
            redis_heartbeat_ttl: defaults::redis_heartbeat_ttl(),
        }
    }
}

mod defaults {
    use super::Duration;
    pub fn ping_interval() -> Duration {
        Duration::from_secs(25)
    }
    pub fn ping_timeout() -> Duration {
        Duration::from_secs(20)
    }
    pub fn max_payload() -> u64 {
        1_000_000
    }
    pub fn max_subscriptions() -> usize {
        100
    }
    pub fn max_message_bytes() -> usize {
        64 * 1024
    }
    /// socketioxide's default of 128 dropped 0.8 % of W5 deliveries (300
    /// subscribers, 3 publishers) whenever the clients' CPU share dipped.
    pub fn send_buffer() -> usize {
        1024
    }
    pub fn max_connections() -> usize {
        10_000
    }
    /// hyper's own default, and the gateway's.
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    /// A 1 MB `max_payload` at 33 KB/s.
    pub fn body_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn standalone() -> bool {
        true
    }
    pub fn retry_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn link_queue() -> usize {
        4096
    }
    pub fn redis_prefix() -> String {
        "stickyio".to_owned()
    }
    pub fn redis_heartbeat_ttl() -> Duration {
        Duration::from_secs(3)
    }
}

impl NodeConfig {
    /// Reads, validates and resolves `node.toml`: a relative `secret_file`
    /// or `redis_password_file` is taken from the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = super::load(path)?;
        if let Some(dir) = path.parent() {
            let cluster = &mut config.cluster;
            for file in [&mut cluster.secret_file, &mut cluster.redis_password_file]
                .into_iter()
                .flatten()
            {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            }
        }
        Ok(config)
    }

    /// A standalone node on `listen` with every other setting at its default.
    pub fn standalone(name: impl Into<String>, listen: SocketAddr) -> Self {
        NodeConfig {
            listen,
            name: name.into(),
            ping_interval: defaults::ping_interval(),
            ping_timeout: defaults::ping_timeout(),
            max_payload: defaults::max_payload(),
            max_subscriptions: defaults::max_subscriptions(),
            max_message_bytes: defaults::max_message_bytes(),
            send_buffer: defaults::send_buffer(),
            max_connections: defaults::max_connections(),
            header_read_timeout: defaults::header_read_timeout(),
            body_read_timeout: defaults::body_read_timeout(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl ClusterConfig {
    /// Peer URLs to dial: `cluster_nodes` without this node's own `host`.
    pub fn peers(&self) -> Vec<String> {
        let own = self.host.as_deref().map(normalize_url);
        self.cluster_nodes
            .iter()
            .filter(|u| Some(normalize_url(u)) != own)
            .cloned()
            .collect()
    }

    /// The mesh secret: inline, else `secret_file`, else the environment.
    pub fn resolve_secret(&self) -> Result<Option<String>, SecretError> {
        crate::secret::resolve(
            self.secret.as_deref(),
            self.secret_file.as_deref(),
            "cluster.secret_file",
            SECRET_ENV,
        )
    }

    /// The Redis password: `redis_password_file`, else the environment, else none.
    pub fn resolve_redis_password(&self) -> Result<Option<String>, SecretError> {
        crate::secret::resolve(
            None,
            self.redis_password_file.as_deref(),
            "cluster.redis_password_file",
            REDIS_PASSWORD_ENV,
        )
    }
}

fn normalize_url(url: &str) -> String {
    url.trim_end_matches('/').to_ascii_lowercase()
}

impl Validate for NodeConfig {
    fn validate(&self) -> Result<(), Violation> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Violation::new(
                "name",
                "must be non-empty, without spaces or control characters",
            ));
        }
        if self.ping_interval.get().is_zero() {
            return Err(Violation::new("ping_interval", "must be greater than 0"));
        }
        if self.ping_timeout.get().is_zero() {
            return Err(Violation::new("ping_timeout", "must be greater than 0"));
        }
        if self.max_payload < 1024 {
            return Err(Violation::new("max_payload", "must be at least 1024 bytes"));
        }
        if self.max_subscriptions == 0 {
            return Err(Violation::new("max_subscriptions", "must be at least 1"));
        }
        if self.max_message_bytes == 0 {
            return Err(Violation::new(
                "max_message_bytes",
                "must be at least 1 byte",
            ));
        }
        if !(1..=MAX_SEND_BUFFER).contains(&self.send_buffer) {
            return Err(Violation::new(
                "send_buffer",
                format!("must be between 1 and {MAX_SEND_BUFFER} packets"),
            ));
        }
        if self.max_connections == 0 {
            return Err(Violation::new("max_connections", "must be at least 1"));
        }
        if self.header_read_timeout.get().is_zero() {
            return Err(Violation::new(
                "header_read_timeout",
                "must be greater than 0",
            ));
        }
        if self.body_read_timeout.get().is_zero() {
            return Err(Violation::new(
                "body_read_timeout",
                "must be greater than 0",
            ));
        }
        self.cluster.validate()
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), Violation> {
        for (i, url) in self.cluster_nodes.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Violation::new(
                    format!("cluster.cluster_nodes[{i}]"),
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(host) = &self.host
            && !(host.starts_with("http://") || host.starts_with("https://"))
        {
            return Err(Violation::new(
                "cluster.host",
                format!("{host:?} is not an http:// or https:// URL"),
            ));
        }
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err(Violation::new(
                "cluster.secret_file",
                "set either `secret` or `secret_file`, not both",
            ));
        }
        if self.secret.as_deref() == Some("") {
            return Err(Violation::new("cluster.secret", "must not be empty"));
        }
        if self.retry_interval.get().is_zero() {
            return Err(Violation::new(
                "cluster.retry_interval",
                "must be greater than 0",
            ));
        }
        if self.link_queue == 0 {
            return Err(Violation::new("cluster.link_queue", "must be at least 1"));
        }
        match self.backend {
            Backend::Mesh => self.validate_mesh(),
            Backend::Redis => self.validate_redis(),
        }
    }

    fn validate_mesh(&self) -> Result<(), Violation> {
        let redis_only = [
            ("redis_url", self.redis_url.is_some()),
            ("redis_password_file", self.redis_password_file.is_some()),
            (
                "redis_prefix",
                self.redis_prefix != defaults::redis_prefix(),
            ),
            (
                "redis_heartbeat_ttl",
                self.redis_heartbeat_ttl != defaults::redis_heartbeat_ttl(),
            ),
        ];
        if let Some((key, _)) = redis_only.iter().find(|(_, set)| *set) {
            return Err(Violation::new(
                format!("cluster.{key}"),
                "is only used with backend = \"redis\"; set `backend = \"redis\"` or remove it",
            ));
        }
        if self.standalone {
            return Ok(());
        }
        if self.host.is_none() {
            return Err(Violation::new(
                "cluster.standalone",
                "a clustered node needs `cluster.host`, its own URL as peers dial it",
            ));
        }
        if self.peers().is_empty() {
            return Err(Violation::new(
                "cluster.cluster_nodes",
                "standalone = false needs at least one peer other than this node's own `host`",
            ));
        }
        let env_secret = std::env::var(SECRET_ENV).is_ok_and(|s| !s.is_empty());
        if self.secret.is_none() && self.secret_file.is_none() && !env_secret {
            return Err(Violation::new(
                "cluster.standalone",
                format!(
                    "standalone = false needs a mesh secret: set `secret_file`, `secret`, or {SECRET_ENV}"
                ),
            ));
        }
        Ok(())
    }

    /// The mesh's peer list and secret mean nothing over Redis, and a config
    /// that has them was probably meant for the mesh: refused, not ignored.
    fn validate_redis(&self) -> Result<(), Violation> {
        let mesh_only = [
            ("cluster_nodes", !self.cluster_nodes.is_empty()),
            ("secret", self.secret.is_some()),
            ("secret_file", self.secret_file.is_some()),
        ];
        if let Some((key, _)) = mesh_only.iter().find(|(_, set)| *set) {
            return Err(Violation::new(
                format!("cluster.{key}"),
                "is only used with backend = \"mesh\"; with backend = \"redis\" nodes find each other through Redis, and Redis auth and TLS carry trust",
            ));
        }
        let Some(url) = &self.redis_url else {
            return Err(Violation::new(
                "cluster.backend",
                "backend = \"redis\" needs `redis_url`, e.g. \"redis://127.0.0.1:6379\"",
            ));
        };
        check_redis_url(url).map_err(|why| Violation::new("cluster.redis_url", why))?;
        let prefix = &self.redis_prefix;
        if prefix.is_empty()
            || prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || "*?[]\\".contains(c))
        {
            return Err(Violation::new(
                "cluster.redis_prefix",
                "must be non-empty, without spaces, control characters or any of * ? [ ] \\",
            ));
        }
        if self.redis_heartbeat_ttl.get() < std::time::Duration::from_millis(300) {
            return Err(Violation::new(
                "cluster.redis_heartbeat_ttl",
                "must be at least 300ms (it is refreshed every third of it)",
            ));
        }
        Ok(())
    }
}

/// Checks the shape of a Redis URL; the client parses it fully when the node
/// starts (and `stickyio-node check` does too).
fn check_redis_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(format!("{url:?} is not a redis:// or rediss:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            if user_info.contains(':') {
                return Err(format!(
                    "holds a password; put it in `redis_password_file` or {REDIS_PASSWORD_ENV} instead, so it is never printed or logged"
                ));
            }
            host
        }
        None => authority,
    };
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const FULL: &str = r#"
listen = "0.0.0.0:3001"
name = "node-a"
ping_interval = "25s"
ping_timeout = "20s"
max_payload = 1000000

[cluster]
host = "http://127.0.0.1:3001"
standalone = false
cluster_nodes = ["http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003"]
secret = "s3cret"
retry_interval = "5s"
"#;

    #[test]
    fn design_example_parses_and_skips_own_host() {
        let c: NodeConfig = parse(FULL, "node.toml").unwrap();
        assert_eq!(c.name, "node-a");
        assert_eq!(c.cluster.retry_interval, Duration::from_secs(5));
        assert_eq!(
            c.cluster.peers(),
            vec!["http://127.0.0.1:3002", "http://127.0.0.1:3003"]
        );
        assert_eq!(
            c.cluster.resolve_secret().unwrap().as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn defaults_are_standalone() {
        let c: NodeConfig = parse("listen = \"127.0.0.1:0\"\nname = \"n\"\n", "n.toml").unwrap();
        assert!(c.cluster.standalone);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.max_payload, 1_000_000);
        assert_eq!(c.max_message_bytes, 65_536);
        assert_eq!(c.send_buffer, 1024);
    }

    #[test]
    fn send_buffer_is_read_and_bounded() {
        let base = "listen = \"127.0.0.1:0\"\nname = \"n\"\n";
        let c: NodeConfig = parse(&format!("{base}send_buffer = 64\n"), "n.toml").unwrap();
        assert_eq!(c.send_buffer, 64);
        for bad in ["0", "100000"] {
            let err = parse::<NodeConfig>(&format!("{base}send_buffer = {bad}\n"), "n.toml")
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "n.toml:3:15: `send_buffer`: must be between 1 and 65536 packets"
            );
        }
    }

    #[test]
    fn listener_limits_are_read_and_validated() {
        let base = "listen = \"127.0.0.1:0\"\nname = \"n\"\n";
        let c: NodeConfig = parse(
            &format!("{base}max_connections = 5\nheader_read_timeout = \"2s\"\n"),
            "n.toml",
        )
        .unwrap();
        assert_eq!(c.max_connections, 5);
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        let err = |extra: &str| {
            parse::<NodeConfig>(&format!("{base}{extra}\n"), "n.toml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("max_connections = 0"),
            "n.toml:3:19: `max_connections`: must be at least 1"
        );
        assert_eq!(
            err("header_read_timeout = \"0s\""),
            "n.toml:3:23: `header_read_timeout`: must be greater than 0"
        );
        assert_eq!(
            err("body_read_timeout = \"0s\""),
            "n.toml:3:21: `body_read_timeout`: must be greater than 0"
        );
    }

    #[test]
    fn max_message_bytes_is_read_and_validated() {
        let base = "listen = \"127.0.0.1:0\"\nname = \"n\"\n";
        let c: NodeConfig = parse(&format!("{base}max_message_bytes = 1000\n"), "n.toml").unwrap();
        assert_eq!(c.max_message_bytes, 1000);
        let err = parse::<NodeConfig>(&format!("{base}max_message_bytes = 0\n"), "n.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "n.toml:3:21: `max_message_bytes`: must be at least 1 byte"
        );
        let err = parse::<NodeConfig>(&format!("{base}max_message_bytes = -1\n"), "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml:3:21: "), "{err}");
    }

    #[test]
    fn clustered_without_secret_is_an_error_at_the_cluster_table() {
        let text = FULL.replace("secret = \"s3cret\"\n", "");
        if std::env::var(SECRET_ENV).is_ok() {
            return;
        }
        let err = parse::<NodeConfig>(&text, "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "node.toml:10:14: `cluster.standalone`: standalone = false needs a mesh secret"
            ),
            "{err}"
        );
    }

    #[test]
    fn clustered_with_only_itself_is_an_error() {
        let text = FULL.replace(
            r#"["http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003"]"#,
            r#"["http://127.0.0.1:3001/"]"#,
        );
        let err = parse::<NodeConfig>(&text, "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`cluster.cluster_nodes`: standalone = false needs at least one peer"),
            "{err}"
        );
        assert!(err.starts_with("node.toml:11:17:"), "{err}");
    }

    #[test]
    fn bad_values_are_located() {
        let err = parse::<NodeConfig>("listen = \"nope\"\nname = \"n\"\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml:1:10:"), "{err}");
        let err = parse::<NodeConfig>(
            "listen = \"127.0.0.1:1\"\nname = \"n\"\nping_timeout = \"soon\"\n",
            "n.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("n.toml:3:16:") && err.contains("invalid duration"),
            "{err}"
        );
        let err = parse::<NodeConfig>(
            "listen = \"127.0.0.1:1\"\nname = \"n\"\n[cluster]\ncluster_nodes = [\"ftp://x\"]\n",
            "n.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`cluster.cluster_nodes[0]`: \"ftp://x\" is not an http"),
            "{err}"
        );
    }

    #[test]
    fn secret_file_is_resolved_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("stickyio-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mesh.secret"), "from-file\n").unwrap();
        let text = FULL.replace("secret = \"s3cret\"", "secret_file = \"mesh.secret\"");
        std::fs::write(dir.join("node.toml"), text).unwrap();
        let c = NodeConfig::load(&dir.join("node.toml")).unwrap();
        assert_eq!(
            c.cluster.resolve_secret().unwrap().as_deref(),
            Some("from-file")
        );
        std::fs::write(dir.join("mesh.secret"), "\n").unwrap();
        let err = c.cluster.resolve_secret().unwrap_err().to_string();
        assert!(err.ends_with("the file is empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const REDIS: &str = r#"
listen = "0.0.0.0:3001"
name = "node-a"

[cluster]
standalone = false
backend = "redis"
redis_url = "redis://127.0.0.1:6379/0"
"#;

    #[test]
    fn redis_backend_parses_with_defaults() {
        let c: NodeConfig = parse(REDIS, "node.toml").unwrap();
        assert_eq!(c.cluster.backend, Backend::Redis);
        assert_eq!(
            c.cluster.redis_url.as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert_eq!(c.cluster.redis_prefix, "stickyio");
        assert_eq!(c.cluster.redis_heartbeat_ttl, Duration::from_secs(3));
        let c: NodeConfig = parse(FULL, "node.toml").unwrap();
        assert_eq!(c.cluster.backend, Backend::Mesh, "mesh is the default");
        let text = REDIS.replace("redis://", "rediss://user@");
        let c: NodeConfig = parse(&text, "node.toml").unwrap();
        assert!(c.cluster.redis_url.unwrap().starts_with("rediss://user@"));
    }

    #[test]
    fn redis_backend_needs_a_url() {
        let text = REDIS.replace("redis_url = \"redis://127.0.0.1:6379/0\"\n", "");
        let err = parse::<NodeConfig>(&text, "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "node.toml:7:11: `cluster.backend`: backend = \"redis\" needs `redis_url`"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_redis_urls_are_located() {
        let cases = [
            (
                "http://127.0.0.1:6379",
                "is not a redis:// or rediss:// URL",
            ),
            ("redis://", "names no host"),
            ("redis://:6379", "names no host"),
            (
                "redis://user:hunter2@127.0.0.1:6379",
                "holds a password; put it in `redis_password_file` or STICKYIO_REDIS_PASSWORD",
            ),
        ];
        for (url, expected) in cases {
            let text = REDIS.replace("redis://127.0.0.1:6379/0", url);
            let err = parse::<NodeConfig>(&text, "node.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("node.toml:8:13: `cluster.redis_url`: ") && err.contains(expected),
                "{url}: {err}"
            );
            assert!(
                !err.contains("hunter2"),
                "the password is never echoed: {err}"
            );
        }
    }

    #[test]
    fn keys_of_the_other_backend_are_refused_where_they_are() {
        let err = parse::<NodeConfig>(
            &format!("{REDIS}cluster_nodes = [\"http://127.0.0.1:3002\"]\n"),
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "node.toml:9:17: `cluster.cluster_nodes`: is only used with backend = \"mesh\""
            ),
            "{err}"
        );
        let err = parse::<NodeConfig>(
            &format!("{REDIS}secret_file = \"mesh.secret\"\n"),
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`cluster.secret_file`: is only used with backend = \"mesh\""),
            "{err}"
        );
        let err = parse::<NodeConfig>(
            &format!("{FULL}redis_url = \"redis://127.0.0.1\"\n"),
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "node.toml:14:13: `cluster.redis_url`: is only used with backend = \"redis\""
            ),
            "{err}"
        );
        let err = parse::<NodeConfig>(&format!("{FULL}redis_prefix = \"x\"\n"), "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`cluster.redis_prefix`: is only used with backend = \"redis\""),
            "{err}"
        );
        let err = parse::<NodeConfig>(&REDIS.replace("\"redis\"", "\"etcd\""), "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("node.toml:7:11: unknown variant `etcd`, expected `mesh` or `redis`"),
            "{err}"
        );
    }

    #[test]
    fn redis_prefix_and_ttl_are_checked() {
        let err = parse::<NodeConfig>(&format!("{REDIS}redis_prefix = \"a b\"\n"), "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("node.toml:9:16: `cluster.redis_prefix`: must be non-empty"),
            "{err}"
        );
        let err = parse::<NodeConfig>(&format!("{REDIS}redis_prefix = \"pool*\"\n"), "node.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`cluster.redis_prefix`"), "{err}");
        let err = parse::<NodeConfig>(
            &format!("{REDIS}redis_heartbeat_ttl = \"100ms\"\n"),
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "node.toml:9:23: `cluster.redis_heartbeat_ttl`: must be at least 300ms"
            ),
            "{err}"
        );
        let c: NodeConfig = parse(
            &format!("{REDIS}redis_prefix = \"pool-1\"\nredis_heartbeat_ttl = \"1s\"\n"),
            "node.toml",
        )
        .unwrap();
        assert_eq!(c.cluster.redis_prefix, "pool-1");
        assert_eq!(c.cluster.redis_heartbeat_ttl, Duration::from_secs(1));
    }

    #[test]
    fn redis_password_file_is_resolved_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("stickyio-redis-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("redis.password"), "pw-from-file\n").unwrap();
        let text = format!("{REDIS}redis_password_file = \"redis.password\"\n");
        std::fs::write(dir.join("node.toml"), text).unwrap();
        let c = NodeConfig::load(&dir.join("node.toml")).unwrap();
        assert_eq!(
            c.cluster.resolve_redis_password().unwrap().as_deref(),
            Some("pw-from-file")
        );
        assert!(
            !toml::to_string(&c).unwrap().contains("pw-from-file"),
            "the printed config names the file, not the password"
        );
        std::fs::remove_file(dir.join("redis.password")).unwrap();
        let err = c.cluster.resolve_redis_password().unwrap_err().to_string();
        assert!(
            err.starts_with("cluster.redis_password_file ") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
