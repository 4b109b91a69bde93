//! A client of the agent's socket API (used by the CLI and by tests): HTTP/1.1 over the Unix
//! socket with hyperlocal's connector and hyper-util's pooling client, so connections are kept
//! alive between requests.
//!
//! Credentials (`subject_token`, `actor_token`) only ever travel in a `POST` body, never in a URL,
//! and nothing here prints or `Debug`s a token: [`TokenRequest`] and [`Response`] redact.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyperlocal::UnixConnector;

/// Where the agent listens when neither `--socket` nor `CORTEXID_SOCKET` says otherwise.
pub use crate::config::DEFAULT_SOCKET;

/// The token type of a JWT credential presented to `/v1/token` (RFC 8693 section 3).
pub use crate::oauth::TOKEN_TYPE_JWT;

/// The socket path when none is given.
pub fn default_socket_path() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// Why a request to the agent failed before an HTTP answer arrived (or the answer was unusable).
/// An HTTP error status is not a `ClientError`: it is a [`Response`] whose `status` says so.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent socket at {}: is cortexid running? set --socket or CORTEXID_SOCKET", .0.display())]
    NoSocket(PathBuf),
    #[error(
        "nothing is listening on {}: the socket file exists but no agent serves it (is cortexid running? set --socket or CORTEXID_SOCKET)",
        .0.display()
    )]
    NotListening(PathBuf),
    #[error(
        "permission denied connecting to {}: this user may not use the agent's socket (check the socket's and its directory's mode and group: socket_mode, socket_group)",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    #[error("no answer from the agent at {} within {}", .path.display(), humantime::format_duration(*.after))]
    Timeout { path: PathBuf, after: Duration },
    #[error("cannot talk to the agent at {}: {message}", .path.display())]
    Transport { path: PathBuf, message: String },
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("the agent answered {status} with something that is not JSON: {message}")]
    NotJson { status: u16, message: String },
}

