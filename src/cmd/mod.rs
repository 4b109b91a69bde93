//! The command line's work, one module per subcommand (`src/main.rs` only parses and dispatches):
//!
//! - [`token`]: ask the running agent for a token and print it (`token/format.rs`: the output
//!   formats raw, json, k8s, google, header);
//! - [`identities`]: what this caller may request, as a table;
//! - [`status`]: the agent's health, providers and cached tokens (never token values);
//! - [`doctor`]: connect to each provider as the agent would, and say what to fix;
//! - [`dev`]: a development provider and an agent for it in one process;
//! - `common.rs`: what they share: the exit codes ([`EXIT_OK`], [`EXIT_FAILURE`], [`EXIT_USAGE`]),
//!   `--socket`, reading the agent's error answers, writing to stdout;
//! - [`client`]: the client of the agent's socket API that `token`, `identities` and `status`
//!   use (and the daemon's watchdog, and the tests).

pub mod client;
mod common;
pub mod dev;
pub mod doctor;
pub mod identities;
pub mod status;
pub mod token;

pub use common::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
