//! The people grants of the provider client (`cortexid::upstream`) against the development
//! provider: device flow, authorization code with PKCE, rotating refresh tokens, revocation,
//! changed groups; the development provider's sign-in pages driven over HTTP as a browser
//! would; and the session's tokens as subject tokens of a token exchange.

use std::sync::Arc;
use std::time::Duration;

use cortexid::config::{ClientAuth, ProviderSettings};
use cortexid::devidp::{DevClient, DevClientAuth, DevIdp, DevIdpConfig};
use cortexid::error::{ProviderError, ProviderErrorKind};
use cortexid::upstream::{DeviceAuthorization, DevicePoll, Pkce, ProviderClient, SessionGrant, random_urlsafe};
use serde_json::{Value, json};

const LOGIN: &str = "cortexid-login";
const AGENT: &str = "agent";
const AGENT_SECRET: &str = "agent-secret";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

struct Setup {
    idp: DevIdp,
    client: ProviderClient,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let idp = DevIdp::start(DevIdpConfig {
        token_lifetime: Duration::from_secs(300),
        clients: vec![
            DevClient::new(LOGIN, DevClientAuth::None),
            DevClient::new(AGENT, DevClientAuth::SecretPost(AGENT_SECRET.into())).with_audiences(&["https://payments"]),
        ],
    })
    .await
    .unwrap();
    idp.set_device_interval(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, idp.ca_pem()).unwrap();
    let settings = ProviderSettings {
        name: "dev".into(),
        issuer: idp.issuer().into(),
        token_endpoint: None,
        jwks_uri: None,
        ca_file: Some(ca),
        client_id: AGENT.into(),
        client_auth: ClientAuth::None,
        verify_tokens: true,
        target_parameter: None,
        max_concurrent: None,
        rate: None,
    };
    let client = ProviderClient::new(Arc::new(settings), Duration::from_secs(10)).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(idp.ca_pem().as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Setup {
        idp,
        client,
        http,
        _dir: dir,
    }
}

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn code_of(e: &ProviderError) -> Option<&str> {
    match &e.kind {
        ProviderErrorKind::Rejected { error } => Some(error),
        _ => None,
    }
}

/// Starts a device sign-in of the login client for `openid groups offline_access`.
async fn start_device(s: &Setup) -> DeviceAuthorization {
    s.client
        .device_authorization(
            LOGIN,
            &ClientAuth::None,
            &scopes(&["openid", "groups", "offline_access"]),
        )
        .await
        .unwrap()
}

/// Polls an approved device sign-in once; it must be granted.
async fn granted(s: &Setup, auth: &DeviceAuthorization) -> SessionGrant {
    match s
        .client
        .poll_device(LOGIN, &ClientAuth::None, &auth.device_code)
        .await
        .unwrap()
    {
        DevicePoll::Granted(g) => *g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Signs `name` in with the device flow (approved by the test control) and returns the grant.
async fn device_sign_in(s: &Setup, name: &str, groups: &[&str]) -> SessionGrant {
    let auth = start_device(s).await;
    assert!(s.idp.approve_device(&auth.user_code, name, groups));
    granted(s, &auth).await
}

fn groups(g: &SessionGrant) -> Value {
    g.id_claims.as_ref().unwrap()["groups"].clone()
}

#[tokio::test]
async fn device_flow_goes_pending_then_slow_down_then_granted() {
    let s = setup().await;
    let meta = s.client.login_metadata().await.unwrap();
    let support = meta.login_support();
    assert!(support.device.is_ok() && support.browser.is_ok() && support.revocation && support.refresh);

    let auth = s
        .client
        .device_authorization(
            LOGIN,
            &ClientAuth::None,
            &scopes(&["openid", "email", "groups", "offline_access"]),
        )
        .await
        .unwrap();
    let c = &auth.user_code;
    assert!(
        c.len() == 9 && c.as_bytes()[4] == b'-' && c.chars().filter(|c| *c != '-').all(|c| c.is_ascii_uppercase()),
        "user code {c}"
    );
    assert_eq!(auth.verification_uri, s.idp.verification_uri());
    assert_eq!(
        auth.verification_uri_complete.as_deref(),
        Some(format!("{}?user_code={c}", s.idp.verification_uri()).as_str())
    );
    assert_eq!(
        auth.interval,
        Duration::from_secs(1),
        "300 ms at the provider is announced as 1 s"
    );
    assert_eq!(auth.expires_in, Duration::from_secs(600));
    assert_eq!(s.idp.pending_user_codes(), vec![c.clone()]);

    let poll = || s.client.poll_device(LOGIN, &ClientAuth::None, &auth.device_code);
    assert!(matches!(poll().await.unwrap(), DevicePoll::Pending));
    assert!(matches!(poll().await.unwrap(), DevicePoll::SlowDown), "polled at once");
    assert!(
        s.idp
            .approve_device(&c.to_lowercase(), "Alice Smith", &["payments", "developers"])
    );
    // slow_down made the code's interval 600 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let DevicePoll::Granted(grant) = poll().await.unwrap() else {
        panic!("approved")
    };
    let claims = grant.id_claims.as_ref().unwrap();
    assert_eq!(claims["sub"], "alice-smith");
    assert_eq!(claims["name"], "Alice Smith");
    assert_eq!(claims["email"], "alice-smith@example.com");
    assert_eq!(claims["aud"], LOGIN);
    assert_eq!(groups(&grant), json!(["payments", "developers"]));
    assert!(grant.refresh_token.is_some(), "offline_access gives a refresh token");
    assert_eq!(grant.expires_in, Some(Duration::from_secs(300)));
    assert_eq!(grant.scope.as_deref(), Some("openid email groups offline_access"));

    // The code is spent.
    let e = poll().await.unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"), "{e}");
    let counters = s.idp.people_counters();
    assert_eq!((counters.device_authorizations, counters.device_polls), (1, 4));
    assert_eq!(counters.sessions_issued, 1);

    // Declined, and expired.
    for declined in [true, false] {
        let auth = s
            .client
            .device_authorization(LOGIN, &ClientAuth::None, &scopes(&["openid"]))
            .await
            .unwrap();
        if declined {
            assert!(s.idp.deny_device(&auth.user_code));
        } else {
            s.idp.expire_device_codes();
            assert!(
                !s.idp.approve_device(&auth.user_code, "late", &["x"]),
                "too late to approve"
            );
        }
        let poll = s
            .client
            .poll_device(LOGIN, &ClientAuth::None, &auth.device_code)
            .await
            .unwrap();
        match (declined, poll) {
            (true, DevicePoll::Denied) | (false, DevicePoll::Expired) => {}
            (_, other) => panic!("declined {declined}: {other:?}"),
        }
    }

    // The doctor's probe: the login client is accepted, an unknown one is not.
    s.client.probe_login_client(LOGIN, &ClientAuth::None).await.unwrap();
    let e = s
        .client
        .probe_login_client("nobody", &ClientAuth::None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_client"), "{e}");
    assert_eq!(s.idp.people_counters().sessions_issued, 1, "a probe issues nothing");

    // An unknown client is refused, and the error says which one.
    let e = s
        .client
        .device_authorization("nobody", &ClientAuth::None, &scopes(&["openid"]))
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_client"), "{e}");
    assert!(e.message.contains("\"nobody\""), "{e}");
}

const REDIRECT: &str = "http://127.0.0.1:45678/callback";

/// A browser sign-in of Bob approved by the test control: the authorization URL and the code.
async fn browser_sign_in(s: &Setup, pkce: &Pkce, nonce: &str) -> (String, String) {
    let state = random_urlsafe(32).unwrap();
    let url = s
        .client
        .authorization_url(
            LOGIN,
            REDIRECT,
            &scopes(&["openid", "groups", "offline_access"]),
            &state,
            nonce,
            pkce,
        )
        .await
        .unwrap();
    let back = s.idp.approve_authorization(&url, "Bob", &["payments"]).unwrap();
    let back = url::Url::parse(&back).unwrap();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("state"), Some(&state), "{back}");
    assert_eq!(q.get("iss").map(String::as_str), Some(s.idp.issuer()));
    assert!(back.as_str().starts_with(REDIRECT));
    (url, q["code"].clone())
}

#[tokio::test]
async fn the_code_flow_needs_the_right_pkce_verifier_redirect_and_nonce_and_codes_are_single_use() {
    let s = setup().await;
    let redirect = REDIRECT;
    let pkce = Pkce::generate().unwrap();
    let nonce = random_urlsafe(32).unwrap();
    let (url, code) = browser_sign_in(&s, &pkce, &nonce).await;
    let q: std::collections::HashMap<_, _> = url::Url::parse(&url).unwrap().query_pairs().into_owned().collect();
    assert_eq!(
        q["prompt"], "consent",
        "offline_access needs prompt=consent (OIDC Core 11)"
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"], pkce.challenge);
    assert_eq!(q["nonce"], nonce);
    assert_eq!(q["response_type"], "code");

    // Another verifier: refused, and the code stays usable for its rightful owner.
    let other = Pkce::generate().unwrap();
    let e = s
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &code, redirect, &other, &nonce)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"));
    assert!(e.message.contains("PKCE"), "{e}");
    // Another redirect_uri: refused.
    let e = s
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &code, "http://127.0.0.1:1/x", &pkce, &nonce)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"));
    let grant = s
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &code, redirect, &pkce, &nonce)
        .await
        .unwrap();
    let claims = grant.id_claims.as_ref().unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["nonce"].as_str()),
        (Some("bob"), Some(nonce.as_str()))
    );
    assert_eq!(groups(&grant), json!(["payments"]));
    let refresh = grant.refresh_token.clone().unwrap();

    // The same code again: refused, and the sign-in made with it is revoked.
    let e = s
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &code, redirect, &pkce, &nonce)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"));
    let e = s
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &refresh, &[], "bob")
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"), "{e}");

    // A sign-in whose ID token carries another nonce than this agent sent: refused by the client.
    let (_, code) = browser_sign_in(&s, &pkce, "nonce-of-another-sign-in").await;
    let e = s
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &code, redirect, &pkce, &nonce)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Verification);
    assert!(e.message.contains("nonce"), "{e}");
    let c = s.idp.people_counters();
    assert_eq!((c.authorize_requests, c.code_redemptions), (2, 5));
}

