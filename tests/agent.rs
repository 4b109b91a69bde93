//! The agent end to end: the real server on a real Unix socket, against the development provider
//! over HTTPS with a test CA.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use cortexid::devidp::Fault;

#[tokio::test]
async fn an_allowed_caller_gets_a_scoped_token_and_the_second_ask_is_cached() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "payments.read")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let c = claims(&token);
    assert_eq!(c["aud"], PAYMENTS);
    assert_eq!(c["scope"], "payments.read");
    assert_eq!(c["sub"], "system:serviceaccount:prod:payments");
    assert_eq!(body["identity"], "payments");
    assert_eq!(body["audience"], PAYMENTS);
    assert_eq!(body["scope"], "payments.read");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 290);
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(h.idp.counters().exchanges, 1);

    let (status, again) = h.get(&token_path("payments", PAYMENTS, "payments.read")).await;
    assert_eq!(status, 200);
    assert_eq!(again["access_token"].as_str().unwrap(), token, "served from the cache");
    assert_eq!(h.idp.counters().exchanges, 1, "still one exchange");

    // Responses are never cached by intermediaries.
    let r = h
        .client
        .get(&token_path("payments", PAYMENTS, "payments.read"))
        .await
        .unwrap();
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");

    // Client credentials work too.
    let (status, body) = h.get(&token_path("batch", LEDGER, "payments.read")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["sub"], CLIENT_ID);
    assert_eq!(h.idp.counters().client_credentials, 1);
}

#[tokio::test]
async fn two_hundred_concurrent_misses_cause_one_exchange() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = h.client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .get(&token_path("payments", LEDGER, "payments.write"))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json().unwrap()["access_token"].as_str().unwrap().to_string()
        }));
    }
    let mut tokens = BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    assert_eq!(tokens.len(), 1, "all 200 callers got the same token");
    assert_eq!(h.idp.counters().exchanges, 1, "exactly one exchange");
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Checks every token handed out against the hand-out floor of docs/lifecycle.md,
/// `max(min_valid, min(min_remaining, lifetime / 4))`, here a quarter of the lifetime (no
/// `min_valid`; `min_remaining` is 30 s, longer than these tokens live).
///
/// The provider's `exp` is in whole seconds, so a token's lifetime as the agent counts it is
/// known only from outside: it is at least the time from when this test first received the
/// token to its `exp` (less a few ms of the exchange's round trip, which the agent subtracts from
/// `expires_in`: 10 ms of floor are allowed for it). And the time a token had left when the
/// agent decided to hand it out is at most its `exp` minus when the request was sent.
#[derive(Default)]
struct FloorCheck {
    first_seen_ms: std::collections::HashMap<String, i64>,
    /// The least (time left when asked − floor) over every token handed out, in ms.
    least_margin_ms: Option<i64>,
}

impl FloorCheck {
    /// A token handed out for a request sent at `sent_ms` and answered at `received_ms`.
    fn served(&mut self, token: &str, sent_ms: i64, received_ms: i64) {
        let exp_ms = claims(token)["exp"].as_i64().unwrap() * 1000;
        let first = *self.first_seen_ms.entry(token.to_string()).or_insert(received_ms);
        let floor_ms = (exp_ms - first) / 4 - 10;
        let margin = exp_ms - sent_ms - floor_ms;
        self.least_margin_ms = Some(self.least_margin_ms.map_or(margin, |m| m.min(margin)));
    }

