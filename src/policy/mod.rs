//! Policy: which roles a caller matches and what they allow ([`roles`]: caller + claims →
//! identities, audiences, scopes), per-process request rates ([`ratelimit`]), and the issuers
//! whose presented credentials are trusted ([`trust`]).

pub mod ratelimit;
mod roles;
pub mod trust;

pub use roles::{Ask, Grant, IdentityView, authorize, identities_for, matching_roles, parse_scopes};
