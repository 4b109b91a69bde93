//! One request over a plain blocking Unix socket, for a command that asks once and exits
//! (`cortexid token`, which kubectl's exec plugin and scripts start for every token): no async
//! runtime, no worker threads, no connection pool. HTTP/1.1 with `Connection: close`; the answer
//! is read to the end and parsed with `httparse`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::{ClientError, Response, TokenRequest};

/// The most header lines an answer may have.
const MAX_HEADERS: usize = 64;
/// The largest answer read (a token answer is a few KiB).
const MAX_ANSWER: u64 = 1024 * 1024;

/// Sends `method path_and_query` (with a JSON `body`, if any) to the agent at `socket` and
/// returns its answer, whatever the status.
pub(crate) fn request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
        path: socket.to_path_buf(),
        message: e.to_string(),
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::NoSocket(socket.to_path_buf()),
        std::io::ErrorKind::ConnectionRefused => ClientError::NotListening(socket.to_path_buf()),
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.to_path_buf()),
        _ => transport(&e),
    })?;
    // Who serves the socket, before anything is sent (see trust.rs).
    let server = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| transport(&e))?
        .uid();
    super::trust::check(server, socket).map_err(|e| ClientError::Untrusted(e.to_string()))?;
    if !path_and_query.starts_with('/') || path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ClientError::Request(format!(
            "invalid path {path_and_query:?}: it must start with '/' and hold no spaces or control characters"
        )));
    }
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nUser-Agent: cortexid/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&out).map_err(|e| transport(&e))?;
    let mut answer = Vec::with_capacity(4096);
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| transport(&e))?;
    parse(&answer).map_err(|e| transport(&e))
}

/// `GET /v1/token?…` without credentials, `POST /v1/token` with them (credentials never go in a
/// URL), as `SocketClient::token` asks it.
pub(crate) fn token(socket: &Path, req: &TokenRequest) -> Result<Response, ClientError> {
    if req.presents_credential() {
        let body = serde_json::to_vec(&req.body()).map_err(|e| ClientError::Request(e.to_string()))?;
        return request(socket, "POST", "/v1/token", Some(&body));
    }
    match req.query() {
        q if q.is_empty() => request(socket, "GET", "/v1/token", None),
        q => request(socket, "GET", &format!("/v1/token?{q}"), None),
    }
}

/// Why an answer read from the socket is not a usable HTTP/1.1 response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadAnswer {
    /// The connection closed before the head was complete; how many bytes came.
    #[error("the connection closed after {0} bytes, before a whole answer")]
    Incomplete(usize),
    /// The bytes are not an HTTP/1.1 response.
    #[error("the answer is not HTTP/1.1: {0}")]
    NotHttp(httparse::Error),
    /// The status line has no code.
    #[error("the answer has no status")]
    NoStatus,
    /// A header's name or value is not valid; which and why.
    #[error("the answer has an invalid header: {0}")]
    Header(String),
    /// Fewer body bytes came than `Content-Length` promised.
    #[error("the answer promised {promised} bytes and sent {sent}")]
    ShortBody { promised: usize, sent: usize },
    /// The chunked body is malformed; where.
    #[error("the answer's chunked body is malformed: {0}")]
    Chunks(&'static str),
}

/// An HTTP/1.1 answer read to its end: status, headers, and the body by `Content-Length`,
/// chunked encoding, or up to the end.
fn parse(answer: &[u8]) -> Result<Response, BadAnswer> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let head_len = match parsed.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(BadAnswer::Incomplete(answer.len())),
        Err(e) => return Err(BadAnswer::NotHttp(e)),
    };
    let status = parsed.code.ok_or(BadAnswer::NoStatus)?;
    let mut headers = HeaderMap::new();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| BadAnswer::Header(e.to_string()))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| BadAnswer::Header(format!("{name}: {e}")))?;
        headers.append(name, value);
    }
    let rest = &answer[head_len..];
    let chunked = headers
        .get(hyper::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or(BadAnswer::ShortBody {
                promised: n,
                sent: rest.len(),
            })?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body: Bytes::from(body),
    })
}

/// The body of a chunked answer.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, BadAnswer> {
    let mut body = Vec::with_capacity(rest.len());
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(BadAnswer::Chunks("a size line is cut short"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| BadAnswer::Chunks("a size is not text"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| BadAnswer::Chunks("a size is not hexadecimal"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or(BadAnswer::Chunks("a chunk is cut short"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or(BadAnswer::Chunks("a chunk is cut short"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_by_length_chunks_or_end() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "{\"a\":1}"));
        assert_eq!(r.headers["content-type"], "application/json");
        let r = parse(b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.status, r.text().as_str(), r.retry_after()),
            (429, "{\"a\":1}", Some(7))
        );
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "{}"));
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}")
                .unwrap_err()
                .to_string()
                .contains("promised 9 bytes and sent 2")
        );
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-")
                .unwrap_err()
                .to_string()
                .contains("before a whole answer")
        );
        assert!(
            parse(b"SSH-2.0-OpenSSH\r\n\r\n")
                .unwrap_err()
                .to_string()
                .contains("not HTTP/1.1")
        );
    }
}
