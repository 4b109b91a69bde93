//! The client subcommands: `token`, `identities`, `status`, and the token output formats.
//!
//! Each command returns the process exit code: [`EXIT_OK`], [`EXIT_FAILURE`] (the agent returned
//! an error, the socket is unreachable, a credential file cannot be read) or [`EXIT_USAGE`].
//! Only `token` ever prints a token, and only on stdout, because the user asked for it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cmd::client::{ClientError, Response, SocketClient, TokenRequest, default_socket_path};
use crate::oauth::TOKEN_TYPE_JWT;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// The largest credential file `token` reads.
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct SocketArg {
    /// The agent's socket [default: $CORTEXID_SOCKET, else /run/cortexid/agent.sock]
    #[arg(long, env = "CORTEXID_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// The socket to use: `--socket`, else `$CORTEXID_SOCKET`, else the default.
    pub fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }

    pub fn client(&self) -> SocketClient {
        SocketClient::new(self.path())
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// The token and a newline.
    #[default]
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

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The audience the token is for.
    #[arg(long, value_name = "AUD")]
    pub audience: String,
    /// A scope to ask for; repeat it, or give several separated by spaces.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Vec<String>,
    /// The identity to use (needed when this caller may use several).
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// The least lifetime the token must have left, e.g. "5m" or "90s" (bare numbers are seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_valid: Option<Duration>,
    /// How to print the token.
    #[arg(long, value_enum, default_value_t = OutputFormat::Raw)]
    pub format: OutputFormat,
    /// Present the credential in this file as the subject (identities with subject = "caller").
    #[arg(long, value_name = "PATH")]
    pub subject_token_file: Option<PathBuf>,
    /// Act as an agent: present the credential in this file as the actor.
    #[arg(long, value_name = "PATH")]
    pub actor_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct IdentitiesArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Print the agent's health JSON as is.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// A duration as humantime writes it ("5m", "1h 30m"), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))
}

/// Whole seconds, rounded up: asking for "1500ms" must not become a 1 s guarantee.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Why a successful answer could not be printed in the asked-for format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the agent's answer has no access_token")]
    NoAccessToken,
    #[error("the agent's access_token is not a single printable word")]
    BadAccessToken,
}

fn unix_seconds(rfc3339: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// When the token expires, as Unix seconds: from `expires_at`, else from `expires_in` and now.
fn expiry_unix(resp: &serde_json::Value) -> Option<u64> {
    if let Some(t) = resp["expires_at"].as_str().and_then(unix_seconds) {
        return Some(t);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    resp["expires_in"].as_u64().map(|s| now.saturating_add(s))
}

/// When the token expires, as RFC 3339: `expires_at` as the agent wrote it, else computed.
fn expiry_rfc3339(resp: &serde_json::Value) -> Option<String> {
    if let Some(t) = resp["expires_at"].as_str().filter(|t| unix_seconds(t).is_some()) {
        return Some(t.to_string());
    }
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(expiry_unix(resp)?))?;
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

/// Formats a successful `/v1/token` answer for stdout.
pub fn format_token(format: OutputFormat, resp: &serde_json::Value) -> Result<String, FormatError> {
    let token = resp["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or(FormatError::NoAccessToken)?;
    // A token is one word of visible ASCII; anything else would corrupt a header line or a shell.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FormatError::BadAccessToken);
    }
    Ok(match format {
        OutputFormat::Raw => format!("{token}\n"),
        OutputFormat::Json => format!("{resp}\n"),
        OutputFormat::Header => format!("Authorization: Bearer {token}\n"),
        OutputFormat::K8s => {
            let mut status = serde_json::json!({"token": token});
            if let Some(at) = expiry_rfc3339(resp) {
                status["expirationTimestamp"] = at.into();
            }
            let cred = serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": status,
            });
            format!("{cred}\n")
        }
        OutputFormat::Google => {
            let mut out = serde_json::json!({
                "version": 1,
                "success": true,
                "token_type": TOKEN_TYPE_JWT,
                "id_token": token,
            });
            if let Some(at) = expiry_unix(resp) {
                out["expiration_time"] = at.into();
            }
            format!("{out}\n")
        }
    })
}

