//! Provider-wide limits: at most `max_concurrent` requests in flight and `rate` exchanges per
//! second (a token bucket) to one provider, for the agent as a whole; and a pause of the whole
//! provider when it answers 429 or 503 with `Retry-After`.
//!
//! The decisions are a pure function of time in [`Gate`] (what may go now, and when to look
//! again), so the fleet simulation (`examples/fleet.rs`) and the unit tests drive the very code
//! the agent runs; [`Limiter`] wraps a gate for async callers, and [`Limiters`] holds one per
//! provider.
//!
//! Order of the queue: a caller waiting on a miss goes before any background renewal. A renewal
//! is not starved by a stream of misses: it becomes *urgent* [`URGENT_WINDOW`] (at most; a tenth
//! of its token's lifetime for short tokens) before its deadline (the moment its token falls
//! below the hand-out floor), and from then on it competes with misses as if it had arrived at
//! that moment, first come first served. Renewals that are not urgent go earliest deadline first.
//! A miss that gave up waiting ([`Gate::give_up`]) is told when its turn would come, and keeps
//! its place in line until then ([`MISS_HOLD`] after): the turn goes to its caller when it comes
//! back, not to a renewal queued meanwhile (a renewal urgent since before the miss came still
//! goes first). On an agent whose renewals use its whole `rate`, a caller coming back as told
//! would otherwise find every turn taken by a renewal that was queued all along, and never be
//! served.
//!
//! An urgent renewal that finds the bucket empty may draw on a small *reserve* instead ([`URGENT_RESERVE`] tokens,
//! refilling at [`RESERVE_REFILL`] of the `rate`): the time between a renewal and its deadline is what keeps tokens
//! served through a provider outage, and a renewal that waits for its agent's bucket spends it (after an outage, a
//! key of an agent with a backlog would otherwise be lost to the agent's own limiter). Only such renewals use it, and
//! only outside a `Retry-After` pause, so over any span T an agent has the provider process at most
//! `rate × T × (1 + RESERVE_REFILL) + 1 + URGENT_RESERVE` exchanges. An exchange that got no answer (the provider
//! unreachable) or was refused with `Retry-After` gives a token back to the reserve: it used none of the provider's
//! capacity, and a renewal must still be able to try once the provider is back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Spec;
pub use super::schedule::Spacing;
use super::schedule::{RefreshSettings, jitter_unit, refresh_in};
use crate::config::Rate;
use crate::error::ProviderError;
use crate::token::IssuedToken;

/// A renewal is urgent this long before its deadline (or a tenth of the lifetime, if shorter).
pub const URGENT_WINDOW: Duration = Duration::from_secs(120);
/// A pause asked for with `Retry-After` is lengthened by up to this fraction, at random, so the
/// agents of a fleet paused together do not come back together (with a `rate`, their buckets
/// also restart at a random phase).
pub const PAUSE_JITTER: f64 = 0.2;
/// The longest pause a `Retry-After` can impose.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);
/// After a `Retry-After` pause, the bucket's next token comes at a random point of this many
/// refills: agents refused in the same second come back spread out, not all at the pause's end.
/// (A whole refill spreads them more but costs each refusal half a refill on average: at one
/// exchange per 95 s, the unluckiest nodes of a cold start then finish 25 % late.)
pub const REPHASE: f64 = 0.25;
/// Tokens an urgent renewal may draw on when the bucket is empty.
pub const URGENT_RESERVE: f64 = 2.0;
/// The reserve refills at this fraction of the `rate`: an agent whose renewals are all urgent sends
/// at most 1.5 × its `rate` over time.
pub const RESERVE_REFILL: f64 = 0.5;
/// A miss that gave up waiting is told when its turn would have come ([`Gate::give_up`]); it
/// keeps its place in line until then and this long after, so its caller, coming back as told,
/// finds its turn and not a renewal that was queued all along.
pub const MISS_HOLD: Duration = Duration::from_secs(2);
/// The shortest `Retry-After` told to a miss that gave up.
pub const MIN_RETRY: Duration = Duration::from_secs(1);
/// At most this many turns are kept for misses at once (the oldest goes first).
const MAX_HOLDS: usize = 256;

/// The limits of one provider (`[[provider]] max_concurrent` and `rate`); none means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub max_concurrent: Option<u32>,
    pub rate: Option<Rate>,
}

/// What an exchange waits for the gate as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    /// A caller is waiting on it.
    Miss,
    /// A background renewal of a token that stops being handed out at `deadline`.
    Renewal { deadline: Instant, lifetime: Duration },
}

impl Want {
    /// When a renewal starts to compete with misses (a miss: at once).
    pub fn urgent_at(self, now: Instant) -> Instant {
        match self {
            Want::Miss => now,
            Want::Renewal { deadline, lifetime } => {
                let window = URGENT_WINDOW.min(lifetime / 10);
                deadline.checked_sub(window).unwrap_or(deadline)
            }
        }
    }
}

/// What the gate says to a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// This ticket may send its request now (it now counts as in flight).
    Go(u64),
    /// Nothing may go before this time (the bucket refills, or a pause ends).
    WaitUntil(Instant),
    /// Nothing may go until a request in flight finishes (or nothing is waiting).
    Idle,
}

