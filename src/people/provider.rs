//! The provider as sign-in and sessions need it: one narrow trait over the login grants of
//! [`ProviderClient`] (device authorization and polling, the authorization URL, code redemption,
//! refresh, revocation), with the `[[login]]`'s client filled in, so the flows and the refresher
//! can be tested against a scripted provider.

use std::future::Future;
use std::pin::Pin;

use crate::config::LoginSettings;
use crate::error::ProviderError;
use crate::token::Secret;
use crate::upstream::{DeviceAuthorization, DevicePoll, LoginSupport, Pkce, ProviderClient, SessionGrant};

/// A boxed future of a provider answer.
pub(crate) type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// The login grants, as one `[[login]]`'s client performs them.
pub(crate) trait LoginProvider: Send + Sync + 'static {
    /// Which sign-in flows (and revocation) the provider's discovery document offers.
    fn support(&self) -> Answer<'_, LoginSupport>;
    /// Starts a device sign-in (RFC 8628).
    fn device_authorization<'a>(&'a self, login: &'a LoginSettings) -> Answer<'a, DeviceAuthorization>;
    /// Polls the token endpoint once for a device code.
    fn poll_device<'a>(&'a self, login: &'a LoginSettings, device_code: &'a Secret) -> Answer<'a, DevicePoll>;
    /// The URL that starts a browser sign-in (code + PKCE S256).
    fn authorization_url<'a>(
        &'a self,
        login: &'a LoginSettings,
        redirect_uri: &'a str,
        state: &'a str,
        nonce: &'a str,
        pkce: &'a Pkce,
    ) -> Answer<'a, String>;
    /// Redeems an authorization code with the verifier; the ID token is validated with `nonce`.
    fn redeem_code<'a>(
        &'a self,
        login: &'a LoginSettings,
        code: &'a str,
        redirect_uri: &'a str,
        pkce: &'a Pkce,
        nonce: &'a str,
    ) -> Answer<'a, SessionGrant>;
    /// Refreshes the session of the person `sub` (an ID token naming another is refused).
    fn refresh<'a>(
        &'a self,
        login: &'a LoginSettings,
        refresh_token: &'a Secret,
        sub: &'a str,
    ) -> Answer<'a, SessionGrant>;
    /// Revokes a refresh token (RFC 7009); `false` when the provider offers no revocation.
    fn revoke<'a>(&'a self, login: &'a LoginSettings, refresh_token: &'a Secret) -> Answer<'a, bool>;
}

impl LoginProvider for ProviderClient {
    fn support(&self) -> Answer<'_, LoginSupport> {
        Box::pin(async move { Ok(self.login_metadata().await?.login_support()) })
    }
    fn device_authorization<'a>(&'a self, login: &'a LoginSettings) -> Answer<'a, DeviceAuthorization> {
        Box::pin(ProviderClient::device_authorization(
            self,
            &login.client_id,
            &login.client_auth,
            &login.scopes,
        ))
    }
    fn poll_device<'a>(&'a self, login: &'a LoginSettings, device_code: &'a Secret) -> Answer<'a, DevicePoll> {
        Box::pin(ProviderClient::poll_device(
            self,
            &login.client_id,
            &login.client_auth,
            device_code,
        ))
    }
    fn authorization_url<'a>(
        &'a self,
        login: &'a LoginSettings,
        redirect_uri: &'a str,
        state: &'a str,
        nonce: &'a str,
        pkce: &'a Pkce,
    ) -> Answer<'a, String> {
        Box::pin(ProviderClient::authorization_url(
            self,
            &login.client_id,
            redirect_uri,
            &login.scopes,
            state,
            nonce,
            pkce,
        ))
    }
    fn redeem_code<'a>(
        &'a self,
        login: &'a LoginSettings,
        code: &'a str,
        redirect_uri: &'a str,
        pkce: &'a Pkce,
        nonce: &'a str,
    ) -> Answer<'a, SessionGrant> {
        Box::pin(ProviderClient::redeem_code(
            self,
            &login.client_id,
            &login.client_auth,
            code,
            redirect_uri,
            pkce,
            nonce,
        ))
    }
    fn refresh<'a>(
        &'a self,
        login: &'a LoginSettings,
        refresh_token: &'a Secret,
        sub: &'a str,
    ) -> Answer<'a, SessionGrant> {
        Box::pin(ProviderClient::refresh_session(
            self,
            &login.client_id,
            &login.client_auth,
            refresh_token,
            &login.scopes,
            sub,
        ))
    }
    fn revoke<'a>(&'a self, login: &'a LoginSettings, refresh_token: &'a Secret) -> Answer<'a, bool> {
        Box::pin(ProviderClient::revoke_refresh_token(
            self,
            &login.client_id,
            &login.client_auth,
            refresh_token,
        ))
    }
}
