//! Where secrets, tokens and TLS files come from: inline in the config, a
//! `*_file` next to it, or an environment variable.
//!
//! Parsing and validation read neither files nor the environment; this
//! module is the one place that does, for a binary at start and for both
//! `check` subcommands, so `check` finds the unreadable token file a start
//! would stop on. The environment is passed in as an [`Env`], which tests
//! fill with what they need instead of the process's.

use std::fmt;
use std::path::{Path, PathBuf};

use super::Violation;
use super::gateway::{self, GatewayConfig, TlsConfig};
use super::node::{self, ClusterConfig, NodeConfig};
use crate::secret::Secret;

/// A lookup of environment variables. A variable set to the empty string
/// counts as unset, as it does for every source here.
#[derive(Clone, Copy)]
pub struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl<'a> Env<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Env(lookup)
    }

    /// The process's environment: what the binaries use.
    pub fn process() -> Env<'static> {
        Env(&process_var)
    }

    /// No variable set.
    pub fn empty() -> Env<'static> {
        Env(&|_| None)
    }

    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    /// Whether `name` is set (and not empty).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Env")
    }
}

/// A value read from outside the config file, by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    GatewayAdminToken,
    RouteKey,
    RouteKeyPrevious,
    NodeAdminToken,
    ClusterSecret,
    RedisPassword,
    TlsCertificate,
    TlsKey,
}

impl Source {
    /// What it is, for an error's first words.
    pub fn what(self) -> &'static str {
        match self {
            Source::GatewayAdminToken | Source::NodeAdminToken => "admin token",
            Source::RouteKey => "route key",
            Source::RouteKeyPrevious => "previous route key",
            Source::ClusterSecret => "mesh secret",
            Source::RedisPassword => "Redis password",
            Source::TlsCertificate => "TLS certificate",
            Source::TlsKey => "TLS key",
        }
    }

    /// The config key naming its file.
    pub fn file_key(self) -> &'static str {
        match self {
            Source::GatewayAdminToken | Source::NodeAdminToken => "admin_token_file",
            Source::RouteKey => "route_key_file",
            Source::RouteKeyPrevious => "route_key_previous_file",
            Source::ClusterSecret => "cluster.secret_file",
            Source::RedisPassword => "cluster.redis_password_file",
            Source::TlsCertificate => "tls.cert_file",
            Source::TlsKey => "tls.key_file",
        }
    }

    /// The environment variable that can carry it instead of a file.
    pub fn env(self) -> Option<&'static str> {
        match self {
            Source::GatewayAdminToken => Some(gateway::ADMIN_TOKEN_ENV),
            Source::RouteKey => Some(gateway::ROUTE_KEY_ENV),
            Source::RouteKeyPrevious => Some(gateway::ROUTE_KEY_PREVIOUS_ENV),
            Source::NodeAdminToken => Some(node::ADMIN_TOKEN_ENV),
            Source::ClusterSecret => Some(node::SECRET_ENV),
            Source::RedisPassword => Some(node::REDIS_PASSWORD_ENV),
            Source::TlsCertificate | Source::TlsKey => None,
        }
    }
}

/// A source that could not be used, by its key and file. The messages are
/// whole (an I/O error's reason included), so none has a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{} {}: cannot read: {error}", .source_of.file_key(), .path.display())]
    Read {
        source_of: Source,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} {}: the file is empty", .source_of.file_key(), .path.display())]
    Empty { source_of: Source, path: PathBuf },
    /// What was read breaks a rule of the value (a route key too short).
    #[error("{}: {}", .violation.key, .violation.message)]
    Invalid {
        source_of: Source,
        violation: Violation,
    },
}

/// What [`gateway()`] and [`node()`] return: a [`SourceError`] led by what the
/// source is for (`admin token: admin_token_file …: cannot read: …`), as a
/// start or `check` reports it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {error}", what = .error.source_of().what())]
pub struct SourcesError {
    pub error: SourceError,
}

impl From<SourceError> for SourcesError {
    fn from(error: SourceError) -> Self {
        SourcesError { error }
    }
}

impl SourceError {
    pub fn source_of(&self) -> Source {
        match self {
            SourceError::Read { source_of, .. }
            | SourceError::Empty { source_of, .. }
            | SourceError::Invalid { source_of, .. } => *source_of,
        }
    }
}

/// The secrets and TLS files a gateway runs with.
#[derive(Debug)]
pub struct GatewaySources {
    pub admin_token: Option<Secret>,
    /// `None`: the gateway makes a key of its own.
    pub route_key: Option<Secret>,
    pub route_key_previous: Option<Secret>,
    pub tls: Option<TlsFiles>,
}

/// The PEM text of `[tls]`, with the paths it came from for errors.
#[derive(Debug)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_file: PathBuf,
    pub key_pem: Vec<u8>,
}

/// The secrets a node runs with; the cluster's only where its backend uses them.
#[derive(Debug)]
pub struct NodeSources {
    pub admin_token: Option<Secret>,
    pub cluster_secret: Option<Secret>,
    pub redis_password: Option<Secret>,
}

