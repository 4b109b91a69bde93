//! `cortexid doctor` against the development provider: a good config passes with the issued
//! token's claims shown (never the token), and each usual failure is named with its fix.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use cortexid::devidp::{DevIdp, Fault};

struct Doc {
    code: i32,
    out: String,
}

/// Knobs of a doctor test: what to break.
struct Case {
    ca_file: bool,
    auth: &'static str,
    audiences: &'static str,
    sa_exp_offset: i64,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            ca_file: true,
            auth: "client_secret_basic",
            audiences: "\"https://payments.internal\", \"https://ledger.internal\"",
            sa_exp_offset: 3600,
        }
    }
}

fn write_config(idp: &DevIdp, dir: &Path, case: &Case) -> std::path::PathBuf {
    std::fs::write(dir.join("ca.pem"), idp.ca_pem()).unwrap();
    write_secret(&dir.join("secret"), SECRET);
    let now = unix_now() as i64;
    let sa = idp.mint(serde_json::json!({
        "sub": "system:serviceaccount:prod:payments", "aud": idp.issuer(),
        "iat": now - 7200, "exp": now + case.sa_exp_offset,
    }));
    write_secret(&dir.join("sa.jwt"), &sa);
    let d = dir.display();
    let ca = if case.ca_file {
        format!("ca_file = \"{d}/ca.pem\"")
    } else {
        String::new()
    };
    let text = format!(
        r#"
[agent]
socket = "{d}/agent.sock"
upstream_timeout = "5s"

[[provider]]
name = "corp"
issuer = "{issuer}"
{ca}
client_id = "{CLIENT_ID}"
client_auth = "{auth}"
client_secret_file = "{d}/secret"

[[identity]]
name = "payments"
provider = "corp"
subject_token_file = "{d}/sa.jwt"
audiences = [{audiences}]
scopes = ["payments.read"]

[[identity]]
name = "batch"
provider = "corp"
grant = "client_credentials"
audiences = ["{LEDGER}"]

[[role]]
name = "r"
uids = [0]
identities = ["payments", "batch"]
"#,
        issuer = idp.issuer(),
        auth = case.auth,
        audiences = case.audiences,
    );
    let path = dir.join("cortexid.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn doctor(config: &Path, extra: &[&str]) -> Doc {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["doctor", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .await
        .unwrap();
    let out_text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out_text.contains("eyJ"), "doctor printed a token:\n{out_text}");
    assert!(!out_text.contains(SECRET), "doctor printed the secret:\n{out_text}");
    Doc {
        code: out.status.code().unwrap_or(-1),
        out: out_text,
    }
}

async fn run_case(case: Case, fault: Fault, extra: &[&str]) -> (Doc, DevIdp) {
    let idp = start_idp(Duration::from_secs(300)).await;
    idp.set_fault(fault);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&idp, dir.path(), &case);
    let doc = doctor(&config, extra).await;
    (doc, idp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_config_passes_and_shows_the_claims_of_each_identity() {
    let (d, idp) = run_case(Case::default(), Fault::None, &[]).await;
    assert_eq!(d.code, 0, "{}", d.out);
    for want in [
        "ok    discovery",
        "ok    TLS trust",
        "ok    clock",
        "ok    client authentication: client_secret_basic",
        "identity \"payments\"",
        "sub    system:serviceaccount:prod:payments",
        "aud    https://payments.internal",
        "identity \"batch\"",
        "aud    https://ledger.internal",
        "summary: 2 of 2 identities work",
    ] {
        assert!(d.out.contains(want), "missing {want:?} in:\n{}", d.out);
    }
    assert!(d.out.contains(&format!("iss    {}", idp.issuer())), "{}", d.out);
    assert_eq!(idp.counters().tokens_issued, 2, "one exchange per identity");

    // --identity narrows the run to one.
    let (d, idp) = run_case(Case::default(), Fault::None, &["--identity", "batch"]).await;
    assert_eq!(d.code, 0, "{}", d.out);
    assert!(d.out.contains("summary: 1 of 1 identities work"), "{}", d.out);
    assert_eq!(idp.counters().tokens_issued, 1);
    let (d, _) = run_case(Case::default(), Fault::None, &["--identity", "ghost"]).await;
    assert_eq!(d.code, 2, "{}", d.out);
    assert!(
        d.out.contains("no identity \"ghost\"") && d.out.contains("payments, batch"),
        "{}",
        d.out
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_the_provider_does_not_know_is_named_with_the_fix() {
    let case = Case {
        audiences: "\"https://unregistered.internal\", \"https://payments.internal\"",
        ..Case::default()
    };
    let (d, _) = run_case(case, Fault::None, &[]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    assert!(d.out.contains("FAIL  exchange"), "{}", d.out);
    assert!(d.out.contains("audience not registered at the provider"), "{}", d.out);
    assert!(
        d.out
            .contains("register https://unregistered.internal for client \"node-17\""),
        "{}",
        d.out
    );
    assert!(d.out.contains("summary: 1 of 2 identities work"), "{}", d.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_authentication_method_is_named_with_the_fix() {
    let case = Case {
        auth: "client_secret_post",
        ..Case::default()
    };
    let (d, _) = run_case(case, Fault::None, &[]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    assert!(d.out.contains("FAIL  client authentication"), "{}", d.out);
    assert!(d.out.contains("wrong client authentication method"), "{}", d.out);
    assert!(d.out.contains("set client_auth in provider \"corp\""), "{}", d.out);
    assert!(d.out.contains("summary: 0 of 2 identities work"), "{}", d.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ca_says_to_add_it_as_ca_file() {
    let case = Case {
        ca_file: false,
        ..Case::default()
    };
    let (d, idp) = run_case(case, Fault::None, &[]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    assert!(d.out.contains("FAIL  TLS trust"), "{}", d.out);
    assert!(d.out.contains("untrusted CA"), "{}", d.out);
    assert!(d.out.contains("add the provider's CA as ca_file"), "{}", d.out);
    assert_eq!(idp.counters().token_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_over_a_minute_is_reported() {
    let (d, _) = run_case(Case::default(), Fault::ClockSkew(300), &[]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    // The issued token is not valid yet by this host's clock (nbf 5 minutes ahead): named as skew.
    assert!(d.out.contains("not valid yet by this host's clock"), "{}", d.out);
    assert!(d.out.contains("cause: clock skew"), "{}", d.out);
    assert!(d.out.contains("synchronise the clocks"), "{}", d.out);

    // Within the minute of leeway: fine.
    let (d, _) = run_case(Case::default(), Fault::ClockSkew(20), &[]).await;
    assert_eq!(d.code, 0, "{}", d.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_subject_token_is_caught_before_exchanging() {
    let case = Case {
        sa_exp_offset: -600,
        ..Case::default()
    };
    let (d, idp) = run_case(case, Fault::None, &["--identity", "payments"]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    assert!(d.out.contains("FAIL  subject credential"), "{}", d.out);
    assert!(d.out.contains("subject token expired"), "{}", d.out);
    assert!(d.out.contains("renew"), "{}", d.out);
    assert_eq!(
        idp.counters().token_requests,
        0,
        "no exchange with an expired credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_subject_token_is_named() {
    let idp = start_idp(Duration::from_secs(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&idp, dir.path(), &Case::default());
    write_secret(&dir.path().join("sa.jwt"), "eyJhbGciOiJFUzI1NiJ9.!!!.x");
    let d = doctor(&config, &["--identity", "payments"]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    assert!(d.out.contains("is not a readable JWT"), "{}", d.out);
}
