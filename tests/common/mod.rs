//! Shared set-up for integration tests: the development provider over HTTPS with its files and a
//! config written to a temp dir (through `cortexid::devidp::fixture`), the real agent serving a
//! real Unix socket, and a socket client.
#![allow(dead_code)]

pub mod oidc_people;
pub mod people;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortexid::cmd::client::SocketClient;
use cortexid::devidp::fixture::{ConfigFile, Fixture, Identity, Role};
use cortexid::devidp::{DevClient, DevClientAuth, DevIdp};
use cortexid::run::daemon::RunningAgent;

pub const CLIENT_ID: &str = "node-17";
pub const SECRET: &str = "correct horse battery staple";
pub const PAYMENTS: &str = "https://payments.internal";
pub const LEDGER: &str = "https://ledger.internal";
/// Allowed by the agent's config but not registered for the client at the provider.
pub const UNREGISTERED: &str = "https://unregistered.internal";
/// The service-account credential of the `payments` identity, in the fixture's directory.
pub const SA_FILE: &str = "payments-sa.jwt";

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Writes a secret or a credential: mode 0600, replaced at once.
pub fn write_secret(path: &Path, contents: &str) {
    cortexid::devidp::fixture::write_private(path, contents).unwrap();
}

/// The development provider with the node's client registered (`node-17`, client_secret_basic,
/// payments and ledger), its CA and the client secret written into `dir`.
pub async fn start_fixture(dir: &Path, lifetime: Duration) -> Fixture {
    let client = DevClient::new(CLIENT_ID, DevClientAuth::SecretBasic(SECRET.into()))
        .with_audiences(&[PAYMENTS, LEDGER])
        .with_scopes(&["payments.read", "payments.write"]);
    Fixture::start(dir, lifetime, client).await.unwrap()
}

/// A service-account JWT for `sub` from the provider, valid for an hour.
pub fn mint_sa(fx: &Fixture, sub: &str) -> String {
    fx.service_account(sub, Duration::from_secs(3600)).unwrap()
}

/// Writes the `payments` identity's credential ([`SA_FILE`]) and returns its path.
pub fn write_sa(fx: &Fixture) -> PathBuf {
    fx.write_credential(SA_FILE, &mint_sa(fx, "system:serviceaccount:prod:payments"))
        .unwrap()
}

/// Decodes a JWT's claims without verifying (the tests check what the agent verified).
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// An answer of the agent as a failing assertion may show it: `access_token` replaced by its
/// fingerprint (a test never prints a token).
pub fn redacted(body: &serde_json::Value) -> serde_json::Value {
    let mut shown = body.clone();
    if let Some(t) = shown.get_mut("access_token") {
        let print = cortexid::token::fingerprint(t.as_str().unwrap_or_default().as_bytes());
        *t = format!("(a token, fingerprint {print})").into();
    }
    shown
}

/// Knobs of the generated configuration.
pub struct Setup {
    /// `refresh_at` of the agent (its default when `None`).
    pub refresh_at: Option<f64>,
    /// Who the `payments-service` role (both identities) is for.
    pub role_uids: Vec<u32>,
    /// More roles, after that one.
    pub roles: Vec<Role>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            refresh_at: None,
            role_uids: vec![nix::unistd::getuid().as_raw()],
            roles: Vec::new(),
        }
    }
}

/// The tests' configuration: provider `corp` (the fixture's), identity `payments` (token
/// exchange of [`SA_FILE`]; payments, ledger and an audience the provider does not know) and
/// `batch` (client credentials; ledger), the role `payments-service` for both, a 2 s upstream
/// timeout, the audit log in the fixture's directory.
pub fn config(fx: &Fixture, s: &Setup) -> ConfigFile {
    let mut agent = fx.agent();
    agent.upstream_timeout = Some(Duration::from_secs(2));
    agent.refresh_at = s.refresh_at;
    let mut roles = vec![Role::new("payments-service", &["payments", "batch"]).uids(&s.role_uids)];
    roles.extend(s.roles.iter().cloned());
    ConfigFile {
        agent,
        providers: vec![fx.provider("corp")],
        identities: vec![
            Identity::exchange("payments", "corp", fx.dir().join(SA_FILE))
                .audiences(&[PAYMENTS, LEDGER, UNREGISTERED])
                .scopes(&["payments.read", "payments.write"]),
            Identity::client_credentials("batch", "corp")
                .audiences(&[LEDGER])
                .scopes(&["payments.read"]),
        ],
        roles,
        ..ConfigFile::default()
    }
}

pub struct Harness {
    pub idp: DevIdp,
    pub fx: Fixture,
    /// What `config_path` says; change it and call [`Harness::write_config`].
    pub config: ConfigFile,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub audit: PathBuf,
    pub sa_path: PathBuf,
    pub agent: Option<RunningAgent>,
    pub client: SocketClient,
}

impl Harness {
    pub fn mint_sa(&self, sub: &str) -> String {
        mint_sa(&self.fx, sub)
    }

