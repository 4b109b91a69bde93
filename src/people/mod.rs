//! People: sign-in flows and sessions (SPEC section 8).
//!
//! A person on the host signs in once ([`attempt`]: the device flow, which the agent polls
//! itself, or the browser flow, whose code the CLI relays); the agent keeps the session
//! ([`session`]), bound to the uid that signed in, refreshes it ([`refresh`]) and ends it on
//! logout, on `invalid_grant`, or at `max_session`. The request path reads sessions through
//! [`People`] (claims for roles, the subject credential for `login:` identities); what sessions
//! need from the agent (the login's settings and provider, the audit log, dropping the tokens
//! derived from an ended session) comes in through the narrow [`PeopleHost`].
//!
//! The refresh token and the PKCE verifier never leave this folder: no view holds them, and
//! their types print only fingerprints.

mod attempt;
mod persist;
mod provider;
mod refresh;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::config::LoginSettings;
use crate::error::{ApiError, ErrorKind, ProviderError};
use crate::token::Secret;

pub use attempt::{AttemptView, LoginStart, StartView};
pub(crate) use persist::STATE_NAME;
pub(crate) use provider::LoginProvider;
pub use session::{EndReason, Session, SessionRef, SessionView};

/// What sessions need from the agent, and how they tell it what happened.
pub(crate) trait PeopleHost: Send + Sync + 'static {
    /// The `[[login]]` of this name in the running configuration, and its provider.
    fn login(&self, name: &str) -> Option<(Arc<LoginSettings>, Arc<dyn LoginProvider>)>;
    /// Writes an audit event (best effort: a lost line changes nothing a caller receives).
    fn audit(&self, event: &str, fields: serde_json::Value);
    /// The session `id` ended: the tokens derived from it must no longer be handed out.
    fn session_ended(&self, id: &str);
    /// `[agent] refresh_at`: the fraction of an access token's lifetime after which it is
    /// refreshed.
    fn refresh_at(&self) -> f64;
    /// The session changed (signed in, refreshed, ended): persistence may save it.
    fn session_changed(&self, _session: &Session) {}
}

/// A session's token handed to an exchange as the subject credential.
pub(crate) struct SessionToken(pub(crate) Secret);

/// The sessions and the sign-ins in progress.
pub struct People {
    host: Arc<dyn PeopleHost>,
    /// Live sessions by (uid, login).
    /// Ordered by (uid, login), so one uid's sessions are a range, found without a scan.
    sessions: Mutex<BTreeMap<(u32, String), Arc<Session>>>,
    /// Why the last session of (uid, login) ended, and when: what `login_required` tells.
    ended: Mutex<HashMap<(u32, String), (EndReason, SystemTime)>>,
    attempts: Mutex<HashMap<String, Arc<attempt::Attempt>>>,
    cancel: CancellationToken,
}

impl People {
    pub(crate) fn new(host: Arc<dyn PeopleHost>, cancel: CancellationToken) -> Arc<People> {
        Arc::new(People {
            host,
            sessions: Mutex::default(),
            ended: Mutex::default(),
            attempts: Mutex::default(),
            cancel,
        })
    }

    fn sessions(&self) -> MutexGuard<'_, BTreeMap<(u32, String), Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `uid`'s live session at `login`.
    pub fn session(&self, uid: u32, login: &str) -> Option<Arc<Session>> {
        self.sessions()
            .get(&(uid, login.to_string()))
            .filter(|s| !s.is_ended())
            .cloned()
    }

