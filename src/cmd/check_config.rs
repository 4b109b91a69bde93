//! `cortexid check-config`: parse and validate a configuration without starting, and print every
//! problem with its line.

use std::path::PathBuf;

use crate::cmd::common::{EXIT_FAILURE, EXIT_OK};
use crate::config;

#[derive(clap::Args, Debug, Clone)]
pub struct CheckConfigArgs {
    #[arg(long, env = "CORTEXID_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
}

/// `cortexid check-config`: a one-line summary on stdout when the configuration is valid, else
/// every problem on stderr.
pub fn run(args: CheckConfigArgs) -> i32 {
    let path = &args.config;
    match config::load(path, &config::SystemContext) {
        Ok(c) => {
            println!(
                "{}: ok ({} providers, {} identities, {} roles, {} sinks)",
                path.display(),
                c.providers.len(),
                c.identities.len(),
                c.roles.len(),
                c.sinks.len()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_FAILURE
        }
    }
}
