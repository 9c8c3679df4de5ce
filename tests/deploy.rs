//! Every config shipped under `deploy/` passes the binaries' own `check`.
//!
//! Operators copy these files as they are, so a key renamed in code but not
//! here must fail the build, not a production rollout. Each file is checked
//! byte for byte in a scratch directory that also holds a dummy `mesh.secret`,
//! which is where the deployments put the real one.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/`, where `cargo build --workspace --bins` puts the binaries.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files_with_extension(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files_with_extension(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Runs `<binary> check --config <copy of file>` and returns its stdout.
fn check(file: &Path) -> Result<String, String> {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let binary = if name.starts_with("gateway") {
        "stickyio-gateway"
    } else {
        "stickyio-node"
    };
    let scratch = std::env::temp_dir().join(format!(
        "stickyio-deploy-{}-{}",
        std::process::id(),
        file.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::copy(file, scratch.join(&name)).unwrap();
    std::fs::write(scratch.join("mesh.secret"), "dummy-secret-for-check\n").unwrap();
    let mut command = Command::new(bin(binary));
    command.arg("check");
    if binary == "stickyio-gateway" {
        // The container's gateway.toml names its token and key files where
        // compose mounts them (/etc/stickyio), which this machine has not.
        command.arg("--config-only");
    }
    let out = command
        .arg("--config")
        .arg(scratch.join(&name))
        // Kubernetes node configs take the secret from the environment.
        .env("STICKYIO_CLUSTER_SECRET", "dummy-secret-for-check")
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}: {stderr}{stdout}", file.display()))
    }
}

#[test]
fn every_deploy_config_passes_check() {
    let mut files = Vec::new();
    files_with_extension(&deploy_dir(), "toml", &mut files);
    files.sort();
    assert!(
        files.len() >= 14,
        "expected the local, systemd, container and kubernetes configs, found {files:?}"
    );
    let failures: Vec<String> = files.iter().filter_map(|f| check(f).err()).collect();
    assert!(
        failures.is_empty(),
        "configs failing check:\n{}",
        failures.join("\n")
    );
}

#[test]
fn check_prints_the_effective_config() {
    let out = check(&deploy_dir().join("local/node-a.toml")).unwrap();
    assert!(out.contains("name = \"node-a\""), "{out}");
    // A default the file leaves out is filled in.
    assert!(out.contains("max_subscriptions"), "{out}");
    let out = check(&deploy_dir().join("local/gateway.toml")).unwrap();
    assert!(out.contains("node-c"), "{out}");
}

#[test]
fn check_catches_a_broken_copy() {
    let text = std::fs::read_to_string(deploy_dir().join("local/gateway.toml")).unwrap();
    let dir = std::env::temp_dir().join(format!("stickyio-deploy-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("gateway.toml");
    std::fs::write(&bad, text.replace("weight = 1", "wieght = 1")).unwrap();
    let err = check(&bad).unwrap_err();
    assert!(err.contains("gateway.toml:18:1"), "{err}");
    assert!(err.contains("wieght"), "{err}");
}

/// The kustomization reads every config from files; none hides in YAML
/// where `check` would not see it.
#[test]
fn kubernetes_configs_are_files_the_test_checks() {
    let k8s = deploy_dir().join("kubernetes");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    let referenced: Vec<&str> = kustomization
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- "))
        .filter(|l| l.ends_with(".toml"))
        .collect();
    assert_eq!(referenced.len(), 4, "{kustomization}");
    for file in referenced {
        assert!(
            k8s.join(file).exists(),
            "kustomization names missing {file}"
        );
    }
    let mut manifests = Vec::new();
    files_with_extension(&deploy_dir(), "yaml", &mut manifests);
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            !text.lines().any(|l| l.trim_end().ends_with(".toml: |")),
            "{} embeds TOML; generate the ConfigMap from a file instead",
            manifest.display()
        );
    }
}

/// The top-level entries of a compose file's `services:`, each with its
/// lines, and the `x-…` extension blocks by their anchor line.
fn compose_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut in_services = false;
    for line in text.lines() {
        let top_level = !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty();
        if top_level {
            in_services = line == "services:";
            if line.starts_with("x-") {
                blocks.push((line.to_owned(), String::new()));
            }
            continue;
        }
        let service = in_services
            && line.starts_with("  ")
            && !line.starts_with("   ")
            && line.trim_end().ends_with(':');
        if service {
            blocks.push((line.trim().trim_end_matches(':').to_owned(), String::new()));
        } else if let Some((_, body)) = blocks.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks
}

