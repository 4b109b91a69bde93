//! The agent: one validated configuration at a time, the provider clients, the cache and the
//! audit log, and the token request path that ties them together:
//! request → caller → policy → cache → provider → cache → audit → response.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api::caller::Caller;
use crate::cache::{Cache, Credential, ExchangeFuture, Exchanger, FetchReason, RefreshSettings, Spec};
use crate::config::{AuditFailure, Config, SubjectSource};
use crate::error::{ApiError, ErrorKind, ProviderError};
use crate::output::audit::Audit;
use crate::policy::{self, Ask};
use crate::secrets::{FileStamp, SecretFile};
use crate::token::Secret;
use crate::upstream::provider::{PresentedToken, ProviderClient, Providers};

/// One configuration and the provider clients made for it.
pub struct State {
    pub config: Arc<Config>,
    pub providers: Providers,
}

/// What the agent shares with its cache's exchanger.
struct Shared {
    state: RwLock<Arc<State>>,
    audit: RwLock<Arc<Audit>>,
    metrics: crate::output::metrics::Metrics,
}

impl Shared {
    fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
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

/// A token request as the socket API received it.
#[derive(Debug, Default)]
pub struct TokenAsk {
    pub identity: Option<String>,
    pub audience: Option<String>,
    pub scopes: BTreeSet<String>,
    pub min_valid: Option<u64>,
    pub subject_token: Option<PresentedToken>,
    pub actor_token: Option<PresentedToken>,
}

/// The `token.issued` audit event, serialised straight from borrowed parts.
#[derive(Serialize)]
struct IssuedEvent<'a> {
    outcome: &'static str,
    caller: &'a Caller,
    role: &'a str,
    identity: &'a str,
    audience: &'a str,
    scope: &'a str,
    source: &'static str,
    token: &'a serde_json::value::RawValue,
    agent: bool,
    actor: Option<PartyView<'a>>,
    subject: Option<PartyView<'a>>,
}

/// The subject or actor behind a token, by claims and credential fingerprint.
#[derive(Serialize)]
struct PartyView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    sub: Option<&'a str>,
    fingerprint: Option<&'a str>,
}

/// Credential files, re-read when their content changes (inode, size, mtime, ctime), so the
/// request path costs one `stat` and a rotated credential starts a new cache key at once.
#[derive(Default)]
struct CredentialFiles {
    seen: Mutex<HashMap<PathBuf, (FileStamp, Secret)>>,
}

impl CredentialFiles {
    fn read(&self, file: &SecretFile) -> Result<Secret, String> {
        let stamp = file.stamp();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(stamp), Some((known, value))) = (stamp, seen.get(&file.path))
            && *known == stamp
        {
            return Ok(value.clone());
        }
        let value = Secret::from(file.read().map_err(|e| e.to_string())?);
        // Computed once here, so every clone handed out carries it.
        let _ = value.fingerprint();
        if let Some(stamp) = stamp {
            seen.insert(file.path.clone(), (stamp, value.clone()));
        }
        Ok(value)
    }
}

pub struct Agent {
    shared: Arc<Shared>,
    cache: Arc<Cache>,
    creds: CredentialFiles,
    presented: crate::policy::trust::PresentedVerifier,
    limiter: crate::policy::ratelimit::RateLimiter,
    sinks: RwLock<std::collections::BTreeMap<PathBuf, crate::output::sink::SinkStatus>>,
    cancel: CancellationToken,
    ready: std::sync::atomic::AtomicBool,
}

/// Makes provider clients for a configuration, reusing the current ones whose settings did not
/// change (so discovery and JWKS stay cached across a reload).
fn providers_for(config: &Config, current: Option<&Providers>) -> Result<Providers, String> {
    let mut out = HashMap::new();
    for p in &config.providers {
        let reuse = current.and_then(|c| c.get(&p.name)).filter(|c| **c.settings() == **p);
        let client = match reuse {
            Some(c) => c.clone(),
            None => Arc::new(
                ProviderClient::new(p.clone(), config.agent.upstream_timeout)
                    .map_err(|e| format!("provider {:?}: {e}", p.name))?,
            ),
        };
        out.insert(p.name.clone(), client);
    }
    Ok(out)
}

struct AgentExchanger {
    shared: Arc<Shared>,
}

