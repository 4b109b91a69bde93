//! Sign-ins in progress. The device flow: the agent asks for a device code, hands the person the
//! URL and user code, and polls the token endpoint itself (honouring `interval`, `slow_down`,
//! `expired_token`, `access_denied`). The browser flow: the agent builds the authorization URL
//! with `state`, `nonce` and the PKCE challenge, keeps the verifier, and accepts the code the CLI
//! relays only from the uid that started the sign-in, with the `state` it issued, once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::caller::Caller;
use crate::config::{LoginFlow, LoginSettings};
use crate::error::{ApiError, ErrorKind};
use crate::token::Secret;
use crate::upstream::{DevicePoll, Pkce, SessionGrant};

use super::People;
use super::provider::LoginProvider;
use super::session::{Session, SessionView};

/// How long a browser sign-in may take.
const BROWSER_WINDOW: Duration = Duration::from_secs(600);
/// Sign-ins in progress one uid may have at once.
const PER_UID: usize = 4;
/// Sign-ins in progress in all.
const IN_ALL: usize = 256;
/// How long a finished sign-in's outcome stays readable.
const KEEP_FINISHED: Duration = Duration::from_secs(300);
/// The longest `wait` of `GET /v1/login/{id}`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// `POST /v1/login`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStart {
    /// The `[[login]]`; the only one when absent.
    pub login: Option<String>,
    /// `device`, `browser` or `auto` (the login's `flow` when absent).
    pub flow: Option<String>,
    /// The port the CLI listens on at 127.0.0.1 for the browser's redirect.
    pub redirect_port: Option<u16>,
}

/// The answer to `POST /v1/login`.
#[derive(Debug, Serialize)]
pub struct StartView {
    pub login_id: String,
    pub login: String,
    pub flow: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    pub expires_in: u64,
}

/// The state of a sign-in, as `GET /v1/login/{id}` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionView>,
}

#[derive(Debug, Clone)]
enum Status {
    Pending,
    Complete(Box<SessionView>),
    Failed(String),
    Expired,
}

impl Status {
    fn view(&self) -> AttemptView {
        let (status, error, session) = match self {
            Status::Pending => ("pending", None, None),
            Status::Complete(s) => ("complete", None, Some((**s).clone())),
            Status::Failed(e) => ("failed", Some(e.clone()), None),
            Status::Expired => (
                "expired",
                Some("the sign-in was not completed in time; start again".into()),
                None,
            ),
        };
        AttemptView { status, error, session }
    }
}

/// What the browser flow keeps until the code comes back: taken once.
struct BrowserSecrets {
    state: String,
    nonce: String,
    /// The verifier inside never leaves the agent.
    pkce: Pkce,
    redirect_uri: String,
}

/// One sign-in in progress.
pub(super) struct Attempt {
    id: String,
    uid: u32,
    login: String,
    flow: &'static str,
    expires_at: Instant,
    status: watch::Sender<Status>,
    browser: std::sync::Mutex<Option<BrowserSecrets>>,
    cancel: CancellationToken,
    finished_at: std::sync::Mutex<Option<Instant>>,
}

impl Attempt {
    fn finish(&self, status: Status) {
        *self.finished_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.status.send_replace(status);
        self.cancel.cancel();
    }
    fn pending(&self) -> bool {
        matches!(*self.status.borrow(), Status::Pending)
    }
}

/// The place of a sign-in being started ([`People::reserve`]): a placeholder under its id,
/// removed when this is dropped unless the sign-in was registered there meanwhile.
struct Reserved<'a> {
    people: &'a People,
    id: String,
    placeholder: Arc<Attempt>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut attempts = self.people.attempts();
        if attempts
            .get(&self.id)
            .is_some_and(|a| Arc::ptr_eq(a, &self.placeholder))
        {
            attempts.remove(&self.id);
        }
    }
}

/// A random value for `state`, `nonce` and sign-in ids: 256 bits from the system's generator.
fn unguessable() -> Result<String, ApiError> {
    crate::upstream::random_urlsafe(32).map_err(|e| e.to_api())
}

