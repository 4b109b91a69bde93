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
