//! The docs against the code: the README's config reference names every key
//! the config types accept, and every repository path a Markdown file cites
//! exists.
//!
//! The reference is kept by hand in one place, the README; this test is
//! what keeps it complete: a key added in code but not documented fails here.
//! Keys are found two ways, so that none hides: a config with every optional
//! field set is rendered (TOML leaves out what is `None`), and each of its
//! tables is asked, through serde's refusal of an unknown field, for every
//! name it accepts (which includes fields never written out, like secrets).

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use stickyio_shared::config::gateway::{GatewayConfig, TlsConfig};
use stickyio_shared::config::node::NodeConfig;
use stickyio_shared::secret::Secret;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The field names a table of `T` accepts: `header` (`""`, `"[health]\n"`,
/// `"[[nodes]]\n"`) with one unknown key is refused with the list.
fn accepted<T: DeserializeOwned>(header: &str) -> Vec<String> {
    let probe = format!("{header}unknown_probe_key = 1\n");
    let Err(err) = toml::from_str::<T>(&probe) else {
        panic!("{probe:?} was accepted");
    };
    let err = err.to_string();
    let (_, list) = err
        .split_once("unknown field `unknown_probe_key`, expected")
        .unwrap_or_else(|| panic!("{probe:?}: not an unknown-field refusal: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Dotted key paths of one table of `T` (arrays of tables as
/// `nodes[].name`): every name the table accepts, descending into those
/// that `rendered` shows as tables.
fn key_paths<T: DeserializeOwned>(
    header: &str,
    prefix: &str,
    rendered: &toml::Table,
) -> Vec<String> {
    let mut out = Vec::new();
    for key in accepted::<T>(header) {
        let path = format!("{prefix}{key}");
        match rendered.get(&key) {
            Some(toml::Value::Table(t)) => {
                let header = format!("{header}[{path}]\n");
                out.extend(key_paths::<T>(&header, &format!("{path}."), t));
            }
            Some(toml::Value::Array(items)) if items.first().is_some_and(toml::Value::is_table) => {
                let header = format!("{header}[[{path}]]\n");
                let first = items[0].as_table().unwrap();
                out.extend(key_paths::<T>(&header, &format!("{path}[]."), first));
            }
            _ => out.push(path),
        }
    }
    out
}

fn undocumented<T: DeserializeOwned>(rendered: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table: toml::Table = rendered.parse().unwrap();
    let keys = key_paths::<T>("", "", &table);
    assert!(keys.len() > 5, "{keys:?}");
    keys.into_iter()
        .filter(|k| !readme.contains(&format!("| `{k}` |")))
        .collect()
}

fn local(file: &str) -> PathBuf {
    root().join("deploy/local").join(file)
}

#[test]
fn every_gateway_key_is_in_the_readme() {
    let loaded = GatewayConfig::load(&local("gateway.toml")).unwrap();
    // Every field named, so a new one must be set here to compile.
    let config = GatewayConfig {
        listen: loaded.listen,
        admin: loaded.admin,
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ipv4_prefix: loaded.ipv4_prefix,
        ipv6_prefix: loaded.ipv6_prefix,
        admin_token: Some(Secret::new("t")),
        admin_token_file: Some("admin.token".into()),
        allow_open_admin: true,
        route_key: Some(Secret::new("k")),
        route_key_file: Some("route.key".into()),
        route_key_previous: Some(Secret::new("p")),
        route_key_previous_file: Some("route.key.previous".into()),
        workers: 2,
        health: loaded.health.clone(),
        limits: loaded.limits.clone(),
        tls: Some(TlsConfig {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
        }),
        nodes: loaded.nodes.clone(),
    };
    let missing = undocumented::<GatewayConfig>(&config.to_toml());
    assert!(
        missing.is_empty(),
        "gateway.toml keys missing from the README's config reference: {missing:?}"
    );
}

#[test]
fn every_node_key_is_in_the_readme() {
    let mut config = NodeConfig::load(&local("node-a.toml")).unwrap();
    // Every optional field set (left as they are, they would not render).
    let cluster = &mut config.cluster;
    cluster.host = Some("http://127.0.0.1:3001".into());
    cluster.secret = Some("s".into());
    cluster.secret_file = Some("mesh.secret".into());
    cluster.redis_url = Some("redis://127.0.0.1:6379".into());
    cluster.redis_password_file = Some("redis.password".into());
    let missing = undocumented::<NodeConfig>(&toml::to_string(&config).unwrap());
    assert!(
        missing.is_empty(),
        "node.toml keys missing from the README's config reference: {missing:?}"
    );
}

/// Files of the repository under `dir`, outside build output and
/// installed packages.
fn repository_files(dir: &Path, out: &mut Vec<PathBuf>) {
    const SKIP: [&str; 6] = [
        "target",
        "node_modules",
        ".venv",
        ".git",
        "artifacts",
        ".pytest_cache",
    ];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIP.contains(&name) {
                repository_files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// Repository paths a Markdown text cites: code spans and link targets
/// holding a `/`, and code spans naming a bare Rust file (`proxy.rs`), with
/// a `:line`, `::item` or `#anchor` after them cut off.
fn cited_paths(text: &str) -> Vec<String> {
    let spans = text.split('`').skip(1).step_by(2);
    let links = text.split("](").skip(1).filter_map(|s| s.split(')').next());
    spans
        .chain(links)
        .filter_map(|s| {
            let path = s.split(['#', ' ']).next()?;
            let path = path.split("::").next()?;
            let path = path.split(':').next()?;
            let plain = path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            let bare_rust_file = !path.contains('/') && path.len() > 3 && path.ends_with(".rs");
            let looks_like_a_path = plain
                && (path.contains('/') || bare_rust_file)
                && !path.starts_with('/')
                && !path.contains("//")
                && path.rsplit('/').next().is_some_and(|f| f.contains('.'))
                && !path.starts_with("127.");
            looks_like_a_path.then(|| path.to_owned())
        })
        .collect()
}

/// Where the crates' sources are, for paths cited relative to them.
const CRATE_SOURCES: [&str; 4] = ["shared/src", "gateway/src", "node/src", "src"];

#[test]
fn every_repository_path_the_docs_cite_exists() {
    let mut all = Vec::new();
    repository_files(root(), &mut all);
    let mut files: Vec<&PathBuf> = all
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    // A bare file name (`inbound.rs`) must name a file of the repository.
    let names: Vec<&str> = all.iter().filter_map(|f| f.file_name()?.to_str()).collect();
    let mut missing = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap();
        for path in cited_paths(&text) {
            // Relative to the file (links), to the repository (prose), or
            // to a crate's sources (ARCHITECTURE.md's `cluster/dedup.rs`).
            let bases = [dir, root()]
                .into_iter()
                .map(Path::to_path_buf)
                .chain(CRATE_SOURCES.iter().map(|c| root().join(c)));
            let found = if path.contains('/') {
                bases.into_iter().any(|base| base.join(&path).exists())
            } else {
                names.contains(&path.as_str())
            };
            if !found {
                let shown = file.strip_prefix(root()).unwrap_or(file);
                missing.push(format!("{}: {path}", shown.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "Markdown files cite paths that do not exist:\n{}",
        missing.join("\n")
    );
}
