//! The socket server: HTTP/1.1 over a Unix socket, one task per connection, the caller attested
//! once per connection from its peer credentials, routes, JSON errors and limits.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, TokenAsk};
use crate::caller::{self, Caller};
use crate::error::{ApiError, ErrorKind};
use crate::oauth::TOKEN_TYPE_JWT;
use crate::token::Secret;
use crate::upstream::PresentedToken;

/// Largest request body (SPEC section 3: 413 above it).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head (SPEC section 3: 431 above it).
pub const MAX_HEADERS: usize = 16 * 1024;
/// A client must send its request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Connections one process (the `SO_PEERCRED` pid, i.e. all its threads) may hold open at once.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 256;
/// Connections one uid may hold open at once, over all its processes.
pub const MAX_CONNECTIONS_PER_UID: usize = 512;
/// Connections the agent holds open at once (lowered to fit `RLIMIT_NOFILE`).
pub const MAX_CONNECTIONS: usize = 2048;

type Body = Full<Bytes>;

fn json_response(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.status(), e.to_json().to_string().into_bytes());
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(RETRY_AFTER, v);
    }
    resp
}

/// Serves connections from `listener` until `cancel` fires, then lets in-flight requests finish
/// for up to [`SHUTDOWN_GRACE`].
pub async fn serve(listener: UnixListener, agent: Arc<Agent>, cancel: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = ConnLimits::for_this_process();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_ticks = caller::boot_ticks_now();
        let admitted = match stream.peer_cred() {
            Ok(cred) => limits.admit(cred.uid(), cred.pid()).map(|guard| (cred, guard)),
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials; closing the connection");
                continue;
            }
        };
        let (cred, guard) = match admitted {
            Ok(a) => a,
            Err(refusal) => {
                agent.metrics().request("connection", refusal.error.code());
                refuse(stream, refusal, &limits);
                continue;
            }
        };
        let caller = Arc::new(caller::attest(cred.uid(), cred.gid(), cred.pid(), accepted_ticks));
        let agent = agent.clone();
        let service = hyper::service::service_fn(move |req| {
            let agent = agent.clone();
            let caller = caller.clone();
            async move { Ok::<_, Infallible>(handle(&agent, &caller, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADERS * 4)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}"),
    }
}

/// Open connections by process and by uid, and in all; each admitted connection holds a
/// [`ConnGuard`] that gives its place back when the connection ends.
#[derive(Debug)]
pub struct ConnLimits {
    per_process: usize,
    per_uid: usize,
    total: usize,
    open: std::sync::Mutex<OpenConns>,
    refusing: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct OpenConns {
    by_pid: std::collections::HashMap<i32, usize>,
    by_uid: std::collections::HashMap<u32, usize>,
    total: usize,
}

/// Why a connection was not admitted: the response to write before closing it.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    uid: u32,
    pid: i32,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_pid.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                open.by_pid.remove(&self.pid);
            }
        }
        if let Some(n) = open.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.by_uid.remove(&self.uid);
            }
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl ConnLimits {
    pub fn new(per_process: usize, per_uid: usize, total: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            per_process: per_process.max(1),
            per_uid: per_uid.max(1),
            total: total.max(1),
            open: Default::default(),
            refusing: Default::default(),
        })
    }

    /// The default limits, lowered so that the connections fit in the file descriptor limit
    /// (with room left for the provider connections, the audit log and the sinks).
    pub fn for_this_process() -> Arc<ConnLimits> {
        let total = open_files_limit().map_or(MAX_CONNECTIONS, |n| n.saturating_sub(64).clamp(16, MAX_CONNECTIONS));
        ConnLimits::new(
            MAX_CONNECTIONS_PER_PROCESS.min(total / 4),
            MAX_CONNECTIONS_PER_UID.min(total / 2),
            total,
        )
    }

    /// Takes a place for a connection from `uid`/`pid`, or says why there is none.
    pub fn admit(self: &Arc<Self>, uid: u32, pid: Option<i32>) -> Result<ConnGuard, Refusal> {
        let pid = pid.unwrap_or(0);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let by_pid = open.by_pid.get(&pid).copied().unwrap_or(0);
        let by_uid = open.by_uid.get(&uid).copied().unwrap_or(0);
        let refusal = |kind: ErrorKind, text: String| {
            Err(Refusal {
                error: ApiError::new(kind, text).with_retry_after(1),
            })
        };
        if by_pid >= self.per_process {
            return refusal(
                ErrorKind::SlowDown,
                format!(
                    "process {pid} already holds {by_pid} connections to this socket (at most {}); close idle ones or reuse them",
                    self.per_process
                ),
            );
        }
        if by_uid >= self.per_uid {
            return refusal(
                ErrorKind::SlowDown,
                format!(
                    "uid {uid} already holds {by_uid} connections to this socket (at most {}); close idle ones or reuse them",
                    self.per_uid
                ),
            );
        }
        if open.total >= self.total {
            return refusal(
                ErrorKind::SlowDown,
                format!(
                    "the agent is serving its maximum of {} connections; retry shortly",
                    self.total
                ),
            );
        }
        open.total += 1;
        *open.by_pid.entry(pid).or_default() += 1;
        *open.by_uid.entry(uid).or_default() += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            uid,
            pid,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// Refused connections being answered at once; past this, excess connections are closed
/// without an answer (a flood of them must not cost more than this many tasks and descriptors).
pub const MAX_REFUSING: usize = 64;
/// A refused connection must send its request head within this time.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a connection over its limit: reads its request (so an HTTP client sees an ordinary
/// response to what it sent), answers the refusal as JSON with `Connection: close`, and closes.
fn refuse(stream: tokio::net::UnixStream, refusal: Refusal, limits: &Arc<ConnLimits>) {
    use std::sync::atomic::Ordering;
    if limits.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        limits.refusing.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed without an answer
    }
    let limits = limits.clone();
    let error = Arc::new(refusal.error);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let error = error.clone();
        async move { Ok::<_, Infallible>(error_response(&error)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSAL_READ_TIMEOUT)
        .max_buf_size(MAX_HEADERS * 4)
        .serve_connection(TokioIo::new(stream), service);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT * 2, conn).await;
        limits.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Serves `GET /metrics` on a TCP listener (`metrics_listen`) until `cancel` fires.
pub async fn serve_metrics(listener: tokio::net::TcpListener, agent: Arc<Agent>, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let agent = agent.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let agent = agent.clone();
            async move {
                let resp = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    let mut r = json_response(200, agent.metrics_text().into_bytes());
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                    r
                } else {
                    error_response(&ApiError::new(
                        ErrorKind::NotFound,
                        "this listener serves GET /metrics only",
                    ))
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Size of the request head as received (request line and headers).
fn head_size(req: &Request<Incoming>) -> usize {
    let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

async fn handle(agent: &Agent, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
    if head_size(&req) > MAX_HEADERS {
        return error_response(&ApiError::new(
            ErrorKind::HeadersTooLarge,
            format!("request headers are over {MAX_HEADERS} bytes; send less"),
        ));
    }
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/token") => match parse_query(req.uri().query()) {
            Ok(ask) => agent.token(caller, ask).await.map(|body| json_response(200, body)),
            Err(e) => {
                audit_malformed(agent, caller, &e);
                Err(e)
            }
        },
        (&Method::POST, "/v1/token") => match read_body(req).await.and_then(|b| parse_body(&b)) {
            Ok(ask) => agent.token(caller, ask).await.map(|body| json_response(200, body)),
            Err(e) => {
                audit_malformed(agent, caller, &e);
                Err(e)
            }
        },
        (&Method::GET, "/v1/identities") => {
            let body = serde_json::json!({"identities": agent.identities(caller)});
            Ok(json_response(200, body.to_string().into_bytes()))
        }
        (&Method::GET, "/metrics") => {
            let mut resp = json_response(200, agent.metrics_text().into_bytes());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            Ok(resp)
        }
        (&Method::GET, "/v1/health") => {
            let (status, body) = agent.health();
            Ok(json_response(status, body.to_string().into_bytes()))
        }
        (_, "/v1/token" | "/v1/identities" | "/v1/health" | "/metrics") => Err(ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "{} is not served on {path}; use GET (or POST for /v1/token)",
                req.method()
            ),
        )),
        _ => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no endpoint {path}; the API is /v1/token, /v1/identities, /v1/health and /metrics"),
        )),
    };
    let endpoint = crate::output::metrics::endpoint_label(&path);
    match result {
        Ok(resp) => {
            agent.metrics().request(endpoint, "ok");
            resp
        }
        Err(e) => {
            agent.metrics().request(endpoint, e.code());
            error_response(&e)
        }
    }
}

