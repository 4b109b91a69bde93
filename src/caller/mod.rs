//! Who is on the other end of the socket: peer credentials from the kernel (`SO_PEERCRED`), then
//! what `/proc/<pid>` says about that process (executable, namespaces, systemd unit, pod).
//!
//! `SO_PEERCRED` is a snapshot taken at `connect()`, and a PID can be reused. Where the kernel
//! has pidfds for socket peers (Linux 6.13 and later), `/proc/<pid>` is read by path and the
//! peer's pidfd then shows it still exists, so the pid was its throughout (`pidfd.rs` states
//! why), and the supplementary groups are the kernel's snapshot at `connect()`
//! (`SO_PEERGROUPS`), like the uid. Elsewhere what `/proc/<pid>` says is trusted only if the
//! process there started no later than the moment the connection was accepted and still has the
//! same start time after everything was read, and the groups are those it has then. Either way,
//! when the process cannot be confirmed, or its main thread has exited (then `/proc/<pid>` shows
//! neither its executable nor its cgroups), those attributes are left unknown, and only roles
//! that do not need them can match; with pods looked up, none does.
//!
//! The executable is recorded twice: as the file the kernel runs ([`Executable`], a `stat` of
//! `/proc/<pid>/exe` followed to the file), which roles match, and as the path the caller's own
//! mount namespace calls it ([`ExeName`]), which only describes the caller. The caller's mount and
//! user namespaces are recorded relative to the agent's ([`Namespaces`]).

mod exe;
mod kubelet;
mod namespaces;
mod pidfd;
mod pod;
mod users;

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, readlinkat};
use nix::sys::stat::{Mode, fstatat};

use serde::Serialize;
use tokio::net::unix::UCred;

pub(crate) use exe::hex;
pub use exe::{ExeName, Executable, FileId, HashError, Sha256};
pub use kubelet::{Kubelet, KubeletError, MAX_AGE, MIN_REFETCH};
pub use namespaces::{Namespace, Namespaces};
pub use pod::{Pod, PodFacts, PodRef, PodSeen, pod_from_cgroup};

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip)]
    pub groups: Vec<u32>,
    /// What the caller's mount namespace calls its executable: for audit lines and messages,
    /// never to authorize.
    pub exe: Option<ExeName>,
    /// The caller's system unit ([`Units::system`]): `user@UID.service` for a process of a
    /// user's own systemd.
    pub unit: Option<String>,
    /// The unit inside a user's own systemd ([`Units::user`]), named by that user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_unit: Option<String>,
    /// The Kubernetes pod the caller runs in, from its cgroup and the kubelet; none for a process
    /// in no pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// The file the caller runs, as the kernel knows it: what roles by executable match.
    #[serde(skip)]
    pub executable: Option<Executable>,
    /// The caller's mount and user namespaces, relative to the agent's.
    #[serde(skip)]
    pub namespaces: Namespaces,
    /// Why `/proc` attributes are missing, when they are.
    #[serde(skip)]
    pub unreadable: Option<String>,
    /// The agent looks callers' pods up (`[kubernetes]`) and could not read this caller's
    /// cgroup (`unreadable`): it may run in a pod the agent cannot see, so it matches no role
    /// (set by `Agent::with_pod`).
    #[serde(skip)]
    pub pod_unknown: bool,
}

impl Caller {
    /// A caller known only by its credentials (for tests and for callers whose `/proc` is gone).
    pub(crate) fn from_ids(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        Caller {
            uid,
            gid,
            pid,
            user: None,
            groups: Vec::new(),
            exe: None,
            unit: None,
            user_unit: None,
            pod: None,
            executable: None,
            namespaces: Namespaces::UNKNOWN,
            unreadable: None,
            pod_unknown: false,
        }
    }

