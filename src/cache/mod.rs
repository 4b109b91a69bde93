//! The token store: cache keys, hand-out rules, coalescing of concurrent misses, background
//! renewal with backoff as `docs/lifecycle.md` describes it.
//!
//! Every key has one [`Entry`]. A miss starts one fetch task and every concurrent caller of that
//! key waits on its result, so a burst of misses costs one exchange. A key that was served gets a
//! refresher task that renews it at `refresh_at` of its lifetime (± jitter) for as long as it is
//! requested within `idle_expiry` (or pinned by a sink), retrying failures with exponential
//! backoff and full jitter while the current token keeps being served. The schedule itself is in
//! [`schedule`]; the keys and the exchanger trait in [`key`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ErrorKind, ProviderError};
use crate::token::IssuedToken;

mod key;
pub mod limits;
pub mod persist;
mod schedule;

pub use key::CacheKey;
pub use key::Credential;
pub use key::FetchReason;
pub use key::Source;
pub use key::Spec;
pub(crate) use key::{ExchangeFuture, Exchanger};
pub use schedule::RefreshSettings;
pub use schedule::{backoff, hand_out_floor, refresh_in, renewal_retry_in};

use schedule::jitter_unit;

/// After a failed exchange, further misses of the same key within this window get the same
/// error instead of another request to a provider that is down (or that just refused it).
const FAILURE_HOLD: Duration = Duration::from_millis(500);

/// Keys the cache holds at most; at the ceiling, the least recently used idle key is evicted.
pub const MAX_KEYS: usize = 16_384;
/// Keys one uid (other than root) may have made and still in the cache: a caller cannot fill
/// the cache (and the provider's log) with keys of its own, for example by presenting a new
/// credential each time.
pub const MAX_KEYS_PER_UID: usize = 512;

type FetchResult = Result<Arc<IssuedToken>, ProviderError>;

struct State {
    token: Option<Arc<IssuedToken>>,
    inflight: Option<watch::Receiver<Option<FetchResult>>>,
    last_used: Instant,
    refresher: bool,
    pinned: bool,
    failures: u32,
    /// Boxed: most keys never fail, and a key's state is kept for every key.
    last_error: Option<Box<(Instant, ProviderError)>>,
    next_refresh: Option<Instant>,
    /// Removed from the cache (evicted, or its identity changed at reload): its refresher stops.
    removed: bool,
    /// The token was fetched for a `min_valid` longer than its lifetime: the provider's tokens
    /// for this key are that short, so longer `min_valid`s are refused without another exchange
    /// until the token is renewed.
    known_short: bool,
}

struct Entry {
    spec: Arc<Spec>,
    /// The uid whose request made the key (`None`: a sink).
    owner: Option<u32>,
    state: Mutex<State>,
}

/// A key of the cache as one request found it, for [`Cache::again`]: holding it keeps nothing
/// alive in the cache (a removed key is never served through it).
pub(crate) struct Held(Arc<Entry>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Held").field(&self.0.spec.identity.name).finish()
    }
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters the cache keeps, for `/metrics` and benchmarks.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
    pub exchanges: std::sync::atomic::AtomicU64,
    pub renewals: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Idle keys evicted at the [`MAX_KEYS`] ceiling.
    pub evictions: std::sync::atomic::AtomicU64,
}

/// What `status` shows of one key: never the token.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct EntryView {
    pub identity: String,
    pub audience: String,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub next_refresh_in: Option<u64>,
    /// An exchange for this key is in flight right now.
    pub renewing: bool,
    pub failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub struct Cache {
    entries: Mutex<Entries>,
    settings: RwLock<RefreshSettings>,
    exchanger: Arc<dyn Exchanger>,
    cancel: CancellationToken,
    pub counters: CacheCounters,
    /// Provider-wide limits and pauses (`limits.rs`), one limiter per provider.
    pub limiters: limits::Limiters,
    /// [`MAX_KEYS`] and [`MAX_KEYS_PER_UID`] (smaller in unit tests).
    max_keys: usize,
    max_keys_per_uid: usize,
}

