//! The validator: turns the raw file into the model, collecting every problem on the way.
//!
//! [`Validator`] holds the problems found so far and the helpers every section shares (durations,
//! modes, absolute paths, secret files, URLs, users and groups). Each section's checks live in its
//! own module (`agent`, `provider`, `identity`, `role`, `sink`) as more methods on it; [`build`]
//! runs them in the order their references need (identities name providers, roles and sinks name
//! identities).
//!
//! [`build`]: Validator::build

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LoadContext;
use super::locate::{Locator, Seg, render_path};
use super::model::Config;
use super::raw::RawConfig;
use crate::error::ConfigProblem;
use crate::secrets::{SecretFile, check_secret_permissions};

/// Validates one configuration text; every check that fails adds a located problem and carries
/// on with a stand-in value, so one pass finds them all.
pub(super) struct Validator<'a> {
    /// Finds the line of each problem's key.
    pub(super) locator: &'a Locator<'a>,
    /// Every problem found so far, in the order found.
    pub(super) problems: Vec<ConfigProblem>,
    /// The outside facts: credentials directory, systemd, users and groups.
    pub(super) ctx: &'a dyn LoadContext,
}

impl Validator<'_> {
    /// A file the agent writes at `path`: its directory must exist now (one made later could be
    /// made by another user, in a directory every user may write) and only root and the agent
    /// may change it ([`crate::files::check_private_dir`]); `create` says how to make it.
    pub(super) fn private_parent(&mut self, at: &[Seg], path: &std::path::Path, create: &str) {
        match path.parent().filter(|_| path.is_absolute()) {
            Some(dir) if !dir.is_dir() => self.problem(
                at,
                format!(
                    "the directory of {} does not exist; create it ({create})",
                    path.display()
                ),
            ),
            Some(dir) => {
                if let Err(e) = crate::files::check_private_dir(dir) {
                    self.problem(at, e.to_string());
                }
            }
            None => {}
        }
    }

    /// Records a problem at the key `path`, on that key's line.
    pub(super) fn problem(&mut self, path: &[Seg], message: String) {
        let line = self.locator.line(path);
        self.problems.push(ConfigProblem {
            line,
            key: render_path(path),
            message,
        });
    }

    /// A duration such as `"30s"` or `"5m"`; `default` when absent or wrong.
    pub(super) fn duration(&mut self, path: &[Seg], value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(_) => {
                    self.problem(
                        path,
                        format!("{s:?} is not a duration; write it like \"30s\", \"5m\" or \"1h\""),
                    );
                    default
                }
            },
        }
    }

    /// An octal file mode such as `"0640"`; `default` when absent or wrong.
    pub(super) fn mode(&mut self, path: &[Seg], value: Option<&str>, default: u32) -> u32 {
        match value {
            None => default,
            Some(s) => match parse_mode(s) {
                Ok(m) => m,
                Err(e) => {
                    self.problem(path, e.to_string());
                    default
                }
            },
        }
    }

    /// A path that must be absolute (returned as written either way).
    pub(super) fn absolute(&mut self, path: &[Seg], value: &str) -> PathBuf {
        let p = PathBuf::from(value);
        if !p.is_absolute() {
            self.problem(path, format!("{value:?} must be an absolute path"));
        }
        p
    }

    /// A secret file: absolute, or relative to `$CREDENTIALS_DIRECTORY`; must exist and not be
    /// readable by other.
    pub(super) fn secret(&mut self, path: &[Seg], value: &str) -> SecretFile {
        let p = PathBuf::from(value);
        let resolved = if p.is_absolute() {
            p
        } else {
            match self.ctx.credentials_directory() {
                Some(dir) => dir.join(p),
                None => {
                    self.problem(
                        path,
                        format!(
                            "{value:?} is relative, which needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=); use an absolute path or run under systemd"
                        ),
                    );
                    return SecretFile { path: p };
                }
            }
        };
        if let Err(e) = check_secret_permissions(&resolved) {
            self.problem(path, e.to_string());
        }
        SecretFile { path: resolved }
    }

    /// The uid of a user name on this host.
    pub(super) fn uid(&mut self, path: &[Seg], name: &str) -> Option<u32> {
        let uid = self.ctx.uid_of_user(name);
        if uid.is_none() {
            self.problem(
                path,
                format!("no user named {name:?} on this host; create it or use uids = [...]"),
            );
        }
        uid
    }

    /// The gid of a group name on this host.
    pub(super) fn gid(&mut self, path: &[Seg], name: &str) -> Option<u32> {
        let gid = self.ctx.gid_of_group(name);
        if gid.is_none() {
            self.problem(
                path,
                format!("no group named {name:?} on this host; create it or use gids = [...]"),
            );
        }
        gid
    }

    /// Validates every section, in the order their references need, into one [`Config`].
    pub(super) fn build(&mut self, raw: RawConfig, path: &Path) -> Config {
        let agent = self.agent(&raw.agent);
        let providers = self.providers(&raw.provider);
        let logins = self.logins(&raw.login, &providers, agent.state_dir.is_some());
        let identities = self.identities(&raw.identity, &providers, &logins);
        let kubernetes = self.kubernetes(raw.kubernetes.as_ref());
        let roles = self.roles(&raw.role, &identities, kubernetes.is_some(), &logins);
        let sinks = self.sinks(&raw.sink, &identities);
        Config {
            path: path.to_path_buf(),
            agent,
            providers,
            identities,
            roles,
            sinks,
            logins,
            kubernetes,
        }
    }

    /// An `https://` URL (`http://` only to a loopback host), without its trailing slash.
    pub(super) fn url(&mut self, path: &[Seg], value: &str) -> String {
        match url::Url::parse(value) {
            Ok(u) => {
                let loopback = match u.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                match u.scheme() {
                    "https" => {}
                    "http" if loopback => {}
                    "http" => self.problem(
                        path,
                        format!("{value:?} uses http:// to a non-loopback host; tokens must travel over https://"),
                    ),
                    other => self.problem(path, format!("{value:?}: scheme {other:?} is not https")),
                }
                value.trim_end_matches('/').to_string()
            }
            Err(e) => {
                self.problem(path, format!("{value:?} is not a URL: {e}"));
                value.to_string()
            }
        }
    }
}

