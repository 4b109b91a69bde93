//! Keeping a session alive and ending it: the refresh grant (RFC 6749 section 6), whose ID token
//! must name the same person, and revocation of the refresh token (RFC 7009); and a probe that
//! tells whether the provider accepts a login client at all (for `cortexid doctor`).

use crate::config::ClientAuth;
use crate::error::ProviderError;
use crate::oauth::GRANT_REFRESH_TOKEN;
use crate::token::Secret;

use super::client::ProviderClient;
use super::code::random_urlsafe;
use super::id_token::IdTokenCheck;
use super::session::{SessionGrant, Step};

impl ProviderClient {
    /// Refreshes a session. `scopes` may be empty to keep the scopes of the sign-in; `sub` is
    /// the session's person, which a returned ID token must still name. A provider that rotates
    /// refresh tokens returns a new one in [`SessionGrant::refresh_token`]; the old one is then
    /// spent. `invalid_grant` (see [`ProviderError::provider_code`]) means the session is over.
    pub async fn refresh_session(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        refresh_token: &Secret,
        scopes: &[String],
        sub: &str,
    ) -> Result<SessionGrant, ProviderError> {
        let meta = self.login_metadata().await?;
        let mut form = vec![
            ("grant_type", GRANT_REFRESH_TOKEN.to_string()),
            ("refresh_token", refresh_token.expose().to_string()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let answer = self
            .post_as(client_id, auth, &meta.token_endpoint, &meta, form, Step::Refresh)
            .await?;
        if answer.status != 200 {
            return Err(self.people_error(client_id, auth, &answer, Step::Refresh));
        }
        let check = IdTokenCheck {
            client_id,
            nonce: None,
            sub: Some(sub),
        };
        self.session_grant(&answer, &meta, &check, false).await
    }

    /// Revokes a refresh token (RFC 7009), which at most providers ends the whole grant.
    /// `Ok(false)` when the provider publishes no revocation endpoint (nothing was sent).
    pub async fn revoke_refresh_token(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        refresh_token: &Secret,
    ) -> Result<bool, ProviderError> {
        let meta = self.login_metadata().await?;
        let Some(url) = meta.revocation_endpoint.clone() else {
            return Ok(false);
        };
        let form = vec![
            ("token", refresh_token.expose().to_string()),
            ("token_type_hint", "refresh_token".to_string()),
        ];
        let answer = self
            .post_as(client_id, auth, &url, &meta, form, Step::Revocation)
            .await?;
        if answer.status == 200 {
            return Ok(true);
        }
        Err(self.people_error(client_id, auth, &answer, Step::Revocation))
    }

    /// Whether the provider accepts the login client, without anyone signing in: a refresh
    /// with a refresh token that was never issued. `invalid_grant` means the client was
    /// authenticated and may refresh (`Ok`); `invalid_client` or `unauthorized_client` come back
    /// as the error that says what to register. Nothing is issued; the provider sees one
    /// refused refresh.
    pub async fn probe_login_client(&self, client_id: &str, auth: &ClientAuth) -> Result<(), ProviderError> {
        let meta = self.login_metadata().await?;
        let form = vec![
            ("grant_type", GRANT_REFRESH_TOKEN.to_string()),
            (
                "refresh_token",
                format!("cortexid-doctor-probe-{}", random_urlsafe(16)?),
            ),
        ];
        let answer = self
            .post_as(client_id, auth, &meta.token_endpoint, &meta, form, Step::Refresh)
            .await?;
        if answer.status == 400 && Self::oauth_error_code(&answer.body).is_some_and(|(c, _)| c == "invalid_grant") {
            return Ok(());
        }
        Err(self.people_error(client_id, auth, &answer, Step::Refresh))
    }
}