/// The keys, and how many each uid made.
#[derive(Default)]
struct Entries {
    map: HashMap<CacheKey, Arc<Entry>>,
    by_owner: HashMap<u32, usize>,
}

impl Entries {
    fn insert(&mut self, key: CacheKey, entry: Arc<Entry>) {
        if let Some(uid) = entry.owner {
            *self.by_owner.entry(uid).or_default() += 1;
        }
        self.map.insert(key, entry);
    }

    /// Keeps the entries `keep` says yes to; the others are marked removed.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let by_owner = &mut self.by_owner;
        self.map.retain(|_, e| {
            if keep(e) {
                return true;
            }
            forget(by_owner, e);
            false
        });
    }

    /// Evicts the least recently used key that is idle (no exchange running, not a sink's).
    fn evict_one(&mut self) -> bool {
        let victim = self
            .map
            .iter()
            .filter_map(|(k, e)| {
                let st = e.lock();
                (st.inflight.is_none() && !st.pinned).then(|| (st.last_used, k.clone()))
            })
            .min_by_key(|(used, _)| *used)
            .map(|(_, k)| k);
        match victim.and_then(|k| self.map.remove(&k)) {
            Some(e) => {
                forget(&mut self.by_owner, &e);
                true
            }
            None => false,
        }
    }
}

/// Marks a key taken out of the cache as removed (its refresher stops) and uncounts it.
fn forget(by_owner: &mut HashMap<u32, usize>, e: &Entry) {
    e.lock().removed = true;
    if let Some(uid) = e.owner
        && let Some(n) = by_owner.get_mut(&uid)
    {
        *n -= 1;
        if *n == 0 {
            by_owner.remove(&uid);
        }
    }
}

impl Cache {
    pub fn new(settings: RefreshSettings, exchanger: Arc<dyn Exchanger>, cancel: CancellationToken) -> Arc<Cache> {
        Cache::with_limits(settings, exchanger, cancel, MAX_KEYS, MAX_KEYS_PER_UID)
    }

    fn with_limits(
        settings: RefreshSettings,
        exchanger: Arc<dyn Exchanger>,
        cancel: CancellationToken,
        max_keys: usize,
        max_keys_per_uid: usize,
    ) -> Arc<Cache> {
        let cache = Arc::new(Cache {
            entries: Mutex::new(Entries::default()),
            settings: RwLock::new(settings),
            exchanger,
            cancel,
            counters: CacheCounters::default(),
            limiters: Default::default(),
            max_keys,
            max_keys_per_uid,
        });
        tokio::spawn(sweeper(Arc::downgrade(&cache), cache.cancel.clone()));
        cache
    }

    pub(crate) fn settings(&self) -> RefreshSettings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_settings(&self, s: RefreshSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.entries().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn servable(&self, t: &IssuedToken, now: Instant, min_valid: Duration) -> bool {
        let floor = hand_out_floor(t.lifetime, self.settings().min_remaining, min_valid);
        let left = t.remaining(now);
        !left.is_zero() && left >= floor
    }

    /// A token for `spec`'s key with at least the hand-out floor left: from the cache, or from
    /// one exchange shared by every concurrent caller of the key.
    pub async fn get(
        self: &Arc<Self>,
        spec: Spec,
        min_valid: Duration,
    ) -> Result<(Arc<IssuedToken>, Source), ApiError> {
        self.get_entry(spec, min_valid, false, None)
            .await
            .map(|(t, s, _)| (t, s))
    }

    /// Like [`get`](Self::get) for a caller: a key it makes counts against
    /// [`MAX_KEYS_PER_UID`] (root excepted).
    pub(crate) async fn get_for(
        self: &Arc<Self>,
        uid: u32,
        spec: Spec,
        min_valid: Duration,
    ) -> Result<(Arc<IssuedToken>, Source, Held), ApiError> {
        self.get_entry(spec, min_valid, false, Some(uid))
            .await
            .map(|(t, s, e)| (t, s, Held(e)))
    }

    /// Hands out `token` again from the key `held` (see [`Held`]) if it is still that key's token,
    /// the key is still in the cache, and the token still has the hand-out floor for `min_valid`
    /// left: a cache hit without the look-up. `false`: ask [`get_for`](Self::get_for).
    pub(crate) fn again(self: &Arc<Self>, held: &Held, token: &Arc<IssuedToken>, min_valid: Duration) -> bool {
        let now = Instant::now();
        let mut st = held.0.lock();
        let same = !st.removed && st.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token));
        if !same || !self.servable(token, now, min_valid) {
            return false;
        }
        st.last_used = now;
        self.ensure_refresher(&held.0, &mut st);
        self.counters.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Like [`get`](Self::get), and keeps the key renewed for as long as the agent runs (sinks).
    pub(crate) async fn get_pinned(self: &Arc<Self>, spec: Spec) -> Result<(Arc<IssuedToken>, Source), ApiError> {
        self.get_entry(spec, Duration::ZERO, true, None)
            .await
            .map(|(t, s, _)| (t, s))
    }

