//! The validated configuration: what the rest of the agent trusts.
//!
//! Everything here has been checked and resolved by the validation modules (paths are absolute,
//! users and groups are numbers, defaults are filled in, every name refers to something defined),
//! so code that holds a [`Config`] does not check it again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::secrets::SecretFile;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// `[agent]`: the socket, renewal, audit and logging.
    pub agent: AgentSettings,
    /// The `[[provider]]`s, in file order; names are unique.
    pub providers: Vec<Arc<ProviderSettings>>,
    /// The `[[identity]]`s, in file order; names are unique and each names a provider above.
    pub identities: Vec<Arc<IdentitySettings>>,
    /// The `[[role]]`s, in file order (a request is served under the first that allows all of it).
    pub roles: Vec<Arc<Role>>,
    /// The `[[sink]]`s; no two write the same file.
    pub sinks: Vec<SinkSettings>,
    /// The `[[login]]`s people sign in at, in file order; names are unique and each names a
    /// provider above.
    pub logins: Vec<Arc<LoginSettings>>,
    /// `[kubernetes]`: the kubelet that says which pod a caller runs in; none off Kubernetes.
    pub kubernetes: Option<super::kubernetes::KubernetesSettings>,
}

impl Config {
    /// The identity with this name.
    pub fn identity(&self, name: &str) -> Option<&Arc<IdentitySettings>> {
        self.identities.iter().find(|i| i.name == name)
    }
    /// The provider with this name.
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderSettings>> {
        self.providers.iter().find(|p| p.name == name)
    }
    /// The login with this name.
    pub fn login(&self, name: &str) -> Option<&Arc<LoginSettings>> {
        self.logins.iter().find(|l| l.name == name)
    }
}

/// `[agent]`: how the agent serves, renews, audits and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// The Unix socket callers connect to (absolute; default `/run/cortexid/agent.sock`).
    pub socket: PathBuf,
    /// The socket's permission bits (default `0666`: every request is still checked against the
    /// roles).
    pub socket_mode: u32,
    /// The group the socket is given to, if any.
    pub socket_group: Option<u32>,
    /// The fraction of a token's lifetime after which it is renewed (0.5 to 0.95; default 0.8).
    pub refresh_at: f64,
    /// Plus or minus this fraction of the lifetime, drawn per renewal, to spread renewals across
    /// a fleet (0 to 0.2; default 0.05; `refresh_at + refresh_jitter` stays below 1).
    pub refresh_jitter: f64,
    /// A token with less than this left is never handed out, capped at a quarter of its lifetime
    /// (default 30 s).
    pub min_remaining: Duration,
    /// A cached token nobody asked for in this long is no longer renewed (default 30 min).
    pub idle_expiry: Duration,
    /// The time limit of each request to a provider (more than zero; default 10 s).
    pub upstream_timeout: Duration,
    /// Where audit events go (default: the journal under systemd, else stderr).
    pub audit_log: AuditTarget,
    /// What happens to a token whose audit event cannot be written (default closed).
    pub audit_failure: AuditFailure,
    /// How the agent's own log lines are written (default text).
    pub log_format: LogFormat,
    /// The TCP address that serves `GET /metrics`; none means no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Who sees details (cache keys, sinks, provider errors, the reasons of denials); others see
    /// status and counts (default: root).
    pub operators: Operators,
    /// Where state that survives a restart is kept, encrypted (absolute; none: nothing is kept).
    pub state_dir: Option<PathBuf>,
    /// The key that encrypts `state_dir` (none: one generated at first start in `state_dir`).
    pub state_key_file: Option<SecretFile>,
    /// Keep the token cache in `state_dir`, so a restart needs no new exchanges (default false).
    pub persist_tokens: bool,
}

/// Users and groups that see the agent's details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operators {
    /// By uid.
    pub uids: std::collections::BTreeSet<u32>,
    /// By group (primary or supplementary).
    pub gids: std::collections::BTreeSet<u32>,
}

impl Operators {
    /// Whether a caller of `uid`, in the groups `in_group` says, is an operator.
    pub fn include(&self, uid: u32, in_group: impl Fn(u32) -> bool) -> bool {
        self.uids.contains(&uid) || self.gids.iter().any(|g| in_group(*g))
    }
}

