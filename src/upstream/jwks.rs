//! Verifying what a provider issues: its JWK set (fetched, kept, re-fetched on an unknown `kid`
//! at most once a second), the key for a token's `kid` and `alg`, and the checks of an issued
//! JWT (signature, `iss`, `exp`, `nbf`, `aud`).

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ProviderError;
use crate::oauth::ALLOWED_ALGS;
use crate::token::TokenClaims;

use super::ParseError;
use super::client::ProviderClient;
use super::http::chain;

/// Re-fetch the JWKS for an unknown `kid` at most this often.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Leeway for `exp`/`nbf`/`iat` checks against this host's clock.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Jwks {
    keys: Vec<(Option<String>, jsonwebtoken::jwk::Jwk)>,
    fetched: Option<Instant>,
}

impl ProviderClient {
    /// Verifies an issued JWT: signature against the JWKS (re-fetched on an unknown `kid`),
    /// `iss`, `exp`, and that `aud` contains the requested audience.
    pub async fn verify(&self, token: &str, audience: &str, issuer: &str) -> Result<TokenClaims, ProviderError> {
        let s = &self.settings;
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            ProviderError::verification(format!(
                "provider {:?} issued a JWT with an unreadable header: {e}",
                s.name
            ))
        })?;
        let alg = header.alg;
        if !ALLOWED_ALGS.contains(&alg) {
            return Err(ProviderError::verification(format!(
                "provider {:?} signed the token with {alg:?}, which is not accepted",
                s.name
            )));
        }
        let key = self.key_for(header.kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer]);
        validation.validate_aud = false;
        validation.leeway = CLOCK_LEEWAY.as_secs();
        // A token that is not valid yet would be refused by the services it is for.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            let why = match e.kind() {
                K::InvalidSignature => "its signature does not verify against the provider's JWKS".to_string(),
                K::InvalidIssuer => {
                    let iss = decode_unverified(token).and_then(|c| c.iss).unwrap_or_default();
                    format!("its iss is {iss:?}, expected {issuer:?}")
                }
                K::ExpiredSignature => "it is already expired by this host's clock (check both clocks)".to_string(),
                K::ImmatureSignature => "it is not valid yet by this host's clock (check both clocks)".to_string(),
                K::MissingRequiredClaim(c) => format!("it has no {c} claim"),
                other => format!("{other:?}"),
            };
            ProviderError::verification(format!(
                "provider {:?} issued a token that failed verification: {why}",
                s.name
            ))
        })?;
        let claims = TokenClaims::from_json(&data.claims);
        if !claims.aud.iter().any(|a| a == audience) {
            return Err(ProviderError::verification(format!(
                "provider {:?} issued a token for audience {} but {audience:?} was requested",
                s.name,
                if claims.aud.is_empty() {
                    "none".to_string()
                } else {
                    format!("{:?}", claims.aud.join(", "))
                }
            )));
        }
        Ok(claims)
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, ProviderError> {
        let s = &self.settings;
        let meta = self.metadata().await?;
        let url = meta.jwks_uri.as_deref().ok_or_else(|| {
            ProviderError::bad_response(format!(
                "provider {:?} publishes no jwks_uri; set jwks_uri, or verify_tokens = false for opaque tokens",
                s.name
            ))
        })?;
        self.jwks
            .key(&self.http, url, kid, alg, &format!("provider {:?}", s.name))
            .await
    }
}

/// A JWK set fetched from a URL and kept; re-fetched for an unknown `kid` (key rotation) at most
/// once per [`JWKS_REFETCH_INTERVAL`].
#[derive(Default)]
pub struct KeySet {
    inner: tokio::sync::Mutex<Jwks>,
}

impl KeySet {
    /// The key for `kid` that fits `alg`. `who` names the key's owner in messages.
    pub async fn key(
        &self,
        http: &reqwest::Client,
        url: &str,
        kid: Option<&str>,
        alg: Algorithm,
        who: &str,
    ) -> Result<DecodingKey, ProviderError> {
        let mut jwks = self.inner.lock().await;
        if find_key(&jwks.keys, kid, alg).is_none() {
            // An unknown kid means a rotation (or a forgery): fetch again, but at most once per
            // interval; a rotation right after a fetch waits out the rest of it.
            if let Some(since) = jwks.fetched.map(|t| t.elapsed())
                && since < JWKS_REFETCH_INTERVAL
            {
                tokio::time::sleep(JWKS_REFETCH_INTERVAL - since).await;
            }
            jwks.keys = fetch_jwks(http, url, who).await?;
            jwks.fetched = Some(Instant::now());
        }
        let jwk = find_key(&jwks.keys, kid, alg).ok_or_else(|| {
            ProviderError::verification(format!(
                "{who} signed the token with key {:?}, which its JWKS ({url}) does not publish for {alg:?}",
                kid.unwrap_or("(no kid)")
            ))
        })?;
        DecodingKey::from_jwk(jwk).map_err(|e| ProviderError::verification(format!("{who}: unusable JWKS key: {e}")))
    }
}

