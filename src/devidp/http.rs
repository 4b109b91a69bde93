//! The development provider's HTTPS server: a fresh CA and server certificate, the accept loop,
//! one task per connection, routing, and the JSON and OAuth error responses.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use super::oauth::OAuthError;
use super::{DevIdpError, Shared, bump, faults};

/// The largest `/token` request body read.
const MAX_BODY: usize = 64 * 1024;
/// Connections served at once; more are closed at accept, so idle connections cannot take the
/// descriptors of the process (which, under `cortexid dev`, is the agent's too).
pub(super) const MAX_CONNECTIONS: usize = 256;
/// A client must finish its TLS handshake, and send each request head, within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh CA and a server certificate it signs for 127.0.0.1 and localhost: the CA's PEM and the
/// TLS configuration that serves the certificate.
pub(crate) fn make_tls() -> Result<(String, Arc<rustls::ServerConfig>), DevIdpError> {
    let cert_err = DevIdpError::Certificate;
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
        .map_err(DevIdpError::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key_der)
        .map_err(DevIdpError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca_cert.pem(), Arc::new(config)))
}

/// Resolves once shutdown was requested (or the provider handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut rx: watch::Receiver<bool>,
) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(place) = places.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let (acceptor, shared, rx) = (acceptor.clone(), shared.clone(), rx.clone());
        tokio::spawn(async move {
            serve_connection(tcp, acceptor, shared, rx).await;
            drop(place);
        });
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    let tls = tokio::select! {
        _ = stopped(&mut rx) => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            _ => return,
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
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    // Dropping the connection future closes the socket without writing anything more.
    tokio::select! {
        _ = conn => {}
        _ = stopped(&mut rx) => {}
        _ = close.notified() => {}
    }
}

pub(super) type Resp = Response<Full<Bytes>>;

pub(super) fn json_response(status: StatusCode, body: &Value, no_store: bool) -> Resp {
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
            let seen = shared.requests.arrive();
            let answer = token(&shared, &close, req).await;
            seen.answered(answer.status().as_u16());
            answer
        }
        path if super::signin::ROUTES.contains(&path) => super::signin::handle(&shared, req).await,
        other => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": format!("no such endpoint: {other}")}),
            false,
        ),
    }
}

/// `/token`: the injected fault, else the grant.
async fn token(shared: &Arc<Shared>, close: &Notify, req: Request<Incoming>) -> Resp {
    if let Some(answer) = faults::before_token(shared, close).await {
        return answer;
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

/// An RFC 6749 error answer, for the people endpoints (`signin`).
pub(super) fn oauth_error_response(e: &OAuthError) -> Resp {
    error_response(e)
}
