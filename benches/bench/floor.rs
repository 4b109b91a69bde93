//! The floor: the least any server that attests its callers could spend on a new connection.
//! Blocking threads, each in `accept(2)` on the one socket (the kernel wakes one of them per
//! connection), reading a request head, writing a fixed answer of the token answer's size and
//! waiting for the caller to close: no runtime, no parser, no policy, no audit. With `attest`,
//! each connection first makes the system calls cortexid's attestation makes when no role looks
//! at the executable (`SO_PEERCRED`, `SO_PEERPIDFD`, `SO_PEERGROUPS`, reading the `exe` link and
//! the `cgroup` file of `/proc/<pid>`, `PIDFD_GET_INFO` after them, and closing what it opened),
//! and nothing more.
//!
//! So the pair tells how close to nginx a new connection can come with cortexid's attestation
//! and without it, whatever the server is built on.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::libc;

const SO_PEERGROUPS: libc::c_int = 59;
const SO_PEERPIDFD: libc::c_int = 77;

#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}
const PIDFD_GET_INFO: libc::Ioctl = libc::_IOWR::<PidfdInfo>(0xFF, 11);

/// Serves `socket` from `threads` blocking threads until killed. With `handoff`, a thread answers
/// the first request only if it is already there, and hands the connection to a tokio runtime
/// for the rest (the next request, or the close).
pub fn serve(socket: &str, body_len: usize, threads: usize, attest: bool, handoff: bool) {
    let listener = UnixListener::bind(socket).expect("bind the floor socket");
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    answer.extend(std::iter::repeat_n(b'x', body_len));
    let answer: &'static [u8] = answer.leak();
    let listener: &'static UnixListener = Box::leak(Box::new(listener));
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    ));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                loop {
                    let Ok((stream, _)) = listener.accept() else { continue };
                    if attest {
                        attest_peer(&stream);
                    }
                    if handoff {
                        first_then_tokio(stream, answer, rt);
                    } else {
                        serve_one(stream, answer);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// Answers a first head that is already there, then serves the rest on `rt`.
fn first_then_tokio(stream: UnixStream, answer: &'static [u8], rt: &'static tokio::runtime::Runtime) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let fd = stream.as_raw_fd();
    // SAFETY: buf outlives the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    let mut have = n.max(0) as usize;
    if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
        #[allow(unsafe_code)]
        // SAFETY: answer outlives the call.
        let w = unsafe {
            libc::send(
                fd,
                answer.as_ptr().cast(),
                answer.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if w != answer.len() as isize {
            return;
        }
        buf.copy_within(end + 4..have, 0);
        have -= end + 4;
    }
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let _enter = rt.enter();
    let Ok(mut stream) = tokio::net::UnixStream::from_std(stream) else {
        return;
    };
    rt.spawn(async move {
        loop {
            while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
            match stream.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        }
    });
}

/// Answers every whole head on `stream` until the caller closes.
fn serve_one(mut stream: UnixStream, answer: &[u8]) {
    let mut buf = [0u8; 4096];
    let mut have = 0;
    loop {
        let Ok(n) = stream.read(&mut buf[have..]) else { return };
        if n == 0 {
            return;
        }
        have += n;
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if stream.write_all(answer).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return;
        }
    }
}

/// One `getsockopt(SOL_SOCKET, opt)` of `fd` into `out`.
#[allow(unsafe_code)]
fn sockopt<T>(fd: libc::c_int, opt: libc::c_int, out: &mut T) {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `out` is `len` bytes and outlives the call.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (out as *mut T).cast(), &mut len) };
}

/// The peer's pid (`SO_PEERCRED`).
fn peer_pid(fd: libc::c_int) -> i32 {
    // SAFETY: a ucred is plain integers; all zeros is a valid value.
    #[allow(unsafe_code)]
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    sockopt(fd, libc::SO_PEERCRED, &mut cred);
    cred.pid
}

/// The peer's pidfd (`SO_PEERPIDFD`).
#[allow(unsafe_code)]
fn peer_pidfd(fd: libc::c_int) -> OwnedFd {
    let mut pidfd: libc::c_int = -1;
    sockopt(fd, SO_PEERPIDFD, &mut pidfd);
    // SAFETY: the kernel installed a new descriptor for this process, ours to close.
    unsafe { OwnedFd::from_raw_fd(pidfd) }
}

/// The peer's groups (`SO_PEERGROUPS`), dropped.
fn peer_groups(fd: libc::c_int) {
    let mut groups = [0u32; 32];
    sockopt(fd, SO_PEERGROUPS, &mut groups);
}

