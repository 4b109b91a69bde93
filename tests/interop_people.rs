//! People sign in at a real OpenID Connect provider, `oidc-provider` (tests/interop/provider.mjs
//! with "people" set: device flow, revocation, refresh tokens and its development sign-in forms):
//! the provider client's device flow and browser flow (code + PKCE, `prompt=consent` so
//! `offline_access` survives), rotation of refresh tokens, groups that change at the provider,
//! and revocation. The sign-in pages are completed as a person's browser would: an HTTP client
//! with a cookie jar that submits each form it is shown (user code, login, consent).
//!
//! Needs tests/interop/setup.sh (npm ci) and node; under `CI=true` their absence is a failure.

mod common;

use std::collections::BTreeMap;

use common::oidc_people::{Browser, Ended, LOGIN, People, REDIRECT, node_missing};
use common::skip_or_fail;
use cortexid::config::ClientAuth;
use cortexid::error::ProviderErrorKind;
use cortexid::upstream::{DevicePoll, LoginFlow, Pkce, random_urlsafe};
use serde_json::json;

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn invalid_grant(e: &cortexid::error::ProviderError) -> bool {
    matches!(&e.kind, ProviderErrorKind::Rejected { error } if error == "invalid_grant")
}

#[tokio::test]
async fn device_flow_refresh_rotation_groups_and_revocation_at_oidc_provider() {
    if let Some(why) = node_missing() {
        skip_or_fail(
            "device_flow_refresh_rotation_groups_and_revocation_at_oidc_provider",
            &why,
        );
        return;
    }
    let p = People::start().await;
    let support = p.client.login_metadata().await.unwrap().login_support();
    assert_eq!(support.check(LoginFlow::Device), Ok(()));
    assert_eq!(support.check(LoginFlow::Browser), Ok(()));
    assert!(support.revocation && support.refresh);
    // The doctor's probe: the login client is accepted; an unregistered one is refused.
    p.client
        .probe_login_client(LOGIN, &ClientAuth::None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    let e = p
        .client
        .probe_login_client("not-registered", &ClientAuth::None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Rejected { error } if error == "invalid_client"),
        "{e}"
    );
    assert!(e.message.contains("register it at the provider"), "{e}");

    let auth = p
        .client
        .device_authorization(
            LOGIN,
            &ClientAuth::None,
            &scopes(&["openid", "email", "groups", "offline_access"]),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    assert!(auth.verification_uri.starts_with(&p.issuer));
    let poll = || p.client.poll_device(LOGIN, &ClientAuth::None, &auth.device_code);
    assert!(matches!(poll().await.unwrap(), DevicePoll::Pending));

    // The person opens verification_uri_complete: confirm the code, sign in, consent.
    let mut browser = Browser::new(&p, "alice");
    let end = browser
        .sign_in(auth.verification_uri_complete.as_deref().unwrap(), "http://never")
        .await;
    let Ended::Page(page) = end else {
        panic!("no redirect expected")
    };
    assert!(page.contains("Sign-in Success"), "{page}");

    let DevicePoll::Granted(grant) = poll().await.unwrap_or_else(|e| panic!("{e}\n{}", p.log())) else {
        panic!("signed in on the pages")
    };
    let claims = grant.id_claims.as_ref().unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], json!(["payments"]));
    let r1 = grant
        .refresh_token
        .clone()
        .expect("offline_access gives a refresh token");

    // Groups change at the provider; the refresh's ID token shows it. A public client's
    // refresh token rotates.
    p.set_groups("alice", &["ops"]);
    let second = p
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r1, &[], "alice")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    assert_eq!(second.id_claims.as_ref().unwrap()["groups"], json!(["ops"]));
    let r2 = second.refresh_token.clone().expect("rotated");
    assert_ne!(r1, r2);
    // A refresh's ID token naming someone else would be refused: the session is alice's.
    let e = p
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r2, &[], "bob")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Verification, "{e}");

    // That refresh rotated r2 away too; sign in again for the revocation.
    let auth = p
        .client
        .device_authorization(LOGIN, &ClientAuth::None, &scopes(&["openid", "offline_access"]))
        .await
        .unwrap();
    let mut browser = Browser::new(&p, "alice");
    browser
        .sign_in(auth.verification_uri_complete.as_deref().unwrap(), "http://never")
        .await;
    let DevicePoll::Granted(grant) = p
        .client
        .poll_device(LOGIN, &ClientAuth::None, &auth.device_code)
        .await
        .unwrap()
    else {
        panic!("signed in")
    };
    let refresh = grant.refresh_token.clone().unwrap();
    assert!(
        p.client
            .revoke_refresh_token(LOGIN, &ClientAuth::None, &refresh)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", p.log()))
    );
    let e = p
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &refresh, &[], "alice")
        .await
        .unwrap_err();
    assert!(invalid_grant(&e), "{e}");
    // The spent r1 too.
    let e = p
        .client
        .refresh_session(LOGIN, &ClientAuth::None, &r1, &[], "alice")
        .await
        .unwrap_err();
    assert!(invalid_grant(&e), "{e}");
}

