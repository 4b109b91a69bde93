//! Configuration: raw serde structs (what the TOML file says) → one validated [`Config`] (what the
//! rest of the agent trusts).
//!
//! Loading collects *every* problem it can find, each located by line and key, so that
//! `cortexid check-config` can print them all at once. Nothing here reads the process
//! environment: the few outside facts (the credentials directory, user lookups) come in through
//! [`LoadContext`].
//!
//! The parts, in the order a file goes through them: `raw` (the serde structs), `locate` (key
//! paths and their lines), `validate` (the validator and its shared checks) with one module per
//! section (`agent`, `provider`, `identity`, `role`, `sink`), and `model` (the validated types,
//! re-exported here).

mod agent;
mod identity;
mod kubernetes;
mod locate;
mod login;
mod model;
mod provider;
mod raw;
mod role;
mod sink;
#[cfg(test)]
mod test_support;
mod validate;

use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigProblem};
use locate::{Locator, Seg, render_path, segments, toml_problem};
use raw::RawConfig;
use validate::Validator;

pub use kubernetes::{KubernetesSettings, PodConditions};
pub use model::AgentSettings;
pub use model::AuditFailure;
pub use model::ClientAuth;
pub use model::Grant;
pub use model::IdentitySettings;
pub use model::LogFormat;
pub use model::ProviderSettings;
pub use model::SinkSettings;
pub use model::SubjectSource;
pub use model::TargetParameter;
pub use model::{AuditTarget, Config, Rate, Role, TrustedIssuer};
pub use model::{LoginFlow, LoginSettings};

/// Where the agent and the command line look for the configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cortexid/cortexid.toml";
/// The agent's socket when `[agent] socket` is not set.
pub(crate) const DEFAULT_SOCKET: &str = "/run/cortexid/agent.sock";

/// Facts from outside the file that loading needs.
pub trait LoadContext {
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), against which relative secret paths resolve.
    fn credentials_directory(&self) -> Option<PathBuf>;
    /// Whether the agent runs under systemd (decides the default audit target).
    fn under_systemd(&self) -> bool;
    /// The uid of a user name (`users`, sink `owner`), or none when there is no such user.
    fn uid_of_user(&self, name: &str) -> Option<u32>;
    /// The gid of a group name (`groups`, `socket_group`, sink `group`), or none when there is no
    /// such group.
    fn gid_of_group(&self, name: &str) -> Option<u32>;
    /// An environment variable that `[kubernetes]` names (`$NODE_NAME`); none when unset.
    fn env(&self, _name: &str) -> Option<String> {
        None
    }
}

/// The real system: environment variables and the user database.
pub struct SystemContext;

impl LoadContext for SystemContext {
    fn credentials_directory(&self) -> Option<PathBuf> {
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
    }
    fn under_systemd(&self) -> bool {
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("JOURNAL_STREAM").is_some()
    }
    fn uid_of_user(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
    fn gid_of_group(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path, ctx: &dyn LoadContext) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.display().to_string(),
        problems: vec![ConfigProblem {
            line: None,
            key: "file".into(),
            message: format!("cannot read the configuration: {e}"),
        }],
    })?;
    parse(&text, path, ctx)
}

/// Validates configuration text; `path` is used for messages and as [`Config::path`].
pub fn parse(text: &str, path: &Path, ctx: &dyn LoadContext) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<ConfigProblem>| ConfigError {
        path: path.display().to_string(),
        problems,
    };
    let locator = Locator::new(text);

    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let raw: RawConfig = match toml::Deserializer::parse(text) {
        Ok(de) => match serde_ignored::deserialize(de, |p| unknown.push(segments(&p))) {
            Ok(raw) => raw,
            Err(e) => return Err(fail(vec![toml_problem(&locator, &e)])),
        },
        Err(e) => return Err(fail(vec![toml_problem(&locator, &e)])),
    };

    let mut v = Validator {
        locator: &locator,
        problems: Vec::new(),
        ctx,
    };
    for p in &unknown {
        v.problem(
            p,
            "unknown key; check its spelling and section (see the example configuration)".into(),
        );
    }
    let config = v.build(raw, path);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        v.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(fail(v.problems))
    }
}

/// Every key in configuration text that no section accepts, as problems show its path
/// (`agent.socket_mod`, `role[1].scope`), each once, in the order of their lines.
///
/// Unlike [`parse`], this looks at nothing but the keys: a fragment with missing fields, wrong
/// types, unknown names or absent files still answers, so documentation snippets can be checked
/// against the sections as they are. Only TOML syntax errors are an error; `path` names the text
/// in them.
pub fn unknown_keys(text: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
    let locator = Locator::new(text);
    let table: toml::Table = text.parse().map_err(|e| ConfigError {
        path: path.display().to_string(),
        problems: vec![toml_problem(&locator, &e)],
    })?;
    let mut found = raw::unknown_keys(table);
    found.sort_by_key(|p| locator.line(p).unwrap_or(usize::MAX));
    let mut out: Vec<String> = Vec::new();
    for p in found {
        let key = render_path(&p);
        if !out.contains(&key) {
            out.push(key);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::test_support::{TestContext, good};
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_good_config_loads_with_defaults_filled_in() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(cfg.agent.min_remaining, Duration::from_secs(30));
        assert_eq!(cfg.agent.socket_mode, 0o666);
        assert_eq!(cfg.agent.audit_log, AuditTarget::Stderr);
        assert_eq!(cfg.identities.len(), 2);
        assert_eq!(cfg.identities[1].subject, SubjectSource::Client);
        let role = &cfg.roles[0];
        assert_eq!(
            role.uids.as_ref().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![0, 1001]
        );
        assert!(matches!(cfg.providers[0].client_auth, ClientAuth::SecretBasic(_)));
    }

    #[test]
    fn unknown_keys_are_found_beside_missing_and_mistyped_values() {
        let text = r#"
[agent]
refresh_at = "high"
socket_mod = "0666"

[[identity]]
name = "payments"
scope = ["payments.read"]
trusted_issuers = [{ issuer = "https://ci.example.com", jwks_uri = "https://ci.example.com/jwks", audience = "x", ca = "/ca.pem" }]

[[identity]]
provider = 1
audience = "https://payments.internal"

[agnet]
"#;
        assert_eq!(
            unknown_keys(text, Path::new("t.toml")).unwrap(),
            vec![
                "agent.socket_mod",
                "identity[0].scope",
                "identity[0].trusted_issuers[0].ca",
                "identity[1].audience",
                "agnet",
            ]
        );
        let err = unknown_keys("[agent]\nsocket = \n", Path::new("t.toml")).unwrap_err();
        assert_eq!(err.problems[0].line, Some(2), "{err}");
    }

    #[test]
    fn unknown_keys_agree_with_parse_on_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace("refresh_at = 0.8", "refresh_at = 0.8\nrefresh_jiter = 0.1");
        assert_eq!(
            unknown_keys(&good(dir.path()), Path::new("t.toml")).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            unknown_keys(&text, Path::new("t.toml")).unwrap(),
            vec!["agent.refresh_jiter"]
        );
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "agent.refresh_jiter");
    }
}
