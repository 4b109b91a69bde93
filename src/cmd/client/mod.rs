//! A client of the agent's socket API (used by the CLI, the daemon's watchdog and the tests):
//! HTTP/1.1 over the Unix socket with its own connector (which checks who serves the socket) and
//! hyper-util's pooling client, so connections are kept alive between requests.
//!
//! - this file: [`SocketClient`], its [`Response`] and its [`ClientError`];
//! - `blocking.rs`: one request over a plain blocking socket, for `cortexid token`;
//! - `fast.rs`: `cortexid token`'s command line read without clap, when it is the common case;
//! - `request.rs`: `TokenRequest`, what to ask `/v1/token` for and how it is encoded;
//! - `trust.rs`: whether the uid serving the socket may be trusted (checked on every connection);
//! - `test_agent.rs` (tests only): a stand-in agent on a Unix socket for unit tests.
//!
//! Credentials (`subject_token`, `actor_token`) only ever travel in a `POST` body, never in a URL,
//! and nothing here prints or `Debug`s a token: `TokenRequest` and [`Response`] redact.

pub(crate) mod blocking;
pub mod fast;
mod request;
#[cfg(test)]
pub(crate) mod test_agent;
pub(crate) mod trust;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use request::TokenRequest;

use crate::config::DEFAULT_SOCKET;

/// The socket path when neither `--socket` nor `CORTEXID_SOCKET` says otherwise.
pub(crate) fn default_socket_path() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// Why a request to the agent failed before an HTTP answer arrived (or the answer was unusable).
/// An HTTP error status is not a `ClientError`: it is a [`Response`] whose `status` says so.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No file at the socket path: the agent is not running, or another path was meant.
    #[error("no agent socket at {}: is cortexid running? set --socket or CORTEXID_SOCKET", .0.display())]
    NoSocket(PathBuf),
    /// The socket file exists but nothing accepts connections on it (a stale socket).
    #[error(
        "nothing is listening on {}: the socket file exists but no agent serves it (is cortexid running? set --socket or CORTEXID_SOCKET)",
        .0.display()
    )]
    NotListening(PathBuf),
    /// This user may not connect to the socket (its mode, or its directory's).
    #[error(
        "permission denied connecting to {}: this user may not use the agent's socket (check the socket's and its directory's mode and group: socket_mode, socket_group)",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    /// Another uid serves the socket (see `trust.rs`); the text says who and what to change.
    #[error("{0}")]
    Untrusted(String),
    /// The whole exchange took longer than [`SocketClient::with_timeout`] allows.
    #[error("no answer from the agent at {} within {}", .path.display(), humantime::format_duration(*.after))]
    Timeout { path: PathBuf, after: Duration },
    /// Any other failure to connect, send or read; `message` names every cause.
    #[error("cannot talk to the agent at {}: {message}", .path.display())]
    Transport { path: PathBuf, message: String },
    /// The request could not be built (a path without a leading `/`, a socket path that is not
    /// UTF-8).
    #[error("cannot build the request: {0}")]
    Request(String),
    /// An answer arrived, but its body is not JSON where JSON was expected.
    #[error("the agent answered {status} with something that is not JSON: {message}")]
    NotJson { status: u16, message: String },
}

/// An answer from the agent, whatever its status.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    pub headers: hyper::HeaderMap,
    /// The whole body; it may hold a token, so read it through [`Response::json`] or
    /// [`Response::text`] and never log it.
    pub(crate) body: Bytes,
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
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `Retry-After` header in seconds, when it is there and is a number of seconds.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(hyper::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Connects to the agent's socket and refuses a server the client does not trust
/// ([`trust::check`] on the connection's peer credentials), before anything is sent.
#[derive(Clone, Debug)]
struct TrustedConnector {
    path: PathBuf,
}

impl tower_service::Service<hyper::Uri> for TrustedConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            let stream = connect_patiently(&path).await?;
            let server = stream.peer_cred()?.uid();
            trust::check(server, &path).map_err(std::io::Error::other)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Connects to `path`, waiting (up to 10 s, in growing steps) while the socket's queue is full
/// (`EAGAIN`: the agent is busy, or another user floods it with connections) instead of failing
/// at once, as a blocking `connect(2)` would wait.
async fn connect_patiently(path: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut step = Duration::from_millis(2);
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tokio::time::Instant::now() < until => {
                tokio::time::sleep(step).await;
                step = (step * 2).min(Duration::from_millis(100));
            }
            connected => return connected,
        }
    }
}

/// A keep-alive client of one agent socket. Cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct SocketClient {
    path: PathBuf,
    client: Client<TrustedConnector, Full<Bytes>>,
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
        let path: PathBuf = path.into();
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(TrustedConnector { path: path.clone() });
        SocketClient {
            path,
            client,
            timeout: None,
        }
    }

    /// Gives up on a request (connect, send, and reading the whole answer) after `timeout`.
    /// Without it a request waits as long as the agent takes.
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> SocketClient {
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
                if let Some(untrusted) = io.get_ref().and_then(|e| e.downcast_ref::<trust::Untrusted>()) {
                    return ClientError::Untrusted(untrusted.to_string());
                }
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

    /// The request's `unix://` URI: the socket path hex-encoded as host, so the pool never mixes
    /// connections to different sockets (the connector itself always dials `self.path`).
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

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Response, ClientError> {
        let req = self.request(hyper::Method::DELETE, path, None)?;
        self.send(req).await
    }

    /// `GET /v1/token?…` without credentials, `POST /v1/token` with them (credentials never go
    /// in a URL). `cortexid token` asks the same way over a blocking socket
    /// ([`blocking::token`]); this one serves the tests of the encoding.
    #[cfg(test)]
    pub(crate) async fn token(&self, req: &TokenRequest) -> Result<Response, ClientError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use test_agent::{Answer, serve};

    use crate::oauth::TOKEN_TYPE_JWT;

    /// The socket's queue is full (no one accepts; a flood would leave it so): the client waits
    /// instead of failing with `EAGAIN`, and is answered once the agent accepts again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_waited_out_not_an_error() {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        let mut queued = Vec::new();
        loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let client = SocketClient::new(&path);
        let asked = tokio::spawn(async move { client.get("/v1/health").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!asked.is_finished(), "the client gave up on a full queue");
        // The agent accepts again: the queued connections first (closed), then the client's.
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
        drop(queued);
        let served = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = [0u8; 1024];
                if matches!(s.read(&mut head).await, Ok(n) if n > 0) {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                        .await;
                }
            }
        });
        let answer = asked.await.unwrap().unwrap();
        assert_eq!(answer.status, 200);
        served.abort();
    }

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
