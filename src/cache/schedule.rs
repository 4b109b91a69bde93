//! Renewal and hand-out as pure functions of time: when a token may still be handed out, when
//! it is renewed (at `refresh_at` of its lifetime, ± jitter, before the hand-out floor), and how
//! long a failed renewal waits (exponential backoff with full jitter, at least `Retry-After`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::AgentSettings;

/// The renewal and hand-out settings of `[agent]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshSettings {
    pub refresh_at: f64,
    pub refresh_jitter: f64,
    pub min_remaining: Duration,
    pub idle_expiry: Duration,
}

impl From<&AgentSettings> for RefreshSettings {
    fn from(a: &AgentSettings) -> Self {
        RefreshSettings {
            refresh_at: a.refresh_at,
            refresh_jitter: a.refresh_jitter,
            min_remaining: a.min_remaining,
            idle_expiry: a.idle_expiry,
        }
    }
}

/// The least remaining lifetime a token may be handed out with:
/// `max(min_valid, min(min_remaining, lifetime/4))`.
pub fn hand_out_floor(lifetime: Duration, min_remaining: Duration, min_valid: Duration) -> Duration {
    min_valid.max(min_remaining.min(lifetime / 4))
}

/// When to renew a token of `lifetime`, counted from its issue: `refresh_at × lifetime` ±
/// `jitter × lifetime` (`unit` in -1..=1 picks where in the jitter band), but early enough that
/// the token is still servable (above the hand-out floor, with a small margin for the exchange
/// itself) and never sooner than a tenth of the lifetime.
pub fn refresh_in(lifetime: Duration, s: &RefreshSettings, unit: f64) -> Duration {
    let l = lifetime.as_secs_f64();
    let wanted = l * (s.refresh_at + s.refresh_jitter * unit.clamp(-1.0, 1.0));
    let floor = hand_out_floor(lifetime, s.min_remaining, Duration::ZERO).as_secs_f64();
    let margin = (l * 0.05).min(1.0);
    let latest = (l - floor - margin).max(l * 0.1);
    Duration::from_secs_f64(wanted.clamp(l * 0.1, latest))
}

/// Exponential backoff with full jitter: uniform in `[0, min(60 s, 1 s × 2^(attempt-1))]`, but at
/// least what the provider asked for with `Retry-After`.
pub fn backoff(attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
    let cap = 2f64.powi(attempt.saturating_sub(1).min(6) as i32).min(60.0);
    let d = Duration::from_secs_f64(cap * unit.clamp(0.0, 1.0));
    retry_after.map_or(d, |r| d.max(r.min(Duration::from_secs(300))))
}

/// The shortest wait of a failed renewal near its deadline (see [`renewal_retry_in`]).
pub const LAST_CHANCE: Duration = Duration::from_secs(1);

/// How long a failed renewal waits, given its `backoff` and the time left until its deadline (the
/// moment its token falls below the hand-out floor): the backoff, but at most half the time left
/// (at least [`LAST_CHANCE`]), so a renewal that keeps failing near its deadline is still tried
/// shortly before it, and a provider back from an outage is asked before the token stops being
/// served. Past the deadline, the backoff.
pub fn renewal_retry_in(backoff: Duration, until_deadline: Duration) -> Duration {
    if until_deadline.is_zero() {
        return backoff;
    }
    backoff.min((until_deadline / 2).max(LAST_CHANCE))
}

/// Where an agent places the renewals of one provider's keys, with a `rate` (one turn = one
/// token of it): on slots a turn apart, at most one renewal per slot, so the agent's renewals do
/// not queue behind one another for its bucket (queued renewals are what an outage takes a
/// renewal's margin from). The slots' phase is drawn once per agent and provider and kept for as
/// long as the agent runs, through outages and recoveries, so a fleet whose agents all renewed at
/// once after a recovery goes back to independent phases at the next renewals instead of staying
/// in step.
#[derive(Debug, Clone)]
pub struct Spacing {
    /// The slots are at `origin + (k + phase) × turn`.
    origin: Instant,
    phase: f64,
    /// Renewals placed and not yet due, by time (how many at that instant).
    planned: BTreeMap<Instant, u32>,
}

impl Spacing {
    /// No renewal placed yet; `phase` in 0..1 (at random: each agent its own).
    pub fn new(origin: Instant, phase: f64) -> Spacing {
        Spacing {
            origin,
            phase: phase.clamp(0.0, 1.0),
            planned: BTreeMap::new(),
        }
    }

    /// Renewals placed and not yet due at `now`.
    pub fn planned(&mut self, now: Instant) -> usize {
        self.forget_before(now);
        self.planned.values().map(|n| *n as usize).sum()
    }

