//! The output formats of `cortexid token` (`--format`): the bare token, the agent's JSON, an
//! `Authorization` header, a Kubernetes `ExecCredential` (kubectl's credential plugin protocol)
//! and a Google executable-sourced credential response. Each prints exactly one line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::oauth::TOKEN_TYPE_JWT;

/// `--format`: how `token` prints the token (each variant's doc is its `--help` text).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum OutputFormat {
    /// The token and a newline.
    #[default]
    Raw,
    /// The agent's JSON answer.
    Json,
    /// A Kubernetes client.authentication.k8s.io/v1 ExecCredential (kubectl credential plugin).
    K8s,
    /// A Google executable-sourced credential response, version 1.
    Google,
    /// `Authorization: Bearer <token>`.
    Header,
}

/// Why a successful answer could not be printed in the asked-for format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormatError {
    /// `access_token` is missing, empty or not a string.
    #[error("the agent's answer has no access_token")]
    NoAccessToken,
    /// `access_token` holds whitespace, control or non-ASCII characters, which would corrupt a
    /// header line or a shell.
    #[error("the agent's access_token is not a single printable word")]
    BadAccessToken,
}

fn unix_seconds(rfc3339: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// When the token expires, as Unix seconds: from `expires_at`, else from `expires_in` and now.
fn expiry_unix(resp: &serde_json::Value) -> Option<u64> {
    if let Some(t) = resp["expires_at"].as_str().and_then(unix_seconds) {
        return Some(t);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    resp["expires_in"].as_u64().map(|s| now.saturating_add(s))
}

/// When the token expires, as RFC 3339: `expires_at` as the agent wrote it, else computed.
fn expiry_rfc3339(resp: &serde_json::Value) -> Option<String> {
    if let Some(t) = resp["expires_at"].as_str().filter(|t| unix_seconds(t).is_some()) {
        return Some(t.to_string());
    }
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(expiry_unix(resp)?))?;
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

/// Formats a successful `/v1/token` answer for stdout.
pub(crate) fn format_token(format: OutputFormat, resp: &serde_json::Value) -> Result<String, FormatError> {
    let token = resp["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or(FormatError::NoAccessToken)?;
    // A token is one word of visible ASCII; anything else would corrupt a header line or a shell.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FormatError::BadAccessToken);
    }
    Ok(match format {
        OutputFormat::Raw => format!("{token}\n"),
        OutputFormat::Json => format!("{resp}\n"),
        OutputFormat::Header => format!("Authorization: Bearer {token}\n"),
        OutputFormat::K8s => {
            let mut status = serde_json::json!({"token": token});
            if let Some(at) = expiry_rfc3339(resp) {
                status["expirationTimestamp"] = at.into();
            }
            let cred = serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": status,
            });
            format!("{cred}\n")
        }
        OutputFormat::Google => {
            let mut out = serde_json::json!({
                "version": 1,
                "success": true,
                "token_type": TOKEN_TYPE_JWT,
                "id_token": token,
            });
            if let Some(at) = expiry_unix(resp) {
                out["expiration_time"] = at.into();
            }
            format!("{out}\n")
        }
    })
}

/// What goes to stdout on failure, if anything: Google's executable protocol wants its error
/// shape there; every other format prints nothing on stdout when it fails.
pub(crate) fn format_error(format: OutputFormat, code: &str, description: &str) -> Option<String> {
    match format {
        OutputFormat::Google => Some(format!(
            "{}\n",
            serde_json::json!({"version": 1, "success": false, "code": code, "message": description})
        )),
        OutputFormat::Raw | OutputFormat::Json | OutputFormat::K8s | OutputFormat::Header => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> serde_json::Value {
        serde_json::json!({"access_token": "eyJ.a.b", "token_type": "Bearer",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "expires_in": 287,
            "expires_at": "2026-11-28T12:00:00Z", "identity": "payments",
            "audience": "https://payments.internal", "scope": "payments.read"})
    }

    fn parse_json(s: &str) -> serde_json::Value {
        assert!(s.ends_with('\n'));
        assert_eq!(s.matches('\n').count(), 1, "one line: {s}");
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn raw_header_and_json_formats() {
        assert_eq!(format_token(OutputFormat::Raw, &answer()).unwrap(), "eyJ.a.b\n");
        assert_eq!(
            format_token(OutputFormat::Header, &answer()).unwrap(),
            "Authorization: Bearer eyJ.a.b\n"
        );
        assert_eq!(
            parse_json(&format_token(OutputFormat::Json, &answer()).unwrap()),
            answer()
        );
    }

    #[test]
    fn k8s_format_is_an_exec_credential() {
        let v = parse_json(&format_token(OutputFormat::K8s, &answer()).unwrap());
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                "status": {"token": "eyJ.a.b", "expirationTimestamp": "2026-11-28T12:00:00Z"}})
        );
        // Without expires_at the expiry is computed from expires_in.
        let v = parse_json(
            &format_token(
                OutputFormat::K8s,
                &serde_json::json!({"access_token": "t", "expires_in": 60}),
            )
            .unwrap(),
        );
        let at = v["status"]["expirationTimestamp"].as_str().unwrap();
        let secs = unix_seconds(at).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs >= now + 58 && secs <= now + 61, "{at}");
        // With neither, the timestamp is left out (kubectl then does not cache).
        let v = parse_json(&format_token(OutputFormat::K8s, &serde_json::json!({"access_token": "t"})).unwrap());
        assert!(v["status"].get("expirationTimestamp").is_none());
    }

    #[test]
    fn google_format_is_an_executable_response() {
        let v = parse_json(&format_token(OutputFormat::Google, &answer()).unwrap());
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "success": true,
                "token_type": "urn:ietf:params:oauth:token-type:jwt", "id_token": "eyJ.a.b",
                "expiration_time": 1_795_867_200u64})
        );
    }

    #[test]
    fn answers_without_a_usable_token_are_errors() {
        for bad in [
            serde_json::json!({"token_type": "Bearer"}),
            serde_json::json!({"access_token": ""}),
            serde_json::json!({"access_token": 5}),
        ] {
            assert_eq!(format_token(OutputFormat::Raw, &bad), Err(FormatError::NoAccessToken));
        }
        let bad = serde_json::json!({"access_token": "a\nX-Evil: 1"});
        assert_eq!(
            format_token(OutputFormat::Header, &bad),
            Err(FormatError::BadAccessToken)
        );
    }

    #[test]
    fn only_google_prints_failures_on_stdout() {
        let out = format_error(OutputFormat::Google, "access_denied", "no role").unwrap();
        assert_eq!(
            parse_json(&out),
            serde_json::json!({"version": 1, "success": false, "code": "access_denied", "message": "no role"})
        );
        for f in [
            OutputFormat::Raw,
            OutputFormat::Json,
            OutputFormat::K8s,
            OutputFormat::Header,
        ] {
            assert!(format_error(f, "x", "y").is_none());
        }
    }
}
