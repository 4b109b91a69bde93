//! A hostile local user gets nothing. Each test is an attack from unprivileged uids against the
//! agent (the tests run as root, like a root agent would), kept so it stays refused.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncBufReadExt;

/// Starts `python3 -c script socket args…` as `uid`; its stdout is piped.
fn python_as(uid: u32, script: &str, socket: &Path, args: &[&str]) -> tokio::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(uid)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed by this test (it plays the attacker)")
}

/// The first line a child prints.
async fn first_line(child: &mut tokio::process::Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(out).lines();
    lines.next_line().await.unwrap().unwrap_or_default()
}

/// The agent's total connection cap in this process, as docs/api.md defines it: the open-file
/// limit less 64, between 16 and 2,048.
fn total_connection_cap() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft: usize = line.split_whitespace().nth(3).unwrap().parse().unwrap_or(2048);
    soft.saturating_sub(64).clamp(16, 2048)
}

/// Opens up to N connections, each with a request head that promises a body it never sends,
/// then prints how many the agent is still holding open (no answer yet) and waits.
const STALLED_BODIES: &str = r#"
import socket, sys, time, select
path, n = sys.argv[1], int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(b"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    except OSError:
        break
    conns.append(s)
time.sleep(1.5)
p = select.poll()
for s in conns:
    p.register(s, select.POLLIN)
answered = {fd for fd, _ in p.poll(0)}
print(sum(1 for s in conns if s.fileno() not in answered), flush=True)
time.sleep(30)
"#;

#[tokio::test]
async fn stalled_bodies_from_a_few_uids_do_not_lock_out_a_caller_with_one_connection() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    open_dir(h.dir.path());
    let total = total_connection_cap();
    // Four uids, two processes each, each process as many connections as one process may hold.
    let per_process = (total / 4).min(256);
    let mut attackers: Vec<_> = [4301u32, 4302, 4303, 4304]
        .iter()
        .flat_map(|&uid| [uid, uid])
        .map(|uid| python_as(uid, STALLED_BODIES, &h.socket, &[&per_process.to_string()]))
        .collect();
    let mut held = 0;
    for a in &mut attackers {
        held += first_line(a).await.trim().parse::<usize>().unwrap();
    }
    println!("the attackers hold {held} of {total} connections with bodies that never come");
    assert!(
        held >= total * 3 / 4,
        "the attack must load the agent to its reserve ({held} of {total} held)"
    );
    // The caller with one connection (root here) is still served while they hold theirs.
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "{body}");
    drop(attackers);
}

#[tokio::test]
async fn a_body_that_never_comes_is_answered_408_and_the_connection_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let mut stream = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    stream
        .write_all(
            b"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The agent's deadline is 10 s; the bound here only keeps a broken agent from hanging the run.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the agent must answer a stalled body and close the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"invalid_request\""), "{text}");
    assert!(text.contains("did not arrive within 10 s"), "{text}");
}