impl Exchanger for AgentExchanger {
    fn exchange(&self, spec: Arc<Spec>, reason: FetchReason) -> ExchangeFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            let state = shared.state();
            let provider = state.providers.get(&spec.identity.provider).cloned().ok_or_else(|| {
                ProviderError::local(format!(
                    "identity {:?} names provider {:?}, which is not configured",
                    spec.identity.name, spec.identity.provider
                ))
            })?;
            // A renewal re-reads credential files; a changed one retires this key (the next
            // request makes a key for the new credential).
            if reason == FetchReason::Renewal {
                for cred in [&spec.subject, &spec.actor] {
                    if let Credential::File { file, value } = cred {
                        let now = Secret::from(file.read().map_err(|e| ProviderError::local(e.to_string()))?);
                        if now != value.token {
                            return Err(ProviderError::local(format!(
                                "credential {} changed; the key made for the old one is retired",
                                file.path.display()
                            )));
                        }
                    }
                }
            }
            let req = crate::upstream::provider::ExchangeRequest {
                identity: &spec.identity,
                audience: &spec.audience,
                scopes: &spec.scopes,
                subject: spec.subject.token(),
                actor: spec.actor.token(),
            };
            let started = std::time::Instant::now();
            let result = provider
                .exchange(&req)
                .await
                .and_then(|t| check_actor(&t, &spec, provider.name()).map(|()| t));
            shared
                .metrics
                .exchange(provider.name(), result.is_ok(), started.elapsed());
            let ms = started.elapsed().as_millis() as u64;
            let base = serde_json::json!({
                "provider": provider.name(), "identity": spec.identity.name, "audience": spec.audience,
                "scope": spec.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
                "grant": spec.identity.grant.as_str(), "reason": reason.as_str(), "duration_ms": ms,
                "subject_fingerprint": spec.subject.fingerprint(), "actor_fingerprint": spec.actor.fingerprint(),
            });
            match &result {
                Ok(t) => {
                    let mut fields = base;
                    fields["outcome"] = "success".into();
                    fields["expires_in"] = t.lifetime.as_secs().into();
                    fields["token"] = t.audit_view();
                    shared.audit_best_effort("token.exchanged", fields);
                    tracing::info!(provider = provider.name(), identity = %spec.identity.name, audience = %spec.audience,
                        fingerprint = %t.fingerprint, lifetime_s = t.lifetime.as_secs(), reason = reason.as_str(), "exchanged");
                }
                Err(e) => {
                    let mut fields = base;
                    fields["outcome"] = "failure".into();
                    fields["error"] = e.provider_code().unwrap_or("").into();
                    fields["error_description"] = e.message.clone().into();
                    shared.audit_best_effort("token.exchange_failed", fields);
                    tracing::warn!(provider = provider.name(), identity = %spec.identity.name, audience = %spec.audience,
                        reason = reason.as_str(), error = %e, "exchange failed");
                }
            }
            result
        })
    }
}

