//! What the subcommands share: their exit codes, the `--socket` argument, reading the agent's
//! error answers, and writing to stdout without panicking.
//!
//! Every subcommand returns its process exit code: [`EXIT_OK`], [`EXIT_FAILURE`] (the agent
//! returned an error, the socket is unreachable, a file cannot be read, a check failed) or
//! [`EXIT_USAGE`] (the arguments cannot work; clap exits with it too when it rejects them).

use std::io::Write;
use std::path::PathBuf;

use crate::cmd::client::{Response, SocketClient, default_socket_path};

/// Everything worked.
pub(crate) const EXIT_OK: i32 = 0;
/// The command ran and failed: the agent refused or is unreachable, a file cannot be read, a
/// check failed.
pub const EXIT_FAILURE: i32 = 1;
/// The arguments cannot work (clap's exit code for the arguments it rejects).
pub const EXIT_USAGE: i32 = 2;

/// `--socket`: which agent the client subcommands talk to.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct SocketArg {
    /// The agent's socket [default: $CORTEXID_SOCKET, else /run/cortexid/agent.sock]
    #[arg(long, env = "CORTEXID_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
}

impl SocketArg {
    /// The socket to use: `--socket`, else `$CORTEXID_SOCKET`, else the default.
    pub(crate) fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// A client of that socket.
    pub(crate) fn client(&self) -> SocketClient {
        SocketClient::new(self.path())
    }
}

/// The `error` code and description of a failed answer, with `Retry-After` mentioned.
pub(crate) fn describe_error(resp: &Response) -> (String, String) {
    let body = resp.json().ok();
    let field = |k: &str| body.as_ref().and_then(|b| b[k].as_str()).map(str::to_string);
    let (code, mut description) = match field("error") {
        Some(code) => (code, field("error_description").unwrap_or_default()),
        None => {
            let reason = hyper::StatusCode::from_u16(resp.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            (
                "unexpected_response".to_string(),
                format!("the agent answered HTTP {} {reason} without an error body", resp.status)
                    .trim_end()
                    .to_string(),
            )
        }
    };
    let retry = resp
        .headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let hint = match (resp.retry_after(), retry) {
        (Some(secs), _) => Some(format!("retry after {secs} s")),
        (None, Some(raw)) if !raw.is_empty() => Some(format!("retry after {raw}")),
        _ if resp.status == 429 => Some("retry later".to_string()),
        _ => None,
    };
    if let Some(hint) = hint {
        if description.is_empty() {
            description = hint;
        } else {
            description = format!("{description} ({hint})");
        }
    }
    (code, description)
}

/// Writes to stdout; a closed stdout is a failure to report, not a panic.
pub(crate) fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cortexid: cannot write to stdout: {e}");
            false
        }
    }
}

/// The stderr line for an error code and its description (escaped: see [`printable`]).
pub(crate) fn error_line(code: &str, description: &str) -> String {
    if description.is_empty() {
        format!("cortexid: {}", printable(code))
    } else {
        format!("cortexid: {}: {}", printable(code), printable(description))
    }
}

/// Text from the agent made safe for a terminal: control characters (C0, DEL, C1, newlines
/// included) are written as `\u{..}`, so a provider's error text or a caller-chosen name can
/// neither add lines nor send escape sequences.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    crate::run::logging::escape_control_chars(s, false)
}

