//! The embedded development OpenID Connect provider.
//!
//! A small but real provider for `cortexid dev` and the integration tests: HTTPS on 127.0.0.1 with
//! a fresh CA, discovery, JWKS, and a token endpoint that implements `client_credentials` and
//! RFC 8693 token exchange with `client_secret_basic`, `client_secret_post`, `private_key_jwt`
//! (RFC 7523) and `none` client authentication; and people: device and browser sign-in with a
//! small development-only page, rotating refresh tokens and revocation. Faults can be injected into `/token`, and every
//! request is counted, so tests can assert how the agent talks to its provider.
//!
//! Here: the handle ([`DevIdp`]), its configuration and clients, and the request counters. The
//! HTTPS server and routing are in `http`, client authentication and the discovery and JWKS
//! documents in `oauth`, the grants and issuing in `grants`, injected faults in `faults`; people
//! in `people` (state, tokens, test controls), `signin` (device authorization, the sign-in pages,
//! revocation) and `session_grants` (device code, authorization code and refresh grants).

mod faults;
pub mod fixture;
mod grants;
mod http;
mod oauth;
mod people;
mod requests;
mod session_grants;
mod signin;
#[cfg(test)]
mod test_support;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::upstream::keys::{self, KeyAlg, SigningKey};

pub use faults::{Fault, WRONG_AUDIENCE, WRONG_ISSUER};
pub use people::{PeopleCounters, person_sub};
pub use requests::TokenRequest;
pub use signin::SignInRefused;

/// Why the development provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    /// Generating the CA, the server certificate or their keys failed.
    #[error("could not create the development CA or server certificate: {0}")]
    Certificate(#[source] rcgen::Error),
    /// rustls refused the server configuration (protocol versions or the certificate).
    #[error("could not configure TLS for the development provider: {0}")]
    Tls(#[source] rustls::Error),
    /// No port could be bound on 127.0.0.1.
    #[error("could not listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    /// The provider's token signing key could not be generated.
    #[error("could not create the provider signing key: {0}")]
    Key(#[from] keys::KeyError),
}

/// A client registered at the development provider.
#[derive(Clone, Debug)]
pub struct DevClient {
    pub client_id: String,
    pub auth: DevClientAuth,
    /// Audiences (and resources) the client may request; the first is the default.
    pub audiences: Vec<String>,
    /// Scopes the client may request.
    pub scopes: Vec<String>,
}

impl DevClient {
    /// A client with no audiences and no scopes yet.
    pub fn new(client_id: impl Into<String>, auth: DevClientAuth) -> Self {
        DevClient {
            client_id: client_id.into(),
            auth,
            audiences: Vec::new(),
            scopes: Vec::new(),
        }
    }

    pub fn with_audiences<S: AsRef<str>>(mut self, audiences: &[S]) -> Self {
        self.audiences = audiences.iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    pub fn with_scopes<S: AsRef<str>>(mut self, scopes: &[S]) -> Self {
        self.scopes = scopes.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }
}

/// How a client authenticates at the token endpoint.
#[derive(Clone)]
pub enum DevClientAuth {
    /// `client_secret_basic` with this secret.
    SecretBasic(String),
    /// `client_secret_post` with this secret.
    SecretPost(String),
    /// `private_key_jwt`: assertions must be signed by the key of this public JWK.
    PrivateKeyJwt(Value),
    /// `none`: a public client that only names itself.
    None,
}

impl DevClientAuth {
    /// The `token_endpoint_auth_method` name.
    pub fn method(&self) -> &'static str {
        match self {
            DevClientAuth::SecretBasic(_) => "client_secret_basic",
            DevClientAuth::SecretPost(_) => "client_secret_post",
            DevClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
            DevClientAuth::None => "none",
        }
    }
}

impl fmt::Debug for DevClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevClientAuth::SecretBasic(_) => f.write_str("SecretBasic([redacted])"),
            DevClientAuth::SecretPost(_) => f.write_str("SecretPost([redacted])"),
            DevClientAuth::PrivateKeyJwt(jwk) => {
                let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("-");
                write!(f, "PrivateKeyJwt(kid {kid})")
            }
            DevClientAuth::None => f.write_str("None"),
        }
    }
}

/// Configuration of the development provider.
#[derive(Clone, Debug)]
pub struct DevIdpConfig {
    pub token_lifetime: Duration,
    pub clients: Vec<DevClient>,
}

