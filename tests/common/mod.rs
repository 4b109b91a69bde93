//! Shared set-up for integration tests: the development provider over HTTPS, a config written to
//! a temp dir, the real agent serving a real Unix socket, and a socket client.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortexid::cmd::client::SocketClient;
use cortexid::devidp::{DevClient, DevClientAuth, DevIdp, DevIdpConfig};
use cortexid::run::daemon::RunningAgent;

pub const CLIENT_ID: &str = "node-17";
pub const SECRET: &str = "correct horse battery staple";
pub const PAYMENTS: &str = "https://payments.internal";
pub const LEDGER: &str = "https://ledger.internal";
/// Allowed by the agent's config but not registered for the client at the provider.
pub const UNREGISTERED: &str = "https://unregistered.internal";

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn write_secret(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub async fn start_idp(lifetime: Duration) -> DevIdp {
    DevIdp::start(DevIdpConfig {
        token_lifetime: lifetime,
        clients: vec![
            DevClient::new(CLIENT_ID, DevClientAuth::SecretBasic(SECRET.into()))
                .with_audiences(&[PAYMENTS, LEDGER])
                .with_scopes(&["payments.read", "payments.write"]),
        ],
    })
    .await
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

/// Knobs of the generated configuration.
pub struct Setup {
    pub agent_extra: String,
    pub provider_auth: String,
    pub role_uids: Vec<u32>,
    pub extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            agent_extra: String::new(),
            provider_auth: String::new(),
            role_uids: vec![nix::unistd::getuid().as_raw()],
            extra: String::new(),
        }
    }
}

pub struct Harness {
    pub idp: DevIdp,
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
        let now = unix_now();
        self.idp
            .mint(serde_json::json!({"sub": sub, "aud": self.idp.issuer(), "iat": now, "exp": now + 3600}))
    }

    pub fn config_text(idp: &DevIdp, dir: &Path, s: &Setup) -> String {
        let auth = if s.provider_auth.is_empty() {
            format!(
                "client_auth = \"client_secret_basic\"\nclient_secret_file = \"{}/secret\"",
                dir.display()
            )
        } else {
            s.provider_auth.clone()
        };
        let uids = s.role_uids.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ");
        format!(
            r#"
[agent]
socket = "{dir}/agent.sock"
audit_log = "{dir}/audit.jsonl"
upstream_timeout = "2s"
{agent_extra}

[[provider]]
name = "corp"
issuer = "{issuer}"
ca_file = "{dir}/ca.pem"
client_id = "{client}"
{auth}

[[identity]]
name = "payments"
provider = "corp"
subject_token_file = "{dir}/payments-sa.jwt"
audiences = ["{payments}", "{ledger}", "{unregistered}"]
scopes = ["payments.read", "payments.write"]

[[identity]]
name = "batch"
provider = "corp"
grant = "client_credentials"
audiences = ["{ledger}"]
scopes = ["payments.read"]

[[role]]
name = "payments-service"
uids = [{uids}]
identities = ["payments", "batch"]
{extra}
"#,
            dir = dir.display(),
            agent_extra = s.agent_extra,
            issuer = idp.issuer(),
            client = CLIENT_ID,
            payments = PAYMENTS,
            ledger = LEDGER,
            unregistered = UNREGISTERED,
            extra = s.extra,
        )
    }

    /// Writes the provider's CA, the client secret, a service-account credential and the config.
    pub async fn new(lifetime: Duration, setup: Setup) -> Harness {
        let idp = start_idp(lifetime).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), idp.ca_pem()).unwrap();
        write_secret(&dir.path().join("secret"), SECRET);
        let config_path = dir.path().join("cortexid.toml");
        std::fs::write(&config_path, Self::config_text(&idp, dir.path(), &setup)).unwrap();
        let socket = dir.path().join("agent.sock");
        let mut h = Harness {
            audit: dir.path().join("audit.jsonl"),
            sa_path: dir.path().join("payments-sa.jwt"),
            client: SocketClient::new(&socket),
            socket,
            config_path,
            idp,
            dir,
            agent: None,
        };
        let sa = h.mint_sa("system:serviceaccount:prod:payments");
        write_secret(&h.sa_path, &sa);
        h.start().await;
        h
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
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("token")
        .args(args)
        .env("CORTEXID_SOCKET", socket)
        .uid(uid)
        .gid(uid);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
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
