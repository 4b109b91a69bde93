//! `cortexid-agent`: the whole `cortexid` command line, a thin layer over the library. The
//! `cortexid` people type (`src/main.rs`) answers `cortexid token` itself and `exec`s this one,
//! installed next to it, for everything else; systemd and the container run it directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cortexid::cmd::{EXIT_FAILURE, EXIT_USAGE, check_config, dev, doctor, identities, keygen, people, status, token};
use cortexid::config;
use cortexid::run::{daemon, systemd};

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
    Doctor(doctor::DoctorArgs),
    /// Parse and validate a configuration without starting.
    CheckConfig(check_config::CheckConfigArgs),
    /// Create a private key for private_key_jwt and print its public JWK.
    Keygen(keygen::KeygenArgs),
    /// Sign in once at a [[login]]; your tools then get tokens from the agent.
    Login(people::LoginArgs),
    /// End your session(s), revoking them at the provider when it offers revocation.
    Logout(people::LogoutArgs),
    /// Show how the agent sees you: uid, executable, unit, sessions and matching roles.
    Whoami(people::WhoamiArgs),
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn main() -> ExitCode {
    // The common `token` command line is read by hand, before clap builds its whole tree.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = cortexid::cmd::client::fast::token(&args) {
        return exit_code(code);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::CheckConfig(args) => check_config::run(args),
        Command::Keygen(args) => keygen::run(args),
        // Blocking, without a runtime: it runs once per token, so its start-up is its cost.
        Command::Token(args) => token::run(args),
        command => match runtime() {
            Ok(rt) => rt.block_on(async move {
                match command {
                    Command::Agent { config } => match systemd::listener_from_env() {
                        Ok(activated) => daemon::run(config, systemd::Notifier::from_env(), activated).await,
                        Err(e) => {
                            eprintln!("cortexid: {e}");
                            EXIT_FAILURE
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
                    Command::Identities(args) => identities::run(args).await,
                    Command::Status(args) => status::run(args).await,
                    Command::Doctor(args) => doctor::run(args).await,
                    Command::Login(args) => people::login(args).await,
                    Command::Logout(args) => people::logout(args).await,
                    Command::Whoami(args) => people::whoami(args).await,
                    Command::CheckConfig(_) | Command::Keygen(_) | Command::Token(_) => EXIT_USAGE,
                }
            }),
            Err(e) => {
                eprintln!("cortexid: cannot start the async runtime: {e}");
                EXIT_FAILURE
            }
        },
    };
    exit_code(code)
}

/// An exit code outside 0..=255 cannot be passed on: report it as a failure.
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
