//! `[kubernetes]`: where the node's kubelet is and how the agent authenticates to it, so callers
//! in pods are known by their pod (namespace, name, service account, labels, container); and the
//! pod conditions of a `[[role]]` (`namespaces`, `service_accounts`, `pod_labels`, `containers`).
//!
//! `kubelet_url` and `node_name` may name environment variables (`$NODE_NAME`, `${NODE_IP}`),
//! expanded once at load from the environment the [`LoadContext`](super::LoadContext) gives, so a
//! DaemonSet can set them from the downward API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::locate::{Seg, at};
use super::raw::{RawKubernetes, RawRole};
use super::validate::Validator;
use crate::secrets::SecretFile;

/// The kubelet's pod list on this node (the kubelet's own port, authenticated).
pub const DEFAULT_KUBELET_URL: &str = "https://127.0.0.1:10250";
/// The agent's service-account token, as Kubernetes mounts it in a pod.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster's CA, as Kubernetes mounts it in a pod.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// `[kubernetes]`: the kubelet that says which pod a caller runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSettings {
    /// The kubelet's base URL (`https://`, or `http://` to loopback); the pod list is at `/pods`.
    pub kubelet_url: String,
    /// The agent's bearer token for the kubelet, re-read at every fetch (projected tokens rotate).
    pub token_file: SecretFile,
    /// The CA (or the kubelet's own certificate) trusted for `kubelet_url`, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Only pods of this node count (`spec.nodeName`); none: every pod the kubelet lists.
    pub node_name: Option<String>,
}

/// The pod conditions of a role; each `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodConditions {
    /// The caller's pod is in one of these namespaces.
    pub namespaces: Option<Vec<String>>,
    /// The caller's pod runs as one of these service accounts, each `namespace/name`.
    pub service_accounts: Option<Vec<(String, String)>>,
    /// The caller's pod has every one of these labels with exactly this value.
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// The caller runs in a container of one of these names.
    pub containers: Option<Vec<String>>,
}

impl PodConditions {
    /// Whether any pod condition is given.
    pub fn any(&self) -> bool {
        self.namespaces.is_some()
            || self.service_accounts.is_some()
            || self.pod_labels.is_some()
            || self.containers.is_some()
    }
}

