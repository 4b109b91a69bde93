//! Renewal and hand-out as pure functions of time: when a token may still be handed out, when
//! it is renewed (at `refresh_at` of its lifetime, ± jitter, before the hand-out floor), and how
//! long a failed renewal waits (exponential backoff with full jitter, at least `Retry-After`).

use std::time::Duration;

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

/// A uniform draw in -1..1: where in the jitter band a renewal lands.
pub(super) fn jitter_unit() -> f64 {
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
