//! A caller's executable, identified by what it is rather than by what it is called.
//!
//! `/proc/<pid>/exe` read as a link is a path as the *caller's* mount namespace names it: a caller
//! in a namespace of its own can bind-mount any program over `/usr/bin/curl` and run it there, and
//! the link then reads `/usr/bin/curl`. Followed instead (a `stat` of the magic link, or an `open`
//! of it), it reaches the file the kernel actually runs, whatever any namespace calls it. So the
//! name ([`ExeName`]) only describes the caller in messages and audit lines, and the file
//! ([`Executable`]: device, inode, and the stamp of its content) is what roles match.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// What the caller's own mount namespace calls its executable (`/proc/<pid>/exe` read as a
/// link). For audit lines and messages only: a caller can make any path name any file in a
/// namespace of its own, so this type deliberately has no way to be compared with a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ExeName(PathBuf);

impl ExeName {
    pub(crate) fn new(path: PathBuf) -> ExeName {
        ExeName(path)
    }
}

impl fmt::Display for ExeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// A file as the kernel knows it: its device and inode, whatever path leads to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub(crate) fn of_stat(st: &nix::sys::stat::FileStat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The file `path` leads to in the agent's own mount namespace (symbolic links followed).
    pub(crate) fn at(path: &Path) -> std::io::Result<FileId> {
        std::fs::metadata(path).map(|m| FileId::of(&m))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let major = nix::sys::stat::major(self.dev);
        let minor = nix::sys::stat::minor(self.dev);
        write!(f, "device {major}:{minor} inode {}", self.ino)
    }
}

/// The file a caller runs, from a `stat` of `/proc/<pid>/exe` followed to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Executable {
    pub file: FileId,
    /// Size, mtime and ctime: a change of content changes at least the ctime, which no one
    /// but the kernel (and the clock) sets, so a digest is valid for one stamp.
    stamp: (u64, i64, i64, i64, i64),
    /// The file has no name left anywhere: deleted or replaced (an upgrade) after the process
    /// started it.
    pub deleted: bool,
}

impl Executable {
    pub(crate) fn of(meta: &Metadata) -> Executable {
        Executable {
            file: FileId::of(meta),
            stamp: (
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
            ),
            deleted: meta.nlink() == 0,
        }
    }

    /// The same as [`Executable::of`], from a `stat(2)` the agent made itself.
    pub(crate) fn of_stat(st: &nix::sys::stat::FileStat) -> Executable {
        Executable {
            file: FileId::of_stat(st),
            stamp: (
                st.st_size as u64,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ctime,
                st.st_ctime_nsec,
            ),
            deleted: st.st_nlink == 0,
        }
    }

    /// The same file with the same content (it may have been deleted since).
    fn same_version(&self, other: &Executable) -> bool {
        self.file == other.file && self.stamp == other.stamp
    }
}

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// Why a caller's executable could not be hashed; roles that need its digest then do not match.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The caller's executable was not attested (its `/proc` attributes could not be read).
    #[error("the caller's executable could not be read")]
    Unknown,
    /// The process's executable could not be opened or read (the process exited, or the agent
    /// may not read the file).
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file read is not the one attested at accept: the process ran another program since,
    /// or the file was written while it was read.
    #[error("the process's executable changed since the connection was accepted")]
    Changed,
    /// Larger than the agent hashes.
    #[error("the executable is larger than {} MiB, which the agent does not hash", MAX_HASHED >> 20)]
    TooLarge,
}

/// Executables beyond this size are not hashed (a caller could otherwise make the agent read
/// any amount of data per request).
const MAX_HASHED: u64 = 1 << 30;
/// Digests kept, one per file version; the least recently used goes first.
const CACHE_ENTRIES: usize = 64;

/// Digests by file version, at most [`CACHE_ENTRIES`]; the least recently used goes first.
///
/// Each entry keeps the file it hashed open: while it is open its inode cannot be freed, so no
/// other file can come to have its device and inode (and a stamp the attacker waited for) and be
/// taken for it. A change of its content changes its stamp, hence its key.
struct DigestCache {
    entries: BTreeMap<Executable, Cached>,
    clock: u64,
}

struct Cached {
    digest: Sha256,
    used: u64,
    _pinned: Option<std::fs::File>,
}

impl DigestCache {
    const fn new() -> DigestCache {
        DigestCache {
            entries: BTreeMap::new(),
            clock: 0,
        }
    }

    fn get(&mut self, exe: &Executable) -> Option<Sha256> {
        self.clock += 1;
        let entry = self.entries.get_mut(&key(exe))?;
        entry.used = self.clock;
        Some(entry.digest)
    }

