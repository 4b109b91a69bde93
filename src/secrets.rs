//! Secret files: credentials that live in files and are read again at every use.
//!
//! Client secrets, private keys and subject and actor credentials never sit in the configuration
//! or in memory longer than a request needs them: the configuration names a file, and each use
//! reads it, refusing a file that is missing, not a regular file, or readable by "other". A
//! [`FileStamp`] lets a caller notice a rotated file with one `stat` instead of a read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A secret that lives in a file and is re-read on every use, so rotating it needs no restart.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub path: PathBuf,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
}

impl SecretFile {
    /// Reads the secret, refusing a file that "other" can read. Surrounding whitespace is trimmed.
    pub fn read(&self) -> Result<Zeroizing<String>, String> {
        check_secret_permissions(&self.path)?;
        let raw = std::fs::read(&self.path).map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let raw = Zeroizing::new(raw);
        let text = std::str::from_utf8(&raw).map_err(|_| format!("{} is not UTF-8 text", self.path.display()))?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("{} is empty", self.path.display()));
        }
        Ok(Zeroizing::new(trimmed.to_owned()))
    }

    /// Cheap identity of the file's current content (device, inode, size, mtime): used to notice
    /// a rotated credential without re-reading it on every request.
    pub fn stamp(&self) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Refuses a secret file that is missing, not a regular file, or readable by "other".
pub fn check_secret_permissions(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("secret file {} does not exist", path.display()),
        _ => format!("cannot read secret file {}: {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!("secret file {} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "secret file {} is readable by other (mode {:04o}); run: chmod o-rwx {}",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}
