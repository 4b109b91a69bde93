//! The browser flow's loopback listener (RFC 8252 section 7.3): `http://127.0.0.1:PORT/callback`
//! receives the provider's redirect with `code` and `state`; the CLI relays them to the agent and
//! then answers the browser with a page that says the person can close the tab.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the browser brought back.
#[derive(Debug)]
pub(super) enum Redirect {
    /// The provider's code and the state it returned.
    Code { code: String, state: String },
    /// The provider sent an error instead (for example `access_denied`).
    Error(String),
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

    /// Waits for the redirect to `/callback`; anything else gets a 404 and is ignored. Returns
    /// the connection, to answer once the agent has the code.
    pub(super) async fn wait(&self) -> Result<(Redirect, TcpStream), LoopbackError> {
        loop {
            let (mut stream, _) = self.listener.accept().await.map_err(LoopbackError::Accept)?;
            let Ok(Some(target)) = tokio::time::timeout(Duration::from_secs(10), read_target(&mut stream)).await else {
                continue;
            };
            match parse_redirect(&target) {
                Some(r) => return Ok((r, stream)),
                None => {
                    let _ = answer(
                        &mut stream,
                        404,
                        "Not found",
                        "This address only receives the sign-in redirect.",
                    )
                    .await;
                }
            }
        }
    }
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
        (_, _, Some(e)) => Some(Redirect::Error(match description {
            Some(d) => format!("{e}: {d}"),
            None => e,
        })),
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
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Opens `url` in the person's browser: `$BROWSER`, else `xdg-open`, only when there is a
/// display. Returns whether a browser was started.
pub(super) fn open_browser(url: &str) -> bool {
    let display = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let browser = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty());
    if !display && browser.is_none() {
        return false;
    }
    let program = browser.unwrap_or_else(|| "xdg-open".to_string());
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// Whether this session has a display a browser could open on.
pub(super) fn has_display() -> bool {
    std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
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
        match parse_redirect("/callback?error=access_denied&error_description=no") {
            Some(Redirect::Error(e)) => assert_eq!(e, "access_denied: no"),
            other => panic!("{other:?}"),
        }
        assert!(parse_redirect("/favicon.ico").is_none());
        assert!(parse_redirect("/callback?code=c1").is_none());
        assert_eq!(escape("<b>&\""), "&lt;b&gt;&amp;&quot;");
    }
}
