//! A hostile local user against people's sign-in and sessions (SPEC section 8). Each test is an
//! attack from another uid (or root, or a user namespace) on a person's sign-in, the CLI's
//! loopback listener, the session table, the persisted sessions, or what the agent writes down,
//! kept so it stays refused. The six attacks that worked when this file was written (login CSRF
//! through the browser's command line, a forged redirect, a fake agent on the socket path, one uid
//! filling the sign-in table, idle connections at the loopback listener, a name echoed whole) are
//! fixed; their tests run like the others, none is ignored.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::people::{api_as, browser_login, cli_as, line_where, people_with, raw_as, run_as};
use common::{AgentProcess, Harness, PAYMENTS};
use cortexid::devidp::fixture::Login;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PERSON: &str = "Alice Smith";
const SUB: &str = "alice-smith";
const ATTACKER: &str = "Mallory Evil";
const ATTACKER_SUB: &str = "mallory-evil";
const ALICE_UID: u32 = 1000;
const MALLORY_UID: u32 = 1001;

async fn people() -> Harness {
    people_with(Duration::from_secs(300), Login::new("corp", "corp"), |_| {}).await
}

/// Adds `[agent] state_dir` (and `state_key_file` when given) to the written config, which the
/// typed fixture does not write.
fn add_state_dir(h: &Harness, state: &Path, key_file: Option<&Path>) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let mut lines = format!("[agent]\nstate_dir = \"{}\"\n", state.display());
    if let Some(k) = key_file {
        lines.push_str(&format!("state_key_file = \"{}\"\n", k.display()));
    }
    std::fs::write(&h.config_path, text.replacen("[agent]\n", &lines, 1)).unwrap();
}

/// Starts `python3 -c script args…` as `uid`, stdin and stdout piped; [`PY`] is defined first.
fn python_as(uid: u32, script: &str, args: &[&str]) -> tokio::process::Child {
    common::attacker(uid, &format!("{PY}{script}"), args)
}

/// What the attacker scripts share: `call(sock, method, path, body)` makes one request to the
/// agent's socket and returns (status, JSON answer or None); `get_loopback(port, target)` makes
/// one GET to 127.0.0.1:port and returns (status, page).
const PY: &str = r#"
import json, socket, sys, os, http.client
def call(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    data = b"" if body is None else json.dumps(body).encode()
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % (method, path, len(data))).encode() + data)
    answer = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    s.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    try:
        return status, json.loads(rest)
    except ValueError:
        return status, None
def get_loopback(port, target):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", target)
    r = c.getresponse()
    return r.status, r.read().decode(errors="replace")
"#;

/// Signs ALICE_UID in through the socket API with the device flow, approved as `name` with
/// `groups`; returns the sign-in id.
async fn sign_in_by_api(h: &Harness, name: &str, groups: &[&str]) -> String {
    let (status, started) = api_as(ALICE_UID, h, "POST", "/v1/login", Some(r#"{"flow":"device"}"#)).await;
    assert_eq!(status, 200, "{started}");
    let id = started["login_id"].as_str().unwrap().to_string();
    assert!(
        h.idp
            .approve_device(started["user_code"].as_str().unwrap(), name, groups)
    );
    let (status, done) = api_as(ALICE_UID, h, "GET", &format!("/v1/login/{id}?wait=30"), None).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("complete")), "{done}");
    id
}