/// The provider's authorization URL for the login client at [`REDIRECT`], asking for
/// `openid groups offline_access`.
async fn authorization_url(p: &People, state: &str, nonce: &str, pkce: &Pkce) -> String {
    p.client
        .authorization_url(
            LOGIN,
            REDIRECT,
            &scopes(&["openid", "groups", "offline_access"]),
            state,
            nonce,
            pkce,
        )
        .await
        .unwrap()
}

/// The query parameters of the URL the browser was sent back to.
fn query(back: &str) -> BTreeMap<String, String> {
    url::Url::parse(back).unwrap().query_pairs().into_owned().collect()
}

#[tokio::test]
async fn browser_flow_with_pkce_and_prompt_consent_gets_a_refresh_token_at_oidc_provider() {
    if let Some(why) = node_missing() {
        skip_or_fail(
            "browser_flow_with_pkce_and_prompt_consent_gets_a_refresh_token_at_oidc_provider",
            &why,
        );
        return;
    }
    let p = People::start().await;
    let pkce = Pkce::generate().unwrap();
    let (state, nonce) = (random_urlsafe(32).unwrap(), random_urlsafe(32).unwrap());
    let url = authorization_url(&p, &state, &nonce, &pkce).await;
    let mut browser = Browser::new(&p, "alice");
    let Ended::Redirect(back) = browser.sign_in(&url, REDIRECT).await else {
        panic!("the browser is sent back to the loopback redirect_uri\n{}", p.log())
    };
    let q = query(&back);
    assert_eq!(q.get("state"), Some(&state), "{back}");
    let code = q.get("code").unwrap_or_else(|| panic!("no code in {back}"));

    // Another verifier: refused by the provider.
    let e = p
        .client
        .redeem_code(
            LOGIN,
            &ClientAuth::None,
            code,
            REDIRECT,
            &Pkce::generate().unwrap(),
            &nonce,
        )
        .await
        .unwrap_err();
    assert!(invalid_grant(&e), "{e}");

    // A new sign-in (oidc-provider spends a code on a failed redemption), redeemed right.
    let url = authorization_url(&p, &state, &nonce, &pkce).await;
    let Ended::Redirect(back) = browser.sign_in(&url, REDIRECT).await else {
        panic!("redirected")
    };
    let q = query(&back);
    let grant = p
        .client
        .redeem_code(LOGIN, &ClientAuth::None, &q["code"], REDIRECT, &pkce, &nonce)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    let claims = grant.id_claims.as_ref().unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["nonce"].as_str()),
        (Some("alice"), Some(nonce.as_str()))
    );
    assert_eq!(claims["groups"], json!(["payments"]));
    assert!(
        grant.refresh_token.is_some(),
        "prompt=consent keeps offline_access, so a refresh token comes back"
    );
}