/// Both compose files run two gateways on their own host ports that mount
/// every file the shared gateway.toml reads, the route key among them.
#[test]
fn compose_runs_two_gateway_replicas_with_one_route_key() {
    let container = deploy_dir().join("container");
    let effective = check(&container.join("gateway.toml")).unwrap();
    let wanted: Vec<&str> = effective
        .lines()
        .filter(|l| {
            l.split('=')
                .next()
                .is_some_and(|k| k.trim().ends_with("_file"))
        })
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(
        wanted.contains(&"/etc/stickyio/route.key"),
        "the replicas read one route key: {effective}"
    );
    for file in ["compose.yaml", "compose.redis.yaml"] {
        let text = std::fs::read_to_string(container.join(file)).unwrap();
        let blocks = compose_blocks(&text);
        let gateways: Vec<&(String, String)> = blocks
            .iter()
            .filter(|(name, _)| name.starts_with("gateway"))
            .collect();
        let names: Vec<&str> = gateways.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["gateway-1", "gateway-2"], "{file}");
        let shared = blocks
            .iter()
            .find(|(name, _)| name == "x-gateway: &gateway")
            .map(|(_, body)| body.as_str())
            .unwrap_or_else(|| panic!("{file} has no x-gateway block"));
        for path in &wanted {
            assert!(
                shared.contains(&format!(":{path}:ro")),
                "{file}: the gateways mount {path}"
            );
        }
        let mut host_ports = Vec::new();
        for (name, body) in &gateways {
            assert!(body.contains("<<: *gateway"), "{file}: {name} is a replica");
            host_ports.extend(
                body.lines()
                    .filter_map(|l| l.trim().strip_prefix("- \""))
                    .filter_map(|l| l.strip_suffix(":8080\""))
                    .map(str::to_owned),
            );
        }
        assert_eq!(host_ports, ["8080", "8081"], "{file}");
    }
}

/// The Redis variant is an overlay of the base, not a copy: it takes the
/// base's gateway and StatefulSet, and its env patch replaces the entry
/// that carries the mesh secret (a JSON patch addresses it by position).
#[test]
fn kubernetes_redis_is_an_overlay_of_the_base() {
    let overlay = deploy_dir().join("kubernetes-redis");
    let kustomization = std::fs::read_to_string(overlay.join("kustomization.yaml")).unwrap();
    let resources = kustomization
        .split("resources:\n")
        .nth(1)
        .unwrap_or_default();
    assert!(
        resources.starts_with("  - ../kubernetes\n"),
        "{kustomization}"
    );
    for copied in [
        "gateway.yaml",
        "gateway.toml",
        "nodes.yaml",
        "namespace.yaml",
    ] {
        assert!(
            !overlay.join(copied).exists(),
            "kubernetes-redis/{copied} copies the base"
        );
    }
    assert!(
        kustomization.contains("path: /spec/template/spec/containers/0/env/1\n"),
        "{kustomization}"
    );
    let nodes = std::fs::read_to_string(deploy_dir().join("kubernetes/nodes.yaml")).unwrap();
    let env: Vec<&str> = nodes
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("- name: ")
                && l.chars()
                    .skip(8)
                    .all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .collect();
    assert_eq!(
        env.get(1).copied(),
        Some("- name: STICKYIO_CLUSTER_SECRET"),
        "{env:?}"
    );
}

/// The kustomization runs two gateway replicas that take the route key
/// from one generated Secret, whose source file git ignores (the Redis
/// overlay takes all of it from the base).
#[test]
fn kubernetes_runs_two_gateway_replicas_keyed_from_a_secret() {
    let ignored = std::fs::read_to_string(deploy_dir().join("../.gitignore")).unwrap();
    let dir = "kubernetes";
    let dir_path = deploy_dir().join(dir);
    let gateway = std::fs::read_to_string(dir_path.join("gateway.yaml")).unwrap();
    let deployment = gateway.split("\n---").next().unwrap_or_default();
    assert!(deployment.contains("kind: Deployment"), "{dir}");
    assert!(
        deployment.contains("\n  replicas: 2\n"),
        "{dir}: two replicas"
    );
    let env: Vec<&str> = deployment.lines().map(str::trim).collect();
    let at = env
        .iter()
        .position(|l| *l == "- name: STICKYIO_ROUTE_KEY")
        .unwrap_or_else(|| panic!("{dir}: the gateway reads STICKYIO_ROUTE_KEY"));
    assert_eq!(
        env.get(at + 1).copied(),
        Some("valueFrom: {secretKeyRef: {name: stickyio-route-key, key: route_key}}"),
        "{dir}"
    );
    let kustomization = std::fs::read_to_string(dir_path.join("kustomization.yaml")).unwrap();
    let generator = kustomization
        .split("secretGenerator:")
        .nth(1)
        .unwrap_or_default();
    assert!(
        generator.contains("- name: stickyio-route-key\n    files:\n      - route_key=route.key"),
        "{dir}: the Secret comes from route.key\n{kustomization}"
    );
    assert!(
        ignored
            .lines()
            .any(|l| l == format!("/deploy/{dir}/route.key")),
        "{dir}/route.key is git-ignored"
    );
}
