//! The browser sign-in: authorization code with PKCE S256 (RFC 7636) and a loopback redirect
//! (RFC 8252). The agent builds the authorization URL (state, nonce, challenge) and later
//! redeems the code with the verifier, which never leaves it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::ClientAuth;
use crate::error::ProviderError;
use crate::oauth::GRANT_AUTHORIZATION_CODE;
use crate::token::Secret;

use super::client::ProviderClient;
use super::id_token::IdTokenCheck;
use super::session::{SessionGrant, Step};

/// `bytes` random bytes, base64url without padding: for `state`, `nonce` and PKCE verifiers.
pub fn random_urlsafe(bytes: usize) -> Result<String, ProviderError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| ProviderError::local("no randomness for a sign-in"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A PKCE pair (RFC 7636): the verifier stays in the agent, the S256 challenge goes into the
/// authorization URL. `Debug` shows only the challenge.
pub struct Pkce {
    verifier: Secret,
    pub challenge: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

impl Pkce {
    /// A fresh verifier of 32 random bytes (43 characters) and its S256 challenge.
    pub fn generate() -> Result<Pkce, ProviderError> {
        let verifier = random_urlsafe(32)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        Ok(Pkce {
            challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            verifier: Secret::new(verifier),
        })
    }
}

impl ProviderClient {
    /// The URL a person's browser opens to sign in: `response_type=code`, the login client,
    /// `redirect_uri`, `scope`, `state`, `nonce`, the S256 challenge, and `prompt=consent` when
    /// the scopes ask for `offline_access` (OpenID Connect Core section 11; without it some
    /// providers, oidc-provider among them, drop `offline_access` and give no refresh token).
    pub async fn authorization_url(
        &self,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        state: &str,
        nonce: &str,
        pkce: &Pkce,
    ) -> Result<String, ProviderError> {
        let name = &self.settings.name;
        let meta = self.login_metadata().await?;
        let endpoint = meta.authorization_endpoint.as_deref().ok_or_else(|| {
            ProviderError::bad_response(format!(
                "provider {name:?} offers no authorization_endpoint in its discovery document; use the device flow"
            ))
        })?;
        let mut url = url::Url::parse(endpoint).map_err(|e| {
            ProviderError::bad_response(format!(
                "provider {name:?}: authorization_endpoint {endpoint:?} is not a URL: {e}"
            ))
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", &pkce.challenge)
                .append_pair("code_challenge_method", "S256");
            if scopes.iter().any(|s| s == "offline_access") {
                q.append_pair("prompt", "consent");
            }
        }
        Ok(url.into())
    }

    /// Redeems an authorization code (RFC 6749 section 4.1.3) with the PKCE verifier, and
    /// validates the ID token, `nonce` included.
    pub async fn redeem_code(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        code: &str,
        redirect_uri: &str,
        pkce: &Pkce,
        nonce: &str,
    ) -> Result<SessionGrant, ProviderError> {
        let meta = self.login_metadata().await?;
        let form = vec![
            ("grant_type", GRANT_AUTHORIZATION_CODE.to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
            ("code_verifier", pkce.verifier.expose().to_string()),
        ];
        let answer = self
            .post_as(client_id, auth, &meta.token_endpoint, &meta, form, Step::Code)
            .await?;
        if answer.status != 200 {
            return Err(self.people_error(client_id, auth, &answer, Step::Code));
        }
        let check = IdTokenCheck {
            client_id,
            nonce: Some(nonce),
            sub: None,
        };
        self.session_grant(&answer, &meta, &check, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_s256_of_a_43_character_verifier_and_never_shows_it() {
        let p = Pkce::generate().unwrap();
        let v = p.verifier.expose().to_string();
        assert_eq!(v.len(), 43);
        assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.as_bytes());
        assert_eq!(p.challenge, URL_SAFE_NO_PAD.encode(digest.as_ref()));
        assert!(!format!("{p:?}").contains(&v));
        assert_ne!(Pkce::generate().unwrap().challenge, p.challenge);
        // RFC 7636 appendix B.
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(digest.as_ref()),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
