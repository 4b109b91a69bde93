//! Policy: which roles a caller matches and what they allow ([`roles`]: caller + claims →
//! identities, audiences, scopes; the pod conditions in [`pod`]), per-process request rates ([`ratelimit`]), and the issuers
//! whose presented credentials are trusted ([`trust`]).

mod executable;
mod login;
mod pod;
pub(crate) mod ratelimit;
mod roles;
pub mod trust;

pub(crate) use login::{SessionNeed, Sessions, person_refusal};
pub use roles::Ask;
pub use roles::IdentityView;
pub(crate) use roles::{authorize_with, could_admit, identities_for, is_operator, matching_roles, parse_scopes};
