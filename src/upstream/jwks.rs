//! Verifying what a provider issues: its JWK set (fetched, kept, re-fetched on an unknown `kid`
//! at most once a second), the key for a token's `kid` and `alg`, and the checks of an issued
//! JWT (signature, `iss`, `exp`, `nbf`, `aud`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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
pub(crate) const CLOCK_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
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

    pub(super) async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, ProviderError> {
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
///
/// A token signed with a known key is verified at once, whatever else is going on: only callers
/// with an unknown `kid` wait for a refetch, one refetch at a time, and a caller that arrived
/// before a refetch finished uses that one instead of asking again. A flood of forged `kid`s
/// costs at most one JWKS request per interval and slows down no one else.
#[derive(Default)]
pub(crate) struct KeySet {
    /// The keys as last fetched; replaced whole, never held across an await.
    current: std::sync::RwLock<Arc<Jwks>>,
    /// Held while a refetch is decided and made.
    refetch: tokio::sync::Mutex<()>,
}

impl KeySet {
    fn snapshot(&self) -> Arc<Jwks> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key for `kid` that fits `alg`. `who` names the key's owner in messages.
    pub async fn key(
        &self,
        http: &reqwest::Client,
        url: &str,
        kid: Option<&str>,
        alg: Algorithm,
        who: &str,
    ) -> Result<DecodingKey, ProviderError> {
        let mut jwks = self.snapshot();
        if find_key(&jwks.keys, kid, alg).is_none() {
            let arrived = Instant::now();
            let _one = self.refetch.lock().await;
            jwks = self.snapshot();
            let fetched_since_arrival = jwks.fetched.is_some_and(|t| t >= arrived);
            if find_key(&jwks.keys, kid, alg).is_none() && !fetched_since_arrival {
                // An unknown kid means a rotation (or a forgery): fetch again, but at most once
                // per interval; a rotation right after a fetch waits out the rest of it.
                if let Some(since) = jwks.fetched.map(|t| t.elapsed())
                    && since < JWKS_REFETCH_INTERVAL
                {
                    tokio::time::sleep(JWKS_REFETCH_INTERVAL - since).await;
                }
                let keys = fetch_jwks(http, url, who).await?;
                jwks = Arc::new(Jwks {
                    keys,
                    fetched: Some(Instant::now()),
                });
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = jwks.clone();
            }
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

    /// A key set for the development provider's JWKS, with an HTTPS client that trusts it.
    async fn devidp_keys() -> (crate::devidp::DevIdp, reqwest::Client, String, tempfile::TempDir) {
        let idp = crate::devidp::DevIdp::start(Default::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, idp.ca_pem()).unwrap();
        let http = super::super::http_client(Some(&ca), Duration::from_secs(5)).unwrap();
        let url = format!("{}/jwks", idp.issuer());
        (idp, http, url, dir)
    }

    #[tokio::test]
    async fn forged_kids_cost_one_refetch_per_wave_and_never_block_known_keys() {
        let (idp, http, url, _dir) = devidp_keys().await;
        let keys = Arc::new(KeySet::default());
        let kid = idp.current_kid();
        keys.key(&http, &url, Some(&kid), Algorithm::ES256, "idp")
            .await
            .unwrap();
        assert_eq!(idp.counters().jwks, 1, "the first key is fetched once");

        // While a refetch is being decided (the lock held, as by a flood of forged kids), a
        // token signed with a known key is verified without waiting: its future is ready at once.
        let held = keys.refetch.lock().await;
        let known = keys.key(&http, &url, Some(&kid), Algorithm::ES256, "idp");
        let mut known = std::pin::pin!(known);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            matches!(known.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(_))),
            "a known kid must not wait for the refetch lock"
        );
        drop(held);

        // Twenty forged kids at once: all refused, with one JWKS request between them.
        let mut tasks = Vec::new();
        for n in 0..20 {
            let (keys, http, url) = (keys.clone(), http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                keys.key(&http, &url, Some(&format!("forged-{n}")), Algorithm::ES256, "idp")
                    .await
                    .is_err()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap(), "a forged kid is refused");
        }
        assert_eq!(idp.counters().jwks, 2, "one refetch for the whole wave");
    }

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
