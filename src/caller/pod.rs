//! Which Kubernetes pod and container a process runs in, from its `/proc/<pid>/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after the pod's UID, under a `kubepods` tree, and
//! the container runtime puts each container in a cgroup below it named after the container ID.
//! The shapes differ by cgroup driver and runtime:
//!
//! | driver | shape |
//! | --- | --- |
//! | cgroupfs | `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (guaranteed) |
//! | systemd | `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope` |
//!
//! with `crio-<id>.scope` (CRI-O), `docker-<id>.scope` (Docker, cri-dockerd) or
//! `cri-containerd-<id>.scope` (containerd) as the container's unit under the systemd driver.
//! The systemd driver writes the UID with `_` for `-` (a `-` in a slice name means nesting).
//! Static pods have a UID that is a 32-digit hash without dashes. On cgroup v2 the unified line
//! (`0::`) says it; on v1 any controller's line does.
//!
//! This is parsing only; what the pod is comes from the kubelet (`kubelet.rs`).

/// A pod and container as a process's cgroup names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's UID, with dashes (as the Kubernetes API writes it).
    pub uid: String,
    /// The container's ID (64 hex digits), when the process is in a container's cgroup.
    pub container_id: Option<String>,
}

/// The pod a caller runs in, as the agent saw it: the UID and container ID from its cgroup, and
/// what the kubelet says about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's UID, from the caller's cgroup.
    pub uid: String,
    /// The container's ID, from the caller's cgroup.
    pub container_id: Option<String>,
    /// What the kubelet says about the pod.
    pub seen: PodSeen,
}

/// What the kubelet says about a caller's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSeen {
    /// The agent has no `[kubernetes]` section: pods are not looked up.
    NotLookedUp,
    /// The kubelet lists the pod.
    Known(PodFacts),
    /// The pod could not be found (the kubelet does not list it, or could not be asked): why.
    /// Such a caller matches no role.
    Unknown(String),
}

/// A pod as the kubelet lists it, and the caller's container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    /// `spec.serviceAccountName`; none for static pods, which have no service account.
    pub service_account: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The name of the caller's container, when its ID is among the pod's container statuses.
    pub container: Option<String>,
    /// That container's image.
    pub image: Option<String>,
}

impl Pod {
    /// "pod payments/api-7d9f (uid …, service account payments/api, container api)": the pod as
    /// seen, for messages.
    pub fn describe(&self) -> String {
        match &self.seen {
            PodSeen::Known(f) => format!(
                "pod {}/{} (uid {}, service account {}, container {})",
                f.namespace,
                f.name,
                self.uid,
                f.service_account
                    .as_ref()
                    .map_or("none".to_string(), |sa| format!("{}/{sa}", f.namespace)),
                f.container.as_deref().unwrap_or("unknown"),
            ),
            PodSeen::Unknown(why) => format!("pod uid {} (not found: {why})", self.uid),
            PodSeen::NotLookedUp => format!("pod uid {} (not looked up: no [kubernetes] section)", self.uid),
        }
    }
}

impl serde::Serialize for Pod {
    /// `{"namespace","name","uid","service_account","labels","container","image","container_id"}`,
    /// or `{"uid","container_id","unknown": why}` for a pod that was not found.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if let PodSeen::Known(f) = &self.seen {
            m.serialize_entry("namespace", &f.namespace)?;
            m.serialize_entry("name", &f.name)?;
        }
        m.serialize_entry("uid", &self.uid)?;
        match &self.seen {
            PodSeen::Known(f) => {
                m.serialize_entry("service_account", &f.service_account)?;
                m.serialize_entry("labels", &f.labels)?;
                m.serialize_entry("container", &f.container)?;
                m.serialize_entry("image", &f.image)?;
            }
            PodSeen::Unknown(why) => m.serialize_entry("unknown", why)?,
            PodSeen::NotLookedUp => {}
        }
        m.serialize_entry("container_id", &self.container_id)?;
        m.end()
    }
}

/// The pod a process runs in, from the contents of its `/proc/<pid>/cgroup`; none for a process
/// outside every pod (a host process, or a container that is not in a Kubernetes pod).
pub fn pod_from_cgroup(contents: &str) -> Option<PodRef> {
    let lines: Vec<&str> = contents.lines().collect();
    // The unified hierarchy first, then the v1 controllers in file order.
    let unified = lines.iter().filter_map(|l| l.strip_prefix("0::"));
    let v1 = lines
        .iter()
        .filter(|l| !l.starts_with("0::"))
        .filter_map(|l| l.splitn(3, ':').nth(2));
    unified.chain(v1).find_map(pod_from_path)
}

