//! The same token request again on the same connection: the caller is attested once per
//! connection, so a grant decided for one query can be handed out again for the same query
//! without deciding it again — while nothing it was decided on has changed:
//!
//! - the configuration (a reload makes a new one, so every remembered grant is decided again);
//! - the caller's sessions (remembered only while it has none: a session can change which role
//!   matches);
//! - the credential file in the key (read through the same once-a-second check as any request,
//!   so a rotated credential starts a new key just as soon);
//! - the cache key and its token (the same key still cached, the same token in it, with the
//!   hand-out floor and `min_valid` left; a renewed token is decided again, once).
//!
//! The role's rate is checked and the `token.issued` line is written for every request, as on
//! the full path; only its time changes, the rest of the line is rendered once. Anything that
//! does not hold sends the request down the full path ([`Agent::token`]), which remembers its
//! grant afresh.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::Held;
use crate::caller::Caller;
use crate::config::Rate;
use crate::error::ApiError;
use crate::output::audit::Audit;
use crate::policy::ratelimit::Bucket;
use crate::secrets::SecretFile;
use crate::token::IssuedToken;

use super::{Agent, Granted};

/// What a grant needs to be handed out again (see the module's text).
pub(crate) struct Again {
    /// The generation of the configuration it was decided under ([`super::State::generation`]).
    pub(super) generation: u64,
    /// Whether that configuration has `[[login]]`s (then a caller's session may change its role).
    pub(super) logins: bool,
    /// The audit log of that configuration, and what its `audit_failure` says of a line that
    /// cannot be written.
    pub(super) audit: Arc<Audit>,
    pub(super) audit_failure: crate::config::AuditFailure,
    pub(super) held: Held,
    pub(super) token: Arc<IssuedToken>,
    /// The subject credential file and the fingerprint of what it held.
    pub(super) subject: Option<(SecretFile, String)>,
    /// The role's rate and the caller's bucket in it (held, so it is not looked up again).
    pub(super) rate: Option<(Arc<Bucket>, Rate)>,
    pub(super) min_valid: Duration,
    /// The `token.issued` line after its time, with `"source":"cache"`.
    pub(super) tail: Vec<u8>,
}

impl std::fmt::Debug for Again {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Again")
            .field("token", &self.token.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The grants one connection may hand out again: the last one, by its query.
#[derive(Default)]
pub struct TokenMemo {
    last: Option<(Box<str>, Arc<Granted>)>,
}

impl TokenMemo {
    /// Remembers `granted` for `query` if it can be handed out again.
    pub fn remember(&mut self, query: &str, granted: &Arc<Granted>) {
        if granted.again.is_some() {
            self.last = Some((query.into(), granted.clone()));
        }
    }

    fn get(&self, query: &str) -> Option<&Arc<Granted>> {
        self.last.as_ref().filter(|(q, _)| &**q == query).map(|(_, g)| g)
    }
}

impl Agent {
    /// The grant remembered for `query` on this connection, handed out again and audited, if
    /// nothing it was decided on has changed; `None`: decide it with [`Agent::token`].
    pub async fn token_again(
        &self,
        caller: &Caller,
        memo: &TokenMemo,
        query: &str,
    ) -> Option<Result<Arc<Granted>, ApiError>> {
        let granted = memo.get(query)?;
        let again = granted.again.as_ref()?;
        // Read-only shared state only: a reload bumps the generation (no lock, no reference
        // count taken here).
        if self.shared.generation() != again.generation {
            return None;
        }
        if again.logins && !self.people.claims_of(caller.uid).is_empty() {
            return None;
        }
        if let Some((file, fingerprint)) = &again.subject {
            let now = self.creds.read(file).ok()?;
            if now.fingerprint_str() != fingerprint {
                return None;
            }
        }
        // The cache first: a token renewed meanwhile goes the full path, which takes the rate's
        // turn itself (taken here too, it would be taken twice for one request).
        if !self.cache.again(&again.held, &again.token, again.min_valid) {
            return None;
        }
        if let Some((bucket, rate)) = &again.rate {
            // Over the rate: the full path refuses it and audits the refusal.
            self.limiter.take(bucket, *rate).ok()?;
        }
        let line = crate::output::audit::with_time(SystemTime::now(), &again.tail);
        let written = again.audit.write_line("token.issued", &line);
        Some(match audit_refusal(again.audit_failure, written, &again.token) {
            Some(e) => Err(e),
            None => Ok(granted.clone()),
        })
    }
}

/// What a token whose `token.issued` line could not be written becomes: a refusal with
/// `audit_failure = "closed"`, nothing with `"open"` (the failure is logged either way).
pub(super) fn audit_refusal(
    audit_failure: crate::config::AuditFailure,
    written: std::io::Result<()>,
    token: &IssuedToken,
) -> Option<ApiError> {
    let e = written.err()?;
    tracing::error!(error = %e, fingerprint = %token.fingerprint, "cannot write the token.issued audit event");
    (audit_failure == crate::config::AuditFailure::Closed).then(|| {
        ApiError::new(
            crate::error::ErrorKind::AuditUnavailable,
            format!(
                "the audit log cannot be written ({e}); no token is handed out until it can (audit_failure = \"closed\")"
            ),
        )
    })
}
