//! Socket limits: one process, or one uid's processes, holding hundreds of connections do not
//! lock others out; slow and garbage input is closed cleanly while the agent keeps serving.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use cortexid::api::limits::MAX_CONNECTIONS_PER_PROCESS;

/// The connection caps of an agent running in this process, as docs/api.md gives them: 256 per
/// process and 512 per uid, lowered to fit the open-file limit (in all `RLIMIT_NOFILE − 64`,
/// between 16 and 2,048; per uid at most half of that, per process at most a quarter).
fn caps() -> (usize, usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("the soft open-file limit in /proc/self/limits");
    let total = soft.saturating_sub(64).clamp(16, 2048);
    (MAX_CONNECTIONS_PER_PROCESS.min(total / 4), 512.min(total / 2))
}

/// Everything the agent sends until it closes the connection. The read timeout only keeps a
/// broken agent from hanging the test.
fn read_to_close(s: &mut UnixStream) -> (Vec<u8>, std::io::Result<()>) {
    read_to_close_within(s, Duration::from_secs(30))
}

/// [`read_to_close`], failing with a timeout if the agent keeps the connection past `limit`.
fn read_to_close_within(s: &mut UnixStream, limit: Duration) -> (Vec<u8>, std::io::Result<()>) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the response is still a close; a timeout is not.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// Runs `cortexid token` as a separate process (same uid, its own pid).
async fn token_in_child(socket: &Path) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["token", "--identity", "payments", "--audience", PAYMENTS])
        .env("CORTEXID_SOCKET", socket)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn five_hundred_idle_connections_from_one_process_do_not_lock_out_another() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    // This test process opens 500 connections and sends nothing on them.
    let socket = h.socket.clone();
    let mut idle: Vec<UnixStream> =
        tokio::task::spawn_blocking(move || (0..500).map(|_| UnixStream::connect(&socket).unwrap()).collect())
            .await
            .unwrap();

    // The excess is closed (the agent does not keep what it cannot serve).
    let mut last = idle.pop().unwrap();
    let (reply, closed) = tokio::task::spawn_blocking(move || read_to_close(&mut last))
        .await
        .unwrap();
    closed.expect("the excess connection is closed");
    assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 429"));

    // The agent kept exactly its per-process cap of them: those answer a request, the rest
    // were closed (with or without a 429). Asking on each one also keeps the kept ones alive
    // (an idle connection is closed after 10 s without a request head).
    let (served, idle) = tokio::task::spawn_blocking(move || {
        let served = idle.iter().filter(|s| identities_on(s) == Some(200)).count();
        (served, idle)
    })
    .await
    .unwrap();
    let (per_process, _) = caps();
    assert_eq!(
        served, per_process,
        "connections of one process the agent serves: its per-process cap"
    );

    // This same process is over its limit while it holds them: a request it sends on a new
    // connection is answered 429 with a JSON error naming the process (or, while many refusals
    // are being answered at once, the connection is just closed).
    let mut refused = None;
    for _ in 0..50 {
        if let Ok(r) = h.client.get(&token_path("payments", PAYMENTS, "")).await {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refused.expect("an answer within a few tries");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    let body = r.json().unwrap();
    assert_eq!(body["error"], "slow_down");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains(&format!("process {}", std::process::id())), "{text}");

    // ...but another process gets its token.
    let (code, out, err) = token_in_child(&h.socket).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);

    // Closing them gives the places back.
    drop(idle);
    let mut served = false;
    for _ in 0..100 {
        if h.get(&token_path("payments", PAYMENTS, "")).await.0 == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "this process is served again once it closed its connections");
}

/// The status of `GET /v1/identities` (200 for any caller the agent serves) on an open
/// connection, or `None` if the agent closed it.
fn identities_on(s: &UnixStream) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s;
    w.write_all(b"GET /v1/identities HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).ok()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(status)
}

