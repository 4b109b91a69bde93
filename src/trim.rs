//! Giving the heap's free memory back to the kernel once a burst is over.
//!
//! glibc's malloc keeps what a burst freed: after 1,000 concurrent connections its arenas hold
//! tens of MiB of free chunks between live ones, which neither `M_TRIM_THRESHOLD` nor
//! `M_MMAP_THRESHOLD` return (only the top of a heap is trimmed on `free`). `malloc_trim(0)` hands
//! back every free page inside the arenas too. [`start`] runs a thread of its own, never a
//! request's, that looks twice a second at how much of the agent's resident anonymous memory
//! malloc does not have in use, and trims when that grew by [`SLACK`] since the last trim, at
//! most once per [`MIN_GAP`].

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the agent's memory is looked at (one read of `/proc/self/statm`, one `mallinfo2`).
pub const PERIOD: Duration = Duration::from_millis(500);
/// Growth of resident free heap memory since the last trim that makes a trim worth its cost.
pub const SLACK: u64 = 4 << 20;
/// Trims are at least this far apart.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// When to trim, from samples of the agent's resident free heap memory (pure: the clock and the
/// samples are given).
#[derive(Debug, Default)]
pub struct Watch {
    /// Resident memory malloc did not have in use right after the last trim (or at the first
    /// sample): thread stacks, the heap's partly used pages, what is not malloc's.
    floor: Option<u64>,
    last_trim: Option<Instant>,
}

impl Watch {
    pub fn new() -> Watch {
        Watch::default()
    }

    /// Whether to trim now, given the resident anonymous memory `anon` and the bytes malloc has
    /// in use, `in_use`, sampled at `now`: what is resident and not in use grew by at least
    /// [`SLACK`] since the last trim, and that trim is [`MIN_GAP`] ago.
    pub fn due(&mut self, anon: u64, in_use: u64, now: Instant) -> bool {
        let free = anon.saturating_sub(in_use);
        let floor = *self.floor.get_or_insert(free);
        free >= floor.saturating_add(SLACK) && self.last_trim.is_none_or(|t| now.duration_since(t) >= MIN_GAP)
    }

    /// A trim ran at `now` and left `anon` bytes resident with `in_use` bytes in use.
    pub fn trimmed(&mut self, anon: u64, in_use: u64, now: Instant) {
        self.floor = Some(anon.saturating_sub(in_use));
        self.last_trim = Some(now);
    }
}

/// Starts the thread that trims whenever [`Watch`] says so; it ends within [`PERIOD`] of
/// `cancel`. Where the C library is not glibc there is nothing to watch, and no thread.
pub fn start(cancel: CancellationToken) {
    if heap_in_use().is_none() || anonymous_bytes().is_none() {
        return;
    }
    let spawned = std::thread::Builder::new().name("cortexid-trim".into()).spawn(move || {
        let mut watch = Watch::new();
        while !cancel.is_cancelled() {
            std::thread::sleep(PERIOD);
            let (Some(anon), Some(in_use)) = (anonymous_bytes(), heap_in_use()) else {
                return;
            };
            if watch.due(anon, in_use, Instant::now()) {
                trim();
                let (after, in_use) = (anonymous_bytes().unwrap_or(anon), heap_in_use().unwrap_or(in_use));
                tracing::debug!(before = anon, after, "returned free heap memory to the kernel");
                watch.trimmed(after, in_use, Instant::now());
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the heap-trim thread; freed heap memory stays with the agent");
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

/// Bytes malloc has handed out and not had back (in its arenas, and mapped on their own), or
/// `None` where the C library is not glibc.
#[allow(unsafe_code)]
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Looked up when first needed, not linked: `mallinfo2` is glibc 2.33's, and an agent
        // built against a newer glibc still starts on an older one (then without this thread).
        type MallInfo2 = unsafe extern "C" fn() -> libc::mallinfo2;
        static MALLINFO2: std::sync::OnceLock<Option<MallInfo2>> = std::sync::OnceLock::new();
        let mallinfo2 = (*MALLINFO2.get_or_init(|| {
            // SAFETY: a NUL-terminated name looked up in the objects already loaded.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
            // SAFETY: glibc's `mallinfo2` has this signature (malloc.h).
            (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, MallInfo2>(p) })
        }))?;
        // SAFETY: mallinfo2 takes no argument and returns a plain struct; it only takes the
        // arenas' own locks.
        let info = unsafe { mallinfo2() };
        Some((info.uordblks as u64).saturating_add(info.hblkhd as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
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
    fn trims_when_resident_free_memory_grew_by_the_slack() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = Watch::new();
        assert!(
            !w.due(12 * MIB, 10 * MIB, at(0)),
            "the first sample sets the floor (2 MiB)"
        );
        assert!(
            !w.due(40 * MIB, 38 * MIB, at(1)),
            "grown, but all of it in use (a burst)"
        );
        assert!(
            !w.due(40 * MIB, 36 * MIB + MIB / 2, at(2)),
            "3.5 MiB free over the floor: not yet"
        );
        assert!(
            w.due(40 * MIB, 12 * MIB, at(3)),
            "the burst is over: 26 MiB over the floor"
        );
        w.trimmed(14 * MIB, 12 * MIB, at(3));
        assert!(!w.due(14 * MIB, 12 * MIB, at(6)), "nothing more to give back");
        assert!(!w.due(60 * MIB, 58 * MIB, at(7)), "a cache filling: in use");
    }

    #[test]
    fn trims_are_min_gap_apart() {
        let t0 = Instant::now();
        let mut w = Watch::new();
        assert!(!w.due(10 * MIB, 10 * MIB, t0));
        assert!(w.due(10 * MIB + SLACK, 10 * MIB, t0));
        w.trimmed(10 * MIB, 10 * MIB, t0);
        let freed = 10 * MIB + 2 * SLACK;
        assert!(
            !w.due(freed, 10 * MIB, t0 + Duration::from_millis(1999)),
            "MIN_GAP not over"
        );
        assert!(w.due(freed, 10 * MIB, t0 + MIN_GAP));
    }

    /// Fragments the heap the way a burst of connections does (buffers freed between small
    /// allocations that stay), then checks that [`trim`] hands the freed pages back and that
    /// [`Watch`] sees them as resident and free.
    #[test]
    fn trim_returns_freed_heap_pages_to_the_kernel() {
        let (Some(_), Some(_)) = (anonymous_bytes(), heap_in_use()) else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "/proc/self/statm and glibc are needed under CI"
            );
            return;
        };
        let mut kept = Vec::new();
        let mut freed = Vec::new();
        for i in 0..4096u32 {
            // 16 KiB buffers (below the mmap threshold: they live in the heap), each followed by
            // a small allocation that stays and pins the heap's top.
            freed.push(vec![1u8; 16 << 10]);
            kept.push(Box::new(i));
        }
        let mut w = Watch::new();
        let now = Instant::now();
        assert!(!w.due(anonymous_bytes().unwrap_or(0), heap_in_use().unwrap_or(0), now));
        drop(freed);
        let before = anonymous_bytes().unwrap_or(0);
        assert!(
            w.due(before, heap_in_use().unwrap_or(0), now),
            "64 MiB freed and resident"
        );
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
