//! The cache's link to the providers: one exchange for a cache key, with the credential files
//! re-read at renewal, the actor checked on delegated tokens, and every exchange audited
//! (`token.exchanged`, `token.exchange_failed`) and measured.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{Credential, ExchangeFuture, Exchanger, FetchReason, Spec};
use crate::config::Config;
use crate::error::ProviderError;
use crate::token::Secret;
use crate::upstream::{ProviderClient, ProviderSetupError, Providers};

use super::Shared;

/// Makes provider clients for a configuration, reusing the current ones whose settings did not
/// change (so discovery and JWKS stay cached across a reload).
pub(super) fn providers_for(config: &Config, current: Option<&Providers>) -> Result<Providers, ProviderSetupError> {
    let mut out = HashMap::new();
    for p in &config.providers {
        let reuse = current
            .and_then(|c| c.get(&p.name))
            .filter(|c| c.settings().same_client(p));
        let client = match reuse {
            Some(c) => c.clone(),
            None => Arc::new(
                ProviderClient::new(p.clone(), config.agent.upstream_timeout).map_err(|source| ProviderSetupError {
                    provider: p.name.clone(),
                    source,
                })?,
            ),
        };
        out.insert(p.name.clone(), client);
    }
    Ok(out)
}

pub(super) struct AgentExchanger {
    pub(super) shared: Arc<Shared>,
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
            // A person's session: its current token (refreshed first if about to expire).
            let from_session = match &spec.subject {
                Credential::Session { id, id_token } => {
                    let people = shared
                        .people
                        .get()
                        .ok_or_else(|| ProviderError::local("sessions are not available yet"))?;
                    let token = people.subject_token(id, *id_token).await?;
                    Some(crate::upstream::PresentedToken {
                        token: token.0,
                        token_type: spec.identity.subject_token_type.clone(),
                    })
                }
                _ => None,
            };
            let req = crate::upstream::ExchangeRequest {
                identity: &spec.identity,
                audience: &spec.audience,
                scopes: &spec.scopes,
                subject: from_session.as_ref().or(spec.subject.token()),
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

/// A delegated token must name the actor: when the issued token is a JWT, its `act.sub` must be
/// the `sub` of the actor credential that was sent.
fn check_actor(token: &crate::token::IssuedToken, spec: &Spec, provider: &str) -> Result<(), ProviderError> {
    let (Some(actor), Some(claims)) = (spec.actor.token(), token.claims.as_ref()) else {
        return Ok(());
    };
    let expected = crate::upstream::decode_unverified(actor.token.expose()).and_then(|c| c.sub);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SubjectSource;
    use crate::config::{Grant as GrantType, IdentitySettings};
    use crate::error::ErrorKind;
    use crate::token::{IssuedToken, TokenClaims};
    use crate::upstream::PresentedToken;
    use base64::Engine;
    use std::collections::BTreeSet;
    use std::time::Duration;

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
                actor_identity: None,
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
}
