//! The device authorization grant (RFC 8628): ask for a device code and a user code, then poll
//! the token endpoint until the person approved, declined, or the code expired. The agent does
//! the waiting between polls; each call here is one request.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ClientAuth;
use crate::error::ProviderError;
use crate::oauth::GRANT_DEVICE_CODE;
use crate::token::Secret;

use super::client::ProviderClient;
use super::id_token::IdTokenCheck;
use super::session::{SessionGrant, Step, printable};

/// Polling interval when the provider names none (RFC 8628 section 3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A device authorization: what the person is shown, and the code the agent polls with.
#[derive(Debug)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Wait at least this long between polls.
    pub interval: Duration,
    /// The codes are valid for this long.
    pub expires_in: Duration,
}

/// One poll of the token endpoint (RFC 8628 section 3.5).
#[derive(Debug)]
pub enum DevicePoll {
    /// `authorization_pending`: the person has not finished yet.
    Pending,
    /// `slow_down`: poll again, 5 seconds slower from now on.
    SlowDown,
    /// The person signed in.
    Granted(Box<SessionGrant>),
    /// `access_denied`: the person declined.
    Denied,
    /// `expired_token`: the codes expired; a new sign-in is needed.
    Expired,
}

#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: Option<String>,
    user_code: Option<String>,
    verification_uri: Option<String>,
    /// Google's name for `verification_uri` (before RFC 8628 was final).
    verification_url: Option<String>,
    verification_uri_complete: Option<String>,
    expires_in: Option<serde_json::Value>,
    interval: Option<serde_json::Value>,
}

fn seconds(v: Option<&serde_json::Value>) -> Option<Duration> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s| *s > 0 && *s < 1_000_000)
    .map(Duration::from_secs)
}

/// A device authorization answer that cannot be used; completes "provider X …".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceAnswerError(String);

impl From<String> for DeviceAnswerError {
    fn from(s: String) -> Self {
        DeviceAnswerError(s)
    }
}

impl From<&str> for DeviceAnswerError {
    fn from(s: &str) -> Self {
        DeviceAnswerError(s.to_string())
    }
}

/// Parses a device authorization answer (RFC 8628 section 3.2). What the person is shown must be
/// printable (it goes to a terminal) and the URIs absolute `https` (or `http` on loopback).
pub fn parse_device_authorization(body: &[u8]) -> Result<DeviceAuthorization, DeviceAnswerError> {
    let r: RawDeviceAuthorization =
        serde_json::from_slice(body).map_err(|e| format!("answered with unusable JSON: {e}"))?;
    let device_code = r
        .device_code
        .filter(|c| !c.is_empty())
        .ok_or("answered without a device_code")?;
    let user_code = r
        .user_code
        .filter(|c| !c.is_empty())
        .ok_or("answered without a user_code")?;
    let verification_uri = r
        .verification_uri
        .or(r.verification_url)
        .ok_or("answered without a verification_uri")?;
    let shown = |what: &str, v: &str| -> Result<(), DeviceAnswerError> {
        if v.chars().any(char::is_control) || v.len() > 2048 {
            return Err(format!("answered a {what} with control characters or over 2048 bytes").into());
        }
        Ok(())
    };
    let uri_ok = |what: &str, v: &str| -> Result<(), DeviceAnswerError> {
        shown(what, v)?;
        let u = url::Url::parse(v).map_err(|e| format!("answered a {what} that is not a URL ({e})"))?;
        let loopback = matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
        if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
            return Err(format!("answered a {what} that is not https: {}", printable(v)).into());
        }
        Ok(())
    };
    shown("user_code", &user_code)?;
    uri_ok("verification_uri", &verification_uri)?;
    if let Some(c) = &r.verification_uri_complete {
        uri_ok("verification_uri_complete", c)?;
    }
    let expires_in = seconds(r.expires_in.as_ref()).ok_or("answered without a usable expires_in")?;
    Ok(DeviceAuthorization {
        device_code: Secret::new(device_code),
        user_code,
        verification_uri,
        verification_uri_complete: r.verification_uri_complete,
        interval: seconds(r.interval.as_ref()).unwrap_or(DEFAULT_INTERVAL),
        expires_in,
    })
}

