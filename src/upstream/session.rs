//! What the people grants share (SPEC section 8): the tokens a sign-in or refresh returns
//! ([`SessionGrant`]), one form POST to a provider endpoint with a login client's credentials,
//! and the provider's refusals turned into messages. The grants themselves are in
//! [`super::device`], [`super::code`] and [`super::refresh`]; ID tokens are checked in
//! [`super::id_token`].

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::ClientAuth;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::token::Secret;

use super::client::ProviderClient;
use super::discovery::Metadata;
use super::grants::OAuthError;
use super::id_token::IdTokenCheck;
use super::jwks::decode_unverified;
use super::parse_token_answer;

/// What a provider hands out when a person signs in or a session is refreshed. The refresh and
/// ID tokens are [`Secret`]s: never printed, zeroised when dropped. `id_claims` are the claims
/// of `id_token`, filled only after it was validated (signature, `iss`, `aud`, `azp`, `exp`,
/// `nonce`, and on a refresh the same `sub`).
#[derive(Debug)]
pub struct SessionGrant {
    pub access_token: Secret,
    /// From `expires_in`, else from the access token's `exp` when it is a JWT.
    pub expires_in: Option<Duration>,
    pub scope: Option<String>,
    /// A rotated refresh token replaces the old one; `None` means keep using the old one.
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
    pub id_claims: Option<Map<String, Value>>,
}

/// The members of a token answer beyond what [`parse_token_answer`] reads.
#[derive(Deserialize)]
struct SessionExtras {
    refresh_token: Option<String>,
    id_token: Option<String>,
}

/// A provider's answer to one form POST: status, body and `Retry-After`.
pub(super) struct Answer {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
    pub retry_after: Option<Duration>,
}

/// Which endpoint a request goes to, to name it in messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    DeviceAuthorization,
    DevicePoll,
    Code,
    Refresh,
    Revocation,
}

impl Step {
    fn what(self) -> &'static str {
        match self {
            Step::DeviceAuthorization => "the device authorization request",
            Step::DevicePoll => "the device code",
            Step::Code => "the authorization code",
            Step::Refresh => "the refresh token",
            Step::Revocation => "the revocation request",
        }
    }
}

/// A provider's text without control characters (it ends up in terminals and logs).
pub(super) fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

