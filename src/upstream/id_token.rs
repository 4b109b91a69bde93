//! Validating an ID token before the agent believes who signed in (OpenID Connect Core 3.1.3.7
//! and 12.2): signature against the provider's JWKS, `iss`, `aud` naming the login client (and
//! `azp` when it names several), `exp`, the `nonce` sent with the sign-in, and on a refresh the
//! same `sub` as before.

use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use crate::error::ProviderError;
use crate::oauth::ALLOWED_ALGS;

use super::client::ProviderClient;
use super::discovery::Metadata;
use super::jwks::CLOCK_LEEWAY;

/// What an ID token must say besides a valid signature, issuer and expiry.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdTokenCheck<'a> {
    /// The login client: `aud` must contain it; `azp`, when present or when `aud` has several
    /// members, must be it.
    pub client_id: &'a str,
    /// The `nonce` sent in the authorization request.
    pub nonce: Option<&'a str>,
    /// The session's person: a refreshed ID token must keep the same `sub`.
    pub sub: Option<&'a str>,
}

impl ProviderClient {
    /// Validates an ID token and returns its claims.
    pub(super) async fn validate_id_token(
        &self,
        token: &str,
        meta: &Metadata,
        check: &IdTokenCheck<'_>,
    ) -> Result<Map<String, Value>, ProviderError> {
        let name = &self.settings.name;
        let refused =
            |why: String| ProviderError::verification(format!("provider {name:?} issued an ID token that {why}"));
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| refused(format!("has an unreadable header: {e}")))?;
        let alg = header.alg;
        if !ALLOWED_ALGS.contains(&alg) {
            return Err(refused(format!("is signed with {alg:?}, which is not accepted")));
        }
        let key = self.key_for(header.kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&meta.issuer]);
        validation.validate_aud = false;
        validation.leeway = CLOCK_LEEWAY.as_secs();
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                refused(match e.kind() {
                    K::InvalidSignature => "does not verify against the provider's JWKS".to_string(),
                    K::InvalidIssuer => format!("was not issued by {:?} (its iss differs)", meta.issuer),
                    K::ExpiredSignature => "is already expired by this host's clock (check both clocks)".to_string(),
                    K::MissingRequiredClaim(c) => format!("has no {c} claim"),
                    other => format!("cannot be read: {other:?}"),
                })
            })?
            .claims;
        let aud: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !aud.contains(&check.client_id) {
            return Err(refused(format!(
                "is for audience {aud:?}, not for the login client {:?}",
                check.client_id
            )));
        }
        let azp = claims.get("azp").and_then(Value::as_str);
        if (aud.len() > 1 || azp.is_some()) && azp != Some(check.client_id) {
            return Err(refused(format!(
                "has azp {azp:?} with audience {aud:?}; it must name the login client {:?}",
                check.client_id
            )));
        }
        if let Some(nonce) = check.nonce
            && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
        {
            return Err(refused(
                "does not carry the nonce of this sign-in (a replayed or foreign sign-in)".to_string(),
            ));
        }
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        if sub.is_empty() {
            return Err(refused("has an empty sub".to_string()));
        }
        if let Some(want) = check.sub
            && sub != want
        {
            return Err(refused(format!(
                "names the person {sub:?}, but this session is {want:?}; a refresh cannot change who is signed in"
            )));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::config::{ClientAuth, ProviderSettings};
    use crate::devidp::DevIdp;

    async fn setup() -> (DevIdp, ProviderClient, Arc<Metadata>, tempfile::TempDir) {
        let idp = DevIdp::start(Default::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, idp.ca_pem()).unwrap();
        let settings = ProviderSettings {
            name: "corp".into(),
            issuer: idp.issuer().into(),
            token_endpoint: None,
            jwks_uri: None,
            ca_file: Some(ca),
            client_id: "node".into(),
            client_auth: ClientAuth::None,
            verify_tokens: true,
            target_parameter: None,
            max_concurrent: None,
            rate: None,
        };
        let client = ProviderClient::new(Arc::new(settings), Duration::from_secs(5)).unwrap();
        let meta = client.metadata().await.unwrap();
        (idp, client, meta, dir)
    }

    fn now() -> u64 {
        super::super::http::unix_now()
    }

    const CHECK: IdTokenCheck<'static> = IdTokenCheck {
        client_id: "cortexid-login",
        nonce: Some("n-1"),
        sub: None,
    };

    #[tokio::test]
    async fn a_good_id_token_gives_its_claims() {
        let (idp, client, meta, _dir) = setup().await;
        let t = idp.mint(
            json!({"sub": "alice", "aud": "cortexid-login", "exp": now() + 60, "nonce": "n-1",
            "groups": ["payments"]}),
        );
        let claims = client.validate_id_token(&t, &meta, &CHECK).await.unwrap();
        assert_eq!(claims["groups"], json!(["payments"]));
        // Several audiences need azp = the login client.
        let t = idp.mint(
            json!({"sub": "alice", "aud": ["other", "cortexid-login"], "azp": "cortexid-login",
            "exp": now() + 60, "nonce": "n-1"}),
        );
        client.validate_id_token(&t, &meta, &CHECK).await.unwrap();
    }

    #[tokio::test]
    async fn id_tokens_that_are_wrong_in_one_way_are_refused() {
        let (idp, client, meta, _dir) = setup().await;
        let base = json!({"sub": "alice", "aud": "cortexid-login", "exp": now() + 60, "nonce": "n-1"});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        let cases = [
            (with("nonce", json!("n-2")), CHECK, "nonce"),
            (with("aud", json!("someone-else")), CHECK, "not for the login client"),
            (with("exp", json!(now() - 600)), CHECK, "expired"),
            (with("iss", json!("https://evil.example")), CHECK, "was not issued by"),
            (with("aud", json!(["cortexid-login", "other"])), CHECK, "azp"),
            (with("azp", json!("other")), CHECK, "azp"),
            (
                base.clone(),
                IdTokenCheck {
                    sub: Some("bob"),
                    ..CHECK
                },
                "a refresh cannot change who is signed in",
            ),
        ];
        for (claims, check, want) in cases {
            let t = idp.mint(claims.clone());
            let e = client.validate_id_token(&t, &meta, &check).await.unwrap_err();
            assert!(e.message.contains(want), "{claims}: {}", e.message);
            assert_eq!(e.kind, crate::error::ProviderErrorKind::Verification);
        }
        // No nonce sent (device flow): none is required. Missing sub: refused.
        let t = idp.mint(with("nonce", Value::Null));
        client
            .validate_id_token(&t, &meta, &IdTokenCheck { nonce: None, ..CHECK })
            .await
            .unwrap();
        let mut no_sub = base.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        let e = client
            .validate_id_token(&idp.mint(no_sub), &meta, &CHECK)
            .await
            .unwrap_err();
        assert!(e.message.contains("no sub"), "{}", e.message);
        // A tampered payload: the signature no longer verifies.
        let good = idp.mint(base.clone());
        let parts: Vec<&str> = good.split('.').collect();
        use base64::Engine;
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(with("sub", json!("root")).to_string());
        let forged = format!("{}.{evil}.{}", parts[0], parts[2]);
        let e = client.validate_id_token(&forged, &meta, &CHECK).await.unwrap_err();
        assert!(e.message.contains("JWKS"), "{}", e.message);
    }
}
