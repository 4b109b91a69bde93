//! The browser flow's loopback listener (RFC 8252 section 7.3): `http://127.0.0.1:PORT/callback`
//! receives the provider's redirect with `code` and `state`; the CLI relays them to the agent and
//! then answers the browser with a page that says the person can close the tab.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::escape;

/// What the browser brought back.
#[derive(Debug)]
pub(super) enum Redirect {
    /// The provider's code and the state it returned.
    Code { code: String, state: String },
    /// The provider sent an error instead (for example `access_denied`), and the state it
    /// returned with it (RFC 6749 section 4.1.2.1 says it must).
    Error { error: String, state: Option<String> },
}

impl Redirect {
    /// The state the redirect carries, if any.
    fn state(&self) -> Option<&str> {
        match self {
            Redirect::Code { state, .. } => Some(state),
            Redirect::Error { state, .. } => state.as_deref(),
        }
    }
}

/// The loopback listener failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// The port could not be bound.
    #[error("cannot listen on 127.0.0.1:{port}: {source}; choose another with --port")]
    Bind { port: u16, source: std::io::Error },
    /// Accepting a connection failed.
    #[error("the loopback listener failed: {0}")]
    Accept(std::io::Error),
}

/// The listener, bound before the sign-in starts so its port goes into the redirect URI.
pub(super) struct Loopback {
    listener: TcpListener,
    pub(super) port: u16,
}

/// The largest request head the listener reads.
const MAX_HEAD: usize = 16 * 1024;

impl Loopback {
    /// Listens on `127.0.0.1:port` (a random port when `None`).
    pub(super) async fn bind(port: Option<u16>) -> Result<Loopback, LoopbackError> {
        let want = port.unwrap_or(0);
        let listener = TcpListener::bind(("127.0.0.1", want))
            .await
            .map_err(|source| LoopbackError::Bind { port: want, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| LoopbackError::Bind { port: want, source })?
            .port();
        Ok(Loopback { listener, port })
    }

    /// Waits for the redirect to `/callback` carrying `state` (the one the sign-in sent), each
    /// connection served on its own so an idle one holds no other back. Only the person's own uid
    /// (and root) may connect: another uid's connection is dropped unread and noted on stderr; a
    /// callback with another state gets a 400, anything else a 404, and the wait goes on. Returns
    /// the connection, to answer once the agent has the code.
    pub(super) async fn wait(&self, state: Option<&str>) -> Result<(Redirect, TcpStream), LoopbackError> {
        let me = nix::unistd::geteuid().as_raw();
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = accepted.map_err(LoopbackError::Accept)?;
                    connections.spawn(serve(stream, peer, me, state.map(str::to_string)));
                }
                Some(done) = connections.join_next() => if let Ok(Some(found)) = done {
                    return Ok(found);
                },
            }
        }
    }
}

/// One connection to the listener: the redirect it brings, or `None` once it was answered or
/// dropped.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    me: u32,
    state: Option<String>,
) -> Option<(Redirect, TcpStream)> {
    let local = stream.local_addr().ok()?;
    match super::peer::uid_of(peer, local) {
        Some(uid) if uid == me || uid == 0 => {}
        Some(uid) => {
            eprintln!(
                "cortexid: ignored a connection to the sign-in listener from uid {uid} (only uid {me}'s browser may come back here); still waiting"
            );
            return None;
        }
        None => {
            eprintln!(
                "cortexid: ignored a connection to the sign-in listener whose owner is not listed in /proc/net/tcp; still waiting"
            );
            return None;
        }
    }
    let target = tokio::time::timeout(Duration::from_secs(10), read_target(&mut stream))
        .await
        .ok()??;
    // An error must carry this sign-in's state as a code must: any page in the person's browser
    // can send one to 127.0.0.1, and would otherwise end the sign-in.
    let redirect = parse_redirect(&target);
    let foreign = match (&redirect, state.as_deref()) {
        (Some(r), Some(want)) => !r.state().is_some_and(|got| same(want, got)),
        _ => false,
    };
    match redirect {
        Some(_) if foreign => {
            eprintln!("cortexid: a redirect with another sign-in's state came to the listener; refused, still waiting");
            let _ = answer(
                &mut stream,
                400,
                "Not this sign-in",
                "This redirect carries a state that is not this sign-in's; it was refused. If you started this sign-in, use the link your terminal printed.",
            )
            .await;
            None
        }
        Some(r) => Some((r, stream)),
        None => {
            let _ = answer(
                &mut stream,
                404,
                "Not found",
                "This address only receives the sign-in redirect.",
            )
            .await;
            None
        }
    }
}

/// Whether two strings are equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `state` an authorization URL sends, which its redirect must bring back.
pub(super) fn state_of(authorization_url: &str) -> Option<String> {
    url::Url::parse(authorization_url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
}

/// The request target of an HTTP GET (`/callback?code=…`), or `None` for anything else.
async fn read_target(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_string)
}

/// The redirect's `code` and `state`, or its `error`; `None` when the target is not `/callback`.
pub(super) fn parse_redirect(target: &str) -> Option<Redirect> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        return None;
    }
    let mut code = None;
    let mut state = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = Some(v.into_owned()),
            _ => {}
        }
    }
    match (code, state, error) {
        (_, state, Some(e)) => Some(Redirect::Error {
            error: match description {
                Some(d) => format!("{e}: {d}"),
                None => e,
            },
            state,
        }),
        (Some(code), Some(state), None) => Some(Redirect::Code { code, state }),
        _ => None,
    }
}

/// Answers the browser with a small page.
pub(super) async fn answer(stream: &mut TcpStream, status: u16, title: &str, text: &str) -> std::io::Result<()> {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cortexid: {title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body></html>",
        title = escape(title),
        text = escape(text)
    );
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_callback_path_is_a_redirect() {
        match parse_redirect("/callback?code=c1&state=s1&iss=x") {
            Some(Redirect::Code { code, state }) => assert_eq!((code.as_str(), state.as_str()), ("c1", "s1")),
            other => panic!("{other:?}"),
        }
        match parse_redirect("/callback?error=access_denied&error_description=no&state=s1") {
            Some(Redirect::Error { error, state }) => {
                assert_eq!((error.as_str(), state.as_deref()), ("access_denied: no", Some("s1")))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_redirect("/favicon.ico").is_none());
        assert!(parse_redirect("/callback?code=c1").is_none());
        assert_eq!(escape("<b>&\""), "&lt;b&gt;&amp;&quot;");
    }
}
