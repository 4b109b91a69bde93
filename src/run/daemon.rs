//! The agent process: bind the socket, serve, tell systemd, reload on SIGHUP, stop on SIGTERM.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, load_config};
use crate::config::Config;
use crate::run::systemd::{Notifier, monotonic_usec};
use crate::run::{ReloadError, StartError};

/// A started agent: serving on its socket until [`RunningAgent::shutdown`].
pub struct RunningAgent {
    pub agent: Arc<Agent>,
    pub socket: PathBuf,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    notifier: Notifier,
    /// The socket came from systemd (socket activation): systemd removes it, not the agent.
    activated: bool,
    /// Stops the current set of sink tasks (replaced at each reload).
    sinks: std::sync::Mutex<CancellationToken>,
}

/// Binds the agent's socket: creates its directory, refuses to steal a socket another agent is
/// serving, removes a stale one, and sets mode and group.
///
/// The socket is bound, given its mode and group inside a fresh private directory (0700, next to
/// the final path), then renamed into place: nothing another user does to the path while the
/// socket is being prepared can redirect the `chmod` or `chown` to another file.
pub(crate) fn bind_socket(config: &Config) -> Result<UnixListener, StartError> {
    let a = &config.agent;
    let path = &a.socket;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::SocketDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    crate::files::check_private_dir(dir).map_err(|source| StartError::UnsafeSocketDir {
        path: path.clone(),
        source,
    })?;
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::SocketInUse { path: path.clone() });
        }
        std::fs::remove_file(path).map_err(|source| StartError::StaleSocket {
            path: path.clone(),
            source,
        })?;
    }
    let private = dir.join(format!(".cortexid-bind-{:016x}", fastrand::u64(..)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| StartError::SocketDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    let result = bind_private(&private, path, a.socket_mode, a.socket_group);
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Binds in `private` (a directory only this process can enter), sets mode and group there, and
/// renames the socket to `path`.
fn bind_private(private: &Path, path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, StartError> {
    let staged = private.join("agent.sock");
    let listener = UnixListener::bind(&staged).map_err(|source| StartError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        StartError::SocketMode {
            path: path.to_path_buf(),
            source,
        }
    })?;
    if let Some(gid) = group {
        nix::unistd::chown(&staged, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|source| {
            StartError::SocketGroup {
                path: path.to_path_buf(),
                gid,
                source,
            }
        })?;
    }
    std::fs::rename(&staged, path).map_err(|source| StartError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(listener)
}

fn summary(config: &Config) -> String {
    format!(
        "serving {} identities of {} providers on {}",
        config.identities.len(),
        config.providers.len(),
        config.agent.socket.display()
    )
}

/// Starts an agent for a validated configuration, on its own socket.
pub async fn start(config: Config, notifier: Notifier) -> Result<RunningAgent, StartError> {
    start_with(config, notifier, None).await
}

/// Starts an agent; `activated` is a listening socket passed by systemd (`LISTEN_FDS`), served
/// instead of binding `agent.socket`.
pub(crate) async fn start_with(
    config: Config,
    notifier: Notifier,
    activated: Option<std::os::unix::net::UnixListener>,
) -> Result<RunningAgent, StartError> {
    let cancel = CancellationToken::new();
    let is_activated = activated.is_some();
    let listener = match activated {
        Some(l) => UnixListener::from_std(l).map_err(StartError::ActivatedSocket)?,
        None => bind_socket(&config)?,
    };
    let socket = match listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
    {
        Some(p) if is_activated => p,
        _ => config.agent.socket.clone(),
    };
    let status = summary(&config);
    let config_path = config.path.clone();
    let state = match &config.agent.state_dir {
        Some(dir) => Some(Arc::new(crate::state::StateStore::open(
            dir,
            config.agent.state_key_file.as_ref(),
        )?)),
        None => None,
    };
    let agent = Agent::new(config, state, cancel.clone())?;
    agent.resume_tokens(&cancel);
    let metrics = match agent.config().agent.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    let server = tokio::spawn(crate::api::server::serve(listener, agent.clone(), cancel.clone()));
    if let Some(l) = metrics {
        tokio::spawn(crate::api::server::serve_metrics(l, agent.clone(), cancel.clone()));
    }
    let sinks = cancel.child_token();
    crate::output::sink::spawn_all(&agent, agent.sink_board(), &agent.config().sinks, &sinks);
    agent.audit_best_effort(
        "agent.started",
        serde_json::json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "socket": socket}),
    );
    agent.audit_best_effort("config.loaded", serde_json::json!({"path": config_path}));
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent.warm_up().await;
            agent.set_ready();
        });
    }
    tokio::spawn(flush_denials(agent.clone(), cancel.clone()));
    crate::trim::start(cancel.clone());
    // The listener is bound and the accept loop runs: the socket answers.
    notifier.notify(&format!("READY=1\nSTATUS={status}"));
    tracing::info!(socket = %socket.display(), "{status}");
    if let Some(interval) = notifier.watchdog() {
        let counted = agent.clone();
        tokio::spawn(crate::run::watchdog::run(
            notifier.clone(),
            socket.clone(),
            interval,
            move || counted.accepted(),
            cancel.clone(),
        ));
    }
    Ok(RunningAgent {
        agent,
        socket,
        cancel,
        server,
        notifier,
        activated: is_activated,
        sinks: std::sync::Mutex::new(sinks),
    })
}

