//! Token files (`[[sink]]`) for software that reads a token from a file, e.g. as
//! `AWS_WEB_IDENTITY_TOKEN_FILE` or a Google `credential_source.file`.
//!
//! Each sink keeps its key pinned in the cache (renewed for as long as the agent runs) and
//! rewrites the file whenever the token changes: a temporary file in the same directory, written,
//! given its mode and owner, fsynced, then renamed over the old one — a reader sees the old token
//! or the new one, never a partial file.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::SinkSettings;
use crate::error::ApiError;
use crate::token::IssuedToken;

/// How often a sink checks whether its token was renewed.
pub(crate) const SINK_POLL: Duration = Duration::from_millis(500);

/// What `status` shows of a sink.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SinkStatus {
    pub path: PathBuf,
    pub identity: String,
    pub audience: String,
    pub state: String,
    pub fingerprint: Option<String>,
    pub written_at: Option<String>,
}

/// Writes `contents` to `path` atomically with `mode`, `owner` and `group`.
pub(crate) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a sink path needs a directory"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("token");
    let tmp = dir.join(format!(".{name}.tmp-{:08x}", fastrand::u32(..)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        if owner.is_some() || group.is_some() {
            nix::unistd::fchown(
                &f,
                owner.map(nix::unistd::Uid::from_raw),
                group.map(nix::unistd::Gid::from_raw),
            )
            .map_err(std::io::Error::from)?;
        }
        // After chown: changing the owner clears set-id bits, and the umask never applies here.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Where sinks get their tokens, and whom they tell that one was written. The agent implements
/// it; sinks know nothing else of the agent.
pub(crate) trait SinkSource: Send + Sync + 'static {
    /// The token for `sink` (its cache key stays pinned: renewed for as long as the agent runs).
    fn sink_token(&self, sink: &SinkSettings) -> impl Future<Output = Result<Arc<IssuedToken>, ApiError>> + Send;
    /// `token` was written to `sink.path`: record it (the `token.issued` audit event).
    fn token_written(&self, sink: &SinkSettings, token: &IssuedToken);
}

/// The sinks' own state, written by the sink tasks and read as a snapshot for `/v1/health`,
/// `status` and `/metrics`.
#[derive(Default)]
pub(crate) struct SinkBoard {
    statuses: RwLock<BTreeMap<PathBuf, SinkStatus>>,
    writes: AtomicU64,
    failures: AtomicU64,
}

impl SinkBoard {
    /// Every configured sink's status, by path.
    pub(crate) fn snapshot(&self) -> Vec<SinkStatus> {
        self.statuses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Token files written since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(Relaxed)
    }

    /// Token files that could not be written (or had no token) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Forgets sinks no longer configured; marks the configured ones as starting.
    fn reset(&self, sinks: &[SinkSettings]) {
        self.statuses
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|path, _| sinks.iter().any(|s| &s.path == path));
        for s in sinks {
            self.set(s, "starting".into(), None);
        }
    }

    fn written(&self, sink: &SinkSettings, token: &IssuedToken) {
        self.writes.fetch_add(1, Relaxed);
        self.set(sink, "ok".into(), Some(token.fingerprint.clone()));
    }

    fn failed(&self, sink: &SinkSettings, why: &str) {
        self.failures.fetch_add(1, Relaxed);
        self.set(sink, format!("failing: {why}"), None);
    }

    fn set(&self, sink: &SinkSettings, state: String, fingerprint: Option<String>) {
        let mut statuses = self.statuses.write().unwrap_or_else(|p| p.into_inner());
        let entry = statuses.entry(sink.path.clone()).or_insert_with(|| SinkStatus {
            path: sink.path.clone(),
            identity: sink.identity.clone(),
            audience: sink.audience.clone(),
            state: String::new(),
            fingerprint: None,
            written_at: None,
        });
        entry.state = state;
        if fingerprint.is_some() {
            entry.fingerprint = fingerprint;
            entry.written_at = Some(crate::token::rfc3339(SystemTime::now()));
        }
    }
}

/// Runs every sink in `sinks` until `cancel`, publishing their state on `board`.
pub(crate) fn spawn_all<S: SinkSource>(
    source: &Arc<S>,
    board: &Arc<SinkBoard>,
    sinks: &[SinkSettings],
    cancel: &CancellationToken,
) {
    board.reset(sinks);
    for sink in sinks {
        tokio::spawn(run(source.clone(), board.clone(), sink.clone(), cancel.clone()));
    }
}

async fn run<S: SinkSource>(source: Arc<S>, board: Arc<SinkBoard>, sink: SinkSettings, cancel: CancellationToken) {
    let mut written: Option<String> = None;
    let mut backoff = SINK_POLL;
    loop {
        match source.sink_token(&sink).await {
            Ok(token) if written.as_deref() != Some(token.fingerprint.as_str()) => {
                let mut contents = token.access_token.expose().as_bytes().to_vec();
                contents.push(b'\n');
                let result = write_atomic(&sink.path, &contents, sink.mode, sink.owner, sink.group);
                zeroize::Zeroize::zeroize(&mut contents);
                match result {
                    Ok(()) => {
                        source.token_written(&sink, &token);
                        board.written(&sink, &token);
                        written = Some(token.fingerprint.clone());
                        backoff = SINK_POLL;
                        tracing::info!(path = %sink.path.display(), fingerprint = %token.fingerprint, "token file written");
                    }
                    Err(e) => {
                        board.failed(&sink, &format!("cannot write {}: {e}", sink.path.display()));
                        tracing::error!(path = %sink.path.display(), error = %e, "cannot write the token file");
                    }
                }
            }
            Ok(_) => backoff = SINK_POLL,
            Err(e) => {
                board.failed(&sink, &e.description);
                tracing::warn!(path = %sink.path.display(), error = %e, "no token for the token file yet");
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn files_are_replaced_whole_with_their_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.jwt");
        write_atomic(&path, b"first\n", 0o640, Some(65534), None).unwrap();
        write_atomic(&path, b"second\n", 0o640, Some(65534), None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(m.uid(), 65534);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomic(&dir.path().join("nope/token"), b"x", 0o600, None, None).is_err());
    }
}