impl Agent {
    pub fn new(config: Config, cancel: CancellationToken) -> Result<Arc<Agent>, String> {
        let providers = providers_for(&config, None)?;
        let audit = Arc::new(Audit::open(&config.agent.audit_log));
        let settings = RefreshSettings::from(&config.agent);
        let shared = Arc::new(Shared {
            metrics: Default::default(),
            state: RwLock::new(Arc::new(State {
                config: Arc::new(config),
                providers,
            })),
            audit: RwLock::new(audit),
        });
        let presented = crate::policy::trust::PresentedVerifier::new(shared.state().config.agent.upstream_timeout);
        let cache = Cache::new(
            settings,
            Arc::new(AgentExchanger { shared: shared.clone() }),
            cancel.clone(),
        );
        Ok(Arc::new(Agent {
            shared,
            cache,
            creds: CredentialFiles::default(),
            presented,
            limiter: Default::default(),
            sinks: Default::default(),
            cancel,
            ready: Default::default(),
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

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn audit_best_effort(&self, event: &str, fields: serde_json::Value) {
        self.shared.audit_best_effort(event, fields)
    }

    /// Marks start-up as done (health leaves `starting`).
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Looks up every provider's discovery document once, so health shows reachability early.
    pub async fn warm_up(&self) {
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
    }

    /// Replaces the configuration. The caller has validated it; keys whose identity changed are
    /// dropped from the cache, provider clients whose settings are unchanged are kept.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let old = self.state();
        let providers = providers_for(&config, Some(&old.providers))?;
        let config = Arc::new(config);
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
        self.cache.set_settings(RefreshSettings::from(&config.agent));
        let audit_changed = *self.shared.audit().target() != config.agent.audit_log;
        if audit_changed {
            *self.shared.audit.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Audit::open(&config.agent.audit_log));
        }
        *self.shared.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(State { config, providers });
        Ok(())
    }

    /// Reopens the audit file (SIGHUP, after log rotation).
    pub fn reopen_audit(&self) {
        if let Err(e) = self.shared.audit().reopen() {
            tracing::error!(error = %e, "cannot reopen the audit log");
        }
    }

    /// `/v1/identities` for a caller.
    pub fn identities(&self, caller: &Caller) -> Vec<policy::IdentityView> {
        policy::identities_for(&self.config(), caller, None)
    }

    /// `/v1/health`: status, providers, cache.
    pub fn health(&self) -> (u16, serde_json::Value) {
        let state = self.state();
        let mut providers = serde_json::Map::new();
        let mut unreachable = false;
        for (name, p) in &state.providers {
            let h = p.health();
            unreachable |= h.reachable == Some(false);
            providers.insert(
                name.clone(),
                serde_json::json!({"reachable": h.reachable.unwrap_or(false), "last_error": h.last_error}),
            );
        }
        let ready = self.ready.load(std::sync::atomic::Ordering::Acquire);
        let status = if !ready {
            "starting"
        } else if unreachable || self.cache.degraded() {
            "degraded"
        } else {
            "ok"
        };
        let sinks: Vec<crate::output::sink::SinkStatus> = self
            .sinks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let body = serde_json::json!({
            "status": status,
            "providers": providers,
            "cache": {"entries": self.cache.len(), "keys": self.cache.snapshot()},
            "sinks": sinks,
        });
        (if ready { 200 } else { 503 }, body)
    }

    pub fn metrics(&self) -> &crate::output::metrics::Metrics {
        &self.shared.metrics
    }

    /// `/metrics` in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.state();
        let mut providers_up: Vec<(String, bool)> = state
            .providers
            .iter()
            .map(|(n, p)| (n.clone(), p.health().reachable == Some(true)))
            .collect();
        providers_up.sort();
        let c = &self.cache.counters;
        self.shared.metrics.render(&crate::output::metrics::Gauges {
            cache_entries: self.cache.len(),
            cache_hits: c.hits.load(Relaxed),
            cache_misses: c.misses.load(Relaxed),
            renewals: c.renewals.load(Relaxed),
            providers_up,
        })
    }

    /// The token for a `[[sink]]`: its key stays pinned (renewed for as long as the agent runs).
    pub async fn sink_token(
        &self,
        sink: &crate::config::SinkSettings,
    ) -> Result<Arc<crate::token::IssuedToken>, ApiError> {
        let config = self.config();
        let identity = config.identity(&sink.identity).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnknownIdentity,
                format!("sink identity {:?} is not configured", sink.identity),
            )
        })?;
        let subject = match &identity.subject {
            SubjectSource::File(file) => self.credential(file, &identity.subject_token_type, "subject")?,
            _ => Credential::None,
        };
        let actor = match &identity.actor_token_file {
            Some(file) => self.credential(file, &identity.actor_token_type, "actor")?,
            None => Credential::None,
        };
        let spec = Spec {
            identity: identity.clone(),
            audience: sink.audience.clone(),
            scopes: sink.scopes.iter().cloned().collect(),
            subject,
            actor,
        };
        let (token, _) = self.cache.get_pinned(spec).await?;
        Ok(token)
    }

    /// Records a written token file: status, metrics, and a `token.issued` audit line for it.
    pub fn sink_written(&self, sink: &crate::config::SinkSettings, token: &crate::token::IssuedToken) {
        self.shared
            .metrics
            .sink_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.audit_best_effort(
            "token.issued",
            serde_json::json!({
                "outcome": "granted", "sink": sink.path, "identity": sink.identity, "audience": sink.audience,
                "scope": sink.scopes.join(" "), "source": "sink", "token": token.audit_view(),
            }),
        );
        self.set_sink_status(sink, "ok".into(), Some(token.fingerprint.clone()));
    }

    pub fn sink_failed(&self, sink: &crate::config::SinkSettings, why: &str) {
        self.shared
            .metrics
            .sink_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.set_sink_status(sink, format!("failing: {why}"), None);
    }

    fn set_sink_status(&self, sink: &crate::config::SinkSettings, state: String, fingerprint: Option<String>) {
        let mut sinks = self.sinks.write().unwrap_or_else(|p| p.into_inner());
        let entry = sinks
            .entry(sink.path.clone())
            .or_insert_with(|| crate::output::sink::SinkStatus {
                path: sink.path.clone(),
                identity: sink.identity.clone(),
                audience: sink.audience.clone(),
                state: String::new(),
                fingerprint: None,
                written_at: None,
            });
        entry.state = state;
        if fingerprint.is_some() {
            entry.fingerprint = fingerprint;
            entry.written_at = Some(crate::output::sink::now_rfc3339());
        }
    }

    /// Forgets the status of sinks no longer configured.
    pub fn reset_sink_status(&self, sinks: &[crate::config::SinkSettings]) {
        self.sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|path, _| sinks.iter().any(|s| &s.path == path));
        for s in sinks {
            self.set_sink_status(s, "starting".into(), None);
        }
    }

    fn credential(&self, file: &SecretFile, token_type: &str, what: &str) -> Result<Credential, ApiError> {
        let value = self.creds.read(file).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("the agent cannot read its {what} credential: {e}"),
            )
        })?;
        Ok(Credential::File {
            file: file.clone(),
            value: PresentedToken {
                token: value,
                token_type: token_type.to_string(),
            },
        })
    }

    /// The identity a presented credential is for: the one named, or the only one that takes
    /// caller-presented credentials.
    fn presented_identity(
        &self,
        config: &Config,
        named: Option<&str>,
    ) -> Result<Arc<crate::config::IdentitySettings>, ApiError> {
        let candidates: Vec<&Arc<crate::config::IdentitySettings>> = match named {
            Some(n) => config.identity(n).into_iter().collect(),
            None => config
                .identities
                .iter()
                .filter(|i| i.subject == SubjectSource::Caller)
                .collect(),
        };
        match candidates.as_slice() {
            [one] if one.subject == SubjectSource::Caller => Ok((*one).clone()),
            [one] => Err(ApiError::invalid_request(format!(
                "identity {:?} uses its own subject credential; do not send subject_token",
                one.name
            ))),
            [] if named.is_some() => Err(ApiError::new(
                ErrorKind::UnknownIdentity,
                format!(
                    "no identity named {:?} is configured on this agent",
                    named.unwrap_or_default()
                ),
            )),
            [] => Err(ApiError::invalid_request(
                "no identity on this agent takes a caller-presented subject_token",
            )),
            many => Err(ApiError::invalid_request(format!(
                "several identities take a presented credential; say which with identity (one of: {})",
                many.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Serves one token request for a verified caller; every outcome is audited.
    pub async fn token(&self, caller: &Caller, ask: TokenAsk) -> Result<Vec<u8>, ApiError> {
        let state = self.state();
        let config = &state.config;
        let denied = |e: &ApiError, role: Option<&str>| {
            self.audit_best_effort(
                "token.denied",
                serde_json::json!({
                    "outcome": "denied", "caller": caller, "role": role,
                    "identity": ask.identity, "audience": ask.audience,
                    "scope": ask.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
                    "reason": e.code(), "error_description": e.description,
                }),
            );
        };
        // A presented credential is verified first: its claims decide which roles match.
        let mut identity_name = ask.identity.clone();
        let mut claims = None;
        if let Some(subject) = &ask.subject_token {
            let identity = self
                .presented_identity(config, ask.identity.as_deref())
                .inspect_err(|e| denied(e, None))?;
            let verified = self
                .presented
                .verify(subject.token.expose(), &identity.trusted_issuers)
                .await
                .inspect_err(|e| denied(e, None))?;
            identity_name = Some(identity.name.clone());
            claims = Some(verified);
        }
        let scopes = ask.scopes.clone();
        let grant = policy::authorize(
            config,
            caller,
            claims.as_ref(),
            &Ask {
                identity: identity_name.as_deref(),
                audience: ask.audience.as_deref(),
                scopes: &scopes,
            },
        )
        .inspect_err(|e| denied(e, None))?;
        let role = grant.role.name.as_str();
        let identity = &grant.identity;
        let subject = match &identity.subject {
            SubjectSource::Client => Credential::None,
            SubjectSource::File(file) => self
                .credential(file, &identity.subject_token_type, "subject")
                .inspect_err(|e| denied(e, Some(role)))?,
            SubjectSource::Caller => match &ask.subject_token {
                Some(t) => Credential::Presented(t.clone()),
                None => {
                    let e = ApiError::invalid_request(format!(
                        "identity {:?} takes the subject credential from the caller: POST /v1/token with subject_token in the JSON body",
                        identity.name
                    ));
                    denied(&e, Some(role));
                    return Err(e);
                }
            },
        };
        if let Some(rate) = grant.role.rate {
            let process = caller.pid.map_or(-i64::from(caller.uid), i64::from);
            if let Err(wait) = self.limiter.check(role, process, rate) {
                let e = ApiError::new(
                    ErrorKind::SlowDown,
                    format!(
                        "role {role:?} allows {} requests per {:?} per process; this process is over it, retry in {} ms",
                        rate.count,
                        rate.per,
                        wait.as_millis()
                    ),
                )
                .with_retry_after(wait.as_secs_f64().ceil() as u64);
                denied(&e, Some(role));
                return Err(e);
            }
        }
        let actor = match (&identity.actor_token_file, &ask.actor_token) {
            (_, Some(t)) => Credential::Presented(t.clone()),
            (Some(file), None) => self
                .credential(file, &identity.actor_token_type, "actor")
                .inspect_err(|e| denied(e, Some(role)))?,
            (None, None) => Credential::None,
        };
        if grant.role.agent && matches!(actor, Credential::None) {
            let e = ApiError::invalid_request(format!(
                "role {role:?} is for automation/AI agents, whose tokens are delegated: present your own credential as actor_token (cortexid token --actor-token-file PATH)"
            ));
            denied(&e, Some(role));
            return Err(e);
        }
        let caller_presented = ask.subject_token.is_some() || ask.actor_token.is_some();
        let spec = Spec {
            identity: identity.clone(),
            audience: grant.audience.clone(),
            scopes: grant.scopes.clone(),
            subject,
            actor,
        };
        let min_valid = Duration::from_secs(ask.min_valid.unwrap_or(0));
        let (token, source) = self
            .cache
            .get(spec, min_valid)
            .await
            .map_err(|e| refusal_of_presented(e, caller_presented))
            .inspect_err(|e| denied(e, Some(role)))?;

        let now = tokio::time::Instant::now();
        let scope_str = grant.scopes.iter().cloned().collect::<Vec<_>>().join(" ");
        let actor_fp = ask.actor_token.as_ref().map(|t| t.token.fingerprint());
        let subject_fp = ask.subject_token.as_ref().map(|t| t.token.fingerprint());
        let event = IssuedEvent {
            outcome: "granted",
            caller,
            role,
            identity: &identity.name,
            audience: &grant.audience,
            scope: &scope_str,
            source: source.as_str(),
            token: token.audit_json(),
            agent: grant.role.agent,
            actor: token.claims.as_ref().and_then(|c| c.act.as_ref()).map(|act| PartyView {
                iss: None,
                sub: act.get("sub").and_then(|s| s.as_str()),
                fingerprint: actor_fp.as_deref(),
            }),
            subject: claims.as_ref().map(|c| PartyView {
                iss: c.get("iss").and_then(|s| s.as_str()),
                sub: c.get("sub").and_then(|s| s.as_str()),
                fingerprint: subject_fp.as_deref(),
            }),
        };
        if let Err(e) = self.shared.audit().write_event("token.issued", &event) {
            tracing::error!(error = %e, fingerprint = %token.fingerprint, "cannot write the token.issued audit event");
            if config.agent.audit_failure == AuditFailure::Closed {
                return Err(ApiError::new(
                    ErrorKind::AuditUnavailable,
                    format!(
                        "the audit log cannot be written ({e}); no token is handed out until it can (audit_failure = \"closed\")"
                    ),
                ));
            }
        }
        // {"access_token":…,"token_type":"Bearer","issued_token_type":…,"expires_at":…, then the
        // per-request members; the token's part is rendered once per token.
        let fields = token.response_fields();
        let mut body = Vec::with_capacity(fields.len() + scope_str.len() + grant.audience.len() + 96);
        body.push(b'{');
        body.extend_from_slice(fields.as_bytes());
        body.extend_from_slice(b",\"expires_in\":");
        body.extend_from_slice(token.remaining(now).as_secs().to_string().as_bytes());
        for (key, value) in [
            ("identity", identity.name.as_str()),
            ("audience", &grant.audience),
            ("scope", &scope_str),
        ] {
            body.extend_from_slice(b",\"");
            body.extend_from_slice(key.as_bytes());
            body.extend_from_slice(b"\":");
            serde_json::to_writer(&mut body, value).map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        }
        body.push(b'}');
        Ok(body)
    }
}

/// A delegated token must name the actor: when the issued token is a JWT, its `act.sub` must be
/// the `sub` of the actor credential that was sent.
fn check_actor(token: &crate::token::IssuedToken, spec: &Spec, provider: &str) -> Result<(), ProviderError> {
    let (Some(actor), Some(claims)) = (spec.actor.token(), token.claims.as_ref()) else {
        return Ok(());
    };
    let expected = crate::upstream::provider::decode_unverified(actor.token.expose()).and_then(|c| c.sub);
    let named = claims.act.as_ref().and_then(|a| a.get("sub")).and_then(|s| s.as_str());
    match (expected.as_deref(), named) {
        (Some(e), Some(n)) if e == n => Ok(()),
        (None, _) => Ok(()),
        (Some(e), n) => Err(ProviderError::verification(format!(
            "provider {provider:?} issued a delegated token whose act names {}, not the actor {e:?}; it is not served",
            n.map_or("no one".to_string(), |n| format!("{n:?}"))
        ))),
    }
}

/// A provider's `invalid_grant` about a credential the caller presented is the caller's fault.
fn refusal_of_presented(e: ApiError, caller_presented: bool) -> ApiError {
    if caller_presented && e.provider_error.as_deref() == Some("invalid_grant") {
        ApiError {
            kind: ErrorKind::AccessDenied,
            ..e
        }
    } else {
        e
    }
}

/// Reads and validates the configuration at `path`, as start and reload do.
pub fn load_config(path: &Path) -> Result<Config, crate::error::ConfigError> {
    crate::config::load(path, &crate::config::SystemContext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Grant as GrantType, IdentitySettings};
    use crate::token::{IssuedToken, TokenClaims};
    use base64::Engine;

    fn jwt_with(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", enc(&serde_json::json!({"alg": "ES256"})), enc(&claims))
    }

    fn spec_with_actor(actor_sub: &str) -> Spec {
        Spec {
            identity: Arc::new(IdentitySettings {
                name: "payments".into(),
                provider: "corp".into(),
                grant: GrantType::TokenExchange,
                subject: SubjectSource::Caller,
                subject_token_type: String::new(),
                trusted_issuers: vec![],
                actor_token_file: None,
                actor_token_type: String::new(),
                requested_token_type: String::new(),
                audiences: vec!["a".into()],
                scopes: vec![],
            }),
            audience: "a".into(),
            scopes: BTreeSet::new(),
            subject: Credential::None,
            actor: Credential::Presented(PresentedToken {
                token: Secret::new(jwt_with(serde_json::json!({"sub": actor_sub}))),
                token_type: String::new(),
            }),
        }
    }

    fn issued(act: Option<serde_json::Value>) -> IssuedToken {
        let claims = TokenClaims {
            act,
            ..TokenClaims::default()
        };
        IssuedToken::new(
            Secret::new("t".into()),
            String::new(),
            String::new(),
            Duration::from_secs(60),
            Some(claims),
        )
    }

    #[test]
    fn a_delegated_token_must_name_the_actor() {
        let spec = spec_with_actor("bot:a");
        check_actor(
            &issued(Some(serde_json::json!({"sub": "bot:a", "act": {"sub": "x"}}))),
            &spec,
            "corp",
        )
        .unwrap();
        let e = check_actor(&issued(Some(serde_json::json!({"sub": "bot:b"}))), &spec, "corp").unwrap_err();
        assert!(
            e.message.contains("\"bot:b\"") && e.message.contains("\"bot:a\""),
            "{}",
            e.message
        );
        let e = check_actor(&issued(None), &spec, "corp").unwrap_err();
        assert!(e.message.contains("no one"), "{}", e.message);
        assert_eq!(e.to_api().kind, ErrorKind::UpstreamError);
    }

    #[test]
    fn provider_refusals_of_presented_credentials_are_the_callers() {
        let e = ProviderError::rejected("invalid_grant", "provider \"corp\" refused the subject credential").to_api();
        assert_eq!(refusal_of_presented(e.clone(), true).kind, ErrorKind::AccessDenied);
        assert_eq!(refusal_of_presented(e, false).kind, ErrorKind::UpstreamError);
    }
}
