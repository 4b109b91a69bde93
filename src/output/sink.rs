//! Token files (`[[sink]]`) for software that reads a token from a file, e.g. as
//! `AWS_WEB_IDENTITY_TOKEN_FILE` or a Google `credential_source.file`.
//!
//! Each sink keeps its key pinned in the cache (renewed for as long as the agent runs) and
//! rewrites the file whenever the token changes: a temporary file in the same directory, written,
//! given its mode and owner, fsynced, then renamed over the old one — a reader sees the old token
//! or the new one, never a partial file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::config::SinkSettings;

/// How often a sink checks whether its token was renewed.
pub const SINK_POLL: Duration = Duration::from_millis(500);

/// What `status` shows of a sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub path: PathBuf,
    pub identity: String,
    pub audience: String,
    pub state: String,
    pub fingerprint: Option<String>,
    pub written_at: Option<String>,
}

/// Writes `contents` to `path` atomically with `mode`, `owner` and `group`.
pub fn write_atomic(
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

/// Runs every sink of the agent's configuration until `cancel`.
pub fn spawn_all(agent: &Arc<Agent>, cancel: &CancellationToken) {
    let sinks = agent.config().sinks.clone();
    agent.reset_sink_status(&sinks);
    for sink in sinks {
        tokio::spawn(run(agent.clone(), sink, cancel.clone()));
    }
}

async fn run(agent: Arc<Agent>, sink: SinkSettings, cancel: CancellationToken) {
    let mut written: Option<String> = None;
    let mut backoff = SINK_POLL;
    loop {
        match agent.sink_token(&sink).await {
            Ok(token) if written.as_deref() != Some(token.fingerprint.as_str()) => {
                let mut contents = token.access_token.expose().as_bytes().to_vec();
                contents.push(b'\n');
                let result = write_atomic(&sink.path, &contents, sink.mode, sink.owner, sink.group);
                zeroize::Zeroize::zeroize(&mut contents);
                match result {
                    Ok(()) => {
                        agent.sink_written(&sink, &token);
                        written = Some(token.fingerprint.clone());
                        backoff = SINK_POLL;
                        tracing::info!(path = %sink.path.display(), fingerprint = %token.fingerprint, "token file written");
                    }
                    Err(e) => {
                        agent.sink_failed(&sink, &format!("cannot write {}: {e}", sink.path.display()));
                        tracing::error!(path = %sink.path.display(), error = %e, "cannot write the token file");
                    }
                }
            }
            Ok(_) => backoff = SINK_POLL,
            Err(e) => {
                agent.sink_failed(&sink, &e.description);
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

/// The `written_at` timestamp.
pub fn now_rfc3339() -> String {
    crate::token::rfc3339(SystemTime::now())
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