/// What goes to stdout on failure, if anything: Google's executable protocol wants its error
/// shape there; every other format prints nothing on stdout when it fails.
pub fn format_error(format: OutputFormat, code: &str, description: &str) -> Option<String> {
    match format {
        OutputFormat::Google => Some(format!(
            "{}\n",
            serde_json::json!({"version": 1, "success": false, "code": code, "message": description})
        )),
        OutputFormat::Raw | OutputFormat::Json | OutputFormat::K8s | OutputFormat::Header => None,
    }
}

/// The `error` code and description of a failed answer, with `Retry-After` mentioned.
pub fn describe_error(resp: &Response) -> (String, String) {
    let body = resp.json().ok();
    let field = |k: &str| body.as_ref().and_then(|b| b[k].as_str()).map(str::to_string);
    let (code, mut description) = match field("error") {
        Some(code) => (code, field("error_description").unwrap_or_default()),
        None => {
            let reason = hyper::StatusCode::from_u16(resp.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            (
                "unexpected_response".to_string(),
                format!("the agent answered HTTP {} {reason} without an error body", resp.status)
                    .trim_end()
                    .to_string(),
            )
        }
    };
    let retry = resp
        .headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let hint = match (resp.retry_after(), retry) {
        (Some(secs), _) => Some(format!("retry after {secs} s")),
        (None, Some(raw)) if !raw.is_empty() => Some(format!("retry after {raw}")),
        _ if resp.status == 429 => Some("retry later".to_string()),
        _ => None,
    };
    if let Some(hint) = hint {
        if description.is_empty() {
            description = hint;
        } else {
            description = format!("{description} ({hint})");
        }
    }
    (code, description)
}

/// Writes to stdout; a closed stdout is a failure to report, not a panic.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cortexid: cannot write to stdout: {e}");
            false
        }
    }
}

fn error_line(code: &str, description: &str) -> String {
    if description.is_empty() {
        format!("cortexid: {code}")
    } else {
        format!("cortexid: {code}: {description}")
    }
}

/// Reports a failure on stderr (and in Google's shape on stdout) and returns `exit`.
fn fail(format: OutputFormat, code: &str, description: &str, stderr: &str, exit: i32) -> i32 {
    if let Some(out) = format_error(format, code, description) {
        emit(&out);
    }
    eprintln!("{stderr}");
    exit
}

/// Reads a credential file: trimmed, not empty, not huge, UTF-8.
fn read_credential(flag: &str, path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    let mut raw = String::new();
    file.take(MAX_CREDENTIAL_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if raw.len() as u64 > MAX_CREDENTIAL_BYTES {
        return Err(format!(
            "{flag} {} is larger than {} KiB: not a token",
            path.display(),
            MAX_CREDENTIAL_BYTES / 1024
        ));
    }
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("{flag} {} is empty", path.display()));
    }
    Ok(token.to_string())
}

impl TokenArgs {
    /// The request these arguments ask for, without the credentials (see [`TokenArgs::request`]).
    pub(crate) fn base_request(&self) -> TokenRequest {
        let mut scopes: Vec<String> = Vec::new();
        for s in self.scope.iter().flat_map(|s| s.split_whitespace()) {
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_string());
            }
        }
        TokenRequest {
            audience: Some(self.audience.clone()),
            scopes,
            identity: self.identity.clone(),
            min_valid: self.min_valid.map(ceil_secs),
            ..TokenRequest::default()
        }
    }

    /// The full request, with the credentials read from their files.
    pub(crate) fn request(&self) -> Result<TokenRequest, String> {
        let mut req = self.base_request();
        if let Some(path) = &self.subject_token_file {
            req.subject_token = Some(read_credential("--subject-token-file", path)?);
            req.subject_token_type = Some(TOKEN_TYPE_JWT.to_string());
        }
        if let Some(path) = &self.actor_token_file {
            req.actor_token = Some(read_credential("--actor-token-file", path)?);
            req.actor_token_type = Some(TOKEN_TYPE_JWT.to_string());
        }
        Ok(req)
    }
}

