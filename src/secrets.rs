//! Secret files: credentials that live in files and are read again at every use.
//!
//! Client secrets, private keys and subject and actor credentials never sit in the configuration
//! or in memory longer than a request needs them: the configuration names a file, and each use
//! reads it, refusing a file that is missing, not a regular file, or readable by "other". A
//! [`FileStamp`] lets a caller notice a rotated file with one `stat` instead of a read;
//! [`CredentialFiles`] does that for the credentials of the request path, at most once per
//! [`CREDENTIAL_RECHECK`].

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::token::Secret;

/// Why a secret file cannot be used. Every message names the file and, where there is one, the
/// fix; none carries the secret's content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// There is no file at the path.
    #[error("secret file {path} does not exist")]
    NotFound { path: PathBuf },
    /// The file's metadata cannot be read (for example a directory on the way is not searchable).
    #[error("cannot read secret file {path}: {error}")]
    Inaccessible { path: PathBuf, error: std::io::Error },
    /// The path is a directory, a socket or another non-regular file.
    #[error("secret file {path} is not a regular file")]
    NotRegular { path: PathBuf },
    /// "Other" may read the file; `mode` is its permission bits.
    #[error("secret file {path} is readable by other (mode {mode:04o}); run: chmod o-rwx {path}")]
    ReadableByOther { path: PathBuf, mode: u32 },
    /// The file belongs to a user other than root and the agent, who could change it at will.
    #[error(
        "secret file {path} belongs to uid {owner}, not to root or the agent (uid {agent}); run: chown root {path}"
    )]
    ForeignOwner { path: PathBuf, owner: u32, agent: u32 },
    /// The permissions are right but reading the content failed.
    #[error("cannot read {path}: {error}")]
    Unreadable { path: PathBuf, error: std::io::Error },
    /// The content is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotUtf8 { path: PathBuf },
    /// The content is empty or only whitespace.
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    /// A directory on the way to the file can be changed by another user, who could put a link
    /// to any file of root's there.
    #[error("secret file {path}: {error}")]
    UnsafeDirectory {
        path: PathBuf,
        #[source]
        error: crate::files::UnsafePath,
    },
}

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
    pub fn read(&self) -> Result<Zeroizing<String>, SecretFileError> {
        let path = || self.path.clone();
        let raw = self.read_bytes()?;
        let text = std::str::from_utf8(&raw).map_err(|_| SecretFileError::NotUtf8 { path: path() })?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SecretFileError::Empty { path: path() });
        }
        Ok(Zeroizing::new(trimmed.to_owned()))
    }

    /// The secret's bytes as they are, checked as [`check_secret_permissions`] says: the checks
    /// are of the file opened, and the content is read from it, so no other file can be swapped
    /// in between.
    pub(crate) fn read_bytes(&self) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
        use std::io::Read;
        let (mut file, len) = open_secret(&self.path)?;
        // Sized to the file up front: a growing buffer would leave copies of the secret behind.
        let mut raw = Zeroizing::new(Vec::with_capacity(len as usize + 1));
        file.read_to_end(&mut raw)
            .map_err(|error| SecretFileError::Unreadable {
                path: self.path.clone(),
                error,
            })?;
        Ok(raw)
    }

    /// Cheap identity of the file's current content (device, inode, size, mtime, ctime): used to
    /// notice a rotated credential without re-reading it on every request.
    pub(crate) fn stamp(&self) -> Option<FileStamp> {
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

/// What [`SecretFile::stamp`] saw of a file: equal stamps mean (for every practical purpose) the
/// same content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Refuses a secret file that is missing, not a regular file, readable by "other", owned by a
/// user other than root and the agent, or under a directory another user could change
/// ([`crate::files::check_ancestors`]).
pub(crate) fn check_secret_permissions(path: &Path) -> Result<(), SecretFileError> {
    open_secret(path).map(drop)
}

/// Opens a secret file, checked as [`check_secret_permissions`] says: the checks are of the file
/// opened (`fstat`), which links may lead to (a Kubernetes secret volume's `..data` links, owned by
/// root) only through directories root or the agent alone controls. With the file's length.
fn open_secret(path: &Path) -> Result<(std::fs::File, u64), SecretFileError> {
    crate::files::check_existing_path(path).map_err(|error| match error {
        crate::files::UnsafePath::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            SecretFileError::NotFound { path: path.into() }
        }
        error => SecretFileError::UnsafeDirectory {
            path: path.into(),
            error,
        },
    })?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => SecretFileError::NotFound { path: path.into() },
            _ => SecretFileError::Inaccessible {
                path: path.into(),
                error,
            },
        })?;
    let meta = file.metadata().map_err(|error| SecretFileError::Inaccessible {
        path: path.into(),
        error,
    })?;
    if !meta.is_file() {
        return Err(SecretFileError::NotRegular { path: path.into() });
    }
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(SecretFileError::ReadableByOther {
            path: path.into(),
            mode: mode & 0o7777,
        });
    }
    let agent = nix::unistd::geteuid().as_raw();
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != 0 && owner != agent {
        return Err(SecretFileError::ForeignOwner {
            path: path.into(),
            owner,
            agent,
        });
    }
    Ok((file, meta.len()))
}

