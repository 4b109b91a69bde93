//! `[agent]`: the socket, renewal timing, the audit log and logging.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_SOCKET;
use super::locate::key;
use super::model::{AgentSettings, AuditFailure, AuditTarget, LogFormat, Operators};
use super::raw::RawAgent;
use super::validate::Validator;

impl Validator<'_> {
    /// Validates `[agent]`, filling in the default of every key left out.
    pub(super) fn agent(&mut self, a: &RawAgent) -> AgentSettings {
        let socket = match &a.socket {
            Some(s) => self.absolute(&key(&["agent", "socket"]), s),
            None => PathBuf::from(DEFAULT_SOCKET),
        };
        // Another user who can write the socket's directory could put a socket of its own in
        // the agent's place and take the requests (and credentials) sent to it.
        if let Some(dir) = socket.parent().filter(|_| socket.is_absolute())
            && let Err(e) = crate::files::check_private_dir(dir)
        {
            self.problem(&key(&["agent", "socket"]), e.to_string());
        }
        let socket_mode = self.mode(&key(&["agent", "socket_mode"]), a.socket_mode.as_deref(), 0o666);
        let socket_group = a
            .socket_group
            .as_ref()
            .and_then(|g| self.gid(&key(&["agent", "socket_group"]), g));
        let refresh_at = a.refresh_at.unwrap_or(0.8);
        if !(0.5..=0.95).contains(&refresh_at) {
            self.problem(
                &key(&["agent", "refresh_at"]),
                format!("{refresh_at} is out of range; use a fraction from 0.5 to 0.95"),
            );
        }
        let refresh_jitter = a.refresh_jitter.unwrap_or(0.05);
        if !(0.0..=0.2).contains(&refresh_jitter) {
            self.problem(
                &key(&["agent", "refresh_jitter"]),
                format!("{refresh_jitter} is out of range; use a fraction from 0 to 0.2"),
            );
        } else if (0.5..=0.95).contains(&refresh_at) && refresh_at + refresh_jitter >= 1.0 {
            self.problem(
                &key(&["agent", "refresh_jitter"]),
                format!(
                    "refresh_at + refresh_jitter = {} would renew after expiry; lower one of them",
                    refresh_at + refresh_jitter
                ),
            );
        }
        let min_remaining = self.duration(
            &key(&["agent", "min_remaining"]),
            a.min_remaining.as_deref(),
            Duration::from_secs(30),
        );
        let idle_expiry = self.duration(
            &key(&["agent", "idle_expiry"]),
            a.idle_expiry.as_deref(),
            Duration::from_secs(30 * 60),
        );
        let upstream_timeout = self.duration(
            &key(&["agent", "upstream_timeout"]),
            a.upstream_timeout.as_deref(),
            Duration::from_secs(10),
        );
        if upstream_timeout.is_zero() {
            self.problem(&key(&["agent", "upstream_timeout"]), "must be more than zero".into());
        }
        let audit_log = match a.audit_log.as_deref() {
            None if self.ctx.under_systemd() => AuditTarget::Journal,
            None => AuditTarget::Stderr,
            Some("journal") => AuditTarget::Journal,
            Some("stderr") => AuditTarget::Stderr,
            Some(p) => {
                let path = self.absolute(&key(&["agent", "audit_log"]), p);
                self.private_parent(
                    &key(&["agent", "audit_log"]),
                    &path,
                    "systemd: LogsDirectory=cortexid makes /var/log/cortexid",
                );
                AuditTarget::File(path)
            }
        };
        let audit_failure = match a.audit_failure.as_deref() {
            None | Some("closed") => AuditFailure::Closed,
            Some("open") => AuditFailure::Open,
            Some(other) => {
                self.problem(
                    &key(&["agent", "audit_failure"]),
                    format!("{other:?} is not \"closed\" or \"open\""),
                );
                AuditFailure::Closed
            }
        };
        let log_format = match a.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problem(
                    &key(&["agent", "log_format"]),
                    format!("{other:?} is not \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        let metrics_listen = a.metrics_listen.as_deref().and_then(|s| match s.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    &key(&["agent", "metrics_listen"]),
                    format!("{s:?} is not an address like \"127.0.0.1:9464\""),
                );
                None
            }
        });
        let operators = match &a.operators {
            None => Operators::default(),
            Some(names) => {
                let mut ops = Operators {
                    uids: Default::default(),
                    gids: Default::default(),
                };
                let path = key(&["agent", "operators"]);
                for name in names {
                    let (found, what) = match name.strip_prefix('@') {
                        Some(group) => (self.ctx.gid_of_group(group).map(|g| ops.gids.insert(g)), "group"),
                        None => (self.ctx.uid_of_user(name).map(|u| ops.uids.insert(u)), "user"),
                    };
                    if found.is_none() {
                        self.problem(
                            &path,
                            format!(
                                "no {what} named {:?} on this host; name an existing user, or \"@group\" for a group's members",
                                name.trim_start_matches('@')
                            ),
                        );
                    }
                }
                ops
            }
        };
        let state_dir = a.state_dir.as_ref().map(|d| {
            let path = self.absolute(&key(&["agent", "state_dir"]), d);
            if path.is_absolute()
                && let Err(e) = crate::files::check_private_dir(&path)
            {
                self.problem(&key(&["agent", "state_dir"]), e.to_string());
            }
            path
        });
        let state_key_file = a
            .state_key_file
            .as_ref()
            .map(|f| self.secret(&key(&["agent", "state_key_file"]), f));
        let persist_tokens = a.persist_tokens.unwrap_or(false);
        if state_dir.is_none() {
            for (name, given) in [
                ("state_key_file", state_key_file.is_some()),
                ("persist_tokens", persist_tokens),
            ] {
                if given {
                    self.problem(
                        &key(&["agent", name]),
                        "needs state_dir, where the state is kept: add state_dir = \"/var/lib/cortexid\" (systemd StateDirectory=cortexid)".into(),
                    );
                }
            }
        }
        AgentSettings {
            state_dir,
            state_key_file,
            persist_tokens,
            operators,
            socket,
            socket_mode,
            socket_group,
            refresh_at,
            refresh_jitter,
            min_remaining,
            idle_expiry,
            upstream_timeout,
            audit_log,
            audit_failure,
            log_format,
            metrics_listen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::test_support::{TestContext, good, problems};
    use crate::config::{AuditFailure, LogFormat, parse};

    /// An audit log in a directory that is not there yet is refused: another user could make it
    /// first (in /tmp) and own what the agent writes into it.
    #[test]
    fn an_audit_log_in_a_missing_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-yet").join("audit.jsonl");
        let text = good(dir.path()).replace(
            "refresh_at = 0.8",
            &format!("refresh_at = 0.8\naudit_log = \"{}\"", missing.display()),
        );
        let all = problems(&text).join("\n");
        assert!(
            all.contains("agent.audit_log: the directory of") && all.contains("does not exist; create it"),
            "{all}"
        );
    }

    /// A socket where another user could put its own in the agent's place is refused.
    #[test]
    fn a_socket_in_a_directory_another_user_controls_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let text = good(dir.path()).replace(
            &format!("socket = \"{}/agent.sock\"", dir.path().display()),
            &format!("socket = \"{}/agent.sock\"", shared.display()),
        );
        let all = problems(&text).join("\n");
        assert!(
            all.contains(&format!(
                "agent.socket: the directory {} can be written by every user",
                shared.display()
            )),
            "{all}"
        );
    }

    #[test]
    fn operators_are_users_and_groups_that_exist_and_default_to_root() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(cfg.agent.operators.uids, [0].into());
        assert!(cfg.agent.operators.gids.is_empty());
        let text = good(dir.path()).replace(
            "refresh_at = 0.8",
            "refresh_at = 0.8\noperators = [\"payments\", \"@root\"]",
        );
        let cfg = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(
            cfg.agent.operators.uids,
            [1001].into(),
            "root is an operator only if listed"
        );
        assert_eq!(cfg.agent.operators.gids, [0].into());
        let text = good(dir.path()).replace(
            "refresh_at = 0.8",
            "refresh_at = 0.8\noperators = [\"mallory\", \"@nogroup\"]",
        );
        assert_eq!(
            problems(&text),
            vec![
                "agent.operators: no user named \"mallory\" on this host; name an existing user, or \"@group\" for a group's members",
                "agent.operators: no group named \"nogroup\" on this host; name an existing user, or \"@group\" for a group's members",
            ]
        );
    }

    #[test]
    fn state_settings_need_a_state_dir_that_is_absolute_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!((cfg.agent.state_dir, cfg.agent.persist_tokens), (None, false));
        let text = good(dir.path()).replace(
            "refresh_at = 0.8",
            "refresh_at = 0.8\npersist_tokens = true\nstate_key_file = \"state-key\"",
        );
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:5: agent.persist_tokens: needs state_dir"),
            "the line and key are named: {err}"
        );
        assert!(err.contains("agent.state_key_file: \"state-key\" is relative"), "{err}");
        let state = dir.path().join("state");
        let text = good(dir.path()).replace(
            "refresh_at = 0.8",
            &format!(
                "refresh_at = 0.8\npersist_tokens = true\nstate_dir = {:?}",
                state.display().to_string()
            ),
        );
        let cfg = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(cfg.agent.state_dir.as_deref(), Some(state.as_path()));
        assert!(cfg.agent.persist_tokens);
        std::fs::create_dir(&state).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let all = problems(&text);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(
            all[0].starts_with("agent.state_dir: ") && all[0].contains("every user"),
            "{all:?}"
        );
        let text = good(dir.path()).replace("refresh_at = 0.8", "refresh_at = 0.8\nstate_dir = \"state\"");
        assert_eq!(
            problems(&text),
            vec![r#"agent.state_dir: "state" must be an absolute path"#]
        );
    }

    #[test]
    fn renewal_must_come_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace("refresh_at = 0.8", "refresh_at = 0.95\nrefresh_jitter = 0.1");
        assert_eq!(
            problems(&text),
            vec![
                "agent.refresh_jitter: refresh_at + refresh_jitter = 1.05 would renew after expiry; lower one of them"
            ]
        );
    }

    #[test]
    fn each_wrong_agent_value_is_reported_and_defaults_hold_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(cfg.agent.audit_failure, AuditFailure::Closed);
        assert_eq!(cfg.agent.log_format, LogFormat::Text);
        assert_eq!(cfg.agent.metrics_listen, None);
        let text = good(dir.path()).replace(
            "refresh_at = 0.8",
            "refresh_at = 0.8\naudit_log = \"audit.jsonl\"\naudit_failure = \"maybe\"\nlog_format = \"yaml\"\nmetrics_listen = \"localhost\"\nupstream_timeout = \"0s\"\nidle_expiry = \"soon\"",
        );
        let all = problems(&text);
        assert_eq!(
            all,
            vec![
                r#"agent.audit_log: "audit.jsonl" must be an absolute path"#,
                r#"agent.audit_failure: "maybe" is not "closed" or "open""#,
                r#"agent.log_format: "yaml" is not "text" or "json""#,
                r#"agent.metrics_listen: "localhost" is not an address like "127.0.0.1:9464""#,
                "agent.upstream_timeout: must be more than zero",
                r#"agent.idle_expiry: "soon" is not a duration; write it like "30s", "5m" or "1h""#,
            ],
        );
    }
}