/// A request too malformed to reach the policy is still a denial worth recording.
fn audit_malformed(agent: &Agent, caller: &Caller, e: &ApiError) {
    agent.audit_best_effort(
        "token.denied",
        serde_json::json!({"outcome": "denied", "caller": caller, "reason": e.code(), "error_description": e.description}),
    );
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::invalid_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn parse_min_valid(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>()
        .map_err(|_| ApiError::invalid_request(format!("min_valid={v:?} is not a whole number of seconds")))
}

/// `audience`, `scope`, `identity`, `min_valid`; anything else is an error.
pub fn parse_query(query: Option<&str>) -> Result<TokenAsk, ApiError> {
    let mut ask = TokenAsk::default();
    let mut seen = BTreeSet::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(ApiError::invalid_request(format!(
                "parameter {k:?} is given twice; give it once (scopes go space-separated in one scope=)"
            )));
        }
        match k.as_ref() {
            "audience" => ask.audience = Some(v.into_owned()),
            "scope" => ask.scopes = crate::policy::parse_scopes(&v),
            "identity" => ask.identity = Some(v.into_owned()),
            "min_valid" => ask.min_valid = Some(parse_min_valid(&v)?),
            "subject_token" | "actor_token" | "subject_token_type" | "actor_token_type" => {
                return Err(ApiError::invalid_request(format!(
                    "{k} is accepted in a POST /v1/token JSON body only, never in the query string"
                )));
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown parameter {other:?}; /v1/token takes audience, scope, identity and min_valid"
                )));
            }
        }
    }
    if ask.audience.as_deref() == Some("") {
        return Err(ApiError::invalid_request("audience is empty"));
    }
    Ok(ask)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    identity: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
    min_valid: Option<u64>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
}

