//! Discovery (OpenID Connect Discovery 1.0): where a provider's token endpoint and JWKS are,
//! fetched once per provider client and cached; endpoints in the configuration override it.

use std::sync::Arc;

use serde::Deserialize;

use crate::error::ProviderError;

use super::ParseError;
use super::client::ProviderClient;

/// What discovery (or the configuration) says about a provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: Option<String>,
    pub auth_methods: Option<Vec<String>>,
}

/// The members of a discovery document the agent uses; others are ignored.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Parses a discovery document (OpenID Connect Discovery 1.0 section 4.2).
pub fn parse_discovery(body: &[u8]) -> Result<Discovery, ParseError> {
    serde_json::from_slice(body).map_err(ParseError::Discovery)
}

impl ProviderClient {
    /// Discovery, cached after the first success. Configured endpoints override it; with both
    /// `token_endpoint` and `jwks_uri` configured, discovery is skipped.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let s = &self.settings;
        let needs_jwks = s.verify_tokens && s.jwks_uri.is_none();
        let meta = if let (Some(te), false) = (&s.token_endpoint, needs_jwks) {
            Metadata {
                issuer: s.issuer.clone(),
                token_endpoint: te.clone(),
                jwks_uri: s.jwks_uri.clone(),
                auth_methods: None,
            }
        } else {
            let result = self.discover().await;
            self.record(result.as_ref().map(|_| ()));
            let d = result?;
            let token_endpoint = match (&s.token_endpoint, d.token_endpoint) {
                (Some(te), _) => te.clone(),
                (None, Some(te)) => te,
                (None, None) => {
                    return Err(ProviderError::bad_response(format!(
                        "provider {:?}: the discovery document has no token_endpoint; set token_endpoint in the config",
                        s.name
                    )));
                }
            };
            Metadata {
                issuer: d.issuer,
                token_endpoint,
                jwks_uri: s.jwks_uri.clone().or(d.jwks_uri),
                auth_methods: d.token_endpoint_auth_methods_supported,
            }
        };
        let meta = Arc::new(meta);
        *slot = Some(meta.clone());
        Ok(meta)
    }

    async fn discover(&self) -> Result<Discovery, ProviderError> {
        let s = &self.settings;
        let url = format!("{}/.well-known/openid-configuration", s.issuer.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.transport_error("discovery", &url, &e))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(ProviderError::unreachable(format!(
                "provider {:?}: discovery at {url} answered {status}",
                s.name
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::bad_response(format!(
                "provider {:?}: discovery at {url} answered {status}; check that issuer is the provider's issuer URL",
                s.name
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error("discovery", &url, &e))?;
        let d = parse_discovery(&body).map_err(|e| {
            ProviderError::bad_response(format!("provider {:?}: discovery document at {url}: {e}", s.name))
        })?;
        if d.issuer.trim_end_matches('/') != s.issuer.trim_end_matches('/') {
            return Err(ProviderError::bad_response(format!(
                "provider {:?}: discovery says issuer {:?}, the config says {:?}; they must be identical",
                s.name, d.issuer, s.issuer
            )));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_without_auth_methods_and_with_extra_members_parses() {
        let d: Discovery = serde_json::from_str(
            r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/token",
                "jwks_uri":"https://idp.example/jwks","grant_types_supported":["client_credentials"],
                "mtls_endpoint_aliases":{"token_endpoint":"https://mtls.idp.example/token"}}"#,
        )
        .unwrap();
        assert_eq!(d.token_endpoint.as_deref(), Some("https://idp.example/token"));
        assert_eq!(d.token_endpoint_auth_methods_supported, None);
    }
}
