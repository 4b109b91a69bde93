//! `cortexid doctor` against the development provider: a good config passes with the issued
//! token's claims shown (never the token), and each usual failure is named with its fix.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use cortexid::devidp::fixture::{Agent, ConfigFile, Fixture, Identity, ProviderAuth, Role};
use cortexid::devidp::{DevIdp, Fault};

struct Doc {
    code: i32,
    out: String,
}

/// Knobs of a doctor test: what to break.
struct Case {
    ca_file: bool,
    /// How the agent authenticates, given the secret file (the provider expects basic).
    auth: fn(PathBuf) -> ProviderAuth,
    audiences: &'static [&'static str],
    sa_exp_offset: i64,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            ca_file: true,
            auth: ProviderAuth::SecretBasic,
            audiences: &["https://payments.internal", "https://ledger.internal"],
            sa_exp_offset: 3600,
        }
    }
}

fn write_config(fx: &Fixture, case: &Case) -> PathBuf {
    let idp = fx.idp();
    let now = unix_now() as i64;
    let sa = idp.mint(serde_json::json!({
        "sub": "system:serviceaccount:prod:payments", "aud": idp.issuer(),
        "iat": now - 7200, "exp": now + case.sa_exp_offset,
    }));
    let sa_file = fx.write_credential("sa.jwt", &sa).unwrap();
    let mut provider = fx.provider("corp");
    if !case.ca_file {
        provider.ca_file = None;
    }
    provider.auth = (case.auth)(fx.secret_file());
    let config = ConfigFile {
        agent: Agent {
            socket: fx.socket(),
            upstream_timeout: Some(Duration::from_secs(5)),
            ..Agent::default()
        },
        providers: vec![provider],
        identities: vec![
            Identity::exchange("payments", "corp", sa_file)
                .audiences(case.audiences)
                .scopes(&["payments.read"]),
            Identity::client_credentials("batch", "corp").audiences(&[LEDGER]),
        ],
        roles: vec![Role::new("r", &["payments", "batch"]).uids(&[0])],
        ..ConfigFile::default()
    };
    fx.write_config(&config).unwrap()
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
    let dir = tempfile::tempdir().unwrap();
    let fx = start_fixture(dir.path(), Duration::from_secs(300)).await;
    fx.idp().set_fault(fault);
    let config = write_config(&fx, &case);
    let doc = doctor(&config, extra).await;
    (doc, fx.idp().clone())
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
        audiences: &["https://unregistered.internal", "https://payments.internal"],
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
        auth: ProviderAuth::SecretPost,
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
    let dir = tempfile::tempdir().unwrap();
    let fx = start_fixture(dir.path(), Duration::from_secs(300)).await;
    let config = write_config(&fx, &Case::default());
    write_secret(&fx.dir().join("sa.jwt"), "eyJhbGciOiJFUzI1NiJ9.!!!.x");
    let d = doctor(&config, &["--identity", "payments"]).await;
    assert_eq!(d.code, 1, "{}", d.out);
    assert!(d.out.contains("is not a readable JWT"), "{}", d.out);
}