    async fn get_entry(
        self: &Arc<Self>,
        spec: Spec,
        min_valid: Duration,
        pin: bool,
        owner: Option<u32>,
    ) -> Result<(Arc<IssuedToken>, Source, Arc<Entry>), ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = spec.key();
        let entry = {
            let mut entries = self.entries();
            match entries.map.get(&key) {
                Some(e) => e.clone(),
                None => {
                    if let Some(uid) = owner.filter(|u| *u != 0) {
                        let made = entries.by_owner.get(&uid).copied().unwrap_or(0);
                        if made >= self.max_keys_per_uid {
                            return Err(ApiError::new(
                                ErrorKind::SlowDown,
                                format!(
                                    "uid {uid} already has {made} tokens cached for its own requests (at most {}); reuse the same identity, audience, scopes and credentials instead of new ones",
                                    self.max_keys_per_uid
                                ),
                            )
                            .with_retry_after(60));
                        }
                    }
                    if entries.map.len() >= self.max_keys {
                        if entries.evict_one() {
                            self.counters.evictions.fetch_add(1, Relaxed);
                        } else {
                            return Err(ApiError::new(
                                ErrorKind::UpstreamUnavailable,
                                format!(
                                    "the agent holds its maximum of {} tokens, all in use; retry shortly",
                                    self.max_keys
                                ),
                            )
                            .with_retry_after(1));
                        }
                    }
                    let e = Arc::new(Entry {
                        owner,
                        spec: Arc::new(spec),
                        state: Mutex::new(State {
                            token: None,
                            inflight: None,
                            last_used: Instant::now(),
                            refresher: false,
                            pinned: false,
                            failures: 0,
                            last_error: None,
                            next_refresh: None,
                            removed: false,
                            known_short: false,
                        }),
                    });
                    entries.insert(key, e.clone());
                    e
                }
            }
        };
        let now = Instant::now();
        let rx = {
            let mut st = entry.lock();
            st.last_used = now;
            st.pinned |= pin;
            if let Some(t) = &st.token
                && self.servable(t, now, min_valid)
            {
                let t = t.clone();
                self.ensure_refresher(&entry, &mut st);
                self.counters.hits.fetch_add(1, Relaxed);
                drop(st);
                return Ok((t, Source::Cache, entry));
            }
            self.counters.misses.fetch_add(1, Relaxed);
            // The provider's tokens for this key live shorter than min_valid asks (a fresh one
            // was just as short): no exchange is made for it until the next renewal.
            if let Some(t) = &st.token
                && st.known_short
                && min_valid > t.lifetime
            {
                return Err(too_short(t, min_valid));
            }
            if st.inflight.is_none()
                && let Some((at, e)) = st.last_error.as_deref()
                && now.duration_since(*at) < FAILURE_HOLD
            {
                return Err(self.unavailable(e, &st));
            }
            self.start_fetch(&entry, &mut st, FetchReason::Miss)
        };
        let result = wait(rx).await;
        let mut st = entry.lock();
        match result {
            Ok(t) => {
                self.ensure_refresher(&entry, &mut st);
                if self.servable(&t, Instant::now(), min_valid) {
                    drop(st);
                    Ok((t, Source::Exchange, entry))
                } else {
                    st.known_short = st.token.as_ref().is_some_and(|cached| Arc::ptr_eq(cached, &t));
                    Err(too_short(&t, min_valid))
                }
            }
            Err(e) => Err(self.unavailable(&e, &st)),
        }
    }

    fn unavailable(&self, e: &ProviderError, st: &State) -> ApiError {
        let mut api = e.to_api();
        if api.kind == ErrorKind::UpstreamUnavailable {
            let has_token = st
                .token
                .as_ref()
                .is_some_and(|t| !t.remaining(Instant::now()).is_zero());
            if has_token {
                api.description
                    .push_str("; the cached token is too close to expiry to hand out");
            } else {
                api.description.push_str("; no valid cached token");
            }
        }
        api
    }

    /// Starts (or joins) the one fetch of this key.
    fn start_fetch(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        st: &mut State,
        reason: FetchReason,
    ) -> watch::Receiver<Option<FetchResult>> {
        if let Some(rx) = &st.inflight {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        st.inflight = Some(rx.clone());
        let want = self.want(st, reason);
        let cache = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            cache.counters.exchanges.fetch_add(1, Relaxed);
            let exchange = cache.exchanger.exchange(entry.spec.clone(), reason);
            let provider = &entry.spec.identity.provider;
            let result = limits::limited(&cache.limiters, provider, want, exchange)
                .await
                .map(Arc::new);
            {
                let mut st = entry.lock();
                st.inflight = None;
                match &result {
                    Ok(t) => {
                        st.token = Some(t.clone());
                        st.known_short = false;
                        st.failures = 0;
                        st.last_error = None;
                    }
                    Err(e) => {
                        cache.counters.failures.fetch_add(1, Relaxed);
                        st.failures = st.failures.saturating_add(1);
                        st.last_error = Some(Box::new((Instant::now(), e.clone())));
                    }
                }
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// How a fetch waits at the provider's limiter: a renewal by the moment its token falls
    /// below the hand-out floor, anything else as a miss.
    fn want(&self, st: &State, reason: FetchReason) -> limits::Want {
        match (&st.token, reason) {
            (Some(t), FetchReason::Renewal) => {
                let floor = hand_out_floor(t.lifetime, self.settings().min_remaining, Duration::ZERO);
                limits::Want::Renewal {
                    deadline: t.expires_at.checked_sub(floor).unwrap_or(t.expires_at),
                    lifetime: t.lifetime,
                }
            }
            _ => limits::Want::Miss,
        }
    }

    fn ensure_refresher(self: &Arc<Self>, entry: &Arc<Entry>, st: &mut State) {
        if !st.refresher && st.token.is_some() && !self.cancel.is_cancelled() {
            st.refresher = true;
            tokio::spawn(refresher(self.clone(), entry.clone()));
        }
    }

    /// Whether any key's renewal is failing right now.
    pub fn degraded(&self) -> bool {
        let entries: Vec<Arc<Entry>> = self.entries().map.values().cloned().collect();
        entries.iter().any(|e| {
            let st = e.lock();
            st.failures > 0 && st.refresher
        })
    }

    /// The keys, for `status` (never token values).
    pub(crate) fn snapshot(&self) -> Vec<EntryView> {
        let now = Instant::now();
        let mut entries: Vec<(CacheKey, Arc<Entry>)> =
            self.entries().map.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
            .into_iter()
            .map(|(k, e)| {
                let st = e.lock();
                EntryView {
                    identity: k.identity,
                    audience: k.audience,
                    scope: k.scopes,
                    fingerprint: st.token.as_ref().map(|t| t.fingerprint.clone()),
                    expires_in: st.token.as_ref().map(|t| t.remaining(now).as_secs()),
                    expires_at: st.token.as_ref().map(|t| crate::token::rfc3339(t.expires_at_system)),
                    next_refresh_in: st
                        .next_refresh
                        .filter(|_| st.refresher)
                        .map(|n| n.saturating_duration_since(now).as_secs()),
                    renewing: st.inflight.is_some(),
                    failures: st.failures,
                    last_error: st.last_error.as_deref().map(|(_, e)| e.message.clone()),
                }
            })
            .collect()
    }

    /// Drops keys for which `keep` says no (after a reload changed their identity).
    pub(crate) fn retain(&self, keep: impl Fn(&Spec) -> bool) {
        self.entries().retain(|e| keep(&e.spec));
    }

    /// Removes keys that hold no valid token, are idle, and have nothing running.
    fn sweep(&self) {
        let now = Instant::now();
        let idle = self.settings().idle_expiry;
        self.entries().retain(|e| {
            let st = e.lock();
            let valid = st.token.as_ref().is_some_and(|t| !t.remaining(now).is_zero());
            valid || st.inflight.is_some() || st.refresher || st.pinned || now.duration_since(st.last_used) < idle
        });
    }
}

/// The answer to a `min_valid` longer than the tokens the provider issues for a key.
fn too_short(t: &IssuedToken, min_valid: Duration) -> ApiError {
    ApiError::invalid_request(format!(
        "the provider grants tokens of {}s for this key, less than min_valid={}s asks for; ask for less",
        t.lifetime.as_secs(),
        min_valid.as_secs()
    ))
}

async fn wait(mut rx: watch::Receiver<Option<FetchResult>>) -> FetchResult {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => match &*v {
            Some(r) => r.clone(),
            None => Err(ProviderError::local("the exchange was abandoned")),
        },
        Err(_) => Err(ProviderError::local("the exchange was abandoned")),
    }
}

async fn sweeper(cache: std::sync::Weak<Cache>, cancel: CancellationToken) {
    loop {
        let period = match cache.upgrade() {
            Some(c) => (c.settings().idle_expiry / 2).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = cancel.cancelled() => return,
        }
        match cache.upgrade() {
            Some(c) => c.sweep(),
            None => return,
        }
    }
}

/// Renews one key in the background while it is in use.
async fn refresher(cache: Arc<Cache>, entry: Arc<Entry>) {
    use std::sync::atomic::Ordering::Relaxed;
    let stop = |entry: &Entry| {
        let mut st = entry.lock();
        st.refresher = false;
        st.next_refresh = None;
    };
    loop {
        let settings = cache.settings();
        let wake = {
            let mut st = entry.lock();
            let Some(t) = st.token.clone() else {
                st.refresher = false;
                return;
            };
            let now = Instant::now();
            let wake = if st.failures == 0 {
                cache.limiters.renewal_at(&entry.spec, &t, &settings)
            } else {
                let retry_after = st.last_error.as_deref().and_then(|(_, e)| e.retry_after);
                let floor = hand_out_floor(t.lifetime, settings.min_remaining, Duration::ZERO);
                let until_deadline = t
                    .expires_at
                    .checked_sub(floor)
                    .map_or(Duration::ZERO, |d| d - now.min(d));
                let next = now + renewal_retry_in(backoff(st.failures, fastrand::f64(), retry_after), until_deadline);
                // Never past expiry while the token is still valid.
                if t.expires_at > now {
                    next.min(t.expires_at)
                } else {
                    next
                }
            };
            st.next_refresh = Some(wake);
            wake
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = cache.cancel.cancelled() => return stop(&entry),
        }
        let rx = {
            let mut st = entry.lock();
            let now = Instant::now();
            let idle = now.duration_since(st.last_used) >= settings.idle_expiry;
            let expired = st.token.as_ref().is_none_or(|t| t.remaining(now).is_zero());
            // Keys no one asked for lately are left to expire; after expiry only sinks keep trying.
            if st.removed || ((idle || expired) && !st.pinned) {
                st.refresher = false;
                st.next_refresh = None;
                return;
            }
            cache.start_fetch(&entry, &mut st, FetchReason::Renewal)
        };
        match wait(rx).await {
            Ok(_) => {
                cache.counters.renewals.fetch_add(1, Relaxed);
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(identity = %entry.spec.identity.name, audience = %entry.spec.audience, error = %e, "renewal failed; retrying with backoff");
            }
            Err(e) => {
                tracing::warn!(identity = %entry.spec.identity.name, audience = %entry.spec.audience, error = %e, "renewal refused; not retrying until the key is requested again");
                return stop(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentitySettings;
    use crate::config::{Grant, SubjectSource};
    use crate::token::Secret;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

    use super::schedule::tests::settings;

    /// A provider stand-in: counts exchanges; mode 0 works, 1 fails retryably.
    struct Fake {
        calls: AtomicU64,
        mode: AtomicU8,
        lifetime: Duration,
        delay: Duration,
    }

    impl Exchanger for Fake {
        fn exchange(&self, _spec: Arc<Spec>, _reason: FetchReason) -> ExchangeFuture {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let mode = self.mode.load(Ordering::SeqCst);
            let (lifetime, delay) = (self.lifetime, self.delay);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if mode == 1 {
                    return Err(ProviderError::unreachable("provider \"fake\" is down"));
                }
                Ok(IssuedToken::new(
                    Secret::new(format!("token-{n}")),
                    "at".into(),
                    String::new(),
                    lifetime,
                    None,
                ))
            })
        }
    }

    fn spec() -> Spec {
        spec_at("corp")
    }

    /// A client-credentials key of identity `payments` at `provider` (also the limiter's tests').
    pub(super) fn spec_at(provider: &str) -> Spec {
        Spec {
            identity: Arc::new(IdentitySettings {
                name: "payments".into(),
                provider: provider.into(),
                grant: Grant::ClientCredentials,
                subject: SubjectSource::Client,
                subject_token_type: String::new(),
                trusted_issuers: vec![],
                actor_token_file: None,
                actor_token_type: String::new(),
                actor_identity: None,
                requested_token_type: String::new(),
                audiences: vec!["aud".into()],
                scopes: vec![],
            }),
            audience: "aud".into(),
            scopes: BTreeSet::new(),
            subject: Credential::None,
            actor: Credential::None,
        }
    }

    fn fake(lifetime: u64) -> Arc<Fake> {
        Arc::new(Fake {
            calls: AtomicU64::new(0),
            mode: AtomicU8::new(0),
            lifetime: Duration::from_secs(lifetime),
            delay: Duration::from_millis(50),
        })
    }

    fn spec_for(audience: &str) -> Spec {
        Spec {
            audience: audience.into(),
            ..spec()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_uid_cannot_fill_the_cache_and_a_full_cache_evicts_the_least_recently_used() {
        let f = fake(300);
        let cache = Cache::with_limits(settings(), f.clone(), CancellationToken::new(), 4, 2);
        cache.get_for(4242, spec_for("a"), Duration::ZERO).await.unwrap();
        cache.get_for(4242, spec_for("b"), Duration::ZERO).await.unwrap();
        let e = cache.get_for(4242, spec_for("c"), Duration::ZERO).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::SlowDown, "{e}");
        assert!(e.description.contains("uid 4242 already has 2"), "{e}");
        assert_eq!(f.calls.load(Ordering::SeqCst), 2, "the refused key cost no exchange");
        // Its existing keys are still served, and root is not limited.
        cache.get_for(4242, spec_for("a"), Duration::ZERO).await.unwrap();
        cache.get_for(0, spec_for("c"), Duration::ZERO).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.get_for(0, spec_for("d"), Duration::ZERO).await.unwrap();
        assert_eq!(cache.len(), 4);
        // Full: a new key evicts the least recently used one ("b"), which frees a place of 4242.
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.get_for(0, spec_for("e"), Duration::ZERO).await.unwrap();
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.counters.evictions.load(Ordering::SeqCst), 1);
        let keys: Vec<String> = cache.snapshot().into_iter().map(|v| v.audience).collect();
        assert_eq!(keys, ["a", "c", "d", "e"]);
        cache.get_for(4242, spec_for("f"), Duration::ZERO).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_handed_out_again_only_while_its_key_still_holds_it_with_time_left() {
        let f = fake(300);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let (token, _, held) = cache.get_for(0, spec(), Duration::ZERO).await.unwrap();
        let hits = || cache.counters.hits.load(Ordering::SeqCst);
        assert!(cache.again(&held, &token, Duration::ZERO));
        assert_eq!(hits(), 1, "counted as a hit");
        // Not for a min_valid the token does not have.
        assert!(!cache.again(&held, &token, Duration::from_secs(310)));
        // Not once the key holds another token (renewed).
        let (other, _, _) = cache.get_for(0, spec_for("b"), Duration::ZERO).await.unwrap();
        assert!(!cache.again(&held, &other, Duration::ZERO));
        // Not near its expiry (by then renewed in the background, or past the hand-out floor).
        tokio::time::advance(Duration::from_secs(290)).await;
        assert!(!cache.again(&held, &token, Duration::ZERO));
        // Not once the key is out of the cache (a reload that changed its identity, eviction).
        let (token, _, held) = cache.get_for(0, spec(), Duration::ZERO).await.unwrap();
        assert!(cache.again(&held, &token, Duration::ZERO));
        cache.retain(|s| s.audience != "aud");
        assert!(!cache.again(&held, &token, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn status_says_renewing_only_while_an_exchange_is_in_flight() {
        let f = fake(300);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let first = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(spec(), Duration::ZERO).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(cache.snapshot()[0].renewing, "the first exchange is in flight");
        first.await.unwrap().unwrap();
        let view = &cache.snapshot()[0];
        assert!(!view.renewing, "a scheduled renewal is not a renewal in progress");
        assert!(view.next_refresh_in.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn min_valid_beyond_the_tokens_lifetime_costs_one_exchange_not_one_per_request() {
        let f = fake(60);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        for _ in 0..100 {
            let e = cache.get(spec(), Duration::from_secs(120)).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_exchange() {
        let f = fake(300);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let c = cache.clone();
            tasks.push(tokio::spawn(async move {
                c.get(spec(), Duration::ZERO).await.map(|(t, _)| t.fingerprint.clone())
            }));
        }
        let mut prints = BTreeSet::new();
        for t in tasks {
            prints.insert(t.await.unwrap().unwrap());
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        assert_eq!(prints.len(), 1, "all 200 got the same token");
        let (_, source) = cache.get(spec(), Duration::ZERO).await.unwrap();
        assert_eq!(source, Source::Cache);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_in_use_are_renewed_before_expiry_and_idle_keys_are_not() {
        let f = fake(100);
        let mut s = settings();
        s.idle_expiry = Duration::from_secs(150);
        let cache = Cache::new(s, f.clone(), CancellationToken::new());
        let (first, _) = cache.get(spec(), Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(
            f.calls.load(Ordering::SeqCst),
            2,
            "renewed in the background around 80 s"
        );
        let (second, source) = cache.get(spec(), Duration::ZERO).await.unwrap();
        assert_eq!(source, Source::Cache);
        assert_ne!(first.fingerprint, second.fingerprint);
        // No more requests: the key is renewed while it was used within idle_expiry, then left alone.
        tokio::time::sleep(Duration::from_secs(1000)).await;
        let calls = f.calls.load(Ordering::SeqCst);
        assert!((3..=4).contains(&calls), "{calls}");
        assert_eq!(cache.len(), 0, "expired idle keys are swept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_provider_leaves_the_cached_token_served_until_the_floor() {
        let f = fake(300);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let (first, _) = cache.get(spec(), Duration::ZERO).await.unwrap();
        f.mode.store(1, Ordering::SeqCst);
        // Renewal is due between 225 s and 255 s and fails; 40 s are left, above the 30 s floor.
        tokio::time::sleep(Duration::from_secs(260)).await;
        assert!(cache.degraded());
        let (t, source) = cache.get(spec(), Duration::ZERO).await.unwrap();
        assert_eq!(
            (t.fingerprint.as_str(), source),
            (first.fingerprint.as_str(), Source::Cache)
        );
        // Below the floor the token is not handed out any more.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let err = cache.get(spec(), Duration::ZERO).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
        assert!(err.description.contains("too close to expiry"), "{}", err.description);
        f.mode.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (t, _) = cache.get(spec(), Duration::ZERO).await.unwrap();
        assert_ne!(t.fingerprint, first.fingerprint, "service resumes without a restart");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_token_is_handed_out_until_a_quarter_of_its_lifetime_is_left() {
        // 4 s tokens: the floor is min(min_remaining = 30 s, 4 s / 4) = 1 s.
        let f = fake(4);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let (first, _) = cache.get(spec(), Duration::ZERO).await.unwrap();
        f.mode.store(1, Ordering::SeqCst); // every renewal fails from now on
        tokio::time::sleep_until(first.issued_at + Duration::from_millis(2990)).await;
        let (t, source) = cache.get(spec(), Duration::ZERO).await.unwrap();
        assert_eq!(
            (t.fingerprint.as_str(), source),
            (first.fingerprint.as_str(), Source::Cache),
            "1.01 s left: still handed out"
        );
        tokio::time::sleep_until(first.issued_at + Duration::from_millis(3010)).await;
        let err = cache.get(spec(), Duration::ZERO).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamUnavailable, "0.99 s left: not handed out");
        assert!(err.description.contains("too close to expiry"), "{}", err.description);
    }

    #[tokio::test(start_paused = true)]
    async fn min_valid_raises_the_floor_for_one_request() {
        let f = fake(4);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let (fresh, _) = cache.get(spec(), Duration::ZERO).await.unwrap();
        // Before its renewal (2.8 s after receipt), with 2.5 s left.
        tokio::time::sleep_until(fresh.issued_at + Duration::from_millis(1500)).await;
        let (t, _) = cache.get(spec(), Duration::from_secs(2)).await.unwrap();
        assert_eq!(t.fingerprint, fresh.fingerprint, "2.5 s left, 2 s asked for");
        let (t, source) = cache.get(spec(), Duration::from_secs(3)).await.unwrap();
        assert_eq!(source, Source::Exchange, "2.5 s left, 3 s asked for: a new token");
        assert_ne!(t.fingerprint, fresh.fingerprint);
    }

    #[tokio::test(start_paused = true)]
    async fn short_tokens_are_renewed_before_their_floor_so_no_request_waits() {
        // 4 s tokens are renewed 2.8 s after receipt (refresh_at 0.8 ± 0.05 is later than
        // lifetime − floor − margin = 4 − 1 − 0.2 s), while 1.2 s are left, above the 1 s floor.
        let f = fake(4);
        let cache = Cache::new(settings(), f.clone(), CancellationToken::new());
        let (mut last, _) = cache.get(spec(), Duration::ZERO).await.unwrap();
        let mut tokens = 1;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (t, source) = cache.get(spec(), Duration::ZERO).await.unwrap();
            assert_eq!(source, Source::Cache, "a request never waits for an exchange");
            assert!(
                t.remaining(Instant::now()) >= t.lifetime / 4,
                "handed out with {:?} left",
                t.remaining(Instant::now())
            );
            if t.fingerprint != last.fingerprint {
                tokens += 1;
                last = t;
            }
        }
        // 20 s of requests, one renewal every 2.85 s (2.8 s + the exchange's 50 ms).
        assert_eq!(tokens, 8, "{} exchanges", f.calls.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn min_valid_beyond_the_lifetime_is_the_callers_error() {
        let cache = Cache::new(settings(), fake(60), CancellationToken::new());
        let err = cache.get(spec(), Duration::from_secs(120)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
    }
}
