//! The token cache across a restart (`persist_tokens = true`): what is saved, how it is restored,
//! and the saver task. The bytes go through the encrypted state store (`state/`); nothing here
//! touches a file.
//!
//! Saved: every key whose credentials the agent holds itself (client credentials, or subject and
//! actor credential files), with a token that is still valid: the key, the token and when its
//! renewal was planned. Keys made for caller-presented credentials are not saved: renewing them
//! would need the caller's credential, which the agent keeps only in memory, so after a restart
//! the caller's next request exchanges again.
//!
//! Restored: a key whose identity, audience and credential files still match (the files are
//! re-read; a changed credential or configuration drops the key), with a token that can still be
//! handed out. Its renewal resumes when it was planned; a renewal that fell due while the agent
//! was down happens at a random point soon after start ([`resume_in`]), so a fleet restarted
//! together does not renew together.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize, Zeroizing};

use super::{Cache, Entry, FetchReason, Spec, State, hand_out_floor, refresh_in, refresher, wait};
use crate::state::StateStore;
use crate::token::{IssuedToken, Secret};

/// The name of the token cache in the state store.
pub const TOKENS: &str = "tokens";
/// Changes are saved at most this often.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// An overdue renewal after a restart happens within this long at most.
pub const RESUME_SPREAD: Duration = Duration::from_secs(300);
const FORMAT: u32 = 1;

/// When a restored token is first renewed, counted from start: when it was planned, if that is
/// still ahead; otherwise (it fell due while the agent was down) at `unit` (0..1) of the first
/// half of the time left before the token's deadline, and at most [`RESUME_SPREAD`] ahead.
pub fn resume_in(planned_in: Option<Duration>, until_deadline: Duration, unit: f64) -> Duration {
    match planned_in {
        Some(d) if !d.is_zero() => d,
        _ => (until_deadline / 2).min(RESUME_SPREAD).mul_f64(unit.clamp(0.0, 1.0)),
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    keys: Vec<SavedKey>,
}

/// One key and its token, as saved.
#[derive(Serialize, Deserialize)]
pub struct SavedKey {
    pub identity: String,
    pub audience: String,
    pub scopes: Vec<String>,
    /// Fingerprints of the subject and actor credential files the key was made with.
    pub subject: Option<String>,
    pub actor: Option<String>,
    /// A digest of the identity's settings: a token made under other settings is not restored.
    settings: u64,
    token: SavedToken,
}

/// A digest of an identity's settings as they are now.
fn settings_digest(identity: &crate::config::IdentitySettings) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{identity:?}").hash(&mut h);
    h.finish()
}

#[derive(Serialize, Deserialize)]
struct SavedToken {
    access_token: String,
    issued_token_type: String,
    scope: String,
    lifetime_ms: u64,
    expires_unix_ms: u64,
    renew_unix_ms: Option<u64>,
}