/// The provider-wide limiter as a pure function of time: every method takes `now`.
#[derive(Debug, Clone)]
pub struct Gate {
    limits: Limits,
    in_flight: u32,
    tokens: f64,
    /// Tokens only urgent renewals may use (see the module's documentation).
    reserve: f64,
    refilled: Option<Instant>,
    paused_until: Option<Instant>,
    /// Turns kept for misses that gave up (see [`MISS_HOLD`]), each ending on its own: when the
    /// miss arrived (renewals urgent since before that still go first) and until when.
    held_for_misses: VecDeque<(Instant, Instant)>,
    next_ticket: u64,
    /// Misses, in arrival order: (arrived, ticket).
    misses: VecDeque<(Instant, u64)>,
    /// Renewals by the time they become urgent: (urgent_at, ticket).
    renewals: BTreeMap<(Instant, u64), ()>,
    /// Requests let through.
    pub sent: u64,
    /// Pauses asked for by the provider.
    pub pauses: u64,
}

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate {
            limits,
            in_flight: 0,
            tokens: limits.rate.map_or(0.0, |r| f64::from(r.count)),
            reserve: URGENT_RESERVE,
            refilled: None,
            paused_until: None,
            held_for_misses: VecDeque::new(),
            next_ticket: 0,
            misses: VecDeque::new(),
            renewals: BTreeMap::new(),
            sent: 0,
            pauses: 0,
        }
    }

    /// The same gate with its bucket `fill` (0..1) full instead of full: the agent starts at a
    /// random fill, so the agents of a fleet started together do not spend and refill their
    /// buckets in step (with a rate of one per 96 s, each would otherwise send at 0 s, 96 s, ...).
    pub fn with_fill(mut self, fill: f64) -> Gate {
        if let Some(r) = self.limits.rate {
            self.tokens = f64::from(r.count) * fill.clamp(0.0, 1.0);
        }
        self
    }

    /// Changes the limits (a reload), keeping what is queued, in flight and paused.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        if let Some(r) = limits.rate {
            self.tokens = self.tokens.min(f64::from(r.count));
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Queues a request; the ticket names it in [`Poll::Go`] and [`Gate::cancel`].
    pub fn enqueue(&mut self, want: Want, now: Instant) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        match want {
            Want::Miss => self.misses.push_back((now, ticket)),
            Want::Renewal { .. } => {
                self.renewals.insert((want.urgent_at(now), ticket), ());
            }
        }
        ticket
    }

    /// Takes a queued ticket out (its caller gave up). False if it was not queued.
    pub fn cancel(&mut self, ticket: u64) -> bool {
        if let Some(i) = self.misses.iter().position(|(_, t)| *t == ticket) {
            self.misses.remove(i);
            return true;
        }
        let key = self.renewals.keys().find(|(_, t)| *t == ticket).copied();
        key.is_some_and(|k| self.renewals.remove(&k).is_some())
    }

    /// Requests waiting.
    pub fn queued(&self) -> usize {
        self.misses.len() + self.renewals.len()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The end of the current pause, if one is running at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|u| *u > now)
    }

    /// Seconds between two tokens.
    fn per_token(&self, rate: Rate) -> f64 {
        rate.per.as_secs_f64() / f64::from(rate.count)
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.limits.rate else { return };
        let cap = f64::from(rate.count);
        if let Some(last) = self.refilled {
            let per_token = self.per_token(rate);
            let refills = now.saturating_duration_since(last).as_secs_f64() / per_token;
            self.tokens = (self.tokens + refills).min(cap);
            self.reserve = (self.reserve + refills * RESERVE_REFILL).min(URGENT_RESERVE);
        }
        self.refilled = Some(now);
    }

    /// The next request that may go at `now`, in queue order (see the module's documentation),
    /// or when to ask again.
    pub fn poll(&mut self, now: Instant) -> Poll {
        if self.queued() == 0 {
            return Poll::Idle;
        }
        if let Some(until) = self.paused_until(now) {
            return Poll::WaitUntil(until);
        }
        if self.limits.max_concurrent.is_some_and(|m| self.in_flight >= m) {
            return Poll::Idle;
        }
        self.refill(now);
        let renewal = self.renewals.keys().next().copied();
        let miss = self.misses.front().copied();
        self.held_for_misses.retain(|(_, until)| *until > now);
        let held = (self.held_for_misses.iter().map(|h| h.0).min()).zip(self.held_for_misses.iter().map(|h| h.1).min());
        // A miss that gave up keeps its place in line (when it first arrived) while it is away.
        let urgent_first = |urgent_at: Instant, arrived: Option<Instant>| {
            let arrived = match (arrived, held) {
                (Some(a), Some((h, _))) => Some(a.min(h)),
                (a, h) => a.or(h.map(|(h, _)| h)),
            };
            urgent_at <= now && arrived.is_none_or(|a| urgent_at <= a)
        };
        // (A hair below one is one: rounding in the refill must not make a caller wait a
        // microsecond at a time.)
        let bucket_wait = match self.limits.rate {
            Some(rate) if self.tokens < 1.0 - 1e-9 => Some(Duration::from_secs_f64(
                ((1.0 - self.tokens) * self.per_token(rate)).max(1e-6),
            )),
            _ => None,
        };
        // A turn kept for a miss that was told to come back is not a renewal's, unless the
        // renewal was urgent before that miss came.
        let renewals_wait = match (bucket_wait, held, miss) {
            (Some(wait), _, _) => Some(now + wait),
            (None, Some((_, until)), None) => match renewal {
                Some((urgent_at, _)) if urgent_first(urgent_at, None) => None,
                _ => Some(until),
            },
            (None, _, _) => None,
        };
        if let Some(ready) = renewals_wait {
            let Some(key @ (urgent_at, ticket)) = renewal else {
                return Poll::WaitUntil(ready);
            };
            // The earliest renewal may draw on the reserve once it is urgent, or wait for it.
            let Some(rate) = self.limits.rate else {
                return Poll::WaitUntil(ready);
            };
            if urgent_at <= now && self.reserve >= 1.0 - 1e-9 {
                self.renewals.remove(&key);
                self.reserve -= 1.0;
                self.in_flight += 1;
                self.sent += 1;
                return Poll::Go(ticket);
            }
            let reserve_wait = ((1.0 - self.reserve) * self.per_token(rate) / RESERVE_REFILL).max(1e-6);
            let reserve_go = urgent_at.max(now + Duration::from_secs_f64(reserve_wait));
            return Poll::WaitUntil(ready.min(reserve_go));
        }
        let renewal_first = match (renewal, miss) {
            (Some((urgent_at, _)), Some((arrived, _))) => urgent_first(urgent_at, Some(arrived)),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let ticket = match (renewal_first, renewal, miss) {
            (true, Some(key), _) => {
                self.renewals.remove(&key);
                key.1
            }
            (_, _, Some((_, t))) => {
                self.misses.pop_front();
                // One of the misses the turns were kept for (or another) has had its turn.
                self.held_for_misses.pop_front();
                t
            }
            _ => return Poll::Idle,
        };
        self.in_flight += 1;
        if self.limits.rate.is_some() {
            self.tokens -= 1.0;
        }
        self.sent += 1;
        Poll::Go(ticket)
    }

    /// How many misses are queued ahead of `ticket` (`None`: it is not a queued miss).
    pub fn misses_ahead(&self, ticket: u64) -> Option<usize> {
        self.misses.iter().position(|(_, t)| *t == ticket)
    }

    /// How long a miss with `ahead` misses before it would wait for its turn, as far as the
    /// pause and the bucket tell (requests in flight aside): what a caller that cannot wait is
    /// told to come back after.
    pub fn turn_in(&mut self, now: Instant, ahead: usize) -> Duration {
        let paused = self.paused_until(now).map_or(Duration::ZERO, |u| u - now);
        let Some(rate) = self.limits.rate else { return paused };
        self.refill(now);
        let per_token = self.per_token(rate);
        let needed = (ahead as f64 + 1.0 - self.tokens).max(0.0);
        paused.max(Duration::from_secs_f64(needed * per_token))
    }

    /// Takes out a queued miss whose caller will not wait any longer, and says when to come back:
    /// when its turn would come, as far as the pause and the bucket tell (at least
    /// [`MIN_RETRY`]). Until then and [`MISS_HOLD`] after, the miss keeps its place in line (a
    /// turn is kept for it against renewals that became urgent after it came, or are not urgent),
    /// so the caller that comes back as told is not overtaken by renewals queued meanwhile (on an
    /// agent whose renewals use its whole `rate`, it would otherwise never find a turn free).
    /// `None`: the ticket was not a queued miss.
    pub fn give_up(&mut self, ticket: u64, now: Instant) -> Option<Duration> {
        let ahead = self.misses_ahead(ticket)?;
        let arrived = self.misses.get(ahead).map_or(now, |(a, _)| *a);
        self.cancel(ticket);
        let told = self.turn_in(now, ahead).max(MIN_RETRY);
        let until = now + told + MISS_HOLD;
        self.held_for_misses.retain(|(_, u)| *u > now);
        if self.held_for_misses.len() >= MAX_HOLDS {
            self.held_for_misses.pop_front();
        }
        self.held_for_misses.push_back((arrived, until));
        Some(told)
    }

    /// Undoes a [`Poll::Go`] whose caller had gone: it sent nothing.
    pub fn unsent(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(rate) = self.limits.rate {
            self.tokens = (self.tokens + 1.0).min(f64::from(rate.count));
        }
        self.sent = self.sent.saturating_sub(1);
    }

    /// A request let through got no answer (the provider could not be reached): it gives a
    /// token back to the urgent renewals' reserve.
    pub fn no_answer(&mut self, now: Instant) {
        self.refill(now);
        self.reserve = (self.reserve + 1.0).min(URGENT_RESERVE);
    }

    /// A request let through has finished.
    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The provider asked for a pause (429 or 503 with `Retry-After`): nothing is sent to it
    /// until `retry_after` (at most [`MAX_PAUSE`]) plus up to [`PAUSE_JITTER`] of it (`unit` in
    /// 0..1 picks where) has passed. A longer running pause is kept.
    ///
    /// With a `rate`, the refused exchange gives its token back (it did not use the provider's
    /// capacity), and the bucket's next token comes at a random point of a window after the
    /// pause: agents refused in the same second would otherwise all come back at its end.
    pub fn pause(&mut self, now: Instant, retry_after: Duration, unit: f64) -> Instant {
        let base = retry_after.min(MAX_PAUSE);
        let unit = unit.clamp(0.0, 1.0);
        let until = now + base.mul_f64(1.0 + PAUSE_JITTER * unit);
        self.pauses += 1;
        let until = self.paused_until.map_or(until, |u| u.max(until));
        self.paused_until = Some(until);
        if let Some(rate) = self.limits.rate {
            self.refill(now);
            let per_token = self.per_token(rate);
            self.tokens = (self.tokens + 1.0).min(f64::from(rate.count));
            self.reserve = (self.reserve + 1.0).min(URGENT_RESERVE);
            let pause = (until - now).as_secs_f64() / per_token;
            self.tokens = self.tokens.min(1.0 - pause - unit * REPHASE);
        }
        until
    }
}