#[tokio::test]
async fn authorize_refuses_unknown_clients_foreign_redirects_and_missing_pkce() {
    let s = setup().await;
    let pkce = Pkce::generate().unwrap();
    let url = |client: &str, redirect: &str| {
        let s = &s;
        let pkce = &pkce;
        let client = client.to_string();
        let redirect = redirect.to_string();
        async move {
            s.client
                .authorization_url(&client, &redirect, &scopes(&["openid"]), "st", "n", pkce)
                .await
                .unwrap()
        }
    };
    let e = s
        .idp
        .approve_authorization(&url("nobody", "http://127.0.0.1:9/cb").await, "eve", &["admins"])
        .unwrap_err();
    assert!(e.to_string().contains("unknown client nobody"), "{e}");
    for evil in [
        "https://evil.example/cb",
        "http://10.0.0.1:9/cb",
        "http://127.0.0.1.evil.example/cb",
    ] {
        let e = s
            .idp
            .approve_authorization(&url(LOGIN, evil).await, "eve", &["admins"])
            .unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{evil}: {e}");
    }
    // Without PKCE: the error goes back to the (loopback) redirect_uri, with the state.
    let good = url(LOGIN, "http://[::1]:9/cb").await;
    let without = good
        .replace("code_challenge_method=S256", "code_challenge_method=plain")
        .replace(&pkce.challenge, "short");
    let back = s.idp.approve_authorization(&without, "eve", &["admins"]).unwrap();
    assert!(back.starts_with("http://[::1]:9/cb?error=invalid_request"), "{back}");
    assert!(back.contains("state=st") && !back.contains("code="), "{back}");
}

