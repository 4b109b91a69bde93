//! The token request path: a verified caller's request → presented credential checked → policy
//! → credentials → rate limit → cache (which exchanges on a miss) → `token.issued` audited →
//! the grant the server renders. Every refusal on the way is audited as `token.denied`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cache::{Credential, Source, Spec};
use crate::caller::Caller;
use crate::config::{Config, IdentitySettings, SubjectSource};
use crate::error::{ApiError, ErrorKind};
use crate::output::audit::clip;
use crate::policy::{self, Ask};
use crate::secrets::SecretFile;
use crate::token::IssuedToken;
use crate::upstream::PresentedToken;

use super::Agent;

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
    /// The person's session the token derives from, or whose role granted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<crate::people::SessionRef<'a>>,
}

/// The subject or actor behind a token, by claims and credential fingerprint.
#[derive(Serialize)]
struct PartyView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    sub: Option<&'a str>,
    fingerprint: Option<&'a str>,
}

/// A token granted to a caller: what the socket API answers with.
#[derive(Debug)]
pub struct Granted {
    /// The token (cached or fresh).
    pub token: Arc<IssuedToken>,
    /// The identity it was issued for.
    pub identity: Arc<IdentitySettings>,
    /// The audience it was issued for.
    pub audience: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// What it takes to hand it out again on the same connection ([`super::again`]), when the
    /// request allows that (no presented credential, session or delegation).
    pub(crate) again: Option<super::again::Again>,
}