/// A process running as `uid` (`sleep`) that opened `n` connections to `socket` before it
/// started, and holds them until it is killed. The connections are made between fork and exec,
/// so the agent sees this process's pid and uid on each.
fn hold_connections(uid: u32, socket: &Path, n: usize) -> tokio::process::Child {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket as new_socket};
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let addr = UnixAddr::new(socket).unwrap();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600");
    // SAFETY: between fork and exec only system calls are made, on values built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            setgroups(&[])?;
            setgid(Gid::from_raw(uid))?;
            setuid(Uid::from_raw(uid))?;
            for _ in 0..n {
                // Without SOCK_CLOEXEC: `sleep` inherits the connections.
                let fd = new_socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None)?;
                connect(fd.as_raw_fd(), &addr)?;
                std::mem::forget(fd);
            }
            Ok(())
        });
    }
    tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_uid_is_capped_over_all_its_processes_and_other_uids_are_still_served() {
    const HOLDER: u32 = 4243;
    let me = nix::unistd::getuid().as_raw();
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![me, 4242, HOLDER],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    let (per_process, per_uid) = caps();
    // Three processes of one uid, each under the per-process cap, together one over the uid's
    // (few refusals: a burst of more than 64 would be closed without an answer).
    let each = per_uid / 3 + 1;
    assert!(
        each < per_process,
        "{each} connections per process stay under {per_process}"
    );
    let socket = h.socket.clone();
    let mut holders = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| hold_connections(HOLDER, &socket, each))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    // A fourth process of that uid, holding nothing itself, is refused for its uid. Its
    // connection comes after all of theirs, so the agent has counted them by then. (While the
    // agent is busy answering other refusals it may close it without an answer: ask again.)
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let args = ["--identity", "payments", "--audience", PAYMENTS];
    let mut refused = None;
    for _ in 0..20 {
        let (code, out, err) = token_as(HOLDER, exe, &h.socket, &args).await;
        if !err.contains("cannot talk to the agent") {
            refused = Some((code, out, err));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, err) = refused.expect("an answer within a few tries");
    assert_eq!(code, 1, "refused, not served (stdout: {} bytes): {err}", out.len());
    assert!(err.contains("slow_down"), "{err}");
    assert!(
        err.contains(&format!("uid {HOLDER} already holds {per_uid} connections")),
        "{err}"
    );

    // Other uids are served meanwhile.
    let (code, out, err) = token_as(4242, exe, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "{body}");

    // Once the holders are gone, the uid is served again.
    for holder in &mut holders {
        holder.kill().await.unwrap();
    }
    let mut served = None;
    for _ in 0..100 {
        let (code, _, err) = token_as(HOLDER, exe, &h.socket, &args).await;
        served = Some((code, err));
        if code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, err) = served.unwrap();
    assert_eq!(code, 0, "served again once its processes closed theirs: {err}");
}

#[tokio::test]
async fn garbage_and_non_http_input_is_closed_and_the_agent_keeps_serving() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let mut tls_hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    tls_hello.extend(std::iter::repeat_n(0xab, 500));
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
        ),
        ("NUL bytes", vec![0; 1024]),
        ("a TLS ClientHello", tls_hello),
        ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ("a bad request line", b"GET\x7f /v1/token HTTP/1.1\r\n\r\n".to_vec()),
        (
            "a header without a colon",
            b"GET /v1/health HTTP/1.1\r\nhost localhost\r\n\r\n".to_vec(),
        ),
        ("a 100 KiB line", vec![b'A'; 100 * 1024]),
        (
            "a bogus content-length",
            b"POST /v1/token HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in inputs {
        let socket = h.socket.clone();
        let (reply, closed) = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(&socket).unwrap();
            // The agent may close before reading everything; a failed write is fine.
            let _ = s.write_all(&bytes);
            read_to_close(&mut s)
        })
        .await
        .unwrap();
        closed.unwrap_or_else(|e| panic!("{what}: the connection is not closed: {e}"));
        let text = String::from_utf8_lossy(&reply);
        assert!(
            reply.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{what}: the answer, if any, is a 4xx: {text}"
        );
        let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
        assert_eq!(status, 200, "after {what}: {body:?}");
    }
    let (status, body) = h.get("/v1/health").await;
    assert_eq!(status, 200);
    assert_ne!(body["status"], "degraded");
}

#[tokio::test]
async fn a_slow_request_head_is_served_and_a_stalled_one_is_closed_by_the_header_timeout() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;

    // A head sent in pieces over about 1.5 s, well within the 10 s allowed, is served.
    let socket = h.socket.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        for piece in ["GET /v1/hea", "lth HTTP/1.1\r\n", "Host: loc", "alhost\r\n"] {
            s.write_all(piece.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        s.write_all(b"\r\n").unwrap();
        let mut status_line = String::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(&s).read_line(&mut status_line).unwrap();
        status_line
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");

    // A head that stops midway: the connection stays open for a while (the agent waits for the
    // rest), then the agent closes it (10 s; the test allows twice that).
    let socket = h.socket.clone();
    let (open_after_a_second, reply, closed) = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: local").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let open = match s.read(&mut [0u8; 64]) {
            Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            Ok(_) => false,
        };
        let (reply, closed) = read_to_close_within(&mut s, Duration::from_secs(20));
        (open, reply, closed)
    })
    .await
    .unwrap();
    assert!(open_after_a_second, "a partial head is not closed at once");
    closed.expect("closed by the agent's header timeout");
    let text = String::from_utf8_lossy(&reply);
    assert!(reply.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    let (status, _) = h.get("/v1/health").await;
    assert_eq!(status, 200);
}
