//! A caller's executable, identified by what it is rather than by what it is called.
//!
//! `/proc/<pid>/exe` read as a link is a path as the *caller's* mount namespace names it: a caller
//! in a namespace of its own can bind-mount any program over `/usr/bin/curl` and run it there, and
//! the link then reads `/usr/bin/curl`. Followed instead (a `stat` of the magic link, or an `open`
//! of it), it reaches the file the kernel actually runs, whatever any namespace calls it. So the
//! name ([`ExeName`]) only describes the caller in messages and audit lines, and the file
//! ([`Executable`]: device and inode) is what roles match.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executable {
    pub file: FileId,
    /// The file has no name left anywhere: deleted or replaced (an upgrade) after the process
    /// started it.
    pub deleted: bool,
}

impl Executable {
    pub(crate) fn of(meta: &Metadata) -> Executable {
        Executable {
            file: FileId::of(meta),
            deleted: meta.nlink() == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
