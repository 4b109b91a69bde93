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
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        Notifier { socket: std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from) }
    }

    pub fn to(socket: impl Into<PathBuf>) -> Notifier {
        Notifier { socket: Some(socket.into()) }
    }

    pub fn disabled() -> Notifier {
        Notifier { socket: None }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
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

/// `CLOCK_MONOTONIC` in microseconds, for `MONOTONIC_USEC=` with `RELOADING=1`.
pub fn monotonic_usec() -> u64 {
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
