//! One connection on the socket: its own HTTP/1.1 loop for the hot route, hyper for the rest.
//!
//! The loop reads request heads with `httparse` and answers a whole `GET /v1/token` itself,
//! pipelined ones in order, each answer written before the next head is read. The first request
//! it does not answer itself (another method or path, a body, HTTP/1.0, `Expect`, an unknown
//! `Connection` option, a head it cannot parse or over [`MAX_HEADERS`]) hands the connection to
//! hyper with the bytes read so far, and hyper serves the rest of it exactly as it serves every
//! connection: 400 and 431 on malformed heads, 413 and 408 on bodies, keep-alive and
//! `Connection: close`.
//!
//! Deadlines as hyper keeps them: a request head must be whole within [`HEADER_READ_TIMEOUT`]
//! of the previous answer (or of the accept), or the connection is closed without an answer.
//! At shutdown an idle connection closes at once; a request being answered is answered with
//! `Connection: close`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::caller::Caller;

use super::responses::{AnswerCache, Body, error_answer, token_answer};
use super::routes::{MAX_HEADERS, handle, token_get};
use super::server::HEADER_READ_TIMEOUT;

/// A caller must take an answer within this time once the socket is full, or the connection is
/// closed: one that reads nothing would otherwise hold its place (and the caps') for ever.
pub(super) const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes of answers to pipelined requests the loop holds before it writes them and waits.
const MAX_PENDING_ANSWERS: usize = 64 * 1024;

/// Largest number of headers the loop parses; a request with more goes to hyper (whose limit is
/// higher).
const LOOP_HEADERS: usize = 32;

/// What the front of a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head<'a> {
    /// A whole `GET /v1/token` head of `len` bytes: its query, and whether the caller asked to
    /// close the connection after the answer.
    Token {
        query: Option<&'a str>,
        len: usize,
        close: bool,
    },
    /// Not a whole head yet.
    Partial,
    /// Anything else: hyper serves the connection from here on.
    Other,
}

/// Reads the head at the front of `buf`. `valid` is the last request target found valid on this
/// connection (a client asks the same again and again): only another one is parsed as a URI.
pub(super) fn parse_head<'a>(buf: &'a [u8], valid: &mut Vec<u8>) -> Head<'a> {
    let mut headers = [httparse::EMPTY_HEADER; LOOP_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        // Hyper refuses a head over its buffer (431) as soon as it has that much.
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEADERS * 4 => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Head::Other,
    };
    let (Some("GET"), Some(1), Some(target)) = (req.method, req.version, req.path) else {
        return Head::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    // Over MAX_HEADERS, the router answers 431; a target hyper would refuse gets its 400.
    if path != "/v1/token" || len > MAX_HEADERS {
        return Head::Other;
    }
    if target.as_bytes() != valid.as_slice() {
        if target.parse::<hyper::Uri>().is_err() {
            return Head::Other;
        }
        valid.clear();
        valid.extend_from_slice(target.as_bytes());
    }
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Head::Other;
        } else if name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                return Head::Other;
            }
        }
    }
    Head::Token { query, len, close }
}

