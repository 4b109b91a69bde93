//! Keeping a session alive: its tokens are refreshed in the background before the access token
//! expires (one refresh at a time per session, on demand too), a rotated refresh token is kept
//! before it is used, `invalid_grant` ends the session at once, network failures are retried with
//! backoff while the current tokens stay in use, and `max_session` ends it. Nothing here ever
//! opens a browser: a session that cannot be refreshed ends, and the person signs in again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ProviderError;

use super::session::{EndReason, Session};
use super::{People, SessionToken};

/// What one refresh attempt came to.
#[derive(Debug)]
pub(super) enum Refreshed {
    /// New tokens are in place (or another waiter's refresh put them there).
    Done,
    /// The session cannot go on: end it for this reason.
    End(EndReason),
    /// Retry later: the provider could not be reached, or refused for a reason a retry may fix
    /// (the session's `last_error` says which).
    Retry,
}

/// When the background refresher next refreshes: after `refresh_at` of the access token's
/// lifetime, and at least ten seconds (or a quarter of a short lifetime) before it expires.
pub(super) fn refresh_due(expires: Instant, lifetime: Duration, refresh_at: f64) -> Instant {
    let margin = lifetime
        .mul_f64((1.0 - refresh_at).clamp(0.05, 0.5))
        .max(Duration::from_secs(10).min(lifetime / 4));
    expires.checked_sub(margin).unwrap_or(expires)
}

impl People {
    /// Refreshes `session` unless another refresh finished since generation `seen` (one at a
    /// time: concurrent callers wait for the one in flight and use its result).
    pub(super) async fn refresh_now(&self, session: &Arc<Session>, seen: u64) -> Refreshed {
        let _one = session.refreshing.lock().await;
        let refresh_token = {
            let t = session.tokens();
            if t.ended.is_some() {
                return Refreshed::End(t.ended.unwrap_or(EndReason::Logout));
            }
            if t.generation != seen {
                return Refreshed::Done;
            }
            match &t.refresh_token {
                Some(r) => r.clone(),
                None if Instant::now() >= t.access_expires => return Refreshed::End(EndReason::Expired),
                None => {
                    return Refreshed::Retry;
                }
            }
        };
        let Some((login, provider)) = self.host.login(&session.login) else {
            session.tokens().last_error = Some(format!("login {:?} is no longer configured", session.login));
            return Refreshed::Retry;
        };
        match provider.refresh(&login, &refresh_token, &session.sub).await {
            Ok(_) if session.is_ended() => Refreshed::End(EndReason::Logout),
            Ok(grant) => {
                let rotated = grant.refresh_token.is_some();
                let changed = session.apply_refresh(grant);
                self.saved(session);
                let (claims, expires_in) = {
                    let t = session.tokens();
                    (
                        t.claims.clone(),
                        t.access_expires.saturating_duration_since(Instant::now()).as_secs(),
                    )
                };
                self.host.audit(
                    "session.refreshed",
                    serde_json::json!({
                        "uid": session.uid, "session": session.audit_ref(), "claims_changed": changed,
                        "claims": *claims, "refresh_token_rotated": rotated, "expires_in": expires_in,
                    }),
                );
                Refreshed::Done
            }
            Err(e) if e.provider_code() == Some("invalid_grant") => {
                tracing::warn!(login = %session.login, uid = session.uid, error = %e, "the provider refused the session's refresh token; the session ends");
                Refreshed::End(EndReason::Revoked)
            }
            Err(e) => {
                let mut t = session.tokens();
                t.failures += 1;
                t.last_error = Some(e.message.clone());
                drop(t);
                tracing::warn!(login = %session.login, uid = session.uid, error = %e, "session refresh failed; retrying with backoff");
                Refreshed::Retry
            }
        }
    }

    /// The session's current subject credential for an exchange: its access token (or ID token),
    /// refreshed first when it is about to expire.
    pub(super) async fn current_token(
        &self,
        session: &Arc<Session>,
        id_token: bool,
    ) -> Result<SessionToken, ProviderError> {
        let (seen, due) = {
            let t = session.tokens();
            (t.generation, t.access_expires)
        };
        if Instant::now() + Duration::from_secs(30) >= due {
            match self.refresh_now(session, seen).await {
                Refreshed::Done | Refreshed::Retry => {}
                Refreshed::End(reason) => {
                    self.end(session, reason).await;
                }
            }
        }
        let t = session.tokens();
        if let Some(reason) = t.ended {
            return Err(ProviderError::local(format!(
                "the session at login {:?} ended: {}",
                session.login,
                reason.explain()
            )));
        }
        if Instant::now() >= t.access_expires {
            return Err(ProviderError::unreachable(format!(
                "the session at login {:?} could not be refreshed ({}); retrying",
                session.login,
                t.last_error.as_deref().unwrap_or("no answer")
            )));
        }
        let token = if id_token {
            t.id_token.clone()
        } else {
            Some(t.access_token.clone())
        };
        token.map(SessionToken).ok_or_else(|| {
            ProviderError::local(format!(
                "the session at login {:?} holds no ID token to use as the subject",
                session.login
            ))
        })
    }
}

/// The background refresher of one session: refreshes ahead of expiry, retries failures with
/// backoff (1 s doubling to 60 s, with jitter), ends the session on `invalid_grant`, when it
/// cannot be renewed and its access token expired, or at `max_session`.
pub(super) async fn refresher(people: Arc<People>, session: Arc<Session>) {
    let mut failures = 0u32;
    loop {
        let (due, seen) = {
            let t = session.tokens();
            let due = if failures == 0 {
                refresh_due(t.access_expires, t.access_lifetime, people.host.refresh_at())
            } else {
                Instant::now() + crate::cache::backoff(failures, fastrand::f64(), None)
            };
            (due.min(session.ends_at), t.generation)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = session.ended.cancelled() => return,
            _ = people.cancel.cancelled() => return,
        }
        if Instant::now() >= session.ends_at {
            // The provider would honour the refresh token on: revoke it (best effort).
            people.revoke_quietly(&session).await;
            people.end(&session, EndReason::MaxSession).await;
            return;
        }
        match people.refresh_now(&session, seen).await {
            Refreshed::Done => failures = 0,
            Refreshed::End(reason) => {
                people.end(&session, reason).await;
                return;
            }
            Refreshed::Retry => {
                let expired = Instant::now() >= session.tokens().access_expires;
                if expired && session.tokens().refresh_token.is_none() {
                    people.end(&session, EndReason::Expired).await;
                    return;
                }
                failures += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_after_refresh_at_of_the_lifetime_and_before_expiry() {
        let now = Instant::now();
        let life = Duration::from_secs(300);
        assert_eq!(refresh_due(now + life, life, 0.8), now + Duration::from_secs(240));
        // A short token is refreshed ten seconds (or a quarter of its life) before it expires.
        let short = Duration::from_secs(60);
        assert_eq!(refresh_due(now + short, short, 0.8), now + Duration::from_secs(48));
        let shorter = Duration::from_secs(20);
        assert_eq!(refresh_due(now + shorter, shorter, 0.8), now + Duration::from_secs(15));
    }
}