    /// The SHA-256 of the caller's executable, read through `/proc/<pid>/exe` and checked to be
    /// the file attested at accept; cached per file version.
    pub(crate) fn executable_sha256(&self) -> Result<Sha256, HashError> {
        match (self.pid, &self.executable) {
            (Some(pid), Some(exe)) => exe::sha256(Path::new("/proc"), pid, exe),
            _ => Err(HashError::Unknown),
        }
    }

    /// Whether the caller is in group `gid`, as primary or supplementary group.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// "uid 1001 (payments), pid 4242, unit payments.service, exe /usr/bin/x": what the agent saw.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("uid {}", self.uid);
        if let Some(user) = &self.user {
            s.push_str(&format!(" ({user})"));
        }
        s.push_str(&format!(", gid {}", self.gid));
        if let Some(pid) = self.pid {
            s.push_str(&format!(", pid {pid}"));
        }
        s.push_str(&format!(", unit {}", self.unit.as_deref().unwrap_or("unknown")));
        if let Some(unit) = &self.user_unit {
            s.push_str(&format!(" (user unit {unit})"));
        }
        if let Some(pod) = &self.pod {
            s.push_str(&format!(", {}", pod.describe()));
        }
        match &self.exe {
            Some(exe) => s.push_str(&format!(", exe {exe}")),
            None => s.push_str(", exe unknown"),
        }
        match self.namespaces.mount {
            Namespace::Other { .. } => s.push_str(" (a path in the caller's own mount namespace)"),
            // No role looks at the executable: its name is as the caller's mount namespace has it.
            Namespace::NotRead if self.exe.is_some() => s.push_str(" (mount namespace not read)"),
            _ => {}
        }
        if let Some(why) = &self.unreadable {
            s.push_str(&format!(" (process attributes unreadable: {why})"));
        }
        s
    }
}

/// Which facts about a caller are read beyond those every caller gets (uid, gid, pid, user name,
/// groups, executable name, unit and pod, which roles and the `token.issued` line use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// The file the caller runs ([`Executable`]: `/proc/<pid>/exe` followed, a `stat` through
    /// the caller's mount namespace) and its mount and user namespaces ([`Namespaces`]): only a
    /// role with a condition on the executable uses them. A `stat` and two `readlink`s of
    /// `/proc/<pid>/ns/*` per connection otherwise spent for nothing. Not read, the executable is
    /// `None` and the namespaces are [`Namespace::NotRead`], which no such role accepts: a
    /// connection attested before a reload that adds the first such role is refused by it and
    /// told to connect again.
    pub executable: bool,
}

impl Needs {
    /// Everything (what the tests attest with).
    #[cfg(test)]
    pub(crate) const ALL: Needs = Needs { executable: true };

    /// What the roles of a configuration use.
    pub(crate) fn of(roles: &[std::sync::Arc<crate::config::Role>]) -> Needs {
        Needs {
            executable: roles
                .iter()
                .any(|r| r.executables.is_some() || r.executable_sha256.is_some()),
        }
    }
}

/// Attests the caller on the other end of `socket`, from its peer credentials `cred`, reading
/// what `needs` says beyond the rest. `accepted_ticks` is the boot-time clock, in clock ticks,
/// when the connection was accepted (see [`boot_ticks_now`]); only a kernel without pidfds for
/// socket peers needs it.
pub(crate) fn attest_peer(socket: &impl AsFd, cred: &UCred, accepted_ticks: Option<u64>, needs: Needs) -> Caller {
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    attest_at(
        Path::new("/proc"),
        Some(socket.as_fd()),
        uid,
        gid,
        pid,
        accepted_ticks,
        needs,
    )
}

/// Attests process `pid` without its socket: the way a kernel without pidfds is read.
#[cfg(test)]
pub(crate) fn attest(uid: u32, gid: u32, pid: Option<i32>, accepted_ticks: Option<u64>) -> Caller {
    attest_at(Path::new("/proc"), None, uid, gid, pid, accepted_ticks, Needs::ALL)
}

