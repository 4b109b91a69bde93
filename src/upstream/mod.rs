//! Everything that talks to an OpenID Connect provider: discovery, JWKS, client authentication
//! and the grants ([`provider`]), and the signing keys of `private_key_jwt` ([`keys`]).

pub mod keys;
pub mod provider;
