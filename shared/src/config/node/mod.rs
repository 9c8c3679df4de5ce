//! `node.toml`: the settings of one `stickyio-node`. The node's own
//! listeners and limits live here; its `[cluster]` table, the larger part,
//! in `cluster`.

mod cluster;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, Duration, Env, Validate, Violation, at_least, between, check_name, positive,
};
use crate::secret::Secret;
pub use cluster::{Backend, ClusterConfig, REDIS_PASSWORD_ENV, SECRET_ENV};

/// Environment variable that can carry the node's admin token instead of the
/// file; apart from the gateway's so the two can differ.
pub const ADMIN_TOKEN_ENV: &str = "STICKYIO_NODE_ADMIN_TOKEN";
/// Largest `send_buffer`: beyond it one slow socket could hold gigabytes.
const MAX_SEND_BUFFER: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Address the Socket.IO and HTTP server binds.
    pub listen: SocketAddr,
    /// Operator listener: `/healthz`, `/readyz`, `/metrics`. Loopback by
    /// default, so node internals are never on the client port.
    #[serde(default = "defaults::admin")]
    pub admin: SocketAddr,
    /// Bearer token the admin listener requires (all but `/healthz`).
    /// Prefer `admin_token_file` or [`ADMIN_TOKEN_ENV`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// A file holding the admin token, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
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
    /// When a publish is acked: at once, or once another node (or Redis)
    /// holds it. A publish may ask for `"replicated"` itself.
    #[serde(default)]
    pub publish_ack: PublishAck,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// When the node acks a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishAck {
    /// Once delivered here and handed to the cluster: fast, but lost if this
    /// node dies before relaying it.
    #[default]
    Local,
    /// Once at least one other node (mesh) or Redis holds it, so a resume
    /// from a cursor finds it whichever node fails.
    Replicated,
}

/// `[history]`: what each node remembers so a client can resume from a
/// cursor. Bounded in count and in age; `size = 0` turns it off (and
/// messages carry no cursor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept, the oldest forgotten first.
    #[serde(default = "defaults::history_size")]
    pub size: usize,
    /// How long a message is kept at most.
    #[serde(default = "defaults::history_ttl")]
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: defaults::history_size(),
            ttl: defaults::history_ttl(),
        }
    }
}

mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::Duration;
    pub(super) fn admin() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9100))
    }
    pub(super) fn ping_interval() -> Duration {
        Duration::from_secs(25)
    }
    pub(super) fn ping_timeout() -> Duration {
        Duration::from_secs(20)
    }
    pub(super) fn max_payload() -> u64 {
        1_000_000
    }
    pub(super) fn max_subscriptions() -> usize {
        100
    }
    pub(super) fn max_message_bytes() -> usize {
        64 * 1024
    }
    /// socketioxide's default of 128 dropped 0.8 % of W5 deliveries (300
    /// subscribers, 3 publishers) whenever the clients' CPU share dipped.
    pub(super) fn send_buffer() -> usize {
        1024
    }
    pub(super) fn max_connections() -> usize {
        10_000
    }
    /// hyper's own default, and the gateway's.
    pub(super) fn header_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    /// A 1 MB `max_payload` at 33 KB/s.
    pub(super) fn body_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    /// A few minutes of a busy chat room; a few MB (BENCHMARKS.md).
    pub(super) fn history_size() -> usize {
        10_000
    }
    /// Longer than any client takes to notice a dead node and reconnect.
    pub(super) fn history_ttl() -> Duration {
        Duration::from_secs(300)
    }
}

