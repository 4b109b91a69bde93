//! Hostile callers against roles by executable: a caller that makes a path name another program
//! in a mount namespace of its own, a genuine binary run from another namespace, and a binary
//! identified by its SHA-256. Tests run as root; the attacks run as an unprivileged uid.

mod common;

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use cortexid::devidp::fixture::Role;

const NOBODY: u32 = 64999;
const ATTACKER: u32 = 4242;
const ARGS: [&str; 4] = ["--identity", "payments", "--audience", PAYMENTS];

fn cortexid() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cortexid"))
}

/// Where the caller runs, relative to the agent (this test process).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// `unshare -Urm` as the caller's uid: a user namespace of its own and a mount namespace
    /// in it, where it may bind-mount anything anywhere. No privilege needed.
    OwnUserAndMount,
    /// `unshare -m` as root, then `setpriv` to the caller's uid: another mount namespace in the
    /// agent's user namespace (what systemd's sandboxing and rootful containers make).
    OtherMount,
    /// `unshare -Ur` as the caller's uid: a user namespace of its own, the agent's mounts.
    OwnUser,
}

/// Runs `<run> token ARGS` as `uid` in `place`, after bind-mounting `bind.0` over `bind.1` there.
async fn token_in(
    place: Place,
    uid: u32,
    bind: Option<(&Path, &Path)>,
    run: &Path,
    socket: &Path,
) -> (i32, String, String) {
    let (unshare, drop_to): (&[&str], String) = match place {
        Place::OwnUserAndMount => (&["-Urm"], String::new()),
        Place::OtherMount => (
            &["-m", "--propagation", "private"],
            format!("setpriv --reuid={uid} --regid={uid} --clear-groups "),
        ),
        Place::OwnUser => (&["-Ur"], String::new()),
    };
    let mount = if bind.is_some() {
        "mount --bind \"$1\" \"$2\" || exit 97; "
    } else {
        ""
    };
    // $1 and $2 are the bind mount's source and target, $3 the program; ARGS follow.
    let script = format!("{mount}run=\"$3\"; shift 3; exec {drop_to}\"$run\" token \"$@\"");
    let (from, to) = bind.unwrap_or((run, run));
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(unshare)
        .args(["--", "sh", "-c", &script, "sh"])
        .args([from.as_os_str(), to.as_os_str(), run.as_os_str()])
        .args(ARGS.iter().map(OsStr::new))
        .env("CORTEXID_SOCKET", socket);
    if place != Place::OtherMount {
        cmd.uid(uid).gid(uid);
    }
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(97), "the bind mount failed: {err}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

/// Writes an executable file and waits until it can be run: a process forked by a concurrent test
/// while the file was open for writing holds it open until it execs, and until then running the
/// file fails with "text file busy".
fn write_program(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for _ in 0..100 {
        match std::process::Command::new(path).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{}: {e}", path.display()),
            Ok(_) => return,
        }
    }
    panic!("{} stayed busy", path.display());
}

/// A copy of the cortexid binary with one more byte at its end: another file, another digest,
/// and still a program that asks for a token.
fn impostor(dir: &Path) -> PathBuf {
    let path = dir.join("impostor");
    let mut bytes = std::fs::read(cortexid()).unwrap();
    bytes.push(0);
    write_program(&path, &bytes);
    path
}

async fn harness(roles: Vec<Role>) -> Harness {
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            roles,
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    h
}

/// The places a caller can be in other than the agent's user namespace, with the reason a role
/// without `executables_any_namespace` gives; none where the kernel forbids unprivileged user
/// namespaces. (Another mount namespace alone is matched by file: see `policy/executable.rs`.)
fn elsewhere() -> Vec<(Place, &'static str)> {
    let mut places = Vec::new();
    if unprivileged_userns(ATTACKER) {
        places.push((Place::OwnUserAndMount, "another user namespace"));
        places.push((Place::OwnUser, "another user namespace"));
    } else if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("unprivileged user namespaces (`unshare -Ur` as uid {ATTACKER}) are needed under CI=true");
    } else {
        eprintln!(
            "unprivileged user namespaces are not available here: callers in a user namespace of their own are not tried"
        );
    }
    places
}

