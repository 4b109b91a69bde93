//! The JSON answers of the socket API: every response is JSON with `Cache-Control: no-store`;
//! errors are `{"error","error_description"}` with `Retry-After` when the caller should wait;
//! a granted token is rendered here from the agent's [`Granted`].

use std::io::Write as _;
use std::sync::Arc;

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
    let (head, tail) = token_body_parts(granted)?;
    let mut body = head;
    push_expires_in(&mut body, granted);
    body.extend_from_slice(&tail);
    Ok(json_response(200, body))
}

/// The body of a token answer around `expires_in`'s value: `{"access_token":…,"expires_in":`
/// and `,"identity":…,"audience":…,"scope":…}`.
fn token_body_parts(granted: &Granted) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    let fields = granted.token.response_fields();
    let mut head = Vec::with_capacity(fields.len() + 16);
    head.push(b'{');
    head.extend_from_slice(fields.as_bytes());
    head.extend_from_slice(b",\"expires_in\":");
    let mut tail = Vec::with_capacity(granted.scope.len() + granted.audience.len() + 64);
    for (key, value) in [
        ("identity", granted.identity.name.as_str()),
        ("audience", granted.audience.as_str()),
        ("scope", granted.scope.as_str()),
    ] {
        tail.extend_from_slice(b",\"");
        tail.extend_from_slice(key.as_bytes());
        tail.extend_from_slice(b"\":");
        serde_json::to_writer(&mut tail, value).map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    }
    tail.push(b'}');
    Ok((head, tail))
}

fn push_expires_in(body: &mut Vec<u8>, granted: &Granted) {
    let left = granted.token.remaining(tokio::time::Instant::now()).as_secs();
    body.extend_from_slice(left.to_string().as_bytes());
}

/// The last token answer a connection rendered: the same grant again costs only `expires_in`
/// and the `Date`.
#[derive(Default)]
pub(super) struct AnswerCache {
    last: Option<(Arc<Granted>, Vec<u8>, Vec<u8>)>,
}

/// Writes the whole HTTP/1.1 `200` answer of a token request to `out` (the connection loop's
/// rendering of [`token_response`]), with `Connection: close` when the connection ends after it.
pub(super) fn token_answer(cache: &mut AnswerCache, granted: &Arc<Granted>, close: bool, out: &mut Vec<u8>) {
    if !cache.last.as_ref().is_some_and(|(g, _, _)| Arc::ptr_eq(g, granted)) {
        match token_body_parts(granted) {
            Ok((head, tail)) => cache.last = Some((granted.clone(), head, tail)),
            Err(e) => return error_answer(&e, close, out),
        }
    }
    let Some((_, head, tail)) = &cache.last else {
        return;
    };
    let left = granted.token.remaining(tokio::time::Instant::now()).as_secs();
    let len = head.len() + decimal_len(left) + tail.len();
    head_of(out, StatusCode::OK, len, close);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(head);
    let _ = write!(out, "{left}");
    out.extend_from_slice(tail);
}

/// Writes the whole HTTP/1.1 answer of a refused request to `out`, as [`error_response`]
/// renders it.
pub(super) fn error_answer(e: &ApiError, close: bool, out: &mut Vec<u8>) {
    let body = e.to_json().to_string();
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    head_of(out, status, body.len(), close);
    if let Some(secs) = e.retry_after {
        out.extend_from_slice(format!("retry-after: {secs}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// The status line and the headers every JSON answer has, without the blank line that ends them.
fn head_of(out: &mut Vec<u8>, status: StatusCode, len: usize, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: ");
    let _ = write!(out, "{len}");
    out.extend_from_slice(b"\r\ndate: ");
    http_date(out);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
}

/// How many digits `n` has in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The `Date` header's value, rendered once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_lengths() {
        for n in [0u64, 1, 9, 10, 99, 100, 299, 300, 86_400, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }
}
