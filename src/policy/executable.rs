//! A role's conditions on the caller's executable: `executables` (the caller runs the very file a
//! configured path leads to, and, unless `executables_any_namespace`, it shares the agent's user
//! namespace) and `executable_sha256` (the content of the file it runs).
//!
//! Another mount namespace alone does not refuse a caller: only root makes one outside a user
//! namespace of its own (systemd does, for every sandboxed service, and for the agent itself),
//! and the file a path names there is still compared by device and inode with the file it names
//! for the agent. An unprivileged user gets a mount namespace where it may bind-mount anything
//! only inside a user namespace of its own, which is refused unless the role says otherwise.
//!
//! Neither uses the path the caller's own namespace gives its executable: that name only appears
//! in messages. The configured paths are `stat`-ed by the agent at each match (one system call per
//! path, no cache to go stale), so a binary replaced at its path, as by a package upgrade, is the
//! one that matches from then on; a process still running the replaced file no longer does.

use std::path::PathBuf;

use crate::caller::{Caller, FileId, Namespace, Sha256, hex};
use crate::config::Role;

/// Why the caller does not satisfy `executables` (the role's `exes`), or `None` when it does.
pub(super) fn executables_mismatch(role: &Role, exes: &[PathBuf], caller: &Caller) -> Option<String> {
    let needs = format!("role {:?} needs executable in {:?}", role.name, exes);
    if let Some(why) = not_read(caller) {
        return Some(format!("{needs}, and {why}"));
    }
    let Some(executable) = &caller.executable else {
        return Some(format!("{needs}, and the caller's executable could not be read"));
    };
    if !role.executables_any_namespace {
        let namespaces = [(caller.namespaces.user, "user", "user")];
        for (ns, kind, tag) in namespaces {
            if ns != Namespace::Agent {
                return Some(format!(
                    "{needs}, and the caller runs in {}, where a path can name any file (executables_any_namespace = true would match it by file)",
                    ns.describe(kind, tag)
                ));
            }
        }
    }
    let mut files = Vec::new();
    for path in exes {
        match FileId::at(path) {
            Ok(file) if file == executable.file => return None,
            Ok(file) => files.push(format!("{} is {file}", path.display())),
            Err(e) => files.push(format!("{}: {e}", path.display())),
        }
    }
    let which = match exes {
        [one] => format!("the file at {}", one.display()),
        _ => format!(
            "any of the files at {}",
            exes.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let deleted = if executable.deleted {
        "; it runs a file deleted or replaced since it started (restart it after an upgrade)"
    } else {
        ""
    };
    Some(format!(
        "{needs}, and the caller's executable is not {which} (it runs {}{deleted}; {})",
        executable.file,
        files.join("; ")
    ))
}

/// Why a connection's executable was not read, if it was not: it was attested while no role had
/// a condition on the executable (`caller::Needs`), before a reload that added one.
fn not_read(caller: &Caller) -> Option<String> {
    (caller.namespaces.user == Namespace::NotRead).then(|| {
        format!(
            "the caller's executable and {}",
            Namespace::NotRead.describe("user", "user")
        )
    })
}

/// Why the caller's executable has none of the role's `digests`, or `None` when it has one.
pub(super) fn sha256_mismatch(role: &Role, digests: &[Sha256], caller: &Caller) -> Option<String> {
    let wanted = || digests.iter().map(hex).collect::<Vec<_>>().join(", ");
    if let Some(why) = not_read(caller) {
        return Some(format!(
            "role {:?} needs an executable with SHA-256 in [{}], and {why}",
            role.name,
            wanted()
        ));
    }
    match caller.executable_sha256() {
        Ok(digest) if digests.contains(&digest) => None,
        Ok(digest) => Some(format!(
            "role {:?} needs an executable with SHA-256 in [{}], and the caller's has {}",
            role.name,
            wanted(),
            hex(&digest)
        )),
        Err(e) => Some(format!(
            "role {:?} needs an executable with SHA-256 in [{}], and the caller's could not be hashed: {e}",
            role.name,
            wanted()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::caller::{Executable, Namespaces};

    fn role(exes: &[&Path]) -> Role {
        Role {
            name: "r".into(),
            uids: None,
            gids: None,
            units: None,
            user_units: None,
            executables: Some(exes.iter().map(|p| p.to_path_buf()).collect()),
            executables_any_namespace: false,
            executable_sha256: None,
            claims: None,
            login: None,
            pod: Default::default(),
            identities: vec!["payments".into()],
            audiences: None,
            scopes: None,
            agent: false,
            rate: None,
        }
    }

    fn check(r: &Role, caller: &Caller) -> Option<String> {
        executables_mismatch(r, r.executables.as_deref().unwrap_or_default(), caller)
    }

    /// A caller that runs the file at `path`, in the agent's namespaces.
    fn running(path: &Path) -> Caller {
        let mut c = Caller::from_ids(1001, 1001, Some(4242));
        c.executable = Some(Executable::of(&std::fs::metadata(path).unwrap()));
        c.namespaces = Namespaces {
            mount: Namespace::Agent,
            user: Namespace::Agent,
        };
        c
    }

    fn program(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A connection attested while no role looked at the executable (`caller::Needs`) is told to
    /// connect again by both kinds of executable condition, even with `executables_any_namespace`.
    #[test]
    fn an_executable_not_read_for_the_connection_says_connect_again() {
        let mut caller = Caller::from_ids(1001, 1001, Some(4242));
        caller.namespaces = Namespaces::NOT_READ;
        let mut by_path = role(&[Path::new("/bin/sh")]);
        by_path.executables_any_namespace = true;
        let mut by_digest = role(&[]);
        by_digest.executables = None;
        by_digest.executable_sha256 = Some(vec![[0; 32]]);
        for why in [
            check(&by_path, &caller),
            sha256_mismatch(&by_digest, &[[0; 32]], &caller),
        ] {
            let why = why.unwrap();
            assert!(
                why.contains("the caller's executable and a user namespace not read for this connection")
                    && why.ends_with("connect again)"),
                "{why}"
            );
        }
    }

    #[test]
    fn the_file_matches_by_device_and_inode_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let tool = program(dir.path(), "tool", "#!/bin/sh\n");
        let copy = program(dir.path(), "copy", "#!/bin/sh\n");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&tool, &link).unwrap();
        assert_eq!(check(&role(&[&tool]), &running(&tool)), None);
        assert_eq!(
            check(&role(&[&link]), &running(&tool)),
            None,
            "a configured symbolic link names the file it leads to"
        );
        let why = check(&role(&[&tool]), &running(&copy)).unwrap();
        assert!(
            why.contains(&format!(
                "the caller's executable is not the file at {}",
                tool.display()
            )),
            "{why}"
        );
        assert!(why.contains("inode"), "{why}");
        let why = check(&role(&[&tool, &dir.path().join("missing")]), &running(&copy)).unwrap();
        assert!(why.contains("is not any of the files at"), "{why}");
        assert!(why.contains("missing: No such file"), "{why}");
    }

    #[test]
    fn a_replaced_binary_is_picked_up_and_the_old_one_no_longer_matches() {
        let dir = tempfile::tempdir().unwrap();
        let tool = program(dir.path(), "tool", "#!/bin/sh\n# 1\n");
        let old = std::fs::File::open(&tool).unwrap();
        let old_caller = running(&tool);
        // An upgrade: the new version is renamed over the old one.
        let new = program(dir.path(), "tool.new", "#!/bin/sh\n# 2\n");
        std::fs::rename(&new, &tool).unwrap();
        let mut deleted = old_caller.clone();
        deleted.executable = Some(Executable::of(&old.metadata().unwrap()));
        let why = check(&role(&[&tool]), &deleted).unwrap();
        assert!(why.contains("deleted or replaced since it started"), "{why}");
        assert_eq!(check(&role(&[&tool]), &running(&tool)), None);
    }

    #[test]
    fn another_mount_or_user_namespace_needs_the_role_to_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let tool = program(dir.path(), "tool", "#!/bin/sh\n");
        let mut r = role(&[&tool]);
        let mut elsewhere = running(&tool);
        elsewhere.namespaces.mount = Namespace::Other { caller: 7, agent: 8 };
        assert_eq!(
            check(&r, &elsewhere),
            None,
            "another mount namespace alone is matched by file"
        );
        let mut other_user = running(&tool);
        other_user.namespaces.user = Namespace::Other { caller: 9, agent: 10 };
        let why = check(&r, &other_user).unwrap();
        assert!(why.contains("another user namespace (user:[9])"), "{why}");
        assert!(why.contains("executables_any_namespace"), "{why}");
        let mut unknown = running(&tool);
        unknown.namespaces = Namespaces::UNKNOWN;
        let why = check(&r, &unknown).unwrap();
        assert!(why.contains("could not be read"), "{why}");

        r.executables_any_namespace = true;
        assert_eq!(check(&r, &elsewhere), None);
        assert_eq!(check(&r, &other_user), None);
        let copy = program(dir.path(), "copy", "#!/bin/sh\n");
        let mut impostor = running(&copy);
        impostor.namespaces.mount = Namespace::Other { caller: 7, agent: 8 };
        let why = check(&r, &impostor).unwrap();
        assert!(why.contains("is not the file at"), "still by file: {why}");
    }

    #[test]
    fn an_unread_executable_matches_no_condition_on_it() {
        let unread = Caller::from_ids(1001, 1001, Some(4242));
        let tool = PathBuf::from("/usr/bin/true");
        let why = check(&role(&[&tool]), &unread).unwrap();
        assert!(why.contains("could not be read"), "{why}");
        let why = sha256_mismatch(&role(&[]), &[[0; 32]], &unread).unwrap();
        assert!(why.contains("could not be hashed"), "{why}");
    }

    #[test]
    fn the_digest_is_that_of_the_file_the_caller_runs() {
        let me = crate::caller::attest(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            Some(std::process::id() as i32),
            crate::caller::boot_ticks_now(),
        );
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref());
        assert_eq!(sha256_mismatch(&role(&[]), &[[1; 32], digest], &me), None);
        let why = sha256_mismatch(&role(&[]), &[[1; 32]], &me).unwrap();
        assert!(why.contains(&format!("the caller's has {}", hex(&digest))), "{why}");
        assert!(why.contains(&"01".repeat(32)), "{why}");
    }
}
