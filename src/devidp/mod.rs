//! The embedded development OpenID Connect provider.
//!
//! A small but real provider for `cortexid dev` and the integration tests: HTTPS on 127.0.0.1 with
//! a fresh CA, discovery, JWKS, and a token endpoint that implements `client_credentials` and
//! RFC 8693 token exchange with `client_secret_basic`, `client_secret_post`, `private_key_jwt`
//! (RFC 7523) and `none` client authentication. Faults can be injected into `/token`, and every
//! request is counted, so tests can assert how the agent talks to its provider.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::upstream::keys::{self, KeyAlg, SigningKey};

pub use crate::oauth::{
    CLIENT_ASSERTION_TYPE_JWT_BEARER, GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT,
};

const MAX_BODY: usize = 64 * 1024;
const AUTH_METHODS: [&str; 4] = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"];

/// Why the development provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("could not create the development CA or server certificate: {0}")]
    Certificate(String),
    #[error("could not configure TLS for the development provider: {0}")]
    Tls(String),
    #[error("could not listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
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

/// The `aud` of tokens issued while [`Fault::WrongAudience`] is set.
pub const WRONG_AUDIENCE: &str = "https://wrong-audience.example";
/// The `iss` of tokens issued while [`Fault::WrongIssuer`] is set.
pub const WRONG_ISSUER: &str = "https://wrong-issuer.example";

/// A fault injected into `/token` (discovery and JWKS keep answering). Each is selectable per
/// test with [`DevIdp::set_fault`]; [`Fault::None`] restores normal service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer every `/token` request with this HTTP status and `{"error":"temporarily_unavailable"}`
    /// (with `Retry-After: 1` for 429 and 503).
    Status(u16),
    /// Like [`Fault::Status`], with `Retry-After: secs` whatever the status.
    StatusRetryAfter(u16, u64),
    /// Accept the request and never answer (the connection stays open until shutdown).
    Hang,
    /// Answer normally, but only after this delay.
    Delay(Duration),
    /// Close the connection without answering (the client sees a reset / unexpected EOF).
    Close,
    /// Answer 200 with a body that is not JSON (truncated mid-document).
    MalformedJson,
    /// Answer 200 with a JSON token response that has no `access_token`.
    NoAccessToken,
    /// Issue a token with no `exp` claim and answer without `expires_in`.
    NoExpiry,
    /// Issue a token whose `aud` is [`WRONG_AUDIENCE`] instead of the requested audience.
    WrongAudience,
    /// Issue a token whose `iss` is [`WRONG_ISSUER`] instead of the provider's issuer.
    WrongIssuer,
    /// Issue a token whose signature does not verify (payload changed after signing).
    BadSignature,
    /// The provider's clock is off by this many seconds (positive: ahead): `iat`, `nbf` and
    /// `exp` of issued tokens are shifted; `expires_in` still says the configured lifetime.
    ClockSkew(i64),
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
    state: Mutex<State>,
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
        let (ca_pem, tls) = make_tls()?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(DevIdpError::Bind)?;
        let port = listener.local_addr().map_err(DevIdpError::Bind)?.port();
        let issuer = format!("https://127.0.0.1:{port}");
        let key = SigningKey::generate(KeyAlg::ES256)?;
        let shared = Arc::new(Shared {
            token_endpoint: format!("{issuer}/token"),
            issuer,
            ca_pem,
            counters: AtomicCounters::default(),
            state: Mutex::new(State {
                keys: vec![key],
                trusted: Vec::new(),
                clients: config.clients,
                token_lifetime: config.token_lifetime,
                fault: Fault::None,
                issued: Vec::new(),
                assertion_jtis: HashSet::new(),
            }),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), shared.clone(), rx));
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

    pub fn reset_counters(&self) {
        for c in self.shared.counters.all() {
            c.store(0, Ordering::Relaxed);
        }
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

fn make_tls() -> Result<(String, Arc<rustls::ServerConfig>), DevIdpError> {
    let cert_err = |e: rcgen::Error| DevIdpError::Certificate(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cortexid development CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);

    let leaf_key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(cert_err)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(cert_err)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DevIdpError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key_der)
        .map_err(|e| DevIdpError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca_cert.pem(), Arc::new(config)))
}

