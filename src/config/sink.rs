//! `[[sink]]`: token files the agent keeps renewed on disk for software that reads one.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::locate::at;
use super::model::{IdentitySettings, SinkSettings, SubjectSource};
use super::raw::RawSink;
use super::validate::Validator;

impl Validator<'_> {
    /// Validates every `[[sink]]` against the identities: an allowed audience and scopes, a file
    /// in an existing directory that no other sink writes, and a mode "other" cannot read.
    pub(super) fn sinks(&mut self, raw: &[RawSink], identities: &[Arc<IdentitySettings>]) -> Vec<SinkSettings> {
        let mut out = Vec::new();
        let mut paths = BTreeSet::new();
        for (i, s) in raw.iter().enumerate() {
            let identity = identities.iter().find(|id| id.name == s.identity);
            let audience = match (identity, &s.audience) {
                (Some(id), Some(aud)) => {
                    if !id.audiences.contains(aud) {
                        self.problem(
                            &at("sink", i, "audience"),
                            format!(
                                "identity {:?} does not allow audience {aud:?}; allowed: {}",
                                id.name,
                                id.audiences.join(", ")
                            ),
                        );
                    }
                    aud.clone()
                }
                (Some(id), None) => id.audiences.first().cloned().unwrap_or_default(),
                (None, aud) => {
                    self.problem(
                        &at("sink", i, "identity"),
                        format!("no [[identity]] named {:?}", s.identity),
                    );
                    aud.clone().unwrap_or_default()
                }
            };
            if let Some(id) = identity {
                if id.subject == SubjectSource::Caller {
                    self.problem(
                        &at("sink", i, "identity"),
                        "a sink cannot use a subject = \"caller\" identity: no caller presents a credential".into(),
                    );
                }
                if let SubjectSource::Login(login) = &id.subject {
                    self.problem(
                        &at("sink", i, "identity"),
                        format!("a sink cannot use identity {:?}: its subject is a person's session at login {login:?}, which a file written for anyone must not hold", id.name),
                    );
                }
                for scope in &s.scopes {
                    if !id.scopes.contains(scope) {
                        self.problem(
                            &at("sink", i, "scopes"),
                            format!("scope {scope:?} is beyond identity {:?}'s ceiling", id.name),
                        );
                    }
                }
            }
            let path = self.absolute(&at("sink", i, "path"), &s.path);
            if path.is_absolute() {
                self.private_parent(
                    &at("sink", i, "path"),
                    &path,
                    "systemd: RuntimeDirectory= or tmpfiles.d",
                );
                if !paths.insert(path.clone()) {
                    self.problem(&at("sink", i, "path"), "two sinks write the same file".into());
                }
            }
            let mode = self.mode(&at("sink", i, "mode"), s.mode.as_deref(), 0o600);
            if mode & 0o007 != 0 {
                let what = if mode & 0o004 != 0 {
                    "readable by every user"
                } else {
                    "writable or executable by every user"
                };
                self.problem(
                    &at("sink", i, "mode"),
                    format!("{mode:04o} makes the token {what}; drop the \"other\" bits"),
                );
            }
            let owner = s.owner.as_ref().and_then(|o| self.uid(&at("sink", i, "owner"), o));
            let group = s.group.as_ref().and_then(|g| self.gid(&at("sink", i, "group"), g));
            out.push(SinkSettings {
                identity: s.identity.clone(),
                audience,
                scopes: s.scopes.clone(),
                path,
                mode,
                owner,
                group,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;
    use crate::config::test_support::{TestContext, good, problems};
    use std::path::PathBuf;

    fn with_sinks(dir: &Path, sinks: &str) -> String {
        format!("{}\n{sinks}", good(dir))
    }

    #[test]
    fn a_sink_defaults_to_the_identity_s_first_audience_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = with_sinks(
            dir.path(),
            &format!("[[sink]]\nidentity = \"payments\"\npath = \"{d}/p.jwt\"\nowner = \"payments\"\n"),
        );
        let cfg = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        let sink = &cfg.sinks[0];
        assert_eq!(sink.audience, "https://payments.internal");
        assert_eq!(sink.mode, 0o600);
        assert_eq!(sink.owner, Some(1001));
        assert_eq!(sink.path, PathBuf::from(format!("{d}/p.jwt")));
    }

    #[test]
    fn a_sink_stays_within_its_identity_and_its_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let sinks = format!(
            r#"[[sink]]
identity = "payments"
audience = "https://elsewhere.internal"
scopes = ["payments.admin"]
path = "{d}/p.jwt"
mode = "0644"

[[sink]]
identity = "batch"
path = "{d}/p.jwt"
mode = "0602"

[[sink]]
identity = "nobody"
path = "{d}/missing/n.jwt"
"#
        );
        assert_eq!(
            problems(&with_sinks(dir.path(), &sinks)),
            vec![
                r#"sink[0].audience: identity "payments" does not allow audience "https://elsewhere.internal"; allowed: https://payments.internal, https://ledger.internal"#.to_string(),
                r#"sink[0].scopes: scope "payments.admin" is beyond identity "payments"'s ceiling"#.into(),
                r#"sink[0].mode: 0644 makes the token readable by every user; drop the "other" bits"#.into(),
                "sink[1].path: two sinks write the same file".into(),
                r#"sink[1].mode: 0602 makes the token writable or executable by every user; drop the "other" bits"#.into(),
                r#"sink[2].identity: no [[identity]] named "nobody""#.into(),
                format!("sink[2].path: the directory of {d}/missing/n.jwt does not exist; create it (systemd: RuntimeDirectory= or tmpfiles.d)"),
            ]
        );
    }
}
