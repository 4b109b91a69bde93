//! Prometheus metrics. Every label set is bounded: endpoints are a fixed list, outcomes are the
//! API's error codes, providers come from the configuration. No token value ever appears.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Upper bounds of the exchange latency histogram, in seconds.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// Counters kept by the server and the exchanger (the sinks keep their own, read at render time).
#[derive(Default)]
pub struct Metrics {
    /// Requests by endpoint and outcome: each count an atomic, so counting one takes the map
    /// only for reading (no worker waits on another per request); written to add a new pair.
    requests: RwLock<BTreeMap<(&'static str, &'static str), AtomicU64>>,
    exchanges: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

/// Endpoint label for a request path: a fixed set.
pub(crate) fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/token" => "token",
        "/v1/identities" => "identities",
        "/v1/health" => "health",
        "/metrics" => "metrics",
        _ => "other",
    }
}

/// What the exporter needs from the rest of the agent at render time.
pub(crate) struct Gauges {
    pub cache_entries: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub renewals: u64,
    pub cache_evictions: u64,
    pub sink_writes: u64,
    pub sink_failures: u64,
    pub providers_up: Vec<(String, bool)>,
    pub limits: Vec<LimitGauges>,
}

/// One provider's limiter: its queue, what is in flight, its pause, what it let through.
pub(crate) struct LimitGauges {
    pub provider: String,
    pub queued: u64,
    pub in_flight: u64,
    pub paused_seconds: f64,
    pub pauses: u64,
    pub sent: u64,
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, outcome: &'static str) {
        let key = (endpoint, outcome);
        if let Some(n) = self.requests.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut m = self.requests.write().unwrap_or_else(|p| p.into_inner());
        m.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
    }

    pub fn exchange(&self, provider: &str, ok: bool, took: Duration) {
        let outcome = if ok { "success" } else { "failure" };
        *self
            .exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((provider.to_string(), outcome))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(provider.to_string())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let _ = self.render_into(&mut out, g);
        out
    }

    fn render_into(&self, out: &mut String, g: &Gauges) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP cortexid_requests_total Socket API requests by endpoint and outcome."
        )?;
        writeln!(out, "# TYPE cortexid_requests_total counter")?;
        for ((endpoint, outcome), n) in self.requests.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let n = n.load(Ordering::Relaxed);
            writeln!(
                out,
                "cortexid_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {n}"
            )?;
        }
        writeln!(
            out,
            "# HELP cortexid_exchanges_total Token requests to providers by outcome."
        )?;
        writeln!(out, "# TYPE cortexid_exchanges_total counter")?;
        for ((provider, outcome), n) in self.exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            writeln!(
                out,
                "cortexid_exchanges_total{{provider=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(provider)
            )?;
        }
        writeln!(
            out,
            "# HELP cortexid_exchange_duration_seconds Time for one token request to a provider."
        )?;
        writeln!(out, "# TYPE cortexid_exchange_duration_seconds histogram")?;
        for (provider, h) in self.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let p = escape(provider);
            for (i, bound) in BUCKETS.iter().enumerate() {
                writeln!(
                    out,
                    "cortexid_exchange_duration_seconds_bucket{{provider=\"{p}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                )?;
            }
            writeln!(
                out,
                "cortexid_exchange_duration_seconds_bucket{{provider=\"{p}\",le=\"+Inf\"}} {}",
                h.count
            )?;
            writeln!(
                out,
                "cortexid_exchange_duration_seconds_sum{{provider=\"{p}\"}} {}",
                h.sum
            )?;
            writeln!(
                out,
                "cortexid_exchange_duration_seconds_count{{provider=\"{p}\"}} {}",
                h.count
            )?;
        }
        let simple: [(&str, &str, &str, u64); 7] = [
            (
                "cortexid_cache_entries",
                "gauge",
                "Keys in the token cache.",
                g.cache_entries as u64,
            ),
            (
                "cortexid_cache_hits_total",
                "counter",
                "Requests served from the cache.",
                g.cache_hits,
            ),
            (
                "cortexid_cache_misses_total",
                "counter",
                "Requests that needed an exchange.",
                g.cache_misses,
            ),
            (
                "cortexid_renewals_total",
                "counter",
                "Background renewals that succeeded.",
                g.renewals,
            ),
            (
                "cortexid_cache_evictions_total",
                "counter",
                "Idle cached tokens evicted because the cache was full.",
                g.cache_evictions,
            ),
            (
                "cortexid_sink_writes_total",
                "counter",
                "Token files written.",
                g.sink_writes,
            ),
            (
                "cortexid_sink_failures_total",
                "counter",
                "Token files that could not be written.",
                g.sink_failures,
            ),
        ];
        for (name, kind, help, v) in simple {
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}")?;
        }
        writeln!(
            out,
            "# HELP cortexid_provider_up Whether the provider answered its last request."
        )?;
        writeln!(out, "# TYPE cortexid_provider_up gauge")?;
        for (name, up) in &g.providers_up {
            writeln!(
                out,
                "cortexid_provider_up{{provider=\"{}\"}} {}",
                escape(name),
                u8::from(*up)
            )?;
        }
        type Field = fn(&LimitGauges) -> String;
        let limits: [(&str, &str, &str, Field); 5] = [
            (
                "cortexid_provider_queue",
                "gauge",
                "Exchanges waiting for a turn at the provider's limits.",
                |l| l.queued.to_string(),
            ),
            (
                "cortexid_provider_in_flight",
                "gauge",
                "Requests to the provider in flight.",
                |l| l.in_flight.to_string(),
            ),
            (
                "cortexid_provider_paused_seconds",
                "gauge",
                "Time left of a pause the provider asked for with Retry-After.",
                |l| l.paused_seconds.to_string(),
            ),
            (
                "cortexid_provider_pauses_total",
                "counter",
                "Pauses the provider asked for with 429/503 and Retry-After.",
                |l| l.pauses.to_string(),
            ),
            (
                "cortexid_provider_exchanges_sent_total",
                "counter",
                "Exchanges let through the provider's limits.",
                |l| l.sent.to_string(),
            ),
        ];
        for (name, kind, help, field) in limits {
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")?;
            for l in &g.limits {
                writeln!(out, "{name}{{provider=\"{}\"}} {}", escape(&l.provider), field(l))?;
            }
        }
        Ok(())
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_help_type_and_bounded_labels() {
        let m = Metrics::default();
        m.request("token", "ok");
        m.request("token", "ok");
        m.request("token", "access_denied");
        m.exchange("corp", true, Duration::from_millis(30));
        let text = m.render(&Gauges {
            cache_entries: 3,
            cache_hits: 1,
            cache_misses: 2,
            renewals: 0,
            cache_evictions: 0,
            sink_writes: 0,
            sink_failures: 0,
            providers_up: vec![("corp".into(), true)],
            limits: vec![LimitGauges {
                provider: "corp".into(),
                queued: 4,
                in_flight: 2,
                paused_seconds: 1.5,
                pauses: 1,
                sent: 9,
            }],
        });
        assert!(text.contains("cortexid_provider_queue{provider=\"corp\"} 4"), "{text}");
        assert!(text.contains("cortexid_provider_paused_seconds{provider=\"corp\"} 1.5"));
        assert!(text.contains("cortexid_provider_exchanges_sent_total{provider=\"corp\"} 9"));
        assert!(text.contains("cortexid_requests_total{endpoint=\"token\",outcome=\"ok\"} 2"));
        assert!(text.contains("cortexid_exchange_duration_seconds_bucket{provider=\"corp\",le=\"0.05\"} 1"));
        assert!(text.contains("cortexid_exchange_duration_seconds_bucket{provider=\"corp\",le=\"0.025\"} 0"));
        assert!(text.contains("cortexid_cache_entries 3"));
        assert!(text.contains("cortexid_provider_up{provider=\"corp\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("cortexid_"), "{line}");
        }
    }
}