/// Names for a message: `a, b`, or `none`.
pub(super) fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// A file mode that is not one to four octal digits (optionally after `0o`); holds what was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an octal file mode like \"0640\"")]
pub(crate) struct ModeError(pub String);

/// Parses an octal mode string such as `"0640"`.
pub(crate) fn parse_mode(s: &str) -> Result<u32, ModeError> {
    let bad = || ModeError(s.to_string());
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(bad());
    }
    u32::from_str_radix(digits, 8).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use super::parse_mode;
    use crate::config::test_support::{TestContext, good};
    use crate::config::{ClientAuth, Rate, parse};

    #[test]
    fn a_secret_readable_by_other_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path());
        std::fs::set_permissions(dir.path().join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert!(err.problems[0].message.contains("readable by other"), "{err}");
        assert_eq!(err.problems[0].key, "provider[0].client_secret_file");
    }

    #[test]
    fn relative_secrets_resolve_against_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace(&format!("{}/secret", dir.path().display()), "secret");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert!(err.problems[0].message.contains("CREDENTIALS_DIRECTORY"));
        let cfg = parse(
            &text,
            Path::new("t.toml"),
            &TestContext {
                creds: Some(dir.path().into()),
            },
        )
        .unwrap();
        match &cfg.providers[0].client_auth {
            ClientAuth::SecretBasic(f) => assert_eq!(f.path, dir.path().join("secret")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modes_and_rates_parse() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert_eq!(
            Rate::parse("10/s").unwrap(),
            Rate {
                count: 10,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(Rate::parse("100/m").unwrap().per, Duration::from_secs(60));
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("fast").is_err());
    }

    #[test]
    fn mode_and_rate_refusals_say_what_to_write() {
        assert_eq!(
            parse_mode("0999").unwrap_err().to_string(),
            r#""0999" is not an octal file mode like "0640""#
        );
        assert_eq!(
            Rate::parse("fast").unwrap_err().to_string(),
            r#"rate "fast" is not like "10/s", "100/m" or "5/1s""#
        );
        assert_eq!(
            Rate::parse("0/s").unwrap_err().to_string(),
            r#"rate "0/s" allows nothing; remove the role or raise the count"#
        );
    }
}
