//! Provider faults, one test each: what the caller receives for a key that needs an exchange
//! while the provider misbehaves, and that a key already cached keeps being served.

mod common;

use std::time::Duration;

use common::*;
use cortexid::devidp::{Fault, WRONG_AUDIENCE, WRONG_ISSUER};
use serde_json::Value;

/// The key cached before the fault (client credentials).
fn cached_key() -> String {
    token_path("batch", LEDGER, "payments.read")
}

/// The key asked for during the fault (token exchange).
fn fresh_key() -> String {
    token_path("payments", PAYMENTS, "payments.read")
}

/// A harness with one key cached, then `fault` set. Returns the cached token.
async fn with_fault(fault: Fault) -> (Harness, String) {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let (status, body) = h.get(&cached_key()).await;
    assert_eq!(status, 200, "{}", shown(&body));
    let cached = body["access_token"].as_str().unwrap().to_string();
    h.idp.set_fault(fault);
    (h, cached)
}

/// What a caller of the fresh key gets: status, Retry-After, and the body.
async fn ask_fresh(h: &Harness) -> (u16, Option<String>, Value) {
    let r = h.client.get(&fresh_key()).await.unwrap();
    let retry = r.headers.get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().unwrap();
    (r.status, retry, body)
}

/// A response body for assertion messages, with any token replaced by its length.
fn shown(body: &Value) -> String {
    let mut b = body.clone();
    if let Some(t) = b.get("access_token").and_then(Value::as_str) {
        b["access_token"] = Value::String(format!("[token, {} bytes]", t.len()));
    }
    b.to_string()
}

/// The refusal names the error code, the provider and the failure, and carries no token.
fn assert_refused(body: &Value, status: u16, got: u16, code: &str, failure: &str) {
    assert_eq!(got, status, "{}", shown(body));
    assert_eq!(body["error"], code, "{}", shown(body));
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains("\"corp\""), "the description names the provider: {text}");
    assert!(
        text.contains(failure),
        "the description names the failure ({failure}): {text}"
    );
    assert!(body.get("access_token").is_none());
    assert!(
        !body.to_string().contains("eyJ"),
        "no token in a refusal: {}",
        shown(body)
    );
}

/// The key cached before the fault is still served, from the cache.
async fn assert_cached_still_served(h: &Harness, cached: &str) {
    let (status, body) = h.get(&cached_key()).await;
    assert_eq!(status, 200, "{}", shown(&body));
    assert_eq!(body["access_token"].as_str().unwrap(), cached, "served from the cache");
}