/// What `status` and `/metrics` show of one provider's limiter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimiterView {
    pub provider: String,
    pub queued: usize,
    pub in_flight: u32,
    /// Seconds left of a pause the provider asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_for: Option<f64>,
    pub pauses: u64,
    pub sent: u64,
}

struct Inner {
    gate: Gate,
    waiting: HashMap<u64, oneshot::Sender<()>>,
    /// The time a timer task will pump the gate at, if one is armed.
    timer: Option<Instant>,
    spacing: Spacing,
}

/// A [`Gate`] for async callers: [`Limiter::acquire`] waits for a turn.
pub struct Limiter {
    name: String,
    inner: Mutex<Inner>,
    /// How long a miss waits in the queue at most before its caller is told to retry.
    miss_wait: RwLock<Duration>,
}

impl Limiter {
    pub fn new(name: &str, limits: Limits, miss_wait: Duration) -> Arc<Limiter> {
        Arc::new(Limiter {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                gate: Gate::new(limits).with_fill(fastrand::f64()),
                waiting: HashMap::new(),
                timer: None,
                spacing: Spacing::new(Instant::now(), fastrand::f64()),
            }),
            miss_wait: RwLock::new(miss_wait),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets through every queued request the gate allows now. When the gate says "not before
    /// T" (the bucket refills, a pause ends), one timer task pumps again at T, so waiters sleep on
    /// their own turn only and a long queue does not wake all at once.
    fn pump(self: &Arc<Self>) {
        let mut inner = self.lock();
        loop {
            match inner.gate.poll(Instant::now()) {
                Poll::Go(ticket) => {
                    let sent = inner.waiting.remove(&ticket).is_some_and(|tx| tx.send(()).is_ok());
                    if !sent {
                        inner.gate.unsent();
                    }
                }
                Poll::WaitUntil(t) => {
                    if inner.timer.is_none_or(|armed| armed > t) {
                        inner.timer = Some(t);
                        let limiter = Arc::downgrade(self);
                        tokio::spawn(async move {
                            tokio::time::sleep_until(t).await;
                            if let Some(l) = limiter.upgrade() {
                                {
                                    let mut inner = l.lock();
                                    if inner.timer == Some(t) {
                                        inner.timer = None;
                                    }
                                }
                                l.pump();
                            }
                        });
                    }
                    return;
                }
                Poll::Idle => return,
            }
        }
    }

    /// Waits for a turn to send one request to the provider. A miss that cannot go within the
    /// wait limit (the provider is paused, or the queue is long) gets an error that says when to
    /// retry; a renewal waits for as long as it takes.
    pub async fn acquire(self: &Arc<Self>, want: Want) -> Result<Permit, ProviderError> {
        let (tx, mut rx) = oneshot::channel();
        let started = Instant::now();
        let ticket = {
            let mut inner = self.lock();
            let t = inner.gate.enqueue(want, started);
            inner.waiting.insert(t, tx);
            t
        };
        let give_up = (want == Want::Miss).then(|| started + *self.miss_wait.read().unwrap_or_else(|p| p.into_inner()));
        let mut queued = Queued {
            limiter: self,
            ticket: Some(ticket),
        };
        self.pump();
        loop {
            tokio::select! {
                biased;
                granted = &mut rx => {
                    queued.ticket = None;
                    return match granted {
                        Ok(()) => Ok(Permit { limiter: self.clone(), done: false }),
                        Err(_) => Err(ProviderError::local("the provider limiter was dropped")),
                    };
                }
                _ = sleep_until(give_up) => {}
            }
            if give_up.is_some_and(|g| Instant::now() >= g) {
                let mut inner = self.lock();
                if inner.waiting.remove(&ticket).is_some() {
                    queued.ticket = None;
                    let now = Instant::now();
                    let retry = inner.gate.give_up(ticket, now).unwrap_or(MIN_RETRY);
                    let paused = inner.gate.paused_until(now).is_some();
                    let mut e = ProviderError::unreachable(format!(
                        "provider {:?} is {}; this request waited {}s for a turn",
                        self.name,
                        if paused {
                            "paused: it answered 429/503 with Retry-After"
                        } else {
                            "busy: max_concurrent or rate of this provider is reached"
                        },
                        (now - started).as_secs()
                    ));
                    e.retry_after = Some(retry);
                    return Err(e);
                }
                // Granted meanwhile: the permit is in `rx`.
            }
        }
    }

    /// The exchange got no answer (see [`Gate::no_answer`]).
    pub fn no_answer(&self) {
        self.lock().gate.no_answer(Instant::now());
    }

    /// The provider asked to pause (429/503 with `Retry-After`).
    pub fn pause(&self, retry_after: Duration) {
        let until = self.lock().gate.pause(Instant::now(), retry_after, fastrand::f64());
        tracing::warn!(
            provider = %self.name,
            pause_s = format!("{:.1}", until.saturating_duration_since(Instant::now()).as_secs_f64()),
            "the provider asked to slow down (Retry-After); pausing every request to it"
        );
    }

    pub fn set_limits(self: &Arc<Self>, limits: Limits, miss_wait: Duration) {
        self.lock().gate.set_limits(limits);
        *self.miss_wait.write().unwrap_or_else(|p| p.into_inner()) = miss_wait;
        self.pump();
    }

    pub fn view(&self) -> LimiterView {
        let inner = self.lock();
        let now = Instant::now();
        LimiterView {
            provider: self.name.clone(),
            queued: inner.gate.queued(),
            in_flight: inner.gate.in_flight(),
            paused_for: inner.gate.paused_until(now).map(|u| (u - now).as_secs_f64()),
            pauses: inner.gate.pauses,
            sent: inner.gate.sent,
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Takes a ticket out of the queue if its waiter goes away before its turn.
struct Queued<'a> {
    limiter: &'a Arc<Limiter>,
    ticket: Option<u64>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            let mut inner = self.limiter.lock();
            if inner.waiting.remove(&t).is_some() {
                inner.gate.cancel(t);
            }
        }
    }
}

/// A turn to send one request; the next waiter goes when it is dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    done: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.limiter.lock().gate.finished();
            self.limiter.pump();
        }
    }
}