#[tokio::test]
async fn a_program_bind_mounted_over_the_allowed_path_in_a_namespace_of_its_own_is_refused() {
    let place = if unprivileged_userns(ATTACKER) {
        Place::OwnUserAndMount
    } else {
        eprintln!(
            "unprivileged user namespaces are not available here: the spoof runs as root in `unshare -m` and drops to uid {ATTACKER} after the bind mount"
        );
        Place::OtherMount
    };
    let digest = sha256_hex(&std::fs::read(cortexid()).unwrap());
    let roles = [
        (
            Role::new("cortexid-only", &["payments"]).executables(&[cortexid()]),
            match place {
                // Its own user namespace is refused as such; a root-made mount namespace by file.
                Place::OwnUserAndMount => "another user namespace".to_string(),
                _ => "is not the file at".to_string(),
            },
        ),
        // From any namespace: only the file can refuse the impostor.
        (
            Role::new("cortexid-anywhere", &["payments"])
                .executables(&[cortexid()])
                .executables_any_namespace(),
            format!(
                r#"role "cortexid-anywhere" needs executable in ["{}"], and the caller's executable is not the file at {}"#,
                cortexid().display(),
                cortexid().display()
            ),
        ),
        // By the genuine binary's digest: only the content of what runs can refuse it.
        (
            Role::new("cortexid-digest", &["payments"]).executable_sha256(&[&digest]),
            r#"role "cortexid-digest" needs an executable with SHA-256 in"#.to_string(),
        ),
    ];
    for (role, reason) in roles {
        let name = role.name.clone();
        let h = harness(vec![role]).await;
        let fake = impostor(h.dir.path());
        let (code, out, err) = token_in(place, ATTACKER, Some((&fake, cortexid())), cortexid(), &h.socket).await;
        assert_eq!(code, 1, "{name}: the impostor got a token (exit {code}): {err}");
        assert!(out.is_empty());
        assert!(err.contains("access_denied"), "{name}: {err}");
        assert!(
            h.audit_lines().iter().all(|l| l["event"] != "token.issued"),
            "{name}: no token was issued"
        );
        let (line, why) = h.last_denial();
        assert_eq!(line["role"], serde_json::Value::Null, "{line}");
        assert_eq!(line["caller"]["uid"], ATTACKER);
        // The name is what the caller's namespace calls the impostor, and the reasons say so.
        assert_eq!(line["caller"]["exe"], cortexid().to_str().unwrap());
        assert!(why.contains("(a path in the caller's own mount namespace)"), "{why}");
        assert!(why.contains(&reason), "{name}: {why}");
    }
}

