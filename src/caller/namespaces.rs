//! Whether a caller shares the agent's mount and user namespaces.
//!
//! In a mount namespace of its own, a path can name any file: roles by path only mean what they
//! say for callers that see the agent's mounts. Each namespace is a file in `nsfs`
//! (`/proc/<pid>/ns/mnt`, `/proc/<pid>/ns/user`); two processes share one when a `stat` of those
//! files gives the same device and inode (or, read as links, the same inode number).

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::LazyLock;

use nix::fcntl::readlinkat;

use super::exe::FileId;

/// The agent's own mount and user namespaces, read once: a process keeps its namespaces (the
/// agent never calls `setns`), so each connection stats only the caller's.
static AGENT: LazyLock<[Option<FileId>; 2]> =
    LazyLock::new(|| ["mnt", "user"].map(|name| FileId::at(&Path::new("/proc/self/ns").join(name)).ok()));

/// Where a caller is, relative to one of the agent's own namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// The agent's own.
    Agent,
    /// Another one; the inode numbers of the caller's and the agent's (what `readlink
    /// /proc/<pid>/ns/mnt` shows in brackets).
    Other { caller: u64, agent: u64 },
    /// It could not be read (of the caller or of the agent).
    Unknown,
    /// It was not read: when the connection was attested, no role had a condition on the
    /// executable (see [`super::Needs`]).
    NotRead,
}

/// The caller's mount and user namespaces, relative to the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    pub mount: Namespace,
    pub user: Namespace,
}

impl Namespaces {
    /// Nothing known.
    pub(crate) const UNKNOWN: Namespaces = Namespaces {
        mount: Namespace::Unknown,
        user: Namespace::Unknown,
    };

    /// Not read (see [`super::Needs`]).
    pub(crate) const NOT_READ: Namespaces = Namespaces {
        mount: Namespace::NotRead,
        user: Namespace::NotRead,
    };

    /// Those of the process whose `/proc` directory is `dir`, against the agent's, by following
    /// the links: what the tests hold [`Namespaces::read_at`] to.
    #[cfg(test)]
    pub(crate) fn read(dir: &Path) -> Namespaces {
        Namespaces::from_stat(|name| FileId::at(&dir.join("ns").join(name)).ok())
    }

    /// The same, through an open `/proc/<pid>` directory (`prefix` empty) or by path (`dir` unused,
    /// `prefix` `/proc/<pid>/`), by reading the links instead of
    /// following them: `mnt:[4026531841]` names the namespace's inode in `nsfs`, and a `stat`
    /// would have to make a dentry for it first. Inode numbers are unique among the namespaces
    /// that exist, and the agent's exist while it runs, so the same number is the same namespace.
    pub(crate) fn read_at(dir: BorrowedFd<'_>, prefix: &str) -> Namespaces {
        Namespaces::from_stat(|name| {
            let link = readlinkat(dir, format!("{prefix}ns/{name}").as_str()).ok()?;
            let ino = link
                .to_str()?
                .strip_prefix(name)?
                .strip_prefix(":[")?
                .strip_suffix(']')?;
            let ino = ino.parse().ok()?;
            // nsfs is one file system: the device is the agent's own namespaces'.
            let [mount, user] = *AGENT;
            let dev = if name == "mnt" { mount } else { user }?.dev;
            Some(FileId { dev, ino })
        })
    }

    /// From `stat`, which gives the file of a namespace by name (`mnt`, `user`).
    fn from_stat(stat: impl Fn(&str) -> Option<FileId>) -> Namespaces {
        let one = |name: &str, agent: Option<FileId>| match (stat(name), agent) {
            (Some(caller), Some(agent)) if caller == agent => Namespace::Agent,
            (Some(caller), Some(agent)) => Namespace::Other {
                caller: caller.ino,
                agent: agent.ino,
            },
            _ => Namespace::Unknown,
        };
        let [mount, user] = *AGENT;
        Namespaces {
            mount: one("mnt", mount),
            user: one("user", user),
        }
    }
}

impl Namespace {
    /// "mount namespace mnt:[4026532178], the agent's is mnt:[4026531832]".
    pub(crate) fn describe(&self, kind: &str, tag: &str) -> String {
        match self {
            Namespace::Agent => format!("the agent's {kind} namespace"),
            Namespace::Other { caller, agent } => {
                format!("another {kind} namespace ({tag}:[{caller}]) than the agent ({tag}:[{agent}])")
            }
            Namespace::Unknown => format!("a {kind} namespace that could not be read"),
            Namespace::NotRead => format!(
                "a {kind} namespace not read for this connection (made while no role had a condition on the executable; connect again)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn this_process_shares_the_agents_namespaces() {
        let me = Path::new("/proc").join(std::process::id().to_string());
        let ns = Namespaces::read(&me);
        assert_eq!(
            ns,
            Namespaces {
                mount: Namespace::Agent,
                user: Namespace::Agent
            }
        );
    }

    #[test]
    fn the_links_read_through_a_directory_say_what_a_stat_says() {
        let mut child = std::process::Command::new("unshare")
            .args(["-Um", "sleep", "30"])
            .spawn()
            .unwrap();
        for pid in [std::process::id(), child.id()] {
            let path = Path::new("/proc").join(pid.to_string());
            // unshare makes its namespaces before it runs sleep.
            for _ in 0..100 {
                if Namespaces::read(&path).user != Namespace::Agent {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let dir = std::fs::File::open(&path).unwrap();
            assert_eq!(Namespaces::read_at(dir.as_fd(), ""), Namespaces::read(&path));
            let by_path = format!("{}/", path.display());
            assert_eq!(
                Namespaces::read_at(nix::fcntl::AT_FDCWD, &by_path),
                Namespaces::read(&path)
            );
        }
        let dir = std::fs::File::open(Path::new("/proc").join(child.id().to_string())).unwrap();
        let theirs = Namespaces::read_at(dir.as_fd(), "");
        let _ = child.kill();
        let _ = child.wait();
        assert!(matches!(theirs.mount, Namespace::Other { .. }), "{theirs:?}");
        assert!(matches!(theirs.user, Namespace::Other { .. }), "{theirs:?}");
    }

    #[test]
    fn an_unreadable_namespace_is_unknown_and_another_names_both() {
        let nowhere = Path::new("/proc/0");
        assert_eq!(Namespaces::read(nowhere), Namespaces::UNKNOWN);
        let other = Namespace::Other { caller: 7, agent: 8 };
        assert_eq!(
            other.describe("mount", "mnt"),
            "another mount namespace (mnt:[7]) than the agent (mnt:[8])"
        );
    }
}
