//! The grants: `client_credentials` and RFC 8693 token exchange, verification of the subject and
//! actor tokens, and issuing (where the token-shaping faults apply).

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::header::{self, HeaderMap};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value, json};

use super::faults::{Fault, WRONG_AUDIENCE, WRONG_ISSUER};
use super::oauth::{Form, OAuthError, claim_str};
use super::{DevClient, Shared, bump, lock, unix_now};
use crate::oauth::{
    GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE, GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_BEARER, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT,
};
use crate::upstream::keys;

impl Shared {
    pub(super) fn token(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request(
                "token requests must be application/x-www-form-urlencoded",
            ));
        }
        let form = Form::parse(body);
        let client = self.authenticate(headers, &form)?;
        let grant = form
            .single("grant_type")?
            .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
        match grant {
            GRANT_CLIENT_CREDENTIALS => {
                let (aud, scopes) = check_target_and_scope(&client, &form)?;
                self.issue(&client, client.client_id.clone(), aud, scopes, None, None)
            }
            GRANT_TOKEN_EXCHANGE => self.token_exchange(&client, &form),
            GRANT_DEVICE_CODE => self.device_code_grant(&client, &form),
            GRANT_AUTHORIZATION_CODE => self.authorization_code_grant(&client, &form),
            GRANT_REFRESH_TOKEN => self.refresh_grant(&client, &form),
            other => Err(OAuthError::new(
                "unsupported_grant_type",
                format!(
                    "grant_type {other} is not supported; use {GRANT_CLIENT_CREDENTIALS} or {GRANT_TOKEN_EXCHANGE}"
                ),
            )),
        }
    }

    fn token_exchange(&self, client: &DevClient, form: &Form) -> Result<Value, OAuthError> {
        let subject_token = form
            .single("subject_token")?
            .ok_or_else(|| OAuthError::invalid_request("subject_token is required"))?;
        let subject_type = form
            .single("subject_token_type")?
            .ok_or_else(|| OAuthError::invalid_request("subject_token_type is required"))?;
        check_token_type(subject_type, "subject_token_type")?;
        let actor_token = form.single("actor_token")?;
        match (actor_token, form.single("actor_token_type")?) {
            (Some(_), None) => {
                return Err(OAuthError::invalid_request(
                    "actor_token_type is required with actor_token",
                ));
            }
            (None, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "actor_token_type was sent without actor_token",
                ));
            }
            (Some(_), Some(t)) => check_token_type(t, "actor_token_type")?,
            (None, None) => {}
        }
        let requested = form.single("requested_token_type")?.unwrap_or(TOKEN_TYPE_ACCESS_TOKEN);
        if requested != TOKEN_TYPE_ACCESS_TOKEN && requested != TOKEN_TYPE_JWT {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type {requested} is not supported; use {TOKEN_TYPE_ACCESS_TOKEN}"
            )));
        }

        let subject = self.verify_token(subject_token, "subject_token")?;
        self.session_alive(&subject, "subject_token")?;
        let sub = claim_str(&subject, "sub")
            .ok_or_else(|| OAuthError::invalid_grant("subject_token has no sub claim"))?
            .to_string();
        let act = match actor_token {
            Some(actor_token) => {
                let actor = self.verify_token(actor_token, "actor_token")?;
                let actor_sub = claim_str(&actor, "sub")
                    .ok_or_else(|| OAuthError::invalid_grant("actor_token has no sub claim"))?;
                if let Some(may_act) = subject.get("may_act")
                    && may_act.get("sub").and_then(Value::as_str) != Some(actor_sub)
                {
                    return Err(OAuthError::invalid_grant(format!(
                        "actor {actor_sub} is not allowed to act for {sub} (may_act)"
                    )));
                }
                let mut act = Map::new();
                act.insert("sub".into(), Value::String(actor_sub.to_string()));
                if let Some(prior) = subject.get("act") {
                    act.insert("act".into(), prior.clone());
                }
                Some(Value::Object(act))
            }
            // Without a new actor, a delegated subject stays delegated.
            None => subject.get("act").cloned(),
        };
        let (aud, scopes) = check_target_and_scope(client, form)?;
        self.issue(client, sub, aud, scopes, act, Some(requested))
    }

    /// Verify a subject or actor token: a JWT signed by a provider key or a trusted key, not
    /// expired and not before its `nbf`.
    fn verify_token(&self, token: &str, what: &str) -> Result<Map<String, Value>, OAuthError> {
        let header = decode_header(token).map_err(|_| OAuthError::invalid_grant(format!("{what} is not a JWT")))?;
        let unverified: Option<Map<String, Value>> = jsonwebtoken::dangerous::insecure_decode_claims(token).ok();
        let iss = unverified
            .as_ref()
            .and_then(|c| claim_str(c, "iss"))
            .unwrap_or("(none)")
            .to_string();
        let kid = header.kid.clone().unwrap_or_else(|| "(none)".into());
        let candidates: Vec<Value> = {
            let st = lock(&self.state);
            st.keys
                .iter()
                .map(|k| k.public_jwk().clone())
                .chain(st.trusted.iter().cloned())
                .filter(|jwk| match (&header.kid, jwk.get("kid").and_then(Value::as_str)) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                })
                .collect()
        };
        if candidates.is_empty() {
            return Err(OAuthError::invalid_grant(format!(
                "{what} is signed by an unknown key (kid {kid}): unknown issuer {iss}"
            )));
        }
        for jwk in &candidates {
            let Ok((key, alg)) = keys::decoding_key(jwk) else {
                continue;
            };
            if alg != header.alg {
                continue;
            }
            let mut v = Validation::new(alg);
            v.validate_aud = false;
            v.validate_nbf = true;
            v.required_spec_claims = HashSet::new();
            v.leeway = 0;
            match decode::<Map<String, Value>>(token, &key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    JwtErrorKind::InvalidSignature => continue,
                    JwtErrorKind::ExpiredSignature => {
                        let exp = unverified
                            .as_ref()
                            .and_then(|c| c.get("exp"))
                            .cloned()
                            .unwrap_or(Value::Null);
                        return Err(OAuthError::invalid_grant(format!(
                            "{what} has expired (exp {exp}, now {})",
                            unix_now()
                        )));
                    }
                    JwtErrorKind::ImmatureSignature => {
                        return Err(OAuthError::invalid_grant(format!("{what} is not valid yet (nbf)")));
                    }
                    _ => return Err(OAuthError::invalid_grant(format!("{what} rejected: {e}"))),
                },
            }
        }
        Err(OAuthError::invalid_grant(format!(
            "{what} has a bad signature (iss {iss}, kid {kid}, alg {:?})",
            header.alg
        )))
    }

    fn issue(
        &self,
        client: &DevClient,
        sub: String,
        aud: Vec<String>,
        scopes: Vec<String>,
        act: Option<Value>,
        exchange: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| OAuthError::server_error("no randomness for a jti"))?;
        let mut st = lock(&self.state);
        let fault = st.fault;
        // The provider's clock, which a ClockSkew fault moves.
        let now = match fault {
            Fault::ClockSkew(secs) => unix_now().saturating_add_signed(secs),
            _ => unix_now(),
        };
        let lifetime = st.token_lifetime.as_secs();
        let mut claims = Map::new();
        let iss = if fault == Fault::WrongIssuer {
            WRONG_ISSUER.to_string()
        } else {
            self.issuer.clone()
        };
        claims.insert("iss".into(), Value::String(iss));
        claims.insert("sub".into(), Value::String(sub));
        match aud.len() {
            _ if fault == Fault::WrongAudience => {
                claims.insert("aud".into(), Value::String(WRONG_AUDIENCE.to_string()));
            }
            0 => {}
            1 => {
                claims.insert("aud".into(), Value::String(aud[0].clone()));
            }
            _ => {
                claims.insert("aud".into(), json!(aud));
            }
        }
        if !scopes.is_empty() {
            claims.insert("scope".into(), Value::String(scopes.join(" ")));
        }
        claims.insert("client_id".into(), Value::String(client.client_id.clone()));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("nbf".into(), Value::from(now));
        if fault != Fault::NoExpiry {
            claims.insert("exp".into(), Value::from(now + lifetime));
        }
        claims.insert("jti".into(), Value::String(URL_SAFE_NO_PAD.encode(jti)));
        if let Some(act) = act {
            claims.insert("act".into(), act);
        }
        let key = st
            .keys
            .last()
            .ok_or_else(|| OAuthError::server_error("the provider has no signing key"))?;
        let mut token = key
            .sign_typed("at+jwt", &claims)
            .map_err(|e| OAuthError::server_error(format!("could not sign the access token: {e}")))?;
        if fault == Fault::BadSignature {
            // Same header and signature, other payload: the signature no longer verifies.
            let mut forged = claims.clone();
            forged.insert("sub".into(), Value::String("forged".into()));
            let parts: Vec<&str> = token.split('.').collect();
            token = format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(Value::Object(forged).to_string()),
                parts.get(2).copied().unwrap_or_default()
            );
        }
        st.issued.push(Value::Object(claims));
        drop(st);

        bump(&self.counters.tokens_issued);
        bump(if exchange.is_some() {
            &self.counters.exchanges
        } else {
            &self.counters.client_credentials
        });
        let mut resp = json!({"access_token": token, "token_type": TOKEN_TYPE_BEARER, "expires_in": lifetime});
        if fault == Fault::NoExpiry
            && let Some(obj) = resp.as_object_mut()
        {
            obj.remove("expires_in");
        }
        if let Some(issued_type) = exchange {
            resp["issued_token_type"] = Value::String(issued_type.to_string());
        }
        if !scopes.is_empty() {
            resp["scope"] = Value::String(scopes.join(" "));
        }
        Ok(resp)
    }
}