/// `socket`, when given, is read through the peer's pidfd if the kernel can; otherwise (and
/// without a socket) `/proc/<pid>` is read by number and checked by start time.
fn attest_at(
    proc_root: &Path,
    socket: Option<BorrowedFd<'_>>,
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    accepted_ticks: Option<u64>,
    needs: Needs,
) -> Caller {
    let mut caller = Caller::from_ids(uid, gid, pid);
    caller.user = users::name_of(uid);
    let Some(pid) = pid.filter(|p| *p > 0) else {
        caller.unreadable = Some("the kernel gave no pid".into());
        return caller;
    };
    let read = socket
        .and_then(|socket| pidfd::read_process(socket, pid, uid, needs))
        .unwrap_or_else(|| read_process(proc_root, pid, uid, accepted_ticks, needs));
    let read = read.and_then(|p| match p.main_thread_exited {
        true => Err(ProcessError::MainThreadExited(pid)),
        false => Ok(p),
    });
    match read {
        Ok(p) => {
            caller.groups = p.groups;
            caller.exe = p.exe;
            caller.executable = p.executable;
            caller.namespaces = p.namespaces;
            caller.unit = p.units.system;
            caller.user_unit = p.units.user;
            caller.pod = p.pod.map(|r| Pod {
                uid: r.uid,
                container_id: r.container_id,
                seen: PodSeen::NotLookedUp,
            });
        }
        Err(why) => caller.unreadable = Some(why.to_string()),
    }
    caller
}

struct ProcessFacts {
    /// `exe` was not there: see [`ProcessError::MainThreadExited`].
    main_thread_exited: bool,
    groups: Vec<u32>,
    exe: Option<ExeName>,
    executable: Option<Executable>,
    namespaces: Namespaces,
    units: Units,
    pod: Option<PodRef>,
}

/// Why a caller's `/proc` attributes were not trusted; they are then left unknown.
#[derive(Debug, thiserror::Error)]
enum ProcessError {
    /// The process exited before it was read.
    #[error("process {0} is gone")]
    Gone(i32),
    /// The process at this pid started after the connection was accepted.
    #[error("pid {0} was reused after the connection was made")]
    ReusedBefore(i32),
    /// `/proc/<pid>/status` could not be read.
    #[error("/proc/{pid}/status: {source}")]
    Status { pid: i32, source: std::io::Error },
    /// The process now has another real uid than the peer credentials.
    #[error("pid {0} now belongs to another user")]
    OtherUser(i32),
    /// The process exited while it was being read.
    #[error("process {0} exited while being read")]
    ExitedWhileRead(i32),
    /// The pid was reused while it was being read.
    #[error("pid {0} was reused while being read")]
    ReusedWhileRead(i32),
    /// The peer's pidfd names another pid than its credentials.
    #[error("the process that connected is not pid {0}")]
    NotThePeer(i32),
    /// The process's main thread has exited while others run on: `/proc/<pid>` is the main
    /// thread's, and shows neither its executable nor its cgroups (`/` on every v1 line).
    #[error("process {0}'s main thread has exited; its other threads are not read")]
    MainThreadExited(i32),
}

fn read_process(
    proc_root: &Path,
    pid: i32,
    uid: u32,
    accepted_ticks: Option<u64>,
    needs: Needs,
) -> Result<ProcessFacts, ProcessError> {
    let dir = proc_root.join(pid.to_string());
    let before = start_ticks(&dir).ok_or(ProcessError::Gone(pid))?;
    if let Some(accepted) = accepted_ticks
        && before > accepted
    {
        return Err(ProcessError::ReusedBefore(pid));
    }
    let status = std::fs::read_to_string(dir.join("status")).map_err(|source| ProcessError::Status { pid, source })?;
    let (real_uid, groups) = parse_status(&status);
    if real_uid != Some(uid) {
        return Err(ProcessError::OtherUser(pid));
    }
    // Read as the pidfd path reads it; the start time, read again below, says whether the
    // directory was still this process's.
    let open = nix::fcntl::open(
        &dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| ProcessError::ExitedWhileRead(pid))?;
    let facts = read_dir(open.as_fd(), "", groups, needs);
    let after = start_ticks(&dir).ok_or(ProcessError::ExitedWhileRead(pid))?;
    if after != before {
        return Err(ProcessError::ReusedWhileRead(pid));
    }
    Ok(facts)
}