async fn fetch_jwks(
    http: &reqwest::Client,
    url: &str,
    who: &str,
) -> Result<Vec<(Option<String>, jsonwebtoken::jwk::Jwk)>, ProviderError> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            ProviderError::unreachable(format!("{who}: JWKS at {url} did not answer in time"))
        } else {
            ProviderError::unreachable(format!("{who}: cannot fetch the JWKS at {url}: {}", chain(&e)))
        }
    };
    let resp = http.get(url).send().await.map_err(transport)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            ProviderError::unreachable(format!("{who}: JWKS at {url} answered {status}"))
        } else {
            ProviderError::bad_response(format!("{who}: JWKS at {url} answered {status}"))
        });
    }
    let body = resp.bytes().await.map_err(transport)?;
    parse_jwks(&body).map_err(|e| ProviderError::bad_response(format!("{who}: JWKS at {url}: {e}")))
}

/// Parses a JWKS, skipping keys this agent cannot use (unknown `kty`, encryption keys).
pub fn parse_jwks(body: &[u8]) -> Result<Vec<(Option<String>, jsonwebtoken::jwk::Jwk)>, ParseError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(ParseError::Jwks)?;
    Ok(set
        .keys
        .into_iter()
        .filter(|k| k.get("use").and_then(|u| u.as_str()).is_none_or(|u| u == "sig"))
        .filter(|k| matches!(k.get("kty").and_then(|t| t.as_str()), Some("EC" | "RSA" | "OKP")))
        .filter_map(|k| {
            let kid = k.get("kid").and_then(|v| v.as_str()).map(str::to_string);
            serde_json::from_value::<jsonwebtoken::jwk::Jwk>(k)
                .ok()
                .map(|jwk| (kid, jwk))
        })
        .collect())
}

/// The key for `kid` whose type fits `alg`; without a `kid`, the only key of that type.
pub fn find_key<'a>(
    keys: &'a [(Option<String>, jsonwebtoken::jwk::Jwk)],
    kid: Option<&str>,
    alg: Algorithm,
) -> Option<&'a jsonwebtoken::jwk::Jwk> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    let fits = |jwk: &jsonwebtoken::jwk::Jwk| {
        matches!(
            (&jwk.algorithm, alg),
            (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
                | (
                    P::RSA(_),
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
                | (P::OctetKeyPair(_), Algorithm::EdDSA)
        )
    };
    let mut candidates = keys.iter().filter(|(_, jwk)| fits(jwk));
    match kid {
        Some(kid) => candidates.find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, j)| j),
        None => {
            let first = candidates.next()?;
            if candidates.next().is_some() {
                None
            } else {
                Some(&first.1)
            }
        }
    }
}

/// Whether a token has the shape of a JWS compact serialization with a JSON header.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("alg").is_some())
}

/// Reads a JWT's claims without checking anything (for `verify_tokens = false` and for messages).
pub fn decode_unverified(token: &str) -> Option<TokenClaims> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(TokenClaims::from_json(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape_is_recognised() {
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
        assert!(looks_like_jwt(&format!("{h}.e30.sig")));
        assert!(!looks_like_jwt("opaque-token"));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt(&format!("{h}.e30.sig.extra")));
    }

    #[test]
    fn jwks_without_alg_and_with_foreign_keys_parse() {
        let body = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"weird","kid":"w"}
        ],"extra":true}"#;
        let keys = parse_jwks(body).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(find_key(&keys, Some("a"), Algorithm::ES256).is_some());
        assert!(
            find_key(&keys, None, Algorithm::ES256).is_some(),
            "a single key needs no kid"
        );
        assert!(
            find_key(&keys, Some("a"), Algorithm::RS256).is_none(),
            "the key family must fit the alg"
        );
        assert!(find_key(&keys, Some("b"), Algorithm::ES256).is_none());
    }
}
