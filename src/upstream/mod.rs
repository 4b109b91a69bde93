//! Everything that talks to an OpenID Connect provider, one file per step of the conversation:
//!
//! | file | owns |
//! | --- | --- |
//! | [`client`] | one provider: settings, HTTPS client, cached discovery and JWKS, reachability |
//! | [`http`] | the HTTPS client (system roots + `ca_file`, no redirects, timeouts) |
//! | [`discovery`] | `/.well-known/openid-configuration`, overridden by configured endpoints |
//! | [`client_auth`] | `client_secret_basic`, `client_secret_post`, `private_key_jwt`, `none` |
//! | [`grants`] | token exchange (RFC 8693) and client credentials: request, answer, refusals |
//! | [`device`] | people: the device authorization grant (RFC 8628) |
//! | [`code`] | people: authorization code with PKCE (RFC 7636) and a loopback redirect (RFC 8252) |
//! | [`refresh`] | people: refreshing a session, revoking its refresh token (RFC 7009) |
//! | [`session`] | what the people grants share: their answer, one POST, refusals as messages |
//! | [`id_token`] | validating an ID token (signature, `iss`, `aud`, `azp`, `exp`, `nonce`, `sub`) |
//! | [`jwks`] | JWK sets and the verification of issued JWTs |
//! | [`keys`] | signing keys for `private_key_jwt` (`cortexid keygen`) |

mod client;
mod client_auth;
mod code;
mod device;
mod discovery;
mod grants;
mod http;
mod id_token;
mod jwks;
pub mod keys;
mod refresh;
mod session;

pub use client::ProviderClient;
pub use client::ProviderSetupError;
pub(crate) use client::Providers;
pub use code::{Pkce, random_urlsafe};
pub use device::{DeviceAnswerError, DeviceAuthorization, DevicePoll, parse_device_authorization};
pub use discovery::{FlowUnsupported, LoginFlow, LoginSupport, Metadata, parse_discovery};
pub(crate) use grants::ExchangeRequest;
pub use grants::PresentedToken;
pub use grants::parse_token_answer;
pub(crate) use http::{chain as error_chain, http_client};
pub(crate) use jwks::KeySet;
pub use jwks::{decode_unverified, find_key, looks_like_jwt, parse_jwks};
pub use session::SessionGrant;

/// A provider's answer that cannot be used. The message completes "provider X …" or names the
/// document it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The token endpoint's 200 answer is not JSON of the expected shape.
    #[error("answered the token request with unusable JSON: {0}")]
    TokenAnswer(serde_json::Error),
    /// The token endpoint answered 200 without a token.
    #[error("answered 200 without an access_token")]
    NoAccessToken,
    /// The token holds characters outside visible ASCII (RFC 6749 appendix A.12).
    #[error("issued an access_token with characters outside visible ASCII; it is not served")]
    TokenCharacters,
    /// The token is not a Bearer token (for example a DPoP-bound one).
    #[error("issued a token of type {0:?}; only Bearer tokens can be served")]
    NotBearer(String),
    /// The discovery document is not JSON of the expected shape.
    #[error("not usable JSON: {0}")]
    Discovery(serde_json::Error),
    /// The JWKS is not a JWK set.
    #[error("not a JWK set: {0}")]
    Jwks(serde_json::Error),
}
