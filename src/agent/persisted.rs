//! `persist_tokens = true`: the token cache is restored from `state_dir` at start, saved when it
//! changes (at most every few seconds) and at shutdown. What is kept and what is dropped is
//! decided in `cache/persist.rs`; here the agent makes the exchange spec of a saved key from the
//! current configuration and credential files.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cache::Spec;
use crate::cache::persist::{self, SavedKey, TOKENS};
use crate::config::{Config, SubjectSource};

use super::Agent;

impl Agent {
    /// Restores the saved token cache and starts saving it (with `persist_tokens`).
    pub(crate) fn resume_tokens(&self, cancel: &CancellationToken) {
        let config = self.config();
        let Some(store) = self.state_store().filter(|_| config.agent.persist_tokens).cloned() else {
            return;
        };
        match store.load(TOKENS) {
            Ok(Some(bytes)) => {
                let (restored, dropped) = self.cache.restore(&bytes, |k| self.saved_spec(&config, k));
                tracing::info!(
                    restored,
                    dropped,
                    "token cache restored from state_dir (dropped: expired, too close to expiry, or their configuration or credential changed)"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the saved token cache; starting empty"),
        }
        let last = Arc::new(std::sync::Mutex::new(Some(self.cache.persisted().1)));
        tokio::spawn(persist::saver(Arc::downgrade(&self.cache), store, last, cancel.clone()));
    }

    /// Saves the token cache now (at shutdown).
    pub(crate) fn save_tokens(&self) {
        if let Some(store) = self.state_store().filter(|_| self.config().agent.persist_tokens) {
            persist::save(&self.cache, store, &std::sync::Mutex::new(None));
        }
    }

    /// The exchange spec of a saved key under the current configuration, with the credential
    /// files read again; `None` if the identity, its audience or scopes, or its kind of subject
    /// no longer allow it.
    fn saved_spec(&self, config: &Config, k: &SavedKey) -> Option<Spec> {
        let identity = config.identity(&k.identity)?.clone();
        let scopes: BTreeSet<String> = k.scopes.iter().cloned().collect();
        if !identity.audiences.contains(&k.audience) || !scopes.iter().all(|s| identity.scopes.contains(s)) {
            return None;
        }
        if matches!(identity.subject, SubjectSource::Caller | SubjectSource::Login(_)) {
            return None;
        }
        let (subject, actor) = self.own_credentials(&identity).ok()?;
        Some(Spec {
            audience: k.audience.clone(),
            scopes,
            subject,
            actor,
            identity,
        })
    }
}
