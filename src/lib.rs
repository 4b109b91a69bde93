//! cortexid: a per-node workload identity agent.
//!
//! It exchanges the credentials it holds at an OpenID Connect provider for short-lived, scoped
//! tokens (RFC 8693 token exchange or client credentials) and serves them over a Unix socket to
//! the local callers its roles allow, renewing them before they expire and auditing every token.
//!
//! Data flows one way: request ([`server`]) → caller ([`caller`]) → policy ([`policy`]) →
//! cache ([`cache`]) → provider ([`provider`]) → cache → audit ([`audit`]) → response.

// Unsafe code is denied everywhere; the one exception (adopting the socket systemd passes as fd 3)
// is allowed on that function alone, with its reasons.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod audit;
pub mod cache;
pub mod caller;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod devidp;
pub mod doctor;
pub mod error;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod provider;
pub mod ratelimit;
pub mod server;
pub mod sink;
pub mod systemd;
pub mod token;
pub mod trust;
