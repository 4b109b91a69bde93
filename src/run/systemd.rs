//! systemd integration: sd_notify(3) over `$NOTIFY_SOCKET`.
//!
//! The notifier is built from the environment once, in `main`, and passed down; nothing else reads
//! the environment.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Sends state changes to the service manager; a no-op outside systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<std::time::Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(std::time::Duration::from_micros);
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from),
            watchdog,
        }
    }

    pub fn to(socket: impl Into<PathBuf>) -> Notifier {
        Notifier {
            socket: Some(socket.into()),
            watchdog: None,
        }
    }

    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
        }
    }

    /// `WatchdogSec=` as systemd passed it (`WATCHDOG_USEC`), when it is meant for this process.
    pub(crate) fn watchdog(&self) -> Option<std::time::Duration> {
        self.watchdog.filter(|_| self.socket.is_some())
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). Failures are logged, not fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let result = (|| -> std::io::Result<()> {
            let sock = UnixDatagram::unbound()?;
            let s = path.to_string_lossy();
            if let Some(name) = s.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            } else {
                sock.send_to(state.as_bytes(), path)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Why the socket systemd passed (`LISTEN_FDS`) cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// More than one socket was passed.
    #[error("systemd passed {0} sockets; cortexid serves exactly one (one ListenStream= in cortexid.socket)")]
    TooMany(u32),
    /// File descriptor 3 is not a socket.
    #[error("LISTEN_FDS: fd 3 is not a socket: {0}")]
    NotASocket(nix::Error),
    /// File descriptor 3 is a socket of another family.
    #[error("LISTEN_FDS: fd 3 is not a Unix socket; cortexid.socket must use ListenStream=/path")]
    NotUnix,
    /// File descriptor 3 is not a listening stream socket.
    #[error("LISTEN_FDS: fd 3 is not a listening stream socket")]
    NotListening,
    /// File descriptor 3 could not be inspected or set up.
    #[error("LISTEN_FDS: {0}")]
    Inspect(nix::Error),
    /// The socket could not be made non-blocking.
    #[error("LISTEN_FDS: {0}")]
    Nonblocking(std::io::Error),
}

/// The listening socket systemd passed (socket activation, sd_listen_fds(3)), if `LISTEN_PID`
/// names this process and `LISTEN_FDS` is at least 1: file descriptor 3.
pub fn listener_from_env() -> Result<Option<std::os::unix::net::UnixListener>, ActivationError> {
    let pid_matches = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !pid_matches || count == 0 {
        return Ok(None);
    }
    if count > 1 {
        return Err(ActivationError::TooMany(count));
    }
    adopt_fd3().map(Some)
}

/// Takes ownership of file descriptor 3 after checking that it is a listening Unix stream socket.
#[allow(unsafe_code)]
fn adopt_fd3() -> Result<std::os::unix::net::UnixListener, ActivationError> {
    use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    const SD_LISTEN_FDS_START: i32 = 3;
    // SAFETY: the service manager hands this process fd 3 (LISTEN_PID is ours); borrowing it for
    // the checks below does not close or duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(SD_LISTEN_FDS_START) };
    let addr: SockaddrStorage = getsockname(SD_LISTEN_FDS_START).map_err(ActivationError::NotASocket)?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(ActivationError::NotUnix);
    }
    if getsockopt(&borrowed, sockopt::SockType).map_err(ActivationError::Inspect)? != SockType::Stream
        || !getsockopt(&borrowed, sockopt::AcceptConn).map_err(ActivationError::Inspect)?
    {
        return Err(ActivationError::NotListening);
    }
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(ActivationError::Inspect)?;
    // SAFETY: fd 3 was checked above to be an open listening Unix socket passed to this process;
    // nothing else in the process owns it, so taking ownership here is the only claim on it.
    let owned = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener.set_nonblocking(true).map_err(ActivationError::Nonblocking)?;
    Ok(listener)
}

/// `CLOCK_MONOTONIC` in microseconds, for `MONOTONIC_USEC=` with `RELOADING=1`.
pub(crate) fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::to(&path).notify("READY=1\nSTATUS=serving");
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        Notifier::disabled().notify("READY=1");
    }
}
