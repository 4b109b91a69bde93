//! `cortexid doctor`: connect to each provider as the agent would and report, step by step,
//! what works and, for what does not, its likely cause and the fix. Never prints a token or a
//! secret: only the decoded claims of what the provider issued.
//!
//! - this file: the arguments and the run: each provider, then each of its identities, then a
//!   summary;
//! - `provider.rs`: the checks of one provider (TLS trust, clock, discovery, client
//!   authentication);
//! - `login.rs`: the checks of one `[[login]]` (flows offered, client accepted, revocation);
//! - `identity.rs`: the checks of one identity (its credential files, the exchange, the claims of
//!   what was issued);
//! - `hints.rs`: the likely cause and the fix for a failed request or exchange, from its error;
//! - `report.rs`: the report's `ok` / `FAIL` / `--` lines;
//! - `clock.rs`: this host's clock, the skew that counts as wrong, HTTP dates.

mod clock;
mod hints;
mod identity;
mod login;
mod provider;
mod report;

use std::path::PathBuf;
use std::sync::Arc;

use identity::Outcome;
use report::{fail, note};

use crate::cmd::common::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::config::IdentitySettings;
use crate::upstream::ProviderClient;

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    #[arg(long, env = "CORTEXID_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// Check only this identity
    #[arg(long)]
    pub(crate) identity: Option<String>,
}

/// Runs the checks for every identity (or only `--identity`) of the config at `--config`.
/// Returns the exit code: 0 only if every identity checked works, 2 for an unknown `--identity`,
/// else 1.
pub async fn run(args: DoctorArgs) -> i32 {
    let config_path = args.config.as_path();
    let identity = args.identity.as_deref();
    let config = match crate::config::load(config_path, &crate::config::SystemContext) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("cortexid doctor: fix the configuration first (cortexid check-config shows every problem)");
            return EXIT_FAILURE;
        }
    };
    let identities: Vec<Arc<IdentitySettings>> = match identity {
        Some(name) => match config.identity(name) {
            Some(i) => vec![i.clone()],
            None => {
                let known: Vec<&str> = config.identities.iter().map(|i| i.name.as_str()).collect();
                eprintln!(
                    "cortexid doctor: no identity {name:?} in {}; it has: {}",
                    config_path.display(),
                    known.join(", ")
                );
                return EXIT_USAGE;
            }
        },
        None => config.identities.clone(),
    };
    println!("cortexid doctor: {}", config_path.display());
    let mut working = 0;
    let mut failed = Vec::new();
    let mut unchecked = Vec::new();
    for provider in &config.providers {
        let mine: Vec<&Arc<IdentitySettings>> = identities.iter().filter(|i| i.provider == provider.name).collect();
        if mine.is_empty() && identity.is_some() {
            continue;
        }
        let reachable = provider::check_provider(&config, provider).await;
        let client = match ProviderClient::new(provider.clone(), config.agent.upstream_timeout) {
            Ok(c) => Some(c),
            Err(e) => {
                fail(
                    "provider client",
                    &e,
                    "the HTTPS client cannot be set up",
                    format!("fix ca_file of provider {:?}", provider.name),
                );
                None
            }
        };
        for id in mine {
            println!(
                "identity {:?} ({}, provider {:?})",
                id.name,
                id.grant.as_str(),
                provider.name
            );
            let outcome = match (&client, reachable) {
                (Some(client), Some(clock_ok)) => match identity::check_identity(client, provider, id).await {
                    Outcome::Works if !clock_ok => {
                        note("result", "the exchange worked, but the clock skew above must be fixed");
                        Outcome::Failed
                    }
                    other => other,
                },
                _ => {
                    note("exchange", "not attempted: the provider checks above failed");
                    Outcome::Failed
                }
            };
            match outcome {
                Outcome::Works => working += 1,
                Outcome::Failed => failed.push(id.name.clone()),
                Outcome::Unchecked => unchecked.push(id.name.clone()),
            }
        }
    }
    let mut logins_failing = Vec::new();
    if identity.is_none() {
        for login in &config.logins {
            if !login::check_login(&config, login).await {
                logins_failing.push(login.name.clone());
            }
        }
    }
    println!();
    if !config.logins.is_empty() && identity.is_none() {
        println!(
            "logins: {} of {} work{}",
            config.logins.len() - logins_failing.len(),
            config.logins.len(),
            if logins_failing.is_empty() {
                String::new()
            } else {
                format!(" (failing: {})", logins_failing.join(", "))
            }
        );
    }
    let total = working + failed.len() + unchecked.len();
    println!("summary: {working} of {total} identities work");
    if !unchecked.is_empty() {
        println!(
            "  not checked (subject = \"caller\" or \"login:NAME\": each caller brings its own credential or session): {}",
            unchecked.join(", ")
        );
    }
    if failed.is_empty() && logins_failing.is_empty() {
        EXIT_OK
    } else {
        println!("  failing: {}", failed.join(", "));
        EXIT_FAILURE
    }
}
