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
        "the directory {} can be written by {who} (mode {mode:04o}), who could replace what is in it with a link or a file of its own; use a directory only root or the agent can write (such as systemd's LogsDirectory=, StateDirectory=, RuntimeDirectory=), or run: chmod go-w {}",
        dir.display(),
        dir.display()
    )]
    WritableByOthers { dir: PathBuf, who: &'static str, mode: u32 },
    /// The directory belongs to another user.
    #[error(
        "the directory {} belongs to uid {owner}, not to root or the agent (uid {agent}); that user could replace what is in it with a link or a file of its own",
        dir.display()
    )]
    ForeignDirectory { dir: PathBuf, owner: u32, agent: u32 },
    /// A link on the way belongs to another user (who may have planted it in a sticky
    /// directory such as /tmp).
    #[error(
        "{} is a symbolic link of uid {owner}, not of root or the agent (uid {agent}); that user chose where it leads",
        path.display()
    )]
    ForeignLink { path: PathBuf, owner: u32, agent: u32 },
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
/// to one of them and is not writable by group or other; and that no one else can swap `dir`
/// itself ([`check_ancestors`]). A directory that does not exist yet passes (nothing can be
/// planted in it either; its nearest existing ancestor is checked).
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), UnsafePath> {
    check_ancestors(dir)?;
    check_dir(dir, Holds::TheFile)
}

/// Checks every directory the kernel passes through to reach `path`, resolving it one component
/// at a time as `open(2)` would (into where each link leads, and back out through `..`): each
/// belongs to root or the agent, and "other" may not write it unless it has the sticky bit (as
/// `/tmp`: others may add entries there, but not rename or remove those of root or the agent);
/// and every link followed belongs to root or the agent (another user may plant one in a sticky
/// directory). A user who owns, or may write, a directory on the way, even one a link merely
/// passes through, could otherwise swap what lies below it for a link to a file of its choosing:
/// an audit log or secret of its own, or another of root's. Group write is the group's owner's
/// choice (`/var/log` is `root:syslog 0775` on Ubuntu) and is left alone. Resolution stops,
/// passing, at the first name that does not exist yet, and at the file `path` names (a link
/// there is followed).
pub(crate) fn check_ancestors(path: &Path) -> Result<(), UnsafePath> {
    walk(path, false)
}

/// [`check_ancestors`] for a file that must be there already (a secret): a name on the way that
/// does not exist is an error (`NotFound`) rather than the end of the check, so no name is left
/// for another user to make in a sticky directory between the check and the open.
pub(crate) fn check_existing_path(path: &Path) -> Result<(), UnsafePath> {
    walk(path, true)
}

fn walk(path: &Path, must_exist: bool) -> Result<(), UnsafePath> {
    use std::collections::VecDeque;
    use std::path::Component;
    let io = |error: std::io::Error| UnsafePath::Io {
        path: path.to_path_buf(),
        error,
    };
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(io)?.join(path)
    };
    let parts = |p: &Path| -> VecDeque<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut pending = parts(&absolute);
    let mut here = PathBuf::from("/");
    check_dir(&here, Holds::Below)?;
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            // Back to a directory already checked on the way down.
            here.pop();
            continue;
        }
        let next = here.join(&part);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        if meta.file_type().is_symlink() {
            let agent = euid();
            if meta.uid() != 0 && meta.uid() != agent {
                return Err(UnsafePath::ForeignLink {
                    path: next,
                    owner: meta.uid(),
                    agent,
                });
            }
            links += 1;
            if links > 40 {
                return Err(io(std::io::Error::from_raw_os_error(nix::libc::ELOOP)));
            }
            let target = std::fs::read_link(&next).map_err(io)?;
            if target.is_absolute() {
                here = PathBuf::from("/");
            }
            let mut resolved = parts(&target);
            resolved.extend(pending);
            pending = resolved;
            continue;
        }
        if !meta.is_dir() {
            // The file itself (or a name open(2) would refuse as a directory).
            return Ok(());
        }
        check_dir_meta(&next, &meta, Holds::Below)?;
        here = next;
    }
    Ok(())
}

/// Which directory on the way to a file is checked: the one that holds it, which no one but root
/// and the agent may write, or one above, which "other" may write only with the sticky bit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holds {
    TheFile,
    Below,
}

/// One directory on the way to a file: it belongs to root or the agent, and is written by no one
/// else as `holds` says. One that does not exist passes.
fn check_dir(dir: &Path, holds: Holds) -> Result<(), UnsafePath> {
    match std::fs::metadata(dir) {
        Ok(meta) => check_dir_meta(dir, &meta, holds),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(UnsafePath::Io {
            path: dir.to_path_buf(),
            error,
        }),
    }
}

/// [`check_dir`] on what a `stat` of `dir` already gave.
fn check_dir_meta(dir: &Path, meta: &std::fs::Metadata, holds: Holds) -> Result<(), UnsafePath> {
    let agent = euid();
    if meta.uid() != 0 && meta.uid() != agent {
        return Err(UnsafePath::ForeignDirectory {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            agent,
        });
    }
    let mode = meta.mode() & 0o7777;
    let (group, other, sticky) = (mode & 0o020 != 0, mode & 0o002 != 0, mode & 0o1000 != 0);
    let who = match holds {
        Holds::TheFile if other => "every user",
        Holds::TheFile if group => "its group",
        Holds::Below if other && !sticky => "every user",
        _ => return Ok(()),
    };
    Err(UnsafePath::WritableByOthers {
        dir: dir.to_path_buf(),
        who,
        mode,
    })
}

