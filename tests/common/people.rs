//! People's sign-in driven as a user would: the harness set up with a `[[login]]`, the CLI and
//! the socket API run as a given uid (gid the same, no supplementary groups), and the CLI's
//! output read line by line. For tests/people.rs and tests/hostile_people.rs.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cortexid::devidp::fixture::{Identity, Login, Role};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Harness, PAYMENTS, Setup, open_dir};

/// The harness with a `[[login]]` "corp" (`login`), the person identity "me" (its subject is the
/// caller's session) and the role "team" for sessions whose groups hold "payments";
/// `before_start` may change the written config, then the agent starts.
pub async fn people_with(lifetime: Duration, login: Login, before_start: impl FnOnce(&Harness)) -> Harness {
    let mut h = Harness::new(lifetime, Setup::default()).await;
    h.stop().await;
    h.config.identities.push(
        Identity::person("me", "corp", "corp")
            .audiences(&[PAYMENTS])
            .scopes(&["payments.read"]),
    );
    h.config
        .roles
        .push(Role::new("team", &["me"]).login("corp").claim("groups", &["payments"]));
    h.config.logins.push(login);
    h.write_config();
    before_start(&h);
    h.start().await;
    // Polls closer than the announced interval get slow_down; the agent polls every second.
    h.idp.set_device_interval(Duration::from_millis(200));
    open_dir(h.dir.path());
    h
}

/// `cortexid ARGS` as `uid`, stdout and stderr piped, with no display and no `$BROWSER` unless
/// `env` sets one.
pub fn cli_as(uid: u32, socket: &Path, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"));
    cmd.args(args)
        .env("CORTEXID_SOCKET", socket)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("BROWSER")
        .envs(env.iter().copied())
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap()
}

/// Runs `cortexid ARGS` as `uid` to the end: (exit code, stdout, stderr).
pub async fn run_as(uid: u32, socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = cli_as(uid, socket, args, &[]).wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The socket API as `uid` through curl, optionally behind a command such as `unshare -Ur`:
/// (status, the answer as text).
pub async fn raw_as(
    uid: u32,
    wrap: &[&str],
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = std::process::Command::new(wrap.first().copied().unwrap_or("curl"));
    if !wrap.is_empty() {
        cmd.args(&wrap[1..]).arg("curl");
    }
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .uid(uid)
        .gid(uid);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("curl plays the other users");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), answer.to_string())
}

/// The socket API as `uid`, through curl: (status, JSON body).
pub async fn api_as(uid: u32, h: &Harness, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = raw_as(uid, &[], &h.socket, method, path, body).await;
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// A child's stdout, line by line.
pub type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts `cortexid login --browser --no-browser` as `uid` and reads its output up to the
/// authorization URL: (the CLI, the rest of its output, the URL's line). Keep the output until
/// the CLI is done: dropped, it closes the pipe the CLI still prints to.
pub async fn browser_login(uid: u32, socket: &Path) -> (tokio::process::Child, Lines, String) {
    let mut child = cli_as(uid, socket, &["login", "--browser", "--no-browser"], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = line_where(&mut lines, |l| l.trim_start().starts_with("https://")).await;
    (child, lines, url)
}

/// Reads the child's stdout until a line satisfies `want`; returns that line.
pub async fn line_where(lines: &mut Lines, want: impl Fn(&str) -> bool) -> String {
    while let Some(line) = lines.next_line().await.unwrap() {
        if want(&line) {
            return line;
        }
    }
    panic!("the process ended without printing the expected line");
}
