//! The README's config reference names every key the config types accept.
//!
//! The reference is kept by hand in one place, the README; this test is
//! what keeps it complete: a key added in code but not documented fails here.

use std::path::Path;

use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::config::node::NodeConfig;

/// Dotted key paths of a TOML document; arrays of tables as `nodes[].name`.
fn key_paths(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => key_paths(&path, t, out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for item in items {
                    key_paths(&format!("{path}[]"), item.as_table().unwrap(), out);
                }
            }
            _ => out.push(path),
        }
    }
}

fn undocumented(effective_toml: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table: toml::Table = effective_toml.parse().unwrap();
    let mut keys = Vec::new();
    key_paths("", &table, &mut keys);
    keys.sort();
    keys.dedup();
    assert!(keys.len() > 5, "{keys:?}");
    keys.into_iter()
        .filter(|k| !readme.contains(&format!("| `{k}` |")))
        .collect()
}

fn local(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/local")
        .join(file)
}

#[test]
fn every_gateway_key_is_in_the_readme() {
    let config = GatewayConfig::load(&local("gateway.toml")).unwrap();
    let missing = undocumented(&config.to_toml());
    assert!(
        missing.is_empty(),
        "gateway.toml keys missing from the README's config reference: {missing:?}"
    );
}

#[test]
fn every_node_key_is_in_the_readme() {
    let config = NodeConfig::load(&local("node-a.toml")).unwrap();
    let missing = undocumented(&toml::to_string(&config).unwrap());
    assert!(
        missing.is_empty(),
        "node.toml keys missing from the README's config reference: {missing:?}"
    );
}
