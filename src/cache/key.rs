//! What the cache stores tokens by, and how it gets them: the cache key (identity, audience,
//! sorted scopes, credential fingerprints), the [`Spec`] of one exchange, and the [`Exchanger`]
//! the agent provides.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::IdentitySettings;
use crate::error::ProviderError;
use crate::token::IssuedToken;
use crate::upstream::PresentedToken;

/// (identity, audience, sorted scope set, subject and actor credential fingerprints).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    pub identity: String,
    pub audience: String,
    pub scopes: String,
    pub subject: Option<String>,
    pub actor: Option<String>,
}

/// Where a credential for an exchange comes from.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The client itself is the subject (client credentials).
    None,
    /// Read from a file; `value` is what it held when the key was made.
    File {
        file: crate::secrets::SecretFile,
        value: PresentedToken,
    },
    /// Presented by the caller in the request body.
    Presented(PresentedToken),
    /// A person's session (`subject = "login:NAME"`): named by the session's id, its current
    /// token fetched at each exchange, so keys derived from a session end with it.
    Session {
        /// The session's id (random; never a token).
        id: String,
        /// Its ID token rather than its access token.
        id_token: bool,
    },
}

impl Credential {
    pub fn token(&self) -> Option<&PresentedToken> {
        match self {
            Credential::None | Credential::Session { .. } => None,
            Credential::File { value, .. } | Credential::Presented(value) => Some(value),
        }
    }
    pub fn fingerprint(&self) -> Option<String> {
        match self {
            Credential::Session { id, .. } => Some(format!("session:{id}")),
            _ => self.token().map(|t| t.token.fingerprint()),
        }
    }
    /// The session a key's tokens derive from, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            Credential::Session { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Everything needed to (re)do the exchange for one key.
#[derive(Debug)]
pub struct Spec {
    pub identity: Arc<IdentitySettings>,
    pub audience: String,
    pub scopes: BTreeSet<String>,
    pub subject: Credential,
    pub actor: Credential,
}

impl Spec {
    pub fn key(&self) -> CacheKey {
        CacheKey {
            identity: self.identity.name.clone(),
            audience: self.audience.clone(),
            scopes: self.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
            subject: self.subject.fingerprint(),
            actor: self.actor.fingerprint(),
        }
    }
}

/// Why an exchange happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    Miss,
    Renewal,
}

impl FetchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchReason::Miss => "miss",
            FetchReason::Renewal => "renewal",
        }
    }
}

pub(crate) type ExchangeFuture = Pin<Box<dyn Future<Output = Result<IssuedToken, ProviderError>> + Send>>;

/// Performs exchanges for the cache (the agent: provider lookup, credential re-reading, audit).
pub trait Exchanger: Send + Sync + 'static {
    fn exchange(&self, spec: Arc<Spec>, reason: FetchReason) -> ExchangeFuture;
}

/// Where a served token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Exchange,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Exchange => "exchange",
        }
    }
}
