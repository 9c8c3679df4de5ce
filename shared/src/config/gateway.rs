//! `gateway.toml`: listeners, trusted proxies, health checks, limits and the
//! node list.
//!
//! Node *names* are the placement identity (renaming one moves its clients),
//! so names and addresses must be unique, and every rule a reload could break
//! is checked here, before a new config is swapped in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

pub use super::addr::{AddrError, NodeAddr};
use super::sources::{self, Source};
use super::{
    ConfigError, Duration, Env, Validate, Violation, at_least, between, check_name, has_blank,
    keyed, positive,
};
use crate::secret::Secret;

/// Environment variable that can carry the admin token instead of the file.
pub const ADMIN_TOKEN_ENV: &str = "STICKYIO_ADMIN_TOKEN";
/// Environment variables that can carry the route keys.
pub const ROUTE_KEY_ENV: &str = "STICKYIO_ROUTE_KEY";
pub const ROUTE_KEY_PREVIOUS_ENV: &str = "STICKYIO_ROUTE_KEY_PREVIOUS";
/// Shortest route key accepted, in bytes.
pub const MIN_ROUTE_KEY: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Public address clients connect to.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Admin listener: `/healthz`, `/metrics`, `/nodes`, `/route`, `POST /reload`.
    #[serde(default = "defaults::admin")]
    pub admin: SocketAddr,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// IPv4 clients are placed by this many leading bits of their address.
    #[serde(default = "defaults::ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// IPv6 clients are placed by this many leading bits of their address.
    #[serde(default = "defaults::ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Bearer token the admin listener requires (all but `/healthz`).
    /// Prefer `admin_token_file` or `STICKYIO_ADMIN_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// A file holding the admin token, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve an admin listener on a non-loopback address without a token.
    /// Off by default: such a config is refused.
    #[serde(default)]
    pub allow_open_admin: bool,
    /// Key of the route tags in the session ids clients see; replicas need
    /// the same one. Prefer `route_key_file` or `STICKYIO_ROUTE_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key: Option<Secret>,
    /// A file holding the route key, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key_file: Option<PathBuf>,
    /// The key before a rotation: tags made with it are still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key_previous: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key_previous_file: Option<PathBuf>,
    /// Threads serving client connections (0: one per core). Each client
    /// address is served by one of them, which keeps a session's requests
    /// in order. Read at start only.
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// TLS on the public listener; plain HTTP without this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    #[serde(deserialize_with = "node_list")]
    pub nodes: Vec<NodeEntry>,
}

/// The public listener's certificate chain and private key, PEM files
/// relative to the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Active health checks every `interval`; `fall` failures in a row take a
/// node out of placement, `rise` successes bring it back.
///
/// The defaults pass for any server that is up and speaks HTTP (a stock
/// Socket.IO app answers 404 on `/healthz`, and that passes): a check is
/// there to find dead nodes, not to judge an app's routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `http`: `GET path`, passing on a status in `expect_status`;
    /// `tcp`: a TCP connect.
    #[serde(default)]
    pub check: CheckKind,
    #[serde(default = "defaults::health_path")]
    pub path: String,
    /// Statuses that pass an `http` check: codes and ranges, comma separated.
    #[serde(default = "defaults::expect_status")]
    pub expect_status: StatusRanges,
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    /// How long one check may take before it counts as a failure.
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    #[serde(default = "defaults::rise")]
    pub rise: u32,
    #[serde(default = "defaults::fall")]
    pub fall: u32,
    /// Fail open: when fewer than this percentage of the nodes pass their
    /// checks, the gateway places clients on every node anyway (those that
    /// refuse connections still get skipped). Checks that fail everywhere at
    /// once are more likely wrong than the whole pool dead. 0 turns it off.
    #[serde(default = "defaults::panic_threshold")]
    pub panic_threshold: u8,
    /// How long a node that refused a connection (or left a handshake
    /// unanswered) stays out, unless `rise` passing checks end it sooner.
    /// Bounded so a node comes back even while checks fail everywhere.
    #[serde(default = "defaults::ejection_time")]
    pub ejection_time: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Http,
    Tcp,
}