impl ProviderClient {
    /// POSTs `form` to `url` with the login client's credentials. A transport failure is
    /// `Unreachable`; any answer, refusals included, is returned for the caller to read.
    pub(super) async fn post_as(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        url: &str,
        meta: &Metadata,
        mut form: Vec<(&'static str, String)>,
        step: Step,
    ) -> Result<Answer, ProviderError> {
        let builder = self.http.post(url).header("Accept", "application/json");
        let builder = self.authenticate_as(client_id, auth, builder, &mut form, &meta.token_endpoint)?;
        let result = self.send_form(builder, form, step.what(), url).await;
        // Only reachability goes into the provider's health: one person's refused sign-in is
        // not the provider's fault.
        match &result {
            Err(e) if e.kind == ProviderErrorKind::Unreachable => self.record(Err(e)),
            _ => self.record(Ok(())),
        }
        result
    }

    /// Sends `form` on `builder` as `application/x-www-form-urlencoded`, zeroising it once
    /// encoded. A transport failure is `Unreachable`, naming `what` and `url`; any answer is
    /// returned for the caller to read.
    pub(super) async fn send_form(
        &self,
        builder: reqwest::RequestBuilder,
        mut form: Vec<(&'static str, String)>,
        what: &str,
        url: &str,
    ) -> Result<Answer, ProviderError> {
        let mut body = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                .finish(),
        );
        for (_, v) in form.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        let resp = builder
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(std::mem::take(&mut *body))
            .send()
            .await
            .map_err(|e| self.transport_error(what, url, &e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await.map_err(|e| self.transport_error(what, url, &e))?;
        Ok(Answer {
            status,
            body: Zeroizing::new(body.to_vec()),
            retry_after,
        })
    }

    /// The RFC 6749 `error` of a refusal, with its description; `None` when the body has none.
    pub(super) fn oauth_error_code(body: &[u8]) -> Option<(String, Option<String>)> {
        serde_json::from_slice::<OAuthError>(body)
            .ok()
            .map(|e| (e.error, e.error_description))
    }

    /// A refusal as a [`ProviderError`]: 5xx and 429 are `Unreachable` (retrying can help), an
    /// RFC 6749 error is `Rejected` with the provider's code (`invalid_grant` ends a session),
    /// anything else is a bad response.
    pub(super) fn people_error(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        answer: &Answer,
        step: Step,
    ) -> ProviderError {
        let name = &self.settings.name;
        let status = answer.status;
        let parsed = Self::oauth_error_code(&answer.body);
        if status >= 500 || status == 429 {
            let detail = parsed.map(|(e, _)| format!(": {e}")).unwrap_or_default();
            let mut e = ProviderError::unreachable(format!(
                "provider {name:?} answered {status} to {}{detail}",
                step.what()
            ));
            e.retry_after = answer.retry_after;
            return e;
        }
        let Some((code, desc)) = parsed else {
            return ProviderError::bad_response(format!(
                "provider {name:?} answered {} with {status} without an OAuth error body",
                step.what()
            ));
        };
        let provider_says = desc
            .filter(|d| !d.is_empty())
            .map(|d| format!(" (provider says: {})", printable(&d)))
            .unwrap_or_default();
        let code_shown = printable(&code);
        let message = match code.as_str() {
            "invalid_grant" => format!(
                "provider {name:?} refused {} with invalid_grant{provider_says}: it is expired, used or revoked; sign in again",
                step.what()
            ),
            "invalid_client" | "unauthorized_client" => format!(
                "provider {name:?} did not accept login client {client_id:?} with {}{provider_says}; register it at the provider as a native (public) client allowed this grant, or fix client_id and client_auth of the [[login]]",
                auth.method()
            ),
            "invalid_scope" => format!(
                "provider {name:?} refused the scopes of the sign-in{provider_says}; change scopes of the [[login]]"
            ),
            "unsupported_grant_type" => format!(
                "provider {name:?} does not offer this sign-in grant to login client {client_id:?}{provider_says}"
            ),
            _ => format!("provider {name:?} refused {}: {code_shown}{provider_says}", step.what()),
        };
        let mut e = ProviderError::rejected(code, message);
        e.retry_after = answer.retry_after;
        e
    }

    /// Reads a 200 token answer of a sign-in or refresh: the access token (as any token
    /// answer), the refresh and ID tokens, and the ID token validated against `check`. With
    /// `require_id_token`, an answer without one is refused: a session must know its person.
    pub(super) async fn session_grant(
        &self,
        answer: &Answer,
        meta: &Metadata,
        check: &IdTokenCheck<'_>,
        require_id_token: bool,
    ) -> Result<SessionGrant, ProviderError> {
        let name = &self.settings.name;
        let parsed = parse_token_answer(&answer.body)
            .map_err(|e| ProviderError::bad_response(format!("provider {name:?} {e}")))?;
        let extras: SessionExtras = serde_json::from_slice(&answer.body)
            .map_err(|e| ProviderError::bad_response(format!("provider {name:?} answered with unusable JSON: {e}")))?;
        let refresh_token = extras.refresh_token.filter(|t| !t.is_empty()).map(Secret::new);
        let id_token = extras.id_token.filter(|t| !t.is_empty()).map(Secret::new);
        let id_claims = match &id_token {
            Some(t) => Some(self.validate_id_token(t.expose(), meta, check).await?),
            None if require_id_token => {
                return Err(ProviderError::bad_response(format!(
                    "provider {name:?} answered the sign-in without an id_token, so the person is unknown; add \"openid\" to the scopes of the [[login]]"
                )));
            }
            None => None,
        };
        let expires_in = parsed.expires_in.or_else(|| {
            let exp = decode_unverified(parsed.access_token.expose())?.exp?;
            let left = exp.checked_sub(super::http::unix_now())?;
            (left > 0).then(|| Duration::from_secs(left))
        });
        Ok(SessionGrant {
            access_token: parsed.access_token,
            expires_in,
            scope: parsed.scope,
            refresh_token,
            id_token,
            id_claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderSettings;
    use std::sync::Arc;

    fn client() -> ProviderClient {
        let settings = ProviderSettings {
            name: "corp".into(),
            issuer: "https://idp.example".into(),
            token_endpoint: None,
            jwks_uri: None,
            ca_file: None,
            client_id: "node".into(),
            client_auth: ClientAuth::None,
            verify_tokens: true,
            target_parameter: None,
            max_concurrent: None,
            rate: None,
        };
        ProviderClient::new(Arc::new(settings), Duration::from_secs(5)).unwrap()
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: Zeroizing::new(body.as_bytes().to_vec()),
            retry_after: Some(Duration::from_secs(3)),
        }
    }

    #[test]
    fn refusals_keep_the_providers_code_and_say_what_to_do() {
        let c = client();
        let err =
            |status, body: &str, step| c.people_error("cortexid-login", &ClientAuth::None, &answer(status, body), step);

        let e = err(
            400,
            r#"{"error":"invalid_grant","error_description":"grant \u001b[31mrevoked"}"#,
            Step::Refresh,
        );
        assert_eq!(
            e.provider_code(),
            Some("invalid_grant"),
            "the agent ends the session on this"
        );
        assert!(
            e.message.contains("sign in again") && e.message.contains("grant [31mrevoked"),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\u{1b}'), "control characters are dropped");

        let e = err(401, r#"{"error":"invalid_client"}"#, Step::DeviceAuthorization);
        assert_eq!(e.provider_code(), Some("invalid_client"));
        assert!(
            e.message.contains("\"cortexid-login\"") && e.message.contains("native (public) client"),
            "{}",
            e.message
        );

        // 5xx and 429 can pass: retried with backoff, Retry-After kept.
        for status in [500, 503, 429] {
            let e = err(status, r#"{"error":"temporarily_unavailable"}"#, Step::Refresh);
            assert_eq!(e.kind, ProviderErrorKind::Unreachable, "{status}");
            assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        }
        let e = err(404, "<html>not found</html>", Step::Revocation);
        assert_eq!(e.kind, ProviderErrorKind::BadResponse);
        assert!(
            e.message.contains("the revocation request") && e.message.contains("404"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn sign_ins_need_an_id_token_and_lifetimes_fall_back_to_the_jwt_exp() {
        use base64::Engine;
        let c = client();
        let meta = Metadata::default();
        let check = IdTokenCheck {
            client_id: "cortexid-login",
            nonce: None,
            sub: None,
        };
        let e = c
            .session_grant(
                &answer(200, r#"{"access_token":"a","token_type":"Bearer","expires_in":60}"#),
                &meta,
                &check,
                true,
            )
            .await
            .unwrap_err();
        assert!(
            e.message.contains("without an id_token") && e.message.contains("openid"),
            "{}",
            e.message
        );

        // A refresh may come without an ID token; a JWT access token's exp gives its lifetime.
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = super::super::http::unix_now() + 120;
        let at = format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "ES256"})),
            enc(serde_json::json!({"exp": exp}))
        );
        let body =
            serde_json::json!({"access_token": at, "token_type": "Bearer", "refresh_token": "r2", "scope": "openid"});
        let g = c
            .session_grant(&answer(200, &body.to_string()), &meta, &check, false)
            .await
            .unwrap();
        assert_eq!(g.refresh_token.as_ref().map(Secret::expose), Some("r2"));
        assert!(g.id_token.is_none() && g.id_claims.is_none());
        let left = g.expires_in.unwrap().as_secs();
        assert!((115..=120).contains(&left), "{left}");
        // An empty refresh_token is none at all (keep the old one).
        let g = c
            .session_grant(
                &answer(200, r#"{"access_token":"a","token_type":"Bearer","refresh_token":""}"#),
                &meta,
                &check,
                false,
            )
            .await
            .unwrap();
        assert!(g.refresh_token.is_none() && g.expires_in.is_none());
    }

    #[test]
    fn a_session_grant_never_shows_its_tokens() {
        let g = SessionGrant {
            access_token: Secret::new("access-value".into()),
            expires_in: None,
            scope: None,
            refresh_token: Some(Secret::new("refresh-value".into())),
            id_token: Some(Secret::new("id-value".into())),
            id_claims: None,
        };
        let shown = format!("{g:?}");
        for v in ["access-value", "refresh-value", "id-value"] {
            assert!(!shown.contains(v), "{shown}");
        }
    }
}
