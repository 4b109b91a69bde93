//! The Kubernetes manifests of `deploy/kubernetes/`: valid against the Kubernetes schemas
//! (`kubernetes-validate --strict`, from PyPI; `.ci/run` installs it), and the agent
//! configuration in their ConfigMap uses only keys the agent knows.

mod common;

use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every manifest (`*.yaml` but the kustomizations, which are no Kubernetes resources).
fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    out
}

/// Runs `kubernetes-validate --strict` on `files`: its exit code and output, or none when the
/// tool is not installed.
fn validate(files: &[PathBuf]) -> Option<(i32, String)> {
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(files)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.code().unwrap_or(-1), text))
}

#[test]
fn the_manifests_are_valid_kubernetes_resources() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(deploy_dir()).unwrap().display().to_string())
        .collect();
    for expected in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "daemonset.yaml",
        "example/workload.yaml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} is missing: {names:?}");
    }
    let Some((code, out)) = validate(&files) else {
        return common::skip_or_fail(
            "the_manifests_are_valid_kubernetes_resources",
            "kubernetes-validate is not installed (pip install kubernetes-validate)",
        );
    };
    assert_eq!(code, 0, "kubernetes-validate refused a manifest:\n{out}");

    // The check can fail: a field the schema does not have is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("daemonset.yaml");
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    std::fs::write(&bad, text.replace("hostPID: true", "hostPIDs: true")).unwrap();
    let (code, out) = validate(&[bad]).unwrap();
    assert_ne!(code, 0, "a misspelled field passed:\n{out}");
    assert!(out.contains("hostPIDs"), "{out}");
}

/// The `cortexid.toml` block of the ConfigMap, unindented.
fn configmap_config() -> String {
    let text = std::fs::read_to_string(deploy_dir().join("configmap.yaml")).unwrap();
    let start = text.find("  cortexid.toml: |\n").expect("a cortexid.toml key") + "  cortexid.toml: |\n".len();
    text[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_configmap_holds_a_config_of_known_keys_with_pod_roles() {
    let config = configmap_config();
    let unknown = cortexid::config::unknown_keys(&config, Path::new("configmap.yaml")).unwrap();
    assert!(unknown.is_empty(), "unknown keys {unknown:?} in\n{config}");
    let table: toml::Table = config.parse().unwrap();
    assert_eq!(table["kubernetes"]["node_name"].as_str(), Some("$NODE_NAME"));
    assert_eq!(table["agent"]["socket"].as_str(), Some("/run/cortexid/agent.sock"));
    let role = &table["role"][0];
    assert!(
        role.get("namespaces").is_some() && role.get("service_accounts").is_some(),
        "{role}"
    );
    // The DaemonSet mounts what the config names, and sets the variables it expands.
    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    for needle in [
        "mountPath: /run/cortexid",
        "mountPath: /var/run/secrets/kubernetes.io/serviceaccount",
        "mountPath: /etc/cortexid/secrets",
        "name: NODE_NAME",
        "name: NODE_IP",
        "prometheus.io/port: \"9464\"",
    ] {
        assert!(ds.contains(needle), "daemonset.yaml lacks {needle}");
    }
}