    /// `uid`'s live session at `login`, or the `login_required` answer: which login, why the
    /// last session ended (if one did) and the command that signs in.
    pub fn require(&self, uid: u32, login: &str) -> Result<Arc<Session>, ApiError> {
        if let Some(s) = self.session(uid, login) {
            return Ok(s);
        }
        let why = self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(uid, login.to_string()))
            .map(|(reason, at)| {
                format!(
                    "; your last session there ended at {} ({}: {})",
                    session::rfc3339(*at),
                    reason.as_str(),
                    reason.explain()
                )
            })
            .unwrap_or_default();
        Err(ApiError::new(
            ErrorKind::LoginRequired,
            format!(
                "this needs your session at login {login:?}, and uid {uid} has none{why}; sign in with `cortexid login {login}`"
            ),
        ))
    }

    /// `uid`'s live sessions, by login.
    pub fn sessions_of(&self, uid: u32) -> Vec<Arc<Session>> {
        // The map is ordered by (uid, login): this uid's sessions, by login, are one range.
        self.sessions()
            .range((uid, String::new())..)
            .take_while(|((u, _), _)| *u == uid)
            .filter(|(_, s)| !s.is_ended())
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The current claims of `uid`'s sessions, by login (what roles with `login` match).
    pub fn claims_of(&self, uid: u32) -> Vec<(String, Arc<serde_json::Value>)> {
        self.sessions_of(uid)
            .into_iter()
            .map(|s| (s.login.clone(), s.claims()))
            .collect()
    }

    /// The live session with this id.
    fn by_id(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions().values().find(|s| s.id == id).cloned()
    }

    /// The subject credential of the session `id` for an exchange (its access token, or its ID
    /// token when `id_token`), refreshed first when it is about to expire.
    pub(crate) async fn subject_token(&self, id: &str, id_token: bool) -> Result<SessionToken, ProviderError> {
        let session = self
            .by_id(id)
            .ok_or_else(|| ProviderError::local("the session this token was derived from has ended"))?;
        self.current_token(&session, id_token).await
    }

    /// Adds a new session, replacing (and ending) the uid's previous one at the same login, and
    /// starts its refresher.
    pub(super) async fn install(self: &Arc<Self>, session: Session) -> Arc<Session> {
        let session = Arc::new(session);
        let old = self
            .sessions()
            .insert((session.uid, session.login.clone()), session.clone());
        if let Some(old) = old {
            // Revoked first: ending it drops (and zeroises) its refresh token.
            self.revoke_quietly(&old).await;
            self.finish(&old, EndReason::Replaced);
        }
        self.saved(&session);
        tokio::spawn(refresh::refresher(self.clone(), session.clone()));
        session
    }

    /// Ends a session for `reason`: it leaves the map, its tokens are dropped, the tokens derived
    /// from it stop being handed out, and `session.ended` is audited.
    pub(super) async fn end(&self, session: &Arc<Session>, reason: EndReason) {
        {
            let mut map = self.sessions();
            let key = (session.uid, session.login.clone());
            if map.get(&key).is_some_and(|s| s.id == session.id) {
                map.remove(&key);
            }
        }
        self.finish(session, reason);
    }

    /// Marks `session` ended, records why, and tells the host and the audit log.
    fn finish(&self, session: &Arc<Session>, reason: EndReason) {
        if !session.mark_ended(reason) {
            return;
        }
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((session.uid, session.login.clone()), (reason, SystemTime::now()));
        self.host.session_ended(&session.id);
        self.host.session_changed(session);
        self.host.audit(
            "session.ended",
            serde_json::json!({"uid": session.uid, "session": session.audit_ref(), "reason": reason.as_str()}),
        );
        tracing::info!(login = %session.login, uid = session.uid, reason = reason.as_str(), "session ended");
    }

    /// Revokes a replaced session's refresh token, without failing anything if it cannot.
    async fn revoke_quietly(&self, session: &Arc<Session>) {
        let _ = self.revoke(session).await;
    }

    /// Revokes the session's refresh token at the provider (RFC 7009). `Ok(false)`: the provider
    /// offers no revocation, or there was no refresh token.
    async fn revoke(&self, session: &Arc<Session>) -> Result<bool, ProviderError> {
        let token = session.tokens().refresh_token.clone();
        let (Some(token), Some((login, provider))) = (token, self.host.login(&session.login)) else {
            return Ok(false);
        };
        provider.revoke(&login, &token).await
    }

    /// Signs `uid` out of `login`: the refresh token is revoked at the provider when it offers
    /// revocation, the session is forgotten, and `session.ended` (reason `logout`) is audited.
    pub async fn logout(&self, uid: u32, login: &str) -> Result<serde_json::Value, ApiError> {
        let Some(session) = self.session(uid, login) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("uid {uid} has no session at login {login:?}; nothing to sign out of"),
            ));
        };
        let revoked = match self.revoke(&session).await {
            Ok(r) => serde_json::Value::Bool(r),
            Err(e) => {
                tracing::warn!(login, uid, error = %e, "cannot revoke the refresh token at the provider; the session is forgotten anyway");
                serde_json::json!({"error": e.message})
            }
        };
        self.end(&session, EndReason::Logout).await;
        Ok(serde_json::json!({"login": login, "sub": session.sub, "ended": true, "revoked_at_provider": revoked}))
    }

    /// Ends the sessions whose login `keep` says no to (a reload removed it).
    pub(crate) async fn end_removed(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<Arc<Session>> = self.sessions().values().filter(|s| !keep(&s.login)).cloned().collect();
        for s in gone {
            self.end(&s, EndReason::LoginRemoved).await;
        }
    }

    /// Tells the host a session changed (persistence saves it).
    fn saved(&self, session: &Session) {
        self.host.session_changed(session);
    }
}

/// A random identifier: 128 bits as hex.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // aws-lc's generator does not fail in practice; fastrand keeps the id unique if it did.
        bytes = fastrand::u128(..).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token derived from `session` is handed out only if it expires before the session does
/// (`max_session`): a derived token never outlives its session.
pub fn within_session(session: &Session, token: &crate::token::IssuedToken) -> Result<(), ApiError> {
    if token.expires_at_system <= session.ends_at_system {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::LoginRequired,
        format!(
            "your session at login {:?} ends at {}, before this token would expire ({}); a token never outlives its session: sign in again with `cortexid login {}`",
            session.login,
            session::rfc3339(session.ends_at_system),
            session::rfc3339(token.expires_at_system),
            session.login
        ),
    ))
}

#[cfg(test)]
mod tests;
