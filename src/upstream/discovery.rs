//! Discovery (OpenID Connect Discovery 1.0, RFC 8414): where a provider's endpoints are and which
//! grants it offers, fetched once per provider client and cached; endpoints in the configuration
//! override it. [`Metadata::login_support`] tells which sign-in flows a `[[login]]` can use.

use std::sync::Arc;

use serde::Deserialize;

use crate::error::ProviderError;

use super::ParseError;
use super::client::ProviderClient;

/// What discovery (or the configuration) says about a provider's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: Option<String>,
    pub auth_methods: Option<Vec<String>>,
    /// Where a browser signs in (authorization code flow).
    pub authorization_endpoint: Option<String>,
    /// RFC 8628 device authorization endpoint.
    pub device_authorization_endpoint: Option<String>,
    /// RFC 7009 token revocation endpoint.
    pub revocation_endpoint: Option<String>,
    /// `None` when discovery did not say (OIDC Discovery's default then applies:
    /// `authorization_code` and `implicit`).
    pub grant_types_supported: Option<Vec<String>>,
    /// PKCE methods (RFC 7636); `None` when discovery did not say.
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// Whether these came from a discovery document (false when configured endpoints made the
    /// agent skip it; sign-in then fetches it, since only discovery names those endpoints).
    pub discovered: bool,
}

/// A way for a person to sign in (SPEC section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFlow {
    /// RFC 8628 device authorization grant.
    Device,
    /// Authorization code with PKCE S256 and a loopback redirect (RFC 8252).
    Browser,
}

impl LoginFlow {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFlow::Device => "device",
            LoginFlow::Browser => "browser",
        }
    }
}

/// Why a provider cannot be used for a sign-in flow; the message completes "provider X …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowUnsupported {
    /// The discovery document lacks this endpoint.
    #[error("does not publish {0} in its discovery document")]
    NoEndpoint(&'static str),
    /// `grant_types_supported` is published and lacks this grant.
    #[error("does not list {0} in its grant_types_supported")]
    GrantNotListed(&'static str),
    /// `code_challenge_methods_supported` is published and lacks `S256`.
    #[error("does not list S256 in its code_challenge_methods_supported (PKCE)")]
    NoS256,
}

/// What a provider offers people, as its discovery document says: for each flow, `Ok` or why
/// it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSupport {
    pub device: Result<(), FlowUnsupported>,
    pub browser: Result<(), FlowUnsupported>,
    /// Whether `refresh_token` is among `grant_types_supported` (or discovery did not say).
    pub refresh: bool,
    /// Whether a revocation endpoint (RFC 7009) is published.
    pub revocation: bool,
}

impl LoginSupport {
    /// `Ok`, or why `flow` cannot be used at this provider.
    pub fn check(&self, flow: LoginFlow) -> Result<(), FlowUnsupported> {
        match flow {
            LoginFlow::Device => self.device.clone(),
            LoginFlow::Browser => self.browser.clone(),
        }
    }
}

impl Metadata {
    /// Which sign-in flows and revocation this provider offers. A grant missing from
    /// `grant_types_supported` (when that is published) or a missing endpoint rules a flow out;
    /// for the browser flow, a published `code_challenge_methods_supported` without `S256` does
    /// too (providers that support PKCE without saying so are given the benefit of the doubt).
    pub fn login_support(&self) -> LoginSupport {
        let grant_listed = |grant: &str, default: bool| match &self.grant_types_supported {
            Some(list) => list.iter().any(|g| g == grant),
            None => default,
        };
        let device = if self.device_authorization_endpoint.is_none() {
            Err(FlowUnsupported::NoEndpoint("device_authorization_endpoint"))
        } else if !grant_listed(crate::oauth::GRANT_DEVICE_CODE, true) {
            Err(FlowUnsupported::GrantNotListed(crate::oauth::GRANT_DEVICE_CODE))
        } else {
            Ok(())
        };
        let browser = if self.authorization_endpoint.is_none() {
            Err(FlowUnsupported::NoEndpoint("authorization_endpoint"))
        } else if !grant_listed(crate::oauth::GRANT_AUTHORIZATION_CODE, true) {
            Err(FlowUnsupported::GrantNotListed(crate::oauth::GRANT_AUTHORIZATION_CODE))
        } else if self
            .code_challenge_methods_supported
            .as_ref()
            .is_some_and(|m| !m.iter().any(|m| m == "S256"))
        {
            Err(FlowUnsupported::NoS256)
        } else {
            Ok(())
        };
        LoginSupport {
            device,
            browser,
            refresh: grant_listed(crate::oauth::GRANT_REFRESH_TOKEN, true),
            revocation: self.revocation_endpoint.is_some(),
        }
    }
}

