//! One person's session: bound to the uid that signed in and to one `[[login]]`, holding the
//! tokens the provider issued (the refresh token never leaves this struct), the ID-token claims
//! roles match, and why it ended once it has.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::token::Secret;
use crate::upstream::SessionGrant;

/// How long an access token is taken to live when the provider says nothing (no `expires_in`,
/// not a JWT): it is refreshed after [`super::refresh`]'s fraction of this.
pub(crate) const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The person signed out (`cortexid logout`, `DELETE /v1/sessions/{login}`).
    Logout,
    /// The provider refused the refresh token (`invalid_grant`): revoked, or the person was
    /// disabled.
    Revoked,
    /// The access token expired and there was no refresh token to renew it.
    Expired,
    /// The session reached the login's `max_session`.
    MaxSession,
    /// The person signed in again; the new session replaced this one.
    Replaced,
    /// A reload removed its `[[login]]` from the configuration.
    LoginRemoved,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::Revoked => "revoked",
            EndReason::Expired => "expired",
            EndReason::MaxSession => "max_session",
            EndReason::Replaced => "replaced",
            EndReason::LoginRemoved => "login_removed",
        }
    }

    /// The reason in words, for `login_required` answers.
    pub fn explain(self) -> &'static str {
        match self {
            EndReason::Logout => "you signed out",
            EndReason::Revoked => "the provider revoked it (invalid_grant at refresh)",
            EndReason::Expired => "it expired (the provider gave no refresh token to renew it)",
            EndReason::MaxSession => "it reached the login's max_session",
            EndReason::Replaced => "a newer sign-in replaced it",
            EndReason::LoginRemoved => "its [[login]] was removed from the agent's configuration",
        }
    }
}

/// What changes over a session's life; behind the session's lock.
pub(super) struct Tokens {
    pub(super) access_token: Secret,
    pub(super) access_expires: Instant,
    pub(super) access_lifetime: Duration,
    pub(super) id_token: Option<Secret>,
    /// Never leaves the agent: no view, log or audit line holds it.
    pub(super) refresh_token: Option<Secret>,
    /// The claims of the latest ID token: what roles with `login` match.
    pub(super) claims: Arc<Value>,
    pub(super) last_refresh: Option<SystemTime>,
    /// Counts refreshes, so a waiter can tell whether another refreshed while it waited.
    pub(super) generation: u64,
    pub(super) failures: u32,
    pub(super) last_error: Option<String>,
    pub(super) ended: Option<EndReason>,
}

/// A person's session at one `[[login]]`.
pub struct Session {
    /// A random id that names the session in cache keys and audit lines (never a token).
    pub id: String,
    /// The uid that signed in: the only one the session serves.
    pub uid: u32,
    /// The `[[login]]` it was opened at.
    pub login: String,
    /// `device` or `browser`.
    pub flow: &'static str,
    /// The person (`sub` of the first ID token; a refresh must keep it).
    pub sub: String,
    /// `email` of the first ID token, when it had one.
    pub email: Option<String>,
    pub started: SystemTime,
    /// When `max_session` ends it.
    pub ends_at: Instant,
    pub ends_at_system: SystemTime,
    pub(super) tokens: Mutex<Tokens>,
    /// One refresh at a time.
    pub(super) refreshing: tokio::sync::Mutex<()>,
    /// Cancelled when the session ends: its refresher stops.
    pub(super) ended: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .field("login", &self.login)
            .field("sub", &self.sub)
            .finish_non_exhaustive()
    }
}

/// A session as the socket API shows it: who, which claims, until when; never a token.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub login: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub flow: &'static str,
    pub claims: Value,
    pub started_at: String,
    /// When `max_session` ends it.
    pub expires_at: String,
    pub access_expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<String>,
    pub refreshable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What audit lines say of a session: `session: {login, sub, email}`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRef<'a> {
    pub login: &'a str,
    pub sub: &'a str,
    pub email: Option<&'a str>,
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A string claim.
fn claim<'v>(claims: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    claims.get(name).and_then(Value::as_str)
}

/// Why a grant cannot open a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No validated ID token came back.
    #[error("the provider returned no ID token; the [[login]]'s scopes must include \"openid\"")]
    NoIdToken,
    /// The ID token has no `sub`.
    #[error("the provider's ID token names no subject (sub)")]
    NoSubject,
}