/// Reads everything a gateway's config names outside itself.
pub fn gateway(config: &GatewayConfig, env: Env<'_>) -> Result<GatewaySources, SourcesError> {
    let admin_token = secret(
        Source::GatewayAdminToken,
        config.admin_token.as_ref(),
        config.admin_token_file.as_deref(),
        env,
    )?;
    let current = route_key(
        Source::RouteKey,
        config.route_key.as_ref(),
        config.route_key_file.as_deref(),
        env,
    )?;
    let previous = route_key(
        Source::RouteKeyPrevious,
        config.route_key_previous.as_ref(),
        config.route_key_previous_file.as_deref(),
        env,
    )?;
    let tls = config.tls.as_ref().map(tls_files).transpose()?;
    Ok(GatewaySources {
        admin_token,
        route_key: current,
        route_key_previous: previous,
        tls,
    })
}

/// Reads everything a node's config names outside itself.
pub fn node(config: &NodeConfig, env: Env<'_>) -> Result<NodeSources, SourcesError> {
    let cluster = &config.cluster;
    let clustered = |backend| !cluster.standalone && cluster.backend == backend;
    Ok(NodeSources {
        admin_token: node_admin_token(config, env)?,
        cluster_secret: if clustered(node::Backend::Mesh) {
            cluster_secret(cluster, env)?
        } else {
            None
        },
        redis_password: if clustered(node::Backend::Redis) {
            redis_password(cluster, env)?
        } else {
            None
        },
    })
}

/// A node's admin token: inline, else `admin_token_file`, else the environment.
pub fn node_admin_token(config: &NodeConfig, env: Env<'_>) -> Result<Option<Secret>, SourceError> {
    secret(
        Source::NodeAdminToken,
        config.admin_token.as_ref(),
        config.admin_token_file.as_deref(),
        env,
    )
}

/// The mesh secret: inline, else `secret_file`, else the environment.
pub fn cluster_secret(
    cluster: &ClusterConfig,
    env: Env<'_>,
) -> Result<Option<Secret>, SourceError> {
    let inline = cluster.secret.as_deref().map(Secret::new);
    secret(
        Source::ClusterSecret,
        inline.as_ref(),
        cluster.secret_file.as_deref(),
        env,
    )
}

/// The Redis password: `redis_password_file`, else the environment, else none.
pub fn redis_password(
    cluster: &ClusterConfig,
    env: Env<'_>,
) -> Result<Option<Secret>, SourceError> {
    secret(
        Source::RedisPassword,
        None,
        cluster.redis_password_file.as_deref(),
        env,
    )
}

/// Whether a source of `source` is given at all, without reading it: for
/// the rules that need one (a clustered node's secret, an admin listener off
/// loopback).
pub(crate) fn declared(source: Source, inline: bool, file: Option<&Path>, env: Env<'_>) -> bool {
    inline || file.is_some() || source.env().is_some_and(|name| env.has(name))
}

/// A secret given inline, else in `file` (surrounding whitespace trimmed, so
/// `echo secret > file` works), else in the source's environment variable.
fn secret(
    source: Source,
    inline: Option<&Secret>,
    file: Option<&Path>,
    env: Env<'_>,
) -> Result<Option<Secret>, SourceError> {
    if let Some(secret) = inline {
        return Ok(Some(secret.clone()));
    }
    if let Some(path) = file {
        let text = read(source, path)?;
        let text = String::from_utf8_lossy(&text);
        let secret = text.trim();
        if secret.is_empty() {
            return Err(SourceError::Empty {
                source_of: source,
                path: path.to_owned(),
            });
        }
        return Ok(Some(Secret::new(secret)));
    }
    Ok(source.env().and_then(|name| env.get(name)).map(Secret::new))
}

/// A route key, held to the rule an inline one meets in validation.
fn route_key(
    source: Source,
    inline: Option<&Secret>,
    file: Option<&Path>,
    env: Env<'_>,
) -> Result<Option<Secret>, SourceError> {
    let key = secret(source, inline, file, env)?;
    if let Some(key) = &key {
        let origin = match file {
            Some(path) => format!("{} {}", source.file_key(), path.display()),
            None => source.env().unwrap_or(source.file_key()).to_owned(),
        };
        gateway::check_route_key(&origin, key).map_err(|violation| SourceError::Invalid {
            source_of: source,
            violation,
        })?;
    }
    Ok(key)
}

fn tls_files(tls: &TlsConfig) -> Result<TlsFiles, SourceError> {
    let pem = |source, path: &Path| {
        let text = read(source, path)?;
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(SourceError::Empty {
                source_of: source,
                path: path.to_owned(),
            });
        }
        Ok(text)
    };
    Ok(TlsFiles {
        cert_pem: pem(Source::TlsCertificate, &tls.cert_file)?,
        cert_file: tls.cert_file.clone(),
        key_pem: pem(Source::TlsKey, &tls.key_file)?,
        key_file: tls.key_file.clone(),
    })
}