/// What the `/proc/<pid>` directory says: executable name, the file it is and namespaces (if
/// `needs` them), cgroup. Each name is `prefix` and the file's name, relative to `dir`: a
/// directory opened by the caller (`prefix` empty), or `/proc/<pid>/` itself (`dir` is then
/// [`nix::fcntl::AT_FDCWD`], unused with an absolute path).
fn read_dir(dir: BorrowedFd<'_>, prefix: &str, groups: Vec<u32>, needs: Needs) -> ProcessFacts {
    let at = |name: &str| format!("{prefix}{name}");
    let exe_at = at("exe");
    let link = readlinkat(dir, exe_at.as_str());
    // No `exe` for a process that exists: its main thread is gone (a zombie leading live
    // threads), and what `/proc/<pid>` shows of it is not the process's (EACCES, without
    // CAP_SYS_PTRACE for another user's process, is another matter: the rest still reads).
    let main_thread_exited = link == Err(nix::errno::Errno::ENOENT);
    let exe = link.ok().map(|p| ExeName::new(strip_deleted(PathBuf::from(p))));
    let (executable, namespaces) = if needs.executable {
        // Followed, the link reaches the file itself, whatever the caller's namespace calls it.
        let executable = fstatat(dir, exe_at.as_str(), AtFlags::empty())
            .ok()
            .map(|st| Executable::of_stat(&st));
        (executable, Namespaces::read_at(dir, prefix))
    } else {
        (None, Namespaces::NOT_READ)
    };
    let cgroup = read_to_string(dir, at("cgroup").as_str());
    ProcessFacts {
        main_thread_exited,
        groups,
        exe,
        executable,
        namespaces,
        units: cgroup.as_deref().map(units_from_cgroup).unwrap_or_default(),
        pod: cgroup.as_deref().and_then(pod_from_cgroup),
    }
}

/// The whole of a small `/proc` file, read a page at a time until end of file: not with
/// `File::read_to_string`, whose size hint (`statx`, `lseek`) and reads growing from 32 bytes cost
/// five system calls more per connection on a hybrid-hierarchy `cgroup` file of 150 bytes.
fn read_to_string(dir: BorrowedFd<'_>, name: &str) -> Option<String> {
    let fd = nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(chunk.get(..n)?),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

/// `/proc/<pid>/exe` of a replaced binary reads "/path (deleted)"; [`Executable::deleted`] says so.
fn strip_deleted(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => p,
    }
}

/// Field 22 of `/proc/<pid>/stat`: the process start time in clock ticks since boot.
fn start_ticks(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name come fields 3..; start time is field 22, i.e. the 20th after the name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The boot-time clock now, in the clock ticks `/proc/<pid>/stat` uses.
pub(crate) fn boot_ticks_now() -> Option<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten()? as u64;
    // Round up: a process that started in the same tick as the accept still counts as earlier.
    Some(ts.tv_sec() as u64 * hz + (ts.tv_nsec() as u64 * hz).div_ceil(1_000_000_000))
}

/// Real uid and supplementary groups from `/proc/<pid>/status`.
fn parse_status(status: &str) -> (Option<u32>, Vec<u32>) {
    let mut uid = None;
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            uid = rest.split_whitespace().next().and_then(|u| u.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest.split_whitespace().filter_map(|g| g.parse().ok()).collect();
        }
    }
    (uid, groups)
}

const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".socket", ".mount", ".swap", ".timer"];