/// Resolves once shutdown was requested (or the provider handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    loop {
        let tcp = tokio::select! {
            _ = stopped(&mut rx) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "development provider: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(tcp, acceptor.clone(), shared.clone(), rx.clone()));
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    let tls = tokio::select! {
        _ = stopped(&mut rx) => return,
        r = acceptor.accept(tcp) => match r {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    let close = Arc::new(Notify::new());
    let svc_close = close.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let close = svc_close.clone();
        async move { Ok::<_, Infallible>(handle(shared, close, req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    // Dropping the connection future closes the socket without writing anything more.
    tokio::select! {
        _ = conn => {}
        _ = stopped(&mut rx) => {}
        _ = close.notified() => {}
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value, no_store: bool) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if no_store {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    r
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "invalid_request", "error_description": format!("use {allow}")}),
        false,
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle(shared: Arc<Shared>, close: Arc<Notify>, req: Request<Incoming>) -> Resp {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            bump(&shared.counters.discovery);
            if !get {
                return method_not_allowed("GET");
            }
            json_response(StatusCode::OK, &shared.discovery(), false)
        }
        "/jwks" => {
            bump(&shared.counters.jwks);
            if !get {
                return method_not_allowed("GET");
            }
            json_response(StatusCode::OK, &shared.jwks(), false)
        }
        "/token" => {
            bump(&shared.counters.token_requests);
            let fault = lock(&shared.state).fault;
            match fault {
                Fault::Status(code) => return fault_response(code, (code == 429 || code == 503).then_some(1)),
                Fault::StatusRetryAfter(code, secs) => return fault_response(code, Some(secs)),
                Fault::Hang => return std::future::pending().await,
                Fault::Close => {
                    close.notify_one();
                    return std::future::pending().await;
                }
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::MalformedJson => {
                    return raw_json_response(
                        StatusCode::OK,
                        r#"{"access_token":"eyJhbGciOiJFUzI1NiJ9.e30.c2ln","token_type":"Bea"#,
                    );
                }
                Fault::NoAccessToken => {
                    let lifetime = lock(&shared.state).token_lifetime.as_secs();
                    return json_response(
                        StatusCode::OK,
                        &json!({"token_type": "Bearer", "expires_in": lifetime, "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN}),
                        true,
                    );
                }
                // Served normally; token-shaping faults apply when the token is issued.
                Fault::None
                | Fault::NoExpiry
                | Fault::WrongAudience
                | Fault::WrongIssuer
                | Fault::BadSignature
                | Fault::ClockSkew(_) => {}
            }
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let headers = req.headers().clone();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return error_response(&OAuthError::invalid_request(format!(
                        "the request body is unreadable or larger than {MAX_BODY} bytes"
                    )));
                }
            };
            match shared.token(&headers, &body) {
                Ok(v) => json_response(StatusCode::OK, &v, true),
                Err(e) => error_response(&e),
            }
        }
        other => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": format!("no such endpoint: {other}")}),
            false,
        ),
    }
}

fn fault_response(code: u16, retry_after: Option<u64>) -> Resp {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(
        status,
        &json!({"error": "temporarily_unavailable", "error_description": format!("injected fault: HTTP {code}")}),
        true,
    );
    if let Some(secs) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// A response whose body is sent as given (for malformed-JSON faults).
fn raw_json_response(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An RFC 6749 section 5.2 error.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
        }
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }
    fn invalid_client(d: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: d.into(),
        }
    }
    fn server_error(d: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: d.into(),
        }
    }
}

fn error_response(e: &OAuthError) -> Resp {
    let mut r = json_response(
        e.status,
        &json!({"error": e.code, "error_description": e.description}),
        true,
    );
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cortexid-dev\""),
        );
    }
    r
}

/// A parsed `application/x-www-form-urlencoded` body. Parameters without a value are treated
/// as omitted (RFC 6749 section 3.1).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(
            url::form_urlencoded::parse(body)
                .into_owned()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        )
    }

    /// A parameter that must not repeat (RFC 6749 section 3.1).
    fn single(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
        }
        Ok(first)
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Decode one `application/x-www-form-urlencoded` component (RFC 6749 section 2.3.1).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_basic(value: &HeaderValue) -> Result<(String, String), OAuthError> {
    let malformed =
        || OAuthError::invalid_client("malformed Authorization header: expected Basic base64(client_id:client_secret)");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, rest) = text.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(format!(
            "unsupported Authorization scheme {scheme}: the token endpoint takes Basic client authentication"
        )));
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok((form_decode(id), form_decode(secret)))
}

