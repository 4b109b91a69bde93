//! Credentials that callers present (`docs/api.md`, `POST /v1/token`): a JWT is accepted only if it verifies
//! against one of the identity's `trusted_issuers` — signature by the issuer's JWKS (re-fetched
//! on key rotation), `iss`, `aud`, `exp` and `nbf` with a small leeway. Its claims then feed the
//! `claims` conditions of roles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::Validation;

use crate::config::TrustedIssuer;
use crate::error::{ApiError, ErrorKind, ProviderErrorKind};
use crate::upstream::{KeySet, decode_unverified, http_client, looks_like_jwt};

/// Clock leeway for presented credentials' `exp` and `nbf`.
pub(crate) const PRESENTED_LEEWAY: Duration = Duration::from_secs(30);

/// Verifies presented credentials; keeps one JWKS per issuer URL and one HTTPS client per CA.
pub(crate) struct PresentedVerifier {
    timeout: Duration,
    clients: Mutex<HashMap<Option<PathBuf>, reqwest::Client>>,
    keys: Mutex<HashMap<String, Arc<KeySet>>>,
}

fn refused(why: String) -> ApiError {
    ApiError::access_denied(format!("the presented subject_token is refused: {why}"))
}

impl PresentedVerifier {
    pub fn new(timeout: Duration) -> PresentedVerifier {
        PresentedVerifier {
            timeout,
            clients: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, ca: Option<&PathBuf>) -> Result<reqwest::Client, ApiError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&ca.cloned()) {
            return Ok(c.clone());
        }
        let c = http_client(ca.map(|p| p.as_path()), self.timeout)
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        clients.insert(ca.cloned(), c.clone());
        Ok(c)
    }

    fn keyset(&self, url: &str) -> Arc<KeySet> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(url.to_string())
            .or_default()
            .clone()
    }

    /// Verifies `token` against `issuers` and returns its claims.
    pub async fn verify(&self, token: &str, issuers: &[TrustedIssuer]) -> Result<serde_json::Value, ApiError> {
        if !looks_like_jwt(token) {
            return Err(ApiError::invalid_request(
                "the presented subject_token is not a JWT (header.payload.signature)",
            ));
        }
        let iss = decode_unverified(token).and_then(|c| c.iss).unwrap_or_default();
        let Some(trusted) = issuers.iter().find(|t| t.issuer == iss) else {
            let names: Vec<&str> = issuers.iter().map(|t| t.issuer.as_str()).collect();
            return Err(refused(format!(
                "its issuer {iss:?} is not trusted for this identity (trusted: {})",
                names.join(", ")
            )));
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused(format!("unreadable header: {e}")))?;
        if !crate::oauth::ALLOWED_ALGS.contains(&header.alg) {
            return Err(refused(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let http = self.client(trusted.ca_file.as_ref())?;
        let key = self
            .keyset(&trusted.jwks_uri)
            .key(
                &http,
                &trusted.jwks_uri,
                header.kid.as_deref(),
                header.alg,
                &format!("issuer {iss:?}"),
            )
            .await
            .map_err(|e| match e.kind {
                ProviderErrorKind::Unreachable => ApiError::new(ErrorKind::UpstreamUnavailable, e.message),
                _ => refused(e.message),
            })?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&trusted.issuer]);
        v.validate_aud = false;
        v.validate_nbf = true;
        v.leeway = PRESENTED_LEEWAY.as_secs();
        v.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            refused(match e.kind() {
                K::InvalidSignature => format!("its signature does not verify against {}", trusted.jwks_uri),
                K::ExpiredSignature => "it has expired (exp is in the past)".to_string(),
                K::ImmatureSignature => "it is not valid yet (nbf is in the future)".to_string(),
                K::MissingRequiredClaim(c) => format!("it has no {c} claim"),
                other => format!("{other:?}"),
            })
        })?;
        let aud_ok = match data.claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == trusted.audience,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(trusted.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(refused(format!(
                "its audience is {}, expected {:?}",
                data.claims
                    .get("aud")
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "missing".into()),
                trusted.audience
            )));
        }
        Ok(data.claims)
    }
}
