//! The tokens of `[[sink]]` files: the agent as the sinks' [`SinkSource`].

use std::sync::Arc;

use crate::cache::{Credential, Spec};
use crate::config::{IdentitySettings, SinkSettings, SubjectSource};
use crate::error::{ApiError, ErrorKind};
use crate::output::sink::SinkSource;
use crate::token::IssuedToken;

use super::Agent;

impl Agent {
    /// The subject and actor credentials the agent reads from files for `identity` (a sink's,
    /// or an `actor_identity`'s); `Credential::None` where it names no file.
    pub(super) fn own_credentials(&self, identity: &IdentitySettings) -> Result<(Credential, Credential), ApiError> {
        let subject = match &identity.subject {
            SubjectSource::File(file) => self.credential(file, &identity.subject_token_type, "subject")?,
            _ => Credential::None,
        };
        let actor = match &identity.actor_token_file {
            Some(file) => self.credential(file, &identity.actor_token_type, "actor")?,
            None => Credential::None,
        };
        Ok((subject, actor))
    }
}

impl SinkSource for Agent {
    /// The token for a `[[sink]]`: its key stays pinned (renewed for as long as the agent runs).
    async fn sink_token(&self, sink: &SinkSettings) -> Result<Arc<IssuedToken>, ApiError> {
        let config = self.config();
        let identity = config.identity(&sink.identity).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnknownIdentity,
                format!("sink identity {:?} is not configured", sink.identity),
            )
        })?;
        let (subject, actor) = self.own_credentials(&identity)?;
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

    /// Records a written token file: metrics and a `token.issued` audit line for it.
    fn token_written(&self, sink: &SinkSettings, token: &IssuedToken) {
        self.audit_best_effort(
            "token.issued",
            serde_json::json!({
                "outcome": "granted", "sink": sink.path, "identity": sink.identity, "audience": sink.audience,
                "scope": sink.scopes.join(" "), "source": "sink", "token": token.audit_view(),
            }),
        );
    }
}