impl Validator<'_> {
    /// Validates `[kubernetes]`, expanding `$VARIABLES` in `kubelet_url` and `node_name`.
    pub(super) fn kubernetes(&mut self, raw: Option<&RawKubernetes>) -> Option<KubernetesSettings> {
        let raw = raw?;
        let path = |key: &str| vec![Seg::Key("kubernetes".into()), Seg::Key(key.into())];
        let url = raw.kubelet_url.as_deref().unwrap_or(DEFAULT_KUBELET_URL);
        let kubelet_url = match self.expand(&path("kubelet_url"), url) {
            Some(url) => self.url(&path("kubelet_url"), &url),
            None => url.to_string(),
        };
        let token_file = self.secret(
            &path("token_file"),
            raw.token_file.as_deref().unwrap_or(DEFAULT_TOKEN_FILE),
        );
        let ca_file = match raw.ca_file.as_deref() {
            Some(ca) => Some(self.absolute(&path("ca_file"), ca)),
            // The default only when it is there: a kubelet with a publicly trusted certificate needs none.
            None => Some(PathBuf::from(DEFAULT_CA_FILE)).filter(|p| p.exists()),
        };
        if let Some(ca) = &ca_file
            && ca.is_absolute()
            && !ca.exists()
        {
            self.problem(&path("ca_file"), format!("{} does not exist", ca.display()));
        }
        let node_name = raw
            .node_name
            .as_deref()
            .and_then(|n| self.expand(&path("node_name"), n));
        if let Some(name) = &node_name
            && !is_node_name(name)
        {
            self.problem(
                &path("node_name"),
                format!("{name:?} is not a node name (lowercase letters, digits, '-' and '.'; at most 253)"),
            );
        }
        Some(KubernetesSettings {
            kubelet_url,
            token_file,
            ca_file,
            node_name,
        })
    }

    /// `$NAME` and `${NAME}` replaced by the environment's value; an unset one is a problem (and
    /// none is returned).
    fn expand(&mut self, path: &[Seg], value: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = value;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, next) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(end) => (&braced[..end], &braced[end + 1..]),
                    None => ("", after),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                self.problem(
                    path,
                    format!("{value:?}: '$' must start a variable such as $NODE_NAME or ${{NODE_NAME}}"),
                );
                return None;
            }
            match self.ctx.env(name) {
                Some(v) => out.push_str(&v),
                None => {
                    self.problem(
                        path,
                        format!(
                            "{value:?} names ${name}, which is not set in the agent's environment; set it (in a DaemonSet, from the downward API: fieldRef spec.nodeName or status.hostIP)"
                        ),
                    );
                    return None;
                }
            }
            rest = next;
        }
        out.push_str(rest);
        Some(out)
    }

    /// The pod conditions of `[[role]]` number `i`; they need a `[kubernetes]` section.
    pub(super) fn pod_conditions(&mut self, r: &RawRole, i: usize, kubernetes: bool) -> PodConditions {
        let service_accounts = r.service_accounts.as_ref().map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(j, sa)| match sa.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                        Some((ns.to_string(), name.to_string()))
                    }
                    _ => {
                        let path = vec![
                            Seg::Key("role".into()),
                            Seg::Index(i),
                            Seg::Key("service_accounts".into()),
                            Seg::Index(j),
                        ];
                        self.problem(
                            &path,
                            format!("{sa:?} is not \"namespace/name\"; write the service account with its namespace, e.g. \"payments/api\""),
                        );
                        None
                    }
                })
                .collect()
        });
        let conditions = PodConditions {
            namespaces: r.namespaces.clone(),
            service_accounts,
            pod_labels: r.pod_labels.clone(),
            containers: r.containers.clone(),
        };
        if conditions.any() && !kubernetes {
            let key = ["namespaces", "service_accounts", "pod_labels", "containers"]
                .into_iter()
                .zip([
                    r.namespaces.is_some(),
                    r.service_accounts.is_some(),
                    r.pod_labels.is_some(),
                    r.containers.is_some(),
                ])
                .find_map(|(k, given)| given.then_some(k))
                .unwrap_or("namespaces");
            self.problem(
                &at("role", i, key),
                "pod conditions need a [kubernetes] section (the kubelet says which pod a caller runs in); add one or remove them".into(),
            );
        }
        conditions
    }
}

