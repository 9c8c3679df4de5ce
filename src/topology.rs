//! The local topology: configs for the gateway and N nodes.
//!
//! With no flags it is exactly `deploy/local/*.toml`, and the gateway runs
//! from `deploy/local/gateway.toml` itself, so editing that file reloads the
//! running gateway. Flags that change ports or the node count derive new
//! configs from those files. The derived `gateway.toml` is written to a run
//! directory and printed, so live edits work there too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use stickyio_shared::config::ConfigError;
use stickyio_shared::config::gateway::{GatewayConfig, NodeEntry};
use stickyio_shared::config::node::NodeConfig;

/// Most nodes the launcher names (`node-a` … `node-z`).
pub const MAX_NODES: usize = 26;

/// What the command line asks for; `None` keeps the value in the files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The folder with `gateway.toml` and `node-*.toml` (default `deploy/local`).
    pub config_dir: Option<PathBuf>,
    pub nodes: Option<usize>,
    pub port: Option<u16>,
    pub admin_port: Option<u16>,
    /// First node port; node i listens on `node_port + i`, and its admin
    /// listener as far above that as in the template file (9101 for 3001).
    pub node_port: Option<u16>,
    /// First node admin port; node i's admin listener is on
    /// `node_admin_port + i` instead of the template's distance.
    pub node_admin_port: Option<u16>,
}

/// Resolved configs, ready to start.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<NodeConfig>,
    pub gateway: GatewayConfig,
    /// The gateway's config file, watched for live edits.
    pub gateway_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: no node-*.toml to start nodes from", .0.display())]
    NoNodeConfigs(PathBuf),
    #[error("--nodes must be between 1 and {MAX_NODES}, not {0}")]
    NodeCount(usize),
    #[error("--node-port {port} with {count} nodes runs past port 65535")]
    NodePorts { port: u16, count: usize },
    #[error("cannot write the derived gateway config {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `deploy/local/` of this checkout.
pub fn default_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local")
}

impl Topology {
    pub fn resolve(options: &Options) -> Result<Topology, TopologyError> {
        let dir = options
            .config_dir
            .clone()
            .unwrap_or_else(default_config_dir);
        let gateway_file = dir.join("gateway.toml");
        let mut gateway = GatewayConfig::load(&gateway_file)?;
        let files = node_files(&dir)?;
        let mut nodes = files
            .iter()
            .map(|f| NodeConfig::load(f))
            .collect::<Result<Vec<_>, _>>()?;

        let count = options.nodes.unwrap_or(nodes.len());
        if count == 0 || count > MAX_NODES {
            return Err(TopologyError::NodeCount(count));
        }
        let derive_nodes = count != nodes.len()
            || options.node_port.is_some()
            || options.node_admin_port.is_some();
        if derive_nodes {
            let base = options.node_port.unwrap_or(nodes[0].listen.port());
            let admin_base = options.node_admin_port.unwrap_or_else(|| {
                // The template's distance from the client port, so
                // deploy/local's 3001 → 9101 carries over to every node.
                let offset = i32::from(nodes[0].admin.port()) - i32::from(nodes[0].listen.port());
                u16::try_from(i32::from(base) + offset).unwrap_or(0)
            });
            nodes = derive(&nodes[0], count, base, admin_base)?;
            gateway.nodes = nodes
                .iter()
                .map(|n| NodeEntry {
                    name: n.name.clone(),
                    addr: n.listen.into(),
                    weight: 1,
                    check_port: None,
                })
                .collect();
        }
        if let Some(port) = options.port {
            gateway.listen.set_port(port);
        }
        if let Some(port) = options.admin_port {
            gateway.admin.set_port(port);
        }
        let changed = derive_nodes || options.port.is_some() || options.admin_port.is_some();
        let gateway_file = if changed {
            write_run_config(&gateway)?
        } else {
            gateway_file
        };
        Ok(Topology {
            nodes,
            gateway,
            gateway_file,
        })
    }
}

fn node_files(dir: &Path) -> Result<Vec<PathBuf>, TopologyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("node-") && n.ends_with(".toml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TopologyError::NoNodeConfigs(dir.to_owned()));
    }
    Ok(files)
}

