//! A hostile caller against the attestation of a connection: it connects, hands the socket to a
//! process of its own and exits, and its pid goes to a program a role admits before the agent
//! gets to the connection. The agent must not take that program for the caller. Tests run as
//! root (they steer the next pid through `/proc/sys/kernel/ns_last_pid`); the attack runs as an
//! unprivileged uid.

mod common;

use std::time::Duration;

use common::*;
use cortexid::devidp::fixture::Role;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const ATTACKER: u32 = 4242;
const NOBODY: u32 = 64999;

/// Connects to argv[1], forks a child that keeps the socket, and exits printing its pid. The
/// child, once it reads a line on stdin, asks for argv[2] on the socket and prints the status
/// line of the answer.
const HAND_ON_AND_EXIT: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
if os.fork() == 0:
    sys.stdin.readline()
    print(status_line(s, sys.argv[2]).decode(), flush=True)
    os._exit(0)
print(os.getpid(), flush=True)
"#;

/// Makes the next pid the kernel hands out `pid`, then starts `sleep` as `uid` until it gets it.
fn sleeper_at(pid: i32, uid: u32) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        if child.id() as i32 == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// Waits until every thread of process `pid` is stopped (SIGSTOP is delivered asynchronously).
async fn wait_stopped(pid: u32) {
    let tasks = format!("/proc/{pid}/task");
    loop {
        let stopped = std::fs::read_dir(&tasks).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        });
        if stopped {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_caller_that_hands_its_socket_on_and_exits_does_not_pass_for_the_program_that_gets_its_pid() {
    let sleep = std::fs::canonicalize(
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join("sleep"))
            .find(|p| p.exists())
            .unwrap(),
    )
    .unwrap();
    let mut h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            roles: vec![Role::new("sleepers", &["payments"]).executables(&[&sleep])],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    h.stop().await;
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    // The agent is slow to accept (stopped here): the kernel queues the connection meanwhile.
    agent.signal(Signal::SIGSTOP);
    wait_stopped(agent.child.id()).await;

    let mut attacker = attacker(
        ATTACKER,
        HAND_ON_AND_EXIT,
        [
            h.socket.as_os_str(),
            token_path("payments", PAYMENTS, "payments.read").as_ref(),
        ],
    );
    let mut stdin = attacker.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(attacker.stdout.take().unwrap()).lines();
    let pid: i32 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
    attacker.wait().await.unwrap();
    let Some(mut impostor) = sleeper_at(pid, ATTACKER) else {
        panic!("pid {pid} could not be made to be reused");
    };

    agent.signal(Signal::SIGCONT);
    stdin.write_all(b"go\n").await.unwrap();
    let status = lines.next_line().await.unwrap().unwrap_or_default();
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_eq!(
        status,
        "HTTP/1.1 403 Forbidden",
        "pid {pid} now runs {}",
        sleep.display()
    );
    let (line, why) = h.last_denial();
    assert_eq!(line["caller"]["uid"], ATTACKER, "{line}");
    assert_eq!(line["caller"]["exe"], serde_json::Value::Null, "{line}");
    assert!(why.contains(&format!("process {pid} is gone")), "{why}");
}
