//! `cortexid login [NAME] [--device|--browser] [--no-browser] [--port N]`.

use std::time::Duration;

use crate::cmd::common::{EXIT_FAILURE, EXIT_OK, SocketArg, emit, printable};

use super::browser::{has_display, open_browser};
use super::loopback::{Loopback, Redirect, answer as answer_page, state_of};
use super::{answer, client, describe_session};

#[derive(clap::Args, Debug, Clone)]
pub struct LoginArgs {
    /// The [[login]] to sign in at [default: the only one]
    pub name: Option<String>,
    /// Sign in with a code on any device (RFC 8628)
    #[arg(long, conflicts_with = "browser")]
    pub device: bool,
    /// Sign in with a browser that comes back to this command (authorization code + PKCE)
    #[arg(long)]
    pub browser: bool,
    /// Print the browser URL instead of opening it
    #[arg(long)]
    pub no_browser: bool,
    /// The port this command listens on at 127.0.0.1 for the browser's return (for SSH port
    /// forwarding) [default: a random port]
    #[arg(long, value_name = "N", conflicts_with = "device")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub(crate) socket: SocketArg,
}

/// Signs the calling person in and prints who is signed in.
pub async fn run(args: LoginArgs) -> i32 {
    let client = client(&args.socket);
    let browser = args.browser || args.port.is_some();
    let listen = !args.device && (browser || has_display());
    let loopback = if listen {
        match Loopback::bind(args.port).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("cortexid: {e}");
                return EXIT_FAILURE;
            }
        }
    } else {
        None
    };
    let flow = if args.device {
        Some("device")
    } else if browser {
        Some("browser")
    } else {
        None
    };
    let body = serde_json::json!({
        "login": args.name, "flow": flow, "redirect_port": loopback.as_ref().map(|l| l.port),
    });
    let Ok(started) = answer(client.post_json("/v1/login", &body)).await else {
        return EXIT_FAILURE;
    };
    let Some(id) = started["login_id"].as_str().map(str::to_string) else {
        eprintln!("cortexid: the agent's answer names no sign-in");
        return EXIT_FAILURE;
    };
    let text = |k: &str| started[k].as_str().map(|s| printable(s).into_owned());
    let outcome = match (started["flow"].as_str(), &loopback) {
        (Some("browser"), Some(loopback)) => {
            let url = text("authorization_url").unwrap_or_default();
            // Kept (and so not removed) until the browser has come back.
            let page = if args.no_browser { None } else { open_browser(&url) };
            let says = if page.is_some() {
                format!("Your browser opens the sign-in page. If it does not, open:\n\n  {url}\n\n")
            } else {
                format!("Open this URL in a browser to sign in:\n\n  {url}\n\n")
            };
            if !emit(&says) {
                return EXIT_FAILURE;
            }
            let expires = Duration::from_secs(started["expires_in"].as_u64().unwrap_or(600));
            let state = state_of(&url);
            let outcome = browser_flow(&client, loopback, &id, state.as_deref(), expires).await;
            drop(page);
            outcome
        }
        _ => {
            let mut says = String::new();
            if let Some(complete) = text("verification_uri_complete") {
                says.push_str(&format!("To sign in, open:\n\n  {complete}\n\n"));
                says.push_str("or open ");
            } else {
                says.push_str("To sign in, open ");
            }
            says.push_str(&format!(
                "{} and enter the code {}\n\nWaiting for you to sign in ...\n",
                text("verification_uri").unwrap_or_default(),
                text("user_code").unwrap_or_default()
            ));
            if !emit(&says) {
                return EXIT_FAILURE;
            }
            wait_for(&client, &id).await
        }
    };
    match outcome {
        Ok(session) => {
            if emit(&format!("Signed in.\n{}", describe_session(&session))) {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        Err(code) => code,
    }
}

/// Waits for the browser to come back, relays the code and state to the agent, then tells the
/// browser how it went.
async fn browser_flow(
    client: &crate::cmd::client::SocketClient,
    loopback: &Loopback,
    id: &str,
    state: Option<&str>,
    expires: Duration,
) -> Result<serde_json::Value, i32> {
    let Ok(waited) = tokio::time::timeout(expires, loopback.wait(state)).await else {
        eprintln!("cortexid: the browser did not come back in time; run `cortexid login` again");
        return Err(EXIT_FAILURE);
    };
    let (redirect, mut stream) = waited.map_err(|e| {
        eprintln!("cortexid: {e}");
        EXIT_FAILURE
    })?;
    let (code, state) = match redirect {
        Redirect::Code { code, state } => (code, state),
        Redirect::Error { error: e, .. } => {
            let _ = answer_page(
                &mut stream,
                200,
                "Sign-in failed",
                &format!("The provider said: {e}. You can close this tab."),
            )
            .await;
            eprintln!("cortexid: the provider refused the sign-in: {}", printable(&e));
            return Err(EXIT_FAILURE);
        }
    };
    let path = format!("/v1/login/{id}/callback");
    let relayed = answer(client.post_json(&path, &serde_json::json!({"code": code, "state": state}))).await;
    match &relayed {
        Ok(v) if v["status"] == "complete" => {
            let _ = answer_page(
                &mut stream,
                200,
                "Signed in",
                "You are signed in to cortexid. You can close this tab.",
            )
            .await;
            Ok(v["session"].clone())
        }
        Ok(v) => {
            let why = v["error"].as_str().unwrap_or("the sign-in failed").to_string();
            let _ = answer_page(
                &mut stream,
                200,
                "Sign-in failed",
                &format!("{why}. You can close this tab."),
            )
            .await;
            eprintln!("cortexid: {}", printable(&why));
            Err(EXIT_FAILURE)
        }
        Err(code) => {
            let _ = answer_page(
                &mut stream,
                200,
                "Sign-in failed",
                "The agent refused the sign-in; see the terminal. You can close this tab.",
            )
            .await;
            Err(*code)
        }
    }
}

/// Long-polls the sign-in until it is no longer pending.
async fn wait_for(client: &crate::cmd::client::SocketClient, id: &str) -> Result<serde_json::Value, i32> {
    loop {
        let v = answer(client.get(&format!("/v1/login/{id}?wait=30"))).await?;
        match v["status"].as_str() {
            Some("pending") => continue,
            Some("complete") => return Ok(v["session"].clone()),
            _ => {
                eprintln!(
                    "cortexid: sign-in {}: {}",
                    printable(v["status"].as_str().unwrap_or("failed")),
                    printable(v["error"].as_str().unwrap_or("no reason given"))
                );
                return Err(EXIT_FAILURE);
            }
        }
    }
}
