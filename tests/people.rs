//! People sign in once (SPEC section 8), through the real CLI and socket against the development
//! provider: the device flow approved through the provider's test control, the browser flow
//! through the CLI's loopback listener, sessions bound to the uid that signed in (attacked as
//! unprivileged uids and root), claims that change at the provider, revocation and logout.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::people::{api_as, browser_login, cli_as, line_where, people_with, run_as};
use common::{Harness, PAYMENTS, claims, open_dir};
use cortexid::devidp::fixture::{Identity, Login, Role};
use tokio::io::{AsyncBufReadExt, BufReader};

const PERSON: &str = "Alice Smith";
const SUB: &str = "alice-smith";
const ALICE_UID: u32 = 1000;
const MALLORY_UID: u32 = 1001;

/// The harness with a `[[login]]` "corp", the person identity "me" and the role "team".
async fn people(lifetime: Duration) -> Harness {
    people_with(lifetime, Login::new("corp", "corp"), |_| {}).await
}

/// Signs ALICE_UID in through `cortexid login --device`, approved at the provider as Alice with
/// `groups`; returns the CLI's whole output.
async fn sign_in_device(h: &Harness, groups: &[&str]) -> String {
    let mut child = cli_as(ALICE_UID, &h.socket, &["login", "--device"], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let complete = line_where(&mut lines, |l| l.contains("user_code=")).await;
    let code = complete.trim().rsplit('=').next().unwrap().to_string();
    let rest = line_where(&mut lines, |l| l.contains("enter the code")).await;
    assert!(rest.contains(&format!("/device and enter the code {code}")), "{rest}");
    assert!(h.idp.approve_device(&code, PERSON, groups), "the provider knows {code}");
    let mut out = format!("{complete}\n{rest}\n");
    while let Some(l) = lines.next_line().await.unwrap() {
        out.push_str(&l);
        out.push('\n');
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "cortexid login failed: {out}");
    out
}

/// `cortexid token --identity me` as `uid`.
async fn my_token(h: &Harness, uid: u32) -> (i32, String, String) {
    run_as(uid, &h.socket, &["token", "--identity", "me", "--audience", PAYMENTS]).await
}

/// Waits (bounded) until the audit log has an event `name` matching `pred`.
async fn audited(h: &Harness, name: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    audited_after(h, 0, name, pred).await
}

/// Like [`audited`], among the lines after the first `skip`.
async fn audited_after(
    h: &Harness,
    skip: usize,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..600 {
        if let Some(e) = h
            .audit_lines()
            .into_iter()
            .skip(skip)
            .find(|e| e["event"] == name && pred(e))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {name} event in the audit log: {:#?}", h.audit_lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_by_device_code_and_only_their_uid_gets_tokens_as_them() {
    let h = people(Duration::from_secs(300)).await;
    let out = sign_in_device(&h, &["payments"]).await;
    assert!(out.contains(&format!("signed in as {SUB}")), "{out}");
    assert!(out.contains("groups: [\"payments\"]"), "{out}");

    let (code, token, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");
    let c = claims(token.trim());
    assert_eq!(c["sub"], SUB, "the token's subject is the person");
    assert_eq!(c["aud"], PAYMENTS);

    // Another user, and root, hold no session: 401 naming the login and the command.
    for uid in [MALLORY_UID, 0] {
        let (code, out, err) = my_token(&h, uid).await;
        assert_ne!(code, 0, "uid {uid} got a token: {out}");
        assert!(
            err.contains("login_required") && err.contains("cortexid login corp"),
            "uid {uid}: {err}"
        );
    }
    let (status, me) = api_as(MALLORY_UID, &h, "GET", "/v1/whoami", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        me["sessions"],
        serde_json::json!([]),
        "another uid sees no one's session"
    );
    assert_eq!(me["caller"]["uid"], MALLORY_UID);
    let (status, _) = api_as(MALLORY_UID, &h, "DELETE", "/v1/sessions/corp", None).await;
    assert_eq!(status, 404, "another uid cannot end the session either");
    let (code, who, _) = run_as(ALICE_UID, &h.socket, &["whoami"]).await;
    assert_eq!(code, 0);
    assert!(
        who.contains(&format!("signed in as {SUB}")) && who.contains("roles: team"),
        "{who}"
    );

    let completed = audited(&h, "login.completed", |_| true).await;
    assert_eq!(
        (completed["uid"].as_u64(), completed["sub"].as_str()),
        (Some(1000), Some(SUB))
    );
    assert_eq!(completed["flow"], "device");
    let issued = audited(&h, "token.issued", |e| e["identity"] == "me").await;
    assert_eq!(issued["session"]["sub"], SUB);
    assert_eq!(issued["session"]["login"], "corp");
    let audit = std::fs::read_to_string(&h.audit).unwrap();
    assert!(!audit.contains(token.trim()), "the token is in the audit log");
    assert!(
        !audit.contains("refresh_token\":\""),
        "a refresh token is in the audit log"
    );
    let (_, sessions) = api_as(ALICE_UID, &h, "GET", "/v1/sessions", None).await;
    let shown = sessions.to_string();
    assert!(
        !shown.contains(token.trim()) && !shown.contains("eyJ"),
        "a token in /v1/sessions: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_browser_flow_comes_back_through_the_cli_and_refuses_a_tampered_state() {
    let h = people(Duration::from_secs(300)).await;
    let http = reqwest::Client::new();

    // A tampered state: the CLI answers 400, relays nothing and keeps waiting; the real
    // redirect then completes the sign-in.
    let (child, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    let tampered = back.replace("state=", "state=x");
    let answered = http.get(&tampered).send().await.unwrap();
    assert_eq!(answered.status(), 400);
    let page = answered.text().await.unwrap();
    assert!(page.contains("state"), "{page}");
    assert_eq!(h.idp.people_counters().code_redemptions, 0, "nothing was redeemed");
    let page = http.get(&back).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("You can close this tab"), "{page}");
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.idp.people_counters().code_redemptions, 1);

    // The real thing.
    let (mut child, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    assert!(
        url.contains("code_challenge=") && url.contains("prompt=consent"),
        "{url}"
    );
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    assert!(back.starts_with("http://127.0.0.1:"), "{back}");
    let page = http.get(&back).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("You can close this tab"), "{page}");
    let status = child.wait().await.unwrap();
    assert!(status.success());
    let (code, token, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(token.trim())["sub"], SUB);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_relayed_by_another_uid_or_root_is_refused() {
    let h = people(Duration::from_secs(300)).await;
    let (status, started) = api_as(
        ALICE_UID,
        &h,
        "POST",
        "/v1/login",
        Some(r#"{"flow":"browser","redirect_port":43999}"#),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let id = started["login_id"].as_str().unwrap().to_string();
    assert!(started.get("verifier").is_none() && !started.to_string().contains("code_verifier"));
    let back = h
        .idp
        .approve_authorization(started["authorization_url"].as_str().unwrap(), PERSON, &["payments"])
        .unwrap();
    let q: std::collections::HashMap<String, String> =
        url::Url::parse(&back).unwrap().query_pairs().into_owned().collect();
    let body = serde_json::json!({"code": q["code"], "state": q["state"]}).to_string();
    let path = format!("/v1/login/{id}/callback");
    let (status, refused) = api_as(MALLORY_UID, &h, "POST", &path, Some(&body)).await;
    assert_eq!(status, 404, "{refused}");
    let (status, _) = api_as(0, &h, "POST", &path, Some(&body)).await;
    assert_eq!(status, 404, "root cannot complete someone else's sign-in");
    let (status, _) = api_as(MALLORY_UID, &h, "GET", &format!("/v1/login/{id}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(h.idp.people_counters().code_redemptions, 0);
    let (status, done) = api_as(ALICE_UID, &h, "POST", &path, Some(&body)).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("complete")), "{done}");
    assert_eq!(done["session"]["sub"], SUB);
    assert_eq!(h.idp.people_counters().code_redemptions, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_follow_the_provider_at_each_refresh_and_a_revoked_session_ends() {
    // Short tokens: sessions refresh every few seconds.
    let h = people(Duration::from_secs(8)).await;
    sign_in_device(&h, &["payments"]).await;
    let (code, _, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");

    let before = h.audit_lines().len();
    assert!(h.idp.set_groups(PERSON, &["eng"]));
    audited_after(&h, before, "session.refreshed", |e| {
        e["claims"]["groups"] == serde_json::json!(["eng"])
    })
    .await;
    let (code, _, err) = my_token(&h, ALICE_UID).await;
    assert_ne!(code, 0);
    assert!(err.contains("access_denied") && err.contains("claim groups"), "{err}");

    let before = h.audit_lines().len();
    assert!(h.idp.set_groups(PERSON, &["payments"]));
    audited_after(&h, before, "session.refreshed", |e| {
        e["claims"]["groups"] == serde_json::json!(["payments"])
    })
    .await;
    let (code, _, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "the role returns without a new sign-in: {err}");

    assert!(h.idp.revoke_person(PERSON) > 0);
    let ended = audited(&h, "session.ended", |_| true).await;
    assert_eq!(ended["reason"], "revoked");
    let (code, out, err) = my_token(&h, ALICE_UID).await;
    assert_ne!(code, 0, "a derived token was served after the session ended: {out}");
    assert!(err.contains("login_required") && err.contains("revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_at_the_provider_and_forgets_the_session() {
    let h = people(Duration::from_secs(300)).await;
    sign_in_device(&h, &["payments"]).await;
    assert_eq!(my_token(&h, ALICE_UID).await.0, 0);
    let (_, health) = h.get("/v1/health").await;
    assert!(
        health["cache"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["identity"] == "me"),
        "{health}"
    );
    let (code, _, err) = run_as(MALLORY_UID, &h.socket, &["logout", "corp"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no session"), "{err}");
    let (code, out, err) = run_as(ALICE_UID, &h.socket, &["logout"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked at the provider"), "{out}");
    assert_eq!(
        h.idp.people_counters().revocations,
        1,
        "the provider counted the revocation"
    );
    let ended = audited(&h, "session.ended", |_| true).await;
    assert_eq!(ended["reason"], "logout");
    // The tokens derived from the session left the cache with it.
    let (_, health) = h.get("/v1/health").await;
    let keys = health["cache"]["keys"].as_array().unwrap();
    assert!(
        !keys.iter().any(|k| k["identity"] == "me"),
        "a derived token is still cached: {keys:?}"
    );
    let (code, _, err) = my_token(&h, ALICE_UID).await;
    assert_ne!(code, 0);
    assert!(err.contains("login_required") && err.contains("logout"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persisted_session_survives_a_restart_encrypted() {
    let mut h = people(Duration::from_secs(300)).await;
    h.stop().await;
    h.config.logins[0] = Login::new("corp", "corp").persist();
    h.write_config();
    // [agent] state_dir, which the typed fixture does not write.
    let state = h.dir.path().join("state");
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let text = text.replacen(
        "[agent]\n",
        &format!("[agent]\nstate_dir = \"{}\"\n", state.display()),
        1,
    );
    std::fs::write(&h.config_path, text).unwrap();
    h.start().await;

    sign_in_device(&h, &["payments"]).await;
    let (code, before, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");
    h.stop().await;
    let redemptions = h.idp.people_counters().sessions_issued;
    h.start().await;
    let (code, after, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "the session did not survive the restart: {err}");
    assert_eq!(claims(after.trim())["sub"], SUB);
    assert_eq!(h.idp.people_counters().sessions_issued, redemptions, "no new sign-in");
    let (code, _, _) = my_token(&h, MALLORY_UID).await;
    assert_ne!(code, 0, "still bound to its uid");

    for entry in std::fs::read_dir(&state).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for clear in ["eyJ", SUB, "refresh_token", before.trim()] {
            assert!(!text.contains(clear), "{clear:?} in clear in state_dir");
        }
    }
    // A state file that does not decrypt is moved aside, and the agent starts without it.
    h.stop().await;
    std::fs::write(state.join("sessions"), b"not encrypted").unwrap();
    h.start().await;
    let (code, _, err) = my_token(&h, ALICE_UID).await;
    assert_ne!(code, 0);
    assert!(err.contains("login_required"), "{err}");
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("sessions.corrupt-"));
    assert!(aside, "the undecryptable file was not moved aside");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_each_login_at_the_provider() {
    let mut h = people(Duration::from_secs(300)).await;
    let doctor = |path: std::path::PathBuf| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
            .arg("doctor")
            .arg("--config")
            .arg(path)
            .output()
            .await
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = doctor(h.config_path.clone()).await;
    assert!(out.contains("login \"corp\""), "{out}");
    assert!(out.contains("ok    device flow: offered"), "{out}");
    assert!(out.contains("ok    revocation: offered"), "{out}");
    assert!(
        out.contains("ok    login client: \"cortexid-login\" is accepted"),
        "{out}"
    );
    assert!(out.contains("logins: 1 of 1 work"), "{out}");
    assert!(out.contains("not checked") && out.contains("me"), "{out}");
    assert_eq!(code, Some(0), "{out}");

    h.config.logins[0].client_id = "not-registered".into();
    h.write_config();
    let (code, out) = doctor(h.config_path.clone()).await;
    assert!(out.contains("FAIL  login client"), "{out}");
    assert_eq!(code, Some(1), "{out}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_working_for_a_person_gets_tokens_with_the_person_as_sub_and_itself_as_act() {
    let mut h = people(Duration::from_secs(300)).await;
    h.stop().await;
    h.config.identities.push(
        Identity::person("me-via-bot", "corp", "corp")
            .actor_identity("batch")
            .audiences(&[PAYMENTS])
            .scopes(&["payments.read"]),
    );
    h.config.roles.push(
        Role::new("assistant", &["me-via-bot"])
            .login("corp")
            .claim("groups", &["payments"])
            .scopes(&["payments.read"])
            .agent(cortexid::config::Rate::parse("10/s").unwrap()),
    );
    h.write_config();
    h.start().await;
    sign_in_device(&h, &["payments"]).await;
    let (code, token, err) = run_as(
        ALICE_UID,
        &h.socket,
        &[
            "token",
            "--identity",
            "me-via-bot",
            "--audience",
            PAYMENTS,
            "--scope",
            "payments.read",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let c = claims(token.trim());
    assert_eq!(c["sub"], SUB, "the person is the subject");
    assert_eq!(
        c["act"]["sub"],
        common::CLIENT_ID,
        "the agent's own identity is the actor"
    );
    let issued = audited(&h, "token.issued", |e| e["identity"] == "me-via-bot").await;
    assert_eq!(issued["agent"], true);
    assert_eq!(issued["session"]["sub"], SUB);
    // Without the person's session, the agent gets nothing.
    let (code, _, err) = run_as(
        MALLORY_UID,
        &h.socket,
        &[
            "token",
            "--identity",
            "me-via-bot",
            "--audience",
            PAYMENTS,
            "--scope",
            "payments.read",
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("login_required"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_reaches_the_agent_s_logs_or_the_audit_log() {
    // The real daemon, its debug logs in a file.
    let mut h = people(Duration::from_secs(8)).await;
    h.stop().await;
    let log = h.dir.path().join("agent.log");
    let agent = common::AgentProcess::spawn(&h.config_path, &h.socket, log, &[]).await;
    let out = sign_in_device(&h, &["payments"]).await;
    assert!(out.contains(SUB), "{out}");
    let (code, token, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");
    // At least one refresh, so refreshed tokens went through too.
    audited(&h, "session.refreshed", |_| true).await;
    let (code, _, err) = run_as(ALICE_UID, &h.socket, &["logout"]).await;
    assert_eq!(code, 0, "{err}");
    let logs = agent.logs();
    assert!(logs.contains("signed in"), "the logs were captured: {logs}");
    let audit = std::fs::read_to_string(&h.audit).unwrap();
    for (what, text) in [("logs", &logs), ("audit log", &audit)] {
        // Access and ID tokens of the development provider are JWTs.
        assert!(!text.contains("eyJ"), "a JWT in the {what}");
        assert!(!text.contains(token.trim()), "the token in the {what}");
        for key in [
            "refresh_token\":\"",
            "refresh_token=",
            "code_verifier",
            "device_code\":\"",
        ] {
            assert!(!text.contains(key), "{key} in the {what}");
        }
    }
    agent.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newcomer_signs_in_at_cortexid_dev_with_the_commands_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["dev", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let done = line.contains("Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let command = |needle: &str| -> Vec<String> {
        printed
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} command in {printed:#?}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let issuer = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("provider "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // The person: `cortexid login --device` (no display here), approved on the provider's page.
    let login = command(" login --socket");
    let mut child = tokio::process::Command::new(&login[0])
        .args(&login[1..])
        .arg("--device")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut code = String::new();
    while let Some(l) = out.next_line().await.unwrap() {
        if let Some(rest) = l.split("enter the code ").nth(1) {
            code = rest.trim().to_string();
            break;
        }
    }
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let page = http
        .post(format!("{issuer}/device"))
        .form(&[
            ("user_code", code.as_str()),
            ("name", "Newcomer"),
            ("groups", "developers"),
            ("action", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success(), "{}", page.text().await.unwrap());
    let mut rest = String::new();
    while let Some(l) = out.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(child.wait().await.unwrap().success(), "{rest}");
    assert!(rest.contains("signed in as newcomer"), "{rest}");
    // Then the token whose sub is the person.
    let token = command("--identity me");
    let got = tokio::process::Command::new(&token[0])
        .args(&token[1..])
        .output()
        .await
        .unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(claims(String::from_utf8_lossy(&got.stdout).trim())["sub"], "newcomer");
    dev.kill().await.unwrap();
}

/// The whole output of a child, once it ended, and whether it succeeded.
async fn finish(
    mut child: tokio::process::Child,
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> (bool, String) {
    let mut out = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        out.push_str(&l);
        out.push('\n');
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut err).await;
    }
    (child.wait().await.unwrap().success(), format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn people_sign_in_through_the_cli_at_oidc_provider() {
    use common::oidc_people::{Browser, Ended, People, node_missing};
    if let Some(why) = node_missing() {
        common::skip_or_fail("people_sign_in_through_the_cli_at_oidc_provider", &why);
        return;
    }
    let p = People::start().await;
    let dir = tempfile::tempdir().unwrap();
    open_dir(dir.path());
    let socket = dir.path().join("agent.sock");
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("cortexid.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
socket = "{socket}"
audit_log = "{audit}"

[[provider]]
name = "oidc"
issuer = "{issuer}"
ca_file = "{ca}"
client_id = "cortexid-login"
client_auth = "none"

[[login]]
name = "corp"
provider = "oidc"
client_id = "cortexid-login"
scopes = ["openid", "email", "groups", "offline_access"]
"#,
            socket = socket.display(),
            audit = audit.display(),
            issuer = p.issuer,
            ca = p.ca.display()
        ),
    )
    .unwrap();
    let running = cortexid::run::daemon::start(
        cortexid::agent::load_config(&config).unwrap(),
        cortexid::run::systemd::Notifier::disabled(),
    )
    .await
    .unwrap();

    // Device flow: the person opens verification_uri_complete and goes through the forms.
    let mut child = cli_as(ALICE_UID, &socket, &["login", "--device"], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = line_where(&mut lines, |l| l.contains("user_code=")).await;
    let Ended::Page(page) = Browser::new(&p, "alice").sign_in(url.trim(), "http://never").await else {
        panic!("the device flow redirects nowhere")
    };
    assert!(page.contains("Sign-in Success"), "{page}");
    let (ok, out) = finish(child, lines).await;
    assert!(ok, "{out}\n{}", p.log());
    assert!(out.contains("signed in as alice") && out.contains("payments"), "{out}");

    // Browser flow: the browser follows the redirect into the CLI's loopback listener.
    let mut child = cli_as(ALICE_UID, &socket, &["login", "--browser", "--no-browser"], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = line_where(&mut lines, |l| l.trim_start().starts_with("https://")).await;
    let Ended::Page(page) = Browser::new(&p, "alice").sign_in(url.trim(), "http://never").await else {
        panic!("the browser was not let into the loopback listener")
    };
    assert!(page.contains("You can close this tab"), "{page}");
    let (ok, out) = finish(child, lines).await;
    assert!(ok, "{out}\n{}", p.log());

    let socket_client = cortexid::cmd::client::SocketClient::new(&socket);
    let (ok, who) = {
        let out = cli_as(ALICE_UID, &socket, &["whoami"], &[])
            .wait_with_output()
            .await
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert!(ok && who.contains("signed in as alice"), "{who}");
    let root = socket_client.get("/v1/sessions").await.unwrap().json().unwrap();
    assert_eq!(root["sessions"], serde_json::json!([]), "root sees no one's session");
    let out = cli_as(ALICE_UID, &socket, &["logout"], &[])
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked at the provider"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_outage_keeps_the_session_and_its_tokens_until_it_comes_back() {
    let h = people(Duration::from_secs(20)).await;
    sign_in_device(&h, &["payments"]).await;
    let (code, before, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");
    h.idp.set_fault(cortexid::devidp::Fault::Status(503));
    let failures_from = h.audit_lines().len();
    // The session's refresh fails (at 15 s of its 20 s): the session lives on, and the cached
    // derived token is still served.
    let mut seen_failure = false;
    for _ in 0..400 {
        let (_, sessions) = api_as(ALICE_UID, &h, "GET", "/v1/sessions", None).await;
        if sessions["sessions"][0]["last_error"].is_string() {
            seen_failure = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_failure, "no refresh failure seen");
    let (code, during, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(
        code, 0,
        "the derived token is no longer served during the outage: {err}"
    );
    assert_eq!(during.trim(), before.trim(), "served from the cache");
    assert!(
        !h.audit_lines()
            .iter()
            .skip(failures_from)
            .any(|e| e["event"] == "session.ended"),
        "an outage ended the session"
    );
    h.idp.set_fault(cortexid::devidp::Fault::None);
    audited_after(&h, failures_from, "session.refreshed", |_| true).await;
    let (code, _, err) = my_token(&h, ALICE_UID).await;
    assert_eq!(code, 0, "{err}");
}