/// An answer from the agent, whatever its status.
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may hold a token: show only its size.
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::NotJson {
            status: self.status,
            message: e.to_string(),
        })
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `Retry-After` header in seconds, when it is there and is a number of seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(hyper::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// What to ask `/v1/token` for. Its `Debug` never shows a credential.
#[derive(Default, Clone)]
pub struct TokenRequest {
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub identity: Option<String>,
    /// Seconds the token must still be valid for.
    pub min_valid: Option<u64>,
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
}

fn redacted(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("identity", &self.identity)
            .field("min_valid", &self.min_valid)
            .field("subject_token", &redacted(&self.subject_token))
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token", &redacted(&self.actor_token))
            .field("actor_token_type", &self.actor_token_type)
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a space is `%20` (never
/// `+`) and `&`, `=`, `#`, `+`, `/`, `?` in a value cannot change the query's meaning.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

impl TokenRequest {
    /// Whether this request presents a credential (and so must be a `POST`).
    pub fn presents_credential(&self) -> bool {
        self.subject_token.is_some() || self.actor_token.is_some()
    }

    /// The scopes as the API wants them: one space-separated string, or `None` when there are none.
    pub fn scope(&self) -> Option<String> {
        let scopes: Vec<&str> = self.scopes.iter().flat_map(|s| s.split_whitespace()).collect();
        (!scopes.is_empty()).then(|| scopes.join(" "))
    }

    /// The query string of a `GET /v1/token`. Credentials are never part of it.
    pub fn query(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(a) = &self.audience {
            pairs.push(("audience", a.clone()));
        }
        if let Some(s) = self.scope() {
            pairs.push(("scope", s));
        }
        if let Some(i) = &self.identity {
            pairs.push(("identity", i.clone()));
        }
        if let Some(m) = self.min_valid {
            pairs.push(("min_valid", m.to_string()));
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The JSON body of a `POST /v1/token`: only the fields that are set.
    pub fn body(&self) -> serde_json::Value {
        let mut b = serde_json::Map::new();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                b.insert(k.to_string(), v);
            }
        };
        put("identity", self.identity.clone().map(Into::into));
        put("audience", self.audience.clone().map(Into::into));
        put("scope", self.scope().map(Into::into));
        put("min_valid", self.min_valid.map(Into::into));
        put("subject_token", self.subject_token.clone().map(Into::into));
        put("subject_token_type", self.subject_token_type.clone().map(Into::into));
        put("actor_token", self.actor_token.clone().map(Into::into));
        put("actor_token_type", self.actor_token_type.clone().map(Into::into));
        serde_json::Value::Object(b)
    }
}

/// A keep-alive client of one agent socket. Cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct SocketClient {
    path: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
    timeout: Option<Duration>,
}

impl fmt::Debug for SocketClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketClient")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SocketClient {
    pub fn new(path: impl Into<PathBuf>) -> SocketClient {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(UnixConnector);
        SocketClient {
            path: path.into(),
            client,
            timeout: None,
        }
    }

    /// Gives up on a request (connect, send, and reading the whole answer) after `timeout`.
    /// Without it a request waits as long as the agent takes.
    pub fn with_timeout(mut self, timeout: Duration) -> SocketClient {
        self.timeout = Some(timeout);
        self
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Says in plain words what is wrong, from the `io::Error` behind hyper's wrappers.
    fn error(&self, e: &(dyn std::error::Error + 'static)) -> ClientError {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::NotFound => ClientError::NoSocket(self.path.clone()),
                    std::io::ErrorKind::ConnectionRefused => ClientError::NotListening(self.path.clone()),
                    std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.path.clone()),
                    _ => self.transport(io),
                };
            }
            cur = err.source();
        }
        self.transport(e)
    }

    fn transport(&self, e: &dyn std::error::Error) -> ClientError {
        // hyper's top-level messages are terse ("client error (Connect)"): name every cause.
        let mut message = e.to_string();
        let mut cur = e.source();
        while let Some(err) = cur {
            message.push_str(": ");
            message.push_str(&err.to_string());
            cur = err.source();
        }
        ClientError::Transport {
            path: self.path.clone(),
            message,
        }
    }

    /// The `unix://` URI hyperlocal's connector understands: the socket path hex-encoded as host.
    fn uri(&self, path_and_query: &str) -> Result<hyper::Uri, ClientError> {
        if !path_and_query.starts_with('/') {
            return Err(ClientError::Request(format!(
                "the path {path_and_query:?} does not start with '/'"
            )));
        }
        // The connector decodes the host back into a path as UTF-8.
        let socket = self.path.to_str().ok_or_else(|| {
            ClientError::Request(format!("the socket path {} is not valid UTF-8", self.path.display()))
        })?;
        let host: String = socket.bytes().map(|b| format!("{b:02x}")).collect();
        format!("unix://{host}:0{path_and_query}")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| {
                ClientError::Request(format!("invalid path {path_and_query:?}: {e}"))
            })
    }

    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<Response, ClientError> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| self.error(&e))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.map_err(|e| self.error(&e))?.to_bytes();
            Ok(Response { status, headers, body })
        };
        match self.timeout {
            Some(after) => tokio::time::timeout(after, exchange)
                .await
                .map_err(|_| ClientError::Timeout {
                    path: self.path.clone(),
                    after,
                })?,
            None => exchange.await,
        }
    }

    fn request(
        &self,
        method: hyper::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(self.uri(path_and_query)?)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("cortexid/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Request(e.to_string()))
    }

    /// `GET path_and_query` (already encoded).
    pub async fn get(&self, path_and_query: &str) -> Result<Response, ClientError> {
        let req = self.request(hyper::Method::GET, path_and_query, None)?;
        self.send(req).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Response, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Request(e.to_string()))?;
        let req = self.request(hyper::Method::POST, path, Some(bytes))?;
        self.send(req).await
    }

    /// `GET /v1/token?…` without credentials, `POST /v1/token` with them (credentials never go
    /// in a URL).
    pub async fn token(&self, req: &TokenRequest) -> Result<Response, ClientError> {
        if req.presents_credential() {
            self.post_json("/v1/token", &req.body()).await
        } else {
            let q = req.query();
            if q.is_empty() {
                self.get("/v1/token").await
            } else {
                self.get(&format!("/v1/token?{q}")).await
            }
        }
    }
}