impl Drop for SavedToken {
    fn drop(&mut self) {
        self.access_token.zeroize();
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cache {
    /// The keys worth saving, serialised, and a signature of their tokens (equal signatures: no
    /// token changed).
    pub(crate) fn persisted(&self) -> (Zeroizing<Vec<u8>>, u64) {
        let now = Instant::now();
        let now_sys = SystemTime::now();
        let entries: Vec<Arc<Entry>> = self.entries().map.values().cloned().collect();
        let mut keys = Vec::new();
        for e in entries {
            // Keys renewed with a caller's credential or a person's session cannot be renewed
            // by the agent alone after a restart: they are not kept.
            if matches!(
                e.spec.subject,
                super::Credential::Presented(_) | super::Credential::Session { .. }
            ) || matches!(
                e.spec.actor,
                super::Credential::Presented(_) | super::Credential::Session { .. }
            ) {
                continue;
            }
            let st = e.lock();
            let Some(t) = st.token.as_ref().filter(|t| !t.remaining(now).is_zero()) else {
                continue;
            };
            let key = e.spec.key();
            keys.push(SavedKey {
                identity: key.identity,
                audience: key.audience,
                scopes: e.spec.scopes.iter().cloned().collect(),
                subject: key.subject,
                actor: key.actor,
                settings: settings_digest(&e.spec.identity),
                token: SavedToken {
                    access_token: t.access_token.expose().to_string(),
                    issued_token_type: t.issued_token_type.clone(),
                    scope: t.scope.clone(),
                    lifetime_ms: t.lifetime.as_millis() as u64,
                    expires_unix_ms: unix_ms(t.expires_at_system),
                    renew_unix_ms: st
                        .next_refresh
                        .filter(|_| st.refresher && st.failures == 0)
                        .map(|n| unix_ms(now_sys + n.saturating_duration_since(now))),
                },
            });
        }
        keys.sort_by(|a, b| {
            (&a.identity, &a.audience, &a.token.access_token).cmp(&(&b.identity, &b.audience, &b.token.access_token))
        });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for k in &keys {
            Secret::new(k.token.access_token.clone()).fingerprint().hash(&mut h);
        }
        let saved = Saved { format: FORMAT, keys };
        let bytes = Zeroizing::new(serde_json::to_vec(&saved).unwrap_or_default());
        (bytes, h.finish())
    }

    /// Puts saved keys back (see the module's documentation). `resolve` makes the exchange spec
    /// of a saved key from the current configuration and credential files, or says no. Returns
    /// (restored, dropped).
    pub(crate) fn restore(
        self: &Arc<Self>,
        bytes: &[u8],
        resolve: impl Fn(&SavedKey) -> Option<Spec>,
    ) -> (usize, usize) {
        let saved = match serde_json::from_slice::<Saved>(bytes) {
            Ok(s) if s.format == FORMAT => s,
            _ => {
                tracing::warn!("the saved token cache is not in a format this agent reads; starting empty");
                return (0, 0);
            }
        };
        let now = Instant::now();
        let now_sys = unix_ms(SystemTime::now());
        let min_remaining = self.settings().min_remaining;
        let (mut restored, mut dropped) = (0, 0);
        for k in &saved.keys {
            let t = &k.token;
            let lifetime = Duration::from_millis(t.lifetime_ms);
            let remaining = Duration::from_millis(t.expires_unix_ms.saturating_sub(now_sys));
            let floor = hand_out_floor(lifetime, min_remaining, Duration::ZERO);
            let spec = resolve(k).filter(|s| {
                let key = s.key();
                key.subject == k.subject
                    && key.actor == k.actor
                    && settings_digest(&s.identity) == k.settings
                    && remaining > floor
                    && remaining <= lifetime
            });
            let Some(spec) = spec else {
                dropped += 1;
                continue;
            };
            let token = IssuedToken::restored(
                Secret::new(t.access_token.clone()),
                t.issued_token_type.clone(),
                t.scope.clone(),
                lifetime,
                crate::upstream::decode_unverified(&t.access_token),
                (
                    now.checked_sub(lifetime - remaining).unwrap_or(now),
                    now + remaining,
                    UNIX_EPOCH + Duration::from_millis(t.expires_unix_ms),
                ),
            );
            let planned_in = t
                .renew_unix_ms
                .map(|r| Duration::from_millis(r.saturating_sub(now_sys)))
                .or_else(|| {
                    let at = token.issued_at + refresh_in(lifetime, &self.settings(), super::jitter_unit());
                    Some(at.saturating_duration_since(now))
                });
            let first = now + resume_in(planned_in, remaining - floor, fastrand::f64());
            if self.put_restored(spec, token, first) {
                restored += 1;
            } else {
                dropped += 1;
            }
        }
        (restored, dropped)
    }

    /// Inserts one restored key with its renewal planned at `first`; false if the key exists or
    /// the cache is full.
    fn put_restored(self: &Arc<Self>, spec: Spec, token: IssuedToken, first: Instant) -> bool {
        let key = spec.key();
        let entry = {
            let mut entries = self.entries();
            if entries.map.contains_key(&key) || entries.map.len() >= self.max_keys {
                return false;
            }
            let e = Arc::new(Entry {
                owner: None,
                spec: Arc::new(spec),
                state: std::sync::Mutex::new(State {
                    token: Some(Arc::new(token)),
                    inflight: None,
                    last_used: Instant::now(),
                    refresher: true,
                    pinned: false,
                    failures: 0,
                    last_error: None,
                    next_refresh: Some(first),
                    removed: false,
                    known_short: false,
                }),
            });
            entries.insert(key, e.clone());
            e
        };
        tokio::spawn(resume(self.clone(), entry, first));
        true
    }
}

/// The first renewal of a restored key at `first`, then its ordinary refresher.
async fn resume(cache: Arc<Cache>, entry: Arc<Entry>, first: Instant) {
    tokio::select! {
        _ = tokio::time::sleep_until(first) => {}
        _ = cache.cancel.cancelled() => {
            entry.lock().refresher = false;
            return;
        }
    }
    let rx = {
        let mut st = entry.lock();
        let idle = Instant::now().duration_since(st.last_used) >= cache.settings().idle_expiry;
        if st.removed || (idle && !st.pinned) {
            st.refresher = false;
            st.next_refresh = None;
            return;
        }
        cache.start_fetch(&entry, &mut st, FetchReason::Renewal)
    };
    if let Err(e) = wait(rx).await {
        tracing::warn!(identity = %entry.spec.identity.name, audience = %entry.spec.audience, error = %e, "renewal of a restored token failed; retrying with backoff");
    }
    refresher(cache, entry).await;
}

/// Saves the token cache to `store` now (at shutdown), if it changed since `last`.
pub(crate) fn save(cache: &Cache, store: &StateStore, last: &Mutex<Option<u64>>) {
    let (bytes, signature) = cache.persisted();
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if *last == Some(signature) {
        return;
    }
    match store.save(TOKENS, &bytes) {
        Ok(()) => *last = Some(signature),
        Err(e) => tracing::error!(error = %e, "cannot save the token cache"),
    }
}

/// Saves the token cache whenever it changed, at most every [`SAVE_EVERY`], until `cancel`.
pub(crate) async fn saver(
    cache: std::sync::Weak<Cache>,
    store: Arc<StateStore>,
    last: Arc<Mutex<Option<u64>>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        let Some(cache) = cache.upgrade() else { return };
        let store = store.clone();
        let last = last.clone();
        // File writes and fsync off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || save(&cache, &store, &last)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_that_fell_due_while_down_is_spread_over_the_time_left() {
        let s = Duration::from_secs;
        assert_eq!(resume_in(Some(s(100)), s(600), 0.7), s(100), "still ahead: as planned");
        assert_eq!(resume_in(Some(Duration::ZERO), s(600), 0.5), s(150));
        assert_eq!(resume_in(None, s(60), 1.0), s(30), "half the time left at most");
        assert_eq!(resume_in(None, s(3000), 1.0), RESUME_SPREAD);
        assert_eq!(resume_in(None, s(3000), 0.0), Duration::ZERO);
    }
}