/// A JSON answer with every string (and key) made [`printable`], before it is formatted for a
/// terminal.
pub(crate) fn printable_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(printable(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(printable_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (printable(k).into_owned(), printable_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_agent_cannot_drive_the_terminal() {
        let forged = "timeout\u{1b}]0;owned\u{7}\ncortexid: ok\u{9b}2J";
        let line = error_line("upstream_error", forged);
        assert_eq!(
            line,
            "cortexid: upstream_error: timeout\\u{1b}]0;owned\\u{7}\\u{a}cortexid: ok\\u{9b}2J"
        );
        assert!(!line.chars().any(char::is_control));
        let health = serde_json::json!({"status": "ok", "providers": {"corp\u{1b}[2J": {"reachable": false, "last_error": forged}}});
        let shown = crate::cmd::status::format_status(&health);
        assert_eq!(shown.lines().count(), 3, "{shown}");
        assert!(!shown.replace('\n', "").chars().any(char::is_control), "{shown}");
    }

    use std::path::Path;

    use crate::cmd::client::test_agent::{Answer, Seen, serve};
    use crate::cmd::identities::{self, IdentitiesArgs};
    use crate::cmd::status::{self, StatusArgs};
    use crate::cmd::token::{self, OutputFormat, TokenArgs};

    fn response(status: u16, retry: Option<&str>, body: &str) -> Response {
        let mut headers = hyper::HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(hyper::header::RETRY_AFTER, r.parse().unwrap());
        }
        Response {
            status,
            headers,
            body: body.to_string().into(),
        }
    }

    #[test]
    fn errors_carry_the_agents_words_and_retry_after() {
        let r = response(
            403,
            None,
            r#"{"error":"invalid_target","error_description":"not yours"}"#,
        );
        assert_eq!(describe_error(&r), ("invalid_target".into(), "not yours".into()));
        let r = response(
            429,
            Some("3"),
            r#"{"error":"slow_down","error_description":"too many"}"#,
        );
        assert_eq!(
            describe_error(&r),
            ("slow_down".into(), "too many (retry after 3 s)".into())
        );
        let (code, d) = describe_error(&response(429, None, r#"{"error":"slow_down"}"#));
        assert_eq!((code.as_str(), d.as_str()), ("slow_down", "retry later"));
        assert_eq!(error_line(&code, &d), "cortexid: slow_down: retry later");
        let (code, d) = describe_error(&response(502, None, "<html>bad gateway</html>"));
        assert_eq!(code, "unexpected_response");
        assert_eq!(d, "the agent answered HTTP 502 Bad Gateway without an error body");
        assert_eq!(error_line("x", ""), "cortexid: x");
    }

    fn agent(seen: &Seen) -> Answer {
        match seen.uri.as_str() {
            "/v1/health" => Answer::json(200, serde_json::json!({"status": "ok", "cache": {"entries": 0}})),
            "/v1/identities" => Answer::json(200, serde_json::json!({"identities": []})),
            u if u.contains("audience=denied") => Answer::json(
                403,
                serde_json::json!({"error": "invalid_target", "error_description": "not yours"}),
            ),
            u if u.contains("audience=busy") => Answer::json(
                429,
                serde_json::json!({"error": "slow_down", "error_description": "too many"}),
            )
            .header("retry-after", "2"),
            u if u.contains("audience=garbage") => Answer::text(200, "not json"),
            u if u.starts_with("/v1/token") => {
                Answer::json(200, serde_json::json!({"access_token": "eyJ.x.y", "expires_in": 60}))
            }
            _ => Answer::json(404, serde_json::json!({"error": "not_found"})),
        }
    }

    fn starting(seen: &Seen) -> Answer {
        match seen.uri.as_str() {
            "/v1/health" => Answer::json(503, serde_json::json!({"status": "starting"})),
            _ => Answer::text(500, "oops"),
        }
    }

    fn token_args(socket: &Path, audience: &str) -> TokenArgs {
        TokenArgs {
            audience: audience.into(),
            scope: vec![],
            identity: None,
            min_valid: None,
            format: OutputFormat::Raw,
            subject_token_file: None,
            actor_token_file: None,
            socket: SocketArg {
                socket: Some(socket.to_path_buf()),
            },
        }
    }

    /// `token` blocks on its socket: off the runtime that serves the stand-in agent.
    async fn run_token(args: TokenArgs) -> i32 {
        tokio::task::spawn_blocking(move || token::run(args)).await.unwrap()
    }

    #[tokio::test]
    async fn commands_return_the_right_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seen) = serve(dir.path(), agent).await;
        let socket = SocketArg {
            socket: Some(path.clone()),
        };
        assert_eq!(run_token(token_args(&path, "https://ok")).await, EXIT_OK);
        assert_eq!(run_token(token_args(&path, "denied")).await, EXIT_FAILURE);
        assert_eq!(run_token(token_args(&path, "busy")).await, EXIT_FAILURE);
        assert_eq!(run_token(token_args(&path, "garbage")).await, EXIT_FAILURE);
        assert_eq!(run_token(token_args(&path, " ")).await, EXIT_USAGE);
        let mut with_file = token_args(&path, "https://ok");
        with_file.actor_token_file = Some(dir.path().join("missing.jwt"));
        assert_eq!(run_token(with_file).await, EXIT_FAILURE);
        let actor = dir.path().join("actor.jwt");
        std::fs::write(&actor, "eyJ.actor.sig\n").unwrap();
        let mut with_file = token_args(&path, "https://ok");
        with_file.actor_token_file = Some(actor);
        with_file.format = OutputFormat::Google;
        assert_eq!(run_token(with_file).await, EXIT_OK);
        let ids = IdentitiesArgs { socket: socket.clone() };
        assert_eq!(identities::run(ids).await, EXIT_OK);
        assert_eq!(
            status::run(StatusArgs {
                json: true,
                socket: socket.clone()
            })
            .await,
            EXIT_OK
        );
        assert_eq!(status::run(StatusArgs { json: false, socket }).await, EXIT_OK);

        let seen = seen.lock().unwrap().clone();
        let posted = seen.iter().find(|s| s.method == "POST").unwrap();
        assert_eq!(posted.uri, "/v1/token");
        assert!(posted.body.contains("eyJ.actor.sig"));
        assert!(seen.iter().all(|s| !s.uri.contains("actor")));

        // An agent that is starting answers 503 with its health: exit 1.
        let dir2 = tempfile::tempdir().unwrap();
        let (path2, _) = serve(dir2.path(), starting).await;
        let s2 = SocketArg { socket: Some(path2) };
        assert_eq!(
            status::run(StatusArgs {
                json: false,
                socket: s2.clone()
            })
            .await,
            EXIT_FAILURE
        );
        assert_eq!(identities::run(IdentitiesArgs { socket: s2 }).await, EXIT_FAILURE);

        // No agent at all: exit 1.
        let none = SocketArg {
            socket: Some(dir.path().join("none.sock")),
        };
        assert_eq!(
            run_token(token_args(&dir.path().join("none.sock"), "a")).await,
            EXIT_FAILURE
        );
        assert_eq!(
            status::run(StatusArgs {
                json: false,
                socket: none.clone()
            })
            .await,
            EXIT_FAILURE
        );
        assert_eq!(identities::run(IdentitiesArgs { socket: none }).await, EXIT_FAILURE);
    }
}
