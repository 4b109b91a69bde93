//! The `cortexid` binary: check-config, refusing a bad config at start, keygen and
//! private_key_jwt end to end, and `cortexid token` output.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use cortexid::devidp::fixture::{ProviderAuth, Sink};
use cortexid::devidp::{DevClient, DevClientAuth};

fn cortexid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cortexid"))
}

#[test]
fn check_config_prints_every_problem_with_its_line_and_the_agent_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[agent]
socket = "/tmp/x.sock"
refresh_at = 2.0
colour = "blue"

[[provider]]
name = "corp"
issuer = "http://idp.example.com"
client_id = "n"
client_secret_file = "/nonexistent/secret"

[[identity]]
name = "payments"
provider = "corpp"
subject_token_file = "/nonexistent/sa.jwt"
audiences = ["https://p"]

[[role]]
name = "r"
uids = [1]
identities = ["payments", "ghost"]
"#,
    )
    .unwrap();
    let out = cortexid()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (line, key) in [
        (3, "agent.refresh_at"),
        (4, "agent.colour"),
        (8, "provider[0].issuer"),
        (10, "provider[0].client_secret_file"),
        (14, "identity[0].provider"),
        (15, "identity[0].subject_token_file"),
        (21, "role[0].identities[1]"),
    ] {
        let want = format!("bad.toml:{line}: {key}:");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    let out = cortexid().args(["agent", "--config"]).arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "invalid configuration at start is EX_USAGE"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.colour"));

    let out = cortexid()
        .args(["check-config", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = cortexid().args(["token"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn example_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Examples point at files that do not exist here; everything else must be right.
            match cortexid::config::parse(&text, &path, &cortexid::config::SystemContext) {
                Ok(_) => {}
                Err(e) => {
                    for p in &e.problems {
                        assert!(
                            p.message.contains("does not exist")
                                || p.message.contains("no user named")
                                || p.message.contains("no group named")
                                || p.message.contains("CREDENTIALS_DIRECTORY"),
                            "{}: {p}",
                            path.display()
                        );
                    }
                }
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs in {}", dir.display());
}

#[tokio::test]
async fn private_key_jwt_works_with_a_key_from_keygen_and_cortexid_token_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let out = cortexid()
        .args(["keygen", "--alg", "ES256", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jwk: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jwk["kty"], "EC");
    assert!(jwk["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(jwk.get("d").is_none(), "only the public key is printed");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = cortexid().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!again.status.success(), "keygen never overwrites a key");

    // The fixture registers the client with a secret; register the key-based client too and
    // configure the agent for it.
    let cfg_dir = tempfile::tempdir().unwrap();
    let fx = start_fixture(cfg_dir.path(), Duration::from_secs(300)).await;
    let idp = fx.idp();
    idp.add_client(
        DevClient::new("node-pkjwt", DevClientAuth::PrivateKeyJwt(jwk))
            .with_audiences(&[PAYMENTS])
            .with_scopes(&["payments.read"]),
    );
    write_sa(&fx);
    let mut config = config(&fx, &Setup::default());
    config.providers[0].client_id = "node-pkjwt".into();
    config.providers[0].auth = ProviderAuth::PrivateKeyJwt(key.clone());
    let config_path = fx.write_config(&config).unwrap();
    let config = cortexid::agent::load_config(&config_path).unwrap();
    let running = cortexid::run::daemon::start(config, cortexid::run::systemd::Notifier::disabled())
        .await
        .unwrap();

    let socket = fx.socket();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args([
            "token",
            "--identity",
            "payments",
            "--audience",
            PAYMENTS,
            "--scope",
            "payments.read",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.ends_with('\n'));
    let c = claims(token.trim());
    assert_eq!(c["client_id"], "node-pkjwt");
    assert_eq!(c["aud"], PAYMENTS);
    assert_eq!(idp.counters().exchanges, 1);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args([
            "token",
            "--identity",
            "payments",
            "--audience",
            PAYMENTS,
            "--scope",
            "payments.read",
            "--format",
            "header",
        ])
        .env("CORTEXID_SOCKET", &socket)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("Authorization: Bearer {}", token)
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args([
            "token",
            "--identity",
            "payments",
            "--audience",
            "https://nope",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_target"));
    running.shutdown().await;
}

#[tokio::test]
async fn cortexid_dev_runs_a_provider_and_an_agent_and_its_printed_commands_work() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["dev", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let done = line.contains("Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(text.contains("never for production"), "{text}");
    let config = dir.path().canonicalize().unwrap().join("cortexid.toml");
    assert!(text.contains(&config.display().to_string()), "{text}");
    let token_cmd = printed
        .iter()
        .find(|l| l.trim_start().contains(" token --socket"))
        .expect("a token command")
        .trim()
        .to_string();
    let args: Vec<&str> = token_cmd.split_whitespace().collect();
    let out = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(claims(token.trim())["scope"], "payments.read");
    // The generated config is valid on its own.
    let check = cortexid()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // Edited and reloaded with SIGHUP (as the printout says): the role no longer names this uid.
    assert!(text.contains(&format!("kill -HUP {}", child.id().unwrap())), "{text}");
    let me = nix::unistd::getuid().as_raw();
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains(&format!("uids = [{me}]")), "{written}");
    std::fs::write(&config, written.replace(&format!("uids = [{me}]"), "uids = [64999]")).unwrap();
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    hup();
    let refused = || async {
        for _ in 0..100 {
            let out = tokio::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .await
                .unwrap();
            if !out.status.success() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(refused().await, "the reloaded role still admits uid {me}");
    // A broken edit is not taken: the process goes on with the last good configuration.
    std::fs::write(&config, "this is not toml [").unwrap();
    hup();
    let out = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access_denied"),
        "the agent answers as before the bad edit: {err}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "cortexid dev ended on a bad reload"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn cortexid_status_summarises_a_real_agents_health() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let sink = h.dir.path().join("ledger.jwt");
    h.config.sinks.push(Sink {
        identity: "batch".into(),
        audience: LEDGER.into(),
        path: sink.clone(),
        mode: None,
        owner: None,
    });
    h.write_config();
    h.start().await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "payments.read")).await;
    assert_eq!(status, 200, "{body}");
    let mut health = serde_json::Value::Null;
    for _ in 0..100 {
        health = h.get("/v1/health").await.1;
        if health["status"] == "ok" && health["sinks"][0]["state"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health["status"], "ok", "{health}");

    let socket = h.socket.clone();
    let status = move |json: bool| {
        let mut cmd = cortexid();
        cmd.args(["status", "--socket"]).arg(&socket);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = tokio::task::spawn_blocking(move || (status(false), status(true)));
    let (text, json) = text.await.unwrap();
    assert!(text.starts_with("status: ok\n"), "{text}");
    let sent = &health["providers"]["corp"]["limits"]["sent"];
    assert!(sent.as_u64().is_some_and(|n| n >= 2), "{health}");
    assert!(
        text.contains(&format!(
            "providers:\n  corp: reachable; {sent} sent, 0 queued, 0 in flight, 0 pauses\n"
        )),
        "{text}"
    );
    assert!(text.contains("cache: 2 entries\n"), "{text}");
    let keys = health["cache"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{health}");
    for k in keys {
        let scope = k["scope"].as_str().filter(|s| !s.is_empty()).unwrap_or("-");
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "  {} {} [{scope}]: ",
                    k["identity"].as_str().unwrap(),
                    k["audience"].as_str().unwrap()
                ))
            })
            .unwrap_or_else(|| panic!("no line for {k} in:\n{text}"));
        // "  ID AUD [SCOPE]: expires AT (in D), renews in D, fingerprint FP"
        let parts: Vec<&str> = line.split(", ").collect();
        assert_eq!(parts.len(), 3, "{line}");
        let expires = format!("expires {} (in ", k["expires_at"].as_str().unwrap());
        assert!(parts[0].contains(&expires), "{line}");
        assert!(parts[1].starts_with("renews in "), "{line}");
        assert_eq!(
            parts[2],
            format!("fingerprint {}", k["fingerprint"].as_str().unwrap()),
            "{line}"
        );
    }
    assert!(text.contains(&format!("sink {}: ok\n", sink.display())), "{text}");
    assert!(!text.contains("eyJ"), "status never shows a token");
    // --json prints the agent's own answer.
    let printed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(printed["status"], "ok");
    assert_eq!(printed["cache"]["keys"].as_array().unwrap().len(), 2);
    assert_eq!(printed["sinks"][0]["path"], sink.to_str().unwrap());
}
