//! The systemd watchdog: `WATCHDOG=1` every half `WatchdogSec`, but only while the socket
//! answers HTTP, so a wedged accept loop gets the service restarted. A socket whose queue is full
//! (any local user can fill it by connecting in a loop) while the accept loop goes on taking
//! connections is alive: the ping is sent, and the flood does not get the agent restarted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::run::systemd::Notifier;

/// Sends `WATCHDOG=1` every half `interval` while the socket answers `GET /v1/health`.
/// `accepted` counts the connections the accept loop has taken.
pub(crate) async fn run(
    notifier: Notifier,
    socket: PathBuf,
    interval: Duration,
    accepted: impl Fn() -> u64,
    cancel: CancellationToken,
) {
    let mut before = accepted();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval / 2) => {}
            _ = cancel.cancelled() => return,
        }
        let probed = tokio::time::timeout(interval / 4, probe(&socket)).await;
        let now = accepted();
        let taking = now > before;
        before = now;
        match probed {
            Ok(Ok(())) => notifier.notify("WATCHDOG=1"),
            Ok(Err(e)) if taking && e.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::warn!(
                    "the socket's queue is full (a flood of connections?) while the accept loop takes them; sending the watchdog ping"
                );
                notifier.notify("WATCHDOG=1");
            }
            Err(_) if taking => {
                tracing::warn!(
                    "the socket did not answer in time while the accept loop takes connections (a flood?); sending the watchdog ping"
                );
                notifier.notify("WATCHDOG=1");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "the socket does not answer; withholding the watchdog ping"),
            Err(_) => tracing::error!("the socket did not answer in time; withholding the watchdog ping"),
        }
    }
}

/// One `GET /v1/health` on a new connection; any HTTP answer (200, or 503 while starting) means
/// the server is alive.
async fn probe(socket: &Path) -> std::io::Result<()> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    if &head == b"HTTP/1.1 " {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "the socket answered something that is not HTTP/1.1",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A socket nobody accepts on, its queue full (as a flood of connections leaves the agent's):
    /// the probe gets `EAGAIN`. Returned with the connections that fill it.
    async fn full_socket(dir: &Path) -> (PathBuf, Vec<tokio::net::UnixStream>) {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
        let path = dir.join("agent.sock");
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        std::mem::forget(fd);
        let mut queued = Vec::new();
        loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (path, queued),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Pings received on `notify` within `wait`.
    fn pings(notify: &UnixDatagram, wait: Duration) -> usize {
        let until = std::time::Instant::now() + wait;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Some(left) = until
            .checked_duration_since(std::time::Instant::now())
            .filter(|l| !l.is_zero())
        {
            notify.set_read_timeout(Some(left)).unwrap();
            if let Ok(len) = notify.recv(&mut buf) {
                n += usize::from(&buf[..len] == b"WATCHDOG=1");
            }
        }
        n
    }

    /// While its queue is full, the socket does not answer: the ping is sent only if the accept
    /// loop goes on taking connections (a flood), and withheld if it does not (a hung agent).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_alive_while_the_accept_loop_takes_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _queued) = full_socket(dir.path()).await;
        for (busy, expect_pings) in [(true, true), (false, false)] {
            let notify_path = dir.path().join(format!("notify-{busy}"));
            let notify = UnixDatagram::bind(&notify_path).unwrap();
            let accepted = Arc::new(AtomicU64::new(0));
            let count = accepted.clone();
            let cancel = CancellationToken::new();
            let dog = tokio::spawn(run(
                Notifier::to(&notify_path),
                socket.clone(),
                Duration::from_millis(200),
                move || match busy {
                    true => count.fetch_add(1, Ordering::Relaxed) + 1,
                    false => count.load(Ordering::Relaxed),
                },
                cancel.clone(),
            ));
            let got = tokio::task::spawn_blocking(move || pings(&notify, Duration::from_millis(700)))
                .await
                .unwrap();
            cancel.cancel();
            let _ = dog.await;
            assert_eq!(got > 0, expect_pings, "busy accept loop {busy}: {got} pings");
        }
    }
}
