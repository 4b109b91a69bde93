//! Bots and AI agents: delegated, narrowly scoped, rate-limited tokens; see README.md, "Bots and AI agents".

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use cortexid::config::Rate;
use cortexid::devidp::fixture::Role;

const BOT: &str = "bot:deploy-agent";

/// uid 0 (this test process) is an agent limited to payments.read at 2 a minute; uid 4242 is a plain
/// service with the whole ceiling.
fn setup() -> Setup {
    Setup {
        role_uids: vec![4242],
        roles: vec![
            Role::new("deploy-agent", &["payments"])
                .uids(&[0])
                .scopes(&["payments.read"])
                .agent(Rate {
                    count: 2,
                    per: Duration::from_secs(60),
                }),
        ],
        ..Setup::default()
    }
}

fn bot_jwt(h: &Harness) -> String {
    let now = unix_now();
    h.idp
        .mint(serde_json::json!({"sub": BOT, "iat": now, "exp": now + 3600}))
}

fn ask(h: &Harness, scope: &str) -> serde_json::Value {
    serde_json::json!({"identity": "payments", "audience": PAYMENTS, "scope": scope, "actor_token": bot_jwt(h)})
}

#[tokio::test]
async fn an_agent_gets_a_delegated_token_naming_both_identities() {
    let h = Harness::new(Duration::from_secs(300), setup()).await;
    let r = h
        .client
        .post_json("/v1/token", &ask(&h, "payments.read"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let c = claims(r.json().unwrap()["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "system:serviceaccount:prod:payments");
    assert_eq!(c["act"]["sub"], BOT);
    let issued = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.issued")
        .unwrap();
    assert_eq!(issued["agent"], true);
    assert_eq!(issued["token"]["sub"], "system:serviceaccount:prod:payments");
    assert_eq!(issued["token"]["act"]["sub"], BOT);
    assert_eq!(issued["actor"]["sub"], BOT);
    assert_eq!(issued["caller"]["uid"], 0);

    // Without its own credential an agent gets nothing.
    let r = h
        .client
        .get(&token_path("payments", PAYMENTS, "payments.read"))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("actor_token"), "{}", r.text());
}

#[tokio::test]
async fn an_agent_gets_only_its_roles_scopes_while_a_service_keeps_the_ceiling() {
    let h = Harness::new(Duration::from_secs(300), setup()).await;
    let r = h
        .client
        .post_json("/v1/token", &ask(&h, "payments.write"))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let body = r.json().unwrap();
    assert_eq!(body["error"], "invalid_scope");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("allowed: payments.read"),
        "{body}"
    );

    open_dir(h.dir.path());
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let args = [
        "--identity",
        "payments",
        "--audience",
        PAYMENTS,
        "--scope",
        "payments.write",
    ];
    let (code, out, err) = token_as(4242, exe, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["scope"], "payments.write");
}

#[tokio::test]
async fn an_agent_process_over_its_rate_is_slowed_and_other_processes_are_not() {
    let mut h = Harness::new(Duration::from_secs(300), setup()).await;
    let body = ask(&h, "payments.read");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..12 {
        let r = h.client.post_json("/v1/token", &body).await.unwrap();
        if r.status == 429 {
            retry_after = r.headers.get("retry-after").map(|v| v.to_str().unwrap().to_string());
            assert_eq!(r.json().unwrap()["error"], "slow_down");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().unwrap() >= 1));

    // The rate is per calling process: two other processes under the same agent role (same
    // uid, same role, same identity and scope) each get their tokens meanwhile.
    let bot = h.dir.path().join("bot.jwt");
    write_secret(&bot, &bot_jwt(&h));
    let mut pids = Vec::new();
    for _ in 0..2 {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
            .args(["token", "--identity", "payments", "--audience", PAYMENTS])
            .args(["--scope", "payments.read", "--actor-token-file"])
            .arg(&bot)
            .env("CORTEXID_SOCKET", &h.socket)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        pids.push(u64::from(child.id().unwrap()));
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "another process of the agent role is not slowed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(claims(String::from_utf8(out.stdout).unwrap().trim())["act"]["sub"], BOT);
    }
    let issued: Vec<serde_json::Value> = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.issued")
        .collect();
    for pid in &pids {
        let line = issued
            .iter()
            .find(|l| l["caller"]["pid"] == *pid)
            .unwrap_or_else(|| panic!("no token.issued for pid {pid}"));
        assert_eq!(line["role"], "deploy-agent", "{line}");
        assert_eq!(line["caller"]["uid"], 0);
    }

    // A caller of another role is not slowed by it either.
    open_dir(h.dir.path());
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    for _ in 0..3 {
        let (code, _, err) = token_as(
            4242,
            exe,
            &h.socket,
            &["--identity", "payments", "--audience", PAYMENTS],
        )
        .await;
        assert_eq!(code, 0, "{err}");
    }
    // Identical refusals are collapsed into counted lines; at the latest at shutdown, each is
    // accounted for.
    h.stop().await;
    let denied: u64 = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["reason"] == "slow_down")
        .map(|l| 1 + l["repeated"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(denied, 10, "every refusal is audited");
}

#[tokio::test]
async fn a_subject_that_already_has_an_act_claim_yields_the_nested_chain() {
    let h = Harness::new(Duration::from_secs(300), setup()).await;
    let now = unix_now();
    let sa = h.idp.mint(serde_json::json!({
        "sub": "system:serviceaccount:prod:payments", "iat": now, "exp": now + 3600,
        "act": {"sub": "bot:upstream-pipeline"},
    }));
    write_secret(&h.sa_path, &sa);
    let r = h
        .client
        .post_json("/v1/token", &ask(&h, "payments.read"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let c = claims(r.json().unwrap()["access_token"].as_str().unwrap());
    assert_eq!(
        c["act"],
        serde_json::json!({"sub": BOT, "act": {"sub": "bot:upstream-pipeline"}})
    );
    let issued = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.issued")
        .unwrap();
    assert_eq!(
        issued["token"]["act"]["act"]["sub"], "bot:upstream-pipeline",
        "the audit line records the chain"
    );
}

#[tokio::test]
async fn may_act_that_does_not_name_the_actor_is_refused_and_the_caller_learns_why() {
    let h = Harness::new(Duration::from_secs(300), setup()).await;
    let now = unix_now();
    let sa = h.idp.mint(serde_json::json!({
        "sub": "system:serviceaccount:prod:payments", "iat": now, "exp": now + 3600,
        "may_act": {"sub": "bot:someone-else"},
    }));
    write_secret(&h.sa_path, &sa);
    let r = h
        .client
        .post_json("/v1/token", &ask(&h, "payments.read"))
        .await
        .unwrap();
    let body = r.json().unwrap();
    assert_eq!(r.status, 403, "{body}");
    assert_eq!(body["error"], "access_denied");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains("may_act") && text.contains(BOT), "{text}");
}