/// Whether two strings are equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl People {
    fn attempts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<Attempt>>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `[[login]]` a request names, or the only one.
    fn pick_login(&self, names: &[String], named: Option<&str>) -> Result<String, ApiError> {
        match (named, names) {
            (Some(n), _) if names.iter().any(|l| l == n) => Ok(n.to_string()),
            (Some(n), _) => Err(ApiError::invalid_request(format!(
                "no [[login]] named {:?} on this agent; configured: {}",
                crate::output::audit::clip(n, 64),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))),
            (None, [one]) => Ok(one.clone()),
            (None, []) => Err(ApiError::invalid_request(
                "this agent has no [[login]]; people cannot sign in here",
            )),
            (None, many) => Err(ApiError::invalid_request(format!(
                "this agent has several logins; name one (cortexid login NAME): {}",
                many.join(", ")
            ))),
        }
    }

    /// Starts a sign-in for `caller` (`POST /v1/login`); `logins` are the configured names.
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        logins: &[String],
        ask: LoginStart,
    ) -> Result<StartView, ApiError> {
        let name = self.pick_login(logins, ask.login.as_deref())?;
        let (login, provider) = self
            .host
            .login(&name)
            .ok_or_else(|| ApiError::invalid_request(format!("login {name:?} is not configured")))?;
        if !login.may_sign_in(caller.uid, |g| caller.in_group(g)) {
            return Err(ApiError::access_denied(format!(
                "the caller ({}) may not sign in at login {name:?}{}",
                caller.describe(),
                if login.uids.is_none() && login.gids.is_none() {
                    " (root never signs in unless the login's users name it)"
                } else {
                    " (not in its users or groups)"
                }
            )));
        }
        let flow = match ask.flow.as_deref() {
            None | Some("auto") => login.flow,
            Some("device") => LoginFlow::Device,
            Some("browser") => LoginFlow::Browser,
            Some(other) => {
                return Err(ApiError::invalid_request(format!(
                    "flow {other:?} is not \"device\", \"browser\" or \"auto\""
                )));
            }
        };
        let support = provider.support().await.map_err(|e| e.to_api())?;
        let flow = match (flow, ask.redirect_port) {
            (LoginFlow::Auto, Some(_)) if support.browser.is_ok() || support.device.is_err() => LoginFlow::Browser,
            (LoginFlow::Auto, _) => LoginFlow::Device,
            (f, _) => f,
        };
        let offered = match flow {
            LoginFlow::Browser => support.browser.as_ref().map_err(|e| (e, "--device")),
            _ => support.device.as_ref().map_err(|e| (e, "--browser")),
        };
        if let Err((why, other)) = offered {
            return Err(ApiError::invalid_request(format!(
                "login {name:?}: provider {:?} {why}, so the {} flow cannot be used here; try `cortexid login {other}`",
                login.provider,
                flow.as_str()
            )));
        }
        self.sweep_attempts();
        let id = unguessable()?;
        // The place is taken now, before the provider is asked (which takes a while): sign-ins
        // started side by side cannot all pass the check before any is counted.
        let _place = self.reserve(caller, &id, &name, flow)?;
        let started = match flow {
            LoginFlow::Browser => {
                let port = ask.redirect_port.ok_or_else(|| {
                    ApiError::invalid_request(
                        "the browser flow needs redirect_port: the port the CLI listens on at 127.0.0.1",
                    )
                })?;
                if port == 0 {
                    return Err(ApiError::invalid_request("redirect_port must be a port number, not 0"));
                }
                self.start_browser(caller, id, &login, provider.as_ref(), port).await
            }
            _ => self.start_device(caller, id, &login, provider).await,
        };
        match &started {
            Ok(view) => self.host.audit(
                "login.started",
                serde_json::json!({"caller": caller, "login": name, "flow": view.flow, "login_id": view.login_id}),
            ),
            Err(e) => self.host.audit(
                "login.failed",
                serde_json::json!({"caller": caller, "login": name, "flow": flow.as_str(), "error": e.description}),
            ),
        }
        started
    }

    fn register(&self, attempt: Arc<Attempt>) {
        self.attempts().insert(attempt.id.clone(), attempt);
    }

    fn new_attempt(caller: &Caller, id: String, login: &str, flow: &'static str, window: Duration) -> Attempt {
        Attempt {
            id,
            uid: caller.uid,
            login: login.to_string(),
            flow,
            expires_at: Instant::now() + window,
            status: watch::Sender::new(Status::Pending),
            browser: std::sync::Mutex::new(None),
            cancel: CancellationToken::new(),
            finished_at: std::sync::Mutex::new(None),
        }
    }

    async fn start_device(
        self: &Arc<Self>,
        caller: &Caller,
        id: String,
        login: &Arc<LoginSettings>,
        provider: Arc<dyn LoginProvider>,
    ) -> Result<StartView, ApiError> {
        let auth = provider.device_authorization(login).await.map_err(|e| e.to_api())?;
        let attempt = Arc::new(Self::new_attempt(
            caller,
            id.clone(),
            &login.name,
            "device",
            auth.expires_in,
        ));
        self.register(attempt.clone());
        let view = StartView {
            login_id: id,
            login: login.name.clone(),
            flow: "device",
            verification_uri: Some(auth.verification_uri.clone()),
            verification_uri_complete: auth.verification_uri_complete.clone(),
            user_code: Some(auth.user_code.clone()),
            authorization_url: None,
            redirect_uri: None,
            interval: Some(auth.interval.as_secs().max(1)),
            expires_in: auth.expires_in.as_secs(),
        };
        tokio::spawn(
            self.clone()
                .poll_device(attempt, provider, auth.device_code, auth.interval),
        );
        Ok(view)
    }

    /// Polls the token endpoint for a device sign-in until it is granted, denied or expired.
    async fn poll_device(
        self: Arc<Self>,
        attempt: Arc<Attempt>,
        provider: Arc<dyn LoginProvider>,
        device_code: Secret,
        interval: Duration,
    ) {
        let mut interval = interval.max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = attempt.cancel.cancelled() => return,
                _ = self.cancel.cancelled() => return,
            }
            if Instant::now() >= attempt.expires_at {
                self.failed(&attempt, Status::Expired);
                return;
            }
            let Some((login, _)) = self.host.login(&attempt.login) else {
                self.failed(
                    &attempt,
                    Status::Failed(format!("login {:?} is no longer configured", attempt.login)),
                );
                return;
            };
            match provider.poll_device(&login, &device_code).await {
                Ok(DevicePoll::Pending) => {}
                // RFC 8628 section 3.5: slow_down adds five seconds to every later poll.
                Ok(DevicePoll::SlowDown) => interval += Duration::from_secs(5),
                Ok(DevicePoll::Granted(grant)) => {
                    self.complete(&attempt, &login, *grant).await;
                    return;
                }
                Ok(DevicePoll::Denied) => {
                    self.failed(
                        &attempt,
                        Status::Failed("the sign-in was denied at the provider (access_denied)".into()),
                    );
                    return;
                }
                Ok(DevicePoll::Expired) => {
                    self.failed(&attempt, Status::Expired);
                    return;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(login = %attempt.login, error = %e, "device sign-in poll failed; polling on");
                }
                Err(e) => {
                    self.failed(&attempt, Status::Failed(e.message));
                    return;
                }
            }
        }
    }

    async fn start_browser(
        &self,
        caller: &Caller,
        id: String,
        login: &Arc<LoginSettings>,
        provider: &dyn LoginProvider,
        port: u16,
    ) -> Result<StartView, ApiError> {
        let state = unguessable()?;
        let nonce = unguessable()?;
        let pkce = Pkce::generate().map_err(|e| e.to_api())?;
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let url = provider
            .authorization_url(login, &redirect_uri, &state, &nonce, &pkce)
            .await
            .map_err(|e| e.to_api())?;
        let attempt = Self::new_attempt(caller, id.clone(), &login.name, "browser", BROWSER_WINDOW);
        *attempt.browser.lock().unwrap_or_else(|p| p.into_inner()) = Some(BrowserSecrets {
            state,
            nonce,
            pkce,
            redirect_uri: redirect_uri.clone(),
        });
        self.register(Arc::new(attempt));
        Ok(StartView {
            login_id: id,
            login: login.name.clone(),
            flow: "browser",
            verification_uri: None,
            verification_uri_complete: None,
            user_code: None,
            authorization_url: Some(url),
            redirect_uri: Some(redirect_uri),
            interval: None,
            expires_in: BROWSER_WINDOW.as_secs(),
        })
    }

    /// The sign-in `id` of `uid`: another uid's is as good as absent.
    fn attempt_of(&self, uid: u32, id: &str) -> Result<Arc<Attempt>, ApiError> {
        let attempt = self.attempts().get(id).cloned();
        match attempt {
            Some(a) if a.uid == uid => Ok(a),
            Some(a) => {
                tracing::warn!(
                    uid,
                    owner = a.uid,
                    "a sign-in was asked about by a uid that did not start it"
                );
                self.host.audit(
                    "login.failed",
                    serde_json::json!({"uid": uid, "login": a.login, "login_id": a.id,
                        "error": "another uid tried to read or complete this sign-in; refused"}),
                );
                Err(no_such_attempt(id))
            }
            None => Err(no_such_attempt(id)),
        }
    }

    /// `POST /v1/login/{id}/callback`: the code and state the browser brought back to the CLI.
    pub async fn callback(
        self: &Arc<Self>,
        uid: u32,
        id: &str,
        code: &str,
        state: &str,
    ) -> Result<AttemptView, ApiError> {
        let attempt = self.attempt_of(uid, id)?;
        if Instant::now() >= attempt.expires_at && attempt.pending() {
            self.failed(&attempt, Status::Expired);
        }
        // The state is compared before anything is taken: a callback with another state (a
        // forged redirect) is refused and the sign-in goes on, waiting for its own.
        // Taken once: a second callback, a replay, finds nothing to redeem with.
        let secrets = {
            let mut held = attempt.browser.lock().unwrap_or_else(|p| p.into_inner());
            match held.as_ref() {
                None => None,
                Some(s) if !same(&s.state, state) => {
                    drop(held);
                    let e = "the state returned by the browser is not the one this sign-in sent; the callback is refused (the sign-in goes on waiting for its own)";
                    self.host.audit(
                        "login.failed",
                        serde_json::json!({"uid": uid, "login": attempt.login, "login_id": attempt.id,
                            "error": "a callback with the wrong state was refused; the sign-in goes on"}),
                    );
                    return Err(ApiError::invalid_request(e));
                }
                Some(_) => held.take(),
            }
        };
        let Some(secrets) = secrets else {
            return Err(ApiError::invalid_request(
                "this sign-in is not waiting for a browser callback (a device sign-in, or already completed, failed or expired); start again with `cortexid login`",
            ));
        };
        let Some((login, provider)) = self.host.login(&attempt.login) else {
            let e = format!("login {:?} is no longer configured", attempt.login);
            self.failed(&attempt, Status::Failed(e.clone()));
            return Err(ApiError::invalid_request(e));
        };
        match provider
            .redeem_code(&login, code, &secrets.redirect_uri, &secrets.pkce, &secrets.nonce)
            .await
        {
            Ok(grant) => self.complete(&attempt, &login, grant).await,
            Err(e) => self.failed(&attempt, Status::Failed(e.message.clone())),
        }
        Ok(attempt.status.borrow().view())
    }

    /// `GET /v1/login/{id}?wait=SECONDS`: the sign-in's state, waiting up to `wait` (at most
    /// [`MAX_WAIT`]) while it is pending.
    pub async fn attempt_status(&self, uid: u32, id: &str, wait: Duration) -> Result<AttemptView, ApiError> {
        let attempt = self.attempt_of(uid, id)?;
        let mut rx = attempt.status.subscribe();
        let wait = wait.min(MAX_WAIT);
        let deadline = Instant::now() + wait;
        loop {
            if !matches!(*rx.borrow_and_update(), Status::Pending) {
                break;
            }
            if Instant::now() >= attempt.expires_at {
                self.failed(&attempt, Status::Expired);
                break;
            }
            let until = deadline.min(attempt.expires_at);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(until) => if Instant::now() >= deadline { break },
            }
        }
        Ok(attempt.status.borrow().view())
    }

    /// A granted sign-in becomes the uid's session at the login.
    async fn complete(self: &Arc<Self>, attempt: &Attempt, login: &LoginSettings, grant: SessionGrant) {
        let opened = Session::open(
            super::random_id(),
            attempt.uid,
            &login.name,
            attempt.flow,
            login.max_session,
            grant,
        );
        match opened {
            Ok(session) => {
                let session = self.install(session).await;
                self.host.audit(
                    "login.completed",
                    serde_json::json!({"uid": attempt.uid, "login": login.name, "sub": session.sub,
                        "email": session.email, "flow": attempt.flow, "login_id": attempt.id,
                        "expires_at": super::session::rfc3339(session.ends_at_system)}),
                );
                tracing::info!(login = %login.name, uid = attempt.uid, sub = %session.sub, flow = attempt.flow, "signed in");
                attempt.finish(Status::Complete(Box::new(session.view())));
            }
            Err(e) => self.failed(attempt, Status::Failed(e.to_string())),
        }
    }

    fn failed(&self, attempt: &Attempt, status: Status) {
        if !attempt.pending() {
            return;
        }
        let view = status.view();
        self.host.audit(
            "login.failed",
            serde_json::json!({"uid": attempt.uid, "login": attempt.login, "flow": attempt.flow,
                "login_id": attempt.id, "status": view.status, "error": view.error}),
        );
        attempt.browser.lock().unwrap_or_else(|p| p.into_inner()).take();
        attempt.finish(status);
    }

    /// Makes room for a sign-in of `caller` and holds its place under `id` until the sign-in is
    /// registered there (or the returned guard is dropped, when it failed).
    fn reserve<'a>(
        &'a self,
        caller: &Caller,
        id: &str,
        login: &str,
        flow: LoginFlow,
    ) -> Result<Reserved<'a>, ApiError> {
        let mut attempts = self.attempts();
        Self::make_room(&mut attempts, caller.uid)?;
        let placeholder = Arc::new(Self::new_attempt(
            caller,
            id.to_string(),
            login,
            flow.as_str(),
            BROWSER_WINDOW,
        ));
        attempts.insert(id.to_string(), placeholder.clone());
        Ok(Reserved {
            people: self,
            id: id.to_string(),
            placeholder,
        })
    }

    /// Makes room in the table for one more sign-in of `uid`: a uid keeps at most [`PER_UID`]
    /// sign-ins, pending or finished, and the host [`IN_ALL`]; finished ones (the oldest first)
    /// make way for new ones, so only sign-ins in progress can fill either limit.
    fn make_room(attempts: &mut std::collections::HashMap<String, Arc<Attempt>>, uid: u32) -> Result<(), ApiError> {
        let finished_at = |a: &Attempt| *a.finished_at.lock().unwrap_or_else(|p| p.into_inner());
        let evict_oldest_finished = |attempts: &mut std::collections::HashMap<String, Arc<Attempt>>,
                                     only_uid: Option<u32>| {
            let oldest = attempts
                .values()
                .filter(|a| only_uid.is_none_or(|u| a.uid == u))
                .filter_map(|a| finished_at(a).map(|f| (f, a.id.clone())))
                .min();
            oldest.is_some_and(|(_, id)| attempts.remove(&id).is_some())
        };
        while attempts.values().filter(|a| a.uid == uid).count() >= PER_UID {
            if !evict_oldest_finished(attempts, Some(uid)) {
                return Err(ApiError::new(
                    ErrorKind::SlowDown,
                    format!(
                        "uid {uid} has {PER_UID} sign-ins in progress already; finish one or let it expire (a browser sign-in expires after {} minutes)",
                        BROWSER_WINDOW.as_secs() / 60
                    ),
                )
                .with_retry_after(30));
            }
        }
        while attempts.len() >= IN_ALL {
            if !evict_oldest_finished(attempts, None) {
                return Err(ApiError::new(
                    ErrorKind::SlowDown,
                    format!(
                        "{IN_ALL} sign-ins are in progress on this host already; try again when some have finished"
                    ),
                )
                .with_retry_after(30));
            }
        }
        Ok(())
    }

    /// Forgets sign-ins that finished a while ago or expired.
    fn sweep_attempts(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.attempts().retain(|_, a| {
            if a.pending() && now >= a.expires_at {
                expired.push(a.clone());
            }
            let finished = *a.finished_at.lock().unwrap_or_else(|p| p.into_inner());
            finished.is_none_or(|f| now < f + KEEP_FINISHED) && now < a.expires_at + KEEP_FINISHED
        });
        for a in expired {
            self.failed(&a, Status::Expired);
        }
    }
}

fn no_such_attempt(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "no sign-in {:?} of yours is in progress; start one with `cortexid login`",
            crate::output::audit::clip(id, 64)
        ),
    )
}
