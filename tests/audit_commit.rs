//! One audit line per token, whatever the load: `token.issued` lines of concurrent requests are
//! each written whole, and a token whose line was not written is never handed out.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use cortexid::cmd::client::SocketClient;
use cortexid::config::AuditTarget;

/// Connections a burst uses at once, each asking again as soon as it is answered.
const CONNECTIONS: usize = 32;

/// `token.issued` lines in an audit file whose outcome is `granted`.
fn issued_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "token.issued" && e["outcome"] == "granted")
        .count()
}

/// What a burst saw: tokens handed out, and refusals by error code.
#[derive(Default)]
struct Seen {
    tokens: usize,
    audit_unavailable: usize,
    other: Vec<String>,
}

/// `per_connection` requests on each of [`CONNECTIONS`] connections at once, all for `path`.
async fn burst(socket: &std::path::Path, path: &str, per_connection: usize) -> Seen {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let client = SocketClient::new(socket);
            let path = path.to_string();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                for _ in 0..per_connection {
                    let r = client.get(&path).await.unwrap();
                    let body = r.json().unwrap();
                    match (r.status, body["error"].as_str()) {
                        (200, _) if body["access_token"].is_string() => seen.tokens += 1,
                        (503, Some("audit_unavailable")) if body.get("access_token").is_none() => {
                            seen.audit_unavailable += 1
                        }
                        _ => seen.other.push(format!("{} {}", r.status, redacted(&body))),
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.tokens += s.tokens;
        all.audit_unavailable += s.audit_unavailable;
        all.other.extend(s.other);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_requests_writes_exactly_one_line_per_token() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "payments.read");
    let (status, body) = h.get(&path).await;
    assert_eq!(status, 200, "{body}");
    let seen = burst(&h.socket, &path, 25).await;
    assert!(seen.other.is_empty(), "{:?}", seen.other);
    assert_eq!(seen.tokens, CONNECTIONS * 25, "every request got its token");
    assert_eq!(
        issued_lines(&h.audit),
        seen.tokens + 1,
        "one token.issued line per token handed out (and the first request's)"
    );
    assert_eq!(h.idp.counters().exchanges, 1, "all from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_audit_log_unwritable_no_request_of_a_burst_gets_a_token() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    // A directory where the file should be: the log cannot be opened, now or at any write
    // (the agent runs as root here, so a file mode would not stop it).
    let audit = h.dir.path().join("a-directory.jsonl");
    std::fs::create_dir(&audit).unwrap();
    h.config.agent.audit_log = Some(AuditTarget::File(audit.clone()));
    h.write_config();
    h.start().await;
    let seen = burst(&h.socket, &token_path("payments", PAYMENTS, "payments.read"), 10).await;
    assert!(seen.other.is_empty(), "{:?}", seen.other);
    assert_eq!(seen.tokens, 0, "no token without its audit line");
    assert_eq!(seen.audit_unavailable, CONNECTIONS * 10);
    assert!(audit.is_dir(), "nothing was written in its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_that_breaks_mid_burst_stops_tokens_and_loses_no_line() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "payments.read");
    let (status, body) = h.get(&path).await;
    assert_eq!(status, 200, "{body}");

    // Connections ask continuously. Once the log is broken (and the reload that reopens it
    // has returned), each asks 20 more times: every one of those must be refused.
    let granted = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    let reloaded = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let client = SocketClient::new(&h.socket);
            let path = path.clone();
            let granted = granted.clone();
            let broken = broken.clone();
            let reloaded = reloaded.clone();
            tokio::spawn(async move {
                let (mut tokens, mut late_tokens, mut after) = (0, 0, 0);
                while after < 20 {
                    let late = reloaded.load(Ordering::Relaxed);
                    after += usize::from(late);
                    let r = client.get(&path).await.unwrap();
                    let body = r.json().unwrap();
                    if r.status == 200 && body["access_token"].is_string() {
                        tokens += 1;
                        granted.fetch_add(1, Ordering::Relaxed);
                        if late {
                            late_tokens += 1;
                        }
                    } else {
                        assert_eq!((r.status, body["error"].as_str()), (503, Some("audit_unavailable")));
                        assert!(broken.load(Ordering::Relaxed), "refused before the log broke: {body}");
                    }
                }
                (tokens, late_tokens)
            })
        })
        .collect();

    // Break it while the burst runs: the file moves away and, in the same instant, a directory
    // takes its place (no write can recreate the file in between), so the reopen at reload and
    // every write after it fail.
    while granted.load(Ordering::Relaxed) < 300 && !tasks.iter().any(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rotated = h.dir.path().join("audit.jsonl.1");
    std::fs::create_dir(&rotated).unwrap();
    broken.store(true, Ordering::Relaxed);
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, &h.audit, AT_FDCWD, &rotated, RenameFlags::RENAME_EXCHANGE).unwrap();
    h.agent.as_ref().unwrap().reload(&h.config_path).unwrap();
    reloaded.store(true, Ordering::Relaxed);

    let (mut tokens, mut late_tokens) = (0, 0);
    for t in tasks {
        let (n, late) = t.await.unwrap();
        tokens += n;
        late_tokens += late;
    }
    assert_eq!(late_tokens, 0, "no token once the log could not be written");
    assert!(tokens >= 300);
    assert_eq!(
        issued_lines(&rotated),
        tokens + 1,
        "every token handed out has its line (and the first request's), and no line is lost"
    );
}