/// The systemd units that own a process, from `/proc/<pid>/cgroup` on the unified hierarchy
/// (else systemd's named hierarchy), by systemd's own rule (`cg_path_get_unit`,
/// `cg_path_get_user_unit`): past the leading slices, the next path component is the unit, or
/// there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Units {
    /// The system unit, as `sd_pid_get_unit` tells it: `/system.slice/payments.service` →
    /// `payments.service`; `/system.slice/runner.service/payments.service` (a delegated subtree,
    /// where the service's user names cgroups as it likes) → `runner.service`;
    /// `/user.slice/user-1000.slice/user@1000.service/app.slice/x.service` → `user@1000.service`.
    /// A cgroup outside systemd's slices (`/lxc.payload.c1/…`, `/docker/<id>/…`,
    /// `/kubepods/burstable/…` of the cgroupfs driver), whose subtree may belong to a container
    /// or a user, is in no unit, whatever names are below it. Only root makes system units and
    /// slices, so no unprivileged caller can choose this name.
    pub system: Option<String>,
    /// Below `user@UID.service`, by the same rule: `x.service` above, as `sd_pid_get_user_unit`
    /// tells it. That user's systemd makes it, under any name the user asks for
    /// (`systemd-run --user --unit=payments.service`).
    pub user: Option<String>,
}

/// Whether `component` names a unit (not a slice).
fn is_unit(component: &str) -> bool {
    UNIT_SUFFIXES
        .iter()
        .any(|s| component.ends_with(s) && component.len() > s.len())
}

fn is_slice(component: &str) -> bool {
    component.ends_with(".slice") && component.len() > ".slice".len()
}

/// `user@<uid>.service`: a user's own systemd, whose subtree is delegated to that user.
fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// The unit the next components of a path name: past any slices, the first other component if
/// it is a unit, else none.
fn unit_past_slices<'a>(parts: &mut impl Iterator<Item = &'a str>) -> Option<String> {
    let first = parts.find(|c| !is_slice(c))?;
    is_unit(first).then(|| first.to_string())
}

