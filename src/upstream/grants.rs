//! The grants: RFC 8693 token exchange and client credentials. Builds the request, reads the
//! answer (tolerating what real providers send), maps refusals to messages that say what to
//! change, and accepts a token only with a known lifetime and, for JWTs, a verified signature.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::{Grant, IdentitySettings, TargetParameter};
use crate::error::ProviderError;
use crate::oauth::{GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE};
use crate::token::{IssuedToken, Secret};

use super::ParseError;
use super::client::ProviderClient;
use super::discovery::Metadata;
use super::jwks::{decode_unverified, looks_like_jwt};

/// A credential for one exchange, already read.
#[derive(Debug, Clone)]
pub struct PresentedToken {
    pub token: Secret,
    pub token_type: String,
}

/// One exchange to perform.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    pub identity: &'a IdentitySettings,
    pub audience: &'a str,
    pub scopes: &'a BTreeSet<String>,
    pub subject: Option<&'a PresentedToken>,
    pub actor: Option<&'a PresentedToken>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    issued_token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

/// A successful token endpoint answer, checked for what the agent needs.
#[derive(Debug)]
pub struct TokenAnswer {
    pub access_token: Secret,
    pub issued_token_type: Option<String>,
    pub expires_in: Option<Duration>,
    pub scope: Option<String>,
}

/// Parses a 200 answer of a token endpoint (RFC 6749 section 5.1 / RFC 8693 section 2.2.1),
/// tolerating what real providers do: extra members, `token_type` in any case, `expires_in` as
/// a string or missing. The error completes "provider X …".
pub fn parse_token_answer(body: &[u8]) -> Result<TokenAnswer, ParseError> {
    let r: TokenResponse = serde_json::from_slice(body).map_err(ParseError::TokenAnswer)?;
    let access_token = r
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(ParseError::NoAccessToken)?;
    // RFC 6749 appendix A.12: an access token is visible ASCII; anything else (control
    // characters among them) would reach the callers' terminals and headers.
    if !access_token.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(ParseError::TokenCharacters);
    }
    let access_token = Secret::new(access_token);
    let token_type = r.token_type.unwrap_or_default();
    if !token_type.eq_ignore_ascii_case("bearer") && !token_type.eq_ignore_ascii_case("n_a") {
        return Err(ParseError::NotBearer(token_type));
    }
    let expires_in = match r.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|v| v.is_finite() && *v >= 1.0 && *v < 1e10)
    .map(Duration::from_secs_f64);
    Ok(TokenAnswer {
        access_token,
        issued_token_type: r.issued_token_type,
        expires_in,
        scope: r.scope,
    })
}

/// An OAuth error answer (RFC 6749 section 5.2), from the token endpoint and the people grants.
#[derive(Deserialize)]
pub(super) struct OAuthError {
    pub error: String,
    pub error_description: Option<String>,
}

impl ProviderClient {
    /// Performs one exchange (RFC 8693) or client credentials request and verifies the result.
    pub async fn exchange(&self, req: &ExchangeRequest<'_>) -> Result<IssuedToken, ProviderError> {
        let result = self.exchange_inner(req).await;
        self.record(result.as_ref().map(|_| ()));
        result
    }

