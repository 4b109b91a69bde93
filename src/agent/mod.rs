//! The agent: one validated configuration at a time, the provider clients, the cache and the
//! audit log. The request path that ties them together is in [`request`]
//! (caller → policy → cache → provider → cache → audit → answer); the cache's link to the
//! providers in [`exchanger`]; what health, metrics and `/v1/identities` show in [`status`]; the
//! tokens of `[[sink]]` files in [`sinks`].

mod again;
mod exchanger;
mod people;
mod persisted;
mod request;
mod sinks;
mod status;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, RefreshSettings};
use crate::config::Config;
use crate::output::audit::Audit;
use crate::output::sink::SinkBoard;
use crate::upstream::{ProviderSetupError, Providers};

use crate::secrets::CredentialFiles;

pub use again::TokenMemo;
pub use request::Granted;
pub use request::TokenAsk;

/// One configuration and the provider clients made for it.
pub struct State {
    pub config: Arc<Config>,
    pub providers: Providers,
    /// Which configuration this is: every applied reload makes a new one (see
    /// [`Shared::generation`]).
    pub(crate) generation: u64,
    /// What the roles of this configuration need read of a caller (worked out once, not at
    /// every connection).
    pub(crate) needs: crate::caller::Needs,
}

/// What the agent shares with its cache's exchanger.
struct Shared {
    state: RwLock<Arc<State>>,
    /// The generation of the newest configuration, moved on at the start of every reload that
    /// applies: a grant remembered under an older one is decided again (`again.rs`).
    generation: AtomicU64,
    audit: RwLock<Arc<Audit>>,
    metrics: crate::output::metrics::Metrics,
    /// People's sessions (set once, right after the agent is made).
    people: std::sync::OnceLock<Arc<crate::people::People>>,
}

impl Shared {
    fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    fn audit(&self) -> Arc<Audit> {
        self.audit.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Writes an event whose loss does not change what a caller receives.
    fn audit_best_effort(&self, event: &str, fields: serde_json::Value) {
        if let Err(e) = self.audit().write(event, fields) {
            tracing::error!(event, error = %e, "cannot write the audit log");
        }
    }
}

pub struct Agent {
    shared: Arc<Shared>,
    cache: Arc<Cache>,
    people: Arc<crate::people::People>,
    creds: CredentialFiles,
    presented: crate::policy::trust::PresentedVerifier,
    limiter: crate::policy::ratelimit::RateLimiter,
    sinks: Arc<SinkBoard>,
    denials: crate::output::denials::Denials,
    ready: std::sync::atomic::AtomicBool,
    /// Connections the socket's accept loop has taken: the watchdog's sign of life when the
    /// socket's queue is too full for its own probe.
    accepted: std::sync::atomic::AtomicU64,
    /// The node's kubelet, when `[kubernetes]` is configured: which pod a caller runs in.
    kubelet: RwLock<Option<Arc<crate::caller::Kubelet>>>,
    /// The encrypted store in `state_dir`, opened at start (a reload does not move it).
    state_store: Option<Arc<crate::state::StateStore>>,
}

impl Agent {
    /// An agent for a validated configuration; `state_store` is the store opened in
    /// `[agent] state_dir`, if any.
    pub fn new(
        config: Config,
        state_store: Option<Arc<crate::state::StateStore>>,
        cancel: CancellationToken,
    ) -> Result<Arc<Agent>, ProviderSetupError> {
        let providers = exchanger::providers_for(&config, None)?;
        let audit = Arc::new(Audit::open(&config.agent.audit_log));
        let settings = RefreshSettings::from(&config.agent);
        let shared = Arc::new(Shared {
            metrics: Default::default(),
            state: RwLock::new(Arc::new(State {
                needs: crate::caller::Needs::of(&config.roles),
                config: Arc::new(config),
                providers,
                generation: 0,
            })),
            generation: AtomicU64::new(0),
            audit: RwLock::new(audit),
            people: Default::default(),
        });
        let presented = crate::policy::trust::PresentedVerifier::new(shared.state().config.agent.upstream_timeout);
        let kubelet = RwLock::new(kubelet_for(&shared.state().config, None));
        let cache = Cache::new(
            settings,
            Arc::new(exchanger::AgentExchanger { shared: shared.clone() }),
            cancel.clone(),
        );
        let people = people::start(&shared, &cache, state_store.clone(), cancel);
        configure_limits(&cache, &shared.state().config);
        Ok(Arc::new(Agent {
            shared,
            cache,
            people,
            creds: CredentialFiles::default(),
            presented,
            limiter: Default::default(),
            sinks: Default::default(),
            denials: Default::default(),
            ready: Default::default(),
            accepted: Default::default(),
            kubelet,
            state_store,
        }))
    }

