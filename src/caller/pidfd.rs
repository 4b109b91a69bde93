//! The caller's process through its pidfd: `SO_PEERPIDFD` (Linux 6.5) names the process that
//! called `connect()`, `PIDFD_GET_INFO` (6.13) tells whether it still exists and as which real
//! uid, and `SO_PEERGROUPS` gives its supplementary groups as they were at `connect()`, a
//! snapshot like `SO_PEERCRED`'s uid and gid.
//!
//! Why what is then read through `/proc/<pid>` is the peer's:
//! - a pidfd refers to one process (the kernel's `struct pid`), never to a number: here the one
//!   that connected, whatever happened since;
//! - the process keeps its pid number for as long as it exists, until it has exited *and* been
//!   reaped (a zombie still holds it); only then can the number go to another process, and a
//!   process that is gone never comes back.
//!
//! So `/proc/<pid>/exe`, `cgroup` (and `ns/*`) are read by number, and `PIDFD_GET_INFO` then
//! confirms that the peer still exists: it existed during every read before, so the number was
//! its own throughout and each read was of the peer (a process that exits meanwhile loses its
//! executable and namespaces; such a half-read is not trusted). One check after the reads, no
//! directory opened first: each read looks `/proc/<pid>` up again, which costs less than opening
//! and closing it and a second check. This replaces the fallback's start-time checks
//! (`/proc/<pid>/stat` read twice, and `status` for the real uid and groups), which the kernel
//! computes at some cost and which can only show that the process at the pid started before the
//! accept, not that it is the one that connected.
//!
//! Where the kernel lacks any of these, [`read_process`] says so and the caller is read the older
//! way (`super::read_process`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;
use nix::libc;

use super::{Needs, ProcessError, ProcessFacts, read_dir};

#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 0x56;

/// `struct pidfd_info` of `linux/pidfd.h`, its first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CREDS: u64 = 1 << 1;
const PIDFD_GET_INFO: libc::Ioctl = libc::_IOWR::<PidfdInfo>(0xFF, 11);
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// The process a pidfd refers to, now: its pid in the agent's pid namespace and its real uid.
struct Now {
    pid: u32,
    ruid: u32,
}

/// `PIDFD_GET_INFO`: `ESRCH` once the process has been reaped.
#[allow(unsafe_code)]
fn now(pidfd: BorrowedFd<'_>) -> Result<Now, Errno> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CREDS,
        ..PidfdInfo::default()
    };
    // SAFETY: the kernel writes at most the size encoded in the request, size_of::<PidfdInfo>(),
    // into `info`, which outlives the call.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info as *mut PidfdInfo) };
    Errno::result(r)?;
    if info.mask & (PIDFD_INFO_PID | PIDFD_INFO_CREDS) != PIDFD_INFO_PID | PIDFD_INFO_CREDS {
        return Err(Errno::EINVAL);
    }
    Ok(Now {
        pid: info.pid,
        ruid: info.ruid,
    })
}

