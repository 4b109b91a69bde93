//! Whether a caller shares the agent's mount and user namespaces.
//!
//! In a mount namespace of its own, a path can name any file: roles by path only mean what they
//! say for callers that see the agent's mounts. Each namespace is a file in `nsfs`
//! (`/proc/<pid>/ns/mnt`, `/proc/<pid>/ns/user`); two processes share one when a `stat` of those
//! files gives the same device and inode.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::LazyLock;

use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;

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

    /// Those of the process whose `/proc` directory is `dir`, against the agent's.
    pub(crate) fn read(dir: &Path) -> Namespaces {
        Namespaces::from_stat(|name| FileId::at(&dir.join("ns").join(name)).ok())
    }

    /// The same, through an open `/proc/<pid>` directory.
    pub(crate) fn read_at(dir: BorrowedFd<'_>) -> Namespaces {
        Namespaces::from_stat(|name| {
            fstatat(dir, format!("ns/{name}").as_str(), AtFlags::empty())
                .ok()
                .map(|st| FileId::of_stat(&st))
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
