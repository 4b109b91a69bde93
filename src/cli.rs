//! The client subcommands: `token`, `identities`, `status`, and the token output formats.

use std::path::PathBuf;

use crate::client::{ClientError, SocketClient, TokenRequest, default_socket_path};
use crate::config::TOKEN_TYPE_JWT;
use crate::token::Secret;

#[derive(clap::Args, Debug, Clone)]
pub struct SocketArg {
    /// The agent's socket [default: $CORTEXID_SOCKET, else /run/cortexid/agent.sock]
    #[arg(long, env = "CORTEXID_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    pub fn client(&self) -> SocketClient {
        SocketClient::new(self.socket.clone().unwrap_or_else(default_socket_path))
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The token and a newline.
    Raw,
    /// The agent's JSON answer.
    Json,
    /// A Kubernetes client.authentication.k8s.io/v1 ExecCredential (kubectl credential plugin).
    K8s,
    /// A Google executable-sourced credential response, version 1.
    Google,
    /// `Authorization: Bearer <token>`.
    Header,
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The audience the token is for.
    #[arg(long)]
    pub audience: String,
    /// A scope to ask for; repeat it, or give several separated by spaces.
    #[arg(long)]
    pub scope: Vec<String>,
    /// The identity to use (needed when this caller may use several).
    #[arg(long)]
    pub identity: Option<String>,
    /// The least lifetime the token must have left, e.g. "5m".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_valid: Option<std::time::Duration>,
    #[arg(long, value_enum, default_value = "raw")]
    pub format: OutputFormat,
    /// Present this credential as the subject (identities with subject = "caller").
    #[arg(long)]
    pub subject_token_file: Option<PathBuf>,
    /// Act as an agent: present this credential as the actor.
    #[arg(long)]
    pub actor_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct IdentitiesArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the agent's health JSON as is.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

fn read_credential(path: &PathBuf) -> Result<Secret, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = raw.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(t.to_string()))
}

/// Formats a successful `/v1/token` answer.
pub fn format_token(format: OutputFormat, resp: &serde_json::Value) -> Result<String, String> {
    let token = resp["access_token"]
        .as_str()
        .ok_or("the agent's answer has no access_token")?;
    let expires_at = resp["expires_at"].as_str().unwrap_or_default();
    Ok(match format {
        OutputFormat::Raw => format!("{token}\n"),
        OutputFormat::Json => format!("{resp}\n"),
        OutputFormat::Header => format!("Authorization: Bearer {token}\n"),
        OutputFormat::K8s => format!(
            "{}\n",
            serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": token, "expirationTimestamp": expires_at},
            })
        ),
        OutputFormat::Google => {
            let expiration = humantime::parse_rfc3339(expires_at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .ok_or("the agent's answer has no usable expires_at")?;
            format!(
                "{}\n",
                serde_json::json!({
                    "version": 1, "success": true,
                    "token_type": TOKEN_TYPE_JWT, "id_token": token, "expiration_time": expiration,
                })
            )
        }
    })
}

/// What goes to stdout on failure: Google's executable protocol wants its error shape there.
pub fn format_error(format: OutputFormat, code: &str, description: &str) -> Option<String> {
    match format {
        OutputFormat::Google => Some(format!(
            "{}\n",
            serde_json::json!({"version": 1, "success": false, "code": code, "message": description})
        )),
        _ => None,
    }
}

fn fail(format: OutputFormat, code: &str, description: &str) -> i32 {
    if let Some(out) = format_error(format, code, description) {
        print!("{out}");
    }
    eprintln!("cortexid: {code}: {description}");
    1
}

/// `cortexid token`.
pub async fn token(args: TokenArgs) -> i32 {
    let mut req = TokenRequest {
        audience: Some(args.audience.clone()),
        scopes: args
            .scope
            .iter()
            .flat_map(|s| s.split_whitespace().map(str::to_string))
            .collect(),
        identity: args.identity.clone(),
        min_valid: args.min_valid.map(|d| d.as_secs()),
        ..TokenRequest::default()
    };
    for (file, slot, ty) in [
        (
            &args.subject_token_file,
            &mut req.subject_token,
            &mut req.subject_token_type,
        ),
        (&args.actor_token_file, &mut req.actor_token, &mut req.actor_token_type),
    ] {
        if let Some(path) = file {
            match read_credential(path) {
                Ok(t) => {
                    *slot = Some(t);
                    *ty = Some(TOKEN_TYPE_JWT.to_string());
                }
                Err(e) => return fail(args.format, "invalid_request", &e),
            }
        }
    }
    let client = args.socket.client();
    let resp = match client.token(&req).await {
        Ok(r) => r,
        Err(e) => return fail(args.format, "agent_unreachable", &e.to_string()),
    };
    let body = match resp.json() {
        Ok(b) => b,
        Err(e) => return fail(args.format, "invalid_response", &e.to_string()),
    };
    if resp.status != 200 {
        let code = body["error"].as_str().unwrap_or("error");
        let mut desc = body["error_description"].as_str().unwrap_or_default().to_string();
        if let Some(ra) = resp.headers.get("retry-after").and_then(|v| v.to_str().ok()) {
            desc.push_str(&format!(" (retry after {ra} s)"));
        }
        return fail(args.format, code, &desc);
    }
    match format_token(args.format, &body) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => fail(args.format, "invalid_response", &e),
    }
}

async fn get_json(client: &SocketClient, path: &str) -> Result<(u16, serde_json::Value), ClientError> {
    let r = client.get(path).await?;
    Ok((r.status, r.json()?))
}

