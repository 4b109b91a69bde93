//! The agent's side of people (`people/`): the [`PeopleHost`] sessions report to (the login's
//! settings and provider, the audit log, dropping the cached tokens of an ended session), and
//! what the socket API asks of sessions for a caller: sign-in, sessions, logout, whoami.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::caller::Caller;
use crate::config::LoginSettings;
use crate::error::ApiError;
use crate::people::{AttemptView, LoginProvider, LoginStart, People, PeopleHost, Session, StartView};
use crate::policy;

use super::{Agent, Shared};

/// What sessions see of the agent: weak links, so sessions never keep the agent alive.
struct Host {
    shared: Weak<Shared>,
    cache: Weak<Cache>,
    /// The encrypted store in `state_dir`, where sessions of `persist = true` logins are kept.
    store: Option<Arc<crate::state::StateStore>>,
    /// One write of the sessions' document at a time.
    writing: std::sync::Mutex<()>,
}

impl Host {
    /// Whether sessions of `login` are kept across restarts.
    fn persists(shared: &Shared, login: &str) -> bool {
        shared.state().config.login(login).is_some_and(|l| l.persist)
    }
}

impl PeopleHost for Host {
    fn login(&self, name: &str) -> Option<(Arc<LoginSettings>, Arc<dyn LoginProvider>)> {
        let state = self.shared.upgrade()?.state();
        let login = state.config.login(name)?.clone();
        let provider: Arc<dyn LoginProvider> = state.providers.get(&login.provider)?.clone();
        Some((login, provider))
    }

    fn audit(&self, event: &str, fields: serde_json::Value) {
        if let Some(shared) = self.shared.upgrade() {
            shared.audit_best_effort(event, fields);
        }
    }

    fn session_ended(&self, id: &str) {
        if let Some(cache) = self.cache.upgrade() {
            cache.retain(|spec| spec.subject.session() != Some(id));
        }
    }

    fn session_changed(&self, session: &Session) {
        let (Some(store), Some(shared)) = (&self.store, self.shared.upgrade()) else {
            return;
        };
        if !Host::persists(&shared, &session.login) {
            return;
        }
        let Some(people) = shared.people.get() else { return };
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let doc = people.saved_document(|login| Host::persists(&shared, login));
        if let Err(e) = store.save(crate::people::STATE_NAME, &doc) {
            tracing::error!(error = %e, "cannot save the sessions to state_dir; they will not survive a restart");
        }
    }

    fn refresh_at(&self) -> f64 {
        self.shared.upgrade().map_or(0.8, |s| s.state().config.agent.refresh_at)
    }
}