    /// Forgets the renewals due before `now`.
    fn forget_before(&mut self, now: Instant) {
        while let Some(first) = self.planned.first_entry() {
            if *first.key() >= now {
                break;
            }
            first.remove();
        }
    }

    /// When to renew a token of `lifetime` issued at `issued_at` (`unit` in -1..=1 as for
    /// [`refresh_in`]), and notes it: without a `turn`, [`refresh_in`]'s time. With one, the free
    /// slot (one no other planned renewal is within half a turn of) nearest to that time inside
    /// the jitter band and not before `now`; when the band has none, the first free slot after
    /// it, at most [`LATER`] band widths on; when there is none either (or the band holds no
    /// slot: tokens whose band is narrower than a turn), the random time itself.
    pub fn place(
        &mut self,
        now: Instant,
        issued_at: Instant,
        lifetime: Duration,
        s: &RefreshSettings,
        turn: Option<Duration>,
        unit: f64,
    ) -> Instant {
        let wanted = issued_at + refresh_in(lifetime, s, unit);
        let Some(turn) = turn.filter(|t| !t.is_zero()).map(|t| t.as_secs_f64()) else {
            return wanted;
        };
        self.forget_before(now);
        let (early, late) = (refresh_in(lifetime, s, -1.0), refresh_in(lifetime, s, 1.0));
        let at = |t: Instant| {
            let secs = t.saturating_duration_since(self.origin).as_secs_f64()
                - self.origin.saturating_duration_since(t).as_secs_f64();
            secs / turn - self.phase
        };
        let slot = |k: f64| {
            let secs = (k + self.phase) * turn;
            match secs >= 0.0 {
                true => self.origin + Duration::from_secs_f64(secs),
                false => self
                    .origin
                    .checked_sub(Duration::from_secs_f64(-secs))
                    .unwrap_or(self.origin),
            }
        };
        let lo = at((issued_at + early).max(now)).ceil();
        let hi = at(issued_at + late).floor();
        let half = Duration::from_secs_f64(turn / 2.0);
        let free = |k: f64| {
            let t = slot(k);
            let from = t.checked_sub(half).unwrap_or(t);
            self.planned.range(from..t + half).next().is_none()
        };
        if at(issued_at + early).ceil() > hi {
            // The band holds no slot (a band narrower than a turn): the random time, not noted.
            return wanted;
        }
        let near = at(wanted).round().clamp(lo, hi.max(lo));
        let chosen = (0..=(hi - lo).max(0.0) as u32)
            .flat_map(|d| [near + f64::from(d), near - f64::from(d)])
            .find(|k| (lo..=hi).contains(k) && free(*k))
            .or_else(|| {
                // Every slot of the band is taken: the first free one after it (a renewal queued
                // behind another would take the next slot's turn, and so on), `LATER` bands on
                // at most and never past `lifetime − floor − margin`.
                let latest = refresh_in(lifetime, &RefreshSettings { refresh_at: 1.0, ..*s }, 0.0);
                let last = at(issued_at + (late + (late - early).mul_f64(LATER)).min(latest)).floor();
                (1..=(last - hi).max(0.0) as u32)
                    .map(|d| hi + f64::from(d))
                    .find(|k| free(*k))
            })
            .map_or(wanted, slot);
        *self.planned.entry(chosen).or_default() += 1;
        chosen
    }
}

/// How far after its jitter band a renewal may be placed, in band widths, when every slot of the
/// band is taken ([`Spacing::place`]).
pub const LATER: f64 = 1.0;