#[tokio::test]
async fn refresh_tokens_rotate_a_replay_ends_the_sign_in_and_groups_follow_the_provider() {
    let s = setup().await;
    let first = device_sign_in(&s, "carol", &["payments"]).await;
    let r1 = first.refresh_token.clone().unwrap();

    s.idp.set_groups("carol", &["ops"]);
    let second = s
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r1, &[], "carol")
        .await
        .unwrap();
    assert_eq!(
        groups(&second),
        json!(["ops"]),
        "the next refresh shows the provider's groups"
    );
    let r2 = second.refresh_token.clone().unwrap();
    assert_ne!(r1, r2, "refresh tokens rotate");
    assert_eq!(second.scope.as_deref(), Some("openid groups offline_access"));

    let third = s
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r2, &scopes(&["openid", "groups"]), "carol")
        .await
        .unwrap();
    assert!(third.refresh_token.is_some(), "offline_access is kept");
    let r3 = third.refresh_token.clone().unwrap();

    // The spent r1 again: a replay. Refused, and the sign-in (r3 too) ends.
    let e = s
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r1, &[], "carol")
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"), "{e}");
    assert!(e.message.contains("sign in again"), "{e}");
    let e = s
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r3, &[], "carol")
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"), "{e}");

    // A scope the sign-in did not grant is refused.
    let fresh = device_sign_in(&s, "carol", &["payments"]).await;
    let e = s
        .client
        .refresh_session(
            LOGIN,
            &ClientAuth::None,
            fresh.refresh_token.as_ref().unwrap(),
            &scopes(&["openid", "email"]),
            "carol",
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_scope"), "{e}");
    // A refused refresh does not spend the token.
    s.client
        .refresh_session(
            LOGIN,
            &ClientAuth::None,
            fresh.refresh_token.as_ref().unwrap(),
            &[],
            "carol",
        )
        .await
        .unwrap();
    assert_eq!(s.idp.people_counters().refreshes, 6);
}

