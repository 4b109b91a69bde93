//! The `cortexid` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cortexid::cmd::{dev, doctor, identities, status, token};
use cortexid::config;
use cortexid::run::{daemon, systemd};
use cortexid::upstream::keys;

#[derive(Parser)]
#[command(
    name = "cortexid",
    version,
    about = "A per-node workload identity agent: scoped, short-lived tokens over a Unix socket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the daemon).
    Agent {
        /// Configuration file [default: $CORTEXID_CONFIG, else /etc/cortexid/cortexid.toml]
        #[arg(long, env = "CORTEXID_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Run a development provider and an agent for it in one process (never for production).
    Dev {
        /// Where the generated config, credentials and socket go [default: a new temporary directory]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Ask the running agent for a token.
    Token(token::TokenArgs),
    /// List what this caller may request.
    Identities(identities::IdentitiesArgs),
    /// Show the agent's health, providers and cached tokens (never token values).
    Status(status::StatusArgs),
    /// Connect to each provider as the agent would and report, step by step, what works and
    /// how to fix what does not (never prints a token).
    Doctor {
        #[arg(long, env = "CORTEXID_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Check only this identity
        #[arg(long)]
        identity: Option<String>,
    },
    /// Parse and validate a configuration without starting.
    CheckConfig {
        #[arg(long, env = "CORTEXID_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Create a private key for private_key_jwt and print its public JWK.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600)
        #[arg(long)]
        out: PathBuf,
        /// ES256, EdDSA or RS256
        #[arg(long, default_value = "ES256")]
        alg: keys::KeyAlg,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn check_config(path: &std::path::Path) -> i32 {
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
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn keygen(out: &std::path::Path, alg: keys::KeyAlg) -> i32 {
    let result = keys::SigningKey::generate(alg).and_then(|k| keys::write_key_file(out, &k).map(|()| k));
    match result {
        Ok(key) => {
            let jwk = serde_json::to_string_pretty(key.public_jwk()).unwrap_or_default();
            println!("{jwk}");
            eprintln!(
                "private key written to {} (mode 0600); register the public JWK above at the provider",
                out.display()
            );
            0
        }
        Err(e) => {
            eprintln!("cortexid keygen: {e}");
            1
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Keygen { out, alg } => keygen(&out, alg),
        command => match runtime() {
            Ok(rt) => rt.block_on(async move {
                match command {
                    Command::Agent { config } => match systemd::listener_from_env() {
                        Ok(activated) => daemon::run(config, systemd::Notifier::from_env(), activated).await,
                        Err(e) => {
                            eprintln!("cortexid: {e}");
                            1
                        }
                    },
                    Command::Dev { dir } => {
                        let mut uids = vec![nix::unistd::getuid().as_raw()];
                        // Under sudo, the person who typed the command may ask too.
                        if let Some(uid) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
                            uids.push(uid);
                        }
                        dev::run(dir, uids, systemd::Notifier::from_env()).await
                    }
                    Command::Token(args) => token::run(args).await,
                    Command::Identities(args) => identities::run(args).await,
                    Command::Status(args) => status::run(args).await,
                    Command::Doctor { config, identity } => doctor::run(&config, identity.as_deref()).await,
                    Command::CheckConfig { .. } | Command::Keygen { .. } => 2,
                }
            }),
            Err(e) => {
                eprintln!("cortexid: cannot start the async runtime: {e}");
                1
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
