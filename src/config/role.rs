//! `[[role]]`: who a caller must be (every condition given must hold) and which identities,
//! audiences and scopes that grants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::locate::{Seg, at};
use super::model::{IdentitySettings, Rate, Role};
use super::raw::{RawClaimValues, RawRole};
use super::validate::{Validator, list_or_none};

impl Validator<'_> {
    /// Validates every `[[role]]` against the identities: it must say who it is for, name defined
    /// identities, and narrow (never widen) their audiences and scopes.
    pub(super) fn roles(&mut self, raw: &[RawRole], identities: &[Arc<IdentitySettings>]) -> Vec<Arc<Role>> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let mut uids: Option<BTreeSet<u32>> = r.uids.as_ref().map(|u| u.iter().copied().collect());
            if let Some(users) = &r.users {
                let set = uids.get_or_insert_with(BTreeSet::new);
                for (j, name) in users.iter().enumerate() {
                    let path = vec![
                        Seg::Key("role".into()),
                        Seg::Index(i),
                        Seg::Key("users".into()),
                        Seg::Index(j),
                    ];
                    if let Some(uid) = self.uid(&path, name) {
                        set.insert(uid);
                    }
                }
            }
            let mut gids: Option<BTreeSet<u32>> = r.gids.as_ref().map(|g| g.iter().copied().collect());
            if let Some(groups) = &r.groups {
                let set = gids.get_or_insert_with(BTreeSet::new);
                for (j, name) in groups.iter().enumerate() {
                    let path = vec![
                        Seg::Key("role".into()),
                        Seg::Index(i),
                        Seg::Key("groups".into()),
                        Seg::Index(j),
                    ];
                    if let Some(gid) = self.gid(&path, name) {
                        set.insert(gid);
                    }
                }
            }
            let executables = r.executables.as_ref().map(|list| {
                list.iter()
                    .map(|e| self.absolute(&at("role", i, "executables"), e))
                    .collect::<Vec<_>>()
            });
            if r.executables_any_namespace && r.executables.is_none() {
                self.problem(
                    &at("role", i, "executables_any_namespace"),
                    "applies to executables, and this role has none; remove it".into(),
                );
            }
            let claims = r.claims.as_ref().map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let values = match v {
                            RawClaimValues::One(s) => vec![s.clone()],
                            RawClaimValues::Many(list) => list.clone(),
                        };
                        (k.clone(), values)
                    })
                    .collect::<BTreeMap<_, _>>()
            });
            let conditions = [
                r.users.as_ref().map(Vec::len),
                r.uids.as_ref().map(Vec::len),
                r.groups.as_ref().map(Vec::len),
                r.gids.as_ref().map(Vec::len),
                r.units.as_ref().map(Vec::len),
                r.executables.as_ref().map(Vec::len),
                r.claims.as_ref().map(BTreeMap::len),
            ];
            if conditions.iter().all(|c| c.is_none()) {
                self.problem(
                    &at("role", i, "name"),
                    "a role must say who it is for (users, uids, groups, gids, units, executables or claims); a role for everyone is never the default".into(),
                );
            }
            for (field, n) in ["users", "uids", "groups", "gids", "units", "executables", "claims"]
                .iter()
                .zip(conditions)
            {
                if n == Some(0) {
                    self.problem(
                        &at("role", i, field),
                        "an empty list matches nobody; remove the key or name who it is for".into(),
                    );
                }
            }
            if r.identities.is_empty() {
                self.problem(
                    &at("role", i, "name"),
                    "identities = [...] must name at least one identity".into(),
                );
            }
            let mut role_ids = Vec::new();
            for (j, name) in r.identities.iter().enumerate() {
                match identities.iter().find(|id| &id.name == name) {
                    Some(id) => role_ids.push(id.clone()),
                    None => {
                        let known: Vec<&str> = identities.iter().map(|i| i.name.as_str()).collect();
                        self.problem(
                            &[
                                Seg::Key("role".into()),
                                Seg::Index(i),
                                Seg::Key("identities".into()),
                                Seg::Index(j),
                            ],
                            format!("no [[identity]] named {name:?}; defined: {}", list_or_none(&known)),
                        );
                    }
                }
            }
            if let Some(auds) = &r.audiences {
                for (j, aud) in auds.iter().enumerate() {
                    if !role_ids.is_empty() && !role_ids.iter().any(|id| id.audiences.contains(aud)) {
                        self.problem(
                            &[Seg::Key("role".into()), Seg::Index(i), Seg::Key("audiences".into()), Seg::Index(j)],
                            format!("audience {aud:?} is not allowed by any identity of this role; add it to the identity's audiences or remove it here"),
                        );
                    }
                }
            }
            if let Some(scopes) = &r.scopes {
                for (j, scope) in scopes.iter().enumerate() {
                    if !role_ids.is_empty() && !role_ids.iter().any(|id| id.scopes.contains(scope)) {
                        self.problem(
                            &[Seg::Key("role".into()), Seg::Index(i), Seg::Key("scopes".into()), Seg::Index(j)],
                            format!("scope {scope:?} is beyond the ceiling of every identity of this role; add it to the identity's scopes or remove it here"),
                        );
                    }
                }
            }
            let rate = match &r.rate {
                Some(s) => match Rate::parse(s) {
                    Ok(rate) => Some(rate),
                    Err(e) => {
                        self.problem(&at("role", i, "rate"), e.to_string());
                        None
                    }
                },
                None if r.agent => Some(Rate {
                    count: 10,
                    per: Duration::from_secs(1),
                }),
                None => None,
            };
            out.push(Arc::new(Role {
                name: r.name.clone(),
                uids,
                gids,
                units: r.units.clone(),
                executables,
                executables_any_namespace: r.executables_any_namespace,
                claims,
                identities: r.identities.clone(),
                audiences: r.audiences.clone(),
                scopes: r.scopes.clone(),
                agent: r.agent,
                rate,
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Rate;
    use crate::config::parse;
    use crate::config::test_support::{TestContext, good};
    use std::time::Duration;

    #[test]
    fn a_role_for_everyone_and_narrowing_beyond_the_identity_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path())
            .replace("users = [\"payments\"]\nuids = [0]\n", "")
            .replace("scopes = [\"payments.read\"]\n", "scopes = [\"payments.admin\"]\n");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        let all = err.to_string();
        assert!(all.contains("must say who it is for"), "{all}");
        assert!(all.contains("payments.admin"), "{all}");
    }

    #[test]
    fn any_namespace_without_executables_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace("uids = [0]\n", "uids = [0]\nexecutables_any_namespace = true\n");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "role[0].executables_any_namespace");
        let line = text
            .lines()
            .position(|l| l.starts_with("executables_any_namespace"))
            .unwrap()
            + 1;
        assert_eq!(err.problems[0].line, Some(line));
        assert!(err.problems[0].message.contains("applies to executables"), "{err}");
        let text = good(dir.path()).replace("uids = [0]\n", "uids = [0]\nexecutables_any_namespace = \"yes\"\n");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert_eq!(err.problems[0].line, Some(line), "{err}");
        assert!(err.problems[0].message.contains("expected a boolean"), "{err}");
    }

    #[test]
    fn agent_roles_are_rate_limited_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let agent = good(dir.path()).replace(
            "scopes = [\"payments.read\"]\n",
            "scopes = [\"payments.read\"]\nagent = true\n",
        );
        let cfg = parse(&agent, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert!(cfg.roles[0].agent);
        assert_eq!(
            cfg.roles[0].rate,
            Some(Rate {
                count: 10,
                per: Duration::from_secs(1)
            })
        );
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(cfg.roles[0].rate, None);
        let bad = good(dir.path()).replace(
            "scopes = [\"payments.read\"]\n",
            "scopes = [\"payments.read\"]\nrate = \"0/s\"\n",
        );
        let err = parse(&bad, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert_eq!(err.problems[0].key, "role[0].rate");
        assert!(err.problems[0].message.contains("allows nothing"), "{err}");
    }
}