/// The pod in one cgroup path.
fn pod_from_path(path: &str) -> Option<PodRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // A reader in a cgroup namespace (the agent's container, on cgroup v2) sees the cgroups of
    // other pods relative to its own: `/../../besteffort/pod<uid>/<id>`, the levels above the
    // common ancestor out of sight.
    let below = parts.iter().position(|p| *p != "..").unwrap_or(parts.len());
    let climbed = below > 0;
    // The pod's cgroup is the first one with a pod name, and everything above it must be the
    // kubelet's: a user with a delegated subtree (user@.service) can make
    // `/user.slice/.../kubepods/pod<uid>/<id>` and must not pass for that pod.
    let (i, uid) = parts[below..]
        .iter()
        .enumerate()
        .find_map(|(i, p)| pod_uid(p).map(|uid| (below + i, uid)))?;
    let ancestors = &parts[below..i];
    // Without a climb, the path must go through kubepods (podman's
    // `machine-libpod_pod_<id>.slice` is no pod); with one, the kubepods level may be above.
    let in_kubepods = climbed || parts[below..=i].iter().any(|p| p.contains("kubepods"));
    if !in_kubepods || !ancestors.iter().all(|p| kubelet_level(p)) {
        return None;
    }
    let container_id = parts.get(i + 1).and_then(|c| container_id(c));
    Some(PodRef { uid, container_id })
}

/// A cgroup level the kubelet makes above a pod: `kubepods`, `kubepods.slice`, a QoS class
/// (`burstable`, `kubepods-besteffort.slice`), or the kubelet's own root (`kubelet.slice`, as in
/// kind).
fn kubelet_level(part: &str) -> bool {
    part.contains("kubepods") || QOS.contains(&part) || part == "kubelet.slice" || part == "kubelet"
}

/// The UID in a pod's cgroup name: `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice`
/// (systemd, `_` for `-`).
fn pod_uid(part: &str) -> Option<String> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        let (prefix, uid) = slice.rsplit_once("-pod")?;
        if !prefix.ends_with("kubepods") && !QOS.iter().any(|q| prefix.ends_with(&format!("kubepods-{q}"))) {
            return None;
        }
        uid.replace('_', "-")
    } else {
        part.strip_prefix("pod")?.to_string()
    };
    is_pod_uid(&raw).then(|| raw.to_ascii_lowercase())
}

/// The QoS classes the kubelet makes a cgroup level for (guaranteed pods sit right under kubepods).
const QOS: &[&str] = &["burstable", "besteffort"];

/// A UUID (8-4-4-4-12 hex digits) or a static pod's 32-digit hash.
fn is_pod_uid(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = s.split('-').collect();
    match groups.as_slice() {
        [one] => hex(one, 32),
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        _ => false,
    }
}