    pub fn state(&self) -> Arc<State> {
        self.shared.state()
    }

    pub fn config(&self) -> Arc<Config> {
        self.shared.state().config.clone()
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The encrypted store in `state_dir`, when one is configured.
    pub fn state_store(&self) -> Option<&Arc<crate::state::StateStore>> {
        self.state_store.as_ref()
    }

    pub(crate) fn audit_best_effort(&self, event: &str, fields: serde_json::Value) {
        self.shared.audit_best_effort(event, fields)
    }

    /// Audits a refused request (`token.denied`): caller-supplied text is clipped, and identical
    /// denials of one uid are written once per window with their count (`output/denials.rs`).
    /// Returns the `reference` the denial is recorded under (for an answer that names it).
    pub(crate) fn audit_denial(&self, caller: &crate::caller::Caller, mut fields: serde_json::Value) -> Option<String> {
        use crate::output::audit::clip;
        use crate::output::denials::Verdict;
        for (key, max) in [
            ("identity", 256),
            ("audience", 2048),
            ("scope", 4096),
            ("error_description", 1024),
        ] {
            if let Some(serde_json::Value::String(s)) = fields.get(key)
                && s.len() > max
            {
                fields[key] = clip(s, max).into_owned().into();
            }
        }
        let verdict = self.denials.admit(caller.uid, &mut fields);
        let reference = fields.get("reference").and_then(|r| r.as_str()).map(str::to_string);
        if let Verdict::Write { repeated } = verdict {
            if repeated > 0 {
                fields["repeated"] = repeated.into();
            }
            self.shared.audit_best_effort("token.denied", fields);
        }
        reference
    }

    /// Writes the denials left out whose window has passed (called periodically), or all of
    /// them (`all`, at shutdown).
    pub(crate) fn flush_denials(&self, all: bool) {
        let due = if all {
            self.denials.flush_all()
        } else {
            self.denials.flush()
        };
        for fields in due {
            self.shared.audit_best_effort("token.denied", fields);
        }
    }

    /// The caller with its pod looked up at the kubelet, when it runs in a pod and `[kubernetes]`
    /// is configured; otherwise the caller as attested.
    pub async fn with_pod(&self, caller: &Arc<crate::caller::Caller>) -> Arc<crate::caller::Caller> {
        let kubelet = self.kubelet.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(kubelet) = kubelet else {
            return caller.clone();
        };
        let Some(pod) = &caller.pod else {
            // A process that exited before its cgroup was read may have been in any pod: it
            // must not pass for a host process (the roles of host users).
            if caller.unreadable.is_some() {
                let mut unknown = (**caller).clone();
                unknown.pod_unknown = true;
                return Arc::new(unknown);
            }
            return caller.clone();
        };
        let mut resolved = (**caller).clone();
        resolved.pod = Some(kubelet.resolve(pod).await);
        Arc::new(resolved)
    }

    /// Counts a connection the accept loop took.
    pub(crate) fn note_accept(&self) {
        self.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections the accept loop has taken so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks start-up as done (health leaves `starting`).
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Looks up every provider's discovery document once, so health shows reachability early.
    pub(crate) async fn warm_up(&self) {
        let state = self.state();
        let mut tasks = Vec::new();
        for p in state.providers.values() {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = p.metadata().await {
                    tracing::warn!(provider = p.name(), error = %e, "provider not reachable at start; will retry on demand");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        self.check_logins().await;
    }

    /// Replaces the configuration. The caller has validated it; keys whose identity changed are
    /// dropped from the cache, provider clients whose settings are unchanged are kept.
    pub(crate) fn apply(&self, config: Config) -> Result<(), ProviderSetupError> {
        let old = self.state();
        let providers = exchanger::providers_for(&config, Some(&old.providers))?;
        // Before anything changes: from here on no grant of an older configuration is handed
        // out again.
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let config = Arc::new(config);
        if old.config.agent.state_dir != config.agent.state_dir
            || old.config.agent.state_key_file != config.agent.state_key_file
        {
            tracing::warn!("agent.state_dir or agent.state_key_file changed; it takes effect at the next restart");
        }
        if old.config.agent.socket != config.agent.socket {
            tracing::warn!("agent.socket changed; the new path takes effect at the next restart");
        }
        {
            let cfg = config.clone();
            let provs = providers.clone();
            self.cache.retain(move |spec| {
                cfg.identity(&spec.identity.name)
                    .is_some_and(|id| **id == *spec.identity)
                    && provs
                        .get(&spec.identity.provider)
                        .zip(old.providers.get(&spec.identity.provider))
                        .is_some_and(|(a, b)| Arc::ptr_eq(a, b))
            });
        }
        {
            // Sessions of a [[login]] the new configuration no longer has end.
            let logins: Vec<String> = config.logins.iter().map(|l| l.name.clone()).collect();
            let people = self.people.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { people.end_removed(|l| logins.iter().any(|n| n == l)).await });
            }
        }
        self.cache.set_settings(RefreshSettings::from(&config.agent));
        {
            let mut kubelet = self.kubelet.write().unwrap_or_else(|p| p.into_inner());
            *kubelet = kubelet_for(&config, kubelet.as_ref());
        }
        configure_limits(&self.cache, &config);
        let audit_changed = *self.shared.audit().target() != config.agent.audit_log;
        if audit_changed {
            *self.shared.audit.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Audit::open(&config.agent.audit_log));
        }
        *self.shared.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(State {
            needs: crate::caller::Needs::of(&config.roles),
            config,
            providers,
            generation,
        });
        Ok(())
    }

    /// The sinks' state, which the sink tasks publish and health reads.
    pub(crate) fn sink_board(&self) -> &Arc<SinkBoard> {
        &self.sinks
    }

    /// Reopens the audit file (SIGHUP, after log rotation).
    pub(crate) fn reopen_audit(&self) {
        if let Err(e) = self.shared.audit().reopen() {
            tracing::error!(error = %e, "cannot reopen the audit log");
        }
    }
}

/// The kubelet client for `config`: `current` when its settings are unchanged (keeping its pod
/// list), a new one when they changed, none without `[kubernetes]`.
fn kubelet_for(config: &Config, current: Option<&Arc<crate::caller::Kubelet>>) -> Option<Arc<crate::caller::Kubelet>> {
    let settings = config.kubernetes.as_ref()?;
    match current {
        Some(k) if k.settings() == settings => Some(k.clone()),
        _ => Some(Arc::new(crate::caller::Kubelet::new(
            settings.clone(),
            config.agent.upstream_timeout,
        ))),
    }
}

/// Gives each provider's limiter its `max_concurrent` and `rate`; a miss waits for a turn at
/// most `upstream_timeout`.
fn configure_limits(cache: &Cache, config: &Config) {
    let limits: Vec<(String, crate::cache::limits::Limits)> = config
        .providers
        .iter()
        .map(|p| {
            let limits = crate::cache::limits::Limits {
                max_concurrent: p.max_concurrent,
                rate: p.rate,
            };
            (p.name.clone(), limits)
        })
        .collect();
    cache.limiters.configure(&limits, config.agent.upstream_timeout);
}

/// Reads and validates the configuration at `path`, as start and reload do.
pub fn load_config(path: &Path) -> Result<Config, crate::error::ConfigError> {
    crate::config::load(path, &crate::config::SystemContext)
}
