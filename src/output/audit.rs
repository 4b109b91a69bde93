//! Audit events (`docs/audit.md`): one JSON object per line, to a file, the journal, or stderr.
//!
//! Writing is complete before a token is handed out: with `audit_failure = "closed"` a
//! `token.issued` event that cannot be written means no token. Each event is written by itself,
//! by one `write(2)` of its whole line and without a lock around it (a file: `append.rs`), so no
//! answer waits for another request's write. Events never hold a token or secret; tokens are
//! named by `jti` and fingerprint.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::SystemTime;

use crate::config::AuditTarget;

use super::append::AppendFile;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where events go. None of them is behind a lock of the agent's: the file and the journal
/// socket take concurrent writes whole; stderr is locked by the standard library (its lines
/// must not interleave with the log's).
enum Writer {
    File(AppendFile),
    Stderr,
    Journal(Option<UnixDatagram>),
}

/// `s` whole when it has at most `max` bytes; otherwise its first `max` bytes (on a character
/// boundary) and how long it was, so a caller's input cannot make an audit line arbitrarily long.
pub(crate) fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len()))
}

/// The audit log.
pub struct Audit {
    writer: Writer,
    target: AuditTarget,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Audit({:?})", self.target)
    }
}

impl Audit {
    /// Opens the target. A file that cannot be opened now is retried at every event (and on
    /// SIGHUP), so a fixed path starts working without a restart.
    pub fn open(target: &AuditTarget) -> Audit {
        let writer = match target {
            AuditTarget::File(path) => {
                let (file, error) = AppendFile::open(path);
                if let Some(e) = error {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the audit log");
                }
                Writer::File(file)
            }
            AuditTarget::Stderr => Writer::Stderr,
            AuditTarget::Journal => Writer::Journal(UnixDatagram::unbound().ok()),
        };
        Audit {
            writer,
            target: target.clone(),
        }
    }

    pub fn target(&self) -> &AuditTarget {
        &self.target
    }

    /// Reopens a file target (SIGHUP, log rotation).
    pub(crate) fn reopen(&self) -> std::io::Result<()> {
        match &self.writer {
            Writer::File(file) => file.reopen(),
            Writer::Stderr | Writer::Journal(_) => Ok(()),
        }
    }

    /// Writes one event: `{"ts":..., "event": name, ...fields}`. Returns an error if the event
    /// could not be written completely.
    pub fn write(&self, event: &str, fields: serde_json::Value) -> std::io::Result<()> {
        self.write_event(event, &fields)
    }

    /// Like [`write`](Self::write) for any value that serialises as a JSON object (a typed event
    /// struct on the hot path, so no intermediate map is built).
    pub(crate) fn write_event<T: serde::Serialize + ?Sized>(&self, event: &str, fields: &T) -> std::io::Result<()> {
        let line = render(event, fields)?;
        self.write_line(event, &line)
    }

    /// Writes one line [`render`]ed for `event`, whole; an error if it was not written whole.
    pub(crate) fn write_line(&self, event: &str, line: &[u8]) -> std::io::Result<()> {
        match &self.writer {
            Writer::File(file) => file.write(line),
            Writer::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(line)?;
                err.flush()
            }
            Writer::Journal(sock) => {
                let sock = sock
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("no journal socket"))?;
                let message = line.strip_suffix(b"\n").unwrap_or(line);
                let mut datagram = Vec::with_capacity(message.len() + 96);
                datagram.extend_from_slice(b"SYSLOG_IDENTIFIER=cortexid-audit\nCORTEXID_EVENT=");
                datagram.extend_from_slice(event.as_bytes());
                datagram.extend_from_slice(b"\nPRIORITY=6\nMESSAGE\n");
                datagram.extend_from_slice(&(message.len() as u64).to_le_bytes());
                datagram.extend_from_slice(message);
                datagram.push(b'\n');
                sock.send_to(&datagram, JOURNAL_SOCKET).map(|_| ())
            }
        }
    }
}

/// One event as its audit line: `{"ts":..., "event": name, ...fields}` and a newline.
pub(crate) fn render<T: serde::Serialize + ?Sized>(event: &str, fields: &T) -> std::io::Result<Vec<u8>> {
    let tail = render_tail(event, fields)?;
    Ok(with_time(SystemTime::now(), &tail))
}

/// An event's audit line without its time: everything after `{"ts":"…`, for [`with_time`] to
/// complete. A line written again and again (the same token to the same caller) is rendered once.
pub(crate) fn render_tail<T: serde::Serialize + ?Sized>(event: &str, fields: &T) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(512);
    line.extend_from_slice(b"\",\"event\":");
    serde_json::to_writer(&mut line, event).map_err(std::io::Error::other)?;
    let start = line.len();
    serde_json::to_writer(&mut line, fields).map_err(std::io::Error::other)?;
    match line.get(start..) {
        Some(b"{}") => {
            line.truncate(start);
            line.push(b'}');
        }
        Some([b'{', ..]) => line[start] = b',',
        _ => return Err(std::io::Error::other("an audit event's fields must be a JSON object")),
    }
    line.push(b'\n');
    Ok(line)
}

/// The audit line of a [`render_tail`]ed event at time `at`.
pub(crate) fn with_time(at: SystemTime, tail: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(tail.len() + 40);
    line.extend_from_slice(b"{\"ts\":\"");
    line.extend_from_slice(crate::token::rfc3339_millis(at).as_bytes());
    line.extend_from_slice(tail);
    line
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::append::ROTATION_CHECK;
    use super::*;

    #[test]
    fn events_are_json_lines_and_follow_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&AuditTarget::File(path.clone()));
        audit.write("agent.started", serde_json::json!({"pid": 1})).unwrap();
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        audit.reopen().unwrap();
        audit
            .write("token.issued", serde_json::json!({"identity": "x"}))
            .unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(old.trim()).unwrap();
        assert_eq!(first["event"], "agent.started");
        assert!(first["ts"].as_str().unwrap().ends_with('Z'));
        let second: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
        assert_eq!(second["identity"], "x");
    }

    #[test]
    fn a_file_moved_away_by_log_rotation_is_noticed_without_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let audit = Audit::open(&AuditTarget::File(path.clone()));
        audit.write("agent.started", serde_json::json!({})).unwrap();
        // logrotate without copytruncate or a SIGHUP: the file is renamed, nothing is reopened.
        std::fs::rename(&path, &rotated).unwrap();
        // The agent looks for a moved file about once a second, when it writes.
        std::thread::sleep(ROTATION_CHECK + Duration::from_millis(100));
        audit.write("token.issued", serde_json::json!({"n": 1})).unwrap();
        audit.write("token.issued", serde_json::json!({"n": 2})).unwrap();
        let events = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
                .collect()
        };
        assert_eq!(events(&rotated), ["\"agent.started\""]);
        assert_eq!(
            events(&path),
            ["\"token.issued\"", "\"token.issued\""],
            "events after the check go to a new file at the configured path"
        );
    }

    #[test]
    fn an_unwritable_path_fails_and_recovers_once_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("audit.jsonl");
        let audit = Audit::open(&AuditTarget::File(path.clone()));
        assert!(audit.write("token.issued", serde_json::json!({})).is_err());
        std::fs::create_dir(dir.path().join("missing-dir")).unwrap();
        audit.write("token.issued", serde_json::json!({})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