/// One limiter per provider, by name, kept across reloads.
#[derive(Default)]
pub struct Limiters {
    by_provider: RwLock<HashMap<String, Arc<Limiter>>>,
}

impl Limiters {
    /// Makes or updates the limiter of each provider; limiters of providers no longer
    /// configured are dropped.
    pub fn configure(&self, providers: &[(String, Limits)], miss_wait: Duration) {
        let mut map = self.by_provider.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|name, _| providers.iter().any(|(n, _)| n == name));
        for (name, limits) in providers {
            match map.get(name) {
                Some(l) => l.set_limits(*limits, miss_wait),
                None => {
                    map.insert(name.clone(), Limiter::new(name, *limits, miss_wait));
                }
            }
        }
    }

    pub fn get(&self, provider: &str) -> Option<Arc<Limiter>> {
        self.by_provider
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(provider)
            .cloned()
    }

    /// When to renew `t`, a token of `spec`'s provider ([`Spacing::place`]: a turn of its `rate` apart).
    pub(crate) fn renewal_at(&self, spec: &Spec, t: &IssuedToken, s: &RefreshSettings) -> Instant {
        let Some(l) = self.get(&spec.identity.provider) else {
            return t.issued_at + refresh_in(t.lifetime, s, jitter_unit());
        };
        let Inner { gate, spacing, .. } = &mut *l.lock();
        let turn = gate.limits().rate.map(|r| r.per / r.count.max(1));
        spacing.place(Instant::now(), t.issued_at, t.lifetime, s, turn, jitter_unit())
    }

    /// Every provider's limiter, by name.
    pub fn views(&self) -> Vec<LimiterView> {
        let mut v: Vec<LimiterView> = self
            .by_provider
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| l.view())
            .collect();
        v.sort_by(|a, b| a.provider.cmp(&b.provider));
        v
    }
}

