//! The systemd watchdog: `WATCHDOG=1` every half `WatchdogSec`, but only while the socket
//! answers HTTP, so a wedged accept loop gets the service restarted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::run::systemd::Notifier;

/// Sends `WATCHDOG=1` every half `interval` while the socket answers `GET /v1/health`.
pub(crate) async fn run(notifier: Notifier, socket: PathBuf, interval: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval / 2) => {}
            _ = cancel.cancelled() => return,
        }
        match tokio::time::timeout(interval / 4, probe(&socket)).await {
            Ok(Ok(())) => notifier.notify("WATCHDOG=1"),
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
