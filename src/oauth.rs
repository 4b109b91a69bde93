//! The OAuth 2.0 and OpenID Connect names cortexid speaks, defined once: grant types, token
//! types, the client assertion type, and the signature algorithms it accepts on JWTs.

use jsonwebtoken::Algorithm;

/// `grant_type` of RFC 8693 token exchange.
pub(crate) const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of the client credentials grant (RFC 6749 section 4.4).
pub(crate) const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

/// `grant_type` of the RFC 8628 device authorization grant.
pub(crate) const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// `grant_type` of the authorization code grant (RFC 6749 section 4.1).
pub(crate) const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
/// `grant_type` of a refresh (RFC 6749 section 6).
pub(crate) const GRANT_REFRESH_TOKEN: &str = "refresh_token";

/// RFC 8693 token type of a JWT (the default subject and actor token type).
pub(crate) const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type of an access token (the default requested token type).
pub(crate) const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of an ID token.
pub(crate) const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// RFC 7523 `client_assertion_type` of `private_key_jwt` client authentication.
pub(crate) const CLIENT_ASSERTION_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `token_type` of every token cortexid hands out.
pub(crate) const TOKEN_TYPE_BEARER: &str = "Bearer";

/// Signature algorithms accepted on JWTs (issued tokens and presented credentials): the
/// asymmetric ones only, so a public key can never be used as an HMAC secret.
pub(crate) const ALLOWED_ALGS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];