#[tokio::test]
async fn revocation_ends_the_sign_in_at_the_provider() {
    let s = setup().await;
    let grant = device_sign_in(&s, "dave", &["payments"]).await;
    let refresh = grant.refresh_token.clone().unwrap();
    assert!(
        s.client
            .revoke_refresh_token(LOGIN, &ClientAuth::None, &refresh)
            .await
            .unwrap()
    );
    assert_eq!(s.idp.people_counters().revocations, 1);
    let e = s
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &refresh, &[], "dave")
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"), "{e}");

    // Revoked by the provider's administrator (the test control): the same for the agent.
    let grant = device_sign_in(&s, "dave", &["payments"]).await;
    assert_eq!(s.idp.revoke_person("Dave"), 1);
    let e = s
        .client
        .refresh_session(
            LOGIN,
            &ClientAuth::None,
            grant.refresh_token.as_ref().unwrap(),
            &[],
            "dave",
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some("invalid_grant"), "{e}");
    // Revoking a token the provider does not know is not an error (RFC 7009 2.2).
    let unknown = cortexid::token::Secret::new("never-issued".into());
    assert!(
        s.client
            .revoke_refresh_token(LOGIN, &ClientAuth::None, &unknown)
            .await
            .unwrap()
    );
}

/// A token exchange by the agent's client with the session's access or ID token as subject.
async fn exchange(s: &Setup, subject: &str, subject_type: &str, actor: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("client_id", AGENT),
        ("client_secret", AGENT_SECRET),
        ("subject_token", subject),
        ("subject_token_type", subject_type),
        ("audience", "https://payments"),
    ];
    if let Some(a) = actor {
        form.extend([("actor_token", a), ("actor_token_type", JWT_TYPE)]);
    }
    let r = s.http.post(s.idp.token_endpoint()).form(&form).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_sessions_tokens_are_subject_tokens_for_the_person_until_revoked() {
    let s = setup().await;
    let grant = device_sign_in(&s, "erin", &["payments"]).await;
    let access = grant.access_token.expose().to_string();
    let id = grant.id_token.as_ref().unwrap().expose().to_string();
    for (subject, ty) in [(&access, ACCESS_TOKEN_TYPE), (&id, ID_TOKEN_TYPE)] {
        let (st, body) = exchange(&s, subject, ty, None).await;
        assert_eq!(st, 200, "{body}");
        let c = jwt_claims(body["access_token"].as_str().unwrap());
        assert_eq!(
            (c["sub"].as_str(), c["aud"].as_str()),
            (Some("erin"), Some("https://payments"))
        );
        assert!(c.get("act").is_none());
    }
    // An AI agent acting for the person: sub the person, act the agent.
    let bot = s.idp.mint(json!({"sub": "coding-agent", "exp": 4_000_000_000u64}));
    let (st, body) = exchange(&s, &access, ACCESS_TOKEN_TYPE, Some(&bot)).await;
    assert_eq!(st, 200, "{body}");
    let c = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        (c["sub"].clone(), c["act"].clone()),
        (json!("erin"), json!({"sub": "coding-agent"}))
    );

    s.idp.revoke_person("erin");
    let (st, body) = exchange(&s, &access, ACCESS_TOKEN_TYPE, None).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
}