/// `count` nodes like `template`, named `node-a`…, on consecutive ports,
/// all meshed with each other (standalone when there is only one).
fn derive(
    template: &NodeConfig,
    count: usize,
    base: u16,
    admin_base: u16,
) -> Result<Vec<NodeConfig>, TopologyError> {
    let too_far = || TopologyError::NodePorts { port: base, count };
    let last =
        base.checked_add(u16::try_from(count - 1).map_err(|_| TopologyError::NodeCount(count))?);
    last.ok_or_else(too_far)?;
    let admin_port = |i: usize| {
        u16::try_from(usize::from(admin_base) + i)
            .ok()
            .filter(|_| admin_base != 0)
    };
    if admin_port(0).is_none() || admin_port(count - 1).is_none() {
        return Err(too_far());
    }
    let ip = match template.listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let urls: Vec<String> = (0..count)
        .map(|i| format!("http://{}", SocketAddr::new(ip, base + i as u16)))
        .collect();
    Ok((0..count)
        .map(|i| {
            let mut node = template.clone();
            node.name = format!("node-{}", (b'a' + i as u8) as char);
            node.listen = SocketAddr::new(ip, base + i as u16);
            node.admin.set_port(admin_port(i).unwrap_or(0));
            node.cluster.host = Some(urls[i].clone());
            node.cluster.cluster_nodes = urls.clone();
            node.cluster.standalone = template.cluster.standalone || count == 1;
            node
        })
        .collect())
}

/// Writes a derived gateway config where the user can edit it live.
fn write_run_config(gateway: &GatewayConfig) -> Result<PathBuf, TopologyError> {
    let dir = std::env::temp_dir().join(format!("stickyio-local-{}", gateway.listen.port()));
    let path = dir.join("gateway.toml");
    let text = format!(
        "# Derived by the stickyio launcher from deploy/local/gateway.toml and its flags.\n\
         # Edits here reload the running gateway.\n{}",
        gateway.to_toml()
    );
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|source| TopologyError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_is_exactly_deploy_local() {
        let t = Topology::resolve(&Options::default()).unwrap();
        assert_eq!(t.gateway_file, default_config_dir().join("gateway.toml"));
        let names: Vec<_> = t.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-a", "node-b", "node-c"]);
        assert_eq!(t.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(t.gateway.admin.to_string(), "127.0.0.1:9090");
        assert!(t.nodes.iter().all(|n| !n.cluster.standalone));
        let gateway_addrs: Vec<_> = t.gateway.nodes.iter().map(|n| n.addr.to_string()).collect();
        let node_addrs: Vec<_> = t.nodes.iter().map(|n| n.listen.to_string()).collect();
        assert_eq!(gateway_addrs, node_addrs);
        let admins: Vec<_> = t.nodes.iter().map(|n| n.admin.to_string()).collect();
        assert_eq!(
            admins,
            ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
        );
    }

    #[test]
    fn flags_derive_a_meshed_topology_and_write_the_gateway_config() {
        let options = Options {
            nodes: Some(5),
            port: Some(38080),
            admin_port: Some(39090),
            node_port: Some(33001),
            ..Options::default()
        };
        let t = Topology::resolve(&options).unwrap();
        assert_eq!(t.nodes.len(), 5);
        assert_eq!(t.nodes[4].name, "node-e");
        assert_eq!(t.nodes[4].listen.to_string(), "127.0.0.1:33005");
        assert_eq!(t.nodes[4].admin.to_string(), "127.0.0.1:39105");
        assert_eq!(t.nodes[4].cluster.peers().len(), 4);
        assert_eq!(t.gateway.nodes[4].addr.as_str(), "127.0.0.1:33005");
        assert_eq!(t.gateway.listen.port(), 38080);
        let written = GatewayConfig::load(&t.gateway_file).unwrap();
        assert_eq!(written, t.gateway);
    }

    #[test]
    fn bad_counts_and_ports_are_refused() {
        let err = Topology::resolve(&Options {
            nodes: Some(0),
            ..Options::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "--nodes must be between 1 and 26, not 0");
        let err = Topology::resolve(&Options {
            nodes: Some(3),
            node_port: Some(65534),
            ..Options::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("runs past port 65535"), "{err}");
    }

    #[test]
    fn one_node_runs_standalone() {
        let t = Topology::resolve(&Options {
            nodes: Some(1),
            node_port: Some(34001),
            port: Some(34080),
            ..Options::default()
        })
        .unwrap();
        assert!(t.nodes[0].cluster.standalone);
    }
}
