//! A stand-in agent for unit tests: a hyper HTTP/1.1 server on a Unix socket in a temp dir that
//! answers each request with what a test's function says and logs what it saw.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) uri: String,
    pub(crate) content_type: Option<String>,
    pub(crate) body: String,
}

/// What the server answers.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }
    pub(crate) fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", "text/plain".into())],
            body: body.into(),
        }
    }
    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Answer {
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