/// The value of the first `<input name="NAME" ... value="...">` in a page.
fn input_value(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} in {page}"));
    let rest = &page[at..];
    let v = rest.find("value=\"").unwrap() + 7;
    rest[v..v + rest[v..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn the_sign_in_pages_work_over_http_as_a_browser_uses_them() {
    let s = setup().await;
    // Device: open verification_uri_complete, submit the form.
    let auth = start_device(&s).await;
    let page = s
        .http
        .get(auth.verification_uri_complete.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = page.text().await.unwrap();
    assert!(page.contains("development provider"), "marked as development only");
    assert_eq!(input_value(&page, "user_code"), auth.user_code);
    assert!(page.contains("value=\"payments\""), "offers groups as checkboxes");
    let r = s
        .http
        .post(&auth.verification_uri)
        .form(&[
            ("user_code", auth.user_code.as_str()),
            ("name", "Frank <b>O'Neil</b>"),
            ("groups", "payments"),
            ("groups", "developers"),
            ("other_groups", "team:a, team:b"),
            ("action", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = r.text().await.unwrap();
    assert!(done.contains("Frank &lt;b&gt;O&#39;Neil&lt;/b&gt;"), "{done}");
    assert!(!done.contains("<b>O'Neil</b>"), "echoed names are escaped");
    let g = granted(&s, &auth).await;
    assert_eq!(g.id_claims.as_ref().unwrap()["sub"], "frank-b-o-neil-b");
    assert_eq!(groups(&g), json!(["payments", "developers", "team:a", "team:b"]));

    // A user code nobody waits for: refused on the page.
    let r = s
        .http
        .post(&auth.verification_uri)
        .form(&[("user_code", "BBBB-BBBB"), ("name", "x"), ("action", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Browser: /authorize shows the page; its form redirects to the loopback with code and state.
    let pkce = Pkce::generate().unwrap();
    let redirect = "http://127.0.0.1:40123/";
    let url = s
        .client
        .authorization_url(
            LOGIN,
            redirect,
            &scopes(&["openid", "groups"]),
            "state-1",
            "nonce-1",
            &pkce,
        )
        .await
        .unwrap();
    let page = s.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let request = input_value(&page, "request");
    let r = s
        .http
        .post(format!("{}/authorize", s.idp.issuer()))
        .form(&[
            ("request", request.as_str()),
            ("name", "Grace"),
            ("groups", "admins"),
            ("action", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(redirect) && location.contains("state=state-1"),
        "{location}"
    );
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let g = s
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &code, redirect, &pkce, "nonce-1")
        .await
        .unwrap();
    assert_eq!(g.id_claims.as_ref().unwrap()["sub"], "grace");
    assert!(g.refresh_token.is_none(), "no offline_access, no refresh token");
    // The page cannot be submitted twice.
    let r = s
        .http
        .post(format!("{}/authorize", s.idp.issuer()))
        .form(&[("request", request.as_str()), ("name", "Grace"), ("action", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Declining sends access_denied back.
    let url = s
        .client
        .authorization_url(LOGIN, redirect, &scopes(&["openid"]), "state-2", "n", &pkce)
        .await
        .unwrap();
    let page = s.http.get(&url).send().await.unwrap().text().await.unwrap();
    let r = s
        .http
        .post(format!("{}/authorize", s.idp.issuer()))
        .form(&[
            ("request", input_value(&page, "request").as_str()),
            ("name", "x"),
            ("action", "deny"),
        ])
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.contains("error=access_denied") && location.contains("state=state-2"),
        "{location}"
    );
}
