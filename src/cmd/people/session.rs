//! `cortexid logout` and `cortexid whoami`.

use crate::cmd::common::{EXIT_FAILURE, EXIT_OK, SocketArg, emit, printable};

use super::{answer, client, describe_session};

#[derive(clap::Args, Debug, Clone)]
pub struct LogoutArgs {
    /// The login to sign out of [default: the only session you hold]
    pub name: Option<String>,
    /// Sign out of every login
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
    #[command(flatten)]
    pub(crate) socket: SocketArg,
}

/// `cortexid logout [NAME|--all]`: ends the caller's session(s); the agent revokes the refresh
/// token at the provider when it offers revocation.
pub async fn logout(args: LogoutArgs) -> i32 {
    let client = client(&args.socket);
    let names: Vec<String> = match &args.name {
        Some(n) => vec![n.clone()],
        None => {
            let Ok(list) = answer(client.get("/v1/sessions")).await else {
                return EXIT_FAILURE;
            };
            let names: Vec<String> = list["sessions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["login"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            match names.len() {
                0 => {
                    eprintln!("cortexid: you hold no session; nothing to sign out of");
                    return EXIT_OK;
                }
                1 => names,
                _ if args.all => names,
                _ => {
                    eprintln!(
                        "cortexid: you hold sessions at several logins ({}); name one, or use --all",
                        printable(&names.join(", "))
                    );
                    return crate::cmd::EXIT_USAGE;
                }
            }
        }
    };
    let mut code = EXIT_OK;
    for name in names {
        let path = format!(
            "/v1/sessions/{}",
            url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
        );
        match answer(client.delete(&path)).await {
            Ok(out) => {
                let revoked = match &out["revoked_at_provider"] {
                    serde_json::Value::Bool(true) => "the refresh token was revoked at the provider".to_string(),
                    serde_json::Value::Bool(false) => {
                        "the provider offers no revocation; the agent forgot the refresh token".to_string()
                    }
                    other => format!(
                        "revocation at the provider failed ({}); the agent forgot the refresh token",
                        printable(other["error"].as_str().unwrap_or("unknown"))
                    ),
                };
                if !emit(&format!("Signed out of {}: {revoked}.\n", printable(&name))) {
                    code = EXIT_FAILURE;
                }
            }
            Err(c) => code = c,
        }
    }
    code
}

#[derive(clap::Args, Debug, Clone)]
pub struct WhoamiArgs {
    /// Print the agent's JSON answer
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub(crate) socket: SocketArg,
}

/// `cortexid whoami`: the caller as the agent sees it, its sessions and the roles that match it.
pub async fn whoami(args: WhoamiArgs) -> i32 {
    let Ok(me) = answer(client(&args.socket).get("/v1/whoami")).await else {
        return EXIT_FAILURE;
    };
    if args.json {
        return if emit(&format!("{me}\n")) {
            EXIT_OK
        } else {
            EXIT_FAILURE
        };
    }
    let c = &me["caller"];
    let field = |k: &str| match &c[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => printable(s).into_owned(),
        other => printable(&other.to_string()).into_owned(),
    };
    let mut out = format!(
        "uid {} ({}), gid {}, pid {}\nexe  {}\nunit {}\n",
        field("uid"),
        field("user"),
        field("gid"),
        field("pid"),
        field("exe"),
        field("unit")
    );
    if !c["pod"].is_null() {
        out.push_str(&format!("pod  {}\n", printable(&c["pod"].to_string())));
    }
    let sessions = me["sessions"].as_array().cloned().unwrap_or_default();
    if sessions.is_empty() {
        out.push_str("sessions: none (sign in with `cortexid login`)\n");
    }
    for s in &sessions {
        out.push_str(&describe_session(s));
    }
    let roles: Vec<String> = me["roles"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str())
                .map(|r| printable(r).into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "roles: {}\n",
        if roles.is_empty() {
            "none".to_string()
        } else {
            roles.join(", ")
        }
    ));
    if emit(&out) { EXIT_OK } else { EXIT_FAILURE }
}