impl Default for Operators {
    fn default() -> Self {
        Operators {
            uids: [0].into(),
            gids: Default::default(),
        }
    }
}

/// Where audit events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Appended to this file (absolute path), one JSON object a line.
    File(PathBuf),
    /// Sent to the systemd journal.
    Journal,
    /// Written to standard error.
    Stderr,
}

/// What happens to a token whose audit event cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFailure {
    /// A token whose `token.issued` event cannot be written is not handed out.
    Closed,
    /// The token is handed out anyway; the failure is logged.
    Open,
}

/// How the agent writes its own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// How the agent authenticates to a provider's token endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    /// The client secret in this file, sent in an HTTP Basic `Authorization` header.
    SecretBasic(SecretFile),
    /// The client secret in this file, sent as `client_secret` in the form body.
    SecretPost(SecretFile),
    /// A JWT client assertion signed with the private key (PEM) in `key`, with `key_id` as its
    /// `kid` header when given.
    PrivateKeyJwt { key: SecretFile, key_id: Option<String> },
    /// Only `client_id` is sent (a public client).
    None,
}

impl ClientAuth {
    /// The method's name as the configuration and provider metadata spell it.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
            ClientAuth::None => "none",
        }
    }
}

/// Which form parameter carries the requested audience in a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetParameter {
    /// `audience`.
    Audience,
    /// `resource` (RFC 8707).
    Resource,
    /// Both, with the same value.
    Both,
}

/// One `[[provider]]`: an OpenID Connect provider the agent requests tokens from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    /// The name identities refer to it by.
    pub name: String,
    /// The issuer URL, compared with the `iss` of issued tokens exactly as written (minus a
    /// trailing slash); discovery is at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The token endpoint, when set instead of taken from discovery.
    pub token_endpoint: Option<String>,
    /// The JWKS URL that verifies issued tokens, when set instead of taken from discovery.
    pub jwks_uri: Option<String>,
    /// A PEM file of CA certificates trusted for this provider, in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// The agent's client id at the provider (not empty).
    pub client_id: String,
    /// How the agent authenticates as that client.
    pub client_auth: ClientAuth,
    /// Whether issued JWTs are verified (signature by the provider's JWKS, issuer, audience)
    /// before they are handed out (default true; false for providers that issue opaque tokens).
    pub verify_tokens: bool,
    /// Which parameter carries the audience; none means `audience` for token exchange and
    /// `resource` for client credentials.
    pub target_parameter: Option<TargetParameter>,
    /// Requests in flight to this provider at most, for the agent as a whole (none: no limit).
    pub max_concurrent: Option<u32>,
    /// Exchanges per second to this provider at most, a token bucket of `rate.count` (none: no
    /// limit). Misses go before renewals.
    pub rate: Option<Rate>,
}

impl ProviderSettings {
    /// Whether `other` needs the same client (everything but the limits, which change in place).
    pub fn same_client(&self, other: &ProviderSettings) -> bool {
        ProviderSettings {
            max_concurrent: other.max_concurrent,
            rate: other.rate,
            ..self.clone()
        } == *other
    }
}

/// The OAuth grant an identity's tokens are obtained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// RFC 8693 token exchange: a subject credential is exchanged for the token.
    TokenExchange,
    /// Client credentials: the agent's client is the subject.
    ClientCredentials,
}

impl Grant {
    /// The grant's name as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::TokenExchange => "token_exchange",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

/// Where the subject credential of a token exchange comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectSource {
    /// Read from a file at each exchange.
    File(SecretFile),
    /// Presented by the caller in the token request body (`subject_token`), and verified against
    /// the identity's trusted issuers before it is exchanged.
    Caller,
    /// Client credentials: the client is the subject.
    Client,
    /// `subject = "login:NAME"`: the calling person's own session at the `[[login]]` NAME (its
    /// access token, or its ID token when `subject_token_type` is the ID token type).
    Login(String),
}

