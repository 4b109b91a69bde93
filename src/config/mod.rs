//! Configuration: raw serde structs (what the TOML file says) → one validated [`Config`] (what the
//! rest of the agent trusts).
//!
//! Loading collects *every* problem it can find, each located by line and key, so that
//! `cortexid check-config` can print them all at once. Nothing here reads the process
//! environment: the few outside facts (the credentials directory, user lookups) come in through
//! [`LoadContext`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, ConfigProblem};
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use crate::secrets::{SecretFile, check_secret_permissions};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cortexid/cortexid.toml";
pub const DEFAULT_SOCKET: &str = "/run/cortexid/agent.sock";

// ---------------------------------------------------------------------------------------------
// Raw configuration: exactly what the file says.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    provider: Vec<RawProvider>,
    #[serde(default)]
    identity: Vec<RawIdentity>,
    #[serde(default)]
    role: Vec<RawRole>,
    #[serde(default)]
    sink: Vec<RawSink>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAgent {
    socket: Option<String>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    refresh_at: Option<f64>,
    refresh_jitter: Option<f64>,
    min_remaining: Option<String>,
    idle_expiry: Option<String>,
    upstream_timeout: Option<String>,
    audit_log: Option<String>,
    audit_failure: Option<String>,
    log_format: Option<String>,
    metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawProvider {
    name: String,
    issuer: String,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    ca_file: Option<String>,
    client_id: String,
    client_auth: Option<String>,
    client_secret_file: Option<String>,
    private_key_file: Option<String>,
    key_id: Option<String>,
    verify_tokens: Option<bool>,
    target_parameter: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawTrustedIssuer {
    issuer: String,
    jwks_uri: String,
    audience: String,
    ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawIdentity {
    name: String,
    provider: String,
    grant: Option<String>,
    subject_token_file: Option<String>,
    subject_token_type: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    trusted_issuers: Vec<RawTrustedIssuer>,
    actor_token_file: Option<String>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

/// A claim condition: one accepted value or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawClaimValues {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawRole {
    name: String,
    users: Option<Vec<String>>,
    uids: Option<Vec<u32>>,
    groups: Option<Vec<String>>,
    gids: Option<Vec<u32>>,
    units: Option<Vec<String>>,
    executables: Option<Vec<String>>,
    claims: Option<BTreeMap<String, RawClaimValues>>,
    #[serde(default)]
    identities: Vec<String>,
    audiences: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    #[serde(default)]
    agent: bool,
    rate: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawSink {
    identity: String,
    audience: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    path: String,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Runtime configuration: validated, resolved, trusted by the rest of the agent.
// ---------------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from.
    pub path: PathBuf,
    pub agent: AgentSettings,
    pub providers: Vec<Arc<ProviderSettings>>,
    pub identities: Vec<Arc<IdentitySettings>>,
    pub roles: Vec<Arc<Role>>,
    pub sinks: Vec<SinkSettings>,
}

impl Config {
    pub fn identity(&self, name: &str) -> Option<&Arc<IdentitySettings>> {
        self.identities.iter().find(|i| i.name == name)
    }
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderSettings>> {
        self.providers.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_group: Option<u32>,
    pub refresh_at: f64,
    pub refresh_jitter: f64,
    pub min_remaining: Duration,
    pub idle_expiry: Duration,
    pub upstream_timeout: Duration,
    pub audit_log: AuditTarget,
    pub audit_failure: AuditFailure,
    pub log_format: LogFormat,
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    File(PathBuf),
    Journal,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFailure {
    /// A token whose `token.issued` event cannot be written is not handed out.
    Closed,
    /// The token is handed out anyway; the failure is logged.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    SecretBasic(SecretFile),
    SecretPost(SecretFile),
    PrivateKeyJwt { key: SecretFile, key_id: Option<String> },
    None,
}

impl ClientAuth {
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
            ClientAuth::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetParameter {
    Audience,
    Resource,
    Both,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    pub name: String,
    pub issuer: String,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
    pub client_auth: ClientAuth,
    pub verify_tokens: bool,
    pub target_parameter: Option<TargetParameter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    TokenExchange,
    ClientCredentials,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::TokenExchange => "token_exchange",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubjectSource {
    /// Read from a file at each exchange.
    File(SecretFile),
    /// Presented by the caller in the request body (SPEC section 5).
    Caller,
    /// Client credentials: the client is the subject.
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub jwks_uri: String,
    pub audience: String,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySettings {
    pub name: String,
    pub provider: String,
    pub grant: Grant,
    pub subject: SubjectSource,
    pub subject_token_type: String,
    pub trusted_issuers: Vec<TrustedIssuer>,
    pub actor_token_file: Option<SecretFile>,
    pub actor_token_type: String,
    pub requested_token_type: String,
    /// Allowed audiences; the first is the default (used by `doctor` and sinks without one).
    pub audiences: Vec<String>,
    /// The scope ceiling.
    pub scopes: Vec<String>,
}

/// A request rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("rate {s:?} is not like \"10/s\", \"100/m\" or \"5/1s\"");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("rate {s:?} allows nothing; remove the role or raise the count"));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if per.is_zero() {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }
}

/// Who a role is for (every condition given must hold) and what it grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    pub uids: Option<BTreeSet<u32>>,
    pub gids: Option<BTreeSet<u32>>,
    pub units: Option<Vec<String>>,
    pub executables: Option<Vec<PathBuf>>,
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    pub identities: Vec<String>,
    pub audiences: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub agent: bool,
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    pub identity: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub path: PathBuf,
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// Facts from outside the file that loading needs.
pub trait LoadContext {
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), against which relative secret paths resolve.
    fn credentials_directory(&self) -> Option<PathBuf>;
    /// Whether the agent runs under systemd (decides the default audit target).
    fn under_systemd(&self) -> bool;
    fn uid_of_user(&self, name: &str) -> Option<u32>;
    fn gid_of_group(&self, name: &str) -> Option<u32>;
}

/// The real system: environment variables and the user database.
pub struct SystemContext;

impl LoadContext for SystemContext {
    fn credentials_directory(&self) -> Option<PathBuf> {
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
    }
    fn under_systemd(&self) -> bool {
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("JOURNAL_STREAM").is_some()
    }
    fn uid_of_user(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
    fn gid_of_group(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path, ctx: &dyn LoadContext) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.display().to_string(),
        problems: vec![ConfigProblem {
            line: None,
            key: "file".into(),
            message: format!("cannot read the configuration: {e}"),
        }],
    })?;
    parse(&text, path, ctx)
}

/// Validates configuration text; `path` is used for messages and as [`Config::path`].
pub fn parse(text: &str, path: &Path, ctx: &dyn LoadContext) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<ConfigProblem>| ConfigError {
        path: path.display().to_string(),
        problems,
    };
    let locator = Locator::new(text);

    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let raw: RawConfig = match toml::Deserializer::parse(text) {
        Ok(de) => match serde_ignored::deserialize(de, |p| unknown.push(segments(&p))) {
            Ok(raw) => raw,
            Err(e) => return Err(fail(vec![toml_problem(&locator, &e)])),
        },
        Err(e) => return Err(fail(vec![toml_problem(&locator, &e)])),
    };

    let mut v = Validator {
        locator: &locator,
        problems: Vec::new(),
        ctx,
    };
    for p in &unknown {
        v.problem(
            p,
            "unknown key; check its spelling and section (see the example configuration)".into(),
        );
    }
    let config = v.build(raw, path);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        v.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(fail(v.problems))
    }
}

fn toml_problem(locator: &Locator, e: &toml::de::Error) -> ConfigProblem {
    let line = e.span().map(|s| locator.line_of(s.start));
    ConfigProblem {
        line,
        key: "syntax".into(),
        message: e.message().trim().to_string(),
    }
}

/// A step in a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

fn segments(p: &serde_ignored::Path) -> Vec<Seg> {
    fn walk(p: &serde_ignored::Path, out: &mut Vec<Seg>) {
        match p {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = Vec::new();
    walk(p, &mut out);
    out
}

fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Finds the line of a key path in the original text.
struct Locator<'a> {
    text: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml_edit::Document::parse(text).ok(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The line of the deepest part of `path` that exists in the document.
    fn line(&self, path: &[Seg]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for seg in path {
            node = match (node, seg) {
                (Node::Table(t), Seg::Key(k)) => {
                    let Some((key, item)) = t.get_key_value(k) else { break };
                    if let Some(span) = key.span() {
                        best = Some(span.start);
                    }
                    Node::of_item(item)
                }
                (Node::Tables(a), Seg::Index(i)) => {
                    let Some(t) = a.get(*i) else { break };
                    if let Some(span) = t.span() {
                        best = Some(span.start);
                    }
                    Node::Table(t)
                }
                (Node::Array(a), Seg::Index(i)) => {
                    let Some(v) = a.get(*i) else { break };
                    if let Some(span) = v.span() {
                        best = Some(span.start);
                    }
                    Node::of_value(v)
                }
                _ => break,
            };
        }
        best.map(|o| self.line_of(o))
    }
}

/// Where [`Locator::line`] stands while walking a key path.
enum Node<'d> {
    Table(&'d dyn toml_edit::TableLike),
    Tables(&'d toml_edit::ArrayOfTables),
    Array(&'d toml_edit::Array),
    Leaf,
}

impl<'d> Node<'d> {
    fn of_item(item: &'d toml_edit::Item) -> Node<'d> {
        match item {
            toml_edit::Item::Table(t) => Node::Table(t),
            toml_edit::Item::ArrayOfTables(a) => Node::Tables(a),
            toml_edit::Item::Value(v) => Node::of_value(v),
            toml_edit::Item::None => Node::Leaf,
        }
    }
    fn of_value(v: &'d toml_edit::Value) -> Node<'d> {
        match v {
            toml_edit::Value::InlineTable(t) => Node::Table(t),
            toml_edit::Value::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }
}

struct Validator<'a> {
    locator: &'a Locator<'a>,
    problems: Vec<ConfigProblem>,
    ctx: &'a dyn LoadContext,
}

fn key(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key((*p).to_string())).collect()
}

fn at(section: &str, index: usize, field: &str) -> Vec<Seg> {
    vec![Seg::Key(section.into()), Seg::Index(index), Seg::Key(field.into())]
}

impl Validator<'_> {
    fn problem(&mut self, path: &[Seg], message: String) {
        let line = self.locator.line(path);
        self.problems.push(ConfigProblem {
            line,
            key: render_path(path),
            message,
        });
    }

    fn duration(&mut self, path: &[Seg], value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(_) => {
                    self.problem(
                        path,
                        format!("{s:?} is not a duration; write it like \"30s\", \"5m\" or \"1h\""),
                    );
                    default
                }
            },
        }
    }

    fn mode(&mut self, path: &[Seg], value: Option<&str>, default: u32) -> u32 {
        match value {
            None => default,
            Some(s) => match parse_mode(s) {
                Ok(m) => m,
                Err(e) => {
                    self.problem(path, e);
                    default
                }
            },
        }
    }

    fn absolute(&mut self, path: &[Seg], value: &str) -> PathBuf {
        let p = PathBuf::from(value);
        if !p.is_absolute() {
            self.problem(path, format!("{value:?} must be an absolute path"));
        }
        p
    }

    /// A secret file: absolute, or relative to `$CREDENTIALS_DIRECTORY`; must exist and not be
    /// readable by other.
    fn secret(&mut self, path: &[Seg], value: &str) -> SecretFile {
        let p = PathBuf::from(value);
        let resolved = if p.is_absolute() {
            p
        } else {
            match self.ctx.credentials_directory() {
                Some(dir) => dir.join(p),
                None => {
                    self.problem(
                        path,
                        format!(
                            "{value:?} is relative, which needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=); use an absolute path or run under systemd"
                        ),
                    );
                    return SecretFile { path: p };
                }
            }
        };
        if let Err(e) = check_secret_permissions(&resolved) {
            self.problem(path, e);
        }
        SecretFile { path: resolved }
    }

    fn uid(&mut self, path: &[Seg], name: &str) -> Option<u32> {
        let uid = self.ctx.uid_of_user(name);
        if uid.is_none() {
            self.problem(
                path,
                format!("no user named {name:?} on this host; create it or use uids = [...]"),
            );
        }
        uid
    }

    fn gid(&mut self, path: &[Seg], name: &str) -> Option<u32> {
        let gid = self.ctx.gid_of_group(name);
        if gid.is_none() {
            self.problem(
                path,
                format!("no group named {name:?} on this host; create it or use gids = [...]"),
            );
        }
        gid
    }

    fn build(&mut self, raw: RawConfig, path: &Path) -> Config {
        let agent = self.agent(&raw.agent);
        let providers = self.providers(&raw.provider);
        let identities = self.identities(&raw.identity, &providers);
        let roles = self.roles(&raw.role, &identities);
        let sinks = self.sinks(&raw.sink, &identities);
        Config {
            path: path.to_path_buf(),
            agent,
            providers,
            identities,
            roles,
            sinks,
        }
    }

    fn agent(&mut self, a: &RawAgent) -> AgentSettings {
        let socket = match &a.socket {
            Some(s) => self.absolute(&key(&["agent", "socket"]), s),
            None => PathBuf::from(DEFAULT_SOCKET),
        };
        let socket_mode = self.mode(&key(&["agent", "socket_mode"]), a.socket_mode.as_deref(), 0o666);
        let socket_group = a
            .socket_group
            .as_ref()
            .and_then(|g| self.gid(&key(&["agent", "socket_group"]), g));
        let refresh_at = a.refresh_at.unwrap_or(0.8);
        if !(0.5..=0.95).contains(&refresh_at) {
            self.problem(
                &key(&["agent", "refresh_at"]),
                format!("{refresh_at} is out of range; use a fraction from 0.5 to 0.95"),
            );
        }
        let refresh_jitter = a.refresh_jitter.unwrap_or(0.05);
        if !(0.0..=0.2).contains(&refresh_jitter) {
            self.problem(
                &key(&["agent", "refresh_jitter"]),
                format!("{refresh_jitter} is out of range; use a fraction from 0 to 0.2"),
            );
        } else if (0.5..=0.95).contains(&refresh_at) && refresh_at + refresh_jitter >= 1.0 {
            self.problem(
                &key(&["agent", "refresh_jitter"]),
                format!(
                    "refresh_at + refresh_jitter = {} would renew after expiry; lower one of them",
                    refresh_at + refresh_jitter
                ),
            );
        }
        let min_remaining = self.duration(
            &key(&["agent", "min_remaining"]),
            a.min_remaining.as_deref(),
            Duration::from_secs(30),
        );
        let idle_expiry = self.duration(
            &key(&["agent", "idle_expiry"]),
            a.idle_expiry.as_deref(),
            Duration::from_secs(30 * 60),
        );
        let upstream_timeout = self.duration(
            &key(&["agent", "upstream_timeout"]),
            a.upstream_timeout.as_deref(),
            Duration::from_secs(10),
        );
        if upstream_timeout.is_zero() {
            self.problem(&key(&["agent", "upstream_timeout"]), "must be more than zero".into());
        }
        let audit_log = match a.audit_log.as_deref() {
            None if self.ctx.under_systemd() => AuditTarget::Journal,
            None => AuditTarget::Stderr,
            Some("journal") => AuditTarget::Journal,
            Some("stderr") => AuditTarget::Stderr,
            Some(p) => {
                let path = self.absolute(&key(&["agent", "audit_log"]), p);
                AuditTarget::File(path)
            }
        };
        let audit_failure = match a.audit_failure.as_deref() {
            None | Some("closed") => AuditFailure::Closed,
            Some("open") => AuditFailure::Open,
            Some(other) => {
                self.problem(
                    &key(&["agent", "audit_failure"]),
                    format!("{other:?} is not \"closed\" or \"open\""),
                );
                AuditFailure::Closed
            }
        };
        let log_format = match a.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problem(
                    &key(&["agent", "log_format"]),
                    format!("{other:?} is not \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        let metrics_listen = a.metrics_listen.as_deref().and_then(|s| match s.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    &key(&["agent", "metrics_listen"]),
                    format!("{s:?} is not an address like \"127.0.0.1:9464\""),
                );
                None
            }
        });
        AgentSettings {
            socket,
            socket_mode,
            socket_group,
            refresh_at,
            refresh_jitter,
            min_remaining,
            idle_expiry,
            upstream_timeout,
            audit_log,
            audit_failure,
            log_format,
            metrics_listen,
        }
    }

    fn url(&mut self, path: &[Seg], value: &str) -> String {
        match url::Url::parse(value) {
            Ok(u) => {
                let loopback = match u.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                match u.scheme() {
                    "https" => {}
                    "http" if loopback => {}
                    "http" => self.problem(
                        path,
                        format!("{value:?} uses http:// to a non-loopback host; tokens must travel over https://"),
                    ),
                    other => self.problem(path, format!("{value:?}: scheme {other:?} is not https")),
                }
                value.trim_end_matches('/').to_string()
            }
            Err(e) => {
                self.problem(path, format!("{value:?} is not a URL: {e}"));
                value.to_string()
            }
        }
    }

    fn providers(&mut self, raw: &[RawProvider]) -> Vec<Arc<ProviderSettings>> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            if seen.insert(p.name.clone(), i).is_some() {
                self.problem(
                    &at("provider", i, "name"),
                    format!("provider {:?} is defined twice", p.name),
                );
            }
            let issuer = self.url(&at("provider", i, "issuer"), &p.issuer);
            // The issuer is compared with `iss` exactly as written (minus a trailing slash).
            let issuer = if p.issuer.ends_with('/') && issuer != p.issuer {
                issuer
            } else {
                p.issuer.clone()
            };
            let token_endpoint = p
                .token_endpoint
                .as_ref()
                .map(|u| self.url(&at("provider", i, "token_endpoint"), u));
            let jwks_uri = p.jwks_uri.as_ref().map(|u| self.url(&at("provider", i, "jwks_uri"), u));
            let ca_file = p.ca_file.as_ref().map(|f| {
                let path = self.absolute(&at("provider", i, "ca_file"), f);
                if path.is_absolute() && !path.is_file() {
                    self.problem(&at("provider", i, "ca_file"), format!("{f:?} does not exist"));
                }
                path
            });
            let method = p.client_auth.as_deref().unwrap_or("client_secret_basic");
            let needs_secret = matches!(method, "client_secret_basic" | "client_secret_post");
            if !needs_secret && p.client_secret_file.is_some() {
                self.problem(
                    &at("provider", i, "client_secret_file"),
                    format!("client_auth = {method:?} does not use a client secret; remove it"),
                );
            }
            if method != "private_key_jwt" && (p.private_key_file.is_some() || p.key_id.is_some()) {
                self.problem(
                    &at("provider", i, "private_key_file"),
                    format!("client_auth = {method:?} does not use a private key; remove private_key_file/key_id"),
                );
            }
            let secret = |v: &mut Self, field: &str, value: &Option<String>| -> SecretFile {
                match value {
                    Some(f) => v.secret(&at("provider", i, field), f),
                    None => {
                        v.problem(
                            &at("provider", i, "client_auth"),
                            format!("client_auth = {method:?} needs {field}"),
                        );
                        SecretFile { path: PathBuf::new() }
                    }
                }
            };
            let client_auth = match method {
                "client_secret_basic" => {
                    ClientAuth::SecretBasic(secret(self, "client_secret_file", &p.client_secret_file))
                }
                "client_secret_post" => {
                    ClientAuth::SecretPost(secret(self, "client_secret_file", &p.client_secret_file))
                }
                "private_key_jwt" => {
                    let key = secret(self, "private_key_file", &p.private_key_file);
                    ClientAuth::PrivateKeyJwt {
                        key,
                        key_id: p.key_id.clone(),
                    }
                }
                "none" => ClientAuth::None,
                other => {
                    self.problem(
                        &at("provider", i, "client_auth"),
                        format!(
                            "{other:?} is not one of client_secret_basic, client_secret_post, private_key_jwt, none"
                        ),
                    );
                    ClientAuth::None
                }
            };
            let target_parameter = match p.target_parameter.as_deref() {
                None => None,
                Some("audience") => Some(TargetParameter::Audience),
                Some("resource") => Some(TargetParameter::Resource),
                Some("both") => Some(TargetParameter::Both),
                Some(other) => {
                    self.problem(
                        &at("provider", i, "target_parameter"),
                        format!("{other:?} is not \"audience\", \"resource\" or \"both\""),
                    );
                    None
                }
            };
            if p.client_id.is_empty() {
                self.problem(&at("provider", i, "client_id"), "must not be empty".into());
            }
            out.push(Arc::new(ProviderSettings {
                name: p.name.clone(),
                issuer,
                token_endpoint,
                jwks_uri,
                ca_file,
                client_id: p.client_id.clone(),
                client_auth,
                verify_tokens: p.verify_tokens.unwrap_or(true),
                target_parameter,
            }));
        }
        out
    }

    fn identities(&mut self, raw: &[RawIdentity], providers: &[Arc<ProviderSettings>]) -> Vec<Arc<IdentitySettings>> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (i, id) in raw.iter().enumerate() {
            if seen.insert(id.name.clone(), i).is_some() {
                self.problem(
                    &at("identity", i, "name"),
                    format!("identity {:?} is defined twice", id.name),
                );
            }
            if !providers.iter().any(|p| p.name == id.provider) {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                self.problem(
                    &at("identity", i, "provider"),
                    format!(
                        "no [[provider]] named {:?}; defined: {}",
                        id.provider,
                        list_or_none(&known)
                    ),
                );
            }
            let grant = match id.grant.as_deref() {
                None | Some("token_exchange") => Grant::TokenExchange,
                Some("client_credentials") => Grant::ClientCredentials,
                Some(other) => {
                    self.problem(
                        &at("identity", i, "grant"),
                        format!("{other:?} is not \"token_exchange\" or \"client_credentials\""),
                    );
                    Grant::TokenExchange
                }
            };
            let subject = match (grant, &id.subject_token_file, id.subject.as_deref()) {
                (Grant::ClientCredentials, None, None) => SubjectSource::Client,
                (Grant::ClientCredentials, _, _) => {
                    self.problem(
                        &at(
                            "identity",
                            i,
                            if id.subject.is_some() {
                                "subject"
                            } else {
                                "subject_token_file"
                            },
                        ),
                        "client_credentials has no subject credential; remove it or use grant = \"token_exchange\""
                            .into(),
                    );
                    SubjectSource::Client
                }
                (Grant::TokenExchange, Some(f), None) => {
                    SubjectSource::File(self.secret(&at("identity", i, "subject_token_file"), f))
                }
                (Grant::TokenExchange, None, Some("caller")) => SubjectSource::Caller,
                (Grant::TokenExchange, None, Some(other)) => {
                    self.problem(&at("identity", i, "subject"), format!("{other:?} is not \"caller\""));
                    SubjectSource::Caller
                }
                (Grant::TokenExchange, Some(_), Some(_)) => {
                    self.problem(
                        &at("identity", i, "subject"),
                        "give subject_token_file or subject = \"caller\", not both".into(),
                    );
                    SubjectSource::Caller
                }
                (Grant::TokenExchange, None, None) => {
                    self.problem(
                        &at("identity", i, "name"),
                        "token_exchange needs a subject credential: subject_token_file = \"...\" or subject = \"caller\"".into(),
                    );
                    SubjectSource::Caller
                }
            };
            let mut trusted_issuers = Vec::new();
            for (j, t) in id.trusted_issuers.iter().enumerate() {
                let base = vec![
                    Seg::Key("identity".into()),
                    Seg::Index(i),
                    Seg::Key("trusted_issuers".into()),
                    Seg::Index(j),
                ];
                let issuer = t.issuer.clone();
                let jwks_uri = self.url(&base, &t.jwks_uri);
                let ca_file = t.ca_file.as_ref().map(|f| self.absolute(&base, f));
                trusted_issuers.push(TrustedIssuer {
                    issuer,
                    jwks_uri,
                    audience: t.audience.clone(),
                    ca_file,
                });
            }
            if subject == SubjectSource::Caller && trusted_issuers.is_empty() && id.subject.is_some() {
                self.problem(
                    &at("identity", i, "subject"),
                    "subject = \"caller\" needs trusted_issuers = [{ issuer, jwks_uri, audience }] to verify what callers present".into(),
                );
            }
            if subject != SubjectSource::Caller && !trusted_issuers.is_empty() {
                self.problem(
                    &at("identity", i, "trusted_issuers"),
                    "only used with subject = \"caller\"; remove it".into(),
                );
            }
            let actor_token_file = id.actor_token_file.as_ref().map(|f| {
                if grant == Grant::ClientCredentials {
                    self.problem(
                        &at("identity", i, "actor_token_file"),
                        "client_credentials cannot delegate; use grant = \"token_exchange\"".into(),
                    );
                }
                self.secret(&at("identity", i, "actor_token_file"), f)
            });
            if id.audiences.is_empty() {
                self.problem(
                    &at("identity", i, "name"),
                    "audiences = [...] must list at least one audience".into(),
                );
            }
            out.push(Arc::new(IdentitySettings {
                name: id.name.clone(),
                provider: id.provider.clone(),
                grant,
                subject,
                subject_token_type: id.subject_token_type.clone().unwrap_or_else(|| TOKEN_TYPE_JWT.into()),
                trusted_issuers,
                actor_token_file,
                actor_token_type: id.actor_token_type.clone().unwrap_or_else(|| TOKEN_TYPE_JWT.into()),
                requested_token_type: id
                    .requested_token_type
                    .clone()
                    .unwrap_or_else(|| TOKEN_TYPE_ACCESS_TOKEN.into()),
                audiences: id.audiences.clone(),
                scopes: id.scopes.clone(),
            }));
        }
        out
    }

    fn roles(&mut self, raw: &[RawRole], identities: &[Arc<IdentitySettings>]) -> Vec<Arc<Role>> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let mut uids: Option<BTreeSet<u32>> = r.uids.as_ref().map(|u| u.iter().copied().collect());
            if let Some(users) = &r.users {
                let set = uids.get_or_insert_with(BTreeSet::new);
                for (j, name) in users.iter().enumerate() {
                    let path = vec![
                        Seg::Key("role".into()),
                        Seg::Index(i),
                        Seg::Key("users".into()),
                        Seg::Index(j),
                    ];
                    if let Some(uid) = self.uid(&path, name) {
                        set.insert(uid);
                    }
                }
            }
            let mut gids: Option<BTreeSet<u32>> = r.gids.as_ref().map(|g| g.iter().copied().collect());
            if let Some(groups) = &r.groups {
                let set = gids.get_or_insert_with(BTreeSet::new);
                for (j, name) in groups.iter().enumerate() {
                    let path = vec![
                        Seg::Key("role".into()),
                        Seg::Index(i),
                        Seg::Key("groups".into()),
                        Seg::Index(j),
                    ];
                    if let Some(gid) = self.gid(&path, name) {
                        set.insert(gid);
                    }
                }
            }
            let executables = r.executables.as_ref().map(|list| {
                list.iter()
                    .map(|e| self.absolute(&at("role", i, "executables"), e))
                    .collect::<Vec<_>>()
            });
            let claims = r.claims.as_ref().map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let values = match v {
                            RawClaimValues::One(s) => vec![s.clone()],
                            RawClaimValues::Many(list) => list.clone(),
                        };
                        (k.clone(), values)
                    })
                    .collect::<BTreeMap<_, _>>()
            });
            let conditions = [
                r.users.as_ref().map(Vec::len),
                r.uids.as_ref().map(Vec::len),
                r.groups.as_ref().map(Vec::len),
                r.gids.as_ref().map(Vec::len),
                r.units.as_ref().map(Vec::len),
                r.executables.as_ref().map(Vec::len),
                r.claims.as_ref().map(BTreeMap::len),
            ];
            if conditions.iter().all(|c| c.is_none()) {
                self.problem(
                    &at("role", i, "name"),
                    "a role must say who it is for (users, uids, groups, gids, units, executables or claims); a role for everyone is never the default".into(),
                );
            }
            for (field, n) in ["users", "uids", "groups", "gids", "units", "executables", "claims"]
                .iter()
                .zip(conditions)
            {
                if n == Some(0) {
                    self.problem(
                        &at("role", i, field),
                        "an empty list matches nobody; remove the key or name who it is for".into(),
                    );
                }
            }
            if r.identities.is_empty() {
                self.problem(
                    &at("role", i, "name"),
                    "identities = [...] must name at least one identity".into(),
                );
            }
            let mut role_ids = Vec::new();
            for (j, name) in r.identities.iter().enumerate() {
                match identities.iter().find(|id| &id.name == name) {
                    Some(id) => role_ids.push(id.clone()),
                    None => {
                        let known: Vec<&str> = identities.iter().map(|i| i.name.as_str()).collect();
                        self.problem(
                            &[
                                Seg::Key("role".into()),
                                Seg::Index(i),
                                Seg::Key("identities".into()),
                                Seg::Index(j),
                            ],
                            format!("no [[identity]] named {name:?}; defined: {}", list_or_none(&known)),
                        );
                    }
                }
            }
            if let Some(auds) = &r.audiences {
                for (j, aud) in auds.iter().enumerate() {
                    if !role_ids.is_empty() && !role_ids.iter().any(|id| id.audiences.contains(aud)) {
                        self.problem(
                            &[Seg::Key("role".into()), Seg::Index(i), Seg::Key("audiences".into()), Seg::Index(j)],
                            format!("audience {aud:?} is not allowed by any identity of this role; add it to the identity's audiences or remove it here"),
                        );
                    }
                }
            }
            if let Some(scopes) = &r.scopes {
                for (j, scope) in scopes.iter().enumerate() {
                    if !role_ids.is_empty() && !role_ids.iter().any(|id| id.scopes.contains(scope)) {
                        self.problem(
                            &[Seg::Key("role".into()), Seg::Index(i), Seg::Key("scopes".into()), Seg::Index(j)],
                            format!("scope {scope:?} is beyond the ceiling of every identity of this role; add it to the identity's scopes or remove it here"),
                        );
                    }
                }
            }
            let rate = match &r.rate {
                Some(s) => match Rate::parse(s) {
                    Ok(rate) => Some(rate),
                    Err(e) => {
                        self.problem(&at("role", i, "rate"), e);
                        None
                    }
                },
                None if r.agent => Some(Rate {
                    count: 10,
                    per: Duration::from_secs(1),
                }),
                None => None,
            };
            out.push(Arc::new(Role {
                name: r.name.clone(),
                uids,
                gids,
                units: r.units.clone(),
                executables,
                claims,
                identities: r.identities.clone(),
                audiences: r.audiences.clone(),
                scopes: r.scopes.clone(),
                agent: r.agent,
                rate,
            }));
        }
        out
    }

    fn sinks(&mut self, raw: &[RawSink], identities: &[Arc<IdentitySettings>]) -> Vec<SinkSettings> {
        let mut out = Vec::new();
        let mut paths = BTreeSet::new();
        for (i, s) in raw.iter().enumerate() {
            let identity = identities.iter().find(|id| id.name == s.identity);
            let audience = match (identity, &s.audience) {
                (Some(id), Some(aud)) => {
                    if !id.audiences.contains(aud) {
                        self.problem(
                            &at("sink", i, "audience"),
                            format!(
                                "identity {:?} does not allow audience {aud:?}; allowed: {}",
                                id.name,
                                id.audiences.join(", ")
                            ),
                        );
                    }
                    aud.clone()
                }
                (Some(id), None) => id.audiences.first().cloned().unwrap_or_default(),
                (None, aud) => {
                    self.problem(
                        &at("sink", i, "identity"),
                        format!("no [[identity]] named {:?}", s.identity),
                    );
                    aud.clone().unwrap_or_default()
                }
            };
            if let Some(id) = identity {
                if id.subject == SubjectSource::Caller {
                    self.problem(
                        &at("sink", i, "identity"),
                        "a sink cannot use a subject = \"caller\" identity: no caller presents a credential".into(),
                    );
                }
                for scope in &s.scopes {
                    if !id.scopes.contains(scope) {
                        self.problem(
                            &at("sink", i, "scopes"),
                            format!("scope {scope:?} is beyond identity {:?}'s ceiling", id.name),
                        );
                    }
                }
            }
            let path = self.absolute(&at("sink", i, "path"), &s.path);
            if path.is_absolute() {
                match path.parent() {
                    Some(dir) if dir.is_dir() => {}
                    _ => self.problem(
                        &at("sink", i, "path"),
                        format!(
                            "the directory of {} does not exist; create it (systemd: RuntimeDirectory= or tmpfiles.d)",
                            path.display()
                        ),
                    ),
                }
                if !paths.insert(path.clone()) {
                    self.problem(&at("sink", i, "path"), "two sinks write the same file".into());
                }
            }
            let mode = self.mode(&at("sink", i, "mode"), s.mode.as_deref(), 0o600);
            if mode & 0o004 != 0 {
                self.problem(
                    &at("sink", i, "mode"),
                    format!(
                        "{:04o} makes the token readable by every user; drop the \"other\" bits",
                        mode
                    ),
                );
            }
            let owner = s.owner.as_ref().and_then(|o| self.uid(&at("sink", i, "owner"), o));
            let group = s.group.as_ref().and_then(|g| self.gid(&at("sink", i, "group"), g));
            out.push(SinkSettings {
                identity: s.identity.clone(),
                audience,
                scopes: s.scopes.clone(),
                path,
                mode,
                owner,
                group,
            });
        }
        out
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Parses an octal mode string such as `"0640"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(format!("{s:?} is not an octal file mode like \"0640\""));
    }
    u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal file mode like \"0640\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) struct TestContext {
        pub creds: Option<PathBuf>,
    }

    impl LoadContext for TestContext {
        fn credentials_directory(&self) -> Option<PathBuf> {
            self.creds.clone()
        }
        fn under_systemd(&self) -> bool {
            false
        }
        fn uid_of_user(&self, name: &str) -> Option<u32> {
            match name {
                "root" => Some(0),
                "payments" => Some(1001),
                _ => None,
            }
        }
        fn gid_of_group(&self, name: &str) -> Option<u32> {
            match name {
                "root" => Some(0),
                "payments" => Some(1001),
                _ => None,
            }
        }
    }

    fn secret_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn good(dir: &Path) -> String {
        let secret = secret_file(dir, "secret", 0o600);
        let sa = secret_file(dir, "sa.jwt", 0o640);
        format!(
            r#"
[agent]
socket = "{dir}/agent.sock"
refresh_at = 0.8

[[provider]]
name = "corp"
issuer = "https://idp.example.com/realms/prod"
client_id = "node-17"
client_secret_file = "{secret}"

[[identity]]
name = "payments"
provider = "corp"
subject_token_file = "{sa}"
audiences = ["https://payments.internal", "https://ledger.internal"]
scopes = ["payments.read", "payments.write"]

[[identity]]
name = "batch"
provider = "corp"
grant = "client_credentials"
audiences = ["https://batch.internal"]

[[role]]
name = "payments-service"
users = ["payments"]
uids = [0]
identities = ["payments"]
audiences = ["https://payments.internal"]
scopes = ["payments.read"]
"#,
            dir = dir.display(),
            secret = secret.display(),
            sa = sa.display()
        )
    }

    #[test]
    fn a_good_config_loads_with_defaults_filled_in() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        assert_eq!(cfg.agent.min_remaining, Duration::from_secs(30));
        assert_eq!(cfg.agent.socket_mode, 0o666);
        assert_eq!(cfg.agent.audit_log, AuditTarget::Stderr);
        assert_eq!(cfg.identities.len(), 2);
        assert_eq!(cfg.identities[1].subject, SubjectSource::Client);
        let role = &cfg.roles[0];
        assert_eq!(
            role.uids.as_ref().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![0, 1001]
        );
        assert!(matches!(cfg.providers[0].client_auth, ClientAuth::SecretBasic(_)));
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path())
            .replace("refresh_at = 0.8", "refresh_at = 0.99\nsocket_mod = \"0666\"")
            .replace("identities = [\"payments\"]", "identities = [\"payments\", \"nope\"]")
            .replace("provider = \"corp\"\ngrant", "provider = \"elsewhere\"\ngrant");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        let lines: Vec<String> = err.problems.iter().map(|p| p.to_string()).collect();
        let find = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
                .unwrap_or_else(|| panic!("no {needle} in {lines:#?}"))
        };
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(find("agent.refresh_at").starts_with(&format!("line {}:", line_of("refresh_at = 0.99"))));
        assert!(find("agent.socket_mod").starts_with(&format!("line {}:", line_of("socket_mod"))));
        assert!(find("unknown key").contains("socket_mod"));
        assert!(find("identity[1].provider").contains("elsewhere"));
        assert!(find("role[0].identities[1]").contains("nope"));
        assert_eq!(err.problems.len(), 4, "{lines:#?}");
    }

    #[test]
    fn a_secret_readable_by_other_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path());
        std::fs::set_permissions(dir.path().join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert!(err.problems[0].message.contains("readable by other"), "{err}");
        assert_eq!(err.problems[0].key, "provider[0].client_secret_file");
    }

    #[test]
    fn relative_secrets_resolve_against_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace(&format!("{}/secret", dir.path().display()), "secret");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert!(err.problems[0].message.contains("CREDENTIALS_DIRECTORY"));
        let cfg = parse(
            &text,
            Path::new("t.toml"),
            &TestContext {
                creds: Some(dir.path().into()),
            },
        )
        .unwrap();
        match &cfg.providers[0].client_auth {
            ClientAuth::SecretBasic(f) => assert_eq!(f.path, dir.path().join("secret")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_role_for_everyone_and_narrowing_beyond_the_identity_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path())
            .replace("users = [\"payments\"]\nuids = [0]\n", "")
            .replace("scopes = [\"payments.read\"]\n", "scopes = [\"payments.admin\"]\n");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        let all = err.to_string();
        assert!(all.contains("must say who it is for"), "{all}");
        assert!(all.contains("payments.admin"), "{all}");
    }

    #[test]
    fn http_issuers_are_refused_unless_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace("https://idp.example.com", "http://idp.example.com");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert!(err.to_string().contains("http:// to a non-loopback host"));
        let text = good(dir.path()).replace("https://idp.example.com", "http://127.0.0.1:8080");
        parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse(
            "[agent]\nsocket = \n",
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap_err();
        assert_eq!(err.problems[0].line, Some(2), "{err}");
        let err = parse(
            "[agent]\nrefresh_at = \"high\"\n",
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap_err();
        assert_eq!(err.problems[0].line, Some(2), "{err}");
    }

    #[test]
    fn modes_and_rates_parse() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert_eq!(
            Rate::parse("10/s").unwrap(),
            Rate {
                count: 10,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(Rate::parse("100/m").unwrap().per, Duration::from_secs(60));
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("fast").is_err());
    }
}