    fn assert_never_below(&self) {
        let least = self.least_margin_ms.expect("tokens were handed out");
        assert!(
            least >= 0,
            "a token was handed out {} ms below its floor (a quarter of its lifetime)",
            -least
        );
    }
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_in_the_background_and_never_handed_out_too_late() {
    // The provider's "4 s" tokens live 3 to 4 s on arrival (whole-second exp): floors of 750 to
    // 1000 ms, renewals about 2.1 to 2.8 s after receipt.
    let h = Harness::new(Duration::from_secs(4), Setup::default()).await;
    let mut floor = FloorCheck::default();
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let sent = now_ms();
        let (status, body) = h.get(&token_path("payments", PAYMENTS, "payments.read")).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_string();
        floor.served(&token, sent, now_ms());
        seen.insert(token);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    floor.assert_never_below();
    assert!(
        seen.len() >= 3,
        "renewed at least twice in ~10 s, saw {} tokens",
        seen.len()
    );
    let c = h.idp.counters();
    // Every exchange produced a served token (no wasted renewals); one renewal may land after
    // the last request.
    let exchanges = c.exchanges as usize;
    assert!(
        exchanges == seen.len() || exchanges == seen.len() + 1,
        "{exchanges} exchanges for {} tokens served",
        seen.len()
    );
    let renewals = h
        .audit_lines()
        .iter()
        .filter(|l| l["event"] == "token.exchanged" && l["reason"] == "renewal")
        .count();
    assert!(renewals >= 2, "renewals happened in the background ({renewals})");
}

#[tokio::test]
async fn a_provider_outage_is_bridged_by_the_cache_then_reported_then_recovered() {
    // Renew at half the lifetime, so the cache bridges the outage for a while before the floor.
    let setup = Setup {
        refresh_at: Some(0.5),
        ..Setup::default()
    };
    let h = Harness::new(Duration::from_secs(8), setup).await;
    let path = token_path("payments", PAYMENTS, "");
    let mut floor = FloorCheck::default();
    let sent = now_ms();
    let (status, first) = h.get(&path).await;
    assert_eq!(status, 200, "{first}");
    let first = first["access_token"].as_str().unwrap().to_string();
    floor.served(&first, sent, now_ms());
    h.idp.set_fault(Fault::Close);

    // The cached token keeps being served while it has more than the floor (a quarter of its
    // 7 to 8 s) left, and not below it.
    let mut degraded = false;
    let mut outage = None;
    for _ in 0..80 {
        let sent = now_ms();
        let (status, body) = h.get(&path).await;
        if status == 200 {
            assert_eq!(body["access_token"].as_str().unwrap(), first);
            floor.served(&first, sent, now_ms());
            let (_, health) = h.get("/v1/health").await;
            degraded |= health["status"] == "degraded";
        } else {
            outage = Some((status, body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(degraded, "health said degraded while the renewal failed");
    floor.assert_never_below();
    let (status, body) = outage.expect("the cached token stops being served near expiry");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "upstream_unavailable");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains("corp"), "{body}");
    assert!(
        text.contains("too close to expiry"),
        "refused while the token was still valid: {body}"
    );

    h.idp.set_fault(Fault::None);
    let mut recovered = None;
    for _ in 0..50 {
        let (status, body) = h.get(&path).await;
        if status == 200 {
            recovered = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = recovered.unwrap_or_else(|| panic!("service resumes without a restart: {:?}", futures_last(&h, &path)));
    assert_ne!(body["access_token"].as_str().unwrap(), first);
}

#[tokio::test]
async fn min_valid_asks_for_a_token_with_at_least_that_long_left() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "");
    // Compared by fingerprint: a failed assertion prints no token.
    let token =
        |body: &serde_json::Value| cortexid::token::fingerprint(body["access_token"].as_str().unwrap().as_bytes());
    let (status, body) = h.get(&path).await;
    assert_eq!(status, 200, "{}", redacted(&body));
    let first = token(&body);

    // The cached token has about 300 s left: enough for min_valid=200.
    let (status, body) = h.get(&format!("{path}&min_valid=200")).await;
    assert_eq!(status, 200, "{}", redacted(&body));
    assert_eq!(token(&body), first);
    assert_eq!(h.idp.counters().exchanges, 1);

    // Not enough for min_valid=400: a new exchange (the provider now grants 600 s), and the new
    // token replaces the cached one for everybody.
    h.idp.set_token_lifetime(Duration::from_secs(600));
    let (status, body) = h.get(&format!("{path}&min_valid=400")).await;
    assert_eq!(status, 200, "{}", redacted(&body));
    let second = token(&body);
    assert_ne!(second, first);
    assert!(body["expires_in"].as_u64().unwrap() >= 400, "{}", redacted(&body));
    assert_eq!(h.idp.counters().exchanges, 2);
    let (_, body) = h.get(&path).await;
    assert_eq!(token(&body), second);

    // More than the provider grants: the caller's error, saying how long tokens last; the
    // fresh token stays cached.
    let (status, body) = h.get(&format!("{path}&min_valid=1000")).await;
    assert_eq!(status, 400, "{}", redacted(&body));
    assert_eq!(body["error"], "invalid_request");
    let text = body["error_description"].as_str().unwrap();
    assert!(
        text.contains("min_valid=1000") && text.contains("grants tokens of"),
        "{text}"
    );
    assert_eq!(h.idp.counters().exchanges, 3);
    let (_, body) = h.get(&path).await;
    assert_ne!(token(&body), second, "served the token fetched for min_valid=1000");
    assert_eq!(h.idp.counters().exchanges, 3);

    let (status, body) = h.get(&format!("{path}&min_valid=soon")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{}",
        redacted(&body)
    );
}

#[tokio::test]
async fn refusals_name_the_audience_or_the_caller() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let (status, body) = h.get(&token_path("payments", UNREGISTERED, "")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "invalid_target");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains(UNREGISTERED) && text.contains(CLIENT_ID), "{text}");

    let (status, body) = h.get(&token_path("payments", "https://elsewhere", "")).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (403, "invalid_target"));
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "payments.admin")).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (403, "invalid_scope"));
    let (status, body) = h.get(&token_path("nope", PAYMENTS, "")).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (404, "unknown_identity"));
    let (status, body) = h.get("/v1/token?audience=x&colour=red").await;
    assert_eq!((status, body["error"].as_str().unwrap()), (400, "invalid_request"));
    let (status, body) = h.get("/v1/token?identity=payments").await;
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("audience is required")
    );

    let me = nix::unistd::getuid().as_raw();
    let other = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![me + 4242],
            ..Setup::default()
        },
    )
    .await;
    let (status, body) = other.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "access_denied");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains(&format!("uid {me}")), "{text}");
    assert_eq!(
        other.idp.counters().token_requests,
        0,
        "a denied caller costs no exchange"
    );
    let (_, ids) = other.get("/v1/identities").await;
    assert_eq!(ids["identities"], serde_json::json!([]));
}

