//! Shared by the configuration's unit tests: a fixed [`LoadContext`], secret files with a chosen
//! mode, and a good configuration to break one key at a time.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::LoadContext;

/// No systemd; users and groups `root` (0) and `payments` (1001); `creds` as `$CREDENTIALS_DIRECTORY`.
pub(super) struct TestContext {
    pub(super) creds: Option<PathBuf>,
}

impl LoadContext for TestContext {
    fn credentials_directory(&self) -> Option<PathBuf> {
        self.creds.clone()
    }
    fn under_systemd(&self) -> bool {
        false
    }
    fn uid_of_user(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "payments" => Some(1001),
            _ => None,
        }
    }
    fn gid_of_group(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "payments" => Some(1001),
            _ => None,
        }
    }
}

/// Writes a secret file `name` in `dir` with `mode`.
pub(super) fn secret_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(b"s3cret\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A configuration that loads (secret files made in `dir`): two identities, one role.
pub(super) fn good(dir: &Path) -> String {
    let secret = secret_file(dir, "secret", 0o600);
    let sa = secret_file(dir, "sa.jwt", 0o640);
    format!(
        r#"
[agent]
socket = "{dir}/agent.sock"
refresh_at = 0.8

[[provider]]
name = "corp"
issuer = "https://idp.example.com/realms/prod"
client_id = "node-17"
client_secret_file = "{secret}"

[[identity]]
name = "payments"
provider = "corp"
subject_token_file = "{sa}"
audiences = ["https://payments.internal", "https://ledger.internal"]
scopes = ["payments.read", "payments.write"]

[[identity]]
name = "batch"
provider = "corp"
grant = "client_credentials"
audiences = ["https://batch.internal"]

[[role]]
name = "payments-service"
users = ["payments"]
uids = [0]
identities = ["payments"]
audiences = ["https://payments.internal"]
scopes = ["payments.read"]
"#,
        dir = dir.display(),
        secret = secret.display(),
        sa = sa.display()
    )
}

/// Every problem `text` has, as `key: message`.
pub(super) fn problems(text: &str) -> Vec<String> {
    let err = super::parse(text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
    err.problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect()
}