fn check_token_type(t: &str, param: &str) -> Result<(), OAuthError> {
    if [TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN].contains(&t) {
        Ok(())
    } else {
        Err(OAuthError::invalid_request(format!(
            "{param} {t} is not supported; use {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ACCESS_TOKEN}"
        )))
    }
}

/// Every requested audience/resource must be registered for the client (default: its first
/// audience); every requested scope too.
fn check_target_and_scope(client: &DevClient, form: &Form) -> Result<(Vec<String>, Vec<String>), OAuthError> {
    let mut targets: Vec<String> = Vec::new();
    for t in form.all("audience").into_iter().chain(form.all("resource")) {
        if !targets.iter().any(|x| x == t) {
            targets.push(t.to_string());
        }
    }
    for t in &targets {
        if !client.audiences.contains(t) {
            return Err(OAuthError::new(
                "invalid_target",
                format!(
                    "audience {t} is not allowed for client {} (allowed: {})",
                    client.client_id,
                    client.audiences.join(", ")
                ),
            ));
        }
    }
    if targets.is_empty()
        && let Some(first) = client.audiences.first()
    {
        targets.push(first.clone());
    }
    let mut scopes: Vec<String> = Vec::new();
    for s in form.single("scope")?.unwrap_or("").split_whitespace() {
        if !client.scopes.iter().any(|x| x == s) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!(
                    "scope {s} is not allowed for client {} (allowed: {})",
                    client.client_id,
                    client.scopes.join(" ")
                ),
            ));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    Ok((targets, scopes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devidp::test_support::*;
    use crate::upstream::keys::{KeyAlg, SigningKey};

    #[tokio::test]
    async fn token_exchange_sub_aud_scope_and_act() {
        let (idp, http) = exchange_idp().await;
        let subject = idp.mint(json!({"sub": "svc-1", "exp": exp()}));

        let (st, body) = post(
            &http,
            &idp,
            &te_form(&subject, &[("audience", "api-a"), ("scope", "read")]),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
        assert_eq!(body["scope"], "read");
        assert_eq!(body["expires_in"], 120);
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api-a").await;
        assert_eq!(claims["sub"], "svc-1");
        assert_eq!(claims["aud"], "api-a");
        assert_eq!(claims["scope"], "read");
        assert_eq!(claims["client_id"], "agent");
        assert!(claims.get("act").is_none());

        // Two targets (audience + resource) give an array; no audience gives the client's first.
        let (st, body) = post(
            &http,
            &idp,
            &te_form(&subject, &[("audience", "api-a"), ("resource", "api-b")]),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api-b").await;
        assert_eq!(claims["aud"], json!(["api-a", "api-b"]));
        let (_, body) = post(&http, &idp, &te_form(&subject, &[])).await;
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api-a").await;
        assert_eq!(claims["aud"], "api-a");

        // Delegation: act, then nested act when the subject is itself delegated.
        let actor = idp.mint(json!({"sub": "node-7", "exp": exp()}));
        let (st, body) = post(
            &http,
            &idp,
            &te_form(
                &subject,
                &[("actor_token", &actor), ("actor_token_type", TOKEN_TYPE_JWT)],
            ),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let delegated = body["access_token"].as_str().unwrap().to_string();
        let claims = verify_at(&http, &idp, &delegated, "api-a").await;
        assert_eq!(claims["sub"], "svc-1");
        assert_eq!(claims["act"], json!({"sub": "node-7"}));

        let actor2 = idp.mint(json!({"sub": "gateway", "exp": exp()}));
        let (st, body) = post(
            &http,
            &idp,
            &[
                ("grant_type", GRANT_TOKEN_EXCHANGE),
                ("client_id", "agent"),
                ("client_secret", "agent-secret"),
                ("subject_token", &delegated),
                ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
                ("actor_token", &actor2),
                ("actor_token_type", TOKEN_TYPE_JWT),
            ],
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api-a").await;
        assert_eq!(claims["act"], json!({"sub": "gateway", "act": {"sub": "node-7"}}));

        // may_act: only the named actor may act.
        let restricted = idp.mint(json!({"sub": "svc-2", "exp": exp(), "may_act": {"sub": "node-7"}}));
        let (st, _) = post(
            &http,
            &idp,
            &te_form(
                &restricted,
                &[("actor_token", &actor), ("actor_token_type", TOKEN_TYPE_JWT)],
            ),
        )
        .await;
        assert_eq!(st, 200);
        let (st, body) = post(
            &http,
            &idp,
            &te_form(
                &restricted,
                &[("actor_token", &actor2), ("actor_token_type", TOKEN_TYPE_JWT)],
            ),
        )
        .await;
        assert_eq!(st, 400);
        assert_eq!(body["error"], "invalid_grant");
        let d = body["error_description"].as_str().unwrap();
        assert!(
            d.contains("gateway") && d.contains("svc-2") && d.contains("may_act"),
            "{d}"
        );

        // actor_token without actor_token_type.
        let (st, body) = post(&http, &idp, &te_form(&subject, &[("actor_token", &actor)])).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_request")));

        let c = idp.counters();
        assert_eq!(c.exchanges, 6);
        assert_eq!(c.client_credentials, 0);
        assert_eq!(c.tokens_issued, 6);
        assert_eq!(idp.issued().len(), 6);
        assert_eq!(idp.issued()[3]["act"], json!({"sub": "node-7"}));
    }

    #[tokio::test]
    async fn bad_subject_tokens_are_invalid_grant() {
        let (idp, http) = exchange_idp().await;
        let desc = |b: &Value| b["error_description"].as_str().unwrap_or_default().to_string();

        let expired = idp.mint(json!({"sub": "svc", "exp": unix_now() - 10}));
        let (st, body) = post(&http, &idp, &te_form(&expired, &[])).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));
        assert!(desc(&body).contains("expired"), "{body}");

        let outsider = SigningKey::generate(KeyAlg::RS256).unwrap();
        let foreign = outsider
            .sign(&json!({"iss": "https://ci.example", "sub": "bot", "exp": exp()}))
            .unwrap();
        let (st, body) = post(&http, &idp, &te_form(&foreign, &[])).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));
        assert!(desc(&body).contains("unknown issuer https://ci.example"), "{body}");

        idp.trust_key(outsider.public_jwk().clone());
        let (st, body) = post(&http, &idp, &te_form(&foreign, &[])).await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(
            verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api-a").await["sub"],
            "bot"
        );

        // Tampered payload, same header: bad signature.
        let good = idp.mint(json!({"sub": "svc", "exp": exp()}));
        let parts: Vec<&str> = good.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(json!({"sub": "admin", "exp": exp()}).to_string());
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        let (st, body) = post(&http, &idp, &te_form(&tampered, &[])).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));
        assert!(desc(&body).contains("bad signature"), "{body}");

        let (st, body) = post(&http, &idp, &te_form("not-a-jwt", &[])).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));

        let (st, body) = post(&http, &idp, &te_form(&good, &[("subject_token_type", "urn:x")])).await;
        assert_eq!(
            (st, body["error"].as_str()),
            (400, Some("invalid_request")),
            "repeated parameter"
        );
        assert_eq!(idp.counters().tokens_issued, 1);
    }

    #[tokio::test]
    async fn invalid_target_and_invalid_scope() {
        let (idp, http) = exchange_idp().await;
        let subject = idp.mint(json!({"sub": "svc-1", "exp": exp()}));
        let (st, body) = post(
            &http,
            &idp,
            &te_form(&subject, &[("audience", "api-a"), ("audience", "payroll")]),
        )
        .await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_target")));
        assert!(
            body["error_description"].as_str().unwrap().contains("payroll"),
            "{body}"
        );

        let (st, body) = post(&http, &idp, &te_form(&subject, &[("scope", "read admin")])).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_scope")));
        assert!(body["error_description"].as_str().unwrap().contains("admin"), "{body}");

        let cc = [
            ("grant_type", GRANT_CLIENT_CREDENTIALS),
            ("client_id", "agent"),
            ("client_secret", "agent-secret"),
            ("resource", "https://other"),
        ];
        let (st, body) = post(&http, &idp, &cc).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_target")));
        let c = idp.counters();
        assert_eq!((c.token_requests, c.tokens_issued), (3, 0));
    }
}