/// Starts a browser sign-in for `uid` through the API: (login id, authorization URL).
async fn start_browser(uid: u32, h: &Harness, port: u16) -> (String, String) {
    let body = format!(r#"{{"flow":"browser","redirect_port":{port}}}"#);
    let (status, started) = api_as(uid, h, "POST", "/v1/login", Some(&body)).await;
    assert_eq!(status, 200, "{started}");
    (
        started["login_id"].as_str().unwrap().to_string(),
        started["authorization_url"].as_str().unwrap().to_string(),
    )
}

/// `code` and `state` of a redirect back to the loopback.
fn code_and_state(back: &str) -> (String, String) {
    let q: std::collections::HashMap<String, String> =
        url::Url::parse(back).unwrap().query_pairs().into_owned().collect();
    (q["code"].clone(), q["state"].clone())
}

/// The redirect port an authorization URL names.
fn redirect_port(url: &str) -> u16 {
    let u = url::Url::parse(url.trim()).unwrap();
    let redirect = u
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    url::Url::parse(&redirect).unwrap().port().unwrap()
}

/// A port on 127.0.0.1 nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The subs of ALICE_UID's sessions, as she would list them.
async fn alice_subs(h: &Harness) -> Vec<String> {
    let (_, sessions) = api_as(ALICE_UID, h, "GET", "/v1/sessions", None).await;
    sessions["sessions"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["sub"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Another uid against a person's sign-in in progress.

#[tokio::test(flavor = "multi_thread")]
async fn another_uid_can_neither_poll_complete_nor_tell_apart_someone_elses_sign_in() {
    let h = people().await;
    let (id, url) = start_browser(ALICE_UID, &h, 43111).await;
    assert!(id.len() >= 40, "a sign-in id must be unguessable: {id:?}");
    let back = h.idp.approve_authorization(&url, PERSON, &["payments"]).unwrap();
    let (code, state) = code_and_state(&back);
    // Mallory holds everything: the id, the code, even the state. The agent answers her as it
    // answers an id that does not exist, for reading, long-polling and completing alike.
    let body = serde_json::json!({"code": code, "state": state}).to_string();
    let made_up = "A".repeat(id.len());
    for (method, path, body) in [
        ("GET", format!("/v1/login/{id}"), None),
        ("GET", format!("/v1/login/{id}?wait=5"), None),
        ("POST", format!("/v1/login/{id}/callback"), Some(body.as_str())),
    ] {
        let (status, real) = raw_as(MALLORY_UID, &[], &h.socket, method, &path, body).await;
        let (status2, absent) = raw_as(MALLORY_UID, &[], &h.socket, method, &path.replace(&id, &made_up), body).await;
        assert_eq!(status, 404, "{method} {path}: {real}");
        assert_eq!(
            (status, real.replace(&id, &made_up)),
            (status2, absent),
            "another uid can tell a real sign-in from a made-up id"
        );
    }
    // Mallory sees no one's sign-in or session, and her probe is audited.
    let (_, sessions) = api_as(MALLORY_UID, &h, "GET", "/v1/sessions", None).await;
    assert_eq!(sessions["sessions"], serde_json::json!([]));
    let probes = h
        .audit_lines()
        .into_iter()
        .filter(|e| e["event"] == "login.failed" && e["uid"] == MALLORY_UID && e["login_id"] == id.as_str())
        .count();
    assert!(probes >= 3, "each probe of another's sign-in is audited ({probes})");
    assert_eq!(h.idp.people_counters().code_redemptions, 0, "nothing was redeemed");
    // Her attempts did not spoil it: Alice completes her own sign-in with the same code.
    let (status, done) = api_as(ALICE_UID, &h, "POST", &format!("/v1/login/{id}/callback"), Some(&body)).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("complete")), "{done}");
    assert_eq!(alice_subs(&h).await, vec![SUB.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attackers_own_code_injected_into_a_sign_in_is_refused_and_a_callback_is_taken_once() {
    let h = people().await;
    let port = 43112;
    // Alice starts a browser sign-in. Mallory starts her own with the same redirect port (the
    // agent lets anyone name any port), signs in at the provider as herself, and gets a code for
    // the very redirect URI Alice's sign-in redeems with.
    let (alice_id, alice_url) = start_browser(ALICE_UID, &h, port).await;
    let (_, mallory_url) = start_browser(MALLORY_UID, &h, port).await;
    let back = h
        .idp
        .approve_authorization(&mallory_url, ATTACKER, &["payments"])
        .unwrap();
    let (mallory_code, _) = code_and_state(&back);
    // The injection reaches Alice's sign-in with Alice's state (say it leaked): her verifier and
    // nonce do not fit Mallory's code, so the provider refuses it and no session opens.
    let alice_state = url::Url::parse(&alice_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let body = serde_json::json!({"code": mallory_code, "state": alice_state}).to_string();
    let path = format!("/v1/login/{alice_id}/callback");
    let (status, answer) = api_as(ALICE_UID, &h, "POST", &path, Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "failed", "an injected code made a session: {answer}");
    assert_eq!(h.idp.people_counters().code_redemptions, 1, "the agent tried it once");
    assert!(
        alice_subs(&h).await.is_empty(),
        "Alice holds a session from Mallory's code"
    );

    // A real sign-in, then its callback replayed: nothing more is redeemed.
    let (id, url) = start_browser(ALICE_UID, &h, port).await;
    let back = h.idp.approve_authorization(&url, PERSON, &["payments"]).unwrap();
    let (code, state) = code_and_state(&back);
    let body = serde_json::json!({"code": code, "state": state}).to_string();
    let path = format!("/v1/login/{id}/callback");
    let (status, done) = api_as(ALICE_UID, &h, "POST", &path, Some(&body)).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("complete")), "{done}");
    let redeemed = h.idp.people_counters().code_redemptions;
    let (status, replayed) = api_as(ALICE_UID, &h, "POST", &path, Some(&body)).await;
    assert_eq!(status, 400, "{replayed}");
    assert!(
        replayed["error_description"]
            .as_str()
            .unwrap()
            .contains("not waiting for a browser callback"),
        "{replayed}"
    );
    assert_eq!(
        h.idp.people_counters().code_redemptions,
        redeemed,
        "a replay was redeemed"
    );
    assert_eq!(alice_subs(&h).await, vec![SUB.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn root_does_not_sign_in_and_a_user_namespace_root_is_still_its_own_uid() {
    let h = people().await;
    for flow in ["device", "browser"] {
        let body = format!(r#"{{"flow":"{flow}","redirect_port":43113}}"#);
        let (status, refused) = api_as(0, &h, "POST", "/v1/login", Some(&body)).await;
        assert_eq!(status, 403, "root may start a {flow} sign-in: {refused}");
        assert!(
            refused["error_description"]
                .as_str()
                .unwrap()
                .contains("root never signs in"),
            "{refused}"
        );
    }
    assert_eq!(h.idp.people_counters().device_authorizations, 0);
    sign_in_by_api(&h, PERSON, &["payments"]).await;

    // Mallory in a user namespace of her own is uid 0 there; the agent sees her real uid.
    let userns = ["unshare", "-Ur"];
    let (status, text) = raw_as(MALLORY_UID, &userns, &h.socket, "GET", "/v1/whoami", None).await;
    if status == 0 {
        common::skip_or_fail(
            "root_does_not_sign_in_and_a_user_namespace_root_is_still_its_own_uid",
            "unshare -Ur does not run here (no unprivileged user namespaces)",
        );
        return;
    }
    let me: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(me["caller"]["uid"], MALLORY_UID, "{me}");
    assert_eq!(me["sessions"], serde_json::json!([]), "{me}");
    let (status, text) = raw_as(
        MALLORY_UID,
        &userns,
        &h.socket,
        "POST",
        "/v1/login",
        Some(r#"{"flow":"device"}"#),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let started = h
        .audit_lines()
        .into_iter()
        .rfind(|e| e["event"] == "login.started")
        .unwrap();
    assert_eq!(started["caller"]["uid"], MALLORY_UID, "{started}");
    let (status, text) = raw_as(MALLORY_UID, &userns, &h.socket, "DELETE", "/v1/sessions/corp", None).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(alice_subs(&h).await, vec![SUB.to_string()], "Alice's session is intact");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_uid_learns_nothing_of_a_persons_session_from_health_metrics_identities_or_the_audit_file() {
    let h = people().await;
    sign_in_by_api(&h, PERSON, &["payments"]).await;
    let token = common::token_path("me", PAYMENTS, "");
    let (status, _) = raw_as(ALICE_UID, &[], &h.socket, "GET", &token, None).await;
    assert_eq!(status, 200);
    for path in ["/v1/health", "/metrics", "/v1/identities", "/v1/whoami", "/v1/sessions"] {
        let (status, text) = raw_as(MALLORY_UID, &[], &h.socket, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        for private in [SUB, "alice-smith@", "Alice"] {
            assert!(
                !text.contains(private),
                "{path} tells uid {MALLORY_UID} {private:?}: {text}"
            );
        }
        if path == "/v1/health" {
            // When others' exchanges happen (the provider limiter's counts) is not hers either.
            assert!(!text.contains("\"limits\"") && !text.contains("in_flight"), "{text}");
        }
    }
    // The audit file names people (sub, email) and their sign-ins: not for every user.
    let mut p = python_as(
        MALLORY_UID,
        "try:\n    open(sys.argv[1]).read()\n    print('read', flush=True)\nexcept OSError:\n    print('refused', flush=True)\n",
        &[h.audit.to_str().unwrap()],
    );
    let mut said = BufReader::new(p.stdout.take().unwrap()).lines();
    assert_eq!(
        said.next_line().await.unwrap().as_deref(),
        Some("refused"),
        "the audit file"
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI's loopback listener.

/// As another uid: checks that /proc/net/tcp shows a listener of uid argv[2] on
/// 127.0.0.1:argv[1] (anyone can find it), then sends it a forged redirect first.
const FORGED_REDIRECT: &str = r#"
port, owner = int(sys.argv[1]), sys.argv[2]
seen = False
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "0100007F:%04X" % port and f[3] == "0A" and f[7] == owner:
        seen = True
print("listed" if seen else "hidden", flush=True)
status, page = get_loopback(port, "/callback?code=forged-code&state=forged-state")
print(status, "Sign-in failed" in page, flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_redirect_from_another_uid_does_not_spoil_a_browser_sign_in() {
    let h = people().await;
    let (alice, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    let port = redirect_port(&url);
    let mut mallory = python_as(
        MALLORY_UID,
        FORGED_REDIRECT,
        &[&port.to_string(), &ALICE_UID.to_string()],
    );
    let out = mallory.stdout.take().unwrap();
    let mut said = BufReader::new(out).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("listed"));
    let forged = said.next_line().await.unwrap().unwrap_or_default();
    println!("the forged redirect was answered: {forged}");
    // Then Alice's browser comes back with the real code.
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    // (Only whether it was answered is shown: the URL holds the code.)
    let page = reqwest::get(&back).await.map(|r| r.status().as_u16()).map_err(|e| {
        if e.is_connect() {
            "connection refused"
        } else {
            "no answer"
        }
    });
    let err = signed_in(&h, alice).await;
    assert!(
        err.is_none(),
        "a forged redirect from uid {MALLORY_UID} ended Alice's sign-in (her browser's return: {page:?}): {err:?}"
    );
}

/// Waits for Alice's `cortexid login` to end: `None` when it succeeded and she holds the
/// session, else what it printed.
async fn signed_in(h: &Harness, alice: tokio::process::Child) -> Option<String> {
    let done = tokio::time::timeout(Duration::from_secs(60), alice.wait_with_output())
        .await
        .expect("the CLI must finish once the browser is back")
        .unwrap();
    if !done.status.success() {
        return Some(String::from_utf8_lossy(&done.stderr).into_owned());
    }
    assert_eq!(alice_subs(h).await, vec![SUB.to_string()]);
    None
}

/// As another uid: finds the browser process whose command line holds an authorization URL
/// redirecting to 127.0.0.1:argv[1], prints that URL, reads the redirect the attacker's own
/// sign-in at the provider produced from stdin, and delivers it to the loopback.
const URL_FROM_ARGV: &str = r#"
import time
port = int(sys.argv[1])
marker = "127.0.0.1%3A" + str(port)
found = None
for _ in range(400):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = open("/proc/%s/cmdline" % pid, "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        for a in args:
            if a.startswith("https://") and "code_challenge=" in a and marker in a:
                found = a
    if found:
        break
    time.sleep(0.05)
print(found or "none", flush=True)
if not found:
    # Learnt another way (a synced browser history, a shared screen): the test hands it over.
    found = sys.stdin.readline().strip()
back = sys.stdin.readline().strip()
u = back.split("127.0.0.1:%d" % port, 1)[1]
status, page = get_loopback(port, u)
print(status, flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_url_read_from_the_browsers_command_line_cannot_sign_the_person_in_as_the_attacker() {
    let h = people().await;
    let browser = h.dir.path().join("slow-browser");
    // The person's browser: it keeps the URL in its command line and never comes back.
    std::fs::write(&browser, "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let mut alice = cli_as(
        ALICE_UID,
        &h.socket,
        &["login", "--browser", "--port", &port.to_string()],
        &[("BROWSER", browser.to_str().unwrap())],
    );
    let mut lines = BufReader::new(alice.stdout.take().unwrap()).lines();
    line_where(&mut lines, |l| l.contains("browser opens")).await;

    let mut mallory = python_as(MALLORY_UID, URL_FROM_ARGV, &[&port.to_string()]);
    let mut said = BufReader::new(mallory.stdout.take().unwrap()).lines();
    let in_argv = said.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(
        in_argv, "none",
        "the authorization URL is on the browser's command line, readable by every uid"
    );
    // The browser was given a private page that only Alice (and root) can read.
    let page = browser_page(&browser);
    let text = std::fs::read_to_string(&page).unwrap();
    let leaked = text
        .split("url=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let mode = std::fs::metadata(&page).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o600,
        "the redirect page {} is readable by others",
        page.display()
    );
    // Had Mallory learnt the URL another way, she signs in at the provider as herself and
    // delivers her redirect to Alice's listener.
    let mut stdin = mallory.stdin.take().unwrap();
    stdin.write_all(format!("{leaked}\n").as_bytes()).await.unwrap();
    let back = h.idp.approve_authorization(&leaked, ATTACKER, &["payments"]).unwrap();
    stdin.write_all(format!("{back}\n").as_bytes()).await.unwrap();
    let delivered = said.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(delivered, "", "uid {MALLORY_UID}'s redirect was answered: {delivered}");
    let _ = tokio::time::timeout(Duration::from_secs(5), alice.wait()).await;
    let subs = alice_subs(&h).await;
    assert!(
        !subs.iter().any(|s| s == ATTACKER_SUB),
        "uid {ALICE_UID} now holds a session as {ATTACKER_SUB}: her tools act as the attacker"
    );
    assert_eq!(
        h.idp.people_counters().code_redemptions,
        0,
        "Mallory's code was redeemed"
    );
}

/// The file the browser `program` (a script, so its argv is `sh program FILE`) was started with.
fn browser_page(program: &Path) -> std::path::PathBuf {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(file) = args
            .iter()
            .position(|a| a == program.to_str().unwrap())
            .and_then(|i| args.get(i + 1))
        {
            return file.into();
        }
    }
    panic!("no browser process runs {}", program.display());
}

/// As another uid: opens argv[2] connections to 127.0.0.1:argv[1] that never send a request
/// (as a browser's speculative preconnect does too), says so, and keeps them open.
const IDLE_ON_LOOPBACK: &str = r#"
import time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    conns.append(s)
print("holding", len(conns), flush=True)
time.sleep(120)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_from_another_uid_do_not_hold_back_the_browsers_redirect() {
    let h = people().await;
    let (mut alice, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    let port = redirect_port(&url);
    let mut mallory = python_as(MALLORY_UID, IDLE_ON_LOOPBACK, &[&port.to_string(), "60"]);
    let mut said = BufReader::new(mallory.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("holding 60"));
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    let browser = tokio::spawn(async move { reqwest::get(&back).await.map(|r| r.status().as_u16()).is_ok() });
    // Sixty idle connections at the listener's 10 s each would hold the redirect for ten
    // minutes, the sign-in's whole window; the bound only keeps this test from waiting that long.
    let done = tokio::time::timeout(Duration::from_secs(60), alice.wait()).await;
    assert!(
        matches!(done, Ok(Ok(s)) if s.success()),
        "the person's redirect waited behind uid {MALLORY_UID}'s idle connections: {done:?}"
    );
    assert!(browser.await.unwrap(), "the browser got no page");
    assert_eq!(alice_subs(&h).await, vec![SUB.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_of_an_accepted_uid_do_not_hold_back_the_browsers_redirect() {
    // Root's connections pass the listener's uid check (as a browser's own preconnects would):
    // each is served on its own, so idle ones still hold nothing back.
    let h = people().await;
    let (mut alice, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    let port = redirect_port(&url);
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    let browser = tokio::spawn(async move { reqwest::get(&back).await.map(|r| r.status().as_u16()).is_ok() });
    let done = tokio::time::timeout(Duration::from_secs(60), alice.wait()).await;
    assert!(
        matches!(done, Ok(Ok(s)) if s.success()),
        "the person's redirect waited behind idle connections: {done:?}"
    );
    assert!(browser.await.unwrap(), "the browser got no page");
    assert_eq!(alice_subs(&h).await, vec![SUB.to_string()]);
    drop(idle);
}

/// Another uid's fake agent on a socket path the person's CLI is pointed at (argv[1]): it
/// answers `POST /v1/login` with an authorization URL of its own making (the real provider at
/// argv[2], its own PKCE challenge, the CLI's loopback), redeems the code the CLI relays with its
/// own verifier, and prints whether it got a refresh token, and whose.
const FAKE_AGENT: &str = r#"
import ssl, hashlib, base64, secrets, urllib.request, urllib.parse
path, issuer = sys.argv[1], sys.argv[2]
ctx = ssl._create_unverified_context()
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(4)
print("listening", flush=True)
verifier = secrets.token_urlsafe(32)
challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
state = secrets.token_urlsafe(16)
redirect = None
def serve_one():
    c, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target = lines[0].split(" ")[:2]
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        body += c.recv(65536)
    return c, method, target, (json.loads(body) if body else None)
def reply(c, obj):
    b = json.dumps(obj).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
    c.close()
while True:
    c, method, target, body = serve_one()
    if method == "POST" and target == "/v1/login":
        redirect = "http://127.0.0.1:%d/callback" % body["redirect_port"]
        q = urllib.parse.urlencode({"client_id": "cortexid-login", "response_type": "code",
            "redirect_uri": redirect, "scope": "openid email groups offline_access", "state": state,
            "nonce": "n", "code_challenge": challenge, "code_challenge_method": "S256", "prompt": "consent"})
        reply(c, {"login_id": "fake", "login": "corp", "flow": "browser", "authorization_url": issuer + "/authorize?" + q,
            "redirect_uri": redirect, "expires_in": 600})
    elif method == "POST" and target == "/v1/login/fake/callback":
        form = urllib.parse.urlencode({"grant_type": "authorization_code", "code": body["code"],
            "redirect_uri": redirect, "code_verifier": verifier, "client_id": "cortexid-login"}).encode()
        try:
            stolen = json.loads(urllib.request.urlopen(issuer + "/token", data=form, context=ctx).read())
        except Exception as e:
            stolen = {"error": str(e)}
        reply(c, {"status": "complete", "session": {"login": "corp", "sub": "alice-smith", "flow": "browser", "claims": {}}})
        break
    else:
        reply(c, {})
sub = None
if "id_token" in stolen:
    sub = json.loads(base64.urlsafe_b64decode(stolen["id_token"].split(".")[1] + "==")).get("sub")
print(json.dumps({"refresh_token": "refresh_token" in stolen, "sub": sub}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_fake_agent_on_the_socket_path_gets_no_code_from_the_cli() {
    let h = people().await;
    // A socket path in a directory every user can write (like /tmp), the agent not there.
    let shared = h.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let fake_socket = shared.join("agent.sock");
    let mut fake = python_as(
        MALLORY_UID,
        FAKE_AGENT,
        &[fake_socket.to_str().unwrap(), h.idp.issuer()],
    );
    let mut said = BufReader::new(fake.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("listening"));

    let mut alice = cli_as(ALICE_UID, &fake_socket, &["login", "--browser", "--no-browser"], &[]);
    let mut lines = BufReader::new(alice.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.trim_start().starts_with("https://") {
            // The page is the real provider's: Alice signs in, her browser returns to her CLI.
            let back = h.idp.approve_authorization(line.trim(), PERSON, &["payments"]).unwrap();
            let _ = reqwest::get(&back).await;
        }
    }
    let done = tokio::time::timeout(Duration::from_secs(30), alice.wait_with_output())
        .await
        .expect("the CLI must stop")
        .unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(!done.status.success(), "the CLI signed in through a fake agent: {err}");
    assert!(
        err.contains("refusing the agent") && err.contains(&format!("uid {MALLORY_UID}")),
        "the CLI does not say who serves the socket: {err}"
    );
    let _ = fake.start_kill();
    let outcome = tokio::time::timeout(Duration::from_secs(30), said.next_line())
        .await
        .ok()
        .and_then(|l| l.ok().flatten())
        .unwrap_or_default();
    assert!(
        !outcome.contains("\"refresh_token\": true"),
        "uid {MALLORY_UID}'s fake agent redeemed the person's code: {outcome}"
    );
}

/// Another uid's fake agent on the socket path argv[1]: answers every request with a token of
/// its own making, and says when it is listening.
const FAKE_TOKEN_AGENT: &str = r#"
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
srv.listen(4)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    c.recv(65536)
    b = json.dumps({"access_token": "planted-by-mallory", "token_type": "Bearer", "expires_in": 300}).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
    c.close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_fake_agent_on_the_socket_path_cannot_plant_a_token_in_cortexid_token() {
    let h = people().await;
    let shared = h.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let fake_socket = shared.join("agent.sock");
    let mut fake = python_as(MALLORY_UID, FAKE_TOKEN_AGENT, &[fake_socket.to_str().unwrap()]);
    let mut said = BufReader::new(fake.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("listening"));
    let (code, out, err) = run_as(
        ALICE_UID,
        &fake_socket,
        &["token", "--identity", "me", "--audience", PAYMENTS],
    )
    .await;
    assert_ne!(code, 0, "cortexid token took an answer from uid {MALLORY_UID}: {out}");
    assert!(!out.contains("planted-by-mallory"), "{out}");
    assert!(
        err.contains("refusing the agent") && err.contains(&format!("uid {MALLORY_UID}")),
        "{err}"
    );
}

/// As another uid: holds 127.0.0.1:argv[1] open and says so, then waits.
const HOLD_PORT: &str = r#"
import time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("holding", flush=True)
time.sleep(60)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_port_held_by_another_uid_stops_the_login_before_any_sign_in_starts() {
    let h = people().await;
    let port = free_port();
    let mut mallory = python_as(MALLORY_UID, HOLD_PORT, &[&port.to_string()]);
    let mut said = BufReader::new(mallory.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("holding"));
    let (code, out, err) = run_as(
        ALICE_UID,
        &h.socket,
        &["login", "--browser", "--no-browser", "--port", &port.to_string()],
    )
    .await;
    assert_ne!(code, 0, "the login ran on a port another uid listens on: {out}");
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
    assert!(
        !h.audit_lines().iter().any(|e| e["event"] == "login.started"),
        "a sign-in started whose redirect another uid would receive"
    );
}

// ---------------------------------------------------------------------------------------------
// Floods.

/// Starts sign-ins as fast as it can (argv[2] of them at most, flow argv[3]); a browser sign-in
/// is failed at once with a wrong state, so it no longer counts as in progress. Prints how many
/// started, then the first refusal as JSON.
const START_MANY: &str = r#"
sock, n, flow = sys.argv[1], int(sys.argv[2]), sys.argv[3]
started, refusal = 0, None
for i in range(n):
    status, v = call(sock, "POST", "/v1/login", {"flow": flow, "redirect_port": 40000})
    if status != 200:
        refusal = {"status": status, "answer": v}
        break
    started += 1
    if flow == "browser":
        call(sock, "POST", "/v1/login/%s/callback" % v["login_id"], {"code": "x", "state": "y"})
print(started, flush=True)
print(json.dumps(refusal), flush=True)
"#;

async fn start_many(h: &Harness, uid: u32, n: usize, flow: &str) -> (usize, serde_json::Value) {
    let mut p = python_as(uid, START_MANY, &[h.socket.to_str().unwrap(), &n.to_string(), flow]);
    let mut said = BufReader::new(p.stdout.take().unwrap()).lines();
    let started = said.next_line().await.unwrap().unwrap().trim().parse().unwrap();
    let refusal = serde_json::from_str(&said.next_line().await.unwrap().unwrap()).unwrap();
    (started, refusal)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_uid_cannot_hold_more_than_a_few_device_sign_ins_at_the_provider() {
    let h = people().await;
    let (started, refusal) = start_many(&h, MALLORY_UID, 50, "device").await;
    assert_eq!(started, 4, "device sign-ins one uid keeps in progress: {refusal}");
    assert_eq!(refusal["status"], 429, "{refusal}");
    assert_eq!(refusal["answer"]["error"], "slow_down", "{refusal}");
    assert_eq!(
        h.idp.people_counters().device_authorizations,
        4,
        "the provider was asked for more device codes than one uid may hold"
    );
    // Someone else still signs in.
    sign_in_by_api(&h, PERSON, &["payments"]).await;
}

/// Starts one browser sign-in (left pending), then opens argv[2] connections that each
/// long-poll it (`wait=60`) and prints how many are still waiting after a moment; then waits.
const LONG_POLLS: &str = r#"
import time, select
sock, n = sys.argv[1], int(sys.argv[2])
status, v = call(sock, "POST", "/v1/login", {"flow": "browser", "redirect_port": 40001})
conns = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock)
        s.sendall(("GET /v1/login/%s?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n" % v["login_id"]).encode())
    except OSError:
        break
    conns.append(s)
time.sleep(1.5)
p = select.poll()
for s in conns:
    p.register(s, select.POLLIN)
answered = {fd for fd, _ in p.poll(0)}
print(sum(1 for s in conns if s.fileno() not in answered), flush=True)
time.sleep(90)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn long_polls_held_by_another_uid_do_not_keep_a_person_from_signing_in() {
    let h = people().await;
    // Two processes of one uid, each as many long polls as a process may hold.
    let mut polls: Vec<_> = (0..2)
        .map(|_| python_as(MALLORY_UID, LONG_POLLS, &[h.socket.to_str().unwrap(), "300"]))
        .collect();
    let mut held = 0;
    for p in &mut polls {
        let mut said = BufReader::new(p.stdout.take().unwrap()).lines();
        held += said
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap();
    }
    println!("uid {MALLORY_UID} holds {held} long polls");
    assert!(held >= 256, "the attack must hold many long polls ({held})");
    sign_in_by_api(&h, PERSON, &["payments"]).await;
    let (status, _) = h.get("/v1/health").await;
    assert_eq!(status, 200);
    drop(polls);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_uid_cannot_lock_everyone_out_of_signing_in() {
    let h = people().await;
    let (started, refusal) = start_many(&h, MALLORY_UID, 300, "browser").await;
    println!("uid {MALLORY_UID} started {started} sign-ins before: {refusal}");
    let (status, answer) = api_as(
        ALICE_UID,
        &h,
        "POST",
        "/v1/login",
        Some(r#"{"flow":"browser","redirect_port":43116}"#),
    )
    .await;
    assert_eq!(
        status, 200,
        "after uid {MALLORY_UID}'s {started} sign-ins, Alice cannot sign in: {answer}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input.

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_to_the_people_endpoints_gets_a_4xx_and_the_agent_keeps_serving() {
    let h = people().await;
    let m = MALLORY_UID;
    for (body, want) in [
        ("{", "not usable"),
        ("[]", "not usable"),
        (r#"{"login":"corp","verifier":"x"}"#, "unknown field"),
        (r#"{"flow":"browser","redirect_port":0}"#, "redirect_port"),
        (r#"{"flow":"browser","redirect_port":70000}"#, "not usable"),
        (r#"{"flow":"browser","redirect_port":-1}"#, "not usable"),
        (r#"{"flow":"browser"}"#, "redirect_port"),
        (r#"{"flow":"../../etc"}"#, "is not \"device\""),
        (r#"{"login":"nope"}"#, "no [[login]] named"),
        (
            r#"{"login":null,"flow":null,"redirect_port":null,"login":"corp"}"#,
            "duplicate field",
        ),
    ] {
        let (status, text) = raw_as(m, &[], &h.socket, "POST", "/v1/login", Some(body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], "invalid_request", "{body}: {text}");
        assert!(
            v["error_description"].as_str().unwrap().contains(want),
            "{body}: {text}"
        );
    }
    // A finished sign-in, asked about with absurd waits.
    let (id, url) = start_browser(m, &h, 43117).await;
    let cb = format!("/v1/login/{id}/callback");
    let (status, text) = raw_as(m, &[], &h.socket, "POST", &cb, Some(r#"{"code":"x","state":"y"}"#)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("state"), "{text}");
    // A wrong state leaves the sign-in waiting; its own state with a made-up code ends it.
    let state: String = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into();
    let body = serde_json::json!({"code": "x", "state": state}).to_string();
    let (status, text) = raw_as(m, &[], &h.socket, "POST", &cb, Some(&body)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"failed\""), "{text}");
    for (query, want) in [
        ("wait=18446744073709551615", 200),
        ("wait=18446744073709551616", 400),
        ("wait=-1", 400),
        ("wait=1e9", 400),
        ("wait=5&token=x", 400),
    ] {
        let (status, text) = raw_as(m, &[], &h.socket, "GET", &format!("/v1/login/{id}?{query}"), None).await;
        assert_eq!(status, want, "{query}: {text}");
        if want == 200 {
            assert!(text.contains("\"failed\""), "{text}");
        }
    }
    for (method, path, body) in [
        ("POST", format!("/v1/login/{id}/callback"), Some(r#"{"code":"x"}"#)),
        (
            "POST",
            format!("/v1/login/{id}/callback"),
            Some(r#"{"code":"x","state":"y","verifier":"z"}"#),
        ),
    ] {
        let (status, text) = raw_as(m, &[], &h.socket, method, &path, body).await;
        assert_eq!(status, 400, "{method} {path}: {text}");
    }
    for path in [
        format!("/v1/login/{}", "a".repeat(5000)),
        "/v1/login/..%2F..%2Fetc".to_string(),
        "/v1/login/a/b/callback".to_string(),
        "/v1/sessions/".to_string(),
        format!("/v1/sessions/{}", "c".repeat(300)),
    ] {
        let method = if path.starts_with("/v1/sessions") {
            "DELETE"
        } else {
            "GET"
        };
        let (status, text) = raw_as(m, &[], &h.socket, method, &path, None).await;
        assert!(
            (400..500).contains(&status),
            "{method} {}: {status} {text}",
            &path[..path.len().min(80)]
        );
        assert!(
            text.len() < 2048,
            "the answer echoes the path back: {} bytes",
            text.len()
        );
    }
    for (method, path) in [("PUT", "/v1/login"), ("GET", "/v1/login"), ("POST", "/v1/sessions")] {
        let (status, _) = raw_as(m, &[], &h.socket, method, path, None).await;
        assert_eq!(status, 405, "{method} {path}");
    }
    // A body over the limit is refused before it is read.
    let huge = format!(r#"{{"login":"{}"}}"#, "x".repeat(70_000));
    let mut p = python_as(
        m,
        "st, v = call(sys.argv[1], 'POST', '/v1/login', json.loads(sys.argv[2]))\nprint(st, flush=True)\n",
        &[h.socket.to_str().unwrap(), &huge],
    );
    let mut said = BufReader::new(p.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("413"));
    let (status, health) = h.get("/v1/health").await;
    assert_eq!(status, 200, "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_login_name_is_not_echoed_back_whole() {
    let h = people().await;
    let body = format!(r#"{{"login":"{}"}}"#, "x".repeat(60_000));
    let (status, text) = raw_as(MALLORY_UID, &[], &h.socket, "POST", "/v1/login", Some(&body)).await;
    assert_eq!(status, 400, "{}", &text[..text.len().min(200)]);
    assert!(text.len() < 2048, "the answer is {} bytes", text.len());
}

// ---------------------------------------------------------------------------------------------
// A connection handed to another uid.

/// Alice's half: connects to the agent (argv[1]) twice and sends both connections over stdin
/// (a Unix socket) with SCM_RIGHTS.
const SEND_CONNECTIONS: &str = r#"
import array
channel = socket.socket(fileno=0)
conns = []
for i in range(2):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    conns.append(s)
channel.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [c.fileno() for c in conns]))])
print("sent", flush=True)
channel.recv(1)
"#;

/// Mallory's half: receives the two connections over stdin and asks /v1/whoami on one and a
/// token of "me" on the other; prints each status and answer as a JSON line.
const USE_CONNECTIONS: &str = r#"
import array
channel = socket.socket(fileno=0)
msg, anc, flags, addr = channel.recvmsg(1, socket.CMSG_LEN(2 * 4))
fds = array.array("i")
for level, kind, data in anc:
    fds.frombytes(data[: len(data) - (len(data) % 4)])
def over(fd, path):
    s = socket.socket(fileno=fd)
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    answer = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    print(json.dumps({"status": int(head.split(b" ")[1]), "body": json.loads(rest)}), flush=True)
over(fds[0], "/v1/whoami")
over(fds[1], sys.argv[1])
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_handed_to_another_uid_still_speaks_for_the_uid_that_opened_it() {
    let h = people().await;
    sign_in_by_api(&h, PERSON, &["payments"]).await;
    let (alice_end, mallory_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let spawn = |uid: u32, script: &str, args: &[&str], end: std::os::unix::net::UnixStream| {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c")
            .arg(format!("{PY}{script}"))
            .args(args)
            .uid(uid)
            .gid(uid)
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(end)))
            .stdout(Stdio::piped());
        tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap()
    };
    let token = common::token_path("me", PAYMENTS, "");
    let alice = spawn(ALICE_UID, SEND_CONNECTIONS, &[h.socket.to_str().unwrap()], alice_end);
    let mallory = spawn(MALLORY_UID, USE_CONNECTIONS, &[&token], mallory_end);
    let sent = alice.wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&sent.stdout).trim(), "sent");
    let used = mallory.wait_with_output().await.unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&used.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The kernel's peer credentials are those of the process that connected: Alice's. The agent
    // authenticates connections, so Alice handing hers over is Alice lending her session, as
    // handing over a token would be (today the token is served; an agent that checked each
    // message's sender could refuse it). What it must never do is answer as the uid that holds
    // the connection now, nor make Mallory's own connections Alice's.
    let whoami = &lines[0];
    assert!(
        whoami["status"] != 200 || whoami["body"]["caller"]["uid"] == ALICE_UID,
        "a handed-over connection answered as its new holder: {whoami}"
    );
    println!(
        "over Alice's handed-over connection: whoami {} as uid {}, a token of \"me\": {}",
        whoami["status"], whoami["body"]["caller"]["uid"], lines[1]["status"]
    );
    let (code, out, err) = run_as(
        MALLORY_UID,
        &h.socket,
        &["token", "--identity", "me", "--audience", PAYMENTS],
    )
    .await;
    assert_ne!(
        code,
        0,
        "Mallory's own connection got Alice's token ({} bytes)",
        out.trim().len()
    );
    assert!(err.contains("login_required"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Persisted sessions.

#[tokio::test(flavor = "multi_thread")]
async fn persisted_sessions_are_private_and_a_state_dir_another_uid_planted_is_refused() {
    let mut h = people_with(Duration::from_secs(300), Login::new("corp", "corp").persist(), |h| {
        add_state_dir(h, &h.dir.path().join("state"), None)
    })
    .await;
    let state = h.dir.path().join("state");
    sign_in_by_api(&h, PERSON, &["payments"]).await;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700, "state_dir");
    assert_eq!(mode(&state.join("sessions")), 0o600, "the sessions file");
    assert_eq!(mode(&state.join("state.key")), 0o600, "the generated key");
    for file in ["sessions", "state.key"] {
        let mut p = python_as(
            MALLORY_UID,
            "try:\n    open(sys.argv[1], 'rb').read()\n    print('read', flush=True)\nexcept OSError as e:\n    print('refused', flush=True)\n",
            &[state.join(file).to_str().unwrap()],
        );
        let mut said = BufReader::new(p.stdout.take().unwrap()).lines();
        assert_eq!(said.next_line().await.unwrap().as_deref(), Some("refused"), "{file}");
    }
    h.stop().await;

    // Mallory got there first: state_dir is hers (as if made in a shared directory), or a link.
    let planted = h.dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&planted, Some(nix::unistd::Uid::from_raw(MALLORY_UID)), None).unwrap();
    let linked = h.dir.path().join("linked");
    std::os::unix::fs::symlink(&state, &linked).unwrap();
    for (dir, want) in [(&planted, "uid 1001"), (&linked, "not a directory")] {
        h.write_config();
        add_state_dir(&h, dir, None);
        // Refused when the configuration is read, or at the latest when the agent starts.
        let e = match cortexid::agent::load_config(&h.config_path) {
            Err(e) => format!("{e} {e:?}"),
            Ok(config) => {
                match cortexid::run::daemon::start(config, cortexid::run::systemd::Notifier::disabled()).await {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("the agent started with state_dir {}", dir.display()),
                }
            }
        };
        assert!(e.contains(want), "{}: {e}", dir.display());
    }
    assert!(
        std::fs::read_dir(&planted).unwrap().next().is_none(),
        "the agent wrote into a directory another uid owns"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets stay in the agent.

/// The sessions document in `state` decrypted with the 32-byte `key`.
fn saved_sessions(state: &Path, key: &[u8; 32]) -> serde_json::Value {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let mut raw = std::fs::read(state.join("sessions")).unwrap();
    assert_eq!(&raw[..5], b"CXST\x01");
    let nonce = Nonce::try_assume_unique_for_key(&raw[5..17]).unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut aad = b"cortexid-state\x01".to_vec();
    aad.extend_from_slice(b"sessions");
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut raw[17..]).unwrap();
    serde_json::from_slice(plain).unwrap()
}

/// Every run of PKCE-verifier characters (RFC 7636: 43 to 128 of them) in `text`.
fn verifier_candidates(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-._~".contains(c)))
        .flat_map(|w| w.split('.'))
        .filter(|w| (43..=128).contains(&w.len()))
        .collect()
}

fn s256(verifier: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_refresh_token_id_token_session_token_or_verifier_shows_in_answers_logs_audit_or_the_cli() {
    // Short tokens: the session refreshes (and rotates its refresh token) while the test runs.
    let key = [7u8; 32];
    let mut h = people_with(Duration::from_secs(8), Login::new("corp", "corp").persist(), |h| {
        let key_file = h.dir.path().join("state.key.hex");
        common::write_secret(&key_file, &key.iter().map(|b| format!("{b:02x}")).collect::<String>());
        add_state_dir(h, &h.dir.path().join("state"), Some(&key_file));
    })
    .await;
    h.stop().await;
    let state = h.dir.path().join("state");
    // The real agent, logging everything it logs at debug.
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let mut seen = String::new();
    let mut secrets: Vec<(String, String)> = Vec::new();
    let keep = |what: &str, v: &serde_json::Value, secrets: &mut Vec<(String, String)>| {
        if let Some(s) = v.as_str().filter(|s| s.len() >= 16) {
            secrets.push((what.to_string(), s.to_string()));
        }
    };

    // The browser flow through the CLI: remember the challenge, to recognise the verifier.
    let (child, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    let challenge = url::Url::parse(url.trim())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code_challenge")
        .unwrap()
        .1
        .into_owned();
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    let page = reqwest::get(&back).await.unwrap().text().await.unwrap();
    seen.push_str(&page);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    let doc = saved_sessions(&state, &key);
    for field in ["refresh_token", "access_token", "id_token"] {
        keep(field, &doc["sessions"][0][field], &mut secrets);
    }

    // The device flow, replacing that session; then a token, a refresh, whoami and the API.
    let mut child = cli_as(ALICE_UID, &h.socket, &["login", "--device"], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let complete = line_where(&mut lines, |l| l.contains("user_code=")).await;
    let user_code = complete.trim().rsplit('=').next().unwrap().to_string();
    assert!(h.idp.approve_device(&user_code, PERSON, &["payments"]));
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    let (code, token, err) = run_as(
        ALICE_UID,
        &h.socket,
        &["token", "--identity", "me", "--audience", PAYMENTS],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    seen.push_str(&err);
    let first = saved_sessions(&state, &key);
    for field in ["refresh_token", "access_token", "id_token"] {
        keep(field, &first["sessions"][0][field], &mut secrets);
    }
    let mut refreshed = false;
    for _ in 0..400 {
        let doc = saved_sessions(&state, &key);
        if doc["sessions"][0]["refresh_token"] != first["sessions"][0]["refresh_token"] {
            for field in ["refresh_token", "access_token", "id_token"] {
                keep(field, &doc["sessions"][0][field], &mut secrets);
            }
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refreshed,
        "the session did not refresh (and rotate) while the test waited"
    );
    for args in [&["whoami"][..], &["token", "--identity", "me", "--audience", PAYMENTS]] {
        let (_, out, err) = run_as(ALICE_UID, &h.socket, args).await;
        if args[0] == "whoami" {
            seen.push_str(&out);
        }
        seen.push_str(&err);
    }
    for path in ["/v1/sessions", "/v1/whoami", "/v1/identities", "/v1/health"] {
        seen.push_str(&raw_as(ALICE_UID, &[], &h.socket, "GET", path, None).await.1);
    }
    let (_, started) = raw_as(
        ALICE_UID,
        &[],
        &h.socket,
        "POST",
        "/v1/login",
        Some(r#"{"flow":"device"}"#),
    )
    .await;
    seen.push_str(&started);
    // The agent polls that sign-in (twice) before it stops.
    let polls = h.idp.people_counters().device_polls;
    for _ in 0..200 {
        if h.idp.people_counters().device_polls >= polls + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, err) = run_as(ALICE_UID, &h.socket, &["logout"]).await;
    assert_eq!(code, 0, "{err}");
    seen.push_str(&out);
    seen.push_str(&err);
    let pid = agent.child.id();
    agent.stop();
    let logs = std::fs::read_to_string(h.dir.path().join("agent.log")).unwrap();
    let audit = std::fs::read_to_string(&h.audit).unwrap();
    assert!(
        logs.contains("DEBUG"),
        "the agent (pid {pid}) did not log at debug: {logs}"
    );

    let token = token.trim();
    assert!(secrets.len() >= 8, "{} secrets collected", secrets.len());
    for (place, text) in [
        ("the log", &logs),
        ("the audit log", &audit),
        ("answers and CLI output", &seen),
    ] {
        for (what, value) in &secrets {
            assert!(!text.contains(value.as_str()), "a session's {what} is in {place}");
        }
        if place != "answers and CLI output" {
            assert!(!text.contains(token), "a derived token is in {place}");
        }
        for candidate in verifier_candidates(text) {
            assert_ne!(s256(candidate), challenge, "the PKCE verifier is in {place}");
        }
        assert!(!text.contains("refresh_token\":\""), "a refresh token field in {place}");
    }
    // The device code of the sign-in still pending at the provider: every word of the right
    // shape in what was written down is tried as that device code at the provider, which tells a
    // code it knows from one it does not.
    let mut words: Vec<&str> = [logs.as_str(), audit.as_str(), seen.as_str()]
        .iter()
        .flat_map(|t| t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')))
        .filter(|w| (20..=128).contains(&w.len()))
        .collect();
    words.sort_unstable();
    words.dedup();
    assert!(
        !h.idp.pending_user_codes().is_empty(),
        "a device sign-in is pending at the provider"
    );
    let known = device_codes_known(&h, &words).await;
    assert!(known.is_empty(), "{} device code(s) written down", known.len());
}

/// The `words` the provider takes for a device code of the login client it knows (pending,
/// slow_down, granted or expired rather than unknown).
async fn device_codes_known<'a>(h: &Harness, words: &[&'a str]) -> Vec<&'a str> {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.idp.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let mut known = Vec::new();
    for w in words {
        let answer: serde_json::Value = http
            .post(h.idp.token_endpoint())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", w),
                ("client_id", cortexid::devidp::fixture::LOGIN_CLIENT_ID),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if answer["error_description"] != "unknown device_code" {
            known.push(*w);
        }
    }
    known
}

/// Starts argv[2] device sign-ins on the socket argv[1] at once, each on its own connection
/// from its own thread, and prints the status codes, sorted.
const SIGN_IN_BURST: &str = r#"
import threading
codes = []
def one():
    status, _ = call(sys.argv[1], "POST", "/v1/login", {"flow": "device"})
    codes.append(status)
threads = [threading.Thread(target=one) for _ in range(int(sys.argv[2]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(" ".join(str(c) for c in sorted(codes)), flush=True)
"#;

/// Mallory starts 12 device sign-ins at once while the provider takes 300 ms to answer each:
/// the cap of 4 per uid holds (the place is taken before the provider is asked), and the
/// provider is asked 4 times, not 12.
#[tokio::test(flavor = "multi_thread")]
async fn sign_ins_started_side_by_side_are_held_to_four_per_uid() {
    let h = people().await;
    h.idp.set_device_authorization_delay(Duration::from_millis(300));
    let asked = h.idp.people_counters().device_authorizations;
    let mut burst = python_as(MALLORY_UID, SIGN_IN_BURST, &[h.socket.to_str().unwrap(), "12"]);
    let mut lines = BufReader::new(burst.stdout.take().unwrap()).lines();
    let codes = lines.next_line().await.unwrap().unwrap();
    assert_eq!(codes, "200 200 200 200 429 429 429 429 429 429 429 429");
    assert_eq!(h.idp.people_counters().device_authorizations - asked, 4);
}

/// What a web page in the person's own browser can do (its requests come from the person's
/// uid): send the loopback an error redirect without the sign-in's state.
const FORGED_ERROR: &str = r#"
status, page = get_loopback(int(sys.argv[1]), "/callback?error=access_denied&error_description=forged")
print(status, flush=True)
"#;

/// An error redirect must carry the sign-in's state as a code must: one without it, even from
/// the person's own uid, is refused with 400 and the sign-in goes on to complete.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_redirect_without_the_sign_ins_state_does_not_end_it() {
    let h = people().await;
    let (alice, _lines, url) = browser_login(ALICE_UID, &h.socket).await;
    let port = redirect_port(&url);
    let mut page = python_as(ALICE_UID, FORGED_ERROR, &[&port.to_string()]);
    let mut said = BufReader::new(page.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("400"));
    let back = h.idp.approve_authorization(url.trim(), PERSON, &["payments"]).unwrap();
    let _ = reqwest::get(&back).await;
    let err = signed_in(&h, alice).await;
    assert!(err.is_none(), "a forged error redirect ended the sign-in: {err:?}");
}
