//! Socket limits: one process holding hundreds of connections does not lock others out, and
//! garbage or non-HTTP input is closed cleanly while the agent keeps serving.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use cortexid::api::limits::MAX_CONNECTIONS_PER_PROCESS;

/// Everything the agent sends until it closes the connection. The read timeout only keeps a
/// broken agent from hanging the test.
fn read_to_close(s: &mut UnixStream) -> (Vec<u8>, std::io::Result<()>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
    assert!(idle.len() >= MAX_CONNECTIONS_PER_PROCESS.min(499));

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

#[tokio::test]
async fn another_uid_is_served_while_one_uid_holds_hundreds_of_connections() {
    let me = nix::unistd::getuid().as_raw();
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![me, 4242],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    let socket = h.socket.clone();
    let idle: Vec<UnixStream> =
        tokio::task::spawn_blocking(move || (0..500).map(|_| UnixStream::connect(&socket).unwrap()).collect())
            .await
            .unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let (code, out, err) = token_as(
        4242,
        exe,
        &h.socket,
        &["--identity", "payments", "--audience", PAYMENTS],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    drop(idle);
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
async fn a_caller_that_stalls_mid_request_is_closed_by_the_header_timeout() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let socket = h.socket.clone();
    let (reply, closed) = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: local").unwrap();
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    closed.expect("closed by the agent");
    let text = String::from_utf8_lossy(&reply);
    assert!(reply.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    let (status, _) = h.get("/v1/health").await;
    assert_eq!(status, 200);
}
