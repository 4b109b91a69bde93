//! Talking to an OpenID Connect provider: discovery, JWKS, client authentication, the token
//! exchange (RFC 8693) and client credentials requests, and verification of what comes back.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::{ClientAuth, Grant, IdentitySettings, ProviderSettings, TargetParameter};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::oauth::{ALLOWED_ALGS, CLIENT_ASSERTION_TYPE_JWT_BEARER, GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE};
use crate::token::{IssuedToken, Secret, TokenClaims};

/// Re-fetch the JWKS for an unknown `kid` at most this often.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Leeway for `exp`/`nbf`/`iat` checks against this host's clock.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(60);

/// What discovery (or the configuration) says about a provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: Option<String>,
    pub auth_methods: Option<Vec<String>>,
}

/// The members of a discovery document the agent uses; others are ignored.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Reachability as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderHealth {
    /// `None` until the first request finished.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Jwks {
    keys: Vec<(Option<String>, jsonwebtoken::jwk::Jwk)>,
    fetched: Option<Instant>,
}

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
pub fn parse_token_answer(body: &[u8]) -> Result<TokenAnswer, String> {
    let r: TokenResponse =
        serde_json::from_slice(body).map_err(|e| format!("answered the token request with unusable JSON: {e}"))?;
    let access_token = Secret::new(
        r.access_token
            .filter(|t| !t.is_empty())
            .ok_or("answered 200 without an access_token")?,
    );
    let token_type = r.token_type.unwrap_or_default();
    if !token_type.eq_ignore_ascii_case("bearer") && !token_type.eq_ignore_ascii_case("n_a") {
        return Err(format!(
            "issued a token of type {token_type:?}; only Bearer tokens can be served"
        ));
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

/// Parses a discovery document (OpenID Connect Discovery 1.0 section 4.2).
pub fn parse_discovery(body: &[u8]) -> Result<Discovery, String> {
    serde_json::from_slice(body).map_err(|e| format!("not usable JSON: {e}"))
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

/// A client for one configured provider.
pub struct ProviderClient {
    settings: Arc<ProviderSettings>,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<Arc<Metadata>>>,
    jwks: KeySet,
    health: Mutex<ProviderHealth>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("name", &self.settings.name)
            .field("issuer", &self.settings.issuer)
            .finish()
    }
}

/// Builds an HTTPS client that trusts the system roots plus `extra_ca` (PEM file).
pub fn http_client(extra_ca: Option<&std::path::Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {}: not a PEM certificate: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("ca_file {} holds no PEM certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cortexid/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client setup: {e}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The full chain of an error, which reqwest hides behind "error sending request".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

impl ProviderClient {
    pub fn new(settings: Arc<ProviderSettings>, timeout: Duration) -> Result<ProviderClient, String> {
        let http = http_client(settings.ca_file.as_deref(), timeout)?;
        Ok(ProviderClient {
            settings,
            http,
            metadata: tokio::sync::Mutex::new(None),
            jwks: KeySet::default(),
            health: Mutex::new(ProviderHealth::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn settings(&self) -> &Arc<ProviderSettings> {
        &self.settings
    }

    pub fn health(&self) -> ProviderHealth {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn record(&self, result: Result<(), &ProviderError>) {
        if let Ok(mut h) = self.health.lock() {
            match result {
                Ok(()) => {
                    h.reachable = Some(true);
                    h.last_error = None;
                }
                Err(e) => {
                    // A provider that answered, even with a refusal, is reachable.
                    h.reachable = Some(e.kind != ProviderErrorKind::Unreachable);
                    h.last_error = Some(e.message.clone());
                }
            }
        }
    }

    fn transport_error(&self, what: &str, url: &str, e: &reqwest::Error) -> ProviderError {
        let name = &self.settings.name;
        if e.is_timeout() {
            ProviderError::unreachable(format!("provider {name:?} did not answer {what} at {url} in time"))
        } else {
            ProviderError::unreachable(format!(
                "cannot reach provider {name:?} ({what} at {url}): {}",
                chain(e)
            ))
        }
    }

    /// Discovery, cached after the first success. Configured endpoints override it; with both
    /// `token_endpoint` and `jwks_uri` configured, discovery is skipped.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let s = &self.settings;
        let needs_jwks = s.verify_tokens && s.jwks_uri.is_none();
        let meta = if let (Some(te), false) = (&s.token_endpoint, needs_jwks) {
            Metadata {
                issuer: s.issuer.clone(),
                token_endpoint: te.clone(),
                jwks_uri: s.jwks_uri.clone(),
                auth_methods: None,
            }
        } else {
            let result = self.discover().await;
            self.record(result.as_ref().map(|_| ()));
            let d = result?;
            let token_endpoint = match (&s.token_endpoint, d.token_endpoint) {
                (Some(te), _) => te.clone(),
                (None, Some(te)) => te,
                (None, None) => {
                    return Err(ProviderError::bad_response(format!(
                        "provider {:?}: the discovery document has no token_endpoint; set token_endpoint in the config",
                        s.name
                    )));
                }
            };
            Metadata {
                issuer: d.issuer,
                token_endpoint,
                jwks_uri: s.jwks_uri.clone().or(d.jwks_uri),
                auth_methods: d.token_endpoint_auth_methods_supported,
            }
        };
        let meta = Arc::new(meta);
        *slot = Some(meta.clone());
        Ok(meta)
    }

    async fn discover(&self) -> Result<Discovery, ProviderError> {
        let s = &self.settings;
        let url = format!("{}/.well-known/openid-configuration", s.issuer.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.transport_error("discovery", &url, &e))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(ProviderError::unreachable(format!(
                "provider {:?}: discovery at {url} answered {status}",
                s.name
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::bad_response(format!(
                "provider {:?}: discovery at {url} answered {status}; check that issuer is the provider's issuer URL",
                s.name
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error("discovery", &url, &e))?;
        let d = parse_discovery(&body).map_err(|e| {
            ProviderError::bad_response(format!("provider {:?}: discovery document at {url}: {e}", s.name))
        })?;
        if d.issuer.trim_end_matches('/') != s.issuer.trim_end_matches('/') {
            return Err(ProviderError::bad_response(format!(
                "provider {:?}: discovery says issuer {:?}, the config says {:?}; they must be identical",
                s.name, d.issuer, s.issuer
            )));
        }
        Ok(d)
    }

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
        let mut builder = self
            .http
            .post(&meta.token_endpoint)
            .header("Accept", "application/json");
        match &s.client_auth {
            ClientAuth::SecretBasic(file) => {
                let secret = file
                    .read()
                    .map_err(|e| ProviderError::local(format!("provider {:?}: client secret: {e}", s.name)))?;
                let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                let raw = Zeroizing::new(format!("{}:{}", enc(&s.client_id), enc(&secret)));
                let value = Zeroizing::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
                ));
                builder = builder.header("Authorization", value.as_str());
            }
            ClientAuth::SecretPost(file) => {
                let secret = file
                    .read()
                    .map_err(|e| ProviderError::local(format!("provider {:?}: client secret: {e}", s.name)))?;
                form.push(("client_id", s.client_id.clone()));
                form.push(("client_secret", secret.to_string()));
            }
            ClientAuth::PrivateKeyJwt { key, key_id } => {
                let pem = key
                    .read()
                    .map_err(|e| ProviderError::local(format!("provider {:?}: private key: {e}", s.name)))?;
                let signing = crate::upstream::keys::SigningKey::from_pem(&pem, key_id.as_deref()).map_err(|e| {
                    ProviderError::local(format!(
                        "provider {:?}: private key {}: {e}",
                        s.name,
                        key.path.display()
                    ))
                })?;
                let now = unix_now();
                let mut jti = [0u8; 16];
                aws_lc_rs::rand::fill(&mut jti)
                    .map_err(|_| ProviderError::local("no randomness for a client assertion"))?;
                let claims = serde_json::json!({
                    "iss": s.client_id, "sub": s.client_id, "aud": meta.token_endpoint,
                    "iat": now, "exp": now + 60,
                    "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
                });
                let assertion = signing.sign(&claims).map_err(|e| {
                    ProviderError::local(format!("provider {:?}: cannot sign the client assertion: {e}", s.name))
                })?;
                form.push(("client_id", s.client_id.clone()));
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER.into()));
                form.push(("client_assertion", assertion));
            }
            ClientAuth::None => form.push(("client_id", s.client_id.clone())),
        }
        let mut body = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                .finish(),
        );
        for (_, v) in form.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        let sent = SystemTime::now();
        let resp = builder
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(std::mem::take(&mut *body))
            .send()
            .await
            .map_err(|e| self.transport_error("the token request", &meta.token_endpoint, &e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error("the token request", &meta.token_endpoint, &e))?;
        if !status.is_success() {
            return Err(self.error_response(status.as_u16(), &bytes, retry_after, req));
        }
        let answer = parse_token_answer(&bytes)
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
pub fn parse_jwks(body: &[u8]) -> Result<Vec<(Option<String>, jsonwebtoken::jwk::Jwk)>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
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

/// Keys by name, for the agent to look providers up.
pub type Providers = HashMap<String, Arc<ProviderClient>>;

#[cfg(test)]
mod tests {
    use super::*;

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
            jwks_uri: None,
            auth_methods: None,
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
                .contains("without an access_token")
        );
        assert!(parse_token_answer(br#"{"access_token":"","token_type":"Bearer"}"#).is_err());
        assert!(parse_token_answer(b"[1,2]").unwrap_err().contains("unusable JSON"));
        // A lifetime under a second, negative or absurd is no lifetime: exp must then say.
        for e in ["1e-12", "-5", "1e300", "\"soon\""] {
            let body = format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{e}}}"#);
            assert_eq!(parse_token_answer(body.as_bytes()).unwrap().expires_in, None, "{e}");
        }
        let a = parse_token_answer(br#"{"access_token":"t","token_type":"bearer","expires_in":300}"#).unwrap();
        assert_eq!(a.expires_in, Some(Duration::from_secs(300)));
    }

    #[test]
    fn discovery_without_auth_methods_and_with_extra_members_parses() {
        let d: Discovery = serde_json::from_str(
            r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/token",
                "jwks_uri":"https://idp.example/jwks","grant_types_supported":["client_credentials"],
                "mtls_endpoint_aliases":{"token_endpoint":"https://mtls.idp.example/token"}}"#,
        )
        .unwrap();
        assert_eq!(d.token_endpoint.as_deref(), Some("https://idp.example/token"));
        assert_eq!(d.token_endpoint_auth_methods_supported, None);
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