/// The members of a discovery document the agent uses; others are ignored.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    pub authorization_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub grant_types_supported: Option<Vec<String>>,
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

/// Parses a discovery document (OpenID Connect Discovery 1.0 section 4.2).
pub fn parse_discovery(body: &[u8]) -> Result<Discovery, ParseError> {
    serde_json::from_slice(body).map_err(ParseError::Discovery)
}

impl ProviderClient {
    /// Discovery, cached after the first success. Configured endpoints override it; with both
    /// `token_endpoint` and `jwks_uri` configured, discovery is skipped.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        self.metadata_for(false).await
    }

    /// Discovery even when configured endpoints would let the agent skip it: the sign-in
    /// endpoints are only ever found there.
    pub async fn login_metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        self.metadata_for(true).await
    }

    async fn metadata_for(&self, must_discover: bool) -> Result<Arc<Metadata>, ProviderError> {
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot.as_ref()
            && (m.discovered || !must_discover)
        {
            return Ok(m.clone());
        }
        let s = &self.settings;
        let needs_jwks = s.verify_tokens && s.jwks_uri.is_none();
        let meta = if let (Some(te), false, false) = (&s.token_endpoint, needs_jwks, must_discover) {
            Metadata {
                issuer: s.issuer.clone(),
                token_endpoint: te.clone(),
                jwks_uri: s.jwks_uri.clone(),
                auth_methods: None,
                authorization_endpoint: None,
                device_authorization_endpoint: None,
                revocation_endpoint: None,
                grant_types_supported: None,
                code_challenge_methods_supported: None,
                discovered: false,
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
                authorization_endpoint: d.authorization_endpoint,
                device_authorization_endpoint: d.device_authorization_endpoint,
                revocation_endpoint: d.revocation_endpoint,
                grant_types_supported: d.grant_types_supported,
                code_challenge_methods_supported: d.code_challenge_methods_supported,
                discovered: true,
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

    fn metadata(doc: &str) -> Metadata {
        let d = parse_discovery(doc.as_bytes()).unwrap();
        Metadata {
            issuer: d.issuer,
            token_endpoint: d.token_endpoint.unwrap_or_default(),
            authorization_endpoint: d.authorization_endpoint,
            device_authorization_endpoint: d.device_authorization_endpoint,
            revocation_endpoint: d.revocation_endpoint,
            grant_types_supported: d.grant_types_supported,
            code_challenge_methods_supported: d.code_challenge_methods_supported,
            discovered: true,
            ..Metadata::default()
        }
    }

    #[test]
    fn login_support_follows_endpoints_grants_and_pkce_methods() {
        // Everything offered (oidc-provider's shape).
        let full = metadata(
            r#"{"issuer":"https://idp","token_endpoint":"https://idp/token",
                "authorization_endpoint":"https://idp/auth","device_authorization_endpoint":"https://idp/device/auth",
                "revocation_endpoint":"https://idp/token/revocation",
                "grant_types_supported":["authorization_code","refresh_token","urn:ietf:params:oauth:grant-type:device_code"],
                "code_challenge_methods_supported":["S256"]}"#,
        );
        let s = full.login_support();
        assert_eq!(
            (s.check(LoginFlow::Device), s.check(LoginFlow::Browser)),
            (Ok(()), Ok(()))
        );
        assert!(s.refresh && s.revocation);

        // No device endpoint, no revocation; grants not listed: the OIDC defaults apply.
        let minimal = metadata(
            r#"{"issuer":"https://idp","token_endpoint":"https://idp/token","authorization_endpoint":"https://idp/auth"}"#,
        );
        let s = minimal.login_support();
        assert!(
            s.device
                .unwrap_err()
                .to_string()
                .contains("device_authorization_endpoint")
        );
        assert_eq!(
            s.browser,
            Ok(()),
            "PKCE support not published is given the benefit of the doubt"
        );
        assert!(s.refresh && !s.revocation);

        // The endpoints are there but the grants are not listed; PKCE without S256.
        let refused = metadata(
            r#"{"issuer":"https://idp","token_endpoint":"https://idp/token",
                "authorization_endpoint":"https://idp/auth","device_authorization_endpoint":"https://idp/device",
                "grant_types_supported":["client_credentials"],"code_challenge_methods_supported":["plain"]}"#,
        );
        let s = refused.login_support();
        assert!(s.device.unwrap_err().to_string().contains("device_code"));
        assert!(s.browser.unwrap_err().to_string().contains("authorization_code"));
        assert!(!s.refresh);
        let plain_only = metadata(
            r#"{"issuer":"https://idp","authorization_endpoint":"https://idp/auth",
                "code_challenge_methods_supported":["plain"]}"#,
        );
        assert_eq!(plain_only.login_support().browser, Err(FlowUnsupported::NoS256));
    }
}
