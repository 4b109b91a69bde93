//! `cortexid status`: the agent's health, providers, cached tokens and sinks, summarised from
//! `/v1/health` (or printed as is with `--json`). Never shows a token value: only named,
//! non-secret fields are read.

use std::time::Duration;

use crate::cmd::common::{EXIT_FAILURE, EXIT_OK, SocketArg, describe_error, emit, error_line};

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Print the agent's health JSON as is.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) socket: SocketArg,
}

/// A number or boolean as text; strings are never printed generically (one might be a token).
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seconds(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// One cached key of `/v1/health`: what it is for and when it expires and renews. Only named,
/// non-secret fields are read, so a token value can never be printed.
fn format_entry(k: &serde_json::Value) -> String {
    let text = |f: &str| k[f].as_str().filter(|s| !s.is_empty());
    let mut line = format!(
        "  {} {} [{}]",
        text("identity").unwrap_or("?"),
        text("audience").unwrap_or("?"),
        text("scope").unwrap_or("-")
    );
    match (text("expires_at"), k["expires_in"].as_u64()) {
        (Some(at), Some(s)) => line.push_str(&format!(": expires {at} (in {})", seconds(s))),
        (Some(at), None) => line.push_str(&format!(": expires {at}")),
        (None, Some(s)) => line.push_str(&format!(": expires in {}", seconds(s))),
        (None, None) => line.push_str(": no token yet"),
    }
    let mut notes = Vec::new();
    match (text("next_refresh"), k["next_refresh_in"].as_u64()) {
        (Some(at), Some(s)) => notes.push(format!("renews {at} (in {})", seconds(s))),
        (Some(at), None) => notes.push(format!("renews {at}")),
        (None, Some(s)) => notes.push(format!("renews in {}", seconds(s))),
        (None, None) => {}
    }
    if k["renewing"] == true {
        notes.push("renewing now".to_string());
    }
    if let Some(fp) = text("fingerprint") {
        notes.push(format!("fingerprint {fp}"));
    }
    if let Some(e) = text("last_error") {
        match k["failures"].as_u64() {
            Some(n) => notes.push(format!("failing ({n} tries): {e}")),
            None => notes.push(format!("failing: {e}")),
        }
    }
    if !notes.is_empty() {
        line.push_str(", ");
        line.push_str(&notes.join(", "));
    }
    line.push('\n');
    line
}

/// A readable summary of `/v1/health`. Never shows a token.
pub(crate) fn format_status(h: &serde_json::Value) -> String {
    let h = &crate::cmd::common::printable_json(h);
    let mut out = format!("status: {}\n", h["status"].as_str().unwrap_or("unknown"));
    if let Some(obj) = h.as_object() {
        for (k, v) in obj {
            if let Some(v) = scalar(v) {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
    }
    if let Some(providers) = h["providers"].as_object() {
        out.push_str("providers:\n");
        for (name, p) in providers {
            let state = match p["reachable"].as_bool() {
                Some(true) => "reachable",
                Some(false) => "unreachable",
                None => "unknown",
            };
            out.push_str(&format!("  {name}: {state}"));
            if let Some(err) = p["last_error"].as_str().filter(|e| !e.is_empty()) {
                out.push_str(&format!(" (last error: {err})"));
            }
            let limits = &p["limits"];
            if limits.is_object() {
                let n = |f: &str| limits[f].as_u64().unwrap_or(0);
                out.push_str(&format!(
                    "; {} sent, {} queued, {} in flight, {} pauses",
                    n("sent"),
                    n("queued"),
                    n("in_flight"),
                    n("pauses")
                ));
                if let Some(s) = limits["paused_for"].as_f64() {
                    out.push_str(&format!(", paused for {s:.1}s more (the provider asked: Retry-After)"));
                }
            }
            out.push('\n');
        }
    }
    let cache = &h["cache"];
    if cache.is_object() {
        // Per-key entries may come as `keys`, or as `entries` when that is a list.
        let keys = cache["keys"].as_array().or_else(|| cache["entries"].as_array());
        let count = cache["entries"]
            .as_u64()
            .or_else(|| keys.map(|k| k.len() as u64))
            .unwrap_or(0);
        out.push_str(&format!(
            "cache: {count} {}\n",
            if count == 1 { "entry" } else { "entries" }
        ));
        if let Some(obj) = cache.as_object() {
            for (k, v) in obj.iter().filter(|(k, _)| *k != "entries") {
                if let Some(v) = scalar(v) {
                    out.push_str(&format!("  {k}: {v}\n"));
                }
            }
        }
        for k in keys.into_iter().flatten() {
            out.push_str(&format_entry(k));
        }
    }
    for s in h["sinks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "sink {}: {}",
            s["path"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?")
        ));
        if let Some(e) = s["last_error"].as_str().filter(|e| !e.is_empty()) {
            out.push_str(&format!(" (last error: {e})"));
        }
        out.push('\n');
    }
    out
}

/// Whether a health answer means the agent can serve: `ok` or `degraded`.
pub(crate) fn health_is_serving(h: &serde_json::Value) -> bool {
    matches!(h["status"].as_str(), Some("ok" | "degraded"))
}

/// `cortexid status`: exit 0 when the agent is ok or degraded, 1 otherwise or when unreachable.
pub async fn run(args: StatusArgs) -> i32 {
    // The agent answers 503 while starting, with the health body: that is still a status to show.
    let resp = match args.socket.client().get("/v1/health").await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cortexid: {e}");
            return EXIT_FAILURE;
        }
    };
    let body = match resp.json() {
        Ok(b) if b.get("status").is_some() => b,
        _ => {
            let (code, description) = describe_error(&resp);
            eprintln!("{}", error_line(&code, &description));
            return EXIT_FAILURE;
        }
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&body) {
            Ok(s) => format!("{s}\n"),
            Err(_) => format!("{body}\n"),
        }
    } else {
        format_status(&body)
    };
    if !emit(&text) {
        return EXIT_FAILURE;
    }
    if health_is_serving(&body) {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_summarises_health_and_never_shows_tokens() {
        let h = serde_json::json!({"status": "degraded",
            "providers": {"corp": {"reachable": false, "last_error": "timeout"}, "k8s": {"reachable": true, "last_error": null}},
            "cache": {"entries": 1, "hits": 7, "note": "eyJ.leak", "keys": [{"identity": "p", "audience": "a", "scope": "",
                "expires_in": 20, "expires_at": "2026-11-28T12:00:00Z", "next_refresh_in": 3, "fingerprint": "3f2a",
                "failures": 2, "last_error": "down", "access_token": "eyJ.secret"}]},
            "sinks": [{"path": "/run/t", "state": "ok"}]});
        let s = format_status(&h);
        assert!(s.starts_with("status: degraded\n"), "{s}");
        assert!(s.contains("  corp: unreachable (last error: timeout)\n"), "{s}");
        assert!(s.contains("  k8s: reachable\n"), "{s}");
        assert!(s.contains("cache: 1 entry\n  hits: 7\n"), "{s}");
        assert!(
            s.contains("  p a [-]: expires 2026-11-28T12:00:00Z (in 20s), renews in 3s, fingerprint 3f2a, failing (2 tries): down\n"),
            "{s}"
        );
        assert!(s.contains("sink /run/t: ok\n"), "{s}");
        assert!(!s.contains("eyJ"), "{s}");
        assert!(health_is_serving(&h));

        // Entries may come as a list with next_refresh timestamps.
        let h = serde_json::json!({"status": "starting", "cache": {"entries": [
            {"identity": "p", "audience": "a", "scope": "s", "expires_at": "2026-11-28T12:00:00Z", "next_refresh": "2026-11-28T11:58:00Z"}]}});
        let s = format_status(&h);
        assert!(
            s.contains("cache: 1 entry\n  p a [s]: expires 2026-11-28T12:00:00Z, renews 2026-11-28T11:58:00Z\n"),
            "{s}"
        );
        assert!(!health_is_serving(&h));
        assert!(health_is_serving(&serde_json::json!({"status": "ok"})));
    }
}