impl Session {
    /// A new session from a sign-in's grant, for `uid` at `login`, ending after `max_session`.
    pub(super) fn open(
        id: String,
        uid: u32,
        login: &str,
        flow: &'static str,
        max_session: Duration,
        grant: SessionGrant,
    ) -> Result<Session, OpenError> {
        let claims = grant.id_claims.ok_or(OpenError::NoIdToken)?;
        let sub = claim(&claims, "sub").ok_or(OpenError::NoSubject)?.to_string();
        let email = claim(&claims, "email").map(str::to_string);
        let now = Instant::now();
        let started = SystemTime::now();
        let lifetime = grant.expires_in.unwrap_or(UNKNOWN_LIFETIME);
        Ok(Session {
            id,
            uid,
            login: login.to_string(),
            flow,
            sub,
            email,
            started,
            ends_at: now + max_session,
            ends_at_system: started + max_session,
            tokens: Mutex::new(Tokens {
                access_token: grant.access_token,
                access_expires: now + lifetime,
                access_lifetime: lifetime,
                id_token: grant.id_token,
                refresh_token: grant.refresh_token,
                claims: Arc::new(Value::Object(claims)),
                last_refresh: None,
                generation: 0,
                failures: 0,
                last_error: None,
                ended: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
            ended: CancellationToken::new(),
        })
    }

    pub(super) fn tokens(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The claims roles match now (replaced at each refresh that brings an ID token).
    pub fn claims(&self) -> Arc<Value> {
        self.tokens().claims.clone()
    }

    /// Whether it has ended.
    pub fn is_ended(&self) -> bool {
        self.tokens().ended.is_some()
    }

    /// What audit lines say of it.
    pub fn audit_ref(&self) -> SessionRef<'_> {
        SessionRef {
            login: &self.login,
            sub: &self.sub,
            email: self.email.as_deref(),
        }
    }

    /// Takes a refresh's grant: a rotated refresh token first (kept before anything else can
    /// fail), then the access token, the ID token and the claims it carries. Returns whether the
    /// claims changed.
    pub(super) fn apply_refresh(&self, grant: SessionGrant) -> bool {
        let mut t = self.tokens();
        // Ended while the refresh was in flight (a logout): its tokens stay dropped.
        if t.ended.is_some() {
            return false;
        }
        if let Some(rotated) = grant.refresh_token {
            t.refresh_token = Some(rotated);
        }
        let now = Instant::now();
        let lifetime = grant.expires_in.unwrap_or(UNKNOWN_LIFETIME);
        t.access_token = grant.access_token;
        t.access_expires = now + lifetime;
        t.access_lifetime = lifetime;
        if grant.id_token.is_some() {
            t.id_token = grant.id_token;
        }
        let changed = match grant.id_claims {
            Some(claims) => {
                let claims = Value::Object(claims);
                let changed = *t.claims != claims;
                t.claims = Arc::new(claims);
                changed
            }
            None => false,
        };
        t.last_refresh = Some(SystemTime::now());
        t.generation += 1;
        t.failures = 0;
        t.last_error = None;
        changed
    }

    /// Marks it ended (its tokens are dropped, and zeroised with them); `false` if it already was.
    pub(super) fn mark_ended(&self, reason: EndReason) -> bool {
        let mut t = self.tokens();
        if t.ended.is_some() {
            return false;
        }
        t.ended = Some(reason);
        t.refresh_token = None;
        t.id_token = None;
        t.access_token = Secret::new(String::new());
        drop(t);
        self.ended.cancel();
        true
    }

    /// The session as the socket API shows it.
    pub fn view(&self) -> SessionView {
        let t = self.tokens();
        let now = Instant::now();
        let name = t.claims.get("name").and_then(Value::as_str).map(str::to_string);
        SessionView {
            login: self.login.clone(),
            sub: self.sub.clone(),
            email: self.email.clone(),
            name,
            flow: self.flow,
            claims: (*t.claims).clone(),
            started_at: rfc3339(self.started),
            expires_at: rfc3339(self.ends_at_system),
            access_expires_in: t.access_expires.saturating_duration_since(now).as_secs(),
            last_refresh: t.last_refresh.map(rfc3339),
            refreshable: t.refresh_token.is_some(),
            last_error: t.last_error.clone(),
        }
    }
}
