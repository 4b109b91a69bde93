//! Files the agent writes, as root or as its own user, in directories it does not fully control:
//! the audit log and token files (sinks). A path is written only where no other user can plant
//! a link or a file first (as sshd's StrictModes), and the audit log is opened without following
//! links and only if the agent owns it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a path is not safe for the agent to write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafePath {
    /// The directory can be written by users other than root and the agent.
    #[error(
        "the directory {} can be written by {who} (mode {mode:04o}), who could replace the file with a link to another; use a directory only root or the agent can write (e.g. /var/log/cortexid, systemd LogsDirectory=), or run: chmod go-w {}",
        dir.display(),
        dir.display()
    )]
    WritableByOthers { dir: PathBuf, who: &'static str, mode: u32 },
    /// The directory belongs to another user.
    #[error(
        "the directory {} belongs to uid {owner}, not to root or the agent (uid {agent}); that user could replace the file with a link to another",
        dir.display()
    )]
    ForeignDirectory { dir: PathBuf, owner: u32, agent: u32 },
    /// The file is a symbolic link (refused rather than followed).
    #[error("{} is a symbolic link; the agent does not write through links", path.display())]
    Link { path: PathBuf },
    /// The file is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    /// The file belongs to another user.
    #[error(
        "{} belongs to uid {owner}, not to the agent (uid {agent}); the agent only appends to files it owns: remove it, or chown it to the agent",
        path.display()
    )]
    ForeignFile { path: PathBuf, owner: u32, agent: u32 },
    /// The file has more than one name: another name could be a file the agent must not touch.
    #[error("{} has {links} hard links; the agent only appends to a file with one name", path.display())]
    HardLinked { path: PathBuf, links: u64 },
    /// The file system refused.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

impl From<UnsafePath> for std::io::Error {
    fn from(e: UnsafePath) -> std::io::Error {
        match e {
            UnsafePath::Io { error, .. } => error,
            other => std::io::Error::new(std::io::ErrorKind::PermissionDenied, other.to_string()),
        }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks that only root and the agent can add, remove or rename entries in `dir`: it belongs
/// to one of them and is not writable by group or other. A directory that does not exist yet
/// passes (nothing can be planted in it either).
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), UnsafePath> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(UnsafePath::Io {
                path: dir.to_path_buf(),
                error,
            });
        }
    };
    let agent = euid();
    if meta.uid() != 0 && meta.uid() != agent {
        return Err(UnsafePath::ForeignDirectory {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            agent,
        });
    }
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => "every user",
        (true, false) => "its group",
        (false, false) => return Ok(()),
    };
    Err(UnsafePath::WritableByOthers {
        dir: dir.to_path_buf(),
        who,
        mode,
    })
}

/// Opens `path` for appending (created 0640 if missing) without following a link, and only if it
/// is a regular file with one name that the agent owns.
pub(crate) fn open_append_owned(path: &Path) -> Result<File, UnsafePath> {
    let io = |error: std::io::Error| UnsafePath::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                UnsafePath::Link {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    let agent = euid();
    if !meta.is_file() {
        return Err(UnsafePath::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != agent {
        return Err(UnsafePath::ForeignFile {
            path: path.to_path_buf(),
            owner: meta.uid(),
            agent,
        });
    }
    if meta.nlink() > 1 {
        return Err(UnsafePath::HardLinked {
            path: path.to_path_buf(),
            links: meta.nlink(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn directories_others_can_write_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        check_private_dir(dir.path()).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_private_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("every user") && e.contains("chmod go-w"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(
            check_private_dir(dir.path())
                .unwrap_err()
                .to_string()
                .contains("its group")
        );
        check_private_dir(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn links_and_foreign_files_are_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = open_append_owned(&link).unwrap_err();
        assert!(matches!(e, UnsafePath::Link { .. }), "{e}");
        let hard = dir.path().join("hard");
        std::fs::hard_link(&victim, &hard).unwrap();
        assert!(matches!(
            open_append_owned(&hard).unwrap_err(),
            UnsafePath::HardLinked { .. }
        ));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        let own = dir.path().join("own.jsonl");
        open_append_owned(&own).unwrap();
        assert_eq!(std::fs::metadata(&own).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(
            euid() == 0 || std::env::var("CI").as_deref() != Ok("true"),
            "giving a file to another user takes root, which the tests have under CI"
        );
        if euid() == 0 {
            std::os::unix::fs::chown(&own, Some(4242), None).unwrap();
            assert!(matches!(
                open_append_owned(&own).unwrap_err(),
                UnsafePath::ForeignFile { .. }
            ));
        }
    }
}
