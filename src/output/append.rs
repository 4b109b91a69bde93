//! The audit file, written without a lock: opened `O_APPEND`, each line (or event) by one
//! `write(2)` of the whole of it.
//!
//! The kernel appends each such write to a regular file whole, at the end at the moment of the
//! write, so concurrent writers' lines never interleave and no writer waits for another in user
//! space (a writer preempted in the middle of its line holds up no one else's). A write that
//! returns fewer bytes than the line (the disk filled up) is an error like any other: the line
//! is not retried, so its `token.issued` token is not handed out with `audit_failure = "closed"`;
//! the next write starts with a newline, so the fragment stays a line of its own and the next
//! line is whole (a reader skips the fragment as unparsable). This holds for local file systems;
//! over NFS or FUSE, appends of concurrent writers are not guaranteed to be whole.
//!
//! Log rotation is followed as before: about once per [`ROTATION_CHECK`] one writer (whichever
//! is first past the time) compares the path's inode with the open file's and reopens the path if
//! it moved; the others write on to the file they hold. A file that could not be opened is tried
//! again at every write, so a fixed path starts working without a restart.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a file sink checks whether log rotation moved its file away.
pub(super) const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// One opened audit file and the (device, inode) it was opened as.
struct Opened {
    file: File,
    id: (u64, u64),
}

/// An audit file at a path, followed across log rotation.
pub(super) struct AppendFile {
    path: PathBuf,
    /// The file lines go to; `None` while the path cannot be opened. Writers take a clone of the
    /// `Arc` and write outside the lock, so a reopen never waits for a write, nor a write for
    /// another.
    current: RwLock<Option<Arc<Opened>>>,
    /// One reopen at a time (rotation check, SIGHUP, a file that could not be opened).
    reopening: Mutex<()>,
    /// When the next rotation check is due, in nanoseconds since `epoch`.
    next_check: AtomicU64,
    epoch: Instant,
    /// A write ended part-way through its line (the disk filled up): the next write starts with
    /// a newline, so the line it carries is not glued to the fragment.
    torn: AtomicBool,
}

/// Opens the audit file: never through a link, only a file the agent owns (`crate::files`).
fn open_append(path: &Path) -> std::io::Result<Opened> {
    let file = crate::files::open_append_owned(path)?;
    let m = file.metadata()?;
    Ok(Opened {
        file,
        id: (m.dev(), m.ino()),
    })
}

impl AppendFile {
    /// The file at `path`, opened now if it can be (the error is returned beside it, to log).
    pub(super) fn open(path: &Path) -> (AppendFile, Option<std::io::Error>) {
        let (current, error) = match open_append(path) {
            Ok(o) => (Some(Arc::new(o)), None),
            Err(e) => (None, Some(e)),
        };
        let epoch = Instant::now();
        let file = AppendFile {
            path: path.to_path_buf(),
            current: RwLock::new(current),
            reopening: Mutex::new(()),
            next_check: AtomicU64::new(nanos(ROTATION_CHECK)),
            epoch,
            torn: AtomicBool::new(false),
        };
        (file, error)
    }

    /// Opens the path again (SIGHUP, log rotation): later writes go to the file there now.
    pub(super) fn reopen(&self) -> std::io::Result<()> {
        let _one = self.reopening.lock().unwrap_or_else(|p| p.into_inner());
        self.push_check();
        self.replace(open_append(&self.path)).map(|_| ())
    }

    /// Appends `lines` (whole lines) by one `write(2)`; an error if not all of it was written.
    pub(super) fn write(&self, lines: &[u8]) -> std::io::Result<()> {
        let mut opened = self.current();
        let now = nanos(self.epoch.elapsed());
        let due = self.next_check.load(Ordering::Relaxed);
        let check = opened.is_none()
            || (now >= due
                && self
                    .next_check
                    .compare_exchange(due, now + nanos(ROTATION_CHECK), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok());
        if check {
            opened = Some(self.follow()?);
        }
        let opened = opened.ok_or_else(|| std::io::Error::other("audit log not open"))?;
        let mended;
        let lines = if self.torn.load(Ordering::Relaxed) && self.torn.swap(false, Ordering::Relaxed) {
            mended = [b"\n", lines].concat();
            &mended[..]
        } else {
            lines
        };
        loop {
            match (&opened.file).write(lines) {
                Ok(n) if n == lines.len() => return Ok(()),
                Ok(n) => {
                    if n > 0 {
                        self.torn.store(true, Ordering::Relaxed);
                    }
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("only {n} of the {} bytes of an audit line were written", lines.len()),
                    ));
                }
                // Nothing was written: the same write again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn current(&self) -> Option<Arc<Opened>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The file at the path: the one held if the path still names it, else the path reopened.
    fn follow(&self) -> std::io::Result<Arc<Opened>> {
        let _one = self.reopening.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.current();
        let at_path = std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        match held {
            Some(o) if Some(o.id) == at_path => Ok(o),
            _ => {
                self.push_check();
                self.replace(open_append(&self.path))
            }
        }
    }

    /// Makes `opened` the current file (`None` on an error, which is returned).
    fn replace(&self, opened: std::io::Result<Opened>) -> std::io::Result<Arc<Opened>> {
        let (new, result) = match opened {
            Ok(o) => {
                let o = Arc::new(o);
                (Some(o.clone()), Ok(o))
            }
            Err(e) => (None, Err(e)),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        result
    }

    fn push_check(&self) {
        let next = nanos(self.epoch.elapsed() + ROTATION_CHECK);
        self.next_check.store(next, Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines written at once from many threads, some longer than a page: each arrives whole, on
    /// a line of its own, and none is lost.
    #[test]
    fn concurrent_writers_never_interleave_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (file, error) = AppendFile::open(&path);
        assert!(error.is_none());
        let file = Arc::new(file);
        const THREADS: usize = 8;
        const LINES: usize = 400;
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for i in 0..LINES {
                        // 10 bytes to 24 KiB: within one page, and across several.
                        let fill = char::from(b'a' + (t as u8));
                        let line = format!("{t} {i} {}\n", fill.to_string().repeat((i * 61) % 24_576 + 10));
                        file.write(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = vec![0usize; THREADS];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let t: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            let fill = parts.next().unwrap();
            let want = char::from(b'a' + (t as u8)).to_string().repeat((i * 61) % 24_576 + 10);
            assert!(fill == want && parts.next().is_none(), "line {t} {i} is not whole");
            seen[t] += 1;
        }
        assert_eq!(seen, [LINES; THREADS], "every line of every thread, once");
    }

    /// After a write that ended part-way through its line, the next line starts on a line of
    /// its own, and the one after that is written as it is.
    #[test]
    fn the_line_after_a_torn_one_starts_on_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (file, _) = AppendFile::open(&path);
        file.write(b"{\"whole\":1}\n").unwrap();
        // What a short write leaves behind (the disk filled up part-way through the line).
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"to")
            .unwrap();
        file.torn.store(true, Ordering::Relaxed);
        file.write(b"{\"next\":2}\n").unwrap();
        file.write(b"{\"then\":3}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"whole\":1}\n{\"to\n{\"next\":2}\n{\"then\":3}\n");
    }

    /// A path that cannot be opened fails each write and is tried again at the next one.
    #[test]
    fn a_file_that_cannot_be_opened_is_tried_again_at_each_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later").join("audit.jsonl");
        let (file, error) = AppendFile::open(&path);
        assert!(error.is_some());
        assert!(file.write(b"lost\n").is_err());
        std::fs::create_dir(dir.path().join("later")).unwrap();
        file.write(b"kept\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\n");
    }
}
