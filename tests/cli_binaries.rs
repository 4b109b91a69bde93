//! The two binaries: `cortexid` answers `cortexid token` itself (it starts fast: no runtime, TLS
//! or clap) and hands every other command line to `cortexid-agent`, installed next to it, by
//! `exec`, so both read as one `cortexid`.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

async fn run(exe: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(exe).args(args).output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn cortexid_answers_token_itself_and_hands_every_other_command_to_cortexid_agent() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let socket = h.socket.to_str().unwrap().to_string();
    let token = [
        "token",
        "--socket",
        &socket,
        "--identity",
        "payments",
        "--audience",
        PAYMENTS,
    ];
    let status = ["status", "--socket", &socket];

    // A copy of `cortexid` alone in a directory still gets tokens, as the caller the agent sees.
    let alone = tempfile::tempdir().unwrap();
    let lonely = alone.path().canonicalize().unwrap().join("cortexid");
    std::fs::copy(env!("CARGO_BIN_EXE_cortexid"), &lonely).unwrap();
    let out = run(&lonely, &token).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(claims(text(&out.stdout).trim())["aud"], PAYMENTS);
    let issued = h
        .audit_lines()
        .into_iter()
        .rfind(|l| l["event"] == "token.issued")
        .unwrap();
    assert_eq!(issued["caller"]["exe"], lonely.to_str().unwrap());

    // A stdout nobody reads is an error `cortexid` reports, not a silent death by SIGPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = tokio::process::Command::new(&lonely)
        .args(token)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    assert!(
        text(&out.stderr).contains("cannot write to stdout"),
        "{}",
        text(&out.stderr)
    );

    // Every other command needs `cortexid-agent` next to it, and says so.
    let out = run(&lonely, &status).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot run {}",
            alone.path().canonicalize().unwrap().join("cortexid-agent").display()
        )) && err.contains("install both in the same directory"),
        "{err}"
    );

    // Next to it, they work, and clap names the program `cortexid`.
    let cortexid = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let out = run(cortexid, &status).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(cortexid, &["--help"]).await;
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("Usage: cortexid <COMMAND>"),
        "{}",
        text(&out.stdout)
    );
    let out = run(cortexid, &["--version"]).await;
    assert_eq!(text(&out.stdout), format!("cortexid {}\n", env!("CARGO_PKG_VERSION")));

    // A `token` command line the fast path declines is clap's to explain, exactly as before.
    let out = run(cortexid, &["token", "--audience", "a", "--format", "yaml"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'yaml' for '--format <FORMAT>'"),
        "{}",
        text(&out.stderr)
    );
    let out = run(cortexid, &["token", "--help"]).await;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("Usage: cortexid token [OPTIONS] --audience <AUD>"));
    let out = run(cortexid, &["token", "--audience", "a", "--audience", "b"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot be used multiple times"),
        "{}",
        text(&out.stderr)
    );
}