impl ProviderClient {
    /// Starts a device sign-in (RFC 8628 section 3.1) for the login client with `scopes`.
    pub async fn device_authorization(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        scopes: &[String],
    ) -> Result<DeviceAuthorization, ProviderError> {
        let name = &self.settings.name;
        let meta = self.login_metadata().await?;
        let url = meta.device_authorization_endpoint.clone().ok_or_else(|| {
            ProviderError::bad_response(format!(
                "provider {name:?} offers no device_authorization_endpoint in its discovery document; use the browser flow"
            ))
        })?;
        let mut form = Vec::new();
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let answer = self
            .post_as(client_id, auth, &url, &meta, form, Step::DeviceAuthorization)
            .await?;
        if answer.status != 200 {
            return Err(self.people_error(client_id, auth, &answer, Step::DeviceAuthorization));
        }
        parse_device_authorization(&answer.body)
            .map_err(|e| ProviderError::bad_response(format!("provider {name:?} device authorization at {url}: {e}")))
    }

    /// Polls once for a device sign-in (RFC 8628 section 3.4). The ID token of a granted
    /// sign-in is validated before the grant is returned.
    pub async fn poll_device(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        device_code: &Secret,
    ) -> Result<DevicePoll, ProviderError> {
        let meta = self.login_metadata().await?;
        let form = vec![
            ("grant_type", GRANT_DEVICE_CODE.to_string()),
            ("device_code", device_code.expose().to_string()),
        ];
        let answer = self
            .post_as(client_id, auth, &meta.token_endpoint, &meta, form, Step::DevicePoll)
            .await?;
        if answer.status == 200 {
            let check = IdTokenCheck {
                client_id,
                nonce: None,
                sub: None,
            };
            let grant = self.session_grant(&answer, &meta, &check, true).await?;
            return Ok(DevicePoll::Granted(Box::new(grant)));
        }
        if answer.status == 400 || answer.status == 401 {
            match Self::oauth_error_code(&answer.body).map(|(c, _)| c).as_deref() {
                Some("authorization_pending") => return Ok(DevicePoll::Pending),
                Some("slow_down") => return Ok(DevicePoll::SlowDown),
                Some("access_denied") => return Ok(DevicePoll::Denied),
                Some("expired_token") => return Ok(DevicePoll::Expired),
                _ => {}
            }
        }
        Err(self.people_error(client_id, auth, &answer, Step::DevicePoll))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_authorizations_parse_with_defaults_and_refuse_what_cannot_be_shown() {
        let a = parse_device_authorization(
            br#"{"device_code":"dc","user_code":"ABCD-EFGH","verification_uri":"https://idp/device",
                 "verification_uri_complete":"https://idp/device?user_code=ABCD-EFGH","expires_in":"600"}"#,
        )
        .unwrap();
        assert_eq!(a.interval, DEFAULT_INTERVAL, "no interval: 5 s (RFC 8628 3.2)");
        assert_eq!(a.expires_in, Duration::from_secs(600));
        assert_eq!(a.user_code, "ABCD-EFGH");
        assert!(!format!("{a:?}").contains("\"dc\""), "the device code is a secret");
        // Google's verification_url is accepted.
        let g = parse_device_authorization(
            br#"{"device_code":"dc","user_code":"X","verification_url":"https://www.google.com/device","expires_in":1800,"interval":5}"#,
        )
        .unwrap();
        assert_eq!(g.verification_uri, "https://www.google.com/device");

        for (body, want) in [
            (
                r#"{"user_code":"X","verification_uri":"https://i/d","expires_in":5}"#,
                "device_code",
            ),
            (
                r#"{"device_code":"d","user_code":"X\u001b[2J","verification_uri":"https://i/d","expires_in":5}"#,
                "control characters",
            ),
            (
                r#"{"device_code":"d","user_code":"X","verification_uri":"http://evil.example/d","expires_in":5}"#,
                "not https",
            ),
            (
                r#"{"device_code":"d","user_code":"X","verification_uri":"https://i/d"}"#,
                "expires_in",
            ),
            ("[]", "unusable JSON"),
        ] {
            let e = parse_device_authorization(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
