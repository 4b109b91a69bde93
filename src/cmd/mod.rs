//! The command line's work, one module per subcommand, each with a `run` that returns the exit
//! code (`src/main.rs` only parses and dispatches; `cortexid agent` is [`crate::run::daemon`]):
//!
//! - [`token`]: ask the running agent for a token and print it (`token/format.rs`: the output
//!   formats raw, json, k8s, google, header);
//! - [`identities`]: what this caller may request, as a table;
//! - [`status`]: the agent's health, providers and cached tokens (never token values);
//! - [`doctor`]: connect to each provider as the agent would, and say what to fix;
//! - [`check_config`]: parse and validate a configuration without starting;
//! - [`keygen`]: create a private key for `private_key_jwt` and print its public JWK;
//! - [`dev`]: a development provider and an agent for it in one process;
//! - [`people`]: `login`, `logout` and `whoami`: a person's sessions at the agent;
//! - `common.rs`: what they share: the exit codes (`EXIT_OK` 0, [`EXIT_FAILURE`] 1, [`EXIT_USAGE`]
//!   2), `--socket`, reading the agent's error answers, writing to stdout;
//! - [`client`]: the client of the agent's socket API that `token`, `identities` and `status`
//!   use (and the daemon's watchdog, and the tests).

pub mod check_config;
pub mod client;
mod common;
pub mod dev;
pub mod doctor;
pub mod identities;
pub mod keygen;
pub mod people;
pub mod status;
pub mod token;

pub use common::{EXIT_FAILURE, EXIT_USAGE};
