//! Giving the heap's free memory back to the kernel once load falls.
//!
//! glibc's malloc keeps what a burst freed: after 1,000 concurrent connections its arenas hold
//! tens of MiB of free chunks between live ones, which neither `M_TRIM_THRESHOLD` nor
//! `M_MMAP_THRESHOLD` return (only the top of a heap is trimmed on `free`). `malloc_trim(0)` hands
//! back every free page inside the arenas too. [`run`] calls it on a blocking thread, never on a
//! request's path, when the agent's anonymous memory has grown by [`SLACK`] since the last trim
//! and stopped growing (the burst is over), at most once per [`MIN_GAP`].

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the agent's anonymous memory is looked at (one read of `/proc/self/statm`).
pub const PERIOD: Duration = Duration::from_secs(1);
/// Growth of anonymous memory since the last trim that makes a trim worth its cost.
pub const SLACK: u64 = 4 << 20;
/// Trims are at least this far apart.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// When to trim, from samples of the agent's anonymous memory (pure: the clock and the samples
/// are given).
#[derive(Debug)]
pub struct Watch {
    /// Anonymous memory right after the last trim (or at the first sample).
    floor: Option<u64>,
    /// The previous sample.
    last: u64,
    last_trim: Option<Instant>,
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            floor: None,
            last: 0,
            last_trim: None,
        }
    }

    /// Whether to trim now, given the anonymous memory `anon` (bytes) sampled at `now`: it has
    /// grown by at least [`SLACK`] over the floor, did not grow since the previous sample, and
    /// the last trim is [`MIN_GAP`] ago.
    pub fn due(&mut self, anon: u64, now: Instant) -> bool {
        let floor = *self.floor.get_or_insert(anon);
        let settled = anon <= self.last;
        self.last = anon;
        settled
            && anon >= floor.saturating_add(SLACK)
            && self.last_trim.is_none_or(|t| now.duration_since(t) >= MIN_GAP)
    }

    /// A trim ran at `now` and left `anon` bytes of anonymous memory.
    pub fn trimmed(&mut self, anon: u64, now: Instant) {
        self.floor = Some(anon);
        self.last = anon;
        self.last_trim = Some(now);
    }
}

impl Default for Watch {
    fn default() -> Watch {
        Watch::new()
    }
}

/// Trims whenever [`Watch`] says so, until `cancel`.
pub async fn run(cancel: CancellationToken) {
    let mut watch = Watch::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = cancel.cancelled() => return,
        }
        let Some(anon) = anonymous_bytes() else {
            return;
        };
        if watch.due(anon, Instant::now()) {
            // Takes each arena's lock while it walks its free chunks: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(trim).await;
            let after = anonymous_bytes().unwrap_or(anon);
            tracing::debug!(before = anon, after, "returned free heap memory to the kernel");
            watch.trimmed(after, Instant::now());
        }
    }
}

/// The process's resident anonymous memory in bytes (resident − shared pages of
/// `/proc/self/statm`), or `None` where that file cannot be read.
pub fn anonymous_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut pages = statm.split_ascii_whitespace().skip(1).map(|v| v.parse::<u64>().ok());
    let (resident, shared) = (pages.next()??, pages.next()??);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(resident.saturating_sub(shared) * u64::try_from(page).ok()?)
}

/// Returns every free page of the heap to the kernel (`malloc_trim(0)`); a no-op where the C
/// library is not glibc.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and may be called from any thread at any time; it
    // only takes the arenas' own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn trims_once_growth_stops_not_while_it_grows() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = Watch::new();
        assert!(!w.due(10 * MIB, at(0)), "the first sample sets the floor");
        assert!(!w.due(20 * MIB, at(1)), "still growing: a burst in progress");
        assert!(!w.due(40 * MIB, at(2)), "still growing");
        assert!(w.due(38 * MIB, at(3)), "settled 28 MiB over the floor");
        w.trimmed(12 * MIB, at(3));
        assert!(!w.due(12 * MIB, at(4)), "nothing more to give back");
        assert!(!w.due(15 * MIB, at(5)));
        assert!(
            !w.due(15 * MIB, at(6)),
            "settled, but less than SLACK over the new floor"
        );
    }

    #[test]
    fn trims_are_min_gap_apart() {
        let t0 = Instant::now();
        let mut w = Watch::new();
        assert!(!w.due(10 * MIB, t0));
        assert!(!w.due(10 * MIB + SLACK, t0 + Duration::from_secs(1)));
        assert!(w.due(10 * MIB + SLACK, t0 + Duration::from_secs(2)));
        w.trimmed(10 * MIB, t0 + Duration::from_secs(2));
        let grown = 10 * MIB + 3 * SLACK;
        assert!(!w.due(grown, t0 + Duration::from_secs(3)));
        assert!(
            !w.due(grown, t0 + Duration::from_millis(3900)),
            "settled, but MIN_GAP not over"
        );
        assert!(w.due(grown, t0 + Duration::from_secs(4)));
    }

    /// Fragments the heap the way a burst of connections does (big buffers freed between small
    /// allocations that stay), then checks that [`trim`] hands the freed pages back.
    #[test]
    fn trim_returns_freed_heap_pages_to_the_kernel() {
        if anonymous_bytes().is_none() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "/proc/self/statm is needed under CI"
            );
            return;
        }
        let mut kept = Vec::new();
        let mut freed = Vec::new();
        for i in 0..4096u32 {
            // 16 KiB buffers (below the mmap threshold: they live in the heap) with a small
            // allocation after each, which stays and pins the heap's top.
            freed.push(vec![1u8; 16 << 10]);
            kept.push(Box::new(i));
        }
        drop(freed);
        let before = anonymous_bytes().unwrap_or(0);
        trim();
        let after = anonymous_bytes().unwrap_or(u64::MAX);
        assert!(
            before.saturating_sub(after) >= 32 * MIB,
            "64 MiB freed, {} MiB given back",
            before.saturating_sub(after) / MIB
        );
        assert_eq!(kept.len(), 4096);
    }
}
