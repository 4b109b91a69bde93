//! Gentle with a provider a fleet shares: provider-wide `max_concurrent`, misses before renewals,
//! a `Retry-After` that pauses every key of the provider, and a restart that needs no exchange
//! for tokens still valid (`persist_tokens`). Pacing is asserted from the provider's request log
//! (arrival times and the concurrency each request arrived into), never from the test's clock.

mod common;

use std::time::Duration;

use common::*;
use cortexid::devidp::{DevClient, DevClientAuth, Fault};

const KEYS: usize = 50;

fn audience(i: usize) -> String {
    format!("https://svc-{i}.internal")
}

fn fleet_key(i: usize) -> String {
    token_path("fleet", &audience(i), "")
}

/// The shared harness plus identity `fleet` (client credentials, [`KEYS`] audiences the provider
/// knows), with `max_concurrent`, a 10 s wait limit for misses, and `tweak` applied; the agent is
/// restarted on that configuration and the provider's counters and log are reset.
async fn fleet(lifetime: Duration, setup: Setup, tweak: impl FnOnce(&mut Harness)) -> Harness {
    let mut h = Harness::new(lifetime, setup).await;
    let auds: Vec<String> = (0..KEYS).map(audience).collect();
    let mut known = vec![PAYMENTS.to_string(), LEDGER.to_string()];
    known.extend(auds.iter().cloned());
    h.idp.add_client(
        DevClient::new(CLIENT_ID, DevClientAuth::SecretBasic(SECRET.into()))
            .with_audiences(&known)
            .with_scopes(&["payments.read", "payments.write"]),
    );
    h.config
        .identities
        .push(cortexid::devidp::fixture::Identity::client_credentials("fleet", "corp").audiences(&auds));
    h.config.roles[0].identities.push("fleet".into());
    h.config.agent.upstream_timeout = Some(Duration::from_secs(10));
    tweak(&mut h);
    h.write_config();
    h.stop().await;
    h.start().await;
    h.idp.reset_counters();
    h
}

/// Asks for every key in `keys` at once; returns each status.
async fn ask_all(h: &Harness, keys: impl Iterator<Item = String>) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for k in keys {
        let c = h.client.clone();
        tasks.spawn(async move { c.get(&k).await.map(|r| r.status).unwrap_or(0) });
    }
    let mut out = Vec::new();
    while let Some(s) = tasks.join_next().await {
        out.push(s.unwrap());
    }
    out
}

fn exchanges(h: &Harness) -> Vec<serde_json::Value> {
    h.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.exchanged")
        .collect()
}

#[tokio::test]
async fn max_concurrent_bounds_what_the_provider_sees_and_every_caller_is_served() {
    let h = fleet(Duration::from_secs(300), Setup::default(), |h| {
        h.config.providers[0].max_concurrent = Some(2);
    })
    .await;
    // Each answer takes 100 ms, so 50 misses at once would overlap without the limit.
    h.idp.set_fault(Fault::Delay(Duration::from_millis(100)));
    let statuses = ask_all(&h, (0..KEYS).map(fleet_key)).await;
    assert_eq!(statuses, vec![200; KEYS], "all 50 callers are served");
    let log = h.idp.token_requests();
    assert_eq!(log.len(), KEYS, "one exchange per key");
    let peak = log.iter().map(|r| r.in_flight).max().unwrap();
    assert!(peak <= 2, "the provider saw {peak} requests in flight at once");
    assert_eq!(peak, 2, "the limit is used, not undershot");
    let (_, health) = h.get("/v1/health").await;
    let limits = &health["providers"]["corp"]["limits"];
    assert_eq!(limits["sent"], 50, "{health}");
    assert_eq!(limits["queued"], 0, "{health}");
}

