//! `[[role]]`: who a caller must be (every condition given must hold) and which identities,
//! audiences and scopes that grants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::locate::{Seg, at};
use super::model::{IdentitySettings, LoginSettings, Rate, Role, SubjectSource};
use super::raw::{RawClaimValues, RawRole};
use super::validate::{Validator, list_or_none};

impl Validator<'_> {
    /// Validates every `[[role]]` against the identities: it must say who it is for, name defined
    /// identities, and narrow (never widen) their audiences and scopes.
    pub(super) fn roles(
        &mut self,
        raw: &[RawRole],
        identities: &[Arc<IdentitySettings>],
        kubernetes: bool,
        logins: &[Arc<LoginSettings>],
    ) -> Vec<Arc<Role>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, r) in raw.iter().enumerate() {
            // Audit lines and denials name a role: two of one name would be told apart by no one.
            if !seen.insert(r.name.as_str()) {
                self.problem(
                    &at("role", i, "name"),
                    format!("role {:?} is defined twice; give each role its own name", r.name),
                );
            }
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
                    "applies to executables, and this role has none; remove it (executable_sha256 matches in any namespace)".into(),
                );
            }
            let executable_sha256 = r.executable_sha256.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(j, hex)| match parse_sha256(hex) {
                        Ok(digest) => Some(digest),
                        Err(e) => {
                            let path = vec![
                                Seg::Key("role".into()),
                                Seg::Index(i),
                                Seg::Key("executable_sha256".into()),
                                Seg::Index(j),
                            ];
                            self.problem(&path, e.to_string());
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            });
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
                r.user_units.as_ref().map(Vec::len),
                r.executables.as_ref().map(Vec::len),
                r.executable_sha256.as_ref().map(Vec::len),
                r.claims.as_ref().map(BTreeMap::len),
                r.namespaces.as_ref().map(Vec::len),
                r.service_accounts.as_ref().map(Vec::len),
                r.pod_labels.as_ref().map(BTreeMap::len),
                r.containers.as_ref().map(Vec::len),
            ];
            if let Some(login) = &r.login {
                self.login_ref(&at("role", i, "login"), login, logins);
            }
            if conditions.iter().all(|c| c.is_none()) && r.login.is_none() {
                self.problem(
                    &at("role", i, "name"),
                    "a role must say who it is for (users, uids, groups, gids, units, user_units, executables, executable_sha256, claims, pod conditions or login); a role for everyone is never the default".into(),
                );
            }
            for (field, n) in [
                "users",
                "uids",
                "groups",
                "gids",
                "units",
                "user_units",
                "executables",
                "executable_sha256",
                "claims",
                "namespaces",
                "service_accounts",
                "pod_labels",
                "containers",
            ]
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
            if r.user_units.is_some() && r.users.is_none() && r.uids.is_none() {
                self.problem(
                    &at("role", i, "user_units"),
                    "a user's own systemd names its units as that user asks (systemd-run --user --unit=NAME), so any user can run in a user unit of any name; add users or uids to say whose user units".into(),
                );
            }
            let pod = self.pod_conditions(r, i, kubernetes);
            if r.identities.is_empty() {
                self.problem(
                    &at("role", i, "name"),
                    "identities = [...] must name at least one identity".into(),
                );
            }
            let mut role_ids = Vec::new();
            for (j, name) in r.identities.iter().enumerate() {
                match identities.iter().find(|id| &id.name == name) {
                    Some(id) => {
                        if let (SubjectSource::Login(needs), Some(login)) = (&id.subject, &r.login)
                            && needs != login
                        {
                            self.problem(
                                &at("role", i, "login"),
                                format!("identity {name:?} takes its subject from login {needs:?}, not {login:?}; make them the same"),
                            );
                        }
                        role_ids.push(id.clone());
                    }
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
                user_units: r.user_units.clone(),
                executables,
                executables_any_namespace: r.executables_any_namespace,
                executable_sha256,
                claims,
                login: r.login.clone(),
                pod,
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

/// A digest in `executable_sha256` that is not 64 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DigestError {
    #[error("{0:?} has {1} characters; a SHA-256 digest is 64 hexadecimal digits, as `sha256sum FILE` prints it")]
    Length(String, usize),
    #[error("{0:?} is not hexadecimal; a SHA-256 digest is 64 digits 0-9 and a-f, as `sha256sum FILE` prints it")]
    NotHex(String),
}

/// A SHA-256 digest written as 64 hexadecimal digits (either case).
pub(super) fn parse_sha256(s: &str) -> Result<[u8; 32], DigestError> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::NotHex(s.to_string()));
    }
    if s.len() != 64 {
        return Err(DigestError::Length(s.to_string(), s.len()));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
        let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
        *byte = (digit(pair[0]) << 4) | digit(pair[1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{DigestError, parse_sha256};
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

    /// Any user names its own user units, so `user_units` says nothing without whose they are.
    #[test]
    fn user_units_need_users_or_uids() {
        let dir = tempfile::tempdir().unwrap();
        let alone = good(dir.path()).replace(
            "users = [\"payments\"]\nuids = [0]\n",
            "user_units = [\"sync.service\"]\n",
        );
        let err = parse(&alone, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "role[0].user_units");
        assert!(err.problems[0].message.contains("add users or uids"), "{err}");
        let with_uid = good(dir.path()).replace("uids = [0]\n", "uids = [0]\nuser_units = [\"sync.service\"]\n");
        let cfg = parse(&with_uid, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(
            cfg.roles[0].user_units.as_deref(),
            Some(&["sync.service".to_string()][..])
        );
        assert_eq!(cfg.roles[0].units, None);
    }

    #[test]
    fn executable_digests_are_64_hex_digits_and_located_by_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let good_digest = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let text = good(dir.path()).replace(
            "uids = [0]\n",
            &format!(
                "uids = [0]\nexecutable_sha256 = [\n  \"{good_digest}\",\n  \"abc\",\n  \"{}\",\n]\n",
                "z".repeat(64)
            ),
        );
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert_eq!(err.problems.len(), 2, "{err}");
        assert_eq!(err.problems[0].key, "role[0].executable_sha256[1]");
        assert_eq!(err.problems[0].line, Some(line_of("\"abc\"")));
        assert_eq!(
            err.problems[0].message,
            "\"abc\" has 3 characters; a SHA-256 digest is 64 hexadecimal digits, as `sha256sum FILE` prints it"
        );
        assert_eq!(err.problems[1].key, "role[0].executable_sha256[2]");
        assert_eq!(err.problems[1].line, Some(line_of("zzzz")));
        assert!(err.problems[1].message.contains("is not hexadecimal"), "{err}");

        let text = good(dir.path()).replace(
            "uids = [0]\n",
            &format!("uids = [0]\nexecutable_sha256 = [\"{good_digest}\"]\n"),
        );
        let cfg = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        let digest = cfg.roles[0].executable_sha256.as_ref().unwrap()[0];
        assert_eq!(&digest[..4], &[0x9f, 0x86, 0xd0, 0x81]);
        assert_eq!(digest[31], 0x08);
        assert!(!cfg.roles[0].executables_any_namespace);
    }

    #[test]
    fn digests_parse_in_either_case_and_refuse_what_is_not_one() {
        let lower = "00ff".repeat(16);
        assert_eq!(parse_sha256(&lower).unwrap()[..2], [0x00, 0xff]);
        assert_eq!(parse_sha256(&lower.to_uppercase()), parse_sha256(&lower));
        assert_eq!(parse_sha256(""), Err(DigestError::Length(String::new(), 0)));
        assert_eq!(
            parse_sha256(&"a".repeat(65)),
            Err(DigestError::Length("a".repeat(65), 65))
        );
        let prefixed = format!("sha256:{}", &lower[7..]);
        assert_eq!(parse_sha256(&prefixed), Err(DigestError::NotHex(prefixed.clone())));
        let wide = format!("{}é", &lower[..62]);
        assert!(matches!(parse_sha256(&wide), Err(DigestError::NotHex(_))));
    }

    #[test]
    fn executable_conditions_alone_say_who_a_role_is_for_but_not_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let only = |keys: &str| good(dir.path()).replace("users = [\"payments\"]\nuids = [0]\n", keys);
        let digest = "0".repeat(64);
        let cfg = parse(
            &only(&format!("executable_sha256 = [\"{digest}\"]\n")),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap();
        assert_eq!(cfg.roles[0].executable_sha256, Some(vec![[0; 32]]));
        let cfg = parse(
            &only("executables = [\"/usr/bin/curl\"]\nexecutables_any_namespace = true\n"),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap();
        assert!(cfg.roles[0].executables_any_namespace);

        let err = parse(
            &only("executable_sha256 = []\n"),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap_err();
        assert_eq!(err.problems[0].key, "role[0].executable_sha256");
        assert!(err.problems[0].message.contains("matches nobody"), "{err}");
    }

    #[test]
    fn two_roles_of_one_name_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path());
        let role = &text[text.find("[[role]]").unwrap()..];
        let role = role[..role[1..].find("\n[").map_or(role.len(), |n| n + 1)].to_string();
        let err = parse(
            &format!("{text}\n{role}"),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.key == "role[1].name" && p.message.contains("is defined twice")),
            "{err}"
        );
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