#[tokio::test]
async fn http_500_is_upstream_unavailable() {
    let (h, cached) = with_fault(Fault::Status(500)).await;
    let (status, retry, body) = ask_fresh(&h).await;
    assert_refused(&body, 503, status, "upstream_unavailable", "answered 500");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("no valid cached token")
    );
    assert_eq!(retry, None, "the provider sent no Retry-After");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn http_503_with_retry_after_is_passed_on() {
    let (h, cached) = with_fault(Fault::StatusRetryAfter(503, 7)).await;
    let (status, retry, body) = ask_fresh(&h).await;
    assert_refused(&body, 503, status, "upstream_unavailable", "answered 503");
    assert_eq!(
        retry.as_deref(),
        Some("7"),
        "the provider's Retry-After reaches the caller"
    );
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn http_429_with_retry_after_is_passed_on() {
    let (h, cached) = with_fault(Fault::StatusRetryAfter(429, 3)).await;
    let (status, retry, body) = ask_fresh(&h).await;
    assert_refused(&body, 503, status, "upstream_unavailable", "answered 429");
    assert_eq!(retry.as_deref(), Some("3"));
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_hung_provider_times_out() {
    // upstream_timeout is 2 s in the harness.
    let (h, cached) = with_fault(Fault::Hang).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 503, status, "upstream_unavailable", "did not answer");
    assert!(
        body["error_description"].as_str().unwrap().contains("in time"),
        "{}",
        shown(&body)
    );
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_is_served_and_a_slower_one_is_not() {
    let (h, cached) = with_fault(Fault::Delay(Duration::from_millis(700))).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_eq!(status, 200, "{}", shown(&body));
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], PAYMENTS);

    h.idp.set_fault(Fault::Delay(Duration::from_secs(4)));
    let (status, body) = h.get(&token_path("payments", LEDGER, "")).await;
    assert_refused(&body, 503, status, "upstream_unavailable", "in time");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_reset_connection_is_upstream_unavailable() {
    let (h, cached) = with_fault(Fault::Close).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 503, status, "upstream_unavailable", "cannot reach provider");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn malformed_json_is_upstream_error() {
    let (h, cached) = with_fault(Fault::MalformedJson).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", "unusable JSON");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_200_without_access_token_is_upstream_error() {
    let (h, cached) = with_fault(Fault::NoAccessToken).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", "without an access_token");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_token_without_exp_or_expires_in_is_not_served() {
    let (h, cached) = with_fault(Fault::NoExpiry).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", "no exp");
    assert_eq!(h.idp.counters().tokens_issued, 2, "the provider did issue it");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_token_for_the_wrong_audience_is_not_served() {
    let (h, cached) = with_fault(Fault::WrongAudience).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", WRONG_AUDIENCE);
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains(PAYMENTS), "names the expected audience too: {text}");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_token_from_the_wrong_issuer_is_not_served() {
    let (h, cached) = with_fault(Fault::WrongIssuer).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", WRONG_ISSUER);
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains(h.idp.issuer()), "names the expected issuer too: {text}");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_not_served() {
    let (h, cached) = with_fault(Fault::BadSignature).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", "signature does not verify");
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_the_token_served() {
    let (h, cached) = with_fault(Fault::None).await;
    let jwks_before = h.idp.counters().jwks;
    // Rotated right after the JWKS was fetched for the cached token: the agent fetches again.
    h.idp.rotate_key();
    let (status, _, body) = ask_fresh(&h).await;
    assert_eq!(status, 200, "{}", shown(&body));
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], PAYMENTS);
    assert!(
        h.idp.counters().jwks > jwks_before,
        "the JWKS was fetched again for the new kid"
    );
    assert_cached_still_served(&h, &cached).await;
}

#[tokio::test]
async fn a_provider_clock_5_minutes_behind_gives_tokens_already_expired_or_shortened() {
    // 300 s tokens issued 300 s in the past: expired on arrival.
    let (h, cached) = with_fault(Fault::ClockSkew(-300)).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(
        &body,
        502,
        status,
        "upstream_error",
        "already expired by this host's clock",
    );
    assert!(body["error_description"].as_str().unwrap().contains("clocks"));
    assert_cached_still_served(&h, &cached).await;

    // 600 s tokens: served, with the lifetime this host's clock leaves them (exp wins).
    h.idp.set_token_lifetime(Duration::from_secs(600));
    let (status, body) = h.get(&token_path("payments", LEDGER, "")).await;
    assert_eq!(status, 200, "{}", shown(&body));
    let exp = claims(body["access_token"].as_str().unwrap())["exp"].as_u64().unwrap();
    assert!(exp > unix_now(), "never an expired token");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(
        expires_in <= 300 && exp + 1 >= unix_now() + expires_in,
        "expires_in ({expires_in}) follows exp, not the provider's 600"
    );
}

#[tokio::test]
async fn a_provider_clock_5_minutes_ahead_gives_tokens_not_valid_yet() {
    let (h, cached) = with_fault(Fault::ClockSkew(300)).await;
    let (status, _, body) = ask_fresh(&h).await;
    assert_refused(&body, 502, status, "upstream_error", "not valid yet");
    assert_cached_still_served(&h, &cached).await;
}

async fn health(h: &Harness) -> Value {
    h.get("/v1/health").await.1
}

#[tokio::test]
async fn with_the_provider_hung_the_cached_token_is_served_then_health_recovers_by_itself() {
    // 24 s tokens renewed at half their lifetime (12 s ± 1.2 s): the renewal hangs until the 2 s
    // upstream timeout, well before the hand-out floor (6 s left) is reached at 18 s.
    let setup = Setup {
        refresh_at: Some(0.5),
        ..Setup::default()
    };
    let h = Harness::new(Duration::from_secs(24), setup).await;
    let path = token_path("payments", PAYMENTS, "");
    let (status, body) = h.get(&path).await;
    assert_eq!(status, 200, "{}", shown(&body));
    let first = body["access_token"].as_str().unwrap().to_string();
    let first_exp = claims(&first)["exp"].as_u64().unwrap();
    h.idp.set_fault(Fault::Hang);

    // Until the failed renewal shows, and after: the cached token, never an expired one.
    let mut degraded = false;
    for _ in 0..200 {
        let (status, body) = h.get(&path).await;
        assert_eq!(status, 200, "{}", shown(&body));
        assert_eq!(body["access_token"].as_str().unwrap(), first, "the cached token");
        assert!(first_exp > unix_now(), "never an expired token");
        if health(&h).await["status"] == "degraded" {
            degraded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(degraded, "health says degraded while the provider hangs");
    // Measured for the report, not asserted: how long the cached token takes while hung.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (status, body) = h.get(&path).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{}", shown(&body));
        assert_eq!(body["access_token"].as_str().unwrap(), first);
    }
    eprintln!("cached token with the provider hung: slowest of 20 took {slowest:?}");
    let health_now = health(&h).await;
    assert_eq!(health_now["status"], "degraded", "{health_now}");
    assert!(
        health_now["providers"]["corp"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("in time"),
        "{health_now}"
    );

    // The provider comes back: the retrying renewal succeeds and health is ok again, no restart.
    h.idp.set_fault(Fault::None);
    let mut recovered = Value::Null;
    for _ in 0..150 {
        let (status, body) = h.get(&path).await;
        assert_eq!(status, 200, "{}", shown(&body));
        let health_now = health(&h).await;
        if health_now["status"] == "ok" {
            recovered = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !recovered.is_null(),
        "health recovers to ok by itself: {}",
        health(&h).await
    );
    let (_, body) = h.get(&path).await;
    assert_ne!(body["access_token"].as_str().unwrap(), first, "a renewed token");
}
