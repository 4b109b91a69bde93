//! Sign-in flows and sessions against a scripted provider, in paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::provider::{Answer, LoginProvider};
use super::*;
use crate::caller::Caller;
use crate::config::{ClientAuth, LoginFlow, LoginSettings};
use crate::error::{ErrorKind, ProviderError};
use crate::token::Secret;
use crate::upstream::{DeviceAuthorization, DevicePoll, Pkce, SessionGrant};

fn grant(access: &str, refresh: Option<&str>, claims: Option<Value>) -> SessionGrant {
    SessionGrant {
        access_token: Secret::new(access.into()),
        expires_in: Some(Duration::from_secs(300)),
        scope: None,
        refresh_token: refresh.map(|r| Secret::new(r.into())),
        id_token: claims.as_ref().map(|_| Secret::new(format!("id-{access}"))),
        id_claims: claims.map(|c| match c {
            Value::Object(m) => m,
            _ => Map::new(),
        }),
    }
}

fn alice(groups: &[&str]) -> Value {
    json!({"sub": "alice", "email": "alice@example.com", "groups": groups})
}

#[derive(Default)]
struct Provider {
    polls: Mutex<VecDeque<Result<DevicePoll, ProviderError>>>,
    poll_times: Mutex<Vec<Instant>>,
    refreshes: Mutex<VecDeque<Result<SessionGrant, ProviderError>>>,
    refreshed_with: Mutex<Vec<String>>,
    refresh_calls: AtomicUsize,
    revoked: Mutex<Vec<String>>,
    challenge: Mutex<Option<String>>,
    redeemed: Mutex<Vec<(String, String, String, String)>>,
    no_device: Mutex<bool>,
}

impl LoginProvider for Provider {
    fn support(&self) -> Answer<'_, crate::upstream::LoginSupport> {
        let device = if *self.no_device.lock().unwrap() {
            Err(crate::upstream::FlowUnsupported::NoEndpoint(
                "device_authorization_endpoint",
            ))
        } else {
            Ok(())
        };
        Box::pin(async move {
            Ok(crate::upstream::LoginSupport {
                device,
                browser: Ok(()),
                refresh: true,
                revocation: true,
            })
        })
    }
    fn device_authorization<'a>(&'a self, _: &'a LoginSettings) -> Answer<'a, DeviceAuthorization> {
        Box::pin(async {
            Ok(DeviceAuthorization {
                device_code: Secret::new("device-code".into()),
                user_code: "ABCD-EFGH".into(),
                verification_uri: "https://idp.test/device".into(),
                verification_uri_complete: Some("https://idp.test/device?user_code=ABCD-EFGH".into()),
                interval: Duration::from_secs(5),
                expires_in: Duration::from_secs(600),
            })
        })
    }
    fn poll_device<'a>(&'a self, _: &'a LoginSettings, _: &'a Secret) -> Answer<'a, DevicePoll> {
        self.poll_times.lock().unwrap().push(Instant::now());
        let next = self
            .polls
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(DevicePoll::Pending));
        Box::pin(async move { next })
    }
    fn authorization_url<'a>(
        &'a self,
        _: &'a LoginSettings,
        redirect_uri: &'a str,
        state: &'a str,
        nonce: &'a str,
        pkce: &'a Pkce,
    ) -> Answer<'a, String> {
        *self.challenge.lock().unwrap() = Some(pkce.challenge.clone());
        Box::pin(async move {
            Ok(format!(
                "https://idp.test/authorize?redirect_uri={redirect_uri}&state={state}&nonce={nonce}&code_challenge={}",
                pkce.challenge
            ))
        })
    }
    fn redeem_code<'a>(
        &'a self,
        _: &'a LoginSettings,
        code: &'a str,
        redirect_uri: &'a str,
        pkce: &'a Pkce,
        nonce: &'a str,
    ) -> Answer<'a, SessionGrant> {
        self.redeemed
            .lock()
            .unwrap()
            .push((code.into(), redirect_uri.into(), pkce.challenge.clone(), nonce.into()));
        Box::pin(async { Ok(grant("at-1", Some("rt-1"), Some(alice(&["payments"])))) })
    }
    fn refresh<'a>(&'a self, _: &'a LoginSettings, refresh_token: &'a Secret, _: &'a str) -> Answer<'a, SessionGrant> {
        self.refresh_calls.fetch_add(1, Ordering::SeqCst);
        self.refreshed_with.lock().unwrap().push(refresh_token.expose().into());
        let next = self.refreshes.lock().unwrap().pop_front();
        Box::pin(async move {
            // An answer takes a moment: concurrent refreshes would overlap here.
            tokio::time::sleep(Duration::from_millis(50)).await;
            next.unwrap_or_else(|| Err(ProviderError::unreachable("no answer scripted")))
        })
    }
    fn revoke<'a>(&'a self, _: &'a LoginSettings, refresh_token: &'a Secret) -> Answer<'a, bool> {
        self.revoked.lock().unwrap().push(refresh_token.expose().into());
        Box::pin(async { Ok(true) })
    }
}