/// A Kubernetes node name: a DNS subdomain (RFC 1123), at most 253 characters.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use crate::config::test_support::good;
    use crate::config::{LoadContext, parse};

    /// A context with an environment of its own (never the process's).
    struct EnvContext(HashMap<&'static str, &'static str>);
    impl LoadContext for EnvContext {
        fn credentials_directory(&self) -> Option<PathBuf> {
            None
        }
        fn under_systemd(&self) -> bool {
            false
        }
        fn uid_of_user(&self, name: &str) -> Option<u32> {
            (name == "payments").then_some(1001)
        }
        fn gid_of_group(&self, _: &str) -> Option<u32> {
            None
        }
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> EnvContext {
        EnvContext(pairs.iter().copied().collect())
    }

    /// The good config with a `[kubernetes]` section (whose token file is written, mode 0600).
    fn with_kubernetes(dir: &Path, section: &str) -> String {
        let token = dir.join("kube-token");
        std::fs::write(&token, "eyJ.sa.token").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.join("ca.crt"), "").unwrap();
        let section = section
            .replace("TOKEN", &token.display().to_string())
            .replace("CA", &dir.join("ca.crt").display().to_string());
        format!("{}\n[kubernetes]\n{section}", good(dir))
    }

    #[test]
    fn the_node_name_and_kubelet_url_are_expanded_from_the_given_environment() {
        let dir = tempfile::tempdir().unwrap();
        let text = with_kubernetes(
            dir.path(),
            "kubelet_url = \"https://${NODE_IP}:10250\"\ntoken_file = \"TOKEN\"\nca_file = \"CA\"\nnode_name = \"$NODE_NAME\"\n",
        );
        let ctx = env(&[("NODE_NAME", "node-17.example"), ("NODE_IP", "10.0.3.7")]);
        let cfg = parse(&text, Path::new("t.toml"), &ctx).unwrap();
        let k = cfg.kubernetes.unwrap();
        assert_eq!(k.kubelet_url, "https://10.0.3.7:10250");
        assert_eq!(k.node_name.as_deref(), Some("node-17.example"));
        assert_eq!(k.token_file.path, dir.path().join("kube-token"));
        assert_eq!(k.ca_file, Some(dir.path().join("ca.crt")));

        let err = parse(&text, Path::new("t.toml"), &env(&[("NODE_IP", "10.0.3.7")])).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "kubernetes.node_name");
        assert!(
            err.problems[0].message.contains("$NODE_NAME, which is not set"),
            "{err}"
        );
        let line = text.lines().position(|l| l.starts_with("node_name")).unwrap() + 1;
        assert_eq!(err.problems[0].line, Some(line));
    }

    #[test]
    fn a_bad_url_node_name_or_token_file_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = with_kubernetes(
            dir.path(),
            "kubelet_url = \"http://10.0.0.1:10255\"\ntoken_file = \"TOKEN\"\nca_file = \"relative.crt\"\nnode_name = \"Node_1\"\n",
        );
        std::fs::set_permissions(dir.path().join("kube-token"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = parse(&text, Path::new("t.toml"), &env(&[])).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kubernetes.kubelet_url",
                "kubernetes.token_file",
                "kubernetes.ca_file",
                "kubernetes.node_name"
            ],
            "{err}"
        );
        assert!(
            err.problems[0].message.contains("http:// to a non-loopback host"),
            "{err}"
        );
        assert!(err.problems[1].message.contains("readable by other"), "{err}");
        assert!(err.problems[2].message.contains("absolute"), "{err}");
        assert!(err.problems[3].message.contains("not a node name"), "{err}");
        let err = parse(
            &with_kubernetes(dir.path(), "token_file = \"TOKEN\"\nnode_name = \"$\"\n"),
            Path::new("t.toml"),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.problems[0].message.contains("must start a variable"), "{err}");
    }

    #[test]
    fn defaults_are_the_local_kubelet_and_the_mounted_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let text = with_kubernetes(dir.path(), "token_file = \"TOKEN\"\n");
        let cfg = parse(&text, Path::new("t.toml"), &env(&[])).unwrap();
        let k = cfg.kubernetes.unwrap();
        assert_eq!(k.kubelet_url, "https://127.0.0.1:10250");
        assert_eq!(k.node_name, None);
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &env(&[])).unwrap();
        assert!(cfg.kubernetes.is_none(), "no section, no kubelet");
    }

    #[test]
    fn pod_conditions_say_who_a_role_is_for_and_need_the_section() {
        let dir = tempfile::tempdir().unwrap();
        let pods = "namespaces = [\"payments\"]\nservice_accounts = [\"payments/api\"]\npod_labels = { app = \"payments\" }\ncontainers = [\"api\"]\n";
        let text = with_kubernetes(dir.path(), "token_file = \"TOKEN\"\n")
            .replace("users = [\"payments\"]\nuids = [0]\n", pods);
        let cfg = parse(&text, Path::new("t.toml"), &env(&[])).unwrap();
        let pod = &cfg.roles[0].pod;
        assert_eq!(pod.namespaces, Some(vec!["payments".to_string()]));
        assert_eq!(pod.service_accounts, Some(vec![("payments".into(), "api".into())]));
        assert_eq!(pod.pod_labels.as_ref().unwrap()["app"], "payments");
        assert_eq!(pod.containers, Some(vec!["api".to_string()]));

        let without = good(dir.path()).replace("users = [\"payments\"]\nuids = [0]\n", pods);
        let err = parse(&without, Path::new("t.toml"), &env(&[])).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "role[0].namespaces");
        assert!(err.problems[0].message.contains("need a [kubernetes] section"), "{err}");

        let bad = text.replace("\"payments/api\"", "\"api\", \"a/b/c\"");
        let err = parse(&bad, Path::new("t.toml"), &env(&[])).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["role[0].service_accounts[0]", "role[0].service_accounts[1]"],
            "{err}"
        );
        assert!(err.problems[0].message.contains("\"namespace/name\""), "{err}");

        let empty = text.replace("containers = [\"api\"]", "containers = []");
        let err = parse(&empty, Path::new("t.toml"), &env(&[])).unwrap_err();
        assert_eq!(err.problems[0].key, "role[0].containers");
        assert!(err.problems[0].message.contains("matches nobody"), "{err}");
    }
}