/// A uniform draw in -1..1: where in the jitter band a renewal lands.
pub(crate) fn jitter_unit() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The settings the cache's unit tests use: renew at 0.8 ± 0.05, 30 s floor, 30 min idle.
    pub(in crate::cache) fn settings() -> RefreshSettings {
        RefreshSettings {
            refresh_at: 0.8,
            refresh_jitter: 0.05,
            min_remaining: Duration::from_secs(30),
            idle_expiry: Duration::from_secs(1800),
        }
    }

    /// Places a renewal of a 1-hour token issued at `issued` (renewal band 2,700 - 3,060 s).
    fn place(sp: &mut Spacing, issued: Instant, turn: Option<u64>, unit: f64) -> Instant {
        let hour = Duration::from_secs(3600);
        sp.place(issued, issued, hour, &settings(), turn.map(Duration::from_secs), unit)
    }

    #[test]
    fn an_agents_renewals_are_placed_a_turn_apart_inside_their_band() {
        let t0 = Instant::now();
        let mut sp = Spacing::new(t0, 0.5);
        // Five tokens issued together, all drawn at the middle of the band: with a turn of 100 s
        // the band (360 s) holds four slots, each taken once, the fifth renewal the slot after it.
        let mut at: Vec<Duration> = (0..5).map(|_| place(&mut sp, t0, Some(100), 0.0) - t0).collect();
        at.sort();
        for w in at.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_secs(100), "{at:?}");
        }
        assert!(at[..4].iter().all(|a| (2700..=3060).contains(&a.as_secs())), "{at:?}");
        assert!(
            (3060..=3420).contains(&at[4].as_secs()),
            "one band after it at most: {at:?}"
        );
        assert_eq!(sp.planned(t0), 5);
        // Renewals past are forgotten.
        assert_eq!(sp.planned(t0 + Duration::from_secs(3000)), 2);
    }

    #[test]
    fn a_band_narrower_than_a_turn_keeps_its_random_time() {
        let t0 = Instant::now();
        let mut sp = Spacing::new(t0, 0.5);
        // Slots at 500 s + k × 1000 s: none inside the band (2700..3060 s).
        for _ in 0..2 {
            assert_eq!(place(&mut sp, t0, Some(1000), 0.0) - t0, Duration::from_secs(2880));
        }
        assert_eq!(sp.planned(t0), 0, "not noted: it takes no slot");
    }

    #[test]
    fn the_slots_keep_their_phase_whenever_the_token_was_issued() {
        let t0 = Instant::now();
        let mut sp = Spacing::new(t0, 0.25);
        let a = place(&mut sp, t0, Some(100), 0.3);
        let b = place(&mut sp, t0 + Duration::from_millis(1_234_567), Some(100), -0.6);
        let apart = (b - a).as_millis() % 100_000;
        assert!(apart <= 1 || apart >= 99_999, "{:?} apart", b - a);
        assert_eq!(
            (a - t0).as_millis() % 100_000,
            25_000,
            "the agent's phase: a quarter turn"
        );
    }

    #[test]
    fn without_a_rate_a_renewal_is_the_random_time_of_its_band() {
        let t0 = Instant::now();
        let mut sp = Spacing::new(t0, 0.5);
        let hour = Duration::from_secs(3600);
        for unit in [-1.0, 0.0, 0.0, 0.7] {
            assert_eq!(place(&mut sp, t0, None, unit), t0 + refresh_in(hour, &settings(), unit));
        }
        assert_eq!(sp.planned(t0), 0);
    }

    #[test]
    fn renewal_lands_inside_the_jitter_band_and_before_the_hand_out_floor() {
        let s = settings();
        let l = Duration::from_secs(300);
        assert_eq!(refresh_in(l, &s, 0.0), Duration::from_secs(240));
        assert_eq!(refresh_in(l, &s, 1.0), Duration::from_secs(255));
        assert_eq!(refresh_in(l, &s, -1.0), Duration::from_secs(225));
        // 4 s tokens: the floor is 1 s (lifetime/4), so renewal comes by 2.8 s at the latest.
        let short = refresh_in(Duration::from_secs(4), &s, 1.0);
        assert!(short <= Duration::from_millis(2800), "{short:?}");
        assert!(short >= Duration::from_millis(400));
    }

    #[test]
    fn the_hand_out_floor_follows_the_spec_formula() {
        let m = Duration::from_secs(30);
        assert_eq!(hand_out_floor(Duration::from_secs(3600), m, Duration::ZERO), m);
        assert_eq!(
            hand_out_floor(Duration::from_secs(60), m, Duration::ZERO),
            Duration::from_secs(15)
        );
        assert_eq!(
            hand_out_floor(Duration::from_secs(60), m, Duration::from_secs(40)),
            Duration::from_secs(40)
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_full_jitter() {
        assert_eq!(backoff(1, 1.0, None), Duration::from_secs(1));
        assert_eq!(backoff(3, 1.0, None), Duration::from_secs(4));
        assert_eq!(backoff(30, 1.0, None), Duration::from_secs(60));
        assert_eq!(backoff(30, 0.0, None), Duration::ZERO);
        assert_eq!(backoff(1, 0.5, Some(Duration::from_secs(7))), Duration::from_secs(7));
    }

    #[test]
    fn a_failed_renewal_near_its_deadline_waits_at_most_half_the_time_left() {
        let minute = Duration::from_secs(60);
        // Far from the deadline: the backoff as it is.
        assert_eq!(renewal_retry_in(minute, Duration::from_secs(600)), minute);
        // 11 s before the deadline: retried 5.5 s later, not a minute later.
        assert_eq!(
            renewal_retry_in(minute, Duration::from_secs(11)),
            Duration::from_millis(5500)
        );
        // Never sooner than a second; past the deadline, the backoff.
        assert_eq!(renewal_retry_in(minute, Duration::from_millis(300)), LAST_CHANCE);
        assert_eq!(renewal_retry_in(minute, Duration::ZERO), minute);
        assert_eq!(
            renewal_retry_in(Duration::from_secs(2), Duration::from_secs(11)),
            Duration::from_secs(2)
        );
    }
}
