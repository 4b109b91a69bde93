//! The pod conditions of roles: `namespaces`, `service_accounts`, `pod_labels`, `containers`,
//! matched against the caller's pod as the kubelet lists it.
//!
//! A caller in a pod the kubelet does not know matches no role at all, whatever its conditions:
//! its uid or executable inside an unknown pod say nothing reliable about who it is, and it is
//! never guessed. Nor does a caller whose cgroup could not be read (it exited first), which may
//! have been in such a pod. A caller in no pod (a host process) matches roles without pod conditions as
//! before.

use crate::caller::{Caller, PodFacts, PodSeen};
use crate::config::{PodConditions, Role};

/// Why `role` does not match the caller's pod, or `None` when it does (or has no pod conditions
/// and the caller's pod, if any, is known).
pub(super) fn pod_mismatch(role: &Role, caller: &Caller) -> Option<String> {
    if caller.pod_unknown {
        return Some(format!(
            "role {:?} does not match: the caller's cgroup could not be read ({}), so it may run in a pod the kubelet does not list; such a caller matches no role",
            role.name,
            caller.unreadable.as_deref().unwrap_or("unknown why")
        ));
    }
    if let Some(pod) = &caller.pod
        && let PodSeen::Unknown(why) = &pod.seen
    {
        return Some(format!(
            "role {:?} does not match: the caller runs in pod {}, which cannot be found ({why}); a caller in an unknown pod matches no role",
            role.name, pod.uid
        ));
    }
    let conds = &role.pod;
    if !conds.any() {
        return None;
    }
    let facts = match caller.pod.as_ref().map(|p| &p.seen) {
        Some(PodSeen::Known(facts)) => facts,
        Some(_) => {
            return Some(format!(
                "role {:?} needs a pod ({}), and the caller's pod was not looked up",
                role.name,
                wanted(conds)
            ));
        }
        None => {
            return Some(format!(
                "role {:?} needs a pod ({}), and the caller runs in no pod",
                role.name,
                wanted(conds)
            ));
        }
    };
    facts_mismatch(conds, facts).map(|why| format!("role {:?} needs {why}", role.name))
}

/// The first pod condition the facts fail, in words.
fn facts_mismatch(conds: &PodConditions, f: &PodFacts) -> Option<String> {
    if let Some(namespaces) = &conds.namespaces
        && !namespaces.contains(&f.namespace)
    {
        return Some(format!(
            "namespace in {namespaces:?}, the caller's pod {}/{} is in namespace {}",
            f.namespace, f.name, f.namespace
        ));
    }
    if let Some(accounts) = &conds.service_accounts
        && !accounts
            .iter()
            .any(|(ns, sa)| *ns == f.namespace && Some(sa) == f.service_account.as_ref())
    {
        return Some(format!(
            "service account in {:?}, the caller's pod {}/{} runs as {}",
            accounts.iter().map(|(ns, sa)| format!("{ns}/{sa}")).collect::<Vec<_>>(),
            f.namespace,
            f.name,
            f.service_account
                .as_ref()
                .map_or("no service account".to_string(), |sa| format!("{}/{sa}", f.namespace)),
        ));
    }
    if let Some(labels) = &conds.pod_labels
        && let Some((key, value)) = labels.iter().find(|(k, v)| f.labels.get(*k) != Some(*v))
    {
        return Some(format!(
            "pod label {key}={value}, the caller's pod {}/{} has {}",
            f.namespace,
            f.name,
            f.labels
                .get(key)
                .map_or(format!("no label {key}"), |v| format!("{key}={v}"))
        ));
    }
    if let Some(containers) = &conds.containers
        && !f.container.as_ref().is_some_and(|c| containers.contains(c))
    {
        return Some(format!(
            "container in {containers:?}, the caller runs in {} of pod {}/{}",
            f.container
                .as_ref()
                .map_or("a container the kubelet does not list".to_string(), |c| format!(
                    "container {c}"
                )),
            f.namespace,
            f.name
        ));
    }
    None
}