/// `SO_PEERPIDFD`: a pidfd of the process that connected.
#[allow(unsafe_code)]
fn peer_pidfd(socket: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `fd`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Errno::result(r)?;
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: on success the kernel installed a new descriptor for this process, ours to close.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SO_PEERGROUPS`: the peer's supplementary groups at `connect()`.
pub(super) fn peer_groups(socket: BorrowedFd<'_>) -> Result<Vec<u32>, Errno> {
    // Most callers have a few groups or none: read into the stack, allocate only what is there.
    let mut few = [0u32; 32];
    let mut needed = match groups_into(socket, &mut few) {
        Ok(n) => return Ok(few.get(..n).unwrap_or(&few).to_vec()),
        Err((Errno::ERANGE, needed)) if needed > few.len() => needed,
        Err((e, _)) => return Err(e),
    };
    loop {
        let mut groups = vec![0u32; needed];
        match groups_into(socket, &mut groups) {
            Ok(n) => {
                groups.truncate(n);
                return Ok(groups);
            }
            // The list is fixed at connect, so this is not expected; the kernel says what it needs.
            Err((Errno::ERANGE, more)) if more > groups.len() => needed = more,
            Err((e, _)) => return Err(e),
        }
    }
}

/// One `getsockopt(SO_PEERGROUPS)` into `groups`: how many it wrote, or the error and how many
/// the kernel says it needs.
#[allow(unsafe_code)]
fn groups_into(socket: BorrowedFd<'_>, groups: &mut [u32]) -> Result<usize, (Errno, usize)> {
    let mut len = std::mem::size_of_val(groups) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `groups`, which is that long.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let entries = len as usize / 4;
    match Errno::result(r) {
        Ok(_) => Ok(entries.min(groups.len())),
        Err(e) => Err((e, entries)),
    }
}

/// Whether this kernel has `PIDFD_GET_INFO`: not known yet, yes, no.
static GET_INFO: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Reads the process on the other end of `socket` (peer pid `pid`, uid `uid`) through its
/// pidfd; `None` if the kernel cannot (no `SO_PEERPIDFD`, `SO_PEERGROUPS` or `PIDFD_GET_INFO`),
/// for the caller to read it the older way.
pub(super) fn read_process(
    socket: BorrowedFd<'_>,
    pid: i32,
    uid: u32,
    needs: Needs,
) -> Option<Result<ProcessFacts, ProcessError>> {
    let pidfd = match peer_pidfd(socket) {
        Ok(fd) => fd,
        Err(Errno::ESRCH) => return Some(Err(ProcessError::Gone(pid))),
        Err(_) => return None,
    };
    let groups = peer_groups(socket).ok()?;
    if GET_INFO.load(Ordering::Relaxed) == UNKNOWN {
        let has = !matches!(now(pidfd.as_fd()), Err(e) if e != Errno::ESRCH);
        GET_INFO.store(if has { YES } else { NO }, Ordering::Relaxed);
    }
    if GET_INFO.load(Ordering::Relaxed) == NO {
        return None;
    }
    let prefix = format!("/proc/{pid}/");
    let facts = read_dir(nix::fcntl::AT_FDCWD, &prefix, groups, needs);
    // The peer still exists after the reads: they were of the peer.
    match now(pidfd.as_fd()) {
        Ok(n) if n.pid != pid as u32 => Some(Err(ProcessError::NotThePeer(pid))),
        Ok(n) if n.ruid != uid => Some(Err(ProcessError::OtherUser(pid))),
        Ok(_) => Some(Ok(facts)),
        Err(_) => Some(Err(ProcessError::Gone(pid))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::{Caller, attest_at, boot_ticks_now};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    /// A listening socket in a directory anyone may enter (the attackers are other uids).
    fn listener() -> (tempfile::TempDir, PathBuf, UnixListener) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        (dir, path, listener)
    }

    /// Both ways of attesting the peer of `socket`: through its pidfd, then by number.
    fn both(socket: &UnixStream, accepted: Option<u64>) -> [Caller; 2] {
        let cred = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials).unwrap();
        let (uid, gid, pid) = (cred.uid(), cred.gid(), Some(cred.pid()));
        let proc_root = Path::new("/proc");
        [
            attest_at(proc_root, Some(socket.as_fd()), uid, gid, pid, accepted, Needs::ALL),
            attest_at(proc_root, None, uid, gid, pid, accepted, Needs::ALL),
        ]
    }

    /// `python3 -c script socket` as `uid` (with supplementary `groups`), its stdout piped.
    #[allow(unsafe_code)]
    fn python_as(uid: u32, groups: &[u32], script: &str, socket: &Path) -> Child {
        use std::os::unix::process::CommandExt;
        let groups: Vec<nix::unistd::Gid> = groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(socket).stdout(Stdio::piped());
        cmd.uid(uid).gid(uid);
        if !groups.is_empty() {
            // SAFETY: only a system call between fork and exec, on a list built before the fork.
            // It runs after the uid is set, so only as root.
            unsafe {
                cmd.pre_exec(move || Ok(nix::unistd::setgroups(&groups)?));
            }
        }
        cmd.spawn().expect("python3 plays the caller in this test")
    }

    fn line(child: &mut Child) -> String {
        use std::io::BufRead;
        let mut out = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut out)
            .unwrap();
        out.trim().to_string()
    }

    #[test]
    fn this_process_reads_the_same_through_its_pidfd_as_by_number() {
        let (_dir, path, listener) = listener();
        let _client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = std::process::id() as i32;
        let uid = nix::unistd::getuid().as_raw();
        let through_pidfd = read_process(server.as_fd(), me, uid, Needs::ALL)
            .expect("this kernel has SO_PEERPIDFD and PIDFD_GET_INFO (6.13 or later)")
            .unwrap();
        let [pidfd, by_number] = both(&server, boot_ticks_now());
        assert_eq!(pidfd, by_number);
        assert_eq!(pidfd.unreadable, None);
        assert_eq!(
            pidfd.executable.unwrap().file,
            super::super::FileId::at(&std::env::current_exe().unwrap()).unwrap()
        );
        assert_eq!(through_pidfd.exe, pidfd.exe);
        assert!(pidfd.exe.is_some() && pidfd.user.is_some());
    }

    #[test]
    fn the_groups_are_those_at_connect_through_the_pidfd_and_those_now_by_number() {
        let (_dir, path, listener) = listener();
        let script = "import os, socket, sys, time\n\
                      s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
                      os.setgroups([4444]); print('connected', flush=True); time.sleep(30)\n";
        let mut child = python_as(0, &[4242, 4343], script, &path);
        assert_eq!(line(&mut child), "connected");
        let (server, _) = listener.accept().unwrap();
        let [pidfd, by_number] = both(&server, boot_ticks_now());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(pidfd.unreadable, None);
        assert_eq!(pidfd.groups, [4242, 4343], "the snapshot at connect, like the uid");
        assert!(pidfd.in_group(4343) && !pidfd.in_group(4444));
        assert_eq!(by_number.unreadable, None);
        assert_eq!(by_number.groups, [4444], "what the process has when it is read");
    }

    /// More groups than the first read holds (32), and none: all of them, and none.
    #[test]
    fn many_groups_and_none_are_read_whole() {
        let (_dir, path, listener) = listener();
        let many: Vec<u32> = (5000..5100).collect();
        for (groups, set) in [(many.as_slice(), ""), (&[][..], "os.setgroups([]); ")] {
            let script = format!(
                "import os, socket, sys, time\n{set}s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
                 print('connected', flush=True); time.sleep(30)\n"
            );
            let mut child = python_as(0, groups, &script, &path);
            assert_eq!(line(&mut child), "connected");
            let (server, _) = listener.accept().unwrap();
            let read = peer_groups(server.as_fd());
            let [pidfd, _] = both(&server, boot_ticks_now());
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(read, Ok(groups.to_vec()), "{} groups", groups.len());
            assert_eq!(pidfd.unreadable, None);
            assert_eq!(pidfd.groups, groups);
        }
    }

    /// Makes the next pid the kernel hands out `pid` (tests run as root), then starts `sleep` as
    /// `uid` until it gets it; `None` if other processes kept taking it.
    fn sleeper_at(pid: i32, uid: u32) -> Option<Child> {
        use std::os::unix::process::CommandExt;
        for _ in 0..50 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let mut child = Command::new("sleep").arg("30").uid(uid).gid(uid).spawn().unwrap();
            if child.id() as i32 == pid {
                return Some(child);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    /// The attacker (uid 4343) connects, hands the socket to a child of its own and exits; its
    /// pid then goes to another program of the same uid (here `sleep`, standing for a program a
    /// role admits). Neither way of reading takes the new process for the peer.
    #[test]
    fn a_peer_that_hands_its_socket_on_and_exits_is_gone_even_when_its_pid_is_reused() {
        let (_dir, path, listener) = listener();
        let script = "import os, socket, sys, time\n\
                      s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
                      if os.fork() == 0:\n    s.recv(1); os._exit(0)\n\
                      print(os.getpid(), flush=True)\n";
        let mut attacker = python_as(4343, &[], script, &path);
        let pid: i32 = line(&mut attacker).parse().unwrap();
        let (server, _) = listener.accept().unwrap();
        let accepted = boot_ticks_now();
        attacker.wait().unwrap();
        // A process that starts in the accept's clock tick counts as older (see boot_ticks_now).
        std::thread::sleep(std::time::Duration::from_millis(30));
        let Some(mut impostor) = sleeper_at(pid, 4343) else {
            panic!("could not make pid {pid} be reused");
        };
        let [pidfd, by_number] = both(&server, accepted);
        let _ = impostor.kill();
        let _ = impostor.wait();
        for caller in [&pidfd, &by_number] {
            assert_eq!(caller.uid, 4343);
            assert_eq!(caller.pid, Some(pid));
            assert!(caller.exe.is_none() && caller.executable.is_none(), "{caller:?}");
            assert_eq!(caller.namespaces, super::super::Namespaces::UNKNOWN);
        }
        let why = pidfd.unreadable.unwrap();
        assert_eq!(why, format!("process {pid} is gone"));
        let why = by_number.unreadable.unwrap();
        assert_eq!(why, format!("pid {pid} was reused after the connection was made"));
    }

    /// A caller that connects and then runs another program is that program: nothing of the
    /// program that connected is kept.
    #[test]
    fn a_peer_that_execs_after_connecting_is_attested_as_the_program_it_runs_now() {
        let (_dir, path, listener) = listener();
        let script = "import os, socket, sys\n\
                      s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
                      os.set_inheritable(s.fileno(), True)\n\
                      print(os.getpid(), flush=True); os.execvp('sleep', ['sleep', '30'])\n";
        let mut caller = python_as(4343, &[], script, &path);
        let pid: i32 = line(&mut caller).parse().unwrap();
        let (server, _) = listener.accept().unwrap();
        let sleep = std::fs::canonicalize(
            std::env::split_paths(&std::env::var_os("PATH").unwrap())
                .map(|d| d.join("sleep"))
                .find(|p| p.exists())
                .unwrap(),
        )
        .unwrap();
        let exe = Path::new("/proc").join(pid.to_string()).join("exe");
        while std::fs::read_link(&exe).ok().as_deref() != Some(sleep.as_path()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let [pidfd, by_number] = both(&server, boot_ticks_now());
        let _ = caller.kill();
        let _ = caller.wait();
        for attested in [pidfd, by_number] {
            assert_eq!(attested.unreadable, None);
            assert_eq!(attested.exe.unwrap().to_string(), sleep.display().to_string());
            assert_eq!(
                attested.executable.unwrap().file,
                super::super::FileId::at(&sleep).unwrap()
            );
        }
    }
}
