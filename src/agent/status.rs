//! What the agent shows of itself: `/v1/identities` for a caller, `/v1/health` and `/metrics`.

use crate::caller::Caller;
use crate::policy;

use super::Agent;

impl Agent {
    /// `/v1/identities` for a caller.
    pub fn identities(&self, caller: &Caller) -> Vec<policy::IdentityView> {
        policy::identities_for(&self.config(), caller, None, &self.sessions_for(caller))
    }

    /// `/v1/health`: status, providers, cache. With `details` (operators) also the providers'
    /// last errors and limiters, the cache keys and the sinks; others see the status and counts only, since
    /// those details come from other callers' requests.
    pub fn health(&self, details: bool) -> (u16, serde_json::Value) {
        let state = self.state();
        let mut providers = serde_json::Map::new();
        let mut unreachable = false;
        for (name, p) in &state.providers {
            let h = p.health();
            unreachable |= h.reachable == Some(false);
            let mut view = serde_json::json!({"reachable": h.reachable.unwrap_or(false)});
            if details {
                // The limiter's counts move with other callers' requests: when they ask.
                if let Some(l) = self.cache.limiters.get(name) {
                    view["limits"] = serde_json::to_value(l.view()).unwrap_or_default();
                }
                view["last_error"] = h.last_error.into();
            }
            providers.insert(name.clone(), view);
        }
        let ready = self.ready.load(std::sync::atomic::Ordering::Acquire);
        let status = if !ready {
            "starting"
        } else if unreachable || self.cache.degraded() {
            "degraded"
        } else {
            "ok"
        };
        let body = if details {
            serde_json::json!({
                "status": status,
                "providers": providers,
                "cache": {"entries": self.cache.len(), "keys": self.cache.snapshot()},
                "sinks": self.sinks.snapshot(),
            })
        } else {
            serde_json::json!({
                "status": status,
                "providers": providers,
                "cache": {"entries": self.cache.len()},
                "sinks": {"count": self.sinks.snapshot().len()},
            })
        };
        (if ready { 200 } else { 503 }, body)
    }

    pub fn metrics(&self) -> &crate::output::metrics::Metrics {
        &self.shared.metrics
    }

    /// `/metrics` in the Prometheus text format.
    pub(crate) fn metrics_text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.state();
        let mut providers_up: Vec<(String, bool)> = state
            .providers
            .iter()
            .map(|(n, p)| (n.clone(), p.health().reachable == Some(true)))
            .collect();
        providers_up.sort();
        let c = &self.cache.counters;
        self.shared.metrics.render(&crate::output::metrics::Gauges {
            cache_entries: self.cache.len(),
            cache_hits: c.hits.load(Relaxed),
            cache_misses: c.misses.load(Relaxed),
            renewals: c.renewals.load(Relaxed),
            cache_evictions: c.evictions.load(Relaxed),
            sink_writes: self.sinks.writes(),
            sink_failures: self.sinks.failures(),
            providers_up,
            limits: self
                .cache
                .limiters
                .views()
                .into_iter()
                .map(|v| crate::output::metrics::LimitGauges {
                    provider: v.provider,
                    queued: v.queued as u64,
                    in_flight: u64::from(v.in_flight),
                    paused_seconds: v.paused_for.unwrap_or(0.0),
                    pauses: v.pauses,
                    sent: v.sent,
                })
                .collect(),
        })
    }
}