/// The pod conditions, for a message.
fn wanted(conds: &PodConditions) -> String {
    let mut parts = Vec::new();
    if let Some(ns) = &conds.namespaces {
        parts.push(format!("namespaces {ns:?}"));
    }
    if let Some(sa) = &conds.service_accounts {
        let sa: Vec<String> = sa.iter().map(|(ns, name)| format!("{ns}/{name}")).collect();
        parts.push(format!("service accounts {sa:?}"));
    }
    if let Some(labels) = &conds.pod_labels {
        parts.push(format!("labels {labels:?}"));
    }
    if let Some(c) = &conds.containers {
        parts.push(format!("containers {c:?}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::Pod;
    use std::collections::BTreeMap;

    fn role(conds: PodConditions) -> Role {
        Role {
            name: "pods".into(),
            uids: None,
            gids: None,
            units: None,
            user_units: None,
            executables: None,
            executables_any_namespace: false,
            executable_sha256: None,
            claims: None,
            login: None,
            pod: conds,
            identities: vec!["payments".into()],
            audiences: None,
            scopes: None,
            agent: false,
            rate: None,
        }
    }

    fn in_pod(namespace: &str, sa: Option<&str>, labels: &[(&str, &str)], container: Option<&str>) -> Caller {
        let mut c = Caller::from_ids(1000, 1000, Some(42));
        c.pod = Some(Pod {
            uid: "6f1c2f0a-3b1e-4c7e-9a51-0d2b8c7e4f10".into(),
            container_id: Some("ab12".into()),
            seen: PodSeen::Known(PodFacts {
                namespace: namespace.into(),
                name: format!("{namespace}-7d9f"),
                service_account: sa.map(str::to_string),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                container: container.map(str::to_string),
                image: Some("registry.example/api:1".into()),
            }),
        });
        c
    }

    fn payments() -> PodConditions {
        PodConditions {
            namespaces: Some(vec!["payments".into()]),
            service_accounts: Some(vec![("payments".into(), "api".into())]),
            pod_labels: Some(BTreeMap::from([("app".into(), "payments".into())])),
            containers: Some(vec!["api".into()]),
        }
    }

    #[test]
    fn every_pod_condition_must_hold() {
        let r = role(payments());
        let good = in_pod(
            "payments",
            Some("api"),
            &[("app", "payments"), ("tier", "web")],
            Some("api"),
        );
        assert_eq!(pod_mismatch(&r, &good), None);

        let why = pod_mismatch(&r, &in_pod("billing", Some("api"), &[("app", "payments")], Some("api"))).unwrap();
        assert!(
            why.contains("namespace in [\"payments\"]") && why.contains("in namespace billing"),
            "{why}"
        );

        // The same service-account name in another namespace is another account.
        let mut r2 = payments();
        r2.namespaces = None;
        let why = pod_mismatch(
            &role(r2),
            &in_pod("billing", Some("api"), &[("app", "payments")], Some("api")),
        )
        .unwrap();
        assert!(why.contains("runs as billing/api"), "{why}");
        let why = pod_mismatch(&r, &in_pod("payments", None, &[("app", "payments")], Some("api"))).unwrap();
        assert!(why.contains("runs as no service account"), "{why}");

        let why = pod_mismatch(&r, &in_pod("payments", Some("api"), &[("app", "ledger")], Some("api"))).unwrap();
        assert!(
            why.contains("pod label app=payments") && why.contains("has app=ledger"),
            "{why}"
        );
        let why = pod_mismatch(&r, &in_pod("payments", Some("api"), &[], Some("api"))).unwrap();
        assert!(why.contains("has no label app"), "{why}");

        let why = pod_mismatch(
            &r,
            &in_pod("payments", Some("api"), &[("app", "payments")], Some("sidecar")),
        )
        .unwrap();
        assert!(why.contains("runs in container sidecar"), "{why}");
        let why = pod_mismatch(&r, &in_pod("payments", Some("api"), &[("app", "payments")], None)).unwrap();
        assert!(why.contains("a container the kubelet does not list"), "{why}");
    }

    #[test]
    fn host_processes_match_roles_without_pod_conditions_only() {
        let host = Caller::from_ids(1000, 1000, Some(42));
        assert_eq!(pod_mismatch(&role(PodConditions::default()), &host), None);
        let why = pod_mismatch(&role(payments()), &host).unwrap();
        assert!(why.contains("runs in no pod"), "{why}");
    }

    #[test]
    fn a_caller_in_an_unknown_pod_matches_no_role() {
        let mut c = in_pod("payments", Some("api"), &[], None);
        if let Some(p) = c.pod.as_mut() {
            p.seen = PodSeen::Unknown("the kubelet does not list pod 6f1c2f0a-3b1e-4c7e-9a51-0d2b8c7e4f10".into());
        }
        for r in [role(PodConditions::default()), role(payments())] {
            let why = pod_mismatch(&r, &c).unwrap();
            assert!(why.contains("cannot be found (the kubelet does not list pod"), "{why}");
        }
        // Not looked up (no [kubernetes]): only pod conditions fail.
        if let Some(p) = c.pod.as_mut() {
            p.seen = PodSeen::NotLookedUp;
        }
        assert_eq!(pod_mismatch(&role(PodConditions::default()), &c), None);
        assert!(pod_mismatch(&role(payments()), &c).unwrap().contains("not looked up"));
    }
}