/// An issuer whose credentials callers may present as the subject of a `subject = "caller"`
/// identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// The `iss` a presented credential must carry, exactly.
    pub issuer: String,
    /// Where the issuer's signing keys are fetched.
    pub jwks_uri: String,
    /// The audience a presented credential must be for (its `aud` is or contains it).
    pub audience: String,
    /// A PEM file of CA certificates trusted for `jwks_uri`, in addition to the system's.
    pub ca_file: Option<PathBuf>,
}

/// One `[[identity]]`: something the agent can obtain tokens as.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySettings {
    /// The name roles, sinks and callers refer to it by (unique).
    pub name: String,
    /// The name of the provider that issues its tokens (one that is configured).
    pub provider: String,
    /// The grant its tokens are obtained with (default token exchange).
    pub grant: Grant,
    /// Where its subject credential comes from.
    pub subject: SubjectSource,
    /// The RFC 8693 type of the subject credential (default the JWT token type).
    pub subject_token_type: String,
    /// The issuers a caller-presented subject may come from; empty unless `subject` is `Caller`.
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// The node's own actor credential, sent as `actor_token` (delegation) when a request brings
    /// none; token exchange only.
    pub actor_token_file: Option<SecretFile>,
    /// The RFC 8693 type of the actor credential (default the JWT token type).
    pub actor_token_type: String,
    /// `actor_identity`: another identity (one that needs no caller credential) whose token is
    /// sent as `actor_token` when a request brings none; token exchange only.
    pub actor_identity: Option<String>,
    /// The token type asked for (default the access token type).
    pub requested_token_type: String,
    /// Allowed audiences; the first is the default (used by `doctor` and sinks without one).
    pub audiences: Vec<String>,
    /// The scope ceiling.
    pub scopes: Vec<String>,
}

/// A request rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// How many requests (at least one); also the burst a caller may make at once.
    pub count: u32,
    /// In how long (more than zero).
    pub per: Duration,
}

/// Why a `rate` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not `<count>/<unit>` with a whole count and a unit of `s`, `m`, `h` or a non-zero duration.
    #[error("rate {0:?} is not like \"10/s\", \"100/m\" or \"5/1s\"")]
    Malformed(String),
    /// A count of zero, which would refuse every request.
    #[error("rate {0:?} allows nothing; remove the role or raise the count")]
    AllowsNothing(String),
}

impl Rate {
    /// Parses `"10/s"`, `"100/m"`, `"5/h"` or `"5/30s"` (a count per unit or per duration).
    pub fn parse(s: &str) -> Result<Rate, RateError> {
        let bad = || RateError::Malformed(s.to_string());
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(RateError::AllowsNothing(s.to_string()));
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
///
/// A condition that is `None` is not checked; at least one is given, and none is an empty list.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    /// The role's name, as messages and audit events show it.
    pub name: String,
    /// The caller's uid is one of these (`uids` and the uids of `users`, together).
    pub uids: Option<BTreeSet<u32>>,
    /// The caller is in one of these groups, primary or supplementary (`gids` and the gids of
    /// `groups`, together).
    pub gids: Option<BTreeSet<u32>>,
    /// The caller's system unit is one of these (for a process of a user's own systemd, that is
    /// `user@UID.service`).
    pub units: Option<Vec<String>>,
    /// The caller runs in one of these units of its user's own systemd (`systemctl --user`);
    /// only with `uids`, as a user names its own units.
    pub user_units: Option<Vec<String>>,
    /// The caller runs one of the files at these paths (absolute): its executable is the file
    /// (device and inode) a path leads to in the agent's mount namespace when the caller is
    /// matched, whatever the caller's own namespace calls its executable.
    pub executables: Option<Vec<PathBuf>>,
    /// `executables` also match callers in another mount or user namespace than the agent's
    /// (still by file); without it, such callers never match `executables`.
    pub executables_any_namespace: bool,
    /// The caller's executable, read through `/proc/<pid>/exe`, has one of these SHA-256 digests.
    pub executable_sha256: Option<Vec<[u8; 32]>>,
    /// The caller presented a credential whose claims match: each key is a claim (dots reach
    /// into nested objects), which must equal one of the values or be a list holding one.
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// The caller holds a live session at this `[[login]]` (bound to its uid); `claims` are then
    /// matched against the session's current ID-token claims.
    pub login: Option<String>,
    /// The caller's pod: namespaces, service accounts, labels, containers (`[kubernetes]`).
    pub pod: super::kubernetes::PodConditions,
    /// The identities it grants (at least one; each is configured).
    pub identities: Vec<String>,
    /// Narrows the identities' audiences to these; none means all of them.
    pub audiences: Option<Vec<String>>,
    /// Narrows the identities' scope ceilings to these; none means the whole ceiling, or no
    /// scopes at all for an agent role.
    pub scopes: Option<Vec<String>>,
    /// An automation or AI agent: its tokens are delegated (a request needs an actor credential,
    /// presented or the identity's `actor_token_file`), it gets only the scopes it lists, and it
    /// is rate limited.
    pub agent: bool,
    /// Each calling process's request rate under this role (default 10/s for agent roles,
    /// unlimited otherwise).
    pub rate: Option<Rate>,
}

/// One `[[sink]]`: a token file the agent keeps renewed on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// The identity whose token is written (one that does not need a caller's credential).
    pub identity: String,
    /// The token's audience (default the identity's first).
    pub audience: String,
    /// The scopes asked for (within the identity's ceiling).
    pub scopes: Vec<String>,
    /// The file, replaced atomically at each renewal (absolute; its directory exists).
    pub path: PathBuf,
    /// The file's permission bits (default `0600`; never readable by "other").
    pub mode: u32,
    /// The uid the file is given to, if any.
    pub owner: Option<u32>,
    /// The gid the file is given to, if any.
    pub group: Option<u32>,
}

