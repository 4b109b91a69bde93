//! Per-process request rates for roles with `rate` (every agent role: 10/s unless it says
//! otherwise): a token bucket per (role, calling process).
//!
//! A bucket is one atomic: the time at which it will be full again (the generic cell rate
//! algorithm), moved on by one request's share of the period with a compare-and-swap. Taking
//! from it takes no lock, and the map of buckets is locked for writing only to add one (a
//! process's first request under a role); a request handed out again on the same connection
//! (`agent/again.rs`) holds its bucket and does not look in the map at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Rate;

/// Beyond this many buckets, idle full ones no request holds are dropped.
const MAX_BUCKETS: usize = 4096;

/// One (role, process)'s bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// When the bucket is full again, in nanoseconds since the limiter's epoch: each request
    /// moves it one request's share of the period later (from now, if it was already past).
    full_at: AtomicU64,
}

/// One process's buckets, by role (a process rarely asks under more than one or two roles).
type Roles = Vec<(Box<str>, Arc<Bucket>)>;

#[derive(Default)]
struct Buckets {
    by_process: HashMap<i64, Roles>,
    count: usize,
}

pub(crate) struct RateLimiter {
    epoch: Instant,
    buckets: RwLock<Buckets>,
}

impl Default for RateLimiter {
    fn default() -> RateLimiter {
        RateLimiter {
            epoch: Instant::now(),
            buckets: RwLock::default(),
        }
    }
}

impl RateLimiter {
    /// Takes one request from the bucket of `(role, process)`; `Err` carries how long until the
    /// next one is allowed. The bucket holds `rate.count` requests and refills at the rate.
    pub fn check(&self, role: &str, process: i64, rate: Rate) -> Result<(), Duration> {
        self.take(&self.bucket(role, process), rate)
    }

    /// The bucket of `(role, process)`, to [`take`](Self::take) from without looking it up again.
    /// While it is held it is not dropped, so every request of the pair counts in it.
    pub fn bucket(&self, role: &str, process: i64) -> Arc<Bucket> {
        {
            let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = find(&buckets, role, process) {
                return b.clone();
            }
        }
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = find(&buckets, role, process) {
            return b.clone();
        }
        if buckets.count >= MAX_BUCKETS {
            let now = self.now();
            for roles in buckets.by_process.values_mut() {
                roles.retain(|(_, b)| Arc::strong_count(b) > 1 || b.full_at.load(Ordering::Relaxed) > now);
            }
            buckets.by_process.retain(|_, roles| !roles.is_empty());
            buckets.count = buckets.by_process.values().map(Vec::len).sum();
        }
        let b = Arc::new(Bucket {
            full_at: AtomicU64::new(0),
        });
        buckets
            .by_process
            .entry(process)
            .or_default()
            .push((role.into(), b.clone()));
        buckets.count += 1;
        b
    }

    /// Takes one request from `bucket` (see [`check`](Self::check)).
    pub fn take(&self, bucket: &Bucket, rate: Rate) -> Result<(), Duration> {
        let now = self.now();
        let per_request = nanos(rate.per) / u64::from(rate.count.max(1));
        let capacity = per_request.saturating_mul(u64::from(rate.count));
        let mut full_at = bucket.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(per_request);
            let over = (next - now).saturating_sub(capacity);
            if over > 0 {
                return Err(Duration::from_nanos(over));
            }
            match bucket
                .full_at
                .compare_exchange_weak(full_at, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => full_at = current,
            }
        }
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }
}

fn find<'a>(buckets: &'a Buckets, role: &str, process: i64) -> Option<&'a Arc<Bucket>> {
    let roles = buckets.by_process.get(&process)?;
    roles.iter().find(|(r, _)| &**r == role).map(|(_, b)| b)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

    /// Threads taking from one bucket at once get exactly its size, not one more.
    #[test]
    fn concurrent_requests_take_exactly_the_bucket() {
        let rl = Arc::new(RateLimiter::default());
        // One request per 10 hours refills: none within the test.
        let rate = Rate {
            count: 4000,
            per: Duration::from_secs(4000 * 36_000),
        };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    let bucket = rl.bucket("bot", 42);
                    // Half the threads look the bucket up each time, half hold it.
                    (0..2000)
                        .filter(|_| {
                            if t % 2 == 0 {
                                rl.check("bot", 42, rate).is_ok()
                            } else {
                                rl.take(&bucket, rate).is_ok()
                            }
                        })
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 4000);
    }

    /// A bucket a connection holds is the map's bucket even after the map was pruned: the
    /// requests handed out again and those decided afresh share one rate.
    #[tokio::test(start_paused = true)]
    async fn a_held_bucket_survives_pruning() {
        let rl = RateLimiter::default();
        let rate = Rate {
            count: 2,
            per: Duration::from_secs(1),
        };
        let held = rl.bucket("bot", 42);
        // Enough other processes to prune; every bucket is full (unused), so all may go but
        // the held one.
        for p in 0..MAX_BUCKETS as i64 {
            rl.bucket("bot", 1000 + p);
        }
        assert!(rl.buckets.read().unwrap().count < MAX_BUCKETS);
        rl.take(&held, rate).unwrap();
        rl.take(&held, rate).unwrap();
        assert!(rl.check("bot", 42, rate).is_err(), "the map still has the held bucket");
    }
}