#[tokio::test]
async fn the_genuine_binary_in_another_namespace_is_refused_unless_the_role_says_so() {
    let mut h = harness(vec![Role::new("by-file", &["payments"]).executables(&[cortexid()])]).await;
    // One uid per refusal: each has its own audit line.
    for (i, (place, reason)) in elsewhere().into_iter().enumerate() {
        let uid = ATTACKER + 1 + i as u32;
        let (code, _, err) = token_in(place, uid, None, cortexid(), &h.socket).await;
        assert_eq!(code, 1, "{place:?} was admitted: {err}");
        let (line, why) = h.last_denial();
        assert_eq!(line["caller"]["uid"], uid, "{line}");
        assert!(
            why.contains(r#"role "by-file" needs executable in"#),
            "{place:?}: {why}"
        );
        assert!(why.contains(reason), "{place:?}: {why}");
    }
    // In the agent's namespaces, the same binary is admitted; in a mount namespace root made
    // (as systemd makes for sandboxed services) too, by file.
    let (code, _, err) = token_as(ATTACKER, cortexid(), &h.socket, &ARGS).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = token_in(Place::OtherMount, ATTACKER, None, cortexid(), &h.socket).await;
    assert_eq!(code, 0, "a root-made mount namespace running the genuine file: {err}");

    h.stop().await;
    let role = h.config.roles.last_mut().unwrap();
    *role = role.clone().executables_any_namespace();
    h.write_config();
    h.start().await;
    for (place, _) in elsewhere() {
        let (code, _, err) = token_in(place, ATTACKER, None, cortexid(), &h.socket).await;
        assert_eq!(code, 0, "{place:?} was refused: {err}");
        let issued = h.audit_lines().pop().unwrap();
        assert_eq!(issued["event"], "token.issued", "{issued}");
        assert_eq!(issued["role"], "by-file", "{issued}");
    }
    // Still by file: a copy run from another namespace is refused.
    let copy = h.dir.path().join("cortexid-copy");
    write_program(&copy, &std::fs::read(cortexid()).unwrap());
    let uid = ATTACKER + 10;
    let (code, _, err) = token_in(Place::OtherMount, uid, None, &copy, &h.socket).await;
    assert_eq!(code, 1, "{err}");
    let (line, why) = h.last_denial();
    assert_eq!(line["caller"]["uid"], uid, "{line}");
    assert!(why.contains("is not the file at"), "{why}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_role_by_digest_admits_the_binary_and_copies_of_it_but_not_one_changed_byte() {
    let genuine = std::fs::read(cortexid()).unwrap();
    let digest = sha256_hex(&genuine);
    let h = harness(vec![
        Role::new("by-digest", &["payments"]).executable_sha256(&[&digest]),
    ])
    .await;

    let (code, _, err) = token_as(ATTACKER, cortexid(), &h.socket, &ARGS).await;
    assert_eq!(code, 0, "{err}");
    // The digest is of the content: an exact copy anywhere is the same program.
    let copy = h.dir.path().join("copy");
    write_program(&copy, &genuine);
    let (code, _, err) = token_as(ATTACKER, &copy, &h.socket, &ARGS).await;
    assert_eq!(code, 0, "{err}");

    // One byte changed where the program does not look (the compiler's note in `.comment`): it
    // still runs and asks, and is another program by digest.
    let mut changed = genuine.clone();
    let at = changed
        .windows(13)
        .position(|w| w == b"rustc version")
        .expect("the compiler's version note");
    changed[at] = b'R';
    let tampered = h.dir.path().join("tampered");
    write_program(&tampered, &changed);
    let uid = ATTACKER + 1;
    let (code, out, err) = token_as(uid, &tampered, &h.socket, &ARGS).await;
    assert_eq!(code, 1, "the changed binary was admitted: {err}");
    assert!(out.is_empty());
    let (line, why) = h.last_denial();
    assert_eq!(line["caller"]["uid"], uid, "{line}");
    assert!(
        why.contains(&format!(
            r#"role "by-digest" needs an executable with SHA-256 in [{digest}], and the caller's has {}"#,
            sha256_hex(&changed)
        )),
        "{why}"
    );
    // The admitted copy, changed in place (same inode): its digest was cached, and the change
    // of content is a new version of the file, hashed again.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&copy).unwrap());
    write_program(&copy, &changed);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&copy).unwrap()),
        inode
    );
    let uid = ATTACKER + 2;
    let (code, _, err) = token_as(uid, &copy, &h.socket, &ARGS).await;
    assert_eq!(code, 1, "a stale digest admitted the changed file: {err}");
    let (line, why) = h.last_denial();
    assert_eq!(line["caller"]["uid"], uid, "{line}");
    assert!(why.contains(&sha256_hex(&changed)), "{why}");
    let issued = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.issued")
        .count();
    assert_eq!(issued, 2);
}