/// A stand-in agent for tests: a hyper HTTP/1.1 server on a Unix socket in a temp dir.
#[cfg(test)]
pub(crate) mod test_agent {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// What the server saw of one request.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub method: String,
        pub uri: String,
        pub content_type: Option<String>,
        pub body: String,
    }

    /// What the server answers.
    pub(crate) struct Answer {
        pub status: u16,
        pub headers: Vec<(&'static str, String)>,
        pub body: String,
    }

    impl Answer {
        pub fn json(status: u16, body: serde_json::Value) -> Answer {
            Answer {
                status,
                headers: vec![("content-type", "application/json".into())],
                body: body.to_string(),
            }
        }
        pub fn text(status: u16, body: &str) -> Answer {
            Answer {
                status,
                headers: vec![("content-type", "text/plain".into())],
                body: body.into(),
            }
        }
        pub fn header(mut self, name: &'static str, value: &str) -> Answer {
            self.headers.push((name, value.into()));
            self
        }
    }

    /// Serves `agent.sock` in `dir` until the runtime ends; returns its path and the request log.
    pub(crate) async fn serve(dir: &Path, answer: fn(&Seen) -> Answer) -> (PathBuf, Arc<Mutex<Vec<Seen>>>) {
        let path = dir.join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let seen = Seen {
                                method,
                                uri,
                                content_type,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            };
                            let a = answer(&seen);
                            log.lock().unwrap().push(seen);
                            let mut resp = hyper::Response::builder().status(a.status);
                            for (k, v) in a.headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, std::convert::Infallible>(resp.body(Full::new(Bytes::from(a.body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (path, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_agent::{Answer, serve};

    /// Answers by path, like the agent would.
    fn route(seen: &test_agent::Seen) -> Answer {
        if seen.uri.starts_with("/v1/token") {
            Answer::json(
                200,
                serde_json::json!({"access_token": "eyJ.test.sig", "token_type": "Bearer",
                    "expires_in": 287, "expires_at": "2026-11-28T12:00:00Z"}),
            )
        } else if seen.uri == "/v1/busy" {
            Answer::json(
                429,
                serde_json::json!({"error": "slow_down", "error_description": "too many requests"}),
            )
            .header("retry-after", "7")
        } else {
            Answer::json(
                404,
                serde_json::json!({"error": "not_found", "error_description": "no such path"}),
            )
        }
    }

    #[test]
    fn queries_are_percent_encoded_and_credentials_stay_out_of_them() {
        let req = TokenRequest {
            audience: Some("https://a.example/x?y=1&z#f".into()),
            scopes: vec!["read".into(), "write admin+x".into()],
            identity: Some("pay ments".into()),
            min_valid: Some(60),
            subject_token: Some("eyJ.secret.sig".into()),
            ..TokenRequest::default()
        };
        let q = req.query();
        assert_eq!(
            q,
            "audience=https%3A%2F%2Fa.example%2Fx%3Fy%3D1%26z%23f&scope=read%20write%20admin%2Bx\
             &identity=pay%20ments&min_valid=60"
        );
        assert!(!q.contains("secret"));
        // The server parses the query as application/x-www-form-urlencoded: it must round-trip.
        let back: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        assert_eq!(back[0].1, "https://a.example/x?y=1&z#f");
        assert_eq!(back[1].1, "read write admin+x");
        assert_eq!(back[2].1, "pay ments");
        assert_eq!(percent_encode("aZ09-._~ é"), "aZ09-._~%20%C3%A9");
        assert_eq!(TokenRequest::default().query(), "");
    }

    #[test]
    fn bodies_hold_only_set_fields_and_debug_redacts() {
        let req = TokenRequest {
            audience: Some("aud".into()),
            scopes: vec![" a  b ".into(), "".into()],
            actor_token: Some("eyJ.actor.secret".into()),
            actor_token_type: Some(TOKEN_TYPE_JWT.into()),
            subject_token: Some("eyJ.subject.secret".into()),
            ..TokenRequest::default()
        };
        assert!(req.presents_credential());
        assert_eq!(
            req.body(),
            serde_json::json!({"audience": "aud", "scope": "a b", "subject_token": "eyJ.subject.secret",
                "actor_token": "eyJ.actor.secret", "actor_token_type": TOKEN_TYPE_JWT})
        );
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        let resp = Response {
            status: 200,
            headers: hyper::HeaderMap::new(),
            body: Bytes::from_static(br#"{"access_token":"eyJ.secret"}"#),
        };
        assert!(!format!("{resp:?}").contains("secret"));
    }

    #[test]
    fn uris_hex_encode_the_socket_and_reject_bad_paths() {
        let c = SocketClient::new("/run/x.sock");
        let uri = c.uri("/v1/token?a=b").unwrap();
        assert_eq!(uri.scheme_str(), Some("unix"));
        assert_eq!(uri.host(), Some("2f72756e2f782e736f636b"));
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/v1/token?a=b");
        assert!(matches!(c.uri("v1/health"), Err(ClientError::Request(_))));
        assert!(matches!(c.uri("/v1/a b"), Err(ClientError::Request(_))));
        assert_eq!(default_socket_path(), PathBuf::from("/run/cortexid/agent.sock"));
    }

    #[tokio::test]
    async fn get_post_and_token_work_end_to_end_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seen) = serve(dir.path(), route).await;
        let c = SocketClient::new(&path).with_timeout(Duration::from_secs(10));

        let r = c.get("/v1/health").await.unwrap();
        assert_eq!(r.status, 404);
        assert!(!r.is_success());
        assert_eq!(r.json().unwrap()["error"], "not_found");

        let r = c.get("/v1/busy").await.unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.retry_after(), Some(7));

        let r = c.post_json("/v1/other", &serde_json::json!({"k": "v"})).await.unwrap();
        assert_eq!(r.status, 404);

        // No credential: a GET with the parameters in the query.
        let plain = TokenRequest {
            audience: Some("https://payments.internal".into()),
            scopes: vec!["payments.read payments.write".into()],
            identity: Some("payments".into()),
            min_valid: Some(300),
            ..TokenRequest::default()
        };
        let r = c.token(&plain).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json().unwrap()["access_token"], "eyJ.test.sig");
        assert!(r.text().contains("eyJ.test.sig"));

        // A credential: a POST with everything in the body.
        let presented = TokenRequest {
            actor_token: Some("eyJ.actor.sig".into()),
            actor_token_type: Some(TOKEN_TYPE_JWT.into()),
            ..plain.clone()
        };
        let r = c.token(&presented).await.unwrap();
        assert_eq!(r.status, 200);

        // A clone shares the pool and works as well.
        assert_eq!(c.clone().get("/v1/identities").await.unwrap().status, 404);

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].uri, "/v1/health");
        assert_eq!(seen[2].method, "POST");
        assert_eq!(seen[2].content_type.as_deref(), Some("application/json"));
        assert_eq!(seen[2].body, r#"{"k":"v"}"#);
        assert_eq!(seen[3].method, "GET");
        assert_eq!(
            seen[3].uri,
            "/v1/token?audience=https%3A%2F%2Fpayments.internal&scope=payments.read%20payments.write\
             &identity=payments&min_valid=300"
        );
        assert!(seen[3].body.is_empty());
        assert_eq!(seen[4].method, "POST");
        assert_eq!(seen[4].uri, "/v1/token");
        assert!(!seen[4].uri.contains("actor"));
        let body: serde_json::Value = serde_json::from_str(&seen[4].body).unwrap();
        assert_eq!(body["actor_token"], "eyJ.actor.sig");
        assert_eq!(body["actor_token_type"], TOKEN_TYPE_JWT);
        assert_eq!(body["scope"], "payments.read payments.write");
        assert_eq!(body["min_valid"], 300);
        assert_eq!(body["identity"], "payments");
    }

    #[test]
    fn io_errors_are_named_plainly() {
        let c = SocketClient::new("/run/x.sock");
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = c.error(&io);
        assert!(matches!(e, ClientError::PermissionDenied(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("permission denied connecting to /run/x.sock: "),
            "{e}"
        );
        let io = std::io::Error::other("boom");
        assert_eq!(
            c.error(&io).to_string(),
            "cannot talk to the agent at /run/x.sock: boom"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let c = SocketClient::new(&missing);
        let err = c.get("/v1/health").await.unwrap_err();
        assert!(matches!(err, ClientError::NoSocket(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no agent socket at {}: is cortexid running? set --socket or CORTEXID_SOCKET",
                missing.display()
            )
        );
        let err = c.token(&TokenRequest::default()).await.unwrap_err();
        assert!(err.to_string().contains("no agent socket at"), "{err}");
    }

    #[tokio::test]
    async fn a_stale_socket_says_nothing_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = SocketClient::new(&path).get("/v1/health").await.unwrap_err();
        assert!(matches!(err, ClientError::NotListening(_)), "{err:?}");
        assert!(err.to_string().contains("nothing is listening on"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Accepts and then never answers.
        let held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let err = SocketClient::new(&path)
            .with_timeout(Duration::from_millis(200))
            .get("/v1/health")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("within 200ms"), "{err}");
        held.abort();
    }
}
