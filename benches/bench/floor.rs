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

/// The system calls of cortexid's attestation of a peer when no role has a condition on the
/// executable (`caller::pidfd::read_process` and `caller::read_dir`), their results dropped.
#[allow(unsafe_code)]
fn attest_peer(stream: &impl AsRawFd) {
    let fd = stream.as_raw_fd();
    // SAFETY (all below): each buffer outlives its call and is at least as long as told.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        );
        let mut pidfd: libc::c_int = -1;
        let mut len = 4;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        );
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let mut groups = [0u32; 32];
        let mut len = 128;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        );
        let exe = format!("/proc/{}/exe\0", cred.pid);
        let mut link = [0u8; 4096];
        libc::readlink(exe.as_ptr().cast(), link.as_mut_ptr().cast(), link.len());
        let cgroup = format!("/proc/{}/cgroup\0", cred.pid);
        let cg = libc::open(cgroup.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        let mut text = [0u8; 4096];
        while libc::read(cg, text.as_mut_ptr().cast(), text.len()) > 0 {}
        libc::close(cg);
        let mut info = PidfdInfo {
            mask: 3,
            ..PidfdInfo::default()
        };
        libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info as *mut PidfdInfo);
    }
}

/// What each system call of the attestation costs, one after another on one connection from this
/// process (`--attest-cost`): nanoseconds per call, the median of `rounds` runs of `n` calls.
#[allow(unsafe_code)]
pub fn attest_cost(n: usize) -> Vec<(&'static str, f64)> {
    let dir = tempfile::tempdir().expect("tmpdir");
    let path = dir.path().join("s");
    let listener = UnixListener::bind(&path).expect("bind");
    let _client = UnixStream::connect(&path).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let fd = server.as_raw_fd();
    let pid = std::process::id();
    let proc_path = format!("/proc/{pid}\0");
    let exe_path = format!("/proc/{pid}/exe\0");
    let cgroup_path = format!("/proc/{pid}/cgroup\0");
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    // SAFETY (all below): each buffer outlives its call and is at least as long as told; every
    // descriptor opened is closed in the same closure.
    unsafe {
        let pdir = libc::open(
            proc_path.as_ptr().cast(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        let mut pidfd: libc::c_int = -1;
        let mut len = 4;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        );
        let rows: Vec<(&'static str, f64)> = vec![
            (
                "getsockopt(SO_PEERCRED)",
                time(&mut || {
                    let mut cred: libc::ucred = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_PEERCRED,
                        (&mut cred as *mut libc::ucred).cast(),
                        &mut len,
                    );
                }),
            ),
            (
                "getsockopt(SO_PEERPIDFD) + close",
                time(&mut || {
                    let mut p: libc::c_int = -1;
                    let mut len = 4;
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        SO_PEERPIDFD,
                        (&mut p as *mut libc::c_int).cast(),
                        &mut len,
                    );
                    libc::close(p);
                }),
            ),
            (
                "getsockopt(SO_PEERGROUPS)",
                time(&mut || {
                    let mut groups = [0u32; 32];
                    let mut len = 128;
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        SO_PEERGROUPS,
                        groups.as_mut_ptr().cast(),
                        &mut len,
                    );
                }),
            ),
            (
                "readlink /proc/<pid>/exe",
                time(&mut || {
                    let mut link = [0u8; 4096];
                    libc::readlink(exe_path.as_ptr().cast(), link.as_mut_ptr().cast(), link.len());
                }),
            ),
            (
                "open /proc/<pid>/cgroup + read to end + close",
                time(&mut || {
                    let cg = libc::open(cgroup_path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
                    let mut text = [0u8; 4096];
                    while libc::read(cg, text.as_mut_ptr().cast(), text.len()) > 0 {}
                    libc::close(cg);
                }),
            ),
            (
                "fstatat exe (only while a role has a condition on the executable)",
                time(&mut || {
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::fstatat(pdir, c"exe".as_ptr(), &mut st, 0);
                }),
            ),
            (
                "(the earlier way: open /proc/<pid> (O_PATH) + close)",
                time(&mut || {
                    let d = libc::open(
                        proc_path.as_ptr().cast(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    );
                    libc::close(d);
                }),
            ),
            (
                "ioctl(PIDFD_GET_INFO)",
                time(&mut || {
                    let mut info = PidfdInfo {
                        mask: 3,
                        ..PidfdInfo::default()
                    };
                    libc::ioctl(pidfd, PIDFD_GET_INFO, &mut info as *mut PidfdInfo);
                }),
            ),
            (
                "(the earlier way: readlinkat exe through it)",
                time(&mut || {
                    let mut link = [0u8; 4096];
                    libc::readlinkat(pdir, c"exe".as_ptr(), link.as_mut_ptr().cast(), link.len());
                }),
            ),
            (
                "(the earlier way: openat cgroup through it + read to end + close)",
                time(&mut || {
                    let cg = libc::openat(pdir, c"cgroup".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    let mut text = [0u8; 4096];
                    while libc::read(cg, text.as_mut_ptr().cast(), text.len()) > 0 {}
                    libc::close(cg);
                }),
            ),
            (
                "the whole attestation (attest_peer)",
                time(&mut || attest_peer(&server)),
            ),
        ];
        libc::close(pidfd);
        libc::close(pdir);
        rows
    }
}