    async fn exchange_inner(&self, req: &ExchangeRequest<'_>) -> Result<IssuedToken, ProviderError> {
        let s = &self.settings;
        let meta = self.metadata().await?;
        let mut form: Vec<(&str, String)> = Vec::new();
        match req.identity.grant {
            Grant::TokenExchange => {
                form.push(("grant_type", GRANT_TOKEN_EXCHANGE.into()));
                let subject = req.subject.ok_or_else(|| {
                    ProviderError::local(format!(
                        "identity {:?} has no subject credential for the exchange",
                        req.identity.name
                    ))
                })?;
                form.push(("subject_token", subject.token.expose().to_string()));
                form.push(("subject_token_type", subject.token_type.clone()));
                if let Some(actor) = req.actor {
                    form.push(("actor_token", actor.token.expose().to_string()));
                    form.push(("actor_token_type", actor.token_type.clone()));
                }
                form.push(("requested_token_type", req.identity.requested_token_type.clone()));
            }
            Grant::ClientCredentials => form.push(("grant_type", GRANT_CLIENT_CREDENTIALS.into())),
        }
        let target = s.target_parameter.unwrap_or(match req.identity.grant {
            Grant::TokenExchange => TargetParameter::Audience,
            Grant::ClientCredentials => TargetParameter::Resource,
        });
        if matches!(target, TargetParameter::Audience | TargetParameter::Both) {
            form.push(("audience", req.audience.to_string()));
        }
        if matches!(target, TargetParameter::Resource | TargetParameter::Both) {
            form.push(("resource", req.audience.to_string()));
        }
        if !req.scopes.is_empty() {
            form.push(("scope", req.scopes.iter().cloned().collect::<Vec<_>>().join(" ")));
        }
        let builder = self
            .http
            .post(&meta.token_endpoint)
            .header("Accept", "application/json");
        let builder = self.authenticate(builder, &mut form, &meta.token_endpoint)?;
        let sent = SystemTime::now();
        let answer = self
            .send_form(builder, form, "the token request", &meta.token_endpoint)
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(self.error_response(answer.status, &answer.body, answer.retry_after, req));
        }
        let answer = parse_token_answer(&answer.body)
            .map_err(|e| ProviderError::bad_response(format!("provider {:?} {e}", s.name)))?;
        self.accept(answer, req, &meta, sent).await
    }

    fn error_response(
        &self,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
        req: &ExchangeRequest<'_>,
    ) -> ProviderError {
        let s = &self.settings;
        let parsed: Option<OAuthError> = serde_json::from_slice(body).ok();
        if status >= 500 || status == 429 {
            let detail = parsed.map(|e| format!(": {}", e.error)).unwrap_or_default();
            let mut e = ProviderError::unreachable(format!("provider {:?} answered {status}{detail}", s.name));
            e.retry_after = retry_after;
            return e;
        }
        let Some(err) = parsed else {
            return ProviderError::bad_response(format!(
                "provider {:?} answered {status} without an OAuth error body",
                s.name
            ));
        };
        let desc = err.error_description.clone().unwrap_or_default();
        let provider_says = if desc.is_empty() {
            String::new()
        } else {
            format!(" (provider says: {desc})")
        };
        let message = match err.error.as_str() {
            "invalid_target" => format!(
                "provider {:?} refused audience {:?} for client {:?}{provider_says}; register the audience for that client at the provider, or remove it from identity {:?}",
                s.name, req.audience, s.client_id, req.identity.name
            ),
            "invalid_scope" => format!(
                "provider {:?} refused scope {:?} for client {:?}{provider_says}",
                s.name,
                req.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
                s.client_id
            ),
            "invalid_client" | "unauthorized_client" => format!(
                "provider {:?} did not accept client {:?} with {}{provider_says}; check client_id, the secret or key, and the client authentication method registered at the provider",
                s.name,
                s.client_id,
                s.client_auth.method()
            ),
            "invalid_grant" => format!(
                "provider {:?} refused the subject credential of identity {:?}{provider_says}; it may be expired, or not trusted by the provider",
                s.name, req.identity.name
            ),
            "unsupported_grant_type" => format!(
                "provider {:?} does not support grant {:?} for client {:?}{provider_says}",
                s.name,
                req.identity.grant.as_str(),
                s.client_id
            ),
            other => format!(
                "provider {:?} refused the token request: {other}{provider_says}",
                s.name
            ),
        };
        let mut e = ProviderError::rejected(err.error, message);
        e.retry_after = retry_after;
        e
    }

    async fn accept(
        &self,
        r: TokenAnswer,
        req: &ExchangeRequest<'_>,
        meta: &Metadata,
        sent: SystemTime,
    ) -> Result<IssuedToken, ProviderError> {
        let s = &self.settings;
        let TokenAnswer {
            access_token,
            issued_token_type,
            expires_in,
            scope,
        } = r;
        let claims = if looks_like_jwt(access_token.expose()) {
            if s.verify_tokens {
                Some(self.verify(access_token.expose(), req.audience, &meta.issuer).await?)
            } else {
                decode_unverified(access_token.expose())
            }
        } else {
            None
        };
        // Lifetimes come from expires_in; a JWT exp earlier than that wins.
        let now = SystemTime::now();
        let elapsed = now.duration_since(sent).unwrap_or_default();
        let from_expires_in = expires_in.map(|d| d.saturating_sub(elapsed));
        let from_exp = claims.as_ref().and_then(|c| c.exp).map(|exp| {
            let exp = UNIX_EPOCH + Duration::from_secs(exp);
            exp.duration_since(now).unwrap_or_default()
        });
        let lifetime = match (from_expires_in, from_exp) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => {
                return Err(ProviderError::bad_response(format!(
                    "provider {:?} issued a token with neither expires_in nor exp; its lifetime is unknown, so it is not served",
                    s.name
                )));
            }
        };
        if lifetime.is_zero() {
            return Err(ProviderError::verification(format!(
                "provider {:?} issued a token that is already expired by this host's clock; check the clocks of both",
                s.name
            )));
        }
        Ok(IssuedToken::new(
            access_token,
            issued_token_type.unwrap_or_else(|| crate::oauth::TOKEN_TYPE_ACCESS_TOKEN.to_string()),
            scope.unwrap_or_else(|| req.scopes.iter().cloned().collect::<Vec<_>>().join(" ")),
            lifetime,
            claims,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::unix_now;
    use super::*;
    use crate::config::{ClientAuth, ProviderSettings};
    use base64::Engine;
    use std::sync::Arc;

    fn client(verify_tokens: bool) -> ProviderClient {
        let settings = ProviderSettings {
            name: "corp".into(),
            issuer: "https://idp.example".into(),
            token_endpoint: Some("https://idp.example/token".into()),
            jwks_uri: None,
            ca_file: None,
            client_id: "node-17".into(),
            client_auth: ClientAuth::None,
            verify_tokens,
            target_parameter: None,
            max_concurrent: None,
            rate: None,
        };
        ProviderClient::new(Arc::new(settings), Duration::from_secs(5)).unwrap()
    }

    fn identity() -> IdentitySettings {
        IdentitySettings {
            name: "payments".into(),
            provider: "corp".into(),
            grant: Grant::ClientCredentials,
            subject: crate::config::SubjectSource::Client,
            subject_token_type: crate::oauth::TOKEN_TYPE_JWT.into(),
            trusted_issuers: Vec::new(),
            actor_token_file: None,
            actor_token_type: crate::oauth::TOKEN_TYPE_JWT.into(),
            actor_identity: None,
            requested_token_type: crate::oauth::TOKEN_TYPE_ACCESS_TOKEN.into(),
            audiences: vec!["https://payments.internal".into()],
            scopes: Vec::new(),
        }
    }

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.sig",
            enc(&serde_json::json!({"alg": "ES256", "kid": "k"})),
            enc(&claims)
        )
    }

    /// Runs a raw token response body through parsing and acceptance, as the exchange does.
    async fn accept_body(body: serde_json::Value) -> Result<IssuedToken, ProviderError> {
        let c = client(false);
        let id = identity();
        let scopes = BTreeSet::new();
        let req = ExchangeRequest {
            identity: &id,
            audience: "https://payments.internal",
            scopes: &scopes,
            subject: None,
            actor: None,
        };
        let meta = Metadata {
            issuer: "https://idp.example".into(),
            token_endpoint: "https://idp.example/token".into(),
            ..Metadata::default()
        };
        let parsed = parse_token_answer(body.to_string().as_bytes())
            .map_err(|e| ProviderError::bad_response(format!("provider \"corp\" {e}")))?;
        c.accept(parsed, &req, &meta, SystemTime::now()).await
    }

    #[tokio::test]
    async fn token_type_is_accepted_in_any_case_and_extra_members_are_ignored() {
        for tt in ["Bearer", "bearer", "BEARER", "N_A"] {
            let t = accept_body(serde_json::json!({
                "access_token": "opaque-value", "token_type": tt, "expires_in": 300,
                // Keycloak, Azure AD and others add members of their own.
                "refresh_expires_in": 0, "not-before-policy": 0, "session_state": "x",
                "ext_expires_in": 300, "id_token": null, "scope": "",
            }))
            .await
            .unwrap_or_else(|e| panic!("token_type {tt}: {e:?}"));
            assert!((295..=300).contains(&t.lifetime.as_secs()), "{tt}: {:?}", t.lifetime);
        }
        // expires_in as a string (Azure AD v1) works too.
        let t = accept_body(serde_json::json!({"access_token": "o", "token_type": "Bearer", "expires_in": "120"}))
            .await
            .unwrap();
        assert!((115..=120).contains(&t.lifetime.as_secs()), "{:?}", t.lifetime);
        let e = accept_body(serde_json::json!({"access_token": "o", "token_type": "DPoP", "expires_in": 60}))
            .await
            .unwrap_err();
        assert!(e.message.contains("only Bearer tokens"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_missing_expires_in_takes_the_lifetime_from_the_jwt_exp() {
        let exp = unix_now() + 120;
        let token = jwt(
            serde_json::json!({"iss": "https://idp.example", "aud": ["https://payments.internal", "x"], "exp": exp}),
        );
        let t = accept_body(serde_json::json!({"access_token": token, "token_type": "Bearer"}))
            .await
            .unwrap();
        assert!((115..=120).contains(&t.lifetime.as_secs()), "lifetime {:?}", t.lifetime);
        let claims = t.claims.unwrap();
        assert_eq!(claims.aud, vec!["https://payments.internal", "x"], "aud as an array");
        // Neither expires_in nor exp: refused, since the token could never be renewed in time.
        let e = accept_body(serde_json::json!({"access_token": "opaque", "token_type": "Bearer"}))
            .await
            .unwrap_err();
        assert!(e.message.contains("neither expires_in nor exp"), "{}", e.message);
    }

    #[test]
    fn token_answers_need_a_token_and_a_sane_lifetime() {
        assert!(
            parse_token_answer(br#"{"token_type":"Bearer"}"#)
                .unwrap_err()
                .to_string()
                .contains("without an access_token")
        );
        assert!(parse_token_answer(br#"{"access_token":"","token_type":"Bearer"}"#).is_err());
        assert!(
            parse_token_answer(b"[1,2]")
                .unwrap_err()
                .to_string()
                .contains("unusable JSON")
        );
        assert!(
            parse_token_answer(br#"{"access_token":"eyJ\u001b[2J","token_type":"Bearer"}"#)
                .unwrap_err()
                .to_string()
                .contains("outside visible ASCII")
        );
        // A lifetime under a second, negative or absurd is no lifetime: exp must then say.
        for e in ["1e-12", "-5", "1e300", "\"soon\""] {
            let body = format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{e}}}"#);
            assert_eq!(parse_token_answer(body.as_bytes()).unwrap().expires_in, None, "{e}");
        }
        let a = parse_token_answer(br#"{"access_token":"t","token_type":"bearer","expires_in":300}"#).unwrap();
        assert_eq!(a.expires_in, Some(Duration::from_secs(300)));
    }
}