fn claim_str<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

impl Shared {
    fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": format!("{}/jwks", self.issuer),
            "grant_types_supported": [GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        })
    }

    fn jwks(&self) -> Value {
        let st = lock(&self.state);
        json!({"keys": st.keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
    }

    fn token(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
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
            other => Err(OAuthError::new(
                "unsupported_grant_type",
                format!(
                    "grant_type {other} is not supported; use {GRANT_CLIENT_CREDENTIALS} or {GRANT_TOKEN_EXCHANGE}"
                ),
            )),
        }
    }

    fn authenticate(&self, headers: &HeaderMap, form: &Form) -> Result<DevClient, OAuthError> {
        let basic = headers.get(header::AUTHORIZATION).map(parse_basic).transpose()?;
        let secret = form.single("client_secret")?;
        let assertion = form.single("client_assertion")?;
        let assertion_type = form.single("client_assertion_type")?;
        let form_id = form.single("client_id")?;
        let used = [basic.is_some(), secret.is_some(), assertion.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if used > 1 {
            return Err(OAuthError::invalid_request(
                "the request uses more than one client authentication method",
            ));
        }
        let (method, id) = if let Some((id, _)) = &basic {
            ("client_secret_basic", id.clone())
        } else if secret.is_some() {
            let id = form_id.ok_or_else(|| OAuthError::invalid_request("client_secret was sent without client_id"))?;
            ("client_secret_post", id.to_string())
        } else if let Some(assertion) = assertion {
            if assertion_type != Some(CLIENT_ASSERTION_TYPE_JWT_BEARER) {
                return Err(OAuthError::invalid_client(format!(
                    "client_assertion_type must be {CLIENT_ASSERTION_TYPE_JWT_BEARER}"
                )));
            }
            let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
                .map_err(|_| OAuthError::invalid_client("client_assertion is not a JWT"))?;
            let iss = claim_str(&claims, "iss")
                .ok_or_else(|| OAuthError::invalid_client("client_assertion has no iss claim"))?;
            ("private_key_jwt", iss.to_string())
        } else if let Some(id) = form_id {
            ("none", id.to_string())
        } else {
            return Err(OAuthError::invalid_client(
                "no client authentication: use client_secret_basic, client_secret_post, private_key_jwt, or send client_id",
            ));
        };
        if let Some(form_id) = form_id
            && form_id != id
        {
            return Err(OAuthError::invalid_client(format!(
                "client_id {form_id} does not match the authenticated client {id}"
            )));
        }
        let client = lock(&self.state)
            .clients
            .iter()
            .find(|c| c.client_id == id)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_client(format!("unknown client {id}")))?;
        let expected = client.auth.method();
        if expected != method {
            return Err(OAuthError::invalid_client(format!(
                "client {id} must authenticate with {expected} (the request used {method})"
            )));
        }
        match &client.auth {
            DevClientAuth::SecretBasic(want) => {
                let got = basic.as_ref().map(|(_, s)| s.as_str()).unwrap_or("");
                if !ct_eq(got.as_bytes(), want.as_bytes()) {
                    return Err(OAuthError::invalid_client(format!(
                        "wrong client secret for {id} (client_secret_basic)"
                    )));
                }
            }
            DevClientAuth::SecretPost(want) => {
                if !ct_eq(secret.unwrap_or("").as_bytes(), want.as_bytes()) {
                    return Err(OAuthError::invalid_client(format!(
                        "wrong client secret for {id} (client_secret_post)"
                    )));
                }
            }
            DevClientAuth::PrivateKeyJwt(jwk) => self.verify_client_assertion(&id, jwk, assertion.unwrap_or(""))?,
            DevClientAuth::None => {}
        }
        Ok(client)
    }

    /// RFC 7523 section 3: signature by the registered key, iss = sub = client_id, aud naming the
    /// token endpoint or the issuer, unexpired, and a jti never seen before.
    fn verify_client_assertion(&self, id: &str, jwk: &Value, assertion: &str) -> Result<(), OAuthError> {
        let (key, alg) = keys::decoding_key(jwk)
            .map_err(|e| OAuthError::invalid_client(format!("the key registered for {id} is unusable: {e}")))?;
        let header =
            decode_header(assertion).map_err(|_| OAuthError::invalid_client("client_assertion is not a JWT"))?;
        if header.alg != alg {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion is signed with {:?} but the key registered for {id} is {alg:?}",
                header.alg
            )));
        }
        let mut v = Validation::new(alg);
        v.set_audience(&[self.token_endpoint.as_str(), self.issuer.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.leeway = 30;
        let claims = decode::<Map<String, Value>>(assertion, &key, &v)
            .map_err(|e| {
                OAuthError::invalid_client(match e.kind() {
                    JwtErrorKind::ExpiredSignature => "client_assertion has expired".to_string(),
                    JwtErrorKind::InvalidAudience => format!(
                        "client_assertion aud must contain {} or {}",
                        self.token_endpoint, self.issuer
                    ),
                    JwtErrorKind::InvalidSignature => {
                        format!("client_assertion signature does not verify with the key registered for {id}")
                    }
                    JwtErrorKind::MissingRequiredClaim(c) => format!("client_assertion has no {c} claim"),
                    _ => format!("client_assertion rejected: {e}"),
                })
            })?
            .claims;
        if claim_str(&claims, "iss") != Some(id) || claim_str(&claims, "sub") != Some(id) {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion iss and sub must both be the client_id {id}"
            )));
        }
        let jti =
            claim_str(&claims, "jti").ok_or_else(|| OAuthError::invalid_client("client_assertion has no jti claim"))?;
        if !lock(&self.state)
            .assertion_jtis
            .insert((id.to_string(), jti.to_string()))
        {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion jti {jti} was already used (assertions must not be replayed)"
            )));
        }
        Ok(())
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
        let mut resp = json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime});
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

    const NOW_PLUS: u64 = 300;

    fn http(idp: &DevIdp) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(idp.ca_pem().as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn enc(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    async fn post(http: &reqwest::Client, idp: &DevIdp, form: &[(&str, &str)]) -> (u16, Value) {
        post_with(http.post(idp.token_endpoint()), form).await
    }

    async fn post_with(req: reqwest::RequestBuilder, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = req.form(form).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Verify an issued access token against the published JWKS and return its claims.
    async fn verify_at(http: &reqwest::Client, idp: &DevIdp, token: &str, aud: &str) -> Value {
        let jwks: Value = http
            .get(format!("{}/jwks", idp.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let kid = header.kid.unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[aud]);
        v.set_issuer(&[idp.issuer()]);
        decode::<Value>(token, &key, &v).unwrap().claims
    }

    fn exp() -> u64 {
        unix_now() + NOW_PLUS
    }

    async fn exchange_idp() -> (DevIdp, reqwest::Client) {
        let idp = DevIdp::start(DevIdpConfig {
            token_lifetime: Duration::from_secs(120),
            clients: vec![
                DevClient::new("agent", DevClientAuth::SecretPost("agent-secret".into()))
                    .with_audiences(&["api-a", "api-b"])
                    .with_scopes(&["read", "write"]),
            ],
        })
        .await
        .unwrap();
        let http = http(&idp);
        (idp, http)
    }

    fn te_form<'a>(subject: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut f = vec![
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("client_id", "agent"),
            ("client_secret", "agent-secret"),
            ("subject_token", subject),
            ("subject_token_type", TOKEN_TYPE_JWT),
        ];
        f.extend_from_slice(extra);
        f
    }

    #[tokio::test]
    async fn discovery_and_jwks() {
        let idp = DevIdp::start(DevIdpConfig::default()).await.unwrap();
        let http = http(&idp);
        assert!(idp.issuer().starts_with("https://127.0.0.1:"));
        let d: Value = http
            .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["issuer"], idp.issuer());
        assert_eq!(d["token_endpoint"], format!("{}/token", idp.issuer()));
        assert_eq!(d["jwks_uri"], format!("{}/jwks", idp.issuer()));
        assert!(
            d["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(GRANT_TOKEN_EXCHANGE))
        );
        assert_eq!(d["token_endpoint_auth_methods_supported"].as_array().unwrap().len(), 4);

        let jwks: Value = http
            .get(format!("{}/jwks", idp.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], idp.current_kid().as_str());
        assert_eq!(keys[0]["kty"], "EC");
        assert!(keys[0].get("d").is_none());

        let missing = http.get(format!("{}/nope", idp.issuer())).send().await.unwrap();
        assert_eq!(missing.status().as_u16(), 404);
        let get_token = http.get(idp.token_endpoint()).send().await.unwrap();
        assert_eq!(get_token.status().as_u16(), 405);

        let c = idp.counters();
        assert_eq!((c.discovery, c.jwks, c.token_requests, c.tokens_issued), (1, 1, 1, 0));
        idp.shutdown().await;
        assert!(http.get(format!("{}/jwks", idp.issuer())).send().await.is_err());
    }

    #[tokio::test]
    async fn client_credentials_with_each_auth_method() {
        let jwt_key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let secret = "s3cr:t/+ &x";
        let idp = DevIdp::start(DevIdpConfig {
            token_lifetime: Duration::from_secs(60),
            clients: vec![
                DevClient::new("basic:client", DevClientAuth::SecretBasic(secret.into()))
                    .with_audiences(&["api"])
                    .with_scopes(&["read"]),
                DevClient::new("post", DevClientAuth::SecretPost("p-secret".into())).with_audiences(&["api"]),
                DevClient::new("jwt", DevClientAuth::PrivateKeyJwt(jwt_key.public_jwk().clone()))
                    .with_audiences(&["api"]),
                DevClient::new("public", DevClientAuth::None).with_audiences(&["api"]),
            ],
        })
        .await
        .unwrap();
        let http = http(&idp);
        let cc = [("grant_type", GRANT_CLIENT_CREDENTIALS)];

        // client_secret_basic, with id and secret form-urlencoded inside the header.
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", enc("basic:client"), enc(secret)))
        );
        let (st, body) = post_with(
            http.post(idp.token_endpoint()).header("authorization", &basic),
            &[("grant_type", GRANT_CLIENT_CREDENTIALS), ("scope", "read")],
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 60);
        assert_eq!(body["scope"], "read");
        assert!(body.get("issued_token_type").is_none());
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api").await;
        assert_eq!(claims["sub"], "basic:client");
        assert_eq!(claims["client_id"], "basic:client");
        assert_eq!(claims["aud"], "api");
        assert_eq!(claims["scope"], "read");
        assert_eq!(claims["exp"].as_u64().unwrap(), claims["iat"].as_u64().unwrap() + 60);

        // Wrong secret.
        let wrong = format!("Basic {}", STANDARD.encode(format!("{}:nope", enc("basic:client"))));
        let (st, body) = post_with(http.post(idp.token_endpoint()).header("authorization", wrong), &cc).await;
        assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));

        // client_secret_post.
        let (st, body) = post(
            &http,
            &idp,
            &[cc[0], ("client_id", "post"), ("client_secret", "p-secret")],
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert!(body.get("scope").is_none());
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api").await;
        assert_eq!(claims["sub"], "post");
        assert!(claims.get("scope").is_none());

        // The wrong method for a registered client names the expected one.
        let basic_for_post = format!("Basic {}", STANDARD.encode("post:p-secret"));
        let (st, body) = post_with(
            http.post(idp.token_endpoint()).header("authorization", basic_for_post),
            &cc,
        )
        .await;
        assert_eq!(st, 401);
        assert_eq!(body["error"], "invalid_client");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("client_secret_post"),
            "{body}"
        );

        // private_key_jwt.
        let assertion = |jti: &str| {
            jwt_key
                .sign(&json!({"iss": "jwt", "sub": "jwt", "aud": idp.token_endpoint(), "jti": jti, "exp": exp()}))
                .unwrap()
        };
        let a1 = assertion("one");
        let jwt_form = |a: &str| {
            vec![
                ("grant_type".to_string(), GRANT_CLIENT_CREDENTIALS.to_string()),
                (
                    "client_assertion_type".to_string(),
                    CLIENT_ASSERTION_TYPE_JWT_BEARER.to_string(),
                ),
                ("client_assertion".to_string(), a.to_string()),
            ]
        };
        let resp = http
            .post(idp.token_endpoint())
            .form(&jwt_form(&a1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api").await["sub"],
            "jwt"
        );
        // Replayed jti.
        let resp = http
            .post(idp.token_endpoint())
            .form(&jwt_form(&a1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error_description"].as_str().unwrap().contains("already used"),
            "{body}"
        );
        // Signed by another key.
        let other = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let forged = other
            .sign(&json!({"iss": "jwt", "sub": "jwt", "aud": idp.issuer(), "jti": "two", "exp": exp()}))
            .unwrap();
        let resp = http
            .post(idp.token_endpoint())
            .form(&jwt_form(&forged))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        // Wrong audience.
        let bad_aud = jwt_key
            .sign(&json!({"iss": "jwt", "sub": "jwt", "aud": "https://elsewhere", "jti": "three", "exp": exp()}))
            .unwrap();
        let resp = http
            .post(idp.token_endpoint())
            .form(&jwt_form(&bad_aud))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);

        // none.
        let (st, body) = post(&http, &idp, &[cc[0], ("client_id", "public")]).await;
        assert_eq!(st, 200, "{body}");
        // Unknown client, unknown grant.
        let (st, body) = post(&http, &idp, &[cc[0], ("client_id", "nobody")]).await;
        assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
        let (st, body) = post(&http, &idp, &[("grant_type", "password"), ("client_id", "public")]).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("unsupported_grant_type")));

        let c = idp.counters();
        assert_eq!(c.tokens_issued, 4);
        assert_eq!(c.client_credentials, 4);
        assert_eq!(c.exchanges, 0);
        assert_eq!(c.token_requests, 11);
        assert_eq!(idp.issued().len(), 4);
    }

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

    #[tokio::test]
    async fn faults_and_counters() {
        let (idp, http) = exchange_idp().await;
        let form = [
            ("grant_type", GRANT_CLIENT_CREDENTIALS),
            ("client_id", "agent"),
            ("client_secret", "agent-secret"),
        ];
        idp.set_fault(Fault::Status(503));
        let resp = http.post(idp.token_endpoint()).form(&form).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        // Discovery and JWKS keep answering.
        let d = http
            .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
            .send()
            .await
            .unwrap();
        assert_eq!(d.status().as_u16(), 200);

        idp.set_fault(Fault::Status(500));
        let resp = http.post(idp.token_endpoint()).form(&form).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 500);
        assert!(resp.headers().get("retry-after").is_none());

        idp.set_fault(Fault::Close);
        let err = http.post(idp.token_endpoint()).form(&form).send().await;
        assert!(err.is_err(), "a closed connection is an error");

        idp.set_fault(Fault::Hang);
        let err = http
            .post(idp.token_endpoint())
            .form(&form)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(err.unwrap_err().is_timeout());

        let c = idp.counters();
        assert_eq!(
            c,
            Counters {
                discovery: 1,
                token_requests: 4,
                ..Counters::default()
            }
        );

        idp.set_fault(Fault::None);
        idp.reset_counters();
        let (st, _) = post(&http, &idp, &form).await;
        assert_eq!(st, 200);
        assert_eq!(
            idp.counters(),
            Counters {
                token_requests: 1,
                tokens_issued: 1,
                client_credentials: 1,
                ..Counters::default()
            }
        );
        idp.shutdown().await;
    }

    #[tokio::test]
    async fn rotation_publishes_old_and_new_keys() {
        let (idp, http) = exchange_idp().await;
        let old_kid = idp.current_kid();
        let old_subject = idp.mint(json!({"sub": "svc-1", "exp": exp()}));
        idp.rotate_key();
        let new_kid = idp.current_kid();
        assert_ne!(old_kid, new_kid);
        let jwks: Value = http
            .get(format!("{}/jwks", idp.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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

    #[test]
    fn form_decoding_and_redaction() {
        assert_eq!(form_decode("a%3Ab+c%2"), "a:b c%2");
        let auth = DevClientAuth::SecretBasic("hunter2".into());
        assert!(!format!("{auth:?}").contains("hunter2"));
        let client = DevClient::new("x", DevClientAuth::SecretPost("hunter2".into()));
        assert!(!format!("{client:?}").contains("hunter2"));
    }
}
