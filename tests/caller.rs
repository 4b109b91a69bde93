//! Knowing the caller: roles by uid and executable, caller-presented credentials and claims,
//! and an audit trail that names every caller and leaks nothing. Tests run as root, so they start
//! callers as other users.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use cortexid::config::{AuditTarget, TrustedIssuer};
use cortexid::devidp::fixture::{Identity, Role};
use cortexid::devidp::{DevIdp, DevIdpConfig};

const NOBODY: u32 = 64999;

/// The reasons of a refusal: the `error_description` of the audit line whose `reference` the
/// refusal's text names (callers that are not operators get only the reference).
fn reasons(h: &Harness, err: &str) -> String {
    let reference = err
        .split("under reference ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no reference in {err}"));
    h.audit_lines()
        .into_iter()
        .find(|l| l["reference"] == reference)
        .and_then(|l| l["error_description"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no audit line with reference {reference}"))
}

#[tokio::test]
async fn only_the_uid_a_role_names_gets_the_token() {
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![4242],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let args = ["--identity", "payments", "--audience", PAYMENTS];
    let (code, out, err) = token_as(4242, exe, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let (code, out, err) = token_as(4343, exe, &h.socket, &args).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("access_denied") && err.contains("uid 4343"), "{err}");
    assert!(
        !err.contains("needs uid"),
        "a caller that is not an operator learns no role's conditions: {err}"
    );
    assert!(
        reasons(&h, &err).contains("needs uid in {4242}"),
        "the near miss is named in the audit line the answer refers to"
    );

    let lines = h.audit_lines();
    let issued: Vec<_> = lines.iter().filter(|l| l["event"] == "token.issued").collect();
    let denied: Vec<_> = lines.iter().filter(|l| l["event"] == "token.denied").collect();
    assert_eq!(
        (issued.len(), denied.len()),
        (1, 1),
        "exactly one audit line per request"
    );
    assert_eq!(issued[0]["caller"]["uid"], 4242);
    assert_eq!(denied[0]["caller"]["uid"], 4343);
    for l in [issued[0], denied[0]] {
        assert!(l["caller"]["pid"].as_u64().unwrap() > 1);
        assert_eq!(l["caller"]["exe"], exe.to_str().unwrap());
        assert!(
            l["caller"].get("unit").is_some(),
            "the unit is always reported (null when none): {l}"
        );
    }
    assert_eq!(denied[0]["reason"], "access_denied");
}

#[tokio::test]
async fn a_role_by_executable_admits_the_binary_and_not_a_copy_of_it() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let setup = Setup {
        role_uids: vec![NOBODY],
        roles: vec![Role::new("by-binary", &["payments"]).executables(&[exe])],
        ..Setup::default()
    };
    let h = Harness::new(Duration::from_secs(300), setup).await;
    open_dir(h.dir.path());
    let copy = h.dir.path().join("cortexid-copy");
    std::fs::copy(exe, &copy).unwrap();
    let args = ["--identity", "payments", "--audience", PAYMENTS];
    let (code, _, err) = token_as(4242, exe, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = token_as(4242, &copy, &h.socket, &args).await;
    assert_eq!(code, 1);
    assert!(err.contains(&format!("exe {}", copy.display())), "{err}");
    assert!(reasons(&h, &err).contains("needs executable in"), "{err}");
}

struct Presented {
    h: Harness,
    k8s: DevIdp,
}

/// An agent with an identity that takes the subject from the caller, trusting a second
/// provider (standing in for a Kubernetes service-account issuer) whose tokens carry `team`.
async fn presented() -> Presented {
    let k8s = DevIdp::start(DevIdpConfig::default()).await.unwrap();
    // The names are only known once the issuer runs; the config is written after.
    let mut h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            ..Setup::default()
        },
    )
    .await;
    h.stop().await;
    let k8s_ca = h.dir.path().join("k8s-ca.pem");
    std::fs::write(&k8s_ca, k8s.ca_pem()).unwrap();
    h.idp.trust_key(k8s.jwks()["keys"][0].clone());
    let k8s_issuer = TrustedIssuer {
        issuer: k8s.issuer().to_string(),
        jwks_uri: format!("{}/jwks", k8s.issuer()),
        audience: "cortexid".into(),
        ca_file: Some(k8s_ca),
    };
    h.config.identities.push(
        Identity::presented("delegated", "corp", vec![k8s_issuer])
            .audiences(&[PAYMENTS])
            .scopes(&["payments.read"]),
    );
    h.config.roles.push(
        Role::new("payments-team", &["delegated"])
            .claim("team", &["payments"])
            .claim("tenant.id", &["t1", "t2"]),
    );
    h.write_config();
    h.start().await;
    Presented { h, k8s }
}