/// The container ID in a container's cgroup name: `<id>` (cgroupfs), `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope` or `cri-dockerd-<id>.scope` (systemd). CRI-O's
/// `crio-conmon-<id>.scope` holds the monitor, not the container: none.
fn container_id(part: &str) -> Option<String> {
    let id = match part.strip_suffix(".scope") {
        Some(unit) => ["cri-containerd-", "crio-", "docker-", "cri-dockerd-"]
            .iter()
            .find_map(|p| unit.strip_prefix(p))?,
        None => part,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2f0a-3b1e-4c7e-9a51-0d2b8c7e4f10";
    const UNDERSCORED: &str = "6f1c2f0a_3b1e_4c7e_9a51_0d2b8c7e4f10";
    const ID: &str = "3c9f5e8b1a2d4f6071829304a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e";

    fn pod(container: Option<&str>) -> Option<PodRef> {
        Some(PodRef {
            uid: UID.into(),
            container_id: container.map(str::to_string),
        })
    }

    #[test]
    fn systemd_driver_on_cgroup_v2_for_each_runtime_and_qos_class() {
        for (runtime, qos_path) in [
            ("cri-containerd", "kubepods-burstable.slice/kubepods-burstable"),
            ("crio", "kubepods-besteffort.slice/kubepods-besteffort"),
            ("docker", "kubepods-burstable.slice/kubepods-burstable"),
            ("cri-dockerd", "kubepods-besteffort.slice/kubepods-besteffort"),
        ] {
            let cgroup = format!("0::/kubepods.slice/{qos_path}-pod{UNDERSCORED}.slice/{runtime}-{ID}.scope\n");
            assert_eq!(pod_from_cgroup(&cgroup), pod(Some(ID)), "{cgroup}");
        }
        // Guaranteed pods sit right under kubepods.slice.
        let cgroup = format!("0::/kubepods.slice/kubepods-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(pod_from_cgroup(&cgroup), pod(Some(ID)));
    }

    #[test]
    fn cgroupfs_driver_on_v1_and_v2() {
        for path in [
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
        ] {
            assert_eq!(pod_from_cgroup(&format!("0::{path}\n")), pod(Some(ID)), "v2 {path}");
            let v1 = format!("12:pids:{path}\n11:memory:{path}\n1:name=systemd:{path}\n0::/\n");
            assert_eq!(pod_from_cgroup(&v1), pod(Some(ID)), "v1 {path}");
        }
    }

    #[test]
    fn v1_with_the_systemd_driver_and_a_cgroup_namespace() {
        let v1 = format!(
            "12:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/docker-{ID}.scope\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(pod_from_cgroup(&v1), pod(Some(ID)));
        // kind and nested kubelets put the tree under another root (kubelet.slice/kubelet-kubepods...).
        let kind = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(pod_from_cgroup(&kind), pod(Some(ID)));
    }

    #[test]
    fn read_from_inside_a_cgroup_namespace() {
        // The agent's own container has a cgroup namespace: other pods' cgroups start with "..".
        for path in [
            format!("/../../kubepods-besteffort-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope"),
            format!("/../../../kubepods-pod{UNDERSCORED}.slice/crio-{ID}.scope"),
            format!("/../../besteffort/pod{UID}/{ID}"),
            format!("/../../pod{UID}/{ID}"),
        ] {
            assert_eq!(pod_from_cgroup(&format!("0::{path}\n")), pod(Some(ID)), "{path}");
        }
        assert_eq!(pod_from_cgroup("0::/../../system.slice/containerd.service\n"), None);
    }

    #[test]
    fn static_pods_have_a_hash_for_a_uid() {
        let hash = "8e2f9c3a1b7d4e6f0a9b8c7d6e5f4a3b";
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            pod_from_cgroup(&cgroup),
            Some(PodRef {
                uid: hash.into(),
                container_id: Some(ID.into())
            })
        );
        let cgroup = format!("0::/kubepods/burstable/pod{hash}/{ID}\n");
        assert_eq!(pod_from_cgroup(&cgroup).unwrap().uid, hash);
    }

    #[test]
    fn a_process_in_the_pod_but_no_container_and_crio_conmon() {
        let cgroup = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice\n");
        assert_eq!(pod_from_cgroup(&cgroup), pod(None));
        let conmon = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/crio-conmon-{ID}.scope\n"
        );
        assert_eq!(pod_from_cgroup(&conmon), pod(None));
    }

    #[test]
    fn a_delegated_subtree_cannot_pass_for_a_pod() {
        // A user's own cgroups (systemd Delegate=) can have any name below the delegation.
        for forged in [
            format!("0::/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{ID}\n"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods.slice/kubepods-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/system.slice/runner.service/kubepods/besteffort/pod{UID}/{ID}\n"),
            format!("0::/../../user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{ID}\n"),
            format!("0::/../../user.slice/pod{UID}/{ID}\n"),
            format!("4:memory:/user.slice/kubepods/pod{UID}/{ID}\n0::/user.slice/user-1000.slice\n"),
        ] {
            assert_eq!(pod_from_cgroup(&forged), None, "{forged}");
        }
        // A pod that nests cgroups of its own is still the outer pod.
        let nested = format!(
            "0::/kubepods/burstable/pod{UID}/{ID}/kubepods/pod{}/{}\n",
            "1".repeat(32),
            "2".repeat(64)
        );
        assert_eq!(pod_from_cgroup(&nested), pod(Some(ID)));
    }

    #[test]
    fn hosts_and_other_containers_are_in_no_pod() {
        for cgroup in [
            "0::/system.slice/payments.service\n".to_string(),
            "0::/\n".to_string(),
            "0::/user.slice/user-1000.slice/session-3.scope\n".to_string(),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!(
                "0::/machine.slice/machine-libpod_pod_{}.slice/libpod-{ID}.scope\n",
                &ID[..64]
            ),
            // Pod-like names outside a kubepods tree, and malformed UIDs inside one.
            format!("0::/system.slice/pod{UID}/{ID}\n"),
            format!("0::/kubepods/burstable/pod{}/{ID}\n", &UID[..20]),
            "0::/kubepods/burstable/podzz/x\n".to_string(),
            "0::/kubepods.slice/kubepods-burstable.slice\n".to_string(),
            format!("0::/kubepods.slice/other-pod{UNDERSCORED}.slice\n"),
            String::new(),
        ] {
            assert_eq!(pod_from_cgroup(&cgroup), None, "{cgroup}");
        }
    }

    #[test]
    fn the_unified_line_wins_and_ids_are_lowercase() {
        let upper = ID.to_ascii_uppercase();
        let cgroup = format!(
            "4:memory:/kubepods/besteffort/pod{}/{upper}\n0::/kubepods/pod{UID}/{ID}\n",
            "0".repeat(32)
        );
        assert_eq!(pod_from_cgroup(&cgroup), pod(Some(ID)));
        let cgroup = format!("0::/kubepods/pod{}/{upper}\n", UID.to_ascii_uppercase());
        assert_eq!(pod_from_cgroup(&cgroup), pod(Some(ID)));
    }
}