fn read(source: Source, path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|error| SourceError::Read {
        source_of: source,
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stickyio-sources-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn files_are_trimmed_and_empty_ones_refused() {
        let dir = temp_dir("trim");
        let file = dir.join("token");
        std::fs::write(&file, "  tok\n").unwrap();
        let env = Env::empty();
        let source = Source::GatewayAdminToken;
        let got = |inline: Option<&Secret>| {
            secret(source, inline, Some(&file), env).map(|s| s.map(|s| s.expose().to_owned()))
        };
        assert_eq!(got(None).unwrap(), Some("tok".to_owned()));
        assert_eq!(
            got(Some(&Secret::new("inline"))).unwrap(),
            Some("inline".to_owned())
        );
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(
            got(None).unwrap_err().to_string(),
            format!("admin_token_file {}: the file is empty", file.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = got(None).unwrap_err().to_string();
        assert!(err.contains(": cannot read: "), "{err}");
        assert!(secret(source, None, None, env).unwrap().is_none());
    }

    #[test]
    fn the_environment_is_the_last_source_and_empty_means_unset() {
        let lookup = vars(&[(gateway::ADMIN_TOKEN_ENV, "from-env"), ("EMPTY", "")]);
        let env = Env::new(&lookup);
        let token = secret(Source::GatewayAdminToken, None, None, env).unwrap();
        assert_eq!(
            token.map(|t| t.expose().to_owned()),
            Some("from-env".into())
        );
        assert!(
            secret(Source::NodeAdminToken, None, None, env)
                .unwrap()
                .is_none()
        );
        assert!(!env.has("EMPTY"));
        assert!(declared(Source::GatewayAdminToken, false, None, env));
        assert!(!declared(Source::NodeAdminToken, false, None, env));
    }

    const NODES: &str = "[[nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n";

    fn gateway_config(text: &str, dir: &Path) -> GatewayConfig {
        std::fs::write(dir.join("gateway.toml"), format!("{text}\n{NODES}")).unwrap();
        GatewayConfig::load_in(&dir.join("gateway.toml"), Env::empty()).unwrap()
    }

    #[test]
    fn a_gateway_check_names_the_token_or_tls_file_it_cannot_use() {
        let dir = temp_dir("gateway");
        let config = gateway_config("admin_token_file = \"absent.token\"", &dir);
        let err = gateway(&config, Env::empty()).unwrap_err();
        assert_eq!(err.error.source_of(), Source::GatewayAdminToken);
        let shown = err.to_string();
        assert!(
            shown.starts_with("admin token: admin_token_file ")
                && shown.contains("absent.token: cannot read: "),
            "{shown}"
        );

        std::fs::write(dir.join("cert.pem"), "  \n").unwrap();
        let config = gateway_config(
            "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"k.pem\"",
            &dir,
        );
        let err = gateway(&config, Env::empty()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "TLS certificate: tls.cert_file {}: the file is empty",
                dir.join("cert.pem").display()
            )
        );
        std::fs::write(dir.join("cert.pem"), "PEM").unwrap();
        let err = gateway(&config, Env::empty()).unwrap_err().to_string();
        assert!(
            err.starts_with("TLS key: tls.key_file ") && err.contains("k.pem: cannot read"),
            "{err}"
        );
        std::fs::write(dir.join("k.pem"), "PEM").unwrap();
        let read = gateway(&config, Env::empty()).unwrap();
        let tls = read.tls.unwrap();
        assert_eq!(
            (&tls.cert_pem[..], &tls.key_pem[..]),
            (&b"PEM"[..], &b"PEM"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_route_key_from_a_file_or_the_environment_is_held_to_the_length_rule() {
        let dir = temp_dir("route-key");
        std::fs::write(dir.join("route.key"), "short\n").unwrap();
        let config = gateway_config("route_key_file = \"route.key\"", &dir);
        let err = gateway(&config, Env::empty()).unwrap_err();
        assert_eq!(err.error.source_of(), Source::RouteKey);
        assert_eq!(
            err.to_string(),
            format!(
                "route key: route_key_file {}: must be at least 16 bytes (for example the output of `openssl rand -base64 32`)",
                dir.join("route.key").display()
            )
        );
        let config = gateway_config("", &dir);
        let lookup = vars(&[(gateway::ROUTE_KEY_PREVIOUS_ENV, "short")]);
        let err = gateway(&config, Env::new(&lookup)).unwrap_err().to_string();
        assert!(
            err.starts_with("previous route key: STICKYIO_ROUTE_KEY_PREVIOUS: must be at least"),
            "{err}"
        );
        let lookup = vars(&[(gateway::ROUTE_KEY_ENV, "a key of 16 bytes")]);
        let read = gateway(&config, Env::new(&lookup)).unwrap();
        assert!(read.route_key.is_some() && read.route_key_previous.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
