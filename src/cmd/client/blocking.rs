//! One request over a plain blocking Unix socket, for a command that asks once and exits
//! (`cortexid token`, which kubectl's exec plugin and scripts start for every token): no async
//! runtime, no worker threads, no connection pool. HTTP/1.1 with `Connection: close`; the answer
//! is read to the end and its head parsed here (not with `httparse`, whose first use detects the
//! CPU's SIMD features: seven `cpuid` instructions, which trap to the hypervisor in a VM, ~60 µs
//! of a process that lives ~1 ms).

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
    /// The bytes are not an HTTP/1.1 response; what is wrong.
    #[error("the answer is not HTTP/1.1: {0}")]
    NotHttp(&'static str),
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
    let head_len = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(BadAnswer::Incomplete(answer.len()))?;
    // Every line of the head with its CRLF, the blank line after it left out.
    let mut lines = answer[..head_len + 2].split_inclusive(|&b| b == b'\n');
    let status = status_code(lines.next().unwrap_or_default())?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line
            .strip_suffix(b"\r\n")
            .ok_or(BadAnswer::NotHttp("a line does not end in CRLF"))?;
        if headers.len() == MAX_HEADERS {
            return Err(BadAnswer::NotHttp("too many headers"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(BadAnswer::NotHttp("a header line has no colon"))?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|e| BadAnswer::Header(e.to_string()))?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
            .map_err(|e| BadAnswer::Header(format!("{name}: {e}")))?;
        headers.append(name, value);
    }
    let rest = &answer[head_len + 4..];
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

/// The code of a status line, `HTTP/1.x NNN[ reason]` and its CRLF.
fn status_code(line: &[u8]) -> Result<u16, BadAnswer> {
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(BadAnswer::NotHttp("the status line does not end in CRLF"))?;
    let rest = match line.strip_prefix(b"HTTP/1.") {
        Some([b'0' | b'1', b' ', rest @ ..]) => rest,
        _ => return Err(BadAnswer::NotHttp("no HTTP/1.x status line")),
    };
    match rest {
        [a, b, c] | [a, b, c, b' ', ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            Ok([a, b, c].iter().fold(0, |n, &&d| n * 10 + u16::from(d - b'0')))
        }
        _ => Err(BadAnswer::NotHttp("the status line has no three-digit code")),
    }
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
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\nx: y\r\n\r\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("not HTTP/1.1"), "{e}");
        }
        let r = parse(b"HTTP/1.0 204\r\nX-A:  b \r\n\r\n").unwrap();
        assert_eq!((r.status, r.headers["x-a"].to_str().unwrap()), (204, "b"));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        assert!(
            parse(many.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("too many headers")
        );
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n")
                .unwrap_err()
                .to_string()
                .contains("invalid header")
        );
    }
}
