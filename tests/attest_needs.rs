//! The caller's namespaces are read only while some role has a condition on the executable
//! (`caller::Needs`). A connection made before a reload adds the first such role was attested
//! without them: such a role refuses it, even from a caller that would match, until it connects
//! again. An attacker in a user namespace of its own, holding a connection from before the reload,
//! does not get through a role that requires the agent's user namespace. Tests run as root; the
//! callers run as an unprivileged uid.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use cortexid::devidp::fixture::Role;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const NOBODY: u32 = 64999;
const ATTACKER: u32 = 4243;

/// The file `python3` runs, as a role names it: the system's (a `python3` earlier on root's
/// `PATH`, such as a pyenv shim under `/root`, is out of the callers' reach).
fn python3() -> PathBuf {
    let path = ["/usr/bin/python3", "/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("python3 is needed by this test (it plays the callers)");
    std::fs::canonicalize(path).unwrap()
}

/// Asks for a token on one connection (`argv[2]`), waits for a line on stdin, asks again on the
/// same connection (`argv[3]`), then on a new one (`argv[4]`); prints "status description" for
/// each answer. Three different asks: identical denials of one uid would share one audit line.
const CALLER: &str = r#"
import json, socket, sys
path, first, held, new = sys.argv[1:5]
def ask(s, target):
    s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % target).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    n = int([l.split(":", 1)[1] for l in lines if l.lower().startswith("content-length:")][0])
    while len(body) < n:
        body += s.recv(65536)
    answer = json.loads(body)
    return lines[0].split(" ")[1] + " " + answer.get("error_description", "")
conn = socket.socket(socket.AF_UNIX); conn.connect(path)
print(ask(conn, first), flush=True)
sys.stdin.readline()
print(ask(conn, held), flush=True)
again = socket.socket(socket.AF_UNIX); again.connect(path)
print(ask(again, new), flush=True)
"#;

/// The caller as `ATTACKER`, in a user namespace of its own (`unshare -Ur`) or in the agent's.
fn caller(own_user_namespace: bool, socket: &std::path::Path, targets: &[String; 3]) -> tokio::process::Child {
    let mut cmd = if own_user_namespace {
        let mut c = std::process::Command::new("unshare");
        c.args(["-Ur", "--"]).arg(python3());
        c
    } else {
        std::process::Command::new(python3())
    };
    cmd.arg("-c")
        .arg(CALLER)
        .arg(socket)
        .args(targets)
        .uid(ATTACKER)
        .gid(ATTACKER)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap()
}

/// The reasons the audit log gives for a refusal answered with `answer` ("403 … under reference
/// R"): those of its `token.denied` line.
fn reasons(h: &Harness, answer: &str) -> String {
    let reference = answer.rsplit(' ').next().unwrap();
    let line = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.denied" && l["reference"] == reference)
        .unwrap_or_else(|| panic!("no token.denied line under reference {reference}"));
    line["error_description"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_connection_from_before_the_first_role_on_the_executable_is_refused_by_it_until_it_connects_again() {
    let mut places = vec![false];
    if unprivileged_userns(ATTACKER) {
        places.push(true);
    } else if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("unprivileged user namespaces (`unshare -Ur` as uid {ATTACKER}) are needed under CI=true");
    } else {
        eprintln!("unprivileged user namespaces are not available here: the attacker in its own is not tried");
    }
    let targets = [
        token_path("payments", PAYMENTS, "payments.read"),
        token_path("payments", PAYMENTS, "payments.write"),
        token_path("payments", LEDGER, "payments.read"),
    ];
    for own_user_namespace in places {
        // At first no role has a condition on the executable: the caller is refused (it is not
        // NOBODY), and its namespaces are not read.
        let mut h = Harness::new(
            Duration::from_secs(300),
            Setup {
                role_uids: vec![NOBODY],
                ..Setup::default()
            },
        )
        .await;
        open_dir(h.dir.path());
        let mut child = caller(own_user_namespace, &h.socket, &targets);
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next_line().await.unwrap().unwrap();
        assert!(first.starts_with("403 "), "{first}");

        // A role for whoever runs python3, in the agent's user namespace.
        h.config
            .roles
            .push(Role::new("python", &["payments"]).executables(&[python3()]));
        h.write_config();
        h.agent.as_ref().unwrap().reload(&h.config_path).unwrap();
        child.stdin.as_mut().unwrap().write_all(b"go\n").await.unwrap();
        let held = out.next_line().await.unwrap().unwrap();
        let again = out.next_line().await.unwrap().unwrap();
        let _ = child.wait().await;

        assert!(
            held.starts_with("403 "),
            "own user namespace {own_user_namespace}: {held}"
        );
        let why = reasons(&h, &held);
        assert!(
            why.contains(r#"role "python" needs executable"#)
                && why.contains("a user namespace not read for this connection")
                && why.contains("connect again"),
            "{why}"
        );
        if own_user_namespace {
            // The attacker: refused on the new connection too, now that its namespace is read.
            assert!(again.starts_with("403 "), "{again}");
            let why = reasons(&h, &again);
            assert!(why.contains("another user namespace"), "{why}");
        } else {
            // A caller the role admits: the new connection is attested with its namespaces.
            assert!(again.starts_with("200 "), "{again}");
        }
        let issued = h
            .audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "token.issued" && l["caller"]["uid"] == ATTACKER)
            .count();
        assert_eq!(
            issued,
            usize::from(!own_user_namespace),
            "own user namespace {own_user_namespace}"
        );
        h.stop().await;
    }
}