pub fn parse_body(body: &[u8]) -> Result<TokenAsk, ApiError> {
    let b: TokenBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!(
            "the body is not a valid token request ({e}); send JSON with identity, audience, scope, min_valid, subject_token, subject_token_type, actor_token, actor_token_type"
        ))
    })?;
    let presented = |t: Option<String>, ty: Option<String>, what: &str| -> Result<Option<PresentedToken>, ApiError> {
        match t {
            Some(t) if t.trim().is_empty() => Err(ApiError::invalid_request(format!("{what} is empty"))),
            Some(t) => Ok(Some(PresentedToken {
                token: Secret::new(t.trim().to_string()),
                token_type: ty.unwrap_or_else(|| TOKEN_TYPE_JWT.to_string()),
            })),
            None if ty.is_some() => Err(ApiError::invalid_request(format!(
                "{what}_type is given without {what}"
            ))),
            None => Ok(None),
        }
    };
    Ok(TokenAsk {
        identity: b.identity,
        audience: b.audience.filter(|a| !a.is_empty()),
        scopes: b.scope.as_deref().map(crate::policy::parse_scopes).unwrap_or_default(),
        min_valid: b.min_valid,
        subject_token: presented(b.subject_token, b.subject_token_type, "subject_token")?,
        actor_token: presented(b.actor_token, b.actor_token_type, "actor_token")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_strict() {
        let ask = parse_query(Some("audience=https%3A%2F%2Fa&scope=b%20a&min_valid=30")).unwrap();
        assert_eq!(ask.audience.as_deref(), Some("https://a"));
        assert_eq!(ask.scopes.iter().cloned().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(ask.min_valid, Some(30));
        let e = parse_query(Some("audience=a&colour=red")).unwrap_err();
        assert!(e.description.contains("colour"));
        let e = parse_query(Some("subject_token=abc")).unwrap_err();
        assert!(e.description.contains("body only"));
        assert!(parse_query(Some("min_valid=soon")).is_err());
        assert!(parse_query(Some("audience=a&audience=b")).is_err());
    }

    #[test]
    fn connection_caps_are_per_process_then_per_uid_then_global() {
        let limits = ConnLimits::new(2, 3, 4);
        let a1 = limits.admit(1000, Some(10)).unwrap();
        let _a2 = limits.admit(1000, Some(10)).unwrap();
        let e = limits.admit(1000, Some(10)).unwrap_err().error;
        assert_eq!((e.status(), e.code()), (429, "slow_down"));
        assert!(e.description.contains("process 10"), "{}", e.description);
        // Another process of the same uid still gets in, up to the uid's cap.
        let _b1 = limits.admit(1000, Some(11)).unwrap();
        let e = limits.admit(1000, Some(12)).unwrap_err().error;
        assert!(e.description.contains("uid 1000"), "{}", e.description);
        // Another uid gets the last place; then the agent is full.
        let _c1 = limits.admit(2000, Some(20)).unwrap();
        let e = limits.admit(3000, Some(30)).unwrap_err().error;
        assert!(e.description.contains("maximum of 4"), "{}", e.description);
        assert_eq!(e.retry_after, Some(1));
        // A closed connection gives its place back.
        drop(a1);
        assert_eq!(limits.open(), 3);
        assert!(limits.admit(3000, Some(30)).is_ok());
    }

    #[test]
    fn default_limits_fit_the_descriptor_limit() {
        let l = ConnLimits::for_this_process();
        assert!(l.per_process <= l.per_uid && l.per_uid <= l.total);
        assert!(l.total <= MAX_CONNECTIONS);
        if let Some(n) = open_files_limit() {
            assert!(l.total < n, "{} connections would not fit in {n} descriptors", l.total);
        }
    }

    #[test]
    fn bodies_are_strict_and_credentials_are_wrapped() {
        let ask = parse_body(br#"{"audience":"a","subject_token":"eyJ.x.y"}"#).unwrap();
        assert_eq!(ask.subject_token.unwrap().token_type, TOKEN_TYPE_JWT);
        let e = parse_body(br#"{"audience":"a","extra":1}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(parse_body(b"not json").is_err());
        assert!(parse_body(br#"{"subject_token_type":"x"}"#).is_err());
    }
}
