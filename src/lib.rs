//! cortexid: a per-node workload identity agent.
//!
//! It exchanges the credentials it holds at an OpenID Connect provider for short-lived, scoped
//! tokens (RFC 8693 token exchange or client credentials) and serves them over a Unix socket to
//! the local callers its roles allow, renewing them before they expire and auditing every token.
//!
//! Data flows one way, and the folders follow it: request ([`api`]) → caller ([`caller`]) →
//! policy ([`policy`]) → the request path ([`agent`]) → cache ([`cache`]) → provider
//! ([`upstream`]) → cache → audit ([`output`]) → response. Around it: configuration ([`config`]),
//! the secret files it names ([`secrets`]), state kept across restarts ([`state`]), the daemon's
//! lifecycle ([`run`]), the command line ([`cmd`]) and the development provider ([`devidp`]). `docs/ARCHITECTURE.md` walks a request
//! through them.

// Unsafe code is denied everywhere; the one exception (adopting the socket systemd passes as fd 3)
// is allowed on that function alone, with its reasons.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod api;
pub mod cache;
pub mod caller;
pub mod cmd;
pub mod config;
pub mod devidp;
pub mod error;
pub mod files;
pub(crate) mod oauth;
pub mod output;
pub mod people;
pub(crate) mod policy;
pub mod run;
pub mod secrets;
pub mod state;
pub mod token;
pub mod trim;
pub mod upstream;