/// How a person signs in at a `[[login]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFlow {
    /// The browser flow when the person has a local display, else the device flow.
    Auto,
    /// The device authorization grant (RFC 8628): a URL and a code to enter on any device.
    Device,
    /// Authorization code with PKCE S256 and a loopback redirect to the CLI (RFC 8252).
    Browser,
}

impl LoginFlow {
    /// The flow's name as the configuration and the socket API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFlow::Auto => "auto",
            LoginFlow::Device => "device",
            LoginFlow::Browser => "browser",
        }
    }
}

/// The shortest `max_session` accepted.
pub const MIN_SESSION: Duration = Duration::from_secs(60);
/// The longest `max_session` accepted (30 days).
pub const MAX_SESSION: Duration = Duration::from_secs(30 * 24 * 3600);
/// `max_session` when none is given.
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(12 * 3600);

/// One `[[login]]`: a client at a provider where people on this host sign in.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginSettings {
    /// The name `cortexid login NAME`, `subject = "login:NAME"` and role `login` refer to it by.
    pub name: String,
    /// The `[[provider]]` people sign in at (one that is configured).
    pub provider: String,
    /// The login client registered at the provider (usually a public, native client).
    pub client_id: String,
    /// How the agent authenticates as that client (default none: a public client with PKCE).
    pub client_auth: ClientAuth,
    /// The scopes asked for at sign-in and refresh (default `openid offline_access`).
    pub scopes: Vec<String>,
    /// The flow `cortexid login` uses unless told (default auto).
    pub flow: LoginFlow,
    /// A session ends at this age, whatever the provider allows (1 minute to 30 days; default
    /// 12 hours).
    pub max_session: Duration,
    /// Who may sign in, by uid (`users`); none and no `gids` means any user but root.
    pub uids: Option<BTreeSet<u32>>,
    /// Who may sign in, by group (`groups`, primary or supplementary).
    pub gids: Option<BTreeSet<u32>>,
    /// Sessions are kept, encrypted, in `[agent] state_dir` across restarts.
    pub persist: bool,
}

impl LoginSettings {
    /// Whether the user `uid`, in the groups `in_group` says yes to, may sign in here.
    pub fn may_sign_in(&self, uid: u32, in_group: impl Fn(u32) -> bool) -> bool {
        match (&self.uids, &self.gids) {
            (None, None) => uid != 0,
            (uids, gids) => {
                uids.as_ref().is_some_and(|u| u.contains(&uid))
                    || gids.as_ref().is_some_and(|g| g.iter().any(|g| in_group(*g)))
            }
        }
    }
}