/// HTTP statuses as inclusive ranges, written `"200-399,404"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

impl TryFrom<String> for StatusRanges {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let code = |part: &str| {
            part.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    format!("{part:?} is not an HTTP status (100 to 599); write codes and ranges like \"200-399,404\"")
                })
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => (code(part)?, code(part)?),
            };
            if range.0 > range.1 {
                return Err(format!(
                    "{part:?} is an empty range: its start is above its end"
                ));
            }
            ranges.push(range);
        }
        Ok(StatusRanges(ranges))
    }
}

impl From<StatusRanges> for String {
    fn from(ranges: StatusRanges) -> String {
        let parts: Vec<String> = ranges
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        parts.join(",")
    }
}

/// Protection of the public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// A client must send a complete request head within this time; it also
    /// bounds how long an idle keep-alive connection is kept.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; more gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Largest request body, in bytes; more gets 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most client connections at once; more get 503 and are closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Longest wait for a node's response. Must exceed the nodes'
    /// `ping_interval + ping_timeout`, the longest a long-poll is held open.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Longest wait for a node's answer to an Engine.IO handshake (a request
    /// with no `sid`). A node that does not answer in time is ejected and the
    /// handshake goes to the next choice.
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests and websockets may finish.
    #[serde(default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: Duration,
}

/// One node behind the gateway. `A` is the address as read (a string)
/// until the `[[nodes]]` list has parsed it, naming the entry if it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry<A = NodeAddr> {
    /// Placement identity: renaming a node moves its clients.
    pub name: String,
    /// `host:port` of the node's HTTP listener.
    pub addr: A,
    /// Relative share of clients.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// Health checks go to this port of the node's host instead of `addr`'s
    /// (HAProxy's `check port`): a stickyio node's admin listener, whose
    /// `/readyz` says whether it is linked to its peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_port: Option<u16>,
}

/// `[[nodes]]`, each `addr` parsed into a [`NodeAddr`]: a bad one is refused
/// by its key (`nodes[2].addr`), which a field's own deserialiser cannot know.
fn node_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeEntry>, D::Error> {
    let raw = Vec::<NodeEntry<String>>::deserialize(d)?;
    raw.into_iter()
        .enumerate()
        .map(|(i, node)| {
            let addr = node
                .addr
                .parse()
                .map_err(|e| keyed(&format!("nodes[{i}].addr"), e))?;
            Ok(NodeEntry {
                name: node.name,
                addr,
                weight: node.weight,
                check_port: node.check_port,
            })
        })
        .collect()
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::default(),
            path: defaults::health_path(),
            expect_status: defaults::expect_status(),
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            rise: defaults::rise(),
            fall: defaults::fall(),
            panic_threshold: defaults::panic_threshold(),
            ejection_time: defaults::ejection_time(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_timeout: defaults::header_read_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_body_bytes: defaults::max_body_bytes(),
            max_connections: defaults::max_connections(),
            idle_timeout: defaults::idle_timeout(),
            handshake_timeout: defaults::handshake_timeout(),
            shutdown_timeout: defaults::shutdown_timeout(),
        }
    }
}

mod defaults {
    use super::Duration;
    use std::net::SocketAddr;

    pub(super) fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    pub(super) fn admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9090))
    }
    pub(super) fn ipv4_prefix() -> u8 {
        32
    }
    pub(super) fn ipv6_prefix() -> u8 {
        64
    }
    pub(super) fn health_path() -> String {
        "/healthz".to_owned()
    }
    pub(super) fn expect_status() -> super::StatusRanges {
        super::StatusRanges(vec![(100, 499)])
    }
    /// Envoy's panic threshold.
    pub(super) fn panic_threshold() -> u8 {
        50
    }
    /// Envoy's base ejection time.
    pub(super) fn ejection_time() -> Duration {
        Duration::from_secs(30)
    }
    /// An Engine.IO server answers a handshake at once; one that does not
    /// within this is stuck (a frozen process still accepts connections).
    pub(super) fn handshake_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn health_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn rise() -> u32 {
        2
    }
    pub(super) fn fall() -> u32 {
        2
    }
    pub(super) fn header_read_timeout() -> Duration {
        // Also the keep-alive idle limit: above the usual 25 s ping interval
        // so a polling client's connection survives between pongs.
        Duration::from_secs(30)
    }
    pub(super) fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub(super) fn max_headers() -> usize {
        100
    }
    /// The nodes' default `max_payload`: with the gateway's limit no higher,
    /// an oversized body is cut by the gateway (413) before a node drops the
    /// connection over it mid-upload (which the gateway can only call a 502).
    pub(super) fn max_body_bytes() -> u64 {
        1_000_000
    }
    pub(super) fn max_connections() -> usize {
        10_000
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn shutdown_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn weight() -> u32 {
        1
    }
}

