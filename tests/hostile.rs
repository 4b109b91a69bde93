//! A hostile local user gets nothing. Each test is an attack from unprivileged uids against the
//! agent (the tests run as root, like a root agent would), kept so it stays refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::AsyncBufReadExt;

/// Starts `python3 -c script socket args…` as `uid`, with [`ASK`] defined for the script.
fn python_as(uid: u32, script: &str, socket: &Path, args: &[&str]) -> tokio::process::Child {
    let args = std::iter::once(socket.as_os_str()).chain(args.iter().map(std::ffi::OsStr::new));
    attacker(uid, &format!("{ASK}{script}"), args)
}

/// The first line a child prints.
async fn first_line(child: &mut tokio::process::Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(out).lines();
    lines.next_line().await.unwrap().unwrap_or_default()
}

/// The places for callers that are not operators in this process, as docs/api.md defines them:
/// the open-file limit less 81, between 16 and 2,048, less a 64th (1 to 16) kept for operators.
fn total_connection_cap() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft: usize = line.split_whitespace().nth(3).unwrap().parse().unwrap_or(2048);
    let total = soft.saturating_sub(81).clamp(16, 2048);
    total - (total / 64).clamp(1, 16)
}

/// Opens up to N connections, each with a request head that promises a body it never sends,
/// then prints how many the agent is still holding open (no answer yet) and waits.
const STALLED_BODIES: &str = r#"
import socket, sys, time, select
path, n = sys.argv[1], int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(b"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    except OSError:
        break
    conns.append(s)
time.sleep(1.5)
p = select.poll()
for s in conns:
    p.register(s, select.POLLIN)
answered = {fd for fd, _ in p.poll(0)}
print(sum(1 for s in conns if s.fileno() not in answered), flush=True)
time.sleep(30)
"#;

#[tokio::test]
async fn stalled_bodies_from_a_few_uids_do_not_lock_out_a_caller_with_one_connection() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    open_dir(h.dir.path());
    let total = total_connection_cap();
    // Four uids, two processes each, each process as many connections as one process may hold.
    let per_process = (total / 4).min(256);
    let mut attackers: Vec<_> = [4301u32, 4302, 4303, 4304]
        .iter()
        .flat_map(|&uid| [uid, uid])
        .map(|uid| python_as(uid, STALLED_BODIES, &h.socket, &[&per_process.to_string()]))
        .collect();
    let mut held = 0;
    for a in &mut attackers {
        held += first_line(a).await.trim().parse::<usize>().unwrap();
    }
    println!("the attackers hold {held} of {total} connections with bodies that never come");
    assert!(
        held >= total * 3 / 4,
        "the attack must load the agent to its reserve ({held} of {total} held)"
    );
    // The caller with one connection (root here) is still served while they hold theirs.
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "{body}");
    drop(attackers);
}

#[tokio::test]
async fn a_body_that_never_comes_is_answered_408_and_the_connection_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let mut stream = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    stream
        .write_all(
            b"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The agent's deadline is 10 s; the bound here only keeps a broken agent from hanging the run.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the agent must answer a stalled body and close the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"invalid_request\""), "{text}");
    assert!(text.contains("did not arrive within 10 s"), "{text}");
}

/// Sends N requests, each on its own connection, with the JSON body argv[3]; prints the status
/// codes seen, space-separated, then the longest answer's length.
const REPEAT_POST: &str = r#"
n, body = int(sys.argv[2]), sys.argv[3].encode()
codes, longest = set(), 0
for i in range(n):
    answer = ask(b"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    codes.add(answer.split(b" ")[1].decode())
    longest = max(longest, len(answer))
print(" ".join(sorted(codes)), longest, flush=True)
"#;

/// What the request scripts share: `ask(request)` sends one request on its own connection to
/// the socket (argv[1]) and returns the whole answer.
const ASK: &str = r#"
import json, socket, sys
def ask(request):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(request)
    answer = read_all(s)
    s.close()
    return answer
"#;

#[tokio::test]
async fn a_caller_without_a_role_cannot_fill_the_disk_through_the_audit_log() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    open_dir(h.dir.path());
    let audit_size = || std::fs::metadata(&h.audit).map(|m| m.len()).unwrap_or(0);
    let before = audit_size();

    // 200 requests naming a 65 KB identity: refused before they reach the policy.
    let huge = serde_json::json!({"identity": "x".repeat(65_000), "audience": PAYMENTS}).to_string();
    let mut attacker = python_as(4401, REPEAT_POST, &h.socket, &["200", &huge]);
    let seen = first_line(&mut attacker).await;
    assert!(seen.starts_with("400 "), "{seen}");
    let longest: usize = seen.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        longest < 1024,
        "the answer does not echo the identity back: {longest} bytes"
    );

    // 200 requests for a real identity this uid has no role for: one line, then a count.
    let denied = serde_json::json!({"identity": "payments", "audience": PAYMENTS}).to_string();
    let mut attacker = python_as(4401, REPEAT_POST, &h.socket, &["200", &denied]);
    assert!(first_line(&mut attacker).await.starts_with("403 "));

    let grown = audit_size() - before;
    let lines: Vec<_> = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.denied" && l["caller"]["uid"] == 4401)
        .collect();
    println!("400 refused requests left {grown} bytes in {} audit lines", lines.len());
    assert_eq!(lines.len(), 2, "one line per kind of denial in the window");
    assert!(
        grown < 4096,
        "the audit log grew by {grown} bytes for 400 refused requests"
    );
    for l in &lines {
        assert!(l.to_string().len() < 2048, "{l}");
    }
}