/// Makes the agent's sessions, links them into the exchanger, and brings back the sessions of
/// `persist = true` logins saved in `state_dir`.
pub(super) fn start(
    shared: &Arc<Shared>,
    cache: &Arc<Cache>,
    store: Option<Arc<crate::state::StateStore>>,
    cancel: CancellationToken,
) -> Arc<People> {
    let people = People::new(
        Arc::new(Host {
            shared: Arc::downgrade(shared),
            cache: Arc::downgrade(cache),
            store: store.clone(),
            writing: Default::default(),
        }),
        cancel,
    );
    let _ = shared.people.set(people.clone());
    let any_persist = shared.state().config.logins.iter().any(|l| l.persist);
    if let Some(store) = store.filter(|_| any_persist) {
        match store.load(crate::people::STATE_NAME) {
            Ok(Some(bytes)) => match people.restore(&bytes, |login| Host::persists(shared, login)) {
                Ok(n) => tracing::info!(sessions = n, "sessions restored from state_dir"),
                Err(e) => tracing::warn!(error = %e, "the saved sessions cannot be read; starting without them"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the saved sessions; starting without them"),
        }
    }
    people
}

impl Agent {
    /// People's sessions.
    pub fn people(&self) -> &Arc<People> {
        &self.people
    }

    /// The caller's live sessions, as policy matches them.
    pub(crate) fn sessions_for(&self, caller: &Caller) -> policy::Sessions {
        policy::Sessions::of(self.people.claims_of(caller.uid))
    }

    /// `POST /v1/login`.
    pub async fn login_start(&self, caller: &Caller, ask: LoginStart) -> Result<StartView, ApiError> {
        let names: Vec<String> = self.config().logins.iter().map(|l| l.name.clone()).collect();
        self.people.start(caller, &names, ask).await
    }

    /// `GET /v1/login/{id}?wait=SECONDS`.
    pub async fn login_status(&self, caller: &Caller, id: &str, wait: Duration) -> Result<AttemptView, ApiError> {
        self.people.attempt_status(caller.uid, id, wait).await
    }

    /// `POST /v1/login/{id}/callback`.
    pub async fn login_callback(
        &self,
        caller: &Caller,
        id: &str,
        code: &str,
        state: &str,
    ) -> Result<AttemptView, ApiError> {
        self.people.callback(caller.uid, id, code, state).await
    }

    /// `GET /v1/sessions`: the caller's own sessions (never another uid's, never a token).
    pub fn sessions(&self, caller: &Caller) -> serde_json::Value {
        let views: Vec<_> = self.people.sessions_of(caller.uid).iter().map(|s| s.view()).collect();
        serde_json::json!({ "sessions": views })
    }

    /// `DELETE /v1/sessions/{login}`.
    pub async fn logout(&self, caller: &Caller, login: &str) -> Result<serde_json::Value, ApiError> {
        self.people.logout(caller.uid, login).await
    }

    /// `GET /v1/whoami`: the caller as seen (as audit lines show it), its sessions and the roles
    /// that match it now.
    pub fn whoami(&self, caller: &Caller) -> serde_json::Value {
        let config = self.config();
        let sessions = self.sessions_for(caller);
        let roles: Vec<&str> = policy::matching_roles(&config, caller, None, &sessions)
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let views: Vec<_> = self
            .people
            .sessions_of(caller.uid)
            .iter()
            .map(|s: &Arc<Session>| s.view())
            .collect();
        serde_json::json!({ "caller": caller, "groups": caller.groups, "sessions": views, "roles": roles })
    }
}

impl Agent {
    /// A refusal of `authorize` that a session would have avoided becomes the person's answer:
    /// 401 `login_required` (no session: which login, why the last one ended, the command), or
    /// 403 naming the claim the session lacks (shown to the caller: they are its own claims).
    pub(super) fn person_refusal(
        &self,
        e: ApiError,
        config: &crate::config::Config,
        caller: &Caller,
        sessions: &policy::Sessions,
        identity: Option<&str>,
        about_own_session: &std::sync::atomic::AtomicBool,
    ) -> ApiError {
        if e.kind != crate::error::ErrorKind::AccessDenied {
            return e;
        }
        match policy::person_refusal(config, caller, sessions, identity) {
            Some(policy::SessionNeed::Login(login)) => match self.people.require(caller.uid, &login) {
                Err(required) => required,
                Ok(_) => e,
            },
            Some(policy::SessionNeed::Claims(why)) => {
                about_own_session.store(true, std::sync::atomic::Ordering::Relaxed);
                ApiError::access_denied(why)
            }
            None => e,
        }
    }

    /// The session a grant rests on: the one its identity takes the subject from
    /// (`subject = "login:NAME"`), else the one its role requires (`login`); 401
    /// `login_required` when the caller has none.
    pub(super) fn session_of(
        &self,
        caller: &Caller,
        role: &crate::config::Role,
        identity: &crate::config::IdentitySettings,
    ) -> Result<Option<Arc<Session>>, ApiError> {
        let login = match &identity.subject {
            crate::config::SubjectSource::Login(l) => Some(l),
            _ => role.login.as_ref(),
        };
        login.map(|l| self.people.require(caller.uid, l)).transpose()
    }

    /// The actor credential from another identity (`actor_identity`): a token of that identity,
    /// from the cache (exchanged on a miss), for its first audience.
    pub(super) async fn actor_from_identity(
        &self,
        config: &crate::config::Config,
        name: &str,
        token_type: &str,
    ) -> Result<crate::cache::Credential, ApiError> {
        use crate::cache::{Credential, Spec};
        let identity = config.identity(name).cloned().ok_or_else(|| {
            ApiError::new(
                crate::error::ErrorKind::Internal,
                format!("actor identity {name:?} is not configured"),
            )
        })?;
        let (subject, actor) = self.own_credentials(&identity)?;
        let spec = Spec {
            identity: identity.clone(),
            audience: identity.audiences.first().cloned().unwrap_or_default(),
            scopes: Default::default(),
            subject,
            actor,
        };
        let (token, _) = self.cache.get(spec, Duration::ZERO).await?;
        Ok(Credential::Presented(crate::upstream::PresentedToken {
            token: token.access_token.clone(),
            token_type: token_type.to_string(),
        }))
    }
}

impl Agent {
    /// At start: each `[[login]]`'s flow is one its provider's discovery offers; one that is
    /// not is logged with what to change. Needs the network, so it is not part of
    /// configuration checks; `cortexid doctor` reports the same.
    pub(super) async fn check_logins(&self) {
        let state = self.state();
        for login in &state.config.logins {
            let Some(provider) = state.providers.get(&login.provider) else {
                continue;
            };
            let support = match provider.login_metadata().await {
                Ok(m) => m.login_support(),
                Err(e) => {
                    tracing::warn!(login = %login.name, error = %e, "cannot read the provider's discovery for this login; sign-in is checked again when someone signs in");
                    continue;
                }
            };
            let problem = match login.flow {
                crate::config::LoginFlow::Device => support.device.err().map(|e| (e, "device")),
                crate::config::LoginFlow::Browser => support.browser.err().map(|e| (e, "browser")),
                crate::config::LoginFlow::Auto => match (support.device, support.browser) {
                    (Err(e), Err(_)) => Some((e, "device or browser")),
                    _ => None,
                },
            };
            if let Some((why, flow)) = problem {
                let message = format!(
                    "login {:?}: provider {:?} {why}; the {flow} flow cannot be used: set flow of the [[login]] to one it offers, or enable it at the provider",
                    login.name, login.provider
                );
                tracing::error!("{message}");
            }
        }
    }
}
