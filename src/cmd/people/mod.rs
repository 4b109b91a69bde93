//! The people subcommands (SPEC section 8): `cortexid login` (device or browser sign-in, with the
//! browser's loopback listener in [`loopback`]), `cortexid logout` and `cortexid whoami`. They
//! talk to the agent's socket as the calling uid; the agent keeps the session, and nothing here
//! ever sees a refresh token or a PKCE verifier.

mod browser;
mod login;
mod loopback;
mod peer;
mod session;

pub use login::{LoginArgs, run as login};
pub use session::{LogoutArgs, WhoamiArgs, logout, whoami};

use crate::cmd::client::{ClientError, Response, SocketClient};
use crate::cmd::common::{EXIT_FAILURE, describe_error, error_line, printable};

/// `s` as HTML text or a quoted attribute value (the sign-in pages the browser shows).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A successful JSON answer, or the exit code after saying why not.
async fn answer(
    sent: impl std::future::Future<Output = Result<Response, ClientError>>,
) -> Result<serde_json::Value, i32> {
    let resp = sent.await.map_err(|e| {
        eprintln!("cortexid: {e}");
        EXIT_FAILURE
    })?;
    if !resp.is_success() {
        let (code, description) = describe_error(&resp);
        eprintln!("{}", error_line(&code, &description));
        return Err(EXIT_FAILURE);
    }
    resp.json().map_err(|e| {
        eprintln!("cortexid: {e}");
        EXIT_FAILURE
    })
}

/// A session as people read it: who, which claims, until when.
fn describe_session(s: &serde_json::Value) -> String {
    let text = |k: &str| s[k].as_str().map(|v| printable(v).into_owned());
    let mut out = format!(
        "{}: signed in as {}",
        text("login").unwrap_or_default(),
        text("sub").unwrap_or_default()
    );
    match (text("name"), text("email")) {
        (Some(n), Some(e)) => out.push_str(&format!(" ({n} <{e}>)")),
        (None, Some(e)) | (Some(e), None) => out.push_str(&format!(" ({e})")),
        _ => {}
    }
    out.push('\n');
    out.push_str(&format!(
        "  session until {}{}\n",
        text("expires_at").unwrap_or_default(),
        text("last_refresh")
            .map(|r| format!(", last refreshed {r}"))
            .unwrap_or_default()
    ));
    if let Some(claims) = s["claims"].as_object() {
        for key in ["groups", "roles", "email_verified", "preferred_username"] {
            if let Some(v) = claims.get(key) {
                out.push_str(&format!("  {key}: {}\n", printable(&v.to_string())));
            }
        }
    }
    if let Some(e) = text("last_error") {
        out.push_str(&format!("  last refresh failed: {e} (retrying)\n"));
    }
    out
}

fn client(socket: &crate::cmd::common::SocketArg) -> SocketClient {
    socket.client()
}