#[tokio::test]
async fn identities_and_health_describe_what_this_caller_may_do() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let (status, ids) = h.get("/v1/identities").await;
    assert_eq!(status, 200);
    assert_eq!(ids["identities"][0]["name"], "payments");
    assert_eq!(ids["identities"][0]["audiences"][0], PAYMENTS);
    assert_eq!(ids["identities"][1]["name"], "batch");
    h.get(&token_path("batch", LEDGER, "")).await;
    let mut health = serde_json::Value::Null;
    for _ in 0..50 {
        let (_, body) = h.get("/v1/health").await;
        health = body;
        if health["status"] != "starting" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["providers"]["corp"]["reachable"], true);
    assert_eq!(health["cache"]["entries"], 1);
    assert!(!health.to_string().contains("eyJ"), "health never shows a token");
    let (status, body) = h.get("/nope").await;
    assert_eq!((status, body["error"].as_str().unwrap()), (404, "not_found"));
}

#[tokio::test]
async fn a_rotated_subject_credential_starts_a_new_cache_key_within_the_recheck_interval() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let (_, first) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(
        claims(first["access_token"].as_str().unwrap())["sub"],
        "system:serviceaccount:prod:payments"
    );
    let rotated = h.mint_sa("system:serviceaccount:prod:payments-v2");
    write_secret(&h.sa_path, &rotated);
    // README's promise: the file is looked at again at most CREDENTIAL_RECHECK after the last look.
    tokio::time::sleep(cortexid::secrets::CREDENTIAL_RECHECK + Duration::from_millis(50)).await;
    let (status, second) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        claims(second["access_token"].as_str().unwrap())["sub"],
        "system:serviceaccount:prod:payments-v2"
    );
    assert_eq!(h.idp.counters().exchanges, 2, "the new credential made a new key");
    // The new key is the one served from now on, from the cache.
    let (_, third) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(third["access_token"], second["access_token"]);
    assert_eq!(h.idp.counters().exchanges, 2);
}

#[tokio::test]
async fn request_limits_are_enforced_with_json_errors() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let big = "x".repeat(70 * 1024);
    let r = h
        .client
        .post_json("/v1/token", &serde_json::json!({"audience": big}))
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json().unwrap()["error"], "invalid_request");
    let long = "a".repeat(20 * 1024);
    let r = h.client.get(&format!("/v1/token?audience={long}")).await.unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    let body = r.json().unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("16384 bytes"),
        "says the limit: {body}"
    );
    let r = h
        .client
        .post_json("/v1/token", &serde_json::json!({"audience": PAYMENTS, "colour": 1}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = h
        .client
        .get(&format!(
            "/v1/token?identity=payments&audience={}&subject_token=abc",
            PAYMENTS
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("body only"));
    // The agent still serves.
    let (status, _) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200);
}

fn futures_last(h: &Harness, _path: &str) -> String {
    format!(
        "{:?} audit tail: {:?}",
        h.idp.counters(),
        h.audit_lines().iter().rev().take(3).collect::<Vec<_>>()
    )
}