struct Host {
    login: Arc<LoginSettings>,
    provider: Arc<Provider>,
    events: Mutex<Vec<(String, Value)>>,
    ended: Mutex<Vec<String>>,
}

impl PeopleHost for Host {
    fn login(&self, name: &str) -> Option<(Arc<LoginSettings>, Arc<dyn LoginProvider>)> {
        (name == self.login.name).then(|| (self.login.clone(), self.provider.clone() as Arc<dyn LoginProvider>))
    }
    fn audit(&self, event: &str, fields: Value) {
        self.events.lock().unwrap().push((event.into(), fields));
    }
    fn session_ended(&self, id: &str) {
        self.ended.lock().unwrap().push(id.into());
    }
    fn refresh_at(&self) -> f64 {
        0.8
    }
}

impl Host {
    fn events(&self, name: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn setup() -> (Arc<People>, Arc<Host>) {
    let host = Arc::new(Host {
        login: Arc::new(LoginSettings {
            name: "corp".into(),
            provider: "corp".into(),
            client_id: "cortexid-login".into(),
            client_auth: ClientAuth::None,
            scopes: vec!["openid".into(), "offline_access".into()],
            flow: LoginFlow::Auto,
            max_session: Duration::from_secs(3600),
            uids: None,
            gids: None,
            persist: false,
        }),
        provider: Arc::default(),
        events: Mutex::default(),
        ended: Mutex::default(),
    });
    (People::new(host.clone(), CancellationToken::new()), host)
}

fn person(uid: u32) -> Caller {
    Caller::from_ids(uid, uid, None)
}

fn logins() -> Vec<String> {
    vec!["corp".into()]
}

/// Signs uid 1000 in through the device flow (granted at the first poll).
async fn signed_in(people: &Arc<People>, host: &Host) -> Arc<Session> {
    host.provider
        .polls
        .lock()
        .unwrap()
        .push_back(Ok(DevicePoll::Granted(Box::new(grant(
            "at-1",
            Some("rt-1"),
            Some(alice(&["payments"])),
        )))));
    let started = people
        .start(&person(1000), &logins(), LoginStart::default())
        .await
        .unwrap();
    let done = people
        .attempt_status(1000, &started.login_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.status, "complete", "{done:?}");
    people.session(1000, "corp").unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_device_flow_polls_at_the_interval_slows_down_when_told_and_opens_a_session() {
    let (people, host) = setup();
    host.provider.polls.lock().unwrap().extend([
        Ok(DevicePoll::Pending),
        Ok(DevicePoll::SlowDown),
        Ok(DevicePoll::Granted(Box::new(grant(
            "at-1",
            Some("rt-1"),
            Some(alice(&["payments"])),
        )))),
    ]);
    let t0 = Instant::now();
    let started = people
        .start(&person(1000), &logins(), LoginStart::default())
        .await
        .unwrap();
    assert_eq!(started.flow, "device");
    assert_eq!(started.user_code.as_deref(), Some("ABCD-EFGH"));
    assert_eq!(
        started.verification_uri_complete.as_deref(),
        Some("https://idp.test/device?user_code=ABCD-EFGH")
    );
    // Another uid cannot read (or learn of) this sign-in.
    let other = people
        .attempt_status(1001, &started.login_id, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(other.kind, ErrorKind::NotFound);
    let done = people
        .attempt_status(1000, &started.login_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.status, "complete");
    let session = done.session.unwrap();
    assert_eq!(
        (session.sub.as_str(), session.email.as_deref()),
        ("alice", Some("alice@example.com"))
    );
    let gaps: Vec<u64> = host
        .provider
        .poll_times
        .lock()
        .unwrap()
        .iter()
        .scan(t0, |prev, t| {
            let gap = (*t - *prev).as_secs();
            *prev = *t;
            Some(gap)
        })
        .collect();
    assert_eq!(gaps, vec![5, 5, 10], "interval 5 s, then 5 s more after slow_down");
    assert!(people.session(1000, "corp").is_some());
    assert!(
        people.session(1001, "corp").is_none(),
        "bound to the uid that signed in"
    );
    let completed = host.events("login.completed");
    assert_eq!(completed[0]["sub"], "alice");
    assert_eq!(completed[0]["flow"], "device");
    assert_eq!(host.events("login.started").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_denied_or_expired_device_sign_in_fails_and_is_audited() {
    let (people, host) = setup();
    host.provider.polls.lock().unwrap().push_back(Ok(DevicePoll::Denied));
    let a = people
        .start(&person(1000), &logins(), LoginStart::default())
        .await
        .unwrap();
    let v = people
        .attempt_status(1000, &a.login_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(v.status, "failed");
    assert!(v.error.unwrap().contains("access_denied"));
    host.provider.polls.lock().unwrap().push_back(Ok(DevicePoll::Expired));
    let a = people
        .start(&person(1000), &logins(), LoginStart::default())
        .await
        .unwrap();
    let v = people
        .attempt_status(1000, &a.login_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(v.status, "expired");
    assert_eq!(host.events("login.failed").len(), 2);
    assert!(people.session(1000, "corp").is_none());
}

#[tokio::test(start_paused = true)]
async fn root_does_not_sign_in_unless_named_and_sign_ins_per_uid_are_capped() {
    let (people, _host) = setup();
    let e = people
        .start(&person(0), &logins(), LoginStart::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AccessDenied);
    for _ in 0..4 {
        people
            .start(&person(1000), &logins(), LoginStart::default())
            .await
            .unwrap();
    }
    let e = people
        .start(&person(1000), &logins(), LoginStart::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SlowDown);
}

#[tokio::test(start_paused = true)]
async fn the_browser_callback_is_taken_once_from_its_uid_with_its_state_and_redeemed_with_the_verifier() {
    let (people, host) = setup();
    let ask = || LoginStart {
        login: None,
        flow: Some("browser".into()),
        redirect_port: Some(43111),
    };
    let started = people.start(&person(1000), &logins(), ask()).await.unwrap();
    let url = started.authorization_url.clone().unwrap();
    let state = url
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(started.redirect_uri.as_deref(), Some("http://127.0.0.1:43111/callback"));
    assert!(!serde_json::to_string(&started).unwrap().contains("verifier"));

    // Another uid relaying a code for this sign-in is refused, and the sign-in goes on.
    let e = people
        .callback(1001, &started.login_id, "stolen", &state)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(host.provider.redeemed.lock().unwrap().is_empty());

    let done = people
        .callback(1000, &started.login_id, "code-1", &state)
        .await
        .unwrap();
    assert_eq!(done.status, "complete");
    let (code, redirect, challenge, nonce) = host.provider.redeemed.lock().unwrap()[0].clone();
    assert_eq!(code, "code-1");
    assert_eq!(redirect, "http://127.0.0.1:43111/callback");
    assert_eq!(Some(challenge), host.provider.challenge.lock().unwrap().clone());
    assert!(url.contains(&format!("nonce={nonce}")));
    // Replayed: nothing left to redeem with.
    let e = people
        .callback(1000, &started.login_id, "code-1", &state)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert_eq!(host.provider.redeemed.lock().unwrap().len(), 1);

    // A tampered state is refused without redeeming, and the sign-in goes on: its own state
    // still completes it.
    let started = people.start(&person(1000), &logins(), ask()).await.unwrap();
    let e = people
        .callback(1000, &started.login_id, "code-2", "tampered")
        .await
        .unwrap_err();
    assert!(e.description.contains("state"), "{}", e.description);
    let v = people
        .attempt_status(1000, &started.login_id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(v.status, "pending");
    assert_eq!(host.provider.redeemed.lock().unwrap().len(), 1);
    let state = state_of(started.authorization_url.as_deref().unwrap());
    let done = people
        .callback(1000, &started.login_id, "code-3", &state)
        .await
        .unwrap();
    assert_eq!(done.status, "complete");
    assert_eq!(host.provider.redeemed.lock().unwrap().len(), 2);
}

fn state_of(url: &str) -> String {
    url.split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn one_refresh_at_a_time_keeps_the_rotated_token_and_replaces_the_claims() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    host.provider
        .refreshes
        .lock()
        .unwrap()
        .push_back(Ok(grant("at-2", Some("rt-2"), Some(alice(&["eng"])))));
    let seen = session.tokens().generation;
    let (a, b) = tokio::join!(people.refresh_now(&session, seen), people.refresh_now(&session, seen));
    assert!(matches!((a, b), (refresh::Refreshed::Done, refresh::Refreshed::Done)));
    assert_eq!(
        host.provider.refresh_calls.load(Ordering::SeqCst),
        1,
        "one refresh for both"
    );
    assert_eq!(session.claims()["groups"], json!(["eng"]));
    host.provider
        .refreshes
        .lock()
        .unwrap()
        .push_back(Ok(grant("at-3", None, None)));
    let seen = session.tokens().generation;
    people.refresh_now(&session, seen).await;
    assert_eq!(*host.provider.refreshed_with.lock().unwrap(), vec!["rt-1", "rt-2"]);
    assert_eq!(session.claims()["groups"], json!(["eng"]), "no ID token: claims kept");
    let refreshed = host.events("session.refreshed");
    assert_eq!(refreshed[0]["claims_changed"], true);
    assert_eq!(refreshed[0]["session"]["sub"], "alice");
    let audit = serde_json::to_string(&*host.events.lock().unwrap()).unwrap();
    for secret in ["rt-1", "rt-2", "at-1", "at-2", "id-at"] {
        assert!(!audit.contains(secret), "{secret} in the audit: {audit}");
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_ends_the_session_at_once_and_says_why() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    host.provider
        .refreshes
        .lock()
        .unwrap()
        .push_back(Err(ProviderError::rejected("invalid_grant", "revoked")));
    // The background refresher refreshes at 80 % of the access token's 300 s.
    tokio::time::sleep(Duration::from_secs(241)).await;
    assert!(session.is_ended());
    assert_eq!(*host.ended.lock().unwrap(), vec![session.id.clone()]);
    let e = people.require(1000, "corp").unwrap_err();
    assert_eq!(e.kind, ErrorKind::LoginRequired);
    assert!(
        e.description.contains("revoked") && e.description.contains("cortexid login corp"),
        "{}",
        e.description
    );
    assert_eq!(host.events("session.ended")[0]["reason"], "revoked");
    assert!(people.subject_token(&session.id, false).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn network_failures_are_retried_and_max_session_ends_the_session() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    // Every refresh fails to reach the provider: the session lives on, retrying.
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert!(!session.is_ended());
    assert!(
        host.provider.refresh_calls.load(Ordering::SeqCst) >= 2,
        "retried with backoff"
    );
    assert!(session.view().last_error.is_some());
    let token = people.subject_token(&session.id, false).await.unwrap();
    assert_eq!(token.0.expose(), "at-1", "the current token serves while it is valid");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(session.is_ended());
    assert_eq!(host.events("session.ended")[0]["reason"], "max_session");
    assert_eq!(
        *host.provider.revoked.lock().unwrap(),
        vec!["rt-1"],
        "revoked at the provider"
    );
}

#[tokio::test(start_paused = true)]
async fn logout_revokes_the_refresh_token_and_forgets_the_session() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    assert_eq!(people.logout(1001, "corp").await.unwrap_err().kind, ErrorKind::NotFound);
    let out = people.logout(1000, "corp").await.unwrap();
    assert_eq!(out["revoked_at_provider"], true);
    assert_eq!(*host.provider.revoked.lock().unwrap(), vec!["rt-1"]);
    assert!(people.session(1000, "corp").is_none());
    assert!(session.tokens().refresh_token.is_none(), "dropped (and zeroised)");
    assert_eq!(host.events("session.ended")[0]["reason"], "logout");
    assert!(!format!("{session:?}").contains("rt-1"));
}

#[tokio::test(start_paused = true)]
async fn a_flow_the_provider_does_not_offer_is_refused_or_auto_picks_the_other() {
    let (people, host) = setup();
    *host.provider.no_device.lock().unwrap() = true;
    let e = people
        .start(
            &person(1000),
            &logins(),
            LoginStart {
                flow: Some("device".into()),
                ..LoginStart::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(
        e.description.contains("device_authorization_endpoint") && e.description.contains("--browser"),
        "{}",
        e.description
    );
    // auto, with a loopback port: the browser flow, which the provider offers.
    let started = people
        .start(
            &person(1000),
            &logins(),
            LoginStart {
                redirect_port: Some(40000),
                ..LoginStart::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(started.flow, "browser");
}

#[tokio::test(start_paused = true)]
async fn a_derived_token_that_would_outlive_its_session_is_not_handed_out() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    let token = |secs| {
        crate::token::IssuedToken::new(
            Secret::new("derived".into()),
            String::new(),
            String::new(),
            Duration::from_secs(secs),
            None,
        )
    };
    // The session (max_session 1 h) has an hour left: a 5-minute token is fine.
    within_session(&session, &token(300)).unwrap();
    let e = within_session(&session, &token(7200)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LoginRequired);
    assert!(
        e.description.contains("never outlives its session"),
        "{}",
        e.description
    );
}

#[tokio::test(start_paused = true)]
async fn saved_sessions_come_back_with_their_tokens_and_claims_for_their_uid_only() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    let doc = people.saved_document(|_| true);
    let text = String::from_utf8_lossy(&doc).into_owned();
    assert!(
        text.contains("rt-1"),
        "the plaintext the store encrypts holds the refresh token"
    );
    assert!(
        people.saved_document(|_| false).len() < doc.len(),
        "only persisting logins are kept"
    );
    let (again, _) = setup();
    assert_eq!(again.restore(&doc, |_| true).unwrap(), 1);
    let back = again.session(1000, "corp").unwrap();
    assert_eq!((back.id.as_str(), back.sub.as_str()), (session.id.as_str(), "alice"));
    assert_eq!(back.claims()["groups"], json!(["payments"]));
    assert_eq!(back.tokens().refresh_token.as_ref().unwrap().expose(), "rt-1");
    assert!(again.session(1001, "corp").is_none());
    let (other, _) = setup();
    assert_eq!(
        other.restore(&doc, |_| false).unwrap(),
        0,
        "a login no longer persisting"
    );
    assert!(other.restore(b"{}", |_| true).is_err());
}

#[tokio::test(start_paused = true)]
async fn signing_in_again_replaces_the_session_and_revokes_the_old_one() {
    let (people, host) = setup();
    let first = signed_in(&people, &host).await;
    let second = signed_in(&people, &host).await;
    assert_ne!(first.id, second.id);
    assert!(first.is_ended() && !second.is_ended());
    assert_eq!(*host.provider.revoked.lock().unwrap(), vec!["rt-1"]);
    assert_eq!(host.events("session.ended")[0]["reason"], "replaced");
    assert_eq!(people.session(1000, "corp").unwrap().id, second.id);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_lands_after_logout_does_not_bring_the_session_back() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    host.provider
        .refreshes
        .lock()
        .unwrap()
        .push_back(Ok(grant("at-2", Some("rt-2"), Some(alice(&["payments"])))));
    let seen = session.tokens().generation;
    let (_, out) = tokio::join!(people.refresh_now(&session, seen), people.logout(1000, "corp"));
    out.unwrap();
    assert!(session.is_ended());
    assert!(
        session.tokens().refresh_token.is_none(),
        "the late refresh put tokens back"
    );
    assert!(people.session(1000, "corp").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_removes_the_login_ends_its_sessions() {
    let (people, host) = setup();
    let session = signed_in(&people, &host).await;
    people.end_removed(|l| l == "corp").await;
    assert!(!session.is_ended());
    people.end_removed(|_| false).await;
    assert!(session.is_ended());
    assert_eq!(host.events("session.ended")[0]["reason"], "login_removed");
}
