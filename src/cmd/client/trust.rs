//! Whether the process serving the agent's socket may be trusted with what a client sends it
//! (a browser sign-in's code) and with what it answers (tokens). A socket path in a directory
//! other users can write (like `/tmp`) can be taken by any user while the real agent is down, so
//! after connecting the client asks the kernel who serves the socket (`SO_PEERCRED`) and accepts
//! only root, its own uid, or the owner of the socket's directory when no one else can write
//! that directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The socket is served by a uid the client does not trust.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing the agent at {}: it is served by uid {server}, which is not root, not you (uid {me}), and not the owner of a directory only its owner can write ({}); another user may be posing as the agent. Point --socket or CORTEXID_SOCKET at the real agent's socket, or have the agent serve it from a directory only the agent's user can write (such as /run/cortexid)",
    .path.display(),
    .dir.display()
)]
pub struct Untrusted {
    pub path: PathBuf,
    pub server: u32,
    pub me: u32,
    pub dir: PathBuf,
}

/// Checks `server`, the uid serving the socket at `path` (from the connection's peer
/// credentials), for a client running as this process's effective uid.
pub(crate) fn check(server: u32, path: &Path) -> Result<(), Untrusted> {
    let me = nix::unistd::geteuid().as_raw();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if server == 0 || server == me || owns_private_dir(server, &dir) {
        return Ok(());
    }
    Err(Untrusted {
        path: path.to_path_buf(),
        server,
        me,
        dir,
    })
}

/// Whether `dir` is a directory (not a link) owned by `uid` that neither its group nor others
/// may write.
fn owns_private_dir(uid: u32, dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o022 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_me_and_the_owner_of_a_private_directory_are_trusted_others_not() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        assert!(check(0, &sock).is_ok());
        assert!(check(me, &sock).is_ok());
        let other = me.wrapping_add(4242);
        // A directory the other uid does not own: refused, and the error says what to change.
        let e = check(other, &sock).unwrap_err().to_string();
        assert!(e.contains(&format!("uid {other}")), "{e}");
        assert!(e.contains(&sock.display().to_string()), "{e}");
        assert!(e.contains("CORTEXID_SOCKET"), "{e}");
        if me == 0 {
            // Owned by that uid and writable by others: still refused; private: trusted.
            nix::unistd::chown(dir.path(), Some(nix::unistd::Uid::from_raw(other)), None).unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            assert!(check(other, &sock).is_err());
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            assert!(check(other, &sock).is_ok());
        }
    }
}
