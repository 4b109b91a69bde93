//! Client authentication at the token endpoint: `client_secret_basic`, `client_secret_post`,
//! `private_key_jwt` (RFC 7523, a fresh signed assertion per request) and `none`. Secrets and
//! keys are read from their files for every request, so rotating them needs no restart.

use base64::Engine;
use zeroize::Zeroizing;

use crate::config::ClientAuth;
use crate::error::ProviderError;
use crate::oauth::CLIENT_ASSERTION_TYPE_JWT_BEARER;

use super::client::ProviderClient;
use super::http::unix_now;

impl ProviderClient {
    /// Adds this client's credentials to a token request: a header on `builder`, or members of
    /// `form`.
    pub(super) fn authenticate(
        &self,
        builder: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, String)>,
        token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let s = &self.settings;
        self.authenticate_as(&s.client_id, &s.client_auth, builder, form, token_endpoint)
    }

    /// Adds the credentials of another client of this provider (a `[[login]]`'s) to a request
    /// to one of its endpoints. A `private_key_jwt` assertion names `token_endpoint` as its
    /// audience, as RFC 7523 allows for every endpoint of the provider.
    pub(super) fn authenticate_as(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        mut builder: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, String)>,
        token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let s = &self.settings;
        match auth {
            ClientAuth::SecretBasic(file) => {
                let secret = file
                    .read()
                    .map_err(|e| ProviderError::local(format!("provider {:?}: client secret: {e}", s.name)))?;
                let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                let raw = Zeroizing::new(format!("{}:{}", enc(client_id), enc(&secret)));
                let value = Zeroizing::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
                ));
                builder = builder.header("Authorization", value.as_str());
            }
            ClientAuth::SecretPost(file) => {
                let secret = file
                    .read()
                    .map_err(|e| ProviderError::local(format!("provider {:?}: client secret: {e}", s.name)))?;
                form.push(("client_id", client_id.to_string()));
                form.push(("client_secret", secret.to_string()));
            }
            ClientAuth::PrivateKeyJwt { key, key_id } => {
                let pem = key
                    .read()
                    .map_err(|e| ProviderError::local(format!("provider {:?}: private key: {e}", s.name)))?;
                let signing = crate::upstream::keys::SigningKey::from_pem(&pem, key_id.as_deref()).map_err(|e| {
                    ProviderError::local(format!(
                        "provider {:?}: private key {}: {e}",
                        s.name,
                        key.path.display()
                    ))
                })?;
                let now = unix_now();
                let mut jti = [0u8; 16];
                aws_lc_rs::rand::fill(&mut jti)
                    .map_err(|_| ProviderError::local("no randomness for a client assertion"))?;
                let claims = serde_json::json!({
                    "iss": client_id, "sub": client_id, "aud": token_endpoint,
                    "iat": now, "exp": now + 60,
                    "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
                });
                let assertion = signing.sign(&claims).map_err(|e| {
                    ProviderError::local(format!("provider {:?}: cannot sign the client assertion: {e}", s.name))
                })?;
                form.push(("client_id", client_id.to_string()));
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER.into()));
                form.push(("client_assertion", assertion));
            }
            ClientAuth::None => form.push(("client_id", client_id.to_string())),
        }
        Ok(builder)
    }
}
