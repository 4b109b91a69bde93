//! Secret hygiene: secret files readable by other are refused at reload too, and the agent
//! process is not dumpable.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_secret_readable_by_other_is_refused_at_reload_and_the_running_config_stays() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let (status, body) = h.get(&token_path("batch", LEDGER, "")).await;
    assert_eq!(status, 200);
    let cached = body["access_token"].as_str().unwrap().to_string();

    let secret = h.fx.secret_file();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = h
        .agent
        .as_ref()
        .unwrap()
        .reload(&h.config_path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("readable by other"), "{err}");
    assert!(err.contains(&secret.display().to_string()), "names the file: {err}");
    assert!(!err.contains(SECRET), "never the secret itself");
    let rejected = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "config.rejected")
        .expect("audited as config.rejected");
    assert!(rejected["reason"].as_str().unwrap().contains("readable by other"));

    // The running agent keeps serving what it has...
    let (status, body) = h.get(&token_path("batch", LEDGER, "")).await;
    assert_eq!(status, 200);
    assert_eq!(body["access_token"].as_str().unwrap(), cached);
    // ...and does not send the exposed secret to the provider either (it is re-read at each use).
    let before = h.idp.counters().token_requests;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    // docs/api.md: 500 server_error when the agent cannot read one of its own secret files
    // (missing, empty, not UTF-8, readable by other).
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "server_error", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("readable by other")
    );
    assert_eq!(
        h.idp.counters().token_requests,
        before,
        "nothing sent with the exposed secret"
    );

    // Fixed: the reload is accepted.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.agent.as_ref().unwrap().reload(&h.config_path).unwrap();
    let mut served = false;
    for _ in 0..50 {
        // A failed exchange is held for half a second before the key is tried again.
        if h.get(&token_path("payments", PAYMENTS, "")).await.0 == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "served again once the secret is private");
}

#[tokio::test]
async fn the_agent_process_is_not_dumpable() {
    // Run `cortexid agent` as an unprivileged uid: a dumpable process owns its /proc/<pid> files;
    // a non-dumpable one's belong to root, and same-uid processes cannot ptrace it or
    // read its memory.
    const UID: u32 = 4343;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fx = start_fixture(d, Duration::from_secs(300)).await;
    write_secret(&d.join(SA_FILE), "eyJhbGciOiJub25lIn0.e30.");
    let config = fx.write_config(&config(&fx, &Setup::default())).unwrap();
    for entry in std::fs::read_dir(d).unwrap() {
        nix::unistd::chown(&entry.unwrap().path(), Some(UID.into()), Some(UID.into())).unwrap();
    }
    nix::unistd::chown(d, Some(UID.into()), Some(UID.into())).unwrap();

    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"));
    cmd.args(["agent", "--config"])
        .arg(&config)
        .uid(UID)
        .gid(UID)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let client = cortexid::cmd::client::SocketClient::new(d.join("agent.sock"));
    let mut up = false;
    for _ in 0..200 {
        if client.get("/v1/health").await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let proc_status = std::fs::metadata(format!("/proc/{}/status", child.id()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the agent started as uid {UID}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&UID.to_string())),
        "runs as {UID}: {status}"
    );
    assert_eq!(
        proc_status.unwrap().uid(),
        0,
        "the /proc/<pid> files of a non-dumpable process belong to root"
    );
}