/// `readlinkat(dir, path)`, the link dropped (`dir` unused for an absolute `path`).
#[allow(unsafe_code)]
fn read_link(dir: libc::c_int, path: &std::ffi::CStr) {
    let mut link = [0u8; 4096];
    // SAFETY: `link` is as long as told and outlives the call.
    unsafe { libc::readlinkat(dir, path.as_ptr(), link.as_mut_ptr().cast(), link.len()) };
}

/// Opens `path` (relative to `dir`, unless absolute), reads it to the end and closes it.
#[allow(unsafe_code)]
fn read_whole(dir: libc::c_int, path: &std::ffi::CStr) {
    let mut text = [0u8; 4096];
    // SAFETY: `text` is as long as told and outlives the reads; the descriptor is closed here.
    unsafe {
        let f = libc::openat(dir, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        while libc::read(f, text.as_mut_ptr().cast(), text.len()) > 0 {}
        libc::close(f);
    }
}

/// `PIDFD_GET_INFO` of `pidfd`, dropped.
#[allow(unsafe_code)]
fn pidfd_info(pidfd: libc::c_int) {
    let mut info = PidfdInfo {
        mask: 3,
        ..PidfdInfo::default()
    };
    // SAFETY: the kernel writes at most `info`'s size into it.
    unsafe { libc::ioctl(pidfd, PIDFD_GET_INFO, &mut info as *mut PidfdInfo) };
}

/// `/proc/<pid>/<name>` as a C string.
fn proc_path(pid: impl std::fmt::Display, name: &str) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/{pid}/{name}")).unwrap_or_default()
}

/// The system calls of cortexid's attestation of a peer when no role has a condition on the
/// executable (`caller::pidfd::read_process` and `caller::read_dir`), their results dropped.
fn attest_peer(stream: &impl AsRawFd) {
    let fd = stream.as_raw_fd();
    let pid = peer_pid(fd);
    let pidfd = peer_pidfd(fd);
    peer_groups(fd);
    read_link(libc::AT_FDCWD, &proc_path(pid, "exe"));
    read_whole(libc::AT_FDCWD, &proc_path(pid, "cgroup"));
    pidfd_info(pidfd.as_raw_fd());
}

/// What each system call of the attestation costs, one after another on one connection from this
/// process (`--attest-cost`): nanoseconds per call, over `n` calls each.
#[allow(unsafe_code)]
pub fn attest_cost(n: usize) -> Vec<(&'static str, f64)> {
    let dir = tempfile::tempdir().expect("tmpdir");
    let path = dir.path().join("s");
    let listener = UnixListener::bind(&path).expect("bind");
    let _client = UnixStream::connect(&path).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let fd = server.as_raw_fd();
    let pid = std::process::id();
    let (exe, cgroup) = (proc_path(pid, "exe"), proc_path(pid, "cgroup"));
    let proc_dir = std::ffi::CString::new(format!("/proc/{pid}")).unwrap_or_default();
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let pidfd = peer_pidfd(fd);
    // SAFETY: opened here, closed at the end.
    let pdir = unsafe { libc::open(proc_dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    let rows = vec![
        (
            "getsockopt(SO_PEERCRED)",
            time(&mut || {
                let _ = peer_pid(fd);
            }),
        ),
        ("getsockopt(SO_PEERPIDFD) + close", time(&mut || drop(peer_pidfd(fd)))),
        ("getsockopt(SO_PEERGROUPS)", time(&mut || peer_groups(fd))),
        (
            "readlink /proc/<pid>/exe",
            time(&mut || read_link(libc::AT_FDCWD, &exe)),
        ),
        (
            "open /proc/<pid>/cgroup + read to end + close",
            time(&mut || read_whole(libc::AT_FDCWD, &cgroup)),
        ),
        (
            "fstatat exe (only while a role has a condition on the executable)",
            // SAFETY: `st` outlives the call.
            time(&mut || unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstatat(pdir, c"exe".as_ptr(), &mut st, 0);
            }),
        ),
        (
            "(the earlier way: open /proc/<pid> (O_PATH) + close)",
            // SAFETY: the descriptor is closed at once.
            time(&mut || unsafe {
                libc::close(libc::open(
                    proc_dir.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                ));
            }),
        ),
        ("ioctl(PIDFD_GET_INFO)", time(&mut || pidfd_info(pidfd.as_raw_fd()))),
        (
            "(the earlier way: readlinkat exe through it)",
            time(&mut || read_link(pdir, c"exe")),
        ),
        (
            "(the earlier way: openat cgroup through it + read to end + close)",
            time(&mut || read_whole(pdir, c"cgroup")),
        ),
        (
            "the whole attestation (attest_peer)",
            time(&mut || attest_peer(&server)),
        ),
    ];
    // SAFETY: opened above, not used after.
    unsafe { libc::close(pdir) };
    rows
}