/// How long the request path trusts what it last saw of a credential file before it looks
/// again: a rotated credential starts a new cache key at most this long after the file changed.
/// (A `stat` per request was a tenth of a cached request's CPU time.)
pub const CREDENTIAL_RECHECK: Duration = Duration::from_secs(1);

/// What the request path last saw of one credential file.
struct Seen {
    stamp: FileStamp,
    value: Secret,
    checked: Instant,
}

/// Credential files, re-read when their content changes (inode, size, mtime, ctime). The request
/// path looks at a file (one `stat`) at most once per [`CREDENTIAL_RECHECK`], so a rotated
/// credential starts a new cache key within that time, without a read or a `stat` per request.
#[derive(Default)]
pub(crate) struct CredentialFiles {
    seen: Mutex<HashMap<PathBuf, Seen>>,
}

impl CredentialFiles {
    pub(crate) fn read(&self, file: &SecretFile) -> Result<Secret, SecretFileError> {
        let now = Instant::now();
        if let Some(seen) = self.seen().get(&file.path)
            && now.duration_since(seen.checked) < CREDENTIAL_RECHECK
        {
            return Ok(seen.value.clone());
        }
        // Looked at outside the lock: a slow file system does not hold up other credentials.
        let stamp = file.stamp();
        if let Some(stamp) = stamp
            && let Some(seen) = self.seen().get_mut(&file.path)
            && seen.stamp == stamp
        {
            seen.checked = now;
            return Ok(seen.value.clone());
        }
        let value = Secret::from(file.read()?);
        // Computed once here, so every clone handed out carries it.
        let _ = value.fingerprint();
        if let Some(stamp) = stamp {
            self.seen().insert(
                file.path.clone(),
                Seen {
                    stamp,
                    value: value.clone(),
                    checked: now,
                },
            );
        }
        Ok(value)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, content: &[u8], mode: u32) -> SecretFile {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        SecretFile { path }
    }

    /// The attack (as root, the agent): uid 4644 owns a directory the configuration names a
    /// secret in. Its own file there is refused (it belongs to 4644); a link it plants to a
    /// secret of root's that it cannot read is refused too, and so is a link in root's directory
    /// that leads through 4644's. A Kubernetes-style layout (root's links to root's files)
    /// passes.
    #[test]
    fn a_secret_under_a_directory_another_user_controls_is_refused_even_through_a_link() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root_secret = file(dir.path(), "root-secret", b"root's credential", 0o600);
        let user = dir.path().join("u4644");
        std::fs::create_dir(&user).unwrap();
        nix::unistd::chown(&user, Some(nix::unistd::Uid::from_raw(4644)), None).unwrap();