/// Runs `exchange` in its turn at `provider`'s limiter, and pauses the provider when the answer
/// carries `Retry-After`.
pub(crate) async fn limited<F>(
    limiters: &Limiters,
    provider: &str,
    want: Want,
    exchange: F,
) -> Result<crate::token::IssuedToken, ProviderError>
where
    F: std::future::Future<Output = Result<crate::token::IssuedToken, ProviderError>>,
{
    let Some(limiter) = limiters.get(provider) else {
        return exchange.await;
    };
    let permit = limiter.acquire(want).await?;
    let result = exchange.await;
    if let Err(e) = &result {
        match e.retry_after {
            Some(ra) => limiter.pause(ra),
            None if e.kind == crate::error::ProviderErrorKind::Unreachable => limiter.no_answer(),
            None => {}
        }
    }
    drop(permit);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: Option<u32>, rate: Option<(u32, u64)>) -> Limits {
        Limits {
            max_concurrent: max,
            rate: rate.map(|(count, secs)| Rate {
                count,
                per: Duration::from_secs(secs),
            }),
        }
    }

    fn renewal(now: Instant, deadline_in: u64) -> Want {
        Want::Renewal {
            deadline: now + Duration::from_secs(deadline_in),
            lifetime: Duration::from_secs(3600),
        }
    }

    #[test]
    fn misses_go_before_renewals_until_a_renewal_nears_its_deadline() {
        let t0 = Instant::now();
        let mut g = Gate::new(limits(Some(1), None));
        let far = g.enqueue(renewal(t0, 700), t0);
        let near = g.enqueue(renewal(t0, 600), t0);
        let m1 = g.enqueue(Want::Miss, t0);
        assert_eq!(g.poll(t0), Poll::Go(m1), "the miss goes first");
        assert_eq!(g.poll(t0), Poll::Idle, "max_concurrent = 1");
        g.finished();
        let m2 = g.enqueue(Want::Miss, t0 + Duration::from_secs(1));
        assert_eq!(g.poll(t0 + Duration::from_secs(1)), Poll::Go(m2));
        g.finished();
        assert_eq!(
            g.poll(t0 + Duration::from_secs(2)),
            Poll::Go(near),
            "earliest deadline first"
        );
        g.finished();
        // 120 s before its deadline, a renewal competes with misses by that time.
        let t = t0 + Duration::from_secs(590);
        let late_miss = g.enqueue(Want::Miss, t);
        assert_eq!(g.poll(t), Poll::Go(far), "urgent since t0+580 s, before the miss came");
        g.finished();
        assert_eq!(g.poll(t), Poll::Go(late_miss));
        assert_eq!(g.queued(), 0);
    }

    #[test]
    fn the_bucket_spaces_requests_and_a_pause_stops_everything() {
        let t0 = Instant::now();
        let mut g = Gate::new(limits(None, Some((2, 1))));
        let tickets: Vec<u64> = (0..5).map(|_| g.enqueue(Want::Miss, t0)).collect();
        assert_eq!(g.poll(t0), Poll::Go(tickets[0]));
        assert_eq!(g.poll(t0), Poll::Go(tickets[1]), "a burst of `count`");
        assert_eq!(g.poll(t0), Poll::WaitUntil(t0 + Duration::from_millis(500)));
        assert_eq!(g.poll(t0 + Duration::from_millis(500)), Poll::Go(tickets[2]));
        let until = g.pause(t0 + Duration::from_millis(500), Duration::from_secs(2), 0.5);
        assert_eq!(
            until,
            t0 + Duration::from_millis(2700),
            "at 0.5 s: 2 s + 20 % × 0.5 of jitter"
        );
        assert_eq!(g.poll(t0 + Duration::from_secs(2)), Poll::WaitUntil(until));
        // The bucket starts again 0.5 × a quarter of a token (62.5 ms) after the pause.
        let resumed = until + Duration::from_micros(62_500);
        assert_eq!(g.poll(until), Poll::WaitUntil(resumed));
        assert_eq!(g.poll(resumed), Poll::Go(tickets[3]));
        assert_eq!(g.misses_ahead(tickets[4]), Some(0));
        assert_eq!(g.turn_in(resumed, 0), Duration::from_millis(500), "the next token");
        assert_eq!(
            g.turn_in(resumed, 2),
            Duration::from_millis(1500),
            "two ahead: 0.5 s a token"
        );
        assert!(g.cancel(tickets[4]));
        assert_eq!(g.poll(resumed), Poll::Idle);
        assert_eq!((g.sent, g.pauses), (4, 1));
    }

    /// One exchange per 100 s: a refused exchange gives its token back, so an agent the provider
    /// refused sends again when the pause ends, not a whole refill later; agents refused in the
    /// same second resume spread over a quarter of a refill after their pauses.
    #[test]
    fn a_refused_exchange_gives_its_token_back_and_agents_resume_spread_out() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let resume = |unit: f64| {
            let mut g = Gate::new(limits(None, Some((1, 100))));
            let t = g.enqueue(Want::Miss, t0);
            assert_eq!(g.poll(t0), Poll::Go(t));
            let until = g.pause(t0, s(5), unit);
            g.finished();
            let again = g.enqueue(Want::Miss, t0);
            match g.poll(until) {
                Poll::Go(t) if t == again => until,
                Poll::WaitUntil(at) => {
                    assert_eq!(g.poll(at), Poll::Go(again));
                    at
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(resume(0.0), t0 + s(5), "at the pause's end: the refused token is back");
        assert_eq!(resume(1.0), t0 + s(6) + s(25), "6 s of pause, then a quarter of 100 s");
        let mid = resume(0.5) - t0;
        assert!(mid > s(17) && mid < s(19), "{mid:?}");
    }

    #[test]
    fn an_urgent_renewal_draws_on_the_reserve_when_the_bucket_is_empty_and_others_wait() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // One exchange per 100 s; the bucket is spent.
        let mut g = Gate::new(limits(None, Some((1, 100)))).with_fill(1.0);
        let first = g.enqueue(Want::Miss, t0);
        assert_eq!(g.poll(t0), Poll::Go(first));
        // Not urgent (deadline in 10 min): waits for the bucket, 100 s.
        let calm = g.enqueue(renewal(t0, 600), t0);
        assert_eq!(g.poll(t0), Poll::WaitUntil(t0 + s(100)));
        // Urgent (deadline in 60 s): goes on the reserve now, twice (URGENT_RESERVE), then waits
        // for the bucket (100 s) before the reserve's refill (half the rate: 200 s a token).
        let a = g.enqueue(renewal(t0, 60), t0);
        assert_eq!(g.poll(t0), Poll::Go(a));
        let b = g.enqueue(renewal(t0, 61), t0);
        assert_eq!(g.poll(t0), Poll::Go(b));
        let c = g.enqueue(renewal(t0, 62), t0);
        assert_eq!(g.poll(t0), Poll::WaitUntil(t0 + s(100)));
        // A miss is not helped by the reserve; the urgent renewal became urgent before it came.
        let miss = g.enqueue(Want::Miss, t0 + s(1));
        assert_eq!(g.poll(t0 + s(100)), Poll::Go(c));
        assert_eq!(g.poll(t0 + s(100)), Poll::WaitUntil(t0 + s(200)));
        assert_eq!(g.poll(t0 + s(200)), Poll::Go(miss));
        assert_eq!(g.poll(t0 + s(300)), Poll::Go(calm));
        assert_eq!(g.sent, 6);
    }

    #[test]
    fn an_exchange_that_got_no_answer_gives_the_reserve_its_token_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Gate::new(limits(None, Some((1, 100)))).with_fill(0.0);
        let tickets: Vec<u64> = (0..3).map(|i| g.enqueue(renewal(t0, 60 + i), t0)).collect();
        assert_eq!(g.poll(t0), Poll::Go(tickets[0]));
        assert_eq!(g.poll(t0), Poll::Go(tickets[1]));
        // The provider is down: both attempts come back unanswered and give their tokens back.
        g.no_answer(t0 + s(1));
        g.finished();
        g.no_answer(t0 + s(1));
        g.finished();
        assert_eq!(g.poll(t0 + s(1)), Poll::Go(tickets[2]), "the reserve is full again");
        // A refused one (429) gives its token back too, usable after the pause.
        let until = g.pause(t0 + s(2), s(5), 0.0);
        g.finished();
        let again = g.enqueue(renewal(t0, 70), t0 + s(2));
        assert_eq!(g.poll(t0 + s(2)), Poll::WaitUntil(until));
        assert_eq!(g.poll(until), Poll::Go(again));
    }

    /// One exchange per 100 s, and renewals queued all along: a miss that gave up is told when
    /// the next turn comes, and that turn is kept for it (2 s after), so its caller, coming back
    /// as told, is served instead of finding the turn taken by a renewal again.
    #[test]
    fn a_miss_that_gave_up_finds_its_turn_kept_when_it_comes_back_as_told() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Gate::new(limits(None, Some((1, 100)))).with_fill(0.0);
        let renewals: Vec<u64> = (0..2).map(|i| g.enqueue(renewal(t0, 600 + i), t0)).collect();
        let miss = g.enqueue(Want::Miss, t0);
        assert_eq!(g.poll(t0), Poll::WaitUntil(t0 + s(100)));
        // The caller waited 10 s (upstream_timeout) and goes away, told to come back in 90 s.
        assert_eq!(g.give_up(miss, t0 + s(10)), Some(s(90)));
        assert_eq!(g.queued(), 2, "the miss left the queue");
        assert_eq!(
            g.poll(t0 + s(100)),
            Poll::WaitUntil(t0 + s(102)),
            "the turn is kept for the caller that was told to come back"
        );
        let again = g.enqueue(Want::Miss, t0 + s(101));
        assert_eq!(g.poll(t0 + s(101)), Poll::Go(again));
        // A turn kept for no one is given to the renewals once the hold ends.
        assert_eq!(g.give_up(renewals[0], t0 + s(101)), None, "not a miss");
        assert_eq!(g.poll(t0 + s(201)), Poll::Go(renewals[0]));
        let late = g.enqueue(Want::Miss, t0 + s(202));
        assert_eq!(g.give_up(late, t0 + s(210)), Some(s(91)));
        assert_eq!(
            g.poll(t0 + s(303)),
            Poll::Go(renewals[1]),
            "its caller did not come back"
        );
    }

    /// The caller that gave up keeps its place in line, not more: a renewal urgent since before
    /// it came still goes first (renewals near their deadline are not starved by misses); one
    /// that became urgent after it waits for it.
    #[test]
    fn a_miss_that_gave_up_keeps_its_place_behind_renewals_urgent_before_it_came() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Gate::new(limits(Some(1), None));
        let busy = g.enqueue(Want::Miss, t0);
        assert_eq!(g.poll(t0), Poll::Go(busy));
        let early = g.enqueue(renewal(t0, 100), t0); // urgent since t0 - 20 s
        let miss = g.enqueue(Want::Miss, t0 + s(1));
        let late = g.enqueue(renewal(t0, 125), t0 + s(1)); // urgent since t0 + 5 s
        assert_eq!(g.give_up(miss, t0 + s(11)), Some(MIN_RETRY));
        g.finished();
        assert_eq!(g.poll(t0 + s(11)), Poll::Go(early), "urgent before the miss came");
        g.finished();
        assert_eq!(
            g.poll(t0 + s(11)),
            Poll::WaitUntil(t0 + s(14)),
            "urgent only after the miss came: the turn is kept (1 s told + 2 s)"
        );
        let again = g.enqueue(Want::Miss, t0 + s(12));
        assert_eq!(g.poll(t0 + s(12)), Poll::Go(again));
        g.finished();
        assert_eq!(g.poll(t0 + s(12)), Poll::Go(late));
    }

    /// Each kept turn ends on its own: a miss that gives up while another's turn is still kept
    /// does not stretch the first one's place in line (else renewals urgent after the first miss
    /// would wait behind misses for as long as misses kept giving up).
    #[test]
    fn each_kept_turn_ends_on_its_own() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Gate::new(limits(Some(1), None));
        let busy = g.enqueue(Want::Miss, t0);
        assert_eq!(g.poll(t0), Poll::Go(busy));
        let first = g.enqueue(Want::Miss, t0 + s(1));
        let late = g.enqueue(renewal(t0, 125), t0 + s(1)); // urgent since t0 + 5 s
        assert_eq!(g.give_up(first, t0 + s(11)), Some(MIN_RETRY)); // kept until t0 + 14 s
        let second = g.enqueue(Want::Miss, t0 + s(12));
        assert!(g.give_up(second, t0 + s(13)).is_some()); // kept until t0 + 16 s at least
        g.finished();
        assert_eq!(
            g.poll(t0 + s(15)),
            Poll::Go(late),
            "urgent before the second miss came, and the first one's turn is over"
        );
    }

    /// Through `limited`, as the agent calls it: at one exchange per 100 s, the exchange after a
    /// 429 with `Retry-After: 5` goes 5 to 31 s later (the pause, its jitter and a quarter of a
    /// refill at most), not a refill later.
    #[tokio::test(start_paused = true)]
    async fn after_a_429_the_next_exchange_waits_for_the_pause_not_for_a_refill() {
        let limiters = Limiters::default();
        limiters.configure(
            &[("corp".into(), limits(None, Some((1, 100))))],
            Duration::from_secs(600),
        );
        let sent = Arc::new(Mutex::new(Vec::new()));
        for answer in [Some(Duration::from_secs(5)), None] {
            let sent = sent.clone();
            let exchange = async move {
                sent.lock().unwrap().push(Instant::now());
                let mut e = ProviderError::rejected("slow_down", "busy");
                e.retry_after = answer;
                Err(e)
            };
            let _ = limited(&limiters, "corp", renewal(Instant::now(), 3600), exchange).await;
        }
        let sent = sent.lock().unwrap();
        let waited = sent[1] - sent[0];
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        assert!(waited <= Duration::from_secs(31), "{waited:?}");
        assert_eq!(limiters.views()[0].pauses, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_that_cannot_get_a_turn_is_told_when_to_retry() {
        let l = Limiter::new("corp", limits(Some(1), None), Duration::from_secs(3));
        let held = l.acquire(Want::Miss).await.unwrap();
        let e = l.acquire(Want::Miss).await.err().unwrap();
        assert!(e.message.contains("busy"), "{}", e.message);
        assert_eq!(l.view().queued, 0, "the one that gave up left the queue");
        drop(held);
        l.pause(Duration::from_secs(10));
        let e = l.acquire(Want::Miss).await.err().unwrap();
        assert!(e.message.contains("paused"), "{}", e.message);
        assert!(e.retry_after.unwrap() >= Duration::from_secs(7), "{:?}", e.retry_after);
        let renew = l.acquire(renewal(Instant::now(), 3600)).await.unwrap();
        assert_eq!(l.view().in_flight, 1, "a renewal waits out the pause");
        drop(renew);
        assert_eq!((l.view().in_flight, l.view().sent), (0, 2));
    }

    /// As the agent waits: a caller that gave up behind a renewal, told `Retry-After`, is served
    /// when it comes back as told, before the renewal queued all along.
    #[tokio::test(start_paused = true)]
    async fn a_caller_that_comes_back_as_told_goes_before_the_renewal_queued_all_along() {
        let l = Limiter::new("corp", limits(None, Some((1, 100))), Duration::from_secs(10));
        l.lock().gate = Gate::new(limits(None, Some((1, 100)))).with_fill(0.0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let renewing = {
            let (l, order) = (l.clone(), order.clone());
            tokio::spawn(async move {
                let _p = l.acquire(renewal(Instant::now(), 3600)).await.unwrap();
                order.lock().unwrap().push("renewal");
            })
        };
        tokio::task::yield_now().await;
        let told = l.acquire(Want::Miss).await.err().unwrap().retry_after.unwrap();
        assert_eq!(told, Duration::from_secs(90), "the next token, 100 s after the start");
        tokio::time::sleep(told + Duration::from_millis(500)).await;
        let served = l.acquire(Want::Miss).await;
        let message = served.as_ref().err().map(|e| e.message.clone());
        assert!(served.is_ok(), "the caller that came back was not served: {message:?}");
        order.lock().unwrap().push("miss");
        drop(served);
        renewing.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["miss", "renewal"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_behind_the_bucket_is_let_through_one_turn_at_a_time() {
        let l = Limiter::new("corp", limits(None, Some((1, 1))), Duration::from_secs(60));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire(renewal(Instant::now(), 3600)).await.map(|_| Instant::now())
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap().unwrap());
        }
        at.sort();
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(999), "{at:?}");
        }
        assert_eq!((l.view().sent, l.view().queued), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_providers_rate_spaces_the_renewals_of_its_keys_and_no_rate_does_not() {
        use crate::token::Secret;
        let spec = super::super::tests::spec_at;
        let limiters = Limiters::default();
        let (spaced, free) = (limits(None, Some((1, 100))), limits(Some(4), None));
        limiters.configure(
            &[("corp".into(), spaced), ("open".into(), free)],
            Duration::from_secs(10),
        );
        let settings = super::super::schedule::tests::settings();
        let hour = Duration::from_secs(3600);
        // Four tokens of each provider issued at once; renewals due 2,700 - 3,060 s later.
        let token = || IssuedToken::new(Secret::new("t".into()), "at".into(), String::new(), hour, None);
        let mut at: Vec<Duration> = (0..4)
            .map(|_| {
                let t = token();
                limiters.renewal_at(&spec("corp"), &t, &settings) - t.issued_at
            })
            .collect();
        at.sort();
        assert!(at.windows(2).all(|w| w[1] - w[0] >= Duration::from_secs(100)), "{at:?}");
        // The band (360 s) holds three or four slots a turn apart, as the agent's random phase
        // falls: a fourth renewal without one takes the first slot after the band.
        assert!(at[..3].iter().all(|a| (2700..=3060).contains(&a.as_secs())), "{at:?}");
        assert!((2700..=3420).contains(&at[3].as_secs()), "{at:?}");
        // Without a rate (or without a limiter) each renewal is at the random time of its band.
        for provider in ["open", "unconfigured"] {
            for _ in 0..4 {
                let t = token();
                let due = limiters.renewal_at(&spec(provider), &t, &settings) - t.issued_at;
                assert!((2700..=3060).contains(&due.as_secs()), "{due:?}");
            }
        }
    }
}
