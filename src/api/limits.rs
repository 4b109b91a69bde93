//! Connection caps: per process, per uid, and in all (lowered to fit `RLIMIT_NOFILE`), so one
//! local user cannot exhaust the agent; connections over a cap get a JSON refusal, and a flood
//! of them costs at most [`MAX_REFUSING`] tasks. The last quarter of the total is kept for uids
//! that hold few connections (fewer than a 32nd of the total, at least 4), so no small set of
//! uids can take every place: a caller with one connection still gets in.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::error::{ApiError, ErrorKind};

use super::responses::error_response;
use super::routes::MAX_HEADERS;

/// Connections one process (the `SO_PEERCRED` pid, i.e. all its threads) may hold open at once.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 256;
/// Connections one uid may hold open at once, over all its processes.
pub(crate) const MAX_CONNECTIONS_PER_UID: usize = 512;
/// Connections the agent holds open at once (lowered to fit `RLIMIT_NOFILE`).
pub(crate) const MAX_CONNECTIONS: usize = 2048;

/// Descriptors the connections leave to the rest: 64 (provider connections, the audit log,
/// sinks, the state dir), and the metrics listener's own.
const RESERVED_DESCRIPTORS: usize = 64 + super::server::METRICS_CONNECTIONS + 1;

/// Open connections by process and by uid, and in all; each admitted connection holds a
/// [`ConnGuard`] that gives its place back when the connection ends.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    per_process: usize,
    per_uid: usize,
    total: usize,
    open: std::sync::Mutex<OpenConns>,
    refusing: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct OpenConns {
    by_pid: std::collections::HashMap<i32, usize>,
    by_uid: std::collections::HashMap<u32, usize>,
    total: usize,
}

