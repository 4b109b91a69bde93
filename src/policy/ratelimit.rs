//! Per-process request rates for roles with `rate` (every agent role: 10/s unless it says
//! otherwise): a token bucket per (role, calling process).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Rate;

/// Beyond this many buckets, idle full ones are dropped.
const MAX_BUCKETS: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<(String, i64), Bucket>>,
}

impl RateLimiter {
    /// Takes one request from the bucket of `(role, process)`; `Err` carries how long until the
    /// next one is allowed. The bucket holds `rate.count` requests and refills at the rate.
    pub fn check(&self, role: &str, process: i64, rate: Rate) -> Result<(), Duration> {
        let now = Instant::now();
        let per_token = rate.per.as_secs_f64() / f64::from(rate.count);
        let capacity = f64::from(rate.count);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| now.duration_since(b.last).as_secs_f64() < capacity * per_token);
        }
        let b = buckets.entry((role.to_string(), process)).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() / per_token;
        b.tokens = (b.tokens + refill).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) * per_token))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_rate_and_refills() {
        let rl = RateLimiter::default();
        let rate = Rate {
            count: 10,
            per: Duration::from_secs(1),
        };
        for _ in 0..10 {
            rl.check("bot", 42, rate).unwrap();
        }
        let wait = rl.check("bot", 42, rate).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        // Another process, or the same process under another role, has its own bucket.
        rl.check("bot", 43, rate).unwrap();
        rl.check("other", 42, rate).unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        rl.check("bot", 42, rate).unwrap();
        assert!(rl.check("bot", 42, rate).is_err());
    }
}