/// Opens `path` for appending (created 0640 if missing) without following a link, and only if it
/// is a regular file with one name that the agent owns, in a directory only root and the agent
/// control ([`check_private_dir`], checked at each open).
pub(crate) fn open_append_owned(path: &Path) -> Result<File, UnsafePath> {
    let io = |error: std::io::Error| UnsafePath::Io {
        path: path.to_path_buf(),
        error,
    };
    // Checked again at every open (a rotation, a reload, a file that was missing): the
    // directory may have been made or changed since the configuration was loaded.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_private_dir(dir)?;
    }
    // O_NONBLOCK: a FIFO planted at the path is refused below, not waited on for a reader.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
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

    /// Every directory above a path counts: one another user owns (where it could swap the
    /// directory below for a link), or that every user may write without the sticky bit. `/tmp`'s
    /// kind (root's, sticky) and a group-writable one of root's pass.
    #[test]
    fn a_directory_above_that_another_user_controls_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        let below = theirs.join("logs");
        std::fs::create_dir_all(&below).unwrap();
        check_private_dir(&below).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(4643)), None).unwrap();
        let e = check_private_dir(&below).unwrap_err().to_string();
        assert!(
            e.contains(&format!("the directory {} belongs to uid 4643", theirs.display())),
            "{e}"
        );
        // Reached through a link in a directory of root's: where it leads is checked too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&below, &link).unwrap();
        let e = check_ancestors(&link.join("audit.jsonl")).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 4643"), "{e}");

        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        for (mode, ok) in [(0o777, false), (0o1777, true), (0o775, true)] {
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_private_dir(&below).is_ok(), ok, "{mode:o}");
        }
    }

    /// A link of root's leading to a link in another user's directory, which leads back to a
    /// directory of root's: the path as written and where it ends are root's, but the user can
    /// swap its link at will. Refused, as is a link another user planted in a sticky directory.
    #[test]
    fn a_directory_a_link_only_passes_through_counts_and_so_does_a_planted_link() {
        use std::os::unix::fs::{lchown, symlink};
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path();
        let (root, user, logs) = (chain.join("root"), chain.join("u4701"), chain.join("logs"));
        for d in [&root, &user, &logs] {
            std::fs::create_dir(d).unwrap();
        }
        nix::unistd::chown(&user, Some(nix::unistd::Uid::from_raw(4701)), None).unwrap();
        symlink(user.join("hop"), root.join("audit")).unwrap();
        symlink(&logs, user.join("hop")).unwrap();
        lchown(user.join("hop"), Some(4701), Some(4701)).unwrap();
        let e = check_private_dir(&root.join("audit")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("the directory {} belongs to uid 4701", user.display())),
            "{e}"
        );
        let e = check_ancestors(&root.join("audit").join("audit.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to uid 4701"), "{e}");
        // Root's own links, relative and absolute, through root's directories: fine.
        symlink("../logs", root.join("mine")).unwrap();
        check_private_dir(&root.join("mine")).unwrap();
        check_ancestors(&root.join("mine").join("audit.jsonl")).unwrap();

        let shared = chain.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        symlink(&logs, shared.join("planted")).unwrap();
        lchown(shared.join("planted"), Some(4702), Some(4702)).unwrap();
        let e = check_ancestors(&shared.join("planted").join("secret"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symbolic link of uid 4702"), "{e}");
    }

    /// The audit log's directory is checked at each open, not only at load: one another user
    /// made later (in /tmp) is refused, and a FIFO planted at the path is refused at once rather
    /// than waited on for a reader (which would hang every request).
    #[test]
    fn each_open_checks_the_directory_and_a_fifo_is_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("made-later");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(4901)), None).unwrap();
        let e = open_append_owned(&theirs.join("audit.jsonl")).unwrap_err();
        assert!(matches!(e, UnsafePath::ForeignDirectory { owner: 4901, .. }), "{e}");
        assert!(!theirs.join("audit.jsonl").exists(), "nothing created there");

        let fifo = dir.path().join("audit.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(open_append_owned(&fifo).map(drop)));
        let opened = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO with no reader must not wait for one");
        let e = opened.unwrap_err();
        assert!(
            matches!(e, UnsafePath::NotRegular { .. } | UnsafePath::Io { .. }),
            "{e}"
        );
    }

    /// A secret's path must be there whole when it is checked (no name left for another user
    /// to make in a sticky directory before the open); a directory the agent makes later may not.
    #[test]
    fn a_missing_name_ends_the_check_only_where_it_may_be_made_later() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("later").join("file");
        check_ancestors(&later).unwrap();
        let e = check_existing_path(&later).unwrap_err();
        assert!(
            matches!(&e, UnsafePath::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound),
            "{e}"
        );
    }

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