impl Agent {
    pub(super) fn credential(&self, file: &SecretFile, token_type: &str, what: &str) -> Result<Credential, ApiError> {
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
    /// Only identities a role could let the caller use are named to it, or told apart from
    /// ones that do not exist.
    fn presented_identity(
        &self,
        config: &Config,
        caller: &Caller,
        named: Option<&str>,
    ) -> Result<Arc<crate::config::IdentitySettings>, ApiError> {
        let candidates: Vec<&Arc<crate::config::IdentitySettings>> = match named {
            Some(n) => config.identity(n).into_iter().collect(),
            None => config
                .identities
                .iter()
                .filter(|i| i.subject == SubjectSource::Caller && policy::could_admit(config, caller, &i.name))
                .collect(),
        };
        match candidates.as_slice() {
            // Decided before the credential: a caller no role could admit costs no signature
            // check and no JWKS request, and learns nothing of the identity.
            [one] if !policy::could_admit(config, caller, &one.name) => Err(ApiError::access_denied(format!(
                "no role could let the caller ({}) use identity {:?}, whatever credential it presents",
                caller.describe(),
                one.name
            ))),
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
            [] => Err(ApiError::access_denied(format!(
                "no identity that a role could let the caller ({}) use takes a caller-presented subject_token",
                caller.describe()
            ))),
            many => Err(ApiError::invalid_request(format!(
                "several identities take a presented credential; say which with identity (one of: {})",
                many.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Serves one token request for a verified caller; every outcome is audited.
    ///
    /// A caller that is not an operator and is refused access learns who it was seen as and
    /// what it asked for, not why: the reasons (which roles exist, what they require, whether
    /// the identity exists) go to the audit line, under a reference the answer names.
    pub async fn token(&self, caller: &Caller, ask: TokenAsk) -> Result<Granted, ApiError> {
        let state = self.state();
        let reference = std::sync::Mutex::new(None::<String>);
        let about_own_session = std::sync::atomic::AtomicBool::new(false);
        self.decide(caller, &ask, &state, &reference, &about_own_session).await.map_err(|e| {
            // A refusal about the caller's own session (its claims) tells nothing of others.
            if !hides_reasons(&e)
                || policy::is_operator(&state.config, caller)
                || about_own_session.load(std::sync::atomic::Ordering::Relaxed)
            {
                return e;
            }
            ApiError::access_denied(format!(
                "the caller ({}) may not have identity {} for audience {} with what it presented; an operator finds the reasons in the audit log under reference {}",
                caller.describe(),
                ask.identity.as_deref().map_or("(default)".to_string(), |i| format!("{:?}", clip(i, 64))),
                ask.audience.as_deref().map_or("(default)".to_string(), |a| format!("{:?}", clip(a, 128))),
                reference
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_deref()
                    .unwrap_or("-"),
            ))
        })
    }

    async fn decide(
        &self,
        caller: &Caller,
        ask: &TokenAsk,
        state: &Arc<super::State>,
        reference: &std::sync::Mutex<Option<String>>,
        about_own_session: &std::sync::atomic::AtomicBool,
    ) -> Result<Granted, ApiError> {
        let config = &state.config;
        let denied = |e: &ApiError, role: Option<&str>| {
            let mut fields = serde_json::json!({
                "outcome": "denied", "caller": caller, "role": role,
                "identity": ask.identity, "audience": ask.audience,
                "scope": ask.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
                "reason": e.code(), "error_description": e.description,
            });
            if hides_reasons(e) && !policy::is_operator(config, caller) {
                fields["reference"] = new_reference().into();
            }
            if let Some(recorded) = self.audit_denial(caller, fields) {
                *reference.lock().unwrap_or_else(|p| p.into_inner()) = Some(recorded);
            }
        };
        // A presented credential is verified first: its claims decide which roles match.
        let mut identity_name = ask.identity.clone();
        let mut claims = None;
        if let Some(subject) = &ask.subject_token {
            let identity = self
                .presented_identity(config, caller, ask.identity.as_deref())
                .inspect_err(|e| denied(e, None))?;
            let verified = self
                .presented
                .verify(subject.token.expose(), &identity.trusted_issuers)
                .await
                .inspect_err(|e| denied(e, None))?;
            identity_name = Some(identity.name.clone());
            claims = Some(verified);
        }
        let sessions = self.sessions_for(caller);
        let grant = policy::authorize_with(
            config,
            caller,
            claims.as_ref(),
            &sessions,
            &Ask {
                identity: identity_name.as_deref(),
                audience: ask.audience.as_deref(),
                scopes: &ask.scopes,
            },
        )
        .map_err(|e| {
            self.person_refusal(
                e,
                config,
                caller,
                &sessions,
                identity_name.as_deref(),
                about_own_session,
            )
        })
        .inspect_err(|e| denied(e, None))?;
        let session = self
            .session_of(caller, &grant.role, &grant.identity)
            .inspect_err(|e| denied(e, Some(grant.role.name.as_str())))?;
        let role = grant.role.name.as_str();
        let identity = &grant.identity;
        let subject = match &identity.subject {
            SubjectSource::Client => Credential::None,
            SubjectSource::File(file) => self
                .credential(file, &identity.subject_token_type, "subject")
                .inspect_err(|e| denied(e, Some(role)))?,
            SubjectSource::Login(_) => match &session {
                Some(s) => Credential::Session {
                    id: s.id.clone(),
                    id_token: identity.subject_token_type == crate::oauth::TOKEN_TYPE_ID_TOKEN,
                },
                None => Credential::None,
            },
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
        if ask.actor_token.is_some() && !grant.role.agent {
            let e = ApiError::invalid_request(format!(
                "role {role:?} is not an agent role; actor_token is accepted only for roles with agent = true"
            ));
            denied(&e, Some(role));
            return Err(e);
        }
        let actor = match (&identity.actor_token_file, &ask.actor_token) {
            (_, Some(t)) => Credential::Presented(t.clone()),
            (Some(file), None) => self
                .credential(file, &identity.actor_token_type, "actor")
                .inspect_err(|e| denied(e, Some(role)))?,
            (None, None) => match &identity.actor_identity {
                Some(actor) => self
                    .actor_from_identity(config, actor, &identity.actor_token_type)
                    .await
                    .inspect_err(|e| denied(e, Some(role)))?,
                None => Credential::None,
            },
        };
        if grant.role.agent && matches!(actor, Credential::None) {
            let e = ApiError::invalid_request(format!(
                "role {role:?} is for automation/AI agents, whose tokens are delegated: present your own credential as actor_token (cortexid token --actor-token-file PATH)"
            ));
            denied(&e, Some(role));
            return Err(e);
        }
        let caller_presented = ask.subject_token.is_some() || ask.actor_token.is_some();
        // Handed out again on the same connection only when nothing but the configuration, the
        // credential file, the rate and the cache decide it.
        let again_subject = match &subject {
            Credential::None => Some(None),
            Credential::File { file, value } => Some(Some((file.clone(), value.token.fingerprint()))),
            Credential::Presented(_) | Credential::Session { .. } => None,
        }
        .filter(|_| {
            claims.is_none()
                && !caller_presented
                && session.is_none()
                && sessions.is_empty()
                && matches!(actor, Credential::None)
        });
        let spec = Spec {
            identity: identity.clone(),
            audience: grant.audience.clone(),
            scopes: grant.scopes.clone(),
            subject,
            actor,
        };
        let min_valid = Duration::from_secs(ask.min_valid.unwrap_or(0));
        let (token, source, held) = self
            .cache
            .get_for(caller.uid, spec, min_valid)
            .await
            .map_err(|e| refusal_of_presented(e, caller_presented))
            .inspect_err(|e| denied(e, Some(role)))?;

        if let Some(s) = &session
            && let Err(e) = crate::people::within_session(s, &token)
        {
            denied(&e, Some(role));
            return Err(e);
        }
        let scope_str = grant.scopes.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
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
            session: session.as_ref().map(|s| s.audit_ref()),
        };
        // The line is rendered and written now; the answer waits until it is written.
        let line = crate::output::audit::render("token.issued", &event);
        let audit = self.shared.audit();
        let written = match line {
            Ok(line) => audit.write_line("token.issued", &line),
            Err(e) => Err(e),
        };
        if let Some(e) = super::again::audit_refusal(state.config.agent.audit_failure, written, &token) {
            return Err(e);
        }
        // The line of the same grant again: from the cache, only its time to fill in.
        let again = again_subject.and_then(|subject| {
            let tail = crate::output::audit::render_tail(
                "token.issued",
                &IssuedEvent {
                    source: Source::Cache.as_str(),
                    ..event
                },
            )
            .ok()?;
            Some(super::again::Again {
                generation: state.generation,
                logins: !state.config.logins.is_empty(),
                audit,
                audit_failure: state.config.agent.audit_failure,
                held,
                token: token.clone(),
                subject,
                rate: grant.role.rate.map(|r| {
                    let process = caller.pid.map_or(-i64::from(caller.uid), i64::from);
                    (self.limiter.bucket(role, process), r)
                }),
                min_valid,
                tail,
            })
        });
        Ok(Granted {
            token,
            identity: identity.clone(),
            audience: grant.audience,
            scope: scope_str,
            again,
        })
    }
}

/// Refusals whose text tells more than the caller needs (other roles' conditions, which
/// identities exist): for callers that are not operators, only a reference to the audit line.
fn hides_reasons(e: &ApiError) -> bool {
    matches!(e.kind, ErrorKind::AccessDenied | ErrorKind::UnknownIdentity)
}

/// A short id that ties a refusal's answer to its audit line.
fn new_reference() -> String {
    format!("{:012x}", fastrand::u64(..) >> 16)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProviderError;

    #[test]
    fn provider_refusals_of_presented_credentials_are_the_callers() {
        let e = ProviderError::rejected("invalid_grant", "provider \"corp\" refused the subject credential").to_api();
        assert_eq!(refusal_of_presented(e.clone(), true).kind, ErrorKind::AccessDenied);
        assert_eq!(refusal_of_presented(e, false).kind, ErrorKind::UpstreamError);
    }
}