/// [`Units`] from the contents of a `/proc/<pid>/cgroup` file.
pub(crate) fn units_from_cgroup(contents: &str) -> Units {
    let path = contents
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        // Hybrid hierarchy: fall back to systemd's named hierarchy.
        .or_else(|| {
            contents
                .lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        });
    // An agent in a cgroup namespace of its own sees other cgroups from its root:
    // `/../../system.slice/x.service`. The climb is the kernel's; no cgroup is named "..".
    let mut parts = path
        .into_iter()
        .flat_map(|p| p.split('/'))
        .filter(|c| !c.is_empty() && *c != "..");
    let system = unit_past_slices(&mut parts);
    let user = match &system {
        Some(manager) if is_user_manager(manager) => unit_past_slices(&mut parts),
        _ => None,
    };
    Units { system, user }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "system unit / user unit" of a cgroup file, "-" for none.
    fn units(contents: &str) -> String {
        let u = units_from_cgroup(contents);
        format!(
            "{} / {}",
            u.system.as_deref().unwrap_or("-"),
            u.user.as_deref().unwrap_or("-")
        )
    }

    #[test]
    fn the_unit_is_the_system_unit_and_a_user_s_own_units_are_user_units() {
        assert_eq!(units("0::/system.slice/payments.service\n"), "payments.service / -");
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-x.scope\n"),
            "user@1000.service / app-gnome-x.scope"
        );
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service\n"),
            "user@1000.service / sync.service"
        );
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"),
            "user@1000.service / init.scope"
        );
        // The user's systemd itself, in no unit of its own yet.
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service\n"),
            "user@1000.service / -"
        );
        assert_eq!(
            units("0::/user.slice/user-1000.slice/session-3.scope\n"),
            "session-3.scope / -"
        );
        assert_eq!(units("0::/system.slice/runner.service/payload\n"), "runner.service / -");
        assert_eq!(units("0::/\n"), "- / -");
        assert_eq!(units("0::/init.scope\n"), "init.scope / -");
        assert_eq!(
            units("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/cron.service\n0::/\n"),
            "- / -",
            "the unified line wins when present"
        );
        assert_eq!(
            units("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/cron.service\n"),
            "cron.service / -"
        );
    }

    /// What a caller names itself is never its system unit: a cgroup made inside a delegated
    /// subtree (a service's, or a user's own systemd's) under the name of another unit.
    #[test]
    fn a_unit_named_inside_a_delegated_subtree_is_not_the_system_unit() {
        assert_eq!(
            units("0::/system.slice/runner.service/payments.service\n"),
            "runner.service / -"
        );
        assert_eq!(
            units("0::/user.slice/user-4242.slice/user@4242.service/app.slice/payments.service\n"),
            "user@4242.service / payments.service"
        );
        // A user's systemd is `user@` and digits; a name like it inside a delegated subtree is
        // still below the real system unit.
        assert_eq!(
            units("0::/system.slice/runner.service/user@0.service/app.slice/payments.service\n"),
            "runner.service / -"
        );
        assert_eq!(
            units("0::/user.slice/user@x.service/payments.service\n"),
            "user@x.service / -"
        );
    }

    /// A cgroup outside systemd's slices belongs to whoever it was handed to (a container's
    /// root, a user): nothing below it is a unit, as systemd itself reads it.
    #[test]
    fn a_cgroup_outside_systemd_s_slices_is_in_no_unit_whatever_is_below_it() {
        for path in [
            "/lxc.payload.c1/payments.service",
            "/lxc.payload.c1/system.slice/payments.service",
            "/docker/4f2a9c/payments.service",
            "/kubepods/burstable/pod0b7d2c8e-1111-2222-3333-444455556666/4f2a9c/payments.service",
            "/payload/user@1000.service/payments.service",
        ] {
            assert_eq!(units(&format!("0::{path}\n")), "- / -", "{path}");
        }
        // A container with its own systemd is the host's unit for it, not its own units.
        assert_eq!(
            units("0::/machine.slice/machine-c1.scope/payload/system.slice/payments.service\n"),
            "machine-c1.scope / -"
        );
        assert_eq!(
            units(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7d.slice/cri-containerd-4f2a.scope\n"
            ),
            "cri-containerd-4f2a.scope / -"
        );
        // Seen from the agent's own cgroup namespace.
        assert_eq!(
            units("0::/../../system.slice/payments.service\n"),
            "payments.service / -"
        );
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service/app.slice/payload/x.service\n"),
            "user@1000.service / -",
            "a user unit is the first below the user's systemd, or none"
        );
    }

    #[test]
    fn namespaces_are_read_only_when_a_role_has_a_condition_on_the_executable() {
        use crate::config::Role;
        let me = std::process::id() as i32;
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let role = |executables: Option<Vec<PathBuf>>, executable_sha256: Option<Vec<[u8; 32]>>| Role {
            name: "r".into(),
            uids: Some([uid].into()),
            gids: None,
            units: None,
            user_units: None,
            executables,
            executables_any_namespace: false,
            executable_sha256,
            claims: None,
            login: None,
            pod: Default::default(),
            identities: vec!["i".into()],
            audiences: None,
            scopes: None,
            agent: false,
            rate: None,
        };
        let by_uid = std::sync::Arc::new(role(None, None));
        let by_path = std::sync::Arc::new(role(Some(vec![PathBuf::from("/bin/true")]), None));
        let by_digest = std::sync::Arc::new(role(None, Some(vec![[0; 32]])));
        assert_eq!(Needs::of(std::slice::from_ref(&by_uid)), Needs { executable: false });
        assert_eq!(Needs::of(&[by_uid.clone(), by_path]), Needs::ALL);
        assert_eq!(Needs::of(&[by_digest, by_uid]), Needs::ALL);

        let read = |needs| attest_at(Path::new("/proc"), None, uid, gid, Some(me), boot_ticks_now(), needs);
        let all = read(Needs::ALL);
        assert_eq!(all.namespaces.user, Namespace::Agent);
        let some = read(Needs { executable: false });
        assert_eq!(some.namespaces, Namespaces::NOT_READ);
        assert_eq!(some.executable, None);
        assert!(all.executable.is_some());
        assert_eq!(some.unreadable, None);
        // A refusal does not present the executable's name as checked.
        assert!(some.describe().contains("(mount namespace not read)"));
        assert!(!all.describe().contains("mount namespace"));
        assert_eq!((&some.exe, &some.unit), (&all.exe, &all.unit));
        assert!(
            Namespace::NotRead
                .describe("user", "user")
                .contains("not read for this connection"),
        );
    }

    #[test]
    fn a_file_longer_than_a_page_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..2000).map(|n| format!("{n}:x\n")).collect();
        assert!(text.len() > 3 * 4096);
        std::fs::write(dir.path().join("cgroup"), &text).unwrap();
        let open = std::fs::File::open(dir.path()).unwrap();
        assert_eq!(read_to_string(open.as_fd(), "cgroup").as_deref(), Some(text.as_str()));
        assert_eq!(read_to_string(open.as_fd(), "none"), None);
    }

    #[test]
    fn the_start_time_is_field_22_even_with_odd_command_names() {
        let stat = "4242 (a ) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
    }

    #[test]
    fn this_process_is_attested_with_exe_groups_and_its_real_unit() {
        let me = std::process::id() as i32;
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let caller = attest(uid, gid, Some(me), boot_ticks_now());
        assert_eq!(caller.unreadable, None);
        let current = std::env::current_exe().unwrap();
        assert_eq!(caller.exe.unwrap().to_string(), current.display().to_string());
        let executable = caller.executable.unwrap();
        assert_eq!(executable.file, FileId::at(&current).unwrap());
        assert!(!executable.deleted);
        assert_eq!(caller.namespaces.mount, Namespace::Agent);
        assert_eq!(caller.namespaces.user, Namespace::Agent);
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(caller.unit, units_from_cgroup(&cgroup).system);
        let mut groups: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        let mut seen = caller.groups.clone();
        groups.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, groups, "the supplementary groups of this process");
    }

    /// A process with supplementary groups (a root test process may have none): `sleep`, given
    /// `groups` between fork and exec.
    #[allow(unsafe_code)]
    fn sleeper_in_groups(groups: &[u32]) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let groups: Vec<nix::unistd::Gid> = groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: only a system call between fork and exec, on a list built before the fork.
        unsafe {
            cmd.pre_exec(move || Ok(nix::unistd::setgroups(&groups)?));
        }
        cmd.spawn().unwrap()
    }

    #[test]
    fn supplementary_groups_are_read_from_the_process() {
        let mut child = sleeper_in_groups(&[4242, 4343]);
        let pid = child.id() as i32;
        let caller = attest(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            Some(pid),
            boot_ticks_now(),
        );
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(caller.unreadable, None);
        assert_eq!(caller.groups, [4242, 4343]);
        assert!(caller.in_group(4343) && caller.in_group(nix::unistd::getgid().as_raw()));
        assert!(!caller.in_group(4444));
    }

    #[test]
    fn a_process_that_started_after_the_accept_is_not_trusted() {
        let me = std::process::id() as i32;
        let caller = attest(nix::unistd::getuid().as_raw(), 0, Some(me), Some(0));
        assert!(caller.exe.is_none());
        assert!(caller.executable.is_none());
        assert_eq!(caller.namespaces, Namespaces::UNKNOWN);
        assert!(
            caller.unreadable.as_deref().unwrap_or("").contains("reused"),
            "{caller:?}"
        );
        assert!(caller.describe().contains("unreadable"));
    }

    #[test]
    fn a_pid_of_another_user_is_not_trusted() {
        let me = std::process::id() as i32;
        let caller = attest(nix::unistd::getuid().as_raw() + 4242, 0, Some(me), boot_ticks_now());
        assert!(caller.exe.is_none());
        assert!(caller.executable.is_none());
        assert!(caller.unreadable.is_some());
    }
}