/// Largest `history.size`: beyond it one node's history could hold gigabytes.
const MAX_HISTORY_SIZE: usize = 1_000_000;
/// Shortest `history.ttl`: a resume must be able to reach back past the
/// seconds a client takes to reconnect.
const MIN_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl NodeConfig {
    /// Reads, validates and resolves `node.toml`: a relative `secret_file`,
    /// `redis_password_file` or `admin_token_file` is taken from the config
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_in(path, Env::process())
    }

    /// [`NodeConfig::load`], its source rules against `env`.
    pub fn load_in(path: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = super::load_in(path, env)?;
        if let Some(dir) = path.parent() {
            let cluster = &mut config.cluster;
            for file in [
                &mut cluster.secret_file,
                &mut cluster.redis_password_file,
                &mut config.admin_token_file,
            ]
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

    /// A standalone node on `listen` with every other setting at its
    /// default, but for `admin`: loopback port 0 (a free port), since this
    /// is how tests and embedders start nodes, several at a time.
    pub fn standalone(name: impl Into<String>, listen: SocketAddr) -> Self {
        NodeConfig {
            listen,
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            admin_token: None,
            admin_token_file: None,
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
            publish_ack: PublishAck::default(),
            history: HistoryConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Validate for NodeConfig {
    fn validate(&self) -> Result<(), Violation> {
        check_name("name", &self.name)?;
        positive("ping_interval", self.ping_interval)?;
        positive("ping_timeout", self.ping_timeout)?;
        at_least("max_payload", self.max_payload, 1024, "bytes")?;
        at_least("max_subscriptions", self.max_subscriptions, 1, "")?;
        at_least("max_message_bytes", self.max_message_bytes, 1, "byte")?;
        between(
            "send_buffer",
            self.send_buffer,
            (1, MAX_SEND_BUFFER),
            "packets",
        )?;
        at_least("max_connections", self.max_connections, 1, "")?;
        positive("header_read_timeout", self.header_read_timeout)?;
        positive("body_read_timeout", self.body_read_timeout)?;
        if self.history.size > MAX_HISTORY_SIZE {
            return Err(Violation::new(
                "history.size",
                format!("must be at most {MAX_HISTORY_SIZE} messages (0 turns history off)"),
            ));
        }
        at_least(
            "history.ttl",
            self.history.ttl,
            Duration(MIN_HISTORY_TTL),
            "",
        )?;
        super::check_admin_token(self.admin_token.as_ref(), self.admin_token_file.as_deref())?;
        self.cluster.validate()
    }

    fn validate_sources(&self, env: Env<'_>) -> Result<(), Violation> {
        self.cluster.validate_sources(env)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_without_env as parse;
    use crate::config::sources;

    fn secret(c: &NodeConfig) -> Result<Option<String>, sources::SourceError> {
        sources::cluster_secret(&c.cluster, Env::empty()).map(|s| s.map(|s| s.expose().to_owned()))
    }

    fn redis_password(c: &NodeConfig) -> Result<Option<String>, sources::SourceError> {
        sources::redis_password(&c.cluster, Env::empty()).map(|s| s.map(|s| s.expose().to_owned()))
    }

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
        assert_eq!(secret(&c).unwrap().as_deref(), Some("s3cret"));
    }

    #[test]
    fn defaults_are_standalone() {
        let c: NodeConfig = parse("listen = \"127.0.0.1:0\"\nname = \"n\"\n", "n.toml").unwrap();
        assert!(c.cluster.standalone);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.max_payload, 1_000_000);
        assert_eq!(c.max_message_bytes, 65_536);
        assert_eq!(c.send_buffer, 1024);
        assert_eq!(c.admin.to_string(), "127.0.0.1:9100");
        assert_eq!(c.history, HistoryConfig::default());
        assert_eq!(c.history.size, 10_000);
        assert_eq!(c.publish_ack, PublishAck::Local);
    }

    #[test]
    fn history_and_publish_ack_are_read_and_bounded() {
        let base = "listen = \"127.0.0.1:0\"\nname = \"n\"\n";
        let c: NodeConfig = parse(
            &format!("{base}publish_ack = \"replicated\"\n[history]\nsize = 0\nttl = \"1m\"\n"),
            "n.toml",
        )
        .unwrap();
        assert_eq!(c.publish_ack, PublishAck::Replicated);
        assert_eq!(
            (c.history.size, c.history.ttl),
            (0, Duration::from_secs(60))
        );
        let err = |text: &str| {
            parse::<NodeConfig>(&format!("{base}{text}"), "n.toml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("[history]\nsize = 2000000\n"),
            "n.toml:4:8: `history.size`: must be at most 1000000 messages (0 turns history off)"
        );
        assert_eq!(
            err("[history]\nttl = \"1s\"\n"),
            "n.toml:4:7: `history.ttl`: must be at least 10s"
        );
        assert!(err("publish_ack = \"sometimes\"\n").starts_with("n.toml:3:15: unknown variant"));
    }

    #[test]
    fn the_admin_token_is_checked_and_never_rendered() {
        let base = "listen = \"127.0.0.1:0\"\nname = \"n\"\n";
        let both = format!("{base}admin_token = \"a\"\nadmin_token_file = \"f\"\n");
        assert_eq!(
            parse::<NodeConfig>(&both, "n.toml")
                .unwrap_err()
                .to_string(),
            "n.toml:4:20: `admin_token_file`: set either `admin_token` or `admin_token_file`, not both"
        );
        let empty = format!("{base}admin_token = \" \"\n");
        assert_eq!(
            parse::<NodeConfig>(&empty, "n.toml")
                .unwrap_err()
                .to_string(),
            "n.toml:3:15: `admin_token`: must not be empty"
        );
        let set = format!("{base}admin = \"0.0.0.0:9100\"\nadmin_token = \"t0p-s3cret\"\n");
        let c: NodeConfig = parse(&set, "n.toml").unwrap();
        assert_eq!(
            sources::node_admin_token(&c, Env::empty())
                .unwrap()
                .map(|t| t.expose().to_owned()),
            Some("t0p-s3cret".to_owned())
        );
        let rendered = toml::to_string(&c).unwrap();
        assert!(!rendered.contains("t0p-s3cret"), "{rendered}");
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
        let err = parse::<NodeConfig>(&text, "node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "node.toml:10:14: `cluster.standalone`: standalone = false needs a mesh secret"
            ),
            "{err}"
        );
        let lookup = |name: &str| (name == SECRET_ENV).then(|| "from-env".to_owned());
        let c: NodeConfig = crate::config::parse_in(&text, "node.toml", Env::new(&lookup))
            .expect("a secret in the environment is a secret");
        let read = sources::node(&c, Env::new(&lookup)).unwrap();
        assert_eq!(
            read.cluster_secret.map(|s| s.expose().to_owned()),
            Some("from-env".to_owned())
        );
    }

    #[test]
    fn a_secret_is_inline_or_in_a_file_not_both() {
        let text = FULL.replace(
            "secret = \"s3cret\"",
            "secret = \"s3cret\"\nsecret_file = \"f\"",
        );
        let err = parse::<NodeConfig>(&text, "node.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "node.toml:13:15: `cluster.secret_file`: set either `secret` or `secret_file`, not both"
        );
        let text = FULL.replace("secret = \"s3cret\"", "secret = \" \"");
        let err = parse::<NodeConfig>(&text, "node.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err, "node.toml:12:10: `cluster.secret`: must not be empty",
            "a blank secret is no secret, as a blank token is no token"
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
        assert_eq!(secret(&c).unwrap().as_deref(), Some("from-file"));
        std::fs::write(dir.join("mesh.secret"), "\n").unwrap();
        let err = secret(&c).unwrap_err().to_string();
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
        assert_eq!(redis_password(&c).unwrap().as_deref(), Some("pw-from-file"));
        assert!(
            !toml::to_string(&c).unwrap().contains("pw-from-file"),
            "the printed config names the file, not the password"
        );
        std::fs::remove_file(dir.join("redis.password")).unwrap();
        let err = redis_password(&c).unwrap_err().to_string();
        assert!(
            err.starts_with("cluster.redis_password_file ") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