impl GatewayConfig {
    /// Reads and validates `gateway.toml`; relative `admin_token_file` and
    /// `[tls]` paths are taken from the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_in(path, Env::process())
    }

    /// [`GatewayConfig::load`], its source rules against `env`.
    pub fn load_in(path: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let mut config: GatewayConfig = super::load_in(path, env)?;
        if let Some(dir) = path.parent() {
            let relative = |file: &mut PathBuf| {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            };
            for file in [
                &mut config.admin_token_file,
                &mut config.route_key_file,
                &mut config.route_key_previous_file,
            ]
            .into_iter()
            .flatten()
            {
                relative(file);
            }
            if let Some(tls) = &mut config.tls {
                relative(&mut tls.cert_file);
                relative(&mut tls.key_file);
            }
        }
        Ok(config)
    }

    /// The config as TOML, every default written out (for `check`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), Violation> {
        between("ipv4_prefix", self.ipv4_prefix, (1, 32), "")?;
        between("ipv6_prefix", self.ipv6_prefix, (1, 128), "")?;
        super::check_admin_token(self.admin_token.as_ref(), self.admin_token_file.as_deref())?;
        self.validate_route_keys()?;
        self.health.validate()?;
        self.limits.validate()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if self.nodes.is_empty() {
            return Err(Violation::new(
                "nodes",
                "at least one [[nodes]] entry is needed",
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            node.validate(i)?;
            if let Some(j) = self.nodes[..i].iter().position(|n| n.name == node.name) {
                return Err(Violation::new(
                    format!("nodes[{i}].name"),
                    format!(
                        "{:?} is already the name of nodes[{j}]; names must be unique",
                        node.name
                    ),
                ));
            }
            if let Some(j) = self.nodes[..i]
                .iter()
                .position(|n| n.addr.as_str().eq_ignore_ascii_case(node.addr.as_str()))
            {
                return Err(Violation::new(
                    format!("nodes[{i}].addr"),
                    format!(
                        "{:?} is already the address of nodes[{j}]; addresses must be unique",
                        node.addr.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_sources(&self, env: Env<'_>) -> Result<(), Violation> {
        self.validate_admin_token_source(env)
    }
}

/// The one rule for a route key, inline or read from its file or variable
/// (`key` names where it came from).
pub(crate) fn check_route_key(key: &str, route_key: &Secret) -> Result<(), Violation> {
    at_least(key, route_key.expose().len(), MIN_ROUTE_KEY, "bytes")
        .map_err(|v| v.because("for example the output of `openssl rand -base64 32`"))
}

impl GatewayConfig {
    fn validate_route_keys(&self) -> Result<(), Violation> {
        for (inline, file, key) in [
            (&self.route_key, &self.route_key_file, "route_key"),
            (
                &self.route_key_previous,
                &self.route_key_previous_file,
                "route_key_previous",
            ),
        ] {
            super::inline_or_file("", key, inline.is_some(), file.is_some())?;
            if let Some(inline) = inline {
                check_route_key(key, inline)?;
            }
        }
        Ok(())
    }

    /// The admin listener can reload the config and reveals the topology:
    /// off loopback it needs a token, unless explicitly opened.
    fn validate_admin_token_source(&self, env: Env<'_>) -> Result<(), Violation> {
        let token = sources::declared(
            Source::GatewayAdminToken,
            self.admin_token.is_some(),
            self.admin_token_file.as_deref(),
            env,
        );
        if !self.admin.ip().is_loopback() && !token && !self.allow_open_admin {
            return Err(Violation::new(
                "admin",
                format!(
                    "{} is not a loopback address, so the admin listener needs a token: \
                     set `admin_token_file`, `admin_token` or {ADMIN_TOKEN_ENV} \
                     (or `allow_open_admin = true` to serve it to anyone who can reach it)",
                    self.admin
                ),
            ));
        }
        Ok(())
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<(), Violation> {
        for (key, path) in [
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(Violation::new(key, "must name a PEM file"));
            }
        }
        Ok(())
    }
}

impl HealthConfig {
    fn validate(&self) -> Result<(), Violation> {
        if !self.path.starts_with('/') || has_blank(&self.path) {
            return Err(Violation::new(
                "health.path",
                "must start with `/` and hold no spaces",
            ));
        }
        positive("health.interval", self.interval)?;
        positive("health.timeout", self.timeout)?;
        at_least("health.rise", self.rise, 1, "")?;
        at_least("health.fall", self.fall, 1, "")?;
        positive("health.ejection_time", self.ejection_time)?;
        if self.panic_threshold > 100 {
            return Err(Violation::new(
                "health.panic_threshold",
                "is a percentage: 0 (never fail open) to 100",
            ));
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), Violation> {
        positive("limits.header_read_timeout", self.header_read_timeout)?;
        at_least("limits.max_header_bytes", self.max_header_bytes, 1024, "")?;
        at_least("limits.max_headers", self.max_headers, 1, "")?;
        at_least("limits.max_body_bytes", self.max_body_bytes, 1024, "")?;
        at_least("limits.max_connections", self.max_connections, 1, "")?;
        at_least(
            "limits.idle_timeout",
            self.idle_timeout,
            Duration::from_secs(1),
            "",
        )
        .map_err(|v| v.because("and above the nodes' ping_interval + ping_timeout"))?;
        positive("limits.handshake_timeout", self.handshake_timeout)
    }
}

impl NodeEntry {
    fn validate(&self, i: usize) -> Result<(), Violation> {
        check_name(&format!("nodes[{i}].name"), &self.name)?;
        at_least(&format!("nodes[{i}].weight"), self.weight, 1, "")
            .map_err(|v| v.because("remove the node to take it out"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_without_env as parse;

    const DESIGN: &str = r#"
listen = "0.0.0.0:8080"
admin = "127.0.0.1:9090"
trusted_proxies = []            # CIDRs whose X-Forwarded-For / Forwarded is believed
ipv4_prefix = 32
ipv6_prefix = 64

[health]
path = "/healthz"
interval = "2s"
rise = 2
fall = 2

[[nodes]]
name = "node-a"                 # placement identity: renaming moves its clients
addr = "127.0.0.1:3001"
weight = 1
"#;

    fn err(text: &str) -> String {
        parse::<GatewayConfig>(text, "gateway.toml")
            .unwrap_err()
            .to_string()
    }

    const NODES: &str = "[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[[nodes]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\n";

    #[test]
    fn design_example_parses_with_defaults() {
        let c: GatewayConfig = parse(DESIGN, "gateway.toml").unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.health.interval, Duration::from_secs(2));
        assert_eq!(c.health.timeout, Duration::from_secs(1));
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(
            c.nodes,
            vec![NodeEntry {
                name: "node-a".into(),
                addr: "127.0.0.1:3001".parse().unwrap(),
                weight: 1,
                check_port: None,
            }]
        );
    }

    #[test]
    fn minimal_config_takes_every_default() {
        let c: GatewayConfig = parse(NODES, "g.toml").unwrap();
        assert_eq!(c.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!((c.ipv4_prefix, c.ipv6_prefix), (32, 64));
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.nodes[1].weight, 1);
    }

    #[test]
    fn rendered_config_parses_back_identically() {
        let text = format!("trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]\n{NODES}");
        let c: GatewayConfig = parse(&text, "g.toml").unwrap();
        let again: GatewayConfig = parse(&c.to_toml(), "rendered").unwrap();
        assert_eq!(again, c);
        assert!(
            c.to_toml().contains("max_body_bytes = 1000000"),
            "{}",
            c.to_toml()
        );
    }

    #[test]
    fn duplicate_names_and_addresses_are_located() {
        let text = NODES.replace("name = \"b\"", "name = \"a\"");
        assert_eq!(
            err(&text),
            "gateway.toml:5:8: `nodes[1].name`: \"a\" is already the name of nodes[0]; names must be unique"
        );
        let text = NODES.replace("127.0.0.1:2", "127.0.0.1:1");
        assert_eq!(
            err(&text),
            "gateway.toml:6:8: `nodes[1].addr`: \"127.0.0.1:1\" is already the address of nodes[0]; addresses must be unique"
        );
    }

    #[test]
    fn bad_node_fields_are_refused() {
        let e = err(&format!("{NODES}weight = 0\n"));
        assert!(
            e.starts_with("gateway.toml:7:10: `nodes[1].weight`: must be at least 1"),
            "{e}"
        );
        let e = err(&NODES.replace("127.0.0.1:2", "127.0.0.1"));
        assert!(
            e.contains("`nodes[1].addr`: \"127.0.0.1\" is not host:port (no port)"),
            "{e}"
        );
        assert_eq!(
            e, "gateway.toml:6:8: `nodes[1].addr`: \"127.0.0.1\" is not host:port (no port)",
            "located at the node's addr, the key named"
        );
        let e = err(&NODES.replace("127.0.0.1:2", "127.0.0.1:0"));
        assert!(e.contains("(the port must be 1-65535)"), "{e}");
        let e = err(&NODES.replace("127.0.0.1:2", "http://x:2"));
        assert!(e.contains("is not host:port (bad host name)"), "{e}");
        let e = err(&NODES.replace("name = \"b\"", "name = \"b c\""));
        assert!(
            e.contains("`nodes[1].name`: must be 1 to 255 bytes, without spaces"),
            "{e}"
        );
        // A route tag carries the name behind a one-byte length.
        let long = format!("name = \"{}\"", "b".repeat(256));
        let e = err(&NODES.replace("name = \"b\"", &long));
        assert!(e.contains("`nodes[1].name`: must be 1 to 255 bytes"), "{e}");
        assert!(parse::<GatewayConfig>(&NODES.replace("127.0.0.1:2", "[::1]:2"), "g").is_ok());
        assert!(
            parse::<GatewayConfig>(&NODES.replace("127.0.0.1:2", "node-b.svc.local:3002"), "g")
                .is_ok()
        );
    }

    #[test]
    fn empty_node_list_and_missing_nodes_are_refused() {
        assert_eq!(
            err("nodes = []\n"),
            "gateway.toml:1:9: `nodes`: at least one [[nodes]] entry is needed"
        );
        assert!(err("listen = \"127.0.0.1:1\"\n").contains("missing field `nodes`"));
    }

    #[test]
    fn prefixes_out_of_range_are_refused() {
        let e = err(&format!("ipv4_prefix = 33\n{NODES}"));
        assert_eq!(
            e,
            "gateway.toml:1:15: `ipv4_prefix`: must be between 1 and 32"
        );
        let e = err(&format!("ipv6_prefix = 0\n{NODES}"));
        assert_eq!(
            e,
            "gateway.toml:1:15: `ipv6_prefix`: must be between 1 and 128"
        );
        let e = err(&format!("ipv4_prefix = 300\n{NODES}"));
        assert!(e.starts_with("gateway.toml:1:15:"), "{e}");
    }

    #[test]
    fn a_non_loopback_admin_needs_a_token_or_an_explicit_opening() {
        let e = err(&format!("admin = \"0.0.0.0:9090\"\n{NODES}"));
        assert!(
            e.starts_with(
                "gateway.toml:1:9: `admin`: 0.0.0.0:9090 is not a loopback address, so the admin listener needs a token"
            ),
            "{e}"
        );
        for extra in [
            "admin_token = \"t0ken\"",
            "admin_token_file = \"admin.token\"",
            "allow_open_admin = true",
        ] {
            let text = format!("admin = \"0.0.0.0:9090\"\n{extra}\n{NODES}");
            assert!(parse::<GatewayConfig>(&text, "g").is_ok(), "{extra}");
        }
        let both = format!("admin_token = \"a\"\nadmin_token_file = \"f\"\n{NODES}");
        assert_eq!(
            err(&both),
            "gateway.toml:2:20: `admin_token_file`: set either `admin_token` or `admin_token_file`, not both"
        );
        assert_eq!(
            err(&format!("admin_token = \" \"\n{NODES}")),
            "gateway.toml:1:15: `admin_token`: must not be empty"
        );
        let lookup = |name: &str| (name == ADMIN_TOKEN_ENV).then(|| "t0ken".to_owned());
        let text = format!("admin = \"0.0.0.0:9090\"\n{NODES}");
        assert!(
            crate::config::parse_in::<GatewayConfig>(&text, "g", Env::new(&lookup)).is_ok(),
            "a token in {ADMIN_TOKEN_ENV} is a token"
        );
    }

    #[test]
    fn the_admin_token_is_never_rendered() {
        let text = format!("admin_token = \"t0p-s3cret\"\n{NODES}");
        let c: GatewayConfig = parse(&text, "g").unwrap();
        let rendered = c.to_toml();
        assert!(!rendered.contains("t0p-s3cret"), "{rendered}");
        assert!(
            rendered.contains("admin_token = \"<redacted>\""),
            "{rendered}"
        );
        assert!(!format!("{c:?}").contains("t0p-s3cret"));
        assert_eq!(
            sources::gateway(&c, Env::empty())
                .unwrap()
                .admin_token
                .map(|t| t.expose().to_owned()),
            Some("t0p-s3cret".to_owned())
        );
    }

    #[test]
    fn tls_paths_are_read_and_resolved_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("stickyio-gw-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "admin_token_file = \"admin.token\"\n[tls]\ncert_file = \"cert.pem\"\nkey_file = \"/etc/key.pem\"\n{NODES}"
        );
        std::fs::write(dir.join("gateway.toml"), text).unwrap();
        let c = GatewayConfig::load(&dir.join("gateway.toml")).unwrap();
        let tls = c.tls.clone().unwrap();
        assert_eq!(tls.cert_file, dir.join("cert.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/etc/key.pem"));
        assert_eq!(c.admin_token_file, Some(dir.join("admin.token")));
        std::fs::remove_dir_all(&dir).unwrap();
        let e = err(&format!("[tls]\ncert_file = \"c.pem\"\n{NODES}"));
        assert!(e.contains("missing field `key_file`"), "{e}");
        let e = err(&format!(
            "[tls]\ncert_file = \"\"\nkey_file = \"k\"\n{NODES}"
        ));
        assert_eq!(
            e,
            "gateway.toml:2:13: `tls.cert_file`: must name a PEM file"
        );
    }

    #[test]
    fn bad_sections_are_located() {
        let e = err(&format!("[health]\nrise = 0\n{NODES}"));
        assert_eq!(e, "gateway.toml:2:8: `health.rise`: must be at least 1");
        let e = err(&format!("[health]\npath = \"healthz\"\n{NODES}"));
        assert!(e.starts_with("gateway.toml:2:8: `health.path`"), "{e}");
        let e = err(&format!("[limits]\nmax_connections = 0\n{NODES}"));
        assert_eq!(
            e,
            "gateway.toml:2:19: `limits.max_connections`: must be at least 1"
        );
        let e = err(&format!("[limits]\nidle_timeout = \"10ms\"\n{NODES}"));
        assert!(
            e.starts_with("gateway.toml:2:16: `limits.idle_timeout`"),
            "{e}"
        );
        let e = err(&format!(
            "trusted_proxies = [\"10.0.0.0/8\", \"nonsense\"]\n{NODES}"
        ));
        assert_eq!(e, "gateway.toml:1:34: invalid IP address syntax");
        let e = err(&format!("{NODES}colour = \"red\"\n"));
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
