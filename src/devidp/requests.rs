//! The log of `/token` requests: when each arrived, how many were in flight with it, and the
//! status it got, so tests can assert how an agent paced its exchanges from what the provider
//! saw rather than from wall-clock limits of their own.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One `/token` request as the provider saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// When it arrived (the process's monotonic clock).
    pub arrived: Instant,
    /// Requests in flight at its arrival, itself included.
    pub in_flight: usize,
    /// The HTTP status it was answered with; `None` while unanswered (or never answered).
    pub status: Option<u16>,
}

#[derive(Default)]
pub(super) struct RequestLog {
    in_flight: AtomicUsize,
    seen: Mutex<Vec<TokenRequest>>,
}

impl RequestLog {
    /// Records an arrival; the returned guard records the answer (and leaves flight when
    /// dropped, answered or not).
    pub(super) fn arrive(&self) -> InFlight<'_> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let mut seen = super::lock(&self.seen);
        seen.push(TokenRequest {
            arrived: Instant::now(),
            in_flight,
            status: None,
        });
        InFlight {
            log: self,
            index: seen.len() - 1,
        }
    }

    pub(super) fn all(&self) -> Vec<TokenRequest> {
        super::lock(&self.seen).clone()
    }

    pub(super) fn clear(&self) {
        super::lock(&self.seen).clear();
    }
}

pub(super) struct InFlight<'a> {
    log: &'a RequestLog,
    index: usize,
}

impl InFlight<'_> {
    pub(super) fn answered(&self, status: u16) {
        if let Some(r) = super::lock(&self.log.seen).get_mut(self.index) {
            r.status = Some(status);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.log.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