impl RunningAgent {
    /// Reloads the configuration from `path`. An invalid one is rejected (logged and audited) and
    /// the running one stays.
    pub fn reload(&self, path: &Path) -> Result<(), ReloadError> {
        self.notifier
            .notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        self.agent.reopen_audit();
        let result = match load_config(path) {
            Ok(config) => {
                let status = summary(&config);
                self.agent.apply(config).map_err(ReloadError::from).map(|()| {
                    let fresh = self.cancel.child_token();
                    let old = std::mem::replace(
                        &mut *self.sinks.lock().unwrap_or_else(|p| p.into_inner()),
                        fresh.clone(),
                    );
                    old.cancel();
                    crate::output::sink::spawn_all(
                        &self.agent,
                        self.agent.sink_board(),
                        &self.agent.config().sinks,
                        &fresh,
                    );
                    status
                })
            }
            Err(e) => Err(ReloadError::from(e)),
        };

        match result {
            Ok(status) => {
                tracing::info!(path = %path.display(), "configuration reloaded");
                self.agent
                    .audit_best_effort("config.loaded", serde_json::json!({"path": path}));
                self.notifier.notify(&format!("READY=1\nSTATUS={status}"));
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "configuration rejected; the running one stays:\n{e}");
                self.agent.audit_best_effort(
                    "config.rejected",
                    serde_json::json!({"path": path, "reason": e.to_string()}),
                );
                self.notifier
                    .notify("READY=1\nSTATUS=configuration rejected at reload; running the previous one");
                Err(e)
            }
        }
    }

    /// Stops accepting, lets in-flight requests finish (at most 10 s), removes the socket.
    pub async fn shutdown(self) {
        self.notifier.notify("STOPPING=1");
        self.agent.flush_denials(true);
        self.agent
            .audit_best_effort("agent.stopping", serde_json::json!({"pid": std::process::id()}));
        self.cancel.cancel();
        let _ = self.server.await;
        self.agent.save_tokens();
        if !self.activated {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Writes the collapsed denials whose window has passed, until `cancel`.
async fn flush_denials(agent: Arc<Agent>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::output::denials::DENIAL_WINDOW) => agent.flush_denials(false),
            _ = cancel.cancelled() => return,
        }
    }
}

/// Keeps tokens and secrets out of core dumps and away from same-uid `ptrace`/`/proc/<pid>/mem`:
/// marks the process not dumpable (`PR_SET_DUMPABLE` 0). Its `/proc/<pid>` files then belong to
/// root. Called first thing by `cortexid agent`.
pub(crate) fn disable_core_dumps() -> Result<(), StartError> {
    nix::sys::prctl::set_dumpable(false).map_err(StartError::CoreDumps)
}

/// `cortexid agent`: runs until SIGTERM or SIGINT; SIGHUP reloads. Returns the exit code.
pub async fn run(config_path: PathBuf, notifier: Notifier, activated: Option<std::os::unix::net::UnixListener>) -> i32 {
    if let Err(e) = disable_core_dumps() {
        eprintln!("cortexid: {e}");
        return 1;
    }
    let config = match load_config(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cortexid: invalid configuration, not starting:\n{e}");
            return 64;
        }
    };
    crate::run::logging::init(config.agent.log_format, crate::run::logging::stderr_is_journal());
    // Before READY=1: a reload or stop sent the moment systemd hears READY=1 must not meet the
    // signals' default action (which ends the process).
    use tokio::signal::unix::{SignalKind, signal};
    let (mut hup, mut term, mut int) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(h), Ok(t), Ok(i)) => (h, t, i),
        _ => {
            eprintln!("cortexid: cannot install signal handlers");
            return 1;
        }
    };
    let running = match start_with(config, notifier, activated).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("cortexid: cannot start: {e}");
            return 1;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => { let _ = running.reload(&config_path); }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    running.shutdown().await;
    0
}
