//! One provider as the agent sees it: its settings, HTTPS client, cached discovery and JWKS, and
//! its reachability for `/v1/health`. The requests themselves live beside: [`super::discovery`],
//! [`super::grants`] (with [`super::client_auth`]) and [`super::jwks`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::ProviderSettings;
use crate::error::{ProviderError, ProviderErrorKind};

use super::discovery::Metadata;
use super::http::{HttpClientError, chain, http_client};
use super::jwks::KeySet;

/// Reachability as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderHealth {
    /// `None` until the first request finished.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
}

/// A provider client could not be made for a configured `[[provider]]`.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider:?}: {source}")]
pub struct ProviderSetupError {
    /// The `[[provider]]` name.
    pub provider: String,
    /// What failed.
    pub source: HttpClientError,
}

/// A client for one configured provider.
pub struct ProviderClient {
    pub(super) settings: Arc<ProviderSettings>,
    pub(super) http: reqwest::Client,
    pub(super) metadata: tokio::sync::Mutex<Option<Arc<Metadata>>>,
    pub(super) jwks: KeySet,
    health: Mutex<ProviderHealth>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("name", &self.settings.name)
            .field("issuer", &self.settings.issuer)
            .finish()
    }
}

impl ProviderClient {
    pub fn new(settings: Arc<ProviderSettings>, timeout: Duration) -> Result<ProviderClient, HttpClientError> {
        let http = http_client(settings.ca_file.as_deref(), timeout)?;
        Ok(ProviderClient {
            settings,
            http,
            metadata: tokio::sync::Mutex::new(None),
            jwks: KeySet::default(),
            health: Mutex::new(ProviderHealth::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub(crate) fn settings(&self) -> &Arc<ProviderSettings> {
        &self.settings
    }

    pub fn health(&self) -> ProviderHealth {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub(super) fn record(&self, result: Result<(), &ProviderError>) {
        if let Ok(mut h) = self.health.lock() {
            match result {
                Ok(()) => {
                    h.reachable = Some(true);
                    h.last_error = None;
                }
                Err(e) => {
                    // A provider that answered, even with a refusal, is reachable.
                    h.reachable = Some(e.kind != ProviderErrorKind::Unreachable);
                    h.last_error = Some(e.message.clone());
                }
            }
        }
    }

    pub(super) fn transport_error(&self, what: &str, url: &str, e: &reqwest::Error) -> ProviderError {
        let name = &self.settings.name;
        if e.is_timeout() {
            ProviderError::unreachable(format!("provider {name:?} did not answer {what} at {url} in time"))
        } else {
            ProviderError::unreachable(format!(
                "cannot reach provider {name:?} ({what} at {url}): {}",
                chain(e)
            ))
        }
    }
}

/// Keys by name, for the agent to look providers up.
pub(crate) type Providers = HashMap<String, Arc<ProviderClient>>;