    fn insert(&mut self, exe: &Executable, digest: Sha256, pinned: Option<std::fs::File>) {
        if self.entries.len() >= CACHE_ENTRIES
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        let entry = Cached {
            digest,
            used: self.clock,
            _pinned: pinned,
        };
        self.entries.insert(key(exe), entry);
    }
}

static DIGESTS: Mutex<DigestCache> = Mutex::new(DigestCache::new());

fn cached(exe: &Executable) -> Option<Sha256> {
    DIGESTS.lock().unwrap_or_else(PoisonError::into_inner).get(exe)
}

fn remember(exe: &Executable, digest: Sha256, file: std::fs::File) {
    DIGESTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(exe, digest, Some(file));
}

/// The cache key: a file version, whether or not it has been deleted since.
fn key(exe: &Executable) -> Executable {
    Executable { deleted: false, ..*exe }
}

/// The SHA-256 of the file process `pid` runs, which must be `attested` (the same file and
/// content as at accept). Read through `/proc/<pid>/exe`, so it is the file the kernel runs, not
/// what a path names; hashed once per file version.
pub(crate) fn sha256(proc_root: &Path, pid: i32, attested: &Executable) -> Result<Sha256, HashError> {
    if let Some(digest) = cached(attested) {
        return Ok(digest);
    }
    let path = proc_root.join(pid.to_string()).join("exe");
    let read = |source| HashError::Read {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(read)?;
    let before = Executable::of(&file.metadata().map_err(read)?);
    if !before.same_version(attested) {
        return Err(HashError::Changed);
    }
    if before.stamp.0 > MAX_HASHED {
        return Err(HashError::TooLarge);
    }
    let digest = blocking(|| {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => ctx.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok(out)
    })
    .map_err(read)?;
    // Written while it was read: the digest may describe neither version.
    let after = Executable::of(&file.metadata().map_err(read)?);
    if !after.same_version(attested) {
        return Err(HashError::Changed);
    }
    remember(attested, digest, file);
    Ok(digest)
}

/// Runs `f`, which blocks, without holding up the other tasks of a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Lower-case hexadecimal, as `sha256sum` prints a digest.
pub(crate) fn hex(digest: &Sha256) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_digest_is_that_of_the_running_file_and_is_cached_per_version() {
        let me = std::process::id() as i32;
        let proc_root = Path::new("/proc");
        let attested = Executable::of(&std::fs::metadata("/proc/self/exe").unwrap());
        let digest = sha256(proc_root, me, &attested).unwrap();
        let expected = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &std::fs::read(std::env::current_exe().unwrap()).unwrap(),
        );
        assert_eq!(digest.as_slice(), expected.as_ref());
        assert_eq!(cached(&attested), Some(digest));
        assert_eq!(hex(&digest).len(), 64);
    }

    #[test]
    fn another_version_of_the_file_is_not_hashed_as_the_attested_one() {
        let me = std::process::id() as i32;
        let mut attested = Executable::of(&std::fs::metadata("/proc/self/exe").unwrap());
        attested.stamp.3 -= 1;
        assert!(matches!(
            sha256(Path::new("/proc"), me, &attested),
            Err(HashError::Changed)
        ));
    }

    #[test]
    fn a_deleted_file_is_known_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"x").unwrap();
        assert!(!Executable::of(&f.metadata().unwrap()).deleted);
        std::fs::remove_file(&path).unwrap();
        let gone = Executable::of(&f.metadata().unwrap());
        assert!(gone.deleted);
        assert_eq!(key(&gone), key(&Executable { deleted: false, ..gone }));
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_least_recently_used() {
        let version = |ino| Executable {
            file: FileId { dev: 1, ino },
            stamp: (1, 2, 3, 4, 5),
            deleted: false,
        };
        let mut cache = DigestCache::new();
        for ino in 0..CACHE_ENTRIES as u64 {
            cache.insert(&version(ino), [ino as u8; 32], None);
        }
        assert_eq!(cache.get(&version(0)), Some([0; 32]), "0 is now the most recent");
        cache.insert(&version(9999), [9; 32], None);
        assert_eq!(cache.entries.len(), CACHE_ENTRIES);
        assert_eq!(cache.get(&version(1)), None, "1 was the least recently used");
        assert_eq!(cache.get(&version(0)), Some([0; 32]));
        assert_eq!(cache.get(&version(9999)), Some([9; 32]));
        let deleted = Executable {
            deleted: true,
            ..version(0)
        };
        assert_eq!(
            cache.get(&deleted),
            Some([0; 32]),
            "deleting a file does not change its digest"
        );
    }

    #[test]
    fn file_ids_name_the_device_and_inode() {
        let id = FileId {
            dev: nix::sys::stat::makedev(8, 1),
            ino: 42,
        };
        assert_eq!(id.to_string(), "device 8:1 inode 42");
    }
}
