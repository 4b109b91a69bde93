//! A client of the agent's socket API (used by the CLI and by tests): HTTP/1.1 over the Unix
//! socket with hyperlocal, keep-alive.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyperlocal::UnixConnector;

use crate::token::Secret;

pub const DEFAULT_SOCKET: &str = crate::config::DEFAULT_SOCKET;

/// The socket path when none is given.
pub fn default_socket_path() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent socket at {0}: is cortexid running? set --socket or CORTEXID_SOCKET")]
    NoSocket(PathBuf),
    #[error(
        "permission denied on {0}: this user may not connect to the agent's socket (see socket_mode and socket_group)"
    )]
    PermissionDenied(PathBuf),
    #[error("cannot talk to the agent at {path}: {message}")]
    Transport { path: PathBuf, message: String },
    #[error("the agent answered with something that is not JSON: {0}")]
    NotJson(String),
}

/// An answer from the agent.
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may hold a token.
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::NotJson(e.to_string()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What to ask `/v1/token` for.
#[derive(Default, Clone)]
pub struct TokenRequest {
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub identity: Option<String>,
    pub min_valid: Option<u64>,
    pub subject_token: Option<Secret>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<Secret>,
    pub actor_token_type: Option<String>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("identity", &self.identity)
            .field("min_valid", &self.min_valid)
            .field("subject_token", &self.subject_token)
            .field("actor_token", &self.actor_token)
            .finish()
    }
}

impl TokenRequest {
    /// The query string of a `GET /v1/token` (no credentials).
    pub fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(a) = &self.audience {
            q.append_pair("audience", a);
        }
        if !self.scopes.is_empty() {
            q.append_pair("scope", &self.scopes.join(" "));
        }
        if let Some(i) = &self.identity {
            q.append_pair("identity", i);
        }
        if let Some(m) = self.min_valid {
            q.append_pair("min_valid", &m.to_string());
        }
        q.finish()
    }

    /// The JSON body of a `POST /v1/token`.
    pub fn body(&self) -> serde_json::Value {
        let mut b = serde_json::Map::new();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                b.insert(k.to_string(), v);
            }
        };
        put("audience", self.audience.clone().map(Into::into));
        put("scope", (!self.scopes.is_empty()).then(|| self.scopes.join(" ").into()));
        put("identity", self.identity.clone().map(Into::into));
        put("min_valid", self.min_valid.map(Into::into));
        put("subject_token", self.subject_token.as_ref().map(|t| t.expose().into()));
        put("subject_token_type", self.subject_token_type.clone().map(Into::into));
        put("actor_token", self.actor_token.as_ref().map(|t| t.expose().into()));
        put("actor_token_type", self.actor_token_type.clone().map(Into::into));
        serde_json::Value::Object(b)
    }
}

/// A keep-alive client of one agent socket. Cheap to clone.
#[derive(Clone)]
pub struct SocketClient {
    path: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
}

impl SocketClient {
    pub fn new(path: impl Into<PathBuf>) -> SocketClient {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(UnixConnector);
        SocketClient {
            path: path.into(),
            client,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn error(&self, e: &(dyn std::error::Error + 'static)) -> ClientError {
        // Find the io::Error behind hyper's wrappers to say what is wrong in plain words.
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NoSocket(self.path.clone())
                    }
                    std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.path.clone()),
                    _ => ClientError::Transport {
                        path: self.path.clone(),
                        message: io.to_string(),
                    },
                };
            }
            cur = err.source();
        }
        ClientError::Transport {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<Response, ClientError> {
        let resp = self.client.request(req).await.map_err(|e| self.error(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| self.error(&e))?.to_bytes();
        Ok(Response { status, headers, body })
    }

    fn uri(&self, path_and_query: &str) -> hyper::Uri {
        hyperlocal::Uri::new(&self.path, path_and_query).into()
    }

    pub async fn get(&self, path_and_query: &str) -> Result<Response, ClientError> {
        let req = hyper::Request::get(self.uri(path_and_query))
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Transport {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        self.send(req).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Response, ClientError> {
        let req = hyper::Request::post(self.uri(path))
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ClientError::Transport {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        self.send(req).await
    }

    /// `GET /v1/token` without credentials, `POST` with them (credentials never go in a URL).
    pub async fn token(&self, req: &TokenRequest) -> Result<Response, ClientError> {
        if req.subject_token.is_some() || req.actor_token.is_some() {
            self.post_json("/v1/token", &req.body()).await
        } else {
            self.get(&format!("/v1/token?{}", req.query())).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_and_credentials_stay_out_of_them() {
        let req = TokenRequest {
            audience: Some("https://a.example/x?y".into()),
            scopes: vec!["read".into(), "write".into()],
            min_valid: Some(60),
            subject_token: Some(Secret::new("eyJ.secret.sig".into())),
            ..TokenRequest::default()
        };
        let q = req.query();
        assert_eq!(
            q,
            "audience=https%3A%2F%2Fa.example%2Fx%3Fy&scope=read+write&min_valid=60"
        );
        assert!(!q.contains("secret"));
        assert_eq!(req.body()["subject_token"], "eyJ.secret.sig");
        assert!(!format!("{req:?}").contains("secret.sig"));
    }

    #[tokio::test]
    async fn a_missing_socket_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let c = SocketClient::new(dir.path().join("none.sock"));
        let err = c.get("/v1/health").await.unwrap_err();
        assert!(err.to_string().contains("no agent socket at"), "{err}");
    }
}