    /// Starts the provider, writes its CA, the client secret, a service-account credential and
    /// the config, and starts the agent.
    pub async fn new(lifetime: Duration, setup: Setup) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let fx = start_fixture(dir.path(), lifetime).await;
        let sa_path = write_sa(&fx);
        let config = config(&fx, &setup);
        let config_path = fx.write_config(&config).unwrap();
        let mut h = Harness {
            idp: fx.idp().clone(),
            audit: fx.audit_log(),
            client: SocketClient::new(fx.socket()),
            socket: fx.socket(),
            sa_path,
            config_path,
            config,
            fx,
            dir,
            agent: None,
        };
        h.start().await;
        h
    }

    /// Writes `self.config` to `config_path` again.
    pub fn write_config(&self) {
        self.fx.write_config(&self.config).unwrap();
    }

    pub async fn start(&mut self) {
        let config = cortexid::agent::load_config(&self.config_path).unwrap();
        self.agent = Some(
            cortexid::run::daemon::start(config, cortexid::run::systemd::Notifier::disabled())
                .await
                .unwrap(),
        );
    }

    pub async fn stop(&mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(path).await.unwrap();
        let status = r.status;
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The last `token.denied` line, and the reasons it gives (all the roles' near misses).
    pub fn last_denial(&self) -> (serde_json::Value, String) {
        let line = self
            .audit_lines()
            .into_iter()
            .rev()
            .find(|l| l["event"] == "token.denied")
            .expect("a token.denied line");
        let why = line["error_description"].as_str().unwrap_or_default().to_string();
        (line, why)
    }
}

/// Whether `uid` may make a user namespace here (`kernel.unprivileged_userns_clone`,
/// `user.max_user_namespaces`, an AppArmor restriction can all forbid it).
pub fn unprivileged_userns(uid: u32) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("unshare")
        .args(["-Ur", "true"])
        .uid(uid)
        .gid(uid)
        .status()
        .is_ok_and(|s| s.success())
}

/// What every attacker script may call ([`attacker`] puts it first): `read_all(s)` reads a
/// socket until the agent closes it; `status_line(s, target)` sends `GET target` with
/// `Connection: close` and returns the status line of the answer.
pub const PY_WIRE: &str = r#"
import os, socket, sys
def read_all(s):
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data
        data += b
def status_line(s, target):
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target).encode())
    return read_all(s).split(b"\r\n", 1)[0]
"#;

/// Starts `python3 -c script args…` as `uid` (and as group `uid`), stdin and stdout piped, stderr
/// shown, killed when dropped: the attacker of the hostile tests ([`PY_WIRE`] defined for it).
pub fn attacker<I, S>(uid: u32, script: &str, args: I) -> tokio::process::Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(format!("{PY_WIRE}{script}"))
        .args(args)
        .uid(uid)
        .gid(uid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed by this test (it plays the attacker)")
}

pub fn token_path(identity: &str, audience: &str, scope: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("identity", identity)
        .append_pair("audience", audience)
        .append_pair("scope", scope)
        .finish();
    format!("/v1/token?{q}")
}

/// Makes a temp dir traversable by other users (tests start callers as other uids).
pub fn open_dir(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `cortexid token` as another user (tests run as root) and returns (exit code, stdout, stderr).
pub async fn token_as(uid: u32, exe: &Path, socket: &Path, args: &[&str]) -> (i32, String, String) {
    token_with(As::user(uid), exe, socket, args).await
}

/// The credentials a caller process runs with: uid, primary gid and supplementary groups.
#[derive(Clone, Debug)]
pub struct As {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl As {
    /// `uid`, with the group of the same number and no supplementary groups.
    pub fn user(uid: u32) -> As {
        As {
            uid,
            gid: uid,
            groups: Vec::new(),
        }
    }

    pub fn gid(mut self, gid: u32) -> As {
        self.gid = gid;
        self
    }

    pub fn groups(mut self, groups: &[u32]) -> As {
        self.groups = groups.to_vec();
        self
    }
}

/// Runs `cortexid token` with the credentials `who` (supplementary groups included) and returns
/// (exit code, stdout, stderr).
pub async fn token_with(who: As, exe: &Path, socket: &Path, args: &[&str]) -> (i32, String, String) {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("token").args(args).env("CORTEXID_SOCKET", socket);
    let groups: Vec<Gid> = who.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(who.uid), Gid::from_raw(who.gid));
    // SAFETY: between fork and exec only system calls are made (no allocation: the group list
    // is built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            setgroups(&groups)?;
            setgid(gid)?;
            setuid(uid)?;
            Ok(())
        });
    }
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this run is CI (`CI=true`, read at run time): there, a missing test dependency is a
/// failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A test cannot run here because `why` (a dependency is missing). Under CI this fails the test;
/// elsewhere it says so on the terminal, past the test harness's output capture, and the caller
/// returns without checking anything.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}. CI=true: a missing test dependency is a failure, not a skip");
    }
    use std::io::Write;
    let banner = format!(
        "\n!!!!!! SKIPPED, NOTHING CHECKED: {test}\n!!!!!! {why}\n!!!!!! (under CI=true this is a failure)\n\n"
    );
    // Straight to the file descriptor: `eprint!` output of a passing test is swallowed.
    let _ = std::io::stderr().write_all(banner.as_bytes());
}

/// The real `cortexid agent` as a child process, with its stderr (the logs) in a file.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl AgentProcess {
    pub async fn spawn(config: &Path, socket: &Path, log: PathBuf, env: &[(&str, &str)]) -> AgentProcess {
        let err = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
            .args(["agent", "--config"])
            .arg(config)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stderr(err)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let client = SocketClient::new(socket);
        for _ in 0..200 {
            if client.get("/v1/health").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        AgentProcess { child, log }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn stop(mut self) -> i32 {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap().code().unwrap_or(-1)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