#[tokio::test]
async fn actor_tokens_from_a_role_that_is_not_an_agent_make_no_exchange_and_no_key() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let before = h.idp.counters().exchanges + h.idp.counters().client_credentials;
    for n in 0..50 {
        let actor = h.mint_sa(&format!("bot:flood-{n}"));
        let r = h
            .client
            .post_json(
                "/v1/token",
                &serde_json::json!({"identity": "payments", "audience": PAYMENTS, "actor_token": actor}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        let body = r.json().unwrap();
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("not an agent role"),
            "{body}"
        );
    }
    let after = h.idp.counters().exchanges + h.idp.counters().client_credentials;
    assert_eq!(after, before, "no exchange for a refused actor token");
    let (_, health) = h.get("/v1/health").await;
    assert_eq!(health["cache"]["entries"], 0, "no cache key either: {health}");
}

/// GETs each path in argv[2:] on its own connection; prints one JSON line per answer:
/// {"status": N, "body": "..."}.
const GET_PATHS: &str = r#"
for path in sys.argv[2:]:
    answer = ask(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    print(json.dumps({"status": int(head.split(b" ")[1]), "body": body.decode()}), flush=True)
"#;

/// Runs [`GET_PATHS`] as `uid` and returns (status, body) per path.
async fn get_as(uid: u32, socket: &Path, paths: &[&str]) -> Vec<(u16, String)> {
    let child = python_as(uid, GET_PATHS, socket, paths);
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["status"].as_u64().unwrap() as u16,
                v["body"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_caller_without_a_role_learns_nothing_of_other_callers_or_of_the_roles() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    open_dir(h.dir.path());
    // Root (the role's caller, and an operator) makes a key and sees the details.
    let (status, granted) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200);
    let fingerprint = cortexid::token::fingerprint(granted["access_token"].as_str().unwrap().as_bytes());
    let (_, health) = h.get("/v1/health").await;
    assert_eq!(
        health["cache"]["keys"][0]["fingerprint"],
        fingerprint.as_str(),
        "{health}"
    );

    let answers = get_as(
        4501,
        &h.socket,
        &[
            "/v1/health",
            &token_path("payments", PAYMENTS, ""),
            &token_path("no-such-identity", PAYMENTS, ""),
        ],
    )
    .await;
    let (status, health) = &answers[0];
    assert_eq!(*status, 200);
    let health: serde_json::Value = serde_json::from_str(health).unwrap();
    assert_eq!(health["cache"]["entries"], 1, "counts are shown: {health}");
    for hidden in [fingerprint.as_str(), "keys", PAYMENTS, "last_error"] {
        assert!(
            !health.to_string().contains(hidden),
            "{hidden:?} shown to a non-operator: {health}"
        );
    }
    let (existing, missing) = (&answers[1], &answers[2]);
    assert_eq!(
        (existing.0, missing.0),
        (403, 403),
        "an identity's existence is not revealed"
    );
    for (_, body) in [existing, missing] {
        assert!(body.contains("uid 4501"), "the caller as seen is named: {body}");
        assert!(body.contains("under reference"), "{body}");
        for hidden in ["payments-service", "needs uid", "not configured", "{0}"] {
            assert!(!body.contains(hidden), "{hidden:?} told to a non-operator: {body}");
        }
    }
    let denied: Vec<_> = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.denied" && l["caller"]["uid"] == 4501)
        .collect();
    assert_eq!(denied.len(), 2);
    assert!(
        denied.iter().all(|l| l["reference"].is_string()),
        "the audit line carries the reference and the reasons: {denied:?}"
    );
    assert!(
        denied[1]["error_description"]
            .as_str()
            .unwrap()
            .contains("no-such-identity")
    );
}

/// A file root owns, that an attacker would like root to append to.
fn victim(dir: &Path) -> std::path::PathBuf {
    let victim = dir.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    victim
}

fn assert_untouched(victim: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "untouched\n");
    assert_eq!(std::fs::metadata(victim).unwrap().permissions().mode() & 0o7777, 0o600);
}

#[tokio::test]
async fn an_audit_log_where_others_can_plant_a_link_is_refused_before_start() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let victim = victim(h.dir.path());
    // A shared directory like /tmp: everyone may create files (sticky bit set).
    let shared = h.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let planted = shared.join("audit.jsonl");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(4601), Some(4601)).unwrap();
    h.config.agent.audit_log = Some(cortexid::config::AuditTarget::File(planted));
    h.write_config();

    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let out = std::process::Command::new(exe)
        .args(["check-config", "--config"])
        .arg(&h.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("agent.audit_log") && err.contains("can be written by every user"),
        "{err}"
    );
    let mut agent = tokio::process::Command::new(exe);
    agent.args(["agent", "--config"]).arg(&h.config_path).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), agent.output())
        .await
        .expect("the agent must refuse to start, not run")
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert_untouched(&victim);
}

#[tokio::test]
async fn cortexid_dev_refuses_a_directory_another_user_owns() {
    let base = tempfile::tempdir().unwrap();
    let victim = victim(base.path());
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(4602), Some(4602)).unwrap();
    std::os::unix::fs::symlink(&victim, theirs.join("audit.jsonl")).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["dev", "--dir"]).arg(&theirs).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("cortexid dev must refuse at once, not start")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to uid 4602"), "{err}");
    let written: Vec<_> = std::fs::read_dir(&theirs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["audit.jsonl"], "nothing is written into their directory");
    assert_untouched(&victim);
}