fn sa_claims(k8s: &DevIdp, team: &str, aud: &str, exp_offset: i64) -> serde_json::Value {
    let now = unix_now() as i64;
    serde_json::json!({
        "iss": k8s.issuer(), "sub": "system:serviceaccount:prod:payments-api", "aud": aud,
        "team": team, "tenant": {"id": "t2"}, "iat": now - 10, "exp": now + exp_offset,
    })
}

#[tokio::test]
async fn a_presented_jwt_from_a_trusted_issuer_gets_a_token_through_its_claims() {
    let p = presented().await;
    let good = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 600));
    let body = serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": good});
    let r = p.h.client.post_json("/v1/token", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json().unwrap()["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&token)["sub"], "system:serviceaccount:prod:payments-api");
    // The identity is implied when only one takes presented credentials.
    let r =
        p.h.client
            .post_json(
                "/v1/token",
                &serde_json::json!({"audience": PAYMENTS, "subject_token": good}),
            )
            .await
            .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["access_token"].as_str().unwrap(),
        token,
        "the same credential shares a cache key"
    );
    // A different credential gets its own cache entry.
    let other = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 900));
    let r =
        p.h.client
            .post_json(
                "/v1/token",
                &serde_json::json!({"audience": PAYMENTS, "subject_token": other}),
            )
            .await
            .unwrap();
    assert_ne!(r.json().unwrap()["access_token"].as_str().unwrap(), token);
    let issued =
        p.h.audit_lines()
            .into_iter()
            .find(|l| l["event"] == "token.issued")
            .unwrap();
    assert_eq!(issued["role"], "payments-team");
    assert_eq!(issued["subject"]["sub"], "system:serviceaccount:prod:payments-api");
    assert_eq!(issued["subject"]["fingerprint"].as_str().unwrap().len(), 16);
}

#[tokio::test]
async fn a_presented_jwt_is_refused_with_the_reason() {
    let p = presented().await;
    let ask = |t: String| serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": t});
    let good = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 600));
    // Change a character in the middle of the signature: the last base64url character of an
    // ES256 signature carries padding bits, so changing it may not change the signature at all.
    let mut tampered = good.clone().into_bytes();
    let i = good.rfind('.').unwrap() + 20;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut unknown = sa_claims(&p.k8s, "payments", "cortexid", 600);
    unknown["iss"] = "https://evil.example".into();
    let cases = [
        (tampered, "signature"),
        (p.k8s.mint(unknown), "not trusted"),
        (
            p.k8s.mint(sa_claims(&p.k8s, "payments", "someone-else", 600)),
            "audience",
        ),
        (p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", -120)), "expired"),
        (
            p.k8s.mint(sa_claims(&p.k8s, "ops", "cortexid", 600)),
            "needs claim team",
        ),
        ("not-a-jwt".to_string(), "not a JWT"),
    ];
    for (token, why) in cases {
        let r = p.h.client.post_json("/v1/token", &ask(token)).await.unwrap();
        let body = r.json().unwrap();
        assert!((400..500).contains(&r.status), "{why}: {} {body}", r.status);
        let text = body["error_description"].as_str().unwrap();
        assert!(text.contains(why), "expected {why:?} in {text}");
    }
    assert_eq!(
        p.h.idp.counters().token_requests,
        0,
        "nothing refused reached the provider"
    );
}