impl Default for DevIdpConfig {
    fn default() -> Self {
        DevIdpConfig {
            token_lifetime: Duration::from_secs(300),
            clients: Vec::new(),
        }
    }
}

/// Requests seen and tokens issued since start (or the last [`DevIdp::reset_counters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub discovery: u64,
    pub jwks: u64,
    /// Every request to `/token`, including those answered by a fault or an error.
    pub token_requests: u64,
    /// Tokens actually issued.
    pub tokens_issued: u64,
    /// Token-exchange grants issued.
    pub exchanges: u64,
    /// Client-credentials grants issued.
    pub client_credentials: u64,
}

#[derive(Default)]
struct AtomicCounters {
    discovery: AtomicU64,
    jwks: AtomicU64,
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    exchanges: AtomicU64,
    client_credentials: AtomicU64,
}

impl AtomicCounters {
    fn all(&self) -> [&AtomicU64; 6] {
        [
            &self.discovery,
            &self.jwks,
            &self.token_requests,
            &self.tokens_issued,
            &self.exchanges,
            &self.client_credentials,
        ]
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct State {
    /// Provider signing keys; the last one signs, all are published.
    keys: Vec<SigningKey>,
    /// Extra public JWKs whose subject/actor tokens are accepted.
    trusted: Vec<Value>,
    clients: Vec<DevClient>,
    token_lifetime: Duration,
    fault: Fault,
    issued: Vec<Value>,
    /// `client_id` + `jti` of every client assertion seen (RFC 7523 replay protection).
    assertion_jtis: HashSet<(String, String)>,
}

struct Shared {
    issuer: String,
    token_endpoint: String,
    ca_pem: String,
    counters: AtomicCounters,
    requests: requests::RequestLog,
    state: Mutex<State>,
    /// People: sign-ins, codes, grants (`people.rs`); locked before `state` when both are.
    people: Mutex<people::PeopleState>,
    people_counters: people::AtomicPeopleCounters,
}

struct Lifetime {
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// A running development provider. Clones share the server; it shuts down when the last clone is
/// dropped or on [`DevIdp::shutdown`].
#[derive(Clone)]
pub struct DevIdp {
    shared: Arc<Shared>,
    life: Arc<Lifetime>,
}

impl fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.shared.issuer)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DevIdp {
    /// Create the CA, the server certificate and the signing key, bind a random port on 127.0.0.1
    /// and start serving.
    pub async fn start(config: DevIdpConfig) -> Result<DevIdp, DevIdpError> {
        let (ca_pem, tls) = http::make_tls()?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(DevIdpError::Bind)?;
        let port = listener.local_addr().map_err(DevIdpError::Bind)?.port();
        let issuer = format!("https://127.0.0.1:{port}");
        let key = SigningKey::generate(KeyAlg::ES256)?;
        let shared = Arc::new(Shared {
            token_endpoint: format!("{issuer}/token"),
            issuer,
            ca_pem,
            counters: AtomicCounters::default(),
            requests: Default::default(),
            state: Mutex::new(State {
                keys: vec![key],
                trusted: Vec::new(),
                clients: config.clients,
                token_lifetime: config.token_lifetime,
                fault: Fault::None,
                issued: Vec::new(),
                assertion_jtis: HashSet::new(),
            }),
            people: Mutex::default(),
            people_counters: people::AtomicPeopleCounters::default(),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(http::accept_loop(listener, TlsAcceptor::from(tls), shared.clone(), rx));
        tracing::debug!(issuer = %shared.issuer, "development provider listening");
        Ok(DevIdp {
            shared,
            life: Arc::new(Lifetime {
                shutdown: tx,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// `https://127.0.0.1:PORT`
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// `{issuer}/token`
    pub fn token_endpoint(&self) -> &str {
        &self.shared.token_endpoint
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.shared.ca_pem
    }

    pub fn counters(&self) -> Counters {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            discovery: get(&c.discovery),
            jwks: get(&c.jwks),
            token_requests: get(&c.token_requests),
            tokens_issued: get(&c.tokens_issued),
            exchanges: get(&c.exchanges),
            client_credentials: get(&c.client_credentials),
        }
    }

    /// Sets every counter back to zero and empties the request log.
    pub fn reset_counters(&self) {
        self.reset_people_counters();
        for c in self.shared.counters.all() {
            c.store(0, Ordering::Relaxed);
        }
        self.shared.requests.clear();
    }

    /// Every `/token` request since start (or the last [`DevIdp::reset_counters`]), in arrival
    /// order, with the concurrency it arrived into and its answer.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.all()
    }

    pub fn set_fault(&self, f: Fault) {
        lock(&self.shared.state).fault = f;
    }

    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.shared.state).token_lifetime = d;
    }

    /// Register a client (replacing one with the same `client_id`).
    pub fn add_client(&self, c: DevClient) {
        let mut st = lock(&self.shared.state);
        st.clients.retain(|old| old.client_id != c.client_id);
        st.clients.push(c);
    }

    /// Accept subject and actor tokens signed by the key of this public JWK.
    pub fn trust_key(&self, jwk: Value) {
        lock(&self.shared.state).trusted.push(jwk);
    }

    /// Sign arbitrary claims with the provider's current key (`iss` and `iat` are added when
    /// missing). Used to make service-account and bot credentials.
    pub fn mint(&self, claims: Value) -> String {
        let mut claims = claims;
        if let Some(obj) = claims.as_object_mut() {
            obj.entry("iss")
                .or_insert_with(|| Value::String(self.shared.issuer.clone()));
            obj.entry("iat").or_insert_with(|| Value::from(unix_now()));
        }
        let st = lock(&self.shared.state);
        match st.keys.last().map(|k| k.sign(&claims)) {
            Some(Ok(token)) => token,
            Some(Err(e)) => {
                tracing::error!(error = %e, "development provider could not sign minted claims");
                String::new()
            }
            None => String::new(),
        }
    }

    /// Start signing with a new key (new `kid`); JWKS keeps publishing the old ones.
    pub fn rotate_key(&self) {
        match SigningKey::generate(KeyAlg::ES256) {
            Ok(k) => lock(&self.shared.state).keys.push(k),
            Err(e) => {
                tracing::error!(error = %e, "development provider could not generate a new key")
            }
        }
    }

    /// The kid the provider signs with now.
    pub fn current_kid(&self) -> String {
        lock(&self.shared.state)
            .keys
            .last()
            .map(|k| k.kid().to_string())
            .unwrap_or_default()
    }

    /// The published JWKS (`{"keys":[...]}`).
    pub fn jwks(&self) -> Value {
        self.shared.jwks()
    }

    /// The claims of every token issued so far.
    pub fn issued(&self) -> Vec<Value> {
        lock(&self.shared.state).issued.clone()
    }

    /// Stop accepting connections, close open ones, and wait for the server task to end.
    pub async fn shutdown(&self) {
        self.life.shutdown.send_replace(true);
        let task = lock(&self.life.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devidp::test_support::*;
    use jsonwebtoken::decode_header;
    use serde_json::json;

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_the_provider_keeps_serving() {
        use tokio::io::AsyncReadExt;
        let (idp, http) = exchange_idp().await;
        let addr = idp.issuer().trim_start_matches("https://").to_string();
        let mut idle = Vec::new();
        for _ in 0..http::MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        // One more: closed at once, without a handshake.
        let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = [0u8; 1];
        // (Under the handshake deadline of 10 s: only the cap closes it sooner.)
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("a connection over the cap is closed, not kept")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // Once the idle ones go, the provider serves again.
        drop(idle);
        let mut served = false;
        for _ in 0..100 {
            if http.get(format!("{}/jwks", idp.issuer())).send().await.is_ok() {
                served = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(served);
    }

    #[tokio::test]
    async fn rotation_publishes_old_and_new_keys() {
        let (idp, http) = exchange_idp().await;
        let old_kid = idp.current_kid();
        let old_subject = idp.mint(json!({"sub": "svc-1", "exp": exp()}));
        idp.rotate_key();
        let new_kid = idp.current_kid();
        assert_ne!(old_kid, new_kid);
        let jwks = get_json(&http, &idp, "/jwks").await;
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec![old_kid.as_str(), new_kid.as_str()]);

        // A subject token signed by the old key is still accepted; the new token uses the new kid.
        let (st, body) = post(&http, &idp, &te_form(&old_subject, &[])).await;
        assert_eq!(st, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(decode_header(token).unwrap().kid.as_deref(), Some(new_kid.as_str()));
        verify_at(&http, &idp, token, "api-a").await;

        // Token lifetime changes apply to the next token.
        idp.set_token_lifetime(Duration::from_secs(5));
        let (_, body) = post(&http, &idp, &te_form(&old_subject, &[])).await;
        assert_eq!(body["expires_in"], 5);
    }
}