/// Serves one admitted connection from an attested caller until it closes, the head deadline
/// passes, or `stop` fires while it is idle.
pub(super) async fn serve(
    mut stream: UnixStream,
    agent: Arc<Agent>,
    attested: Arc<Caller>,
    watcher: Watcher,
    stop: CancellationToken,
) {
    // A caller's pod is looked up at the kubelet once per connection, at its first request (the
    // kubelet may take a moment).
    let seen: Arc<tokio::sync::OnceCell<Arc<Caller>>> = Arc::new(tokio::sync::OnceCell::new());
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    let mut memo = crate::agent::TokenMemo::default();
    let mut answers = AnswerCache::default();
    let mut valid = Vec::new();
    let mut head_since = Instant::now();
    // One timer for the connection, moved only when it fires early (see below).
    let deadline = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(deadline);
    let stopped = stop.clone().cancelled_owned();
    tokio::pin!(stopped);
    loop {
        let mut used = 0;
        let mut close = false;
        let mut hand_off = false;
        while let Some(rest) = buf.get(used..) {
            match parse_head(rest, &mut valid) {
                Head::Token {
                    query,
                    len,
                    close: asked,
                } => {
                    let caller = seen.get_or_init(|| agent.with_pod(&attested)).await;
                    close = asked || stop.is_cancelled();
                    match token_get(&agent, caller, &mut memo, query).await {
                        Ok(granted) => token_answer(&mut answers, &granted, close, &mut out),
                        Err(e) => error_answer(&e, close, &mut out),
                    }
                    used += len;
                    // Answers are written before more pipelined requests are read: a caller
                    // that does not read its answers is not answered further.
                    if close || out.len() >= MAX_PENDING_ANSWERS {
                        break;
                    }
                }
                Head::Partial => break,
                Head::Other => {
                    hand_off = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if !write_answers(&mut stream, &out).await {
                return;
            }
            out.clear();
            head_since = Instant::now();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        buf.drain(..used);
        if !hand_off && !buf.is_empty() && used > 0 {
            // More may be waiting in the buffer (the answers were written first): the next pass
            // answers what is whole, and reads only if nothing is.
            continue;
        }
        if hand_off {
            let io = Prefixed {
                prefix: buf,
                at: 0,
                stream,
                stalled: None,
            };
            let due = head_since + HEADER_READ_TIMEOUT;
            return with_hyper(io, agent, attested, seen, watcher, due).await;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let read = tokio::select! {
            biased;
            r = stream.read_buf(&mut buf) => r,
            () = &mut stopped, if buf.is_empty() => return,
            () = &mut deadline => {
                // The timer is set once and moved on only when it fires: a head that is still
                // within its time gets the rest of it.
                let due = head_since + HEADER_READ_TIMEOUT;
                if Instant::now() >= due {
                    tracing::debug!("no whole request head within {HEADER_READ_TIMEOUT:?}; closing the connection");
                    return;
                }
                deadline.as_mut().reset(due);
                continue;
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The rest of the connection, served by hyper as every connection was before this loop. The
/// head hyper takes over may be part-read (more headers than the loop parses): it must still be
/// whole by `due`, the loop's deadline, or the connection is closed without an answer (hyper's
/// own deadline would start again at the hand-off).
async fn with_hyper(
    io: Prefixed,
    agent: Arc<Agent>,
    attested: Arc<Caller>,
    seen: Arc<tokio::sync::OnceCell<Arc<Caller>>>,
    watcher: Watcher,
    due: Instant,
) {
    let headed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_head = headed.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        first_head.store(true, std::sync::atomic::Ordering::Relaxed);
        let agent = agent.clone();
        let attested = attested.clone();
        let seen = seen.clone();
        async move {
            let caller = seen.get_or_init(|| agent.with_pod(&attested)).await;
            Ok::<Response<Body>, std::convert::Infallible>(handle(&agent, caller, req).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADERS * 4)
        .serve_connection(TokioIo::new(io), service);
    let served = watcher.watch(conn);
    tokio::pin!(served);
    let late = tokio::time::sleep_until(due);
    tokio::pin!(late);
    let mut before_due = true;
    let ended = loop {
        tokio::select! {
            ended = &mut served => break ended,
            () = &mut late, if before_due => {
                if !headed.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!("no whole request head within {HEADER_READ_TIMEOUT:?}; closing the connection");
                    return;
                }
                before_due = false;
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Writes `out` whole, or says the connection is to be closed: the caller did not take it within
/// [`WRITE_TIMEOUT`] of the socket filling up (or the write failed). The usual case, a socket with
/// room, takes one `write(2)` and no timer.
async fn write_answers(stream: &mut UnixStream, out: &[u8]) -> bool {
    let rest = match stream.try_write(out) {
        Ok(n) if n == out.len() => return true,
        Ok(n) => out.get(n..).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => out,
        Err(_) => return false,
    };
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(rest)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("the caller took no answer within {WRITE_TIMEOUT:?}; closing the connection");
            false
        }
    }
}

/// A stream whose first bytes were already read: they are read again first. A write that
/// cannot go on for [`WRITE_TIMEOUT`] fails (hyper then closes the connection).
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    stream: UnixStream,
    /// Since when a write has been waiting for room, as a timer; none while writes go through.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Prefixed {
    /// What a write (or flush) that returned `poll` means, with the stall timer: pending until
    /// [`WRITE_TIMEOUT`] has passed since the first pending one, then an error.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the caller took no answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.at..)
            && !rest.is_empty()
        {
            let n = rest.len().min(out.remaining());
            out.put_slice(&rest[..n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(query: Option<&str>, len: usize, close: bool) -> Head<'_> {
        Head::Token { query, len, close }
    }

    fn parse_head(buf: &[u8]) -> Head<'_> {
        super::parse_head(buf, &mut Vec::new())
    }

    #[test]
    fn a_target_is_parsed_as_a_uri_until_it_was_found_valid() {
        let mut valid = Vec::new();
        let req = b"GET /v1/token?audience=a HTTP/1.1\r\n\r\n";
        assert_eq!(
            super::parse_head(req, &mut valid),
            token(Some("audience=a"), req.len(), false)
        );
        assert_eq!(valid, b"/v1/token?audience=a");
        let bad = b"GET /v1/token?a=\"b\" HTTP/1.1\r\n\r\n";
        assert_eq!(super::parse_head(bad, &mut valid), Head::Other);
        assert_eq!(valid, b"/v1/token?audience=a", "an invalid target is not remembered");
    }

    #[test]
    fn a_whole_token_get_is_answered_by_the_loop() {
        let req = b"GET /v1/token?audience=a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_head(req), token(Some("audience=a"), req.len(), false));
        let req = b"GET /v1/token HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\nGET /next";
        assert_eq!(parse_head(req), token(None, req.len() - 9, true));
        let req = b"GET /v1/token HTTP/1.1\r\nconnection: Keep-Alive\r\n\r\n";
        assert_eq!(parse_head(req), token(None, req.len(), false));
    }

    #[test]
    fn a_head_cut_short_waits_for_more() {
        let req = b"GET /v1/token?audience=a HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse_head(&req[..cut]), Head::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for req in [
            &b"POST /v1/token HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"[..],
            b"GET /v1/token HTTP/1.0\r\n\r\n",
            b"GET /v1/health HTTP/1.1\r\n\r\n",
            b"GET /v1/tokens HTTP/1.1\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /v1/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET /v1/token?a=\"b\" HTTP/1.1\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
            b"GET  /v1/token HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(req), Head::Other, "{}", String::from_utf8_lossy(req));
        }
        // Too many headers for the loop (hyper takes more), and a head over the router's limit.
        let many = format!(
            "GET /v1/token HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(LOOP_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()), Head::Other);
        let big = format!("GET /v1/token?audience={} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEADERS));
        assert_eq!(parse_head(big.as_bytes()), Head::Other);
        // A head that never ends is handed over once it is past what hyper buffers.
        let endless = format!("GET /v1/token HTTP/1.1\r\nX-A: {}", "a".repeat(MAX_HEADERS * 4));
        assert_eq!(parse_head(endless.as_bytes()), Head::Other);
    }

    /// Every prefix and every single-byte change of a valid request: never a panic, and a head
    /// the loop takes is always a GET of /v1/token no longer than the input.
    #[test]
    fn mangled_heads_never_panic() {
        let req = b"GET /v1/token?audience=a%20b&scope=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut rng = fastrand::Rng::with_seed(14);
        for _ in 0..20_000 {
            let mut m = req.to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
            }
            m.truncate(rng.usize(..=m.len()));
            if let Head::Token { len, .. } = parse_head(&m) {
                assert!(len <= m.len());
                assert!(m.starts_with(b"GET /v1/token"), "{}", String::from_utf8_lossy(&m));
            }
        }
    }
}