        let planted = SecretFile {
            path: user.join("sa.jwt"),
        };
        symlink(&root_secret.path, &planted.path).unwrap();
        let err = planted.read().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "secret file {}: the directory {} belongs to uid 4644",
                planted.path.display(),
                user.display()
            )),
            "{err}"
        );
        assert!(check_secret_permissions(&planted.path).is_err());

        let owned_by_root_in_theirs = file(&user, "real", b"swappable", 0o600);
        let through = SecretFile {
            path: dir.path().join("through"),
        };
        symlink(&owned_by_root_in_theirs.path, &through.path).unwrap();
        let err = through.read().unwrap_err().to_string();
        assert!(
            err.contains(&format!("the directory {} belongs to uid 4644", user.display())),
            "{err}"
        );

        // A secret volume: root's links to root's files, in root's directories.
        let volume = dir.path().join("volume");
        let data = volume.join("..2026_11_30");
        std::fs::create_dir_all(&data).unwrap();
        file(&data, "token", b"a projected token\n", 0o600);
        symlink("..2026_11_30", volume.join("..data")).unwrap();
        symlink("..data/token", volume.join("token")).unwrap();
        let token = SecretFile {
            path: volume.join("token"),
        };
        assert_eq!(token.read().unwrap().as_str(), "a projected token");
    }

    /// A FIFO planted where a secret should be is refused at once, not waited on.
    #[test]
    fn a_fifo_is_not_a_secret_and_is_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = SecretFile { path: fifo }.read().unwrap_err();
        assert!(matches!(err, SecretFileError::NotRegular { .. }), "{err}");
    }

    #[test]
    fn a_secret_is_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "s", b"  s3cret\n", 0o640);
        assert_eq!(f.read().unwrap().as_str(), "s3cret");
    }

    #[test]
    fn every_refusal_names_the_file_in_the_same_words() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let missing = SecretFile {
            path: dir.path().join("missing"),
        };
        assert_eq!(
            missing.read().unwrap_err().to_string(),
            format!("secret file {d}/missing does not exist")
        );
        let not_regular = SecretFile {
            path: dir.path().to_path_buf(),
        };
        assert_eq!(
            not_regular.read().unwrap_err().to_string(),
            format!("secret file {d} is not a regular file")
        );
        let open = file(dir.path(), "open", b"s3cret", 0o644);
        assert_eq!(
            open.read().unwrap_err().to_string(),
            format!("secret file {d}/open is readable by other (mode 0644); run: chmod o-rwx {d}/open")
        );
        let empty = file(dir.path(), "empty", b" \n", 0o600);
        assert_eq!(empty.read().unwrap_err().to_string(), format!("{d}/empty is empty"));
        let binary = file(dir.path(), "binary", &[0xff, 0xfe], 0o600);
        assert_eq!(
            binary.read().unwrap_err().to_string(),
            format!("{d}/binary is not UTF-8 text")
        );
    }

    #[test]
    fn a_secret_another_user_owns_is_refused_even_when_private() {
        // Giving a file to another user takes root; under CI=true the tests run as root.
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "this test needs root under CI"
            );
            eprintln!("not root: a secret another user owns is not tried");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let planted = file(dir.path(), "planted", b"s3cret", 0o600);
        std::os::unix::fs::chown(&planted.path, Some(4242), None).unwrap();
        assert_eq!(
            planted.read().unwrap_err().to_string(),
            format!(
                "secret file {d}/planted belongs to uid 4242, not to root or the agent (uid 0); run: chown root {d}/planted"
            )
        );
    }

    #[test]
    fn a_rewritten_file_gets_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "s", b"one", 0o600);
        let before = f.stamp().unwrap();
        assert_eq!(f.stamp(), Some(before));
        let next = file(dir.path(), "s.new", b"two!", 0o600);
        std::fs::rename(&next.path, &f.path).unwrap();
        assert_ne!(f.stamp(), Some(before));
        assert_eq!(
            SecretFile {
                path: dir.path().join("gone")
            }
            .stamp(),
            None
        );
    }
}