/// `cortexid token`.
pub async fn token(args: TokenArgs) -> i32 {
    let format = args.format;
    if args.audience.trim().is_empty() {
        let msg = "--audience must not be empty";
        return fail(format, "invalid_request", msg, &format!("cortexid: {msg}"), EXIT_USAGE);
    }
    if matches!(&args.identity, Some(i) if i.trim().is_empty()) {
        let msg = "--identity must not be empty";
        return fail(format, "invalid_request", msg, &format!("cortexid: {msg}"), EXIT_USAGE);
    }
    let req = match args.request() {
        Ok(r) => r,
        Err(msg) => {
            return fail(
                format,
                "invalid_request",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            );
        }
    };
    let resp = match args.socket.client().token(&req).await {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            return fail(
                format,
                "agent_unavailable",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            );
        }
    };
    if !resp.is_success() {
        let (code, description) = describe_error(&resp);
        return fail(
            format,
            &code,
            &description,
            &error_line(&code, &description),
            EXIT_FAILURE,
        );
    }
    let body = match resp.json() {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            return fail(
                format,
                "invalid_response",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            );
        }
    };
    match format_token(format, &body) {
        Ok(out) => {
            if emit(&out) {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        Err(e) => {
            let msg = e.to_string();
            fail(
                format,
                "invalid_response",
                &msg,
                &format!("cortexid: {msg}"),
                EXIT_FAILURE,
            )
        }
    }
}

/// GETs `path` and returns its JSON when the answer is a success; otherwise prints why.
async fn fetch(socket: &SocketArg, path: &str) -> Result<(u16, serde_json::Value), i32> {
    let resp = socket.client().get(path).await.map_err(|e: ClientError| {
        eprintln!("cortexid: {e}");
        EXIT_FAILURE
    })?;
    match resp.json() {
        Ok(body) if resp.is_success() || body.get("error").is_none() => Ok((resp.status, body)),
        _ if !resp.is_success() => {
            let (code, description) = describe_error(&resp);
            eprintln!("{}", error_line(&code, &description));
            Err(EXIT_FAILURE)
        }
        Ok(_) => Err(EXIT_FAILURE),
        Err(e) => {
            eprintln!("cortexid: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}

/// Lays out rows as aligned columns (the last column is not padded).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A readable table of `/v1/identities`: name, agent, audiences, scopes.
pub fn format_identities(body: &serde_json::Value) -> String {
    let list = body["identities"].as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "no identities: no role of this agent lets this caller ask for a token\n".to_string();
    }
    let or_dash = |v: Vec<&str>, sep: &str| {
        if v.is_empty() { "-".to_string() } else { v.join(sep) }
    };
    let mut rows = vec![vec![
        "NAME".to_string(),
        "AGENT".to_string(),
        "AUDIENCES".to_string(),
        "SCOPES".to_string(),
    ]];
    for id in list {
        rows.push(vec![
            id["name"].as_str().unwrap_or("?").to_string(),
            if id["agent"] == true { "yes" } else { "no" }.to_string(),
            or_dash(strings(&id["audiences"]), ", "),
            or_dash(strings(&id["scopes"]), " "),
        ]);
    }
    table(&rows)
}

/// `cortexid identities`.
pub async fn identities(args: IdentitiesArgs) -> i32 {
    match fetch(&args.socket, "/v1/identities").await {
        Ok((_, body)) => {
            if emit(&format_identities(&body)) {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        Err(code) => code,
    }
}

/// A number or boolean as text; strings are never printed generically (one might be a token).
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seconds(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// One cached key of `/v1/health`: what it is for and when it expires and renews. Only named,
/// non-secret fields are read, so a token value can never be printed.
fn format_entry(k: &serde_json::Value) -> String {
    let text = |f: &str| k[f].as_str().filter(|s| !s.is_empty());
    let mut line = format!(
        "  {} {} [{}]",
        text("identity").unwrap_or("?"),
        text("audience").unwrap_or("?"),
        text("scope").unwrap_or("-")
    );
    match (text("expires_at"), k["expires_in"].as_u64()) {
        (Some(at), Some(s)) => line.push_str(&format!(": expires {at} (in {})", seconds(s))),
        (Some(at), None) => line.push_str(&format!(": expires {at}")),
        (None, Some(s)) => line.push_str(&format!(": expires in {}", seconds(s))),
        (None, None) => line.push_str(": no token yet"),
    }
    let mut notes = Vec::new();
    match (text("next_refresh"), k["next_refresh_in"].as_u64()) {
        (Some(at), Some(s)) => notes.push(format!("renews {at} (in {})", seconds(s))),
        (Some(at), None) => notes.push(format!("renews {at}")),
        (None, Some(s)) => notes.push(format!("renews in {}", seconds(s))),
        (None, None) => {}
    }
    if k["renewing"] == true {
        notes.push("renewing now".to_string());
    }
    if let Some(fp) = text("fingerprint") {
        notes.push(format!("fingerprint {fp}"));
    }
    if let Some(e) = text("last_error") {
        match k["failures"].as_u64() {
            Some(n) => notes.push(format!("failing ({n} tries): {e}")),
            None => notes.push(format!("failing: {e}")),
        }
    }
    if !notes.is_empty() {
        line.push_str(", ");
        line.push_str(&notes.join(", "));
    }
    line.push('\n');
    line
}

/// A readable summary of `/v1/health`. Never shows a token.
pub fn format_status(h: &serde_json::Value) -> String {
    let mut out = format!("status: {}\n", h["status"].as_str().unwrap_or("unknown"));
    if let Some(obj) = h.as_object() {
        for (k, v) in obj {
            if let Some(v) = scalar(v) {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
    }
    if let Some(providers) = h["providers"].as_object() {
        out.push_str("providers:\n");
        for (name, p) in providers {
            let state = match p["reachable"].as_bool() {
                Some(true) => "reachable",
                Some(false) => "unreachable",
                None => "unknown",
            };
            out.push_str(&format!("  {name}: {state}"));
            if let Some(err) = p["last_error"].as_str().filter(|e| !e.is_empty()) {
                out.push_str(&format!(" (last error: {err})"));
            }
            out.push('\n');
        }
    }
    let cache = &h["cache"];
    if cache.is_object() {
        // Per-key entries may come as `keys`, or as `entries` when that is a list.
        let keys = cache["keys"].as_array().or_else(|| cache["entries"].as_array());
        let count = cache["entries"]
            .as_u64()
            .or_else(|| keys.map(|k| k.len() as u64))
            .unwrap_or(0);
        out.push_str(&format!(
            "cache: {count} {}\n",
            if count == 1 { "entry" } else { "entries" }
        ));
        if let Some(obj) = cache.as_object() {
            for (k, v) in obj.iter().filter(|(k, _)| *k != "entries") {
                if let Some(v) = scalar(v) {
                    out.push_str(&format!("  {k}: {v}\n"));
                }
            }
        }
        for k in keys.into_iter().flatten() {
            out.push_str(&format_entry(k));
        }
    }
    for s in h["sinks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "sink {}: {}",
            s["path"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?")
        ));
        if let Some(e) = s["last_error"].as_str().filter(|e| !e.is_empty()) {
            out.push_str(&format!(" (last error: {e})"));
        }
        out.push('\n');
    }
    out
}

/// Whether a health answer means the agent can serve: `ok` or `degraded`.
pub fn health_is_serving(h: &serde_json::Value) -> bool {
    matches!(h["status"].as_str(), Some("ok" | "degraded"))
}

/// `cortexid status`: exit 0 when the agent is ok or degraded, 1 otherwise or when unreachable.
pub async fn status(args: StatusArgs) -> i32 {
    // The agent answers 503 while starting, with the health body: that is still a status to show.
    let resp = match args.socket.client().get("/v1/health").await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cortexid: {e}");
            return EXIT_FAILURE;
        }
    };
    let body = match resp.json() {
        Ok(b) if b.get("status").is_some() => b,
        _ => {
            let (code, description) = describe_error(&resp);
            eprintln!("{}", error_line(&code, &description));
            return EXIT_FAILURE;
        }
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&body) {
            Ok(s) => format!("{s}\n"),
            Err(_) => format!("{body}\n"),
        }
    } else {
        format_status(&body)
    };
    if !emit(&text) {
        return EXIT_FAILURE;
    }
    if health_is_serving(&body) {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    use crate::cmd::client::test_agent::{Answer, Seen, serve};

    fn answer() -> serde_json::Value {
        serde_json::json!({"access_token": "eyJ.a.b", "token_type": "Bearer",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "expires_in": 287,
            "expires_at": "2026-11-28T12:00:00Z", "identity": "payments",
            "audience": "https://payments.internal", "scope": "payments.read"})
    }

    fn parse_json(s: &str) -> serde_json::Value {
        assert!(s.ends_with('\n'));
        assert_eq!(s.matches('\n').count(), 1, "one line: {s}");
        serde_json::from_str(s).unwrap()
    }

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(subcommand)]
        sub: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Token(TokenArgs),
        Identities(IdentitiesArgs),
        Status(StatusArgs),
    }

    fn parse_token(args: &[&str]) -> Result<TokenArgs, clap::Error> {
        let mut argv = vec!["cortexid", "token"];
        argv.extend_from_slice(args);
        match Cmd::try_parse_from(argv)?.sub {
            Sub::Token(t) => Ok(t),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn raw_header_and_json_formats() {
        assert_eq!(format_token(OutputFormat::Raw, &answer()).unwrap(), "eyJ.a.b\n");
        assert_eq!(
            format_token(OutputFormat::Header, &answer()).unwrap(),
            "Authorization: Bearer eyJ.a.b\n"
        );
        assert_eq!(
            parse_json(&format_token(OutputFormat::Json, &answer()).unwrap()),
            answer()
        );
    }

    #[test]
    fn k8s_format_is_an_exec_credential() {
        let v = parse_json(&format_token(OutputFormat::K8s, &answer()).unwrap());
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                "status": {"token": "eyJ.a.b", "expirationTimestamp": "2026-11-28T12:00:00Z"}})
        );
        // Without expires_at the expiry is computed from expires_in.
        let v = parse_json(
            &format_token(
                OutputFormat::K8s,
                &serde_json::json!({"access_token": "t", "expires_in": 60}),
            )
            .unwrap(),
        );
        let at = v["status"]["expirationTimestamp"].as_str().unwrap();
        let secs = unix_seconds(at).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs >= now + 58 && secs <= now + 61, "{at}");
        // With neither, the timestamp is left out (kubectl then does not cache).
        let v = parse_json(&format_token(OutputFormat::K8s, &serde_json::json!({"access_token": "t"})).unwrap());
        assert!(v["status"].get("expirationTimestamp").is_none());
    }

    #[test]
    fn google_format_is_an_executable_response() {
        let v = parse_json(&format_token(OutputFormat::Google, &answer()).unwrap());
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "success": true,
                "token_type": "urn:ietf:params:oauth:token-type:jwt", "id_token": "eyJ.a.b",
                "expiration_time": 1_795_867_200u64})
        );
    }

    #[test]
    fn answers_without_a_usable_token_are_errors() {
        for bad in [
            serde_json::json!({"token_type": "Bearer"}),
            serde_json::json!({"access_token": ""}),
            serde_json::json!({"access_token": 5}),
        ] {
            assert_eq!(format_token(OutputFormat::Raw, &bad), Err(FormatError::NoAccessToken));
        }
        let bad = serde_json::json!({"access_token": "a\nX-Evil: 1"});
        assert_eq!(
            format_token(OutputFormat::Header, &bad),
            Err(FormatError::BadAccessToken)
        );
    }

    #[test]
    fn only_google_prints_failures_on_stdout() {
        let out = format_error(OutputFormat::Google, "access_denied", "no role").unwrap();
        assert_eq!(
            parse_json(&out),
            serde_json::json!({"version": 1, "success": false, "code": "access_denied", "message": "no role"})
        );
        for f in [
            OutputFormat::Raw,
            OutputFormat::Json,
            OutputFormat::K8s,
            OutputFormat::Header,
        ] {
            assert!(format_error(f, "x", "y").is_none());
        }
    }

    fn response(status: u16, retry: Option<&str>, body: &str) -> Response {
        let mut headers = hyper::HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(hyper::header::RETRY_AFTER, r.parse().unwrap());
        }
        Response {
            status,
            headers,
            body: body.to_string().into(),
        }
    }

    #[test]
    fn errors_carry_the_agents_words_and_retry_after() {
        let r = response(
            403,
            None,
            r#"{"error":"invalid_target","error_description":"not yours"}"#,
        );
        assert_eq!(describe_error(&r), ("invalid_target".into(), "not yours".into()));
        let r = response(
            429,
            Some("3"),
            r#"{"error":"slow_down","error_description":"too many"}"#,
        );
        assert_eq!(
            describe_error(&r),
            ("slow_down".into(), "too many (retry after 3 s)".into())
        );
        let (code, d) = describe_error(&response(429, None, r#"{"error":"slow_down"}"#));
        assert_eq!((code.as_str(), d.as_str()), ("slow_down", "retry later"));
        assert_eq!(error_line(&code, &d), "cortexid: slow_down: retry later");
        let (code, d) = describe_error(&response(502, None, "<html>bad gateway</html>"));
        assert_eq!(code, "unexpected_response");
        assert_eq!(d, "the agent answered HTTP 502 Bad Gateway without an error body");
        assert_eq!(error_line("x", ""), "cortexid: x");
    }

    #[test]
    fn token_arguments_parse() {
        let t = parse_token(&[
            "--audience",
            "https://payments.internal",
            "--scope",
            "a b",
            "--scope",
            "c",
            "--scope",
            "a",
            "--min-valid",
            "5m",
            "--identity",
            "payments",
            "--format",
            "k8s",
            "--socket",
            "/tmp/s.sock",
        ])
        .unwrap();
        assert_eq!(t.format, OutputFormat::K8s);
        assert_eq!(t.socket.path(), PathBuf::from("/tmp/s.sock"));
        let req = t.request().unwrap();
        assert_eq!(req.scopes, ["a", "b", "c"]);
        assert_eq!(req.min_valid, Some(300));
        assert_eq!(
            req.query(),
            "audience=https%3A%2F%2Fpayments.internal&scope=a%20b%20c&identity=payments&min_valid=300"
        );
        assert!(!req.presents_credential());

        let t = parse_token(&["--audience", "a", "--min-valid", "90"]).unwrap();
        assert_eq!(t.format, OutputFormat::Raw);
        assert_eq!(t.base_request().min_valid, Some(90));
        let t = parse_token(&["--audience", "a", "--min-valid", "1500ms"]).unwrap();
        assert_eq!(t.base_request().min_valid, Some(2));

        for f in ["raw", "json", "k8s", "google", "header"] {
            parse_token(&["--audience", "a", "--format", f]).unwrap();
        }
        let e = parse_token(&["--scope", "x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(parse_token(&["--audience", "a", "--min-valid", "soon"]).is_err());
        assert!(parse_token(&["--audience", "a", "--format", "yaml"]).is_err());
        assert!(
            Cmd::try_parse_from(["cortexid", "status", "--json"]).is_ok()
                && Cmd::try_parse_from(["cortexid", "identities"]).is_ok()
        );
    }

    #[test]
    fn credential_files_are_read_trimmed_and_go_in_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let actor = dir.path().join("actor.jwt");
        std::fs::write(&actor, "  eyJ.actor.sig\n\n").unwrap();
        let subject = dir.path().join("subject.jwt");
        std::fs::write(&subject, "eyJ.subject.sig").unwrap();
        let t = parse_token(&[
            "--audience",
            "a",
            "--actor-token-file",
            actor.to_str().unwrap(),
            "--subject-token-file",
            subject.to_str().unwrap(),
        ])
        .unwrap();
        let req = t.request().unwrap();
        assert!(req.presents_credential());
        let body = req.body();
        assert_eq!(body["actor_token"], "eyJ.actor.sig");
        assert_eq!(body["actor_token_type"], TOKEN_TYPE_JWT);
        assert_eq!(body["subject_token"], "eyJ.subject.sig");
        assert_eq!(body["subject_token_type"], TOKEN_TYPE_JWT);

        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = read_credential("--actor-token-file", &empty).unwrap_err();
        assert!(e.ends_with("is empty"), "{e}");
        let e = read_credential("--actor-token-file", &dir.path().join("none")).unwrap_err();
        assert!(e.starts_with("cannot read --actor-token-file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70_000]).unwrap();
        assert!(
            read_credential("--actor-token-file", &big)
                .unwrap_err()
                .contains("larger")
        );
    }

    #[test]
    fn identities_are_a_table() {
        let body = serde_json::json!({"identities": [
            {"name": "payments", "audiences": ["https://payments.internal", "https://b"], "scopes": ["payments.read", "payments.write"], "agent": false},
            {"name": "bot", "audiences": ["https://x"], "scopes": [], "agent": true}]});
        assert_eq!(
            format_identities(&body),
            "NAME      AGENT  AUDIENCES                             SCOPES\n\
             payments  no     https://payments.internal, https://b  payments.read payments.write\n\
             bot       yes    https://x                             -\n"
        );
        assert!(format_identities(&serde_json::json!({"identities": []})).starts_with("no identities"));
    }

    #[test]
    fn status_summarises_health_and_never_shows_tokens() {
        let h = serde_json::json!({"status": "degraded",
            "providers": {"corp": {"reachable": false, "last_error": "timeout"}, "k8s": {"reachable": true, "last_error": null}},
            "cache": {"entries": 1, "hits": 7, "note": "eyJ.leak", "keys": [{"identity": "p", "audience": "a", "scope": "",
                "expires_in": 20, "expires_at": "2026-11-28T12:00:00Z", "next_refresh_in": 3, "fingerprint": "3f2a",
                "failures": 2, "last_error": "down", "access_token": "eyJ.secret"}]},
            "sinks": [{"path": "/run/t", "state": "ok"}]});
        let s = format_status(&h);
        assert!(s.starts_with("status: degraded\n"), "{s}");
        assert!(s.contains("  corp: unreachable (last error: timeout)\n"), "{s}");
        assert!(s.contains("  k8s: reachable\n"), "{s}");
        assert!(s.contains("cache: 1 entry\n  hits: 7\n"), "{s}");
        assert!(
            s.contains("  p a [-]: expires 2026-11-28T12:00:00Z (in 20s), renews in 3s, fingerprint 3f2a, failing (2 tries): down\n"),
            "{s}"
        );
        assert!(s.contains("sink /run/t: ok\n"), "{s}");
        assert!(!s.contains("eyJ"), "{s}");
        assert!(health_is_serving(&h));

        // Entries may come as a list with next_refresh timestamps.
        let h = serde_json::json!({"status": "starting", "cache": {"entries": [
            {"identity": "p", "audience": "a", "scope": "s", "expires_at": "2026-11-28T12:00:00Z", "next_refresh": "2026-11-28T11:58:00Z"}]}});
        let s = format_status(&h);
        assert!(
            s.contains("cache: 1 entry\n  p a [s]: expires 2026-11-28T12:00:00Z, renews 2026-11-28T11:58:00Z\n"),
            "{s}"
        );
        assert!(!health_is_serving(&h));
        assert!(health_is_serving(&serde_json::json!({"status": "ok"})));
    }

    fn agent(seen: &Seen) -> Answer {
        match seen.uri.as_str() {
            "/v1/health" => Answer::json(200, serde_json::json!({"status": "ok", "cache": {"entries": 0}})),
            "/v1/identities" => Answer::json(200, serde_json::json!({"identities": []})),
            u if u.contains("audience=denied") => Answer::json(
                403,
                serde_json::json!({"error": "invalid_target", "error_description": "not yours"}),
            ),
            u if u.contains("audience=busy") => Answer::json(
                429,
                serde_json::json!({"error": "slow_down", "error_description": "too many"}),
            )
            .header("retry-after", "2"),
            u if u.contains("audience=garbage") => Answer::text(200, "not json"),
            u if u.starts_with("/v1/token") => {
                Answer::json(200, serde_json::json!({"access_token": "eyJ.x.y", "expires_in": 60}))
            }
            _ => Answer::json(404, serde_json::json!({"error": "not_found"})),
        }
    }

    fn starting(seen: &Seen) -> Answer {
        match seen.uri.as_str() {
            "/v1/health" => Answer::json(503, serde_json::json!({"status": "starting"})),
            _ => Answer::text(500, "oops"),
        }
    }

    fn token_args(socket: &Path, audience: &str) -> TokenArgs {
        TokenArgs {
            audience: audience.into(),
            scope: vec![],
            identity: None,
            min_valid: None,
            format: OutputFormat::Raw,
            subject_token_file: None,
            actor_token_file: None,
            socket: SocketArg {
                socket: Some(socket.to_path_buf()),
            },
        }
    }

    #[tokio::test]
    async fn commands_return_the_right_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seen) = serve(dir.path(), agent).await;
        let socket = SocketArg {
            socket: Some(path.clone()),
        };
        assert_eq!(token(token_args(&path, "https://ok")).await, EXIT_OK);
        assert_eq!(token(token_args(&path, "denied")).await, EXIT_FAILURE);
        assert_eq!(token(token_args(&path, "busy")).await, EXIT_FAILURE);
        assert_eq!(token(token_args(&path, "garbage")).await, EXIT_FAILURE);
        assert_eq!(token(token_args(&path, " ")).await, EXIT_USAGE);
        let mut with_file = token_args(&path, "https://ok");
        with_file.actor_token_file = Some(dir.path().join("missing.jwt"));
        assert_eq!(token(with_file).await, EXIT_FAILURE);
        let actor = dir.path().join("actor.jwt");
        std::fs::write(&actor, "eyJ.actor.sig\n").unwrap();
        let mut with_file = token_args(&path, "https://ok");
        with_file.actor_token_file = Some(actor);
        with_file.format = OutputFormat::Google;
        assert_eq!(token(with_file).await, EXIT_OK);
        let ids = IdentitiesArgs { socket: socket.clone() };
        assert_eq!(identities(ids).await, EXIT_OK);
        assert_eq!(
            status(StatusArgs {
                json: true,
                socket: socket.clone()
            })
            .await,
            EXIT_OK
        );
        assert_eq!(status(StatusArgs { json: false, socket }).await, EXIT_OK);

        let seen = seen.lock().unwrap().clone();
        let posted = seen.iter().find(|s| s.method == "POST").unwrap();
        assert_eq!(posted.uri, "/v1/token");
        assert!(posted.body.contains("eyJ.actor.sig"));
        assert!(seen.iter().all(|s| !s.uri.contains("actor")));

        // An agent that is starting answers 503 with its health: exit 1.
        let dir2 = tempfile::tempdir().unwrap();
        let (path2, _) = serve(dir2.path(), starting).await;
        let s2 = SocketArg { socket: Some(path2) };
        assert_eq!(
            status(StatusArgs {
                json: false,
                socket: s2.clone()
            })
            .await,
            EXIT_FAILURE
        );
        assert_eq!(identities(IdentitiesArgs { socket: s2 }).await, EXIT_FAILURE);

        // No agent at all: exit 1.
        let none = SocketArg {
            socket: Some(dir.path().join("none.sock")),
        };
        assert_eq!(
            token(token_args(&dir.path().join("none.sock"), "a")).await,
            EXIT_FAILURE
        );
        assert_eq!(
            status(StatusArgs {
                json: false,
                socket: none.clone()
            })
            .await,
            EXIT_FAILURE
        );
        assert_eq!(identities(IdentitiesArgs { socket: none }).await, EXIT_FAILURE);
    }
}
