//! Why the agent could not start, or refused a reload. Each variant's message says what to change.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::ConfigError;
use crate::upstream::ProviderSetupError;

/// Why the agent could not start. Each variant's message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid (every problem, with file, line and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The provider clients could not be made (usually an unreadable `ca_file`).
    #[error(transparent)]
    Providers(#[from] ProviderSetupError),
    /// The socket's directory does not exist and could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    SocketDir { dir: PathBuf, source: std::io::Error },
    /// Another user could replace the socket: its directory, or one above it, is not root's or
    /// the agent's alone.
    #[error("the socket {}: {source}", path.display())]
    UnsafeSocketDir {
        path: PathBuf,
        #[source]
        source: crate::files::UnsafePath,
    },
    /// Another process already answers on the socket path.
    #[error("another agent is already serving {}; stop it or choose another agent.socket", path.display())]
    SocketInUse { path: PathBuf },
    /// A socket file nobody serves could not be removed.
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    StaleSocket { path: PathBuf, source: std::io::Error },
    /// `bind(2)` on the socket path failed.
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: std::io::Error },
    /// The socket's mode (`socket_mode`) could not be set.
    #[error("cannot set the mode of {}: {source}", path.display())]
    SocketMode { path: PathBuf, source: std::io::Error },
    /// The socket could not be given to `socket_group`.
    #[error("cannot give {} to group {gid}: {source}", path.display())]
    SocketGroup {
        path: PathBuf,
        gid: u32,
        source: nix::Error,
    },
    /// The socket systemd passed (`LISTEN_FDS`) cannot be served.
    #[error("cannot serve the socket systemd passed: {0}")]
    ActivatedSocket(std::io::Error),
    /// `metrics_listen` could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen { addr: SocketAddr, source: std::io::Error },
    /// `state_dir` or its key cannot be used.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The process could not be made undumpable (core dumps would hold tokens).
    #[error("cannot disable core dumps (PR_SET_DUMPABLE): {0}")]
    CoreDumps(nix::Error),
}

/// Why a reload was refused; the running configuration stays in place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new configuration is invalid (every problem, with file, line and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new configuration's provider clients could not be made.
    #[error(transparent)]
    Providers(#[from] ProviderSetupError),
}
