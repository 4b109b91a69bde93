//! Process logs (not the audit log). Under systemd, when `$JOURNAL_STREAM` says stderr is the
//! journal, logs go to the journal natively (with their fields); otherwise text or JSON lines on
//! stderr. `RUST_LOG` narrows or widens the level (default `info`).
//!
//! Log fields carry text from outside (a provider's error description, a caller's identity
//! name): on stderr every control character is escaped, so no field can forge a line or send
//! escape sequences to a terminal.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` is `DEVICE:INODE` of it.
pub(crate) fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let fd = std::io::stderr();
    let Ok(meta) = std::os::fd::AsFd::as_fd(&fd)
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Installs the global subscriber once; later calls do nothing.
pub(crate) fn init(format: LogFormat, journal: bool) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer.with_syslog_identifier("cortexid".into()))
                    .try_init();
                return;
            }
            // No journal socket after all: fall back to stderr, which systemd still collects.
            Err(e) => eprintln!("cortexid: journal not available ({e}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(|| EscapingWriter(std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// A writer for one formatted log line at a time (the fmt layer writes each event whole): every
/// control character but the line's final newline is written escaped.
struct EscapingWriter<W: std::io::Write>(W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&escape_controls(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `buf` (one log line) with every control character escaped by [`escape_control_chars`]
/// (newline, carriage return and tab by name), except one trailing newline.
fn escape_controls(buf: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    let (body, end) = match buf.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (buf, &b""[..]),
    };
    let text = String::from_utf8_lossy(body);
    match (&text, escape_control_chars(&text, true)) {
        (Cow::Borrowed(_), Cow::Borrowed(_)) => Cow::Borrowed(buf),
        (_, escaped) => Cow::Owned([escaped.as_bytes(), end].concat()),
    }
}

/// `s` with its control characters (C0, DEL, C1) written as `\u{..}` (and, with `named`,
/// newline, carriage return and tab as `\n`, `\r`, `\t`): text from outside can then neither
/// add lines nor send escape sequences, to a log or to a terminal.
pub(crate) fn escape_control_chars(s: &str, named: bool) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write;
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' if named => out.push_str("\\n"),
            '\r' if named => out.push_str("\\r"),
            '\t' if named => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines_or_reach_a_terminal() {
        let forged = "WARN exchange failed error=kid \u{1b}[31mred\nINFO forged line\r\u{7f}\u{9b}2J\n";
        let out = String::from_utf8(escape_controls(forged.as_bytes()).into_owned()).unwrap();
        assert_eq!(
            out,
            "WARN exchange failed error=kid \\u{1b}[31mred\\nINFO forged line\\r\\u{7f}\\u{9b}2J\n"
        );
        assert_eq!(out.matches('\n').count(), 1, "one line, ending in its own newline");
        let plain = "INFO exchanged fingerprint=3f2a audience=\"https://é.example\"\n";
        assert_eq!(escape_controls(plain.as_bytes()).as_ref(), plain.as_bytes());
    }
}
