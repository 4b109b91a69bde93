//! The JSON answers of the socket API: every response is JSON with `Cache-Control: no-store`;
//! errors are `{"error","error_description"}` with `Retry-After` when the caller should wait;
//! a granted token is rendered here from the agent's [`Granted`].

use http_body_util::Full;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::agent::Granted;
use crate::error::{ApiError, ErrorKind};

pub(super) type Body = Full<Bytes>;

pub(super) fn json_response(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.status(), e.to_json().to_string().into_bytes());
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(RETRY_AFTER, v);
    }
    resp
}

/// The `200` answer of `/v1/token`: the token's own members (rendered once per token), then
/// `expires_in` as of now and the request's identity, audience and scope.
pub(super) fn token_response(granted: &Granted) -> Result<Response<Body>, ApiError> {
    let Granted {
        token,
        identity,
        audience,
        scope,
    } = granted;
    // {"access_token":…,"token_type":"Bearer","issued_token_type":…,"expires_at":…, then the
    // per-request members.
    let fields = token.response_fields();
    let mut body = Vec::with_capacity(fields.len() + scope.len() + audience.len() + 96);
    body.push(b'{');
    body.extend_from_slice(fields.as_bytes());
    body.extend_from_slice(b",\"expires_in\":");
    body.extend_from_slice(
        token
            .remaining(tokio::time::Instant::now())
            .as_secs()
            .to_string()
            .as_bytes(),
    );
    for (key, value) in [
        ("identity", identity.name.as_str()),
        ("audience", audience.as_str()),
        ("scope", scope.as_str()),
    ] {
        body.extend_from_slice(b",\"");
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(b"\":");
        serde_json::to_writer(&mut body, value).map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    }
    body.push(b'}');
    Ok(json_response(200, body))
}