/// Why a connection was not admitted: the response to write before closing it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub error: ApiError,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    limits: Arc<ConnLimits>,
    uid: u32,
    pid: i32,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_pid.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                open.by_pid.remove(&self.pid);
            }
        }
        if let Some(n) = open.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.by_uid.remove(&self.uid);
            }
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl ConnLimits {
    pub fn new(per_process: usize, per_uid: usize, total: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            per_process: per_process.max(1),
            per_uid: per_uid.max(1),
            total: total.max(1),
            open: Default::default(),
            refusing: Default::default(),
        })
    }

    /// The default limits, lowered so that the connections fit in the file descriptor limit
    /// (with room left for the provider connections, the audit log and the sinks).
    pub(crate) fn for_this_process() -> Arc<ConnLimits> {
        let total = open_files_limit().map_or(MAX_CONNECTIONS, |n| {
            n.saturating_sub(RESERVED_DESCRIPTORS).clamp(16, MAX_CONNECTIONS)
        });
        ConnLimits::new(
            MAX_CONNECTIONS_PER_PROCESS.min(total / 4),
            MAX_CONNECTIONS_PER_UID.min(total / 2),
            total,
        )
    }

    /// Places only operators may take: the agent stays reachable to them (`cortexid status`,
    /// a reload's health check) when callers who keep their connections busy hold the rest.
    fn operators_only(&self) -> usize {
        (self.total / 64).clamp(1, 16).min(self.total.saturating_sub(1))
    }

    /// Takes a place for a connection from `uid`/`pid` (an `operator` may take the last few),
    /// or says why there is none.
    pub(crate) fn admit(self: &Arc<Self>, uid: u32, pid: Option<i32>, operator: bool) -> Result<ConnGuard, Refusal> {
        let pid = pid.unwrap_or(0);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let by_pid = open.by_pid.get(&pid).copied().unwrap_or(0);
        let by_uid = open.by_uid.get(&uid).copied().unwrap_or(0);
        let refusal = |kind: ErrorKind, text: String| {
            Err(Refusal {
                error: ApiError::new(kind, text).with_retry_after(1),
            })
        };
        if by_pid >= self.per_process {
            return refusal(
                ErrorKind::SlowDown,
                format!(
                    "process {pid} already holds {by_pid} connections to this socket (at most {}); close idle ones or reuse them",
                    self.per_process
                ),
            );
        }
        if by_uid >= self.per_uid {
            return refusal(
                ErrorKind::SlowDown,
                format!(
                    "uid {uid} already holds {by_uid} connections to this socket (at most {}); close idle ones or reuse them",
                    self.per_uid
                ),
            );
        }
        let total = match operator {
            true => self.total,
            false => self.total - self.operators_only(),
        };
        let reserve_from = total - total / 4;
        let light = (total / 32).max(4);
        if open.total >= reserve_from && by_uid >= light && open.total < total {
            return refusal(
                ErrorKind::SlowDown,
                format!(
                    "uid {uid} already holds {by_uid} connections, and the agent keeps its last {} places for callers that hold fewer than {light}; close idle ones or reuse them",
                    total - reserve_from
                ),
            );
        }
        if open.total >= total {
            return refusal(
                ErrorKind::SlowDown,
                format!("the agent is serving its maximum of {total} connections; retry shortly"),
            );
        }
        open.total += 1;
        *open.by_pid.entry(pid).or_default() += 1;
        *open.by_uid.entry(uid).or_default() += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            uid,
            pid,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// Refused connections being answered at once; past this, excess connections are closed
/// without an answer (a flood of them must not cost more than this many tasks and descriptors).
pub(crate) const MAX_REFUSING: usize = 64;
/// A refused connection must send its request head within this time.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a connection over its limit: reads its request (so an HTTP client sees an ordinary
/// response to what it sent), answers the refusal as JSON with `Connection: close`, and closes.
pub(super) fn refuse(stream: tokio::net::UnixStream, refusal: Refusal, limits: &Arc<ConnLimits>) {
    use std::sync::atomic::Ordering;
    if limits.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        limits.refusing.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed without an answer
    }
    let limits = limits.clone();
    let error = Arc::new(refusal.error);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let error = error.clone();
        async move { Ok::<_, Infallible>(error_response(&error)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSAL_READ_TIMEOUT)
        .max_buf_size(MAX_HEADERS * 4)
        .serve_connection(TokioIo::new(stream), service);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT * 2, conn).await;
        limits.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_uids_cannot_take_the_last_places_from_a_light_caller() {
        // 65 in all, 1 for operators: of the 64 others, the last 16 are kept for uids holding
        // fewer than 4.
        let limits = ConnLimits::new(65, 65, 65);
        let mut held = Vec::new();
        let mut pid = 1000;
        for uid in [5001, 5002] {
            loop {
                pid += 1;
                match limits.admit(uid, Some(pid), false) {
                    Ok(g) => held.push(g),
                    Err(r) => {
                        assert!(
                            r.error.description.contains("keeps its last 16 places"),
                            "{}",
                            r.error.description
                        );
                        break;
                    }
                }
            }
        }
        assert_eq!(
            held.len(),
            48 + 4,
            "a heavy uid stops at three quarters; the next one gets the light share (4) and no more"
        );
        let light: Vec<_> = (0..3)
            .map(|n| limits.admit(6000, Some(9000 + n), false).unwrap())
            .collect();
        assert_eq!(light.len(), 3, "a uid holding few still gets in");
        drop(held);
        drop(light);
        assert_eq!(limits.open(), 0);
    }

    #[test]
    fn connection_caps_are_per_process_then_per_uid_then_global() {
        // 5 in all, the last for operators.
        let limits = ConnLimits::new(2, 3, 5);
        let a1 = limits.admit(1000, Some(10), false).unwrap();
        let _a2 = limits.admit(1000, Some(10), false).unwrap();
        let e = limits.admit(1000, Some(10), false).unwrap_err().error;
        assert_eq!((e.status(), e.code()), (429, "slow_down"));
        assert!(e.description.contains("process 10"), "{}", e.description);
        // Another process of the same uid still gets in, up to the uid's cap.
        let _b1 = limits.admit(1000, Some(11), false).unwrap();
        let e = limits.admit(1000, Some(12), false).unwrap_err().error;
        assert!(e.description.contains("uid 1000"), "{}", e.description);
        // Another uid gets the last place; then the agent is full.
        let _c1 = limits.admit(2000, Some(20), false).unwrap();
        let e = limits.admit(3000, Some(30), false).unwrap_err().error;
        assert!(e.description.contains("maximum of 4"), "{}", e.description);
        assert_eq!(e.retry_after, Some(1));
        // An operator still gets in, to the last place.
        let root = limits.admit(0, Some(1), true).unwrap();
        assert!(limits.admit(0, Some(2), true).is_err());
        drop(root);
        // A closed connection gives its place back.
        drop(a1);
        assert_eq!(limits.open(), 3);
        assert!(limits.admit(3000, Some(30), false).is_ok());
    }

    #[test]
    fn default_limits_fit_the_descriptor_limit() {
        let l = ConnLimits::for_this_process();
        assert!(l.per_process <= l.per_uid && l.per_uid <= l.total);
        assert!(l.total <= MAX_CONNECTIONS);
        let n = open_files_limit().expect("the soft open-file limit, from /proc/self/limits");
        assert!(l.total < n, "{} connections would not fit in {n} descriptors", l.total);
        assert_eq!(
            l.total,
            n.saturating_sub(RESERVED_DESCRIPTORS).clamp(16, MAX_CONNECTIONS),
            "in all: the limit less what the rest needs"
        );
    }
}