#[tokio::test]
async fn a_miss_queued_behind_renewals_goes_first() {
    // 20 s tokens renewed at half their life (9 to 11 s): the renewals of ten keys queue up
    // behind max_concurrent = 1 while each answer takes 500 ms.
    let setup = Setup {
        refresh_at: Some(0.5),
        ..Setup::default()
    };
    let h = fleet(Duration::from_secs(20), setup, |h| {
        h.config.providers[0].max_concurrent = Some(1);
    })
    .await;
    assert_eq!(ask_all(&h, (0..10).map(fleet_key)).await, vec![200; 10]);
    h.idp.set_fault(Fault::Delay(Duration::from_millis(500)));
    let mut queued = 0;
    for _ in 0..400 {
        let (_, health) = h.get("/v1/health").await;
        queued = health["providers"]["corp"]["limits"]["queued"].as_u64().unwrap_or(0);
        if queued >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queued >= 3, "renewals never queued up ({queued})");
    let renewed_before = exchanges(&h).iter().filter(|l| l["reason"] == "renewal").count();
    let (status, _) = h.get(&fleet_key(KEYS - 1)).await;
    assert_eq!(status, 200);
    // Let the queued renewals finish.
    for _ in 0..400 {
        let (_, health) = h.get("/v1/health").await;
        let l = &health["providers"]["corp"]["limits"];
        if l["queued"] == 0 && l["in_flight"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = exchanges(&h);
    let miss = lines
        .iter()
        .position(|l| l["reason"] == "miss" && l["audience"] == audience(KEYS - 1))
        .expect("the miss was exchanged");
    let renewals_before_miss = lines[..miss].iter().filter(|l| l["reason"] == "renewal").count();
    let renewals_after_miss = lines[miss..].iter().filter(|l| l["reason"] == "renewal").count();
    assert!(
        renewals_before_miss - renewed_before <= 2,
        "only the renewal in flight (and one racing the request) went before the miss: {}",
        renewals_before_miss - renewed_before
    );
    assert!(
        renewals_after_miss >= 2,
        "renewals queued before the miss went after it: {renewals_after_miss} (queued: {queued})"
    );
}

#[tokio::test]
async fn one_retry_after_pauses_every_key_of_the_provider() {
    let h = fleet(Duration::from_secs(300), Setup::default(), |_| {}).await;
    h.idp.set_fault(Fault::OnceRetryAfter(429, 2));
    let first = h.client.get(&fleet_key(0)).await.unwrap();
    assert_eq!(first.status, 503, "the refused miss is told to come back");
    let retry: u64 = first.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 2, "Retry-After {retry}");
    // Four other keys ask at once, during the pause.
    let statuses = ask_all(&h, (1..5).map(fleet_key)).await;
    assert_eq!(statuses, vec![200; 4], "served once the pause is over");
    let log = h.idp.token_requests();
    assert_eq!(log[0].status, Some(429));
    assert_eq!(log.len(), 5, "nothing else was refused: {log:?}");
    let paused = log[1].arrived.duration_since(log[0].arrived);
    assert!(
        paused >= Duration::from_secs(2),
        "the next request came {paused:?} after the 429, not after Retry-After"
    );
    assert!(
        paused < Duration::from_secs(5),
        "the pause is Retry-After plus at most 20 % jitter, not {paused:?}"
    );
    let (_, health) = h.get("/v1/health").await;
    assert_eq!(health["providers"]["corp"]["limits"]["pauses"], 1, "{health}");
    let metrics = h.client.get("/metrics").await.unwrap();
    let text = metrics.text();
    assert!(
        text.contains("cortexid_provider_pauses_total{provider=\"corp\"} 1"),
        "{text}"
    );
}

/// A harness whose agent keeps its token cache in `DIR/state`.
async fn persisting() -> Harness {
    fleet(Duration::from_secs(300), Setup::default(), |h| {
        h.config.agent.state_dir = Some(h.fx.dir().join("state"));
        h.config.agent.persist_tokens = true;
    })
    .await
}

#[tokio::test]
async fn a_restart_with_persisted_tokens_asks_the_provider_nothing_for_valid_keys() {
    let mut h = persisting().await;
    let keys = [
        token_path("payments", PAYMENTS, "payments.read"),
        token_path("batch", LEDGER, "payments.read"),
        fleet_key(7),
    ];
    let mut before = Vec::new();
    for k in &keys {
        let (status, body) = h.get(k).await;
        assert_eq!(status, 200, "{}", redacted(&body));
        before.push(body["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(h.idp.counters().token_requests, 3);
    h.stop().await;
    let state = h.fx.dir().join("state");
    let saved = std::fs::read(state.join("tokens")).unwrap();
    for t in &before {
        assert!(
            !saved.windows(t.len()).any(|w| w == t.as_bytes()),
            "no token is stored in plaintext"
        );
    }
    h.idp.reset_counters();
    h.start().await;
    for (k, token) in keys.iter().zip(&before) {
        let (status, body) = h.get(k).await;
        assert_eq!(status, 200, "{}", redacted(&body));
        let print = |t: &str| cortexid::token::fingerprint(t.as_bytes());
        assert_eq!(
            print(body["access_token"].as_str().unwrap()),
            print(token),
            "the same token, from the cache"
        );
    }
    assert_eq!(h.idp.counters().token_requests, 0, "no exchange after the restart");
    // A rotated credential file is a new key: its saved token is not restored.
    h.stop().await;
    std::fs::write(&h.sa_path, h.mint_sa("system:serviceaccount:prod:other")).unwrap();
    h.start().await;
    let (status, body) = h.get(&keys[0]).await;
    assert_eq!(status, 200);
    assert!(
        body["access_token"].as_str().unwrap() != before[0],
        "a new token for the new credential"
    );
    assert_eq!(h.idp.counters().token_requests, 1, "only the rotated key was exchanged");
}

#[tokio::test]
async fn a_corrupted_state_file_is_moved_aside_and_the_agent_starts() {
    let mut h = persisting().await;
    let key = fleet_key(3);
    assert_eq!(h.get(&key).await.0, 200);
    h.stop().await;
    let state = h.fx.dir().join("state");
    let mut bytes = std::fs::read(state.join("tokens")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(state.join("tokens"), &bytes).unwrap();
    h.idp.reset_counters();
    h.start().await;
    let (status, _) = h.get(&key).await;
    assert_eq!(status, 200, "the agent serves, exchanging anew");
    assert_eq!(h.idp.counters().token_requests, 1);
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tokens.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
}

/// An attack from an unprivileged user: where `state_dir` lies in a directory everyone can
/// write (like /tmp), the attacker makes it first, with a link planted as the key. The agent
/// refuses the directory (and so never reads or writes through the link), and says why.
#[tokio::test]
async fn a_state_dir_an_attacker_made_first_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    open_dir(h.fx.dir());
    let shared = h.fx.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let state = shared.join("state");
    let victim = h.fx.dir().join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"mkdir -m 0700 "$1" && ln -s "$2" "$1/state.key""#)
        .arg("attacker")
        .arg(&state)
        .arg(&victim)
        .uid(4242)
        .gid(4242)
        .status()
        .unwrap();
    assert!(status.success(), "the attacker prepared the directory");
    h.stop().await;
    h.config.agent.state_dir = Some(state.clone());
    h.config.agent.persist_tokens = true;
    h.write_config();
    let err = cortexid::agent::load_config(&h.config_path).unwrap_err().to_string();
    assert!(
        err.contains("agent.state_dir") && err.contains("belongs to uid 4242"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}