#[tokio::test]
async fn an_unwritable_audit_log_stops_tokens_until_fixed_and_reloaded() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let audit_dir = h.dir.path().join("audit");
    h.config.agent.audit_log = Some(AuditTarget::File(audit_dir.join("audit.jsonl")));
    h.write_config();
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "audit_unavailable");
    assert!(body.get("access_token").is_none());

    std::fs::create_dir(&audit_dir).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let mut status = 0;
    for _ in 0..100 {
        (status, _) = h.get(&token_path("payments", PAYMENTS, "")).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    let audit = std::fs::read_to_string(audit_dir.join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"event\":\"token.issued\""));
    assert_eq!(agent.stop(), 0);
}

#[tokio::test]
async fn no_token_or_secret_ever_reaches_a_log_or_audit_line() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let mut tokens = Vec::new();
    for (identity, aud, scope) in [
        ("payments", PAYMENTS, "payments.read"),
        ("payments", LEDGER, ""),
        ("batch", LEDGER, "payments.read"),
    ] {
        let (status, body) = h.get(&token_path(identity, aud, scope)).await;
        assert_eq!(status, 200, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_string());
    }
    // Denials, a provider refusal, a malformed request and a presented credential.
    h.get(&token_path("payments", UNREGISTERED, "")).await;
    h.get(&token_path("payments", "https://nope", "")).await;
    h.get("/v1/token?audience=x&subject_token=eyJsecret").await;
    let presented = h.mint_sa("presented");
    h.client
        .post_json(
            "/v1/token",
            &serde_json::json!({"audience": PAYMENTS, "subject_token": presented}),
        )
        .await
        .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = agent.logs();
    assert_eq!(agent.stop(), 0);
    let audit = std::fs::read_to_string(&h.audit).unwrap();
    let everything = format!("{logs}\n{audit}");
    assert!(audit.lines().count() >= 8, "{audit}");
    assert!(logs.contains("exchanged"), "the logs were captured: {logs}");
    let sa = std::fs::read_to_string(&h.sa_path).unwrap();
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([SECRET, sa.trim(), presented.as_str(), "eyJsecret"]);
    for s in secrets {
        assert!(
            !everything.contains(s),
            "a secret or token leaked into the logs or the audit log"
        );
        // Not even its signature part alone.
        if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() > 20) {
            assert!(!everything.contains(sig), "a token signature leaked");
        }
    }
}

#[tokio::test]
async fn a_caller_no_role_could_admit_gets_no_signature_check_and_no_jwks_request() {
    use base64::Engine;
    let mut p = presented().await;
    // The team's role is for root only: uid 4701 can never be admitted, whatever it presents.
    p.h.stop().await;
    let role = p.h.config.roles.pop().unwrap();
    p.h.config.roles.push(role.uids(&[0]));
    p.h.write_config();
    p.h.start().await;
    open_dir(p.h.dir.path());
    p.k8s.reset_counters();

    let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = sa_claims(&p.k8s, "payments", "cortexid", 600);
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    for n in 0..5 {
        // A trusted issuer, an unknown kid, a signature that cannot verify.
        let forged = format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(serde_json::json!({"alg": "ES256", "kid": format!("forged-{n}")})),
            enc(claims.clone())
        );
        let file = p.h.dir.path().join(format!("forged-{n}.jwt"));
        std::fs::write(&file, &forged).unwrap();
        let args = [
            "--identity",
            "delegated",
            "--audience",
            PAYMENTS,
            "--subject-token-file",
            file.to_str().unwrap(),
        ];
        let (code, _, err) = token_as(4701, exe, &p.h.socket, &args).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("access_denied"), "{err}");
    }
    assert_eq!(p.k8s.counters().jwks, 0, "the issuer's JWKS was never asked for");
    // The caller the role admits is still served.
    let good = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 600));
    let body = serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": good});
    let r = p.h.client.post_json("/v1/token", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
