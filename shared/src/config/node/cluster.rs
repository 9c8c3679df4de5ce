//! `[cluster]` of `node.toml`: how a node reaches the rest of its pool, over
//! the mesh or through Redis, and the rules that keep one backend's keys out
//! of the other's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::super::sources::{self, Source};
use super::super::{Duration, Env, Violation, at_least, check_secret_keys, has_blank, positive};

/// Environment variable that can carry the mesh secret instead of the file.
pub const SECRET_ENV: &str = "STICKYIO_CLUSTER_SECRET";
/// Environment variable that can carry the Redis password instead of the file.
pub const REDIS_PASSWORD_ENV: &str = "STICKYIO_REDIS_PASSWORD";

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
    pub(super) fn standalone() -> bool {
        true
    }
    pub(super) fn retry_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn link_queue() -> usize {
        4096
    }
    pub(super) fn redis_prefix() -> String {
        "stickyio".to_owned()
    }
    pub(super) fn redis_heartbeat_ttl() -> Duration {
        Duration::from_secs(3)
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
}

fn normalize_url(url: &str) -> String {
    url.trim_end_matches('/').to_ascii_lowercase()
}
impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), Violation> {
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
        check_secret_keys(
            "cluster.",
            "secret",
            self.secret.as_deref(),
            self.secret_file.is_some(),
        )?;
        positive("cluster.retry_interval", self.retry_interval)?;
        at_least("cluster.link_queue", self.link_queue, 1, "")?;
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
        Ok(())
    }

    /// A clustered mesh node needs a secret, which the environment may give.
    pub(super) fn validate_sources(&self, env: Env<'_>) -> Result<(), Violation> {
        if self.standalone || self.backend != Backend::Mesh {
            return Ok(());
        }
        let secret = sources::declared(
            Source::ClusterSecret,
            self.secret.is_some(),
            self.secret_file.as_deref(),
            env,
        );
        if !secret {
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
        if prefix.is_empty() || has_blank(prefix) || prefix.contains(['*', '?', '[', ']', '\\']) {
            return Err(Violation::new(
                "cluster.redis_prefix",
                "must be non-empty, without spaces, control characters or any of * ? [ ] \\",
            ));
        }
        at_least(
            "cluster.redis_heartbeat_ttl",
            self.redis_heartbeat_ttl,
            Duration::from_millis(300),
            "",
        )
        .map_err(|v| v.because("it is refreshed every third of it"))
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