/// `cortexid identities`.
pub async fn identities(args: IdentitiesArgs) -> i32 {
    let client = args.socket.client();
    match get_json(&client, "/v1/identities").await {
        Ok((200, body)) => {
            let list = body["identities"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no identities: no role of this agent matches you");
            }
            for id in list {
                let join = |v: &serde_json::Value| {
                    v.as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                };
                println!(
                    "{}{}",
                    id["name"].as_str().unwrap_or("?"),
                    if id["agent"] == true { " (agent)" } else { "" }
                );
                println!("  audiences: {}", join(&id["audiences"]));
                let scopes = join(&id["scopes"]);
                println!("  scopes:    {}", if scopes.is_empty() { "(none)" } else { &scopes });
            }
            0
        }
        Ok((_, body)) => {
            eprintln!(
                "cortexid: {}: {}",
                body["error"].as_str().unwrap_or("error"),
                body["error_description"].as_str().unwrap_or("")
            );
            1
        }
        Err(e) => {
            eprintln!("cortexid: {e}");
            1
        }
    }
}

/// A readable summary of `/v1/health`.
pub fn format_status(h: &serde_json::Value) -> String {
    let mut out = format!("status: {}\n", h["status"].as_str().unwrap_or("unknown"));
    if let Some(providers) = h["providers"].as_object() {
        out.push_str("providers:\n");
        for (name, p) in providers {
            let state = if p["reachable"] == true {
                "reachable"
            } else {
                "unreachable"
            };
            out.push_str(&format!("  {name}: {state}"));
            if let Some(err) = p["last_error"].as_str() {
                out.push_str(&format!(" (last error: {err})"));
            }
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "cache: {} entries\n",
        h["cache"]["entries"].as_u64().unwrap_or(0)
    ));
    for k in h["cache"]["keys"].as_array().into_iter().flatten() {
        let scope = k["scope"].as_str().filter(|s| !s.is_empty()).unwrap_or("-");
        out.push_str(&format!(
            "  {} {} [{}]",
            k["identity"].as_str().unwrap_or("?"),
            k["audience"].as_str().unwrap_or("?"),
            scope
        ));
        match k["expires_in"].as_u64() {
            Some(s) => out.push_str(&format!(" expires in {s}s")),
            None => out.push_str(" no token"),
        }
        if let Some(n) = k["next_refresh_in"].as_u64() {
            out.push_str(&format!(", renews in {n}s"));
        }
        if let Some(fp) = k["fingerprint"].as_str() {
            out.push_str(&format!(", fingerprint {fp}"));
        }
        if let Some(e) = k["last_error"].as_str() {
            out.push_str(&format!(", failing ({} tries): {e}", k["failures"]));
        }
        out.push('\n');
    }
    for s in h["sinks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "sink {}: {}\n",
            s["path"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?")
        ));
    }
    out
}

/// `cortexid status`: exit 0 when ok or degraded.
pub async fn status(args: StatusArgs) -> i32 {
    let client = args.socket.client();
    match get_json(&client, "/v1/health").await {
        Ok((status, body)) => {
            if args.json {
                println!("{body}");
            } else {
                print!("{}", format_status(&body));
            }
            if status == 200 { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("cortexid: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> serde_json::Value {
        serde_json::json!({"access_token": "eyJ.a.b", "token_type": "Bearer", "expires_in": 287,
            "expires_at": "2026-11-28T12:00:00Z", "identity": "payments", "audience": "a", "scope": "s"})
    }

    #[test]
    fn formats_carry_the_token_and_its_expiry() {
        assert_eq!(format_token(OutputFormat::Raw, &answer()).unwrap(), "eyJ.a.b\n");
        assert_eq!(
            format_token(OutputFormat::Header, &answer()).unwrap(),
            "Authorization: Bearer eyJ.a.b\n"
        );
        let k8s: serde_json::Value =
            serde_json::from_str(&format_token(OutputFormat::K8s, &answer()).unwrap()).unwrap();
        assert_eq!(k8s["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(k8s["kind"], "ExecCredential");
        assert_eq!(k8s["status"]["token"], "eyJ.a.b");
        assert_eq!(k8s["status"]["expirationTimestamp"], "2026-11-28T12:00:00Z");
        let g: serde_json::Value =
            serde_json::from_str(&format_token(OutputFormat::Google, &answer()).unwrap()).unwrap();
        assert_eq!(g["version"], 1);
        assert_eq!(g["success"], true);
        assert_eq!(g["id_token"], "eyJ.a.b");
        assert_eq!(g["expiration_time"], 1795867200);
        let json: serde_json::Value =
            serde_json::from_str(&format_token(OutputFormat::Json, &answer()).unwrap()).unwrap();
        assert_eq!(json, answer());
    }

    #[test]
    fn google_failures_use_the_documented_shape() {
        let out = format_error(OutputFormat::Google, "access_denied", "no role").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "success": false, "code": "access_denied", "message": "no role"})
        );
        assert!(format_error(OutputFormat::Raw, "x", "y").is_none());
    }

    #[test]
    fn status_never_shows_tokens_and_names_failures() {
        let h = serde_json::json!({"status": "degraded", "providers": {"corp": {"reachable": false, "last_error": "timeout"}},
            "cache": {"entries": 1, "keys": [{"identity": "p", "audience": "a", "scope": "", "expires_in": 20,
            "next_refresh_in": 3, "fingerprint": "3f2a", "failures": 2, "last_error": "down"}]}});
        let s = format_status(&h);
        assert!(s.contains("status: degraded"));
        assert!(s.contains("corp: unreachable (last error: timeout)"));
        assert!(
            s.contains("p a [-] expires in 20s, renews in 3s, fingerprint 3f2a, failing (2 tries): down"),
            "{s}"
        );
    }
}
