//! Running as a service: start (a stale socket, a socket another agent serves), readiness
//! notification, the watchdog, socket activation, reload, stop with a request in flight, token
//! files, metrics, JSON logs, and the unit's hardening.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use cortexid::devidp::fixture::{Role, Sink};

fn recv(sock: UnixDatagram) -> (UnixDatagram, String) {
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    (sock, String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn recv_async(sock: UnixDatagram) -> (UnixDatagram, String) {
    tokio::task::spawn_blocking(move || recv(sock)).await.unwrap()
}

#[tokio::test]
async fn ready_is_sent_once_the_socket_answers_and_stopping_on_sigterm() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let notify_path = h.dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["agent", "--config"])
        .arg(&h.config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A reload sent the moment READY=1 arrives (as `systemctl reload` right after start may)
    // is a reload, not the end of the agent.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (sock, ready) = tokio::task::spawn_blocking(move || {
        let (sock, ready) = recv(sock);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        (sock, ready)
    })
    .await
    .unwrap();
    // The moment READY=1 arrives, the socket must already answer.
    let r = h
        .client
        .get("/v1/health")
        .await
        .expect("the socket answers when READY=1 arrives (and the SIGHUP right after it did not end the agent)");
    assert!(r.status == 200 || r.status == 503);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=serving 2 identities")),
        "{ready}"
    );

    let (sock, reloading) = recv_async(sock).await;
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    let usec: u64 = reloading
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("MONOTONIC_USEC=")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let (sock, ready_again) = recv_async(sock).await;
    assert!(ready_again.starts_with("READY=1"), "{ready_again}");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (_, stopping) = recv_async(sock).await;
    assert_eq!(stopping, "STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!h.socket.exists(), "the agent removes the socket it created");
}

/// Reads every notification already waiting on `sock`.
fn drain(sock: &UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    sock.set_nonblocking(false).unwrap();
    out
}

const WITHHELD: &str = "withholding the watchdog ping";

/// Waits until the agent has logged one more withheld ping (than `before`), for `reason`; then
/// asserts that no `WATCHDOG=1` comes for a second (five ping intervals). Pings sent before the
/// withheld one are dropped first: the watchdog probes, then pings or logs, one probe at a time.
async fn pings_stop(sock: UnixDatagram, agent: &AgentProcess, before: usize, reason: &str) -> UnixDatagram {
    let mut logged = false;
    for _ in 0..500 {
        let logs = agent.logs();
        if logs.matches(WITHHELD).count() > before && logs.contains(reason) {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        logged,
        "the agent logged no withheld ping ({reason}):\n{}",
        agent.logs()
    );
    tokio::task::spawn_blocking(move || {
        drain(&sock);
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = vec![0u8; 4096];
        match sock.recv(&mut buf) {
            Ok(n) => panic!(
                "sent while its socket did not answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => assert!(
                matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "{e}"
            ),
        }
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        sock
    })
    .await
    .unwrap()
}

/// The watchdog probes the socket the way a caller does, by its path, so a socket that does
/// not answer is simulated at that path: the agent's socket is moved aside and a listener that
/// never accepts takes its place (a wedged accept loop, as the probe sees it: the connection is
/// made, no answer comes), then nothing is there at all; then the agent's socket comes back.
#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_is_fed_while_the_socket_answers_and_withheld_while_it_does_not() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let notify_path = h.dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let agent = AgentProcess::spawn(
        &h.config_path,
        &h.socket,
        h.dir.path().join("agent.log"),
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .await;
    let (sock, ready) = recv_async(sock).await;
    assert!(ready.starts_with("READY=1"), "{ready}");
    let (sock, ping) = recv_async(sock).await;
    assert_eq!(ping, "WATCHDOG=1");
    let (sock, ping) = recv_async(sock).await;
    assert_eq!(ping, "WATCHDOG=1");
    assert_eq!(agent.logs().matches(WITHHELD).count(), 0, "{}", agent.logs());

    // A listener that never accepts: the probe connects and waits for an answer in vain.
    let aside = h.dir.path().join("agent.sock.aside");
    std::fs::rename(&h.socket, &aside).unwrap();
    let silent = std::os::unix::net::UnixListener::bind(&h.socket).unwrap();
    let sock = pings_stop(sock, &agent, 0, "did not answer in time").await;

    // Nothing at the path: the probe cannot even connect.
    drop(silent);
    std::fs::remove_file(&h.socket).unwrap();
    let before = agent.logs().matches(WITHHELD).count();
    let sock = pings_stop(sock, &agent, before, "the socket does not answer").await;

    // The agent's socket is back: the pings resume.
    std::fs::rename(&aside, &h.socket).unwrap();
    let (_, ping) = recv_async(sock).await;
    assert_eq!(ping, "WATCHDOG=1");
    assert_eq!(agent.stop(), 0);
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_an_agent_that_answers_is_not() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    // A socket file nobody listens on (an agent that was killed): removed at start.
    drop(std::os::unix::net::UnixListener::bind(&h.socket).unwrap());
    assert!(UnixStream::connect(&h.socket).is_err(), "stale: nobody answers");
    h.start().await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "{body}");

    // A second agent with the same socket refuses to start (exit 1), and the first keeps it.
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["agent", "--config"])
        .arg(&h.config_path)
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second agent exits instead of serving")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("another agent is already serving {}", h.socket.display())),
        "{err}"
    );
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "the first agent still serves its socket: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let mut agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    // The exchange behind this request takes 1 s at the provider (the agent waits up to 2 s).
    h.idp.set_fault(cortexid::devidp::Fault::Delay(Duration::from_secs(1)));
    let client = h.client.clone();
    let request = tokio::spawn(async move { client.get(&token_path("payments", PAYMENTS, "")).await });
    let mut in_flight = false;
    for _ in 0..500 {
        if h.idp.counters().token_requests == 1 {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(in_flight, "the request reached the provider");
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let r = request
        .await
        .unwrap()
        .expect("the request in flight is answered, not cut off");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().unwrap()["access_token"].as_str().is_some());
    let code = tokio::task::spawn_blocking(move || agent.child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(!h.socket.exists(), "the socket is removed at stop");
    let events: Vec<String> = h
        .audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    let stopping = events.iter().rposition(|e| e == "agent.stopping").unwrap();
    let issued = events.iter().rposition(|e| e == "token.issued").unwrap();
    assert!(
        issued > stopping,
        "the token was issued after the stop began: {events:?}"
    );
}

#[tokio::test]
async fn log_format_json_writes_json_lines_to_stderr() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    h.config.agent.log_format = Some(cortexid::config::LogFormat::Json);
    h.write_config();
    let agent = AgentProcess::spawn(
        &h.config_path,
        &h.socket,
        h.dir.path().join("agent.log"),
        &[("RUST_LOG", "info")],
    )
    .await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200, "{body}");
    let logs = agent.logs();
    assert_eq!(agent.stop(), 0);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{logs}");
    for l in &lines {
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("serving 2 identities"))),
        "{logs}"
    );
}

#[tokio::test]
async fn under_socket_activation_the_passed_socket_is_served_and_kept() {
    let Ok(activate) = which("systemd-socket-activate") else {
        skip_or_fail(
            "systemd::under_socket_activation_the_passed_socket_is_served_and_kept",
            "systemd-socket-activate is not installed (package systemd)",
        );
        return;
    };
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let passed = h.dir.path().join("activated.sock");
    let mut child = std::process::Command::new(activate)
        .arg("-l")
        .arg(&passed)
        .arg(env!("CARGO_BIN_EXE_cortexid"))
        .args(["agent", "--config"])
        .arg(&h.config_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if passed.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = cortexid::cmd::client::SocketClient::new(&passed);
    let r = client.get(&token_path("payments", PAYMENTS, "")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !h.socket.exists(),
        "the configured socket is not bound when systemd passes one"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(passed.exists(), "a socket systemd passed is not unlinked by the agent");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .ok_or(())
}

/// One HTTP/1.1 request on a kept-alive raw connection.
fn raw_get(stream: &mut BufReader<UnixStream>, path: &str) -> (u16, String) {
    write!(stream.get_mut(), "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// How many audit events named `event` the log holds.
fn audit_count(h: &Harness, event: &str) -> usize {
    h.audit_lines().iter().filter(|l| l["event"] == event).count()
}

/// The next audit event named `event` after the first `seen` ones, waiting for it (at most 10 s).
async fn next_audit_event(h: &Harness, event: &str, seen: usize) -> serde_json::Value {
    for _ in 0..500 {
        if let Some(line) = h.audit_lines().into_iter().filter(|l| l["event"] == event).nth(seen) {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no new {event} event in the audit log: {:?}", h.audit_lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rejects_a_broken_config_and_applies_a_good_one_without_dropping_connections() {
    let mut h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![64999],
            roles: vec![Role::new("payments-only", &["payments"]).uids(&[0])],
            ..Setup::default()
        },
    )
    .await;
    h.stop().await;
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let batch = token_path("batch", LEDGER, "");
    let conn = UnixStream::connect(&h.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = BufReader::new(conn);
    let (status, _) = tokio::task::block_in_place(|| raw_get(&mut conn, &batch));
    assert_eq!(status, 403);

    std::fs::write(&h.config_path, good.replace("[[role]]", "[[rol]]")).unwrap();
    let seen = audit_count(&h, "config.rejected");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    // The evidence that the reload ran: its audit event.
    let rejected = next_audit_event(&h, "config.rejected", seen).await;
    assert!(rejected["reason"].as_str().unwrap().contains("rol"), "{rejected}");
    assert!(agent.logs().contains("configuration rejected"), "{}", agent.logs());
    let (status, body) = tokio::task::block_in_place(|| raw_get(&mut conn, &token_path("payments", PAYMENTS, "")));
    assert_eq!(status, 200, "the old config keeps serving: {body}");
    let (status, _) = tokio::task::block_in_place(|| raw_get(&mut conn, &batch));
    assert_eq!(status, 403, "and only the old config");

    h.config.roles.push(Role::new("batch-too", &["batch"]).uids(&[0]));
    h.write_config();
    let seen = audit_count(&h, "config.loaded");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    next_audit_event(&h, "config.loaded", seen).await;
    let (status, body) = tokio::task::block_in_place(|| raw_get(&mut conn, &batch));
    assert_eq!(status, 200, "the new role applies on the same connection: {body}");
    assert_eq!(agent.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_is_written_whole_with_its_mode_and_owner_and_follows_renewals() {
    let mut h = Harness::new(Duration::from_secs(3), Setup::default()).await;
    h.stop().await;
    let tokens = h.dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let sink = tokens.join("payments.jwt");
    h.config.sinks.push(Sink {
        identity: "payments".into(),
        audience: PAYMENTS.into(),
        path: sink.clone(),
        mode: Some(0o640),
        owner: Some("nobody".into()),
    });
    h.write_config();
    h.start().await;
    for _ in 0..100 {
        if sink.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&sink).expect("the token file exists right after start");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), 65534, "owned by nobody");

    // A reader polling the file never sees it empty or partial, and sees the renewed token.
    let path = sink.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = std::collections::BTreeSet::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let mut reads = 0;
        while std::time::Instant::now() < end {
            let content = std::fs::read_to_string(&path).unwrap();
            assert!(
                content.ends_with('\n') && content.trim().split('.').count() == 3,
                "partial read: {content:?}"
            );
            claims(content.trim());
            seen.insert(content);
            reads += 1;
        }
        (seen, reads)
    })
    .await
    .unwrap();
    let (seen, reads) = seen;
    assert!(reads > 1000, "the reader really polled ({reads} reads)");
    assert!(
        seen.len() >= 2,
        "the file follows renewals: {} distinct tokens",
        seen.len()
    );
    let (_, health) = h.get("/v1/health").await;
    assert_eq!(health["sinks"][0]["state"], "ok", "{health}");
    let written = h.audit_lines().into_iter().filter(|l| l["source"] == "sink").count();
    // Every write is audited; one more renewal may have been written after the reader stopped.
    assert!(
        written == seen.len() || written == seen.len() + 1,
        "{written} audited writes, {} tokens read",
        seen.len()
    );
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let r = h.client.get("/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let before = r.text();
    for _ in 0..3 {
        h.get(&token_path("payments", PAYMENTS, "")).await;
    }
    h.get(&token_path("payments", "https://nope", "")).await;
    let after = h.client.get("/metrics").await.unwrap().text();
    for line in after.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP cortexid_") || line.starts_with("# TYPE cortexid_"),
                "{line}"
            );
            continue;
        }
        let (series, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "not a sample: {line}");
        assert!(series.starts_with("cortexid_"), "{line}");
        assert!(!line.contains("eyJ"), "no token in metrics");
    }
    let ok = "cortexid_requests_total{endpoint=\"token\",outcome=\"ok\"}";
    assert_eq!(value(&after, ok) - value(&before, ok), 3.0);
    assert_eq!(
        value(
            &after,
            "cortexid_requests_total{endpoint=\"token\",outcome=\"invalid_target\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "cortexid_exchanges_total{provider=\"corp\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "cortexid_cache_hits_total"), 2.0);
    assert_eq!(value(&after, "cortexid_provider_up{provider=\"corp\"}"), 1.0);
    assert_eq!(
        value(&after, "cortexid_exchange_duration_seconds_count{provider=\"corp\"}"),
        1.0
    );
}

#[test]
fn the_service_unit_is_hardened_and_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        skip_or_fail(
            "systemd::the_service_unit_is_hardened_and_verifies",
            "systemd-analyze is not installed (package systemd)",
        );
        return;
    };
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let out = std::process::Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(units.join("cortexid.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for cortexid.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in:\n{text}"));
    println!("systemd-analyze security: overall exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} is over 2.0:\n{text}");
    assert!(out.status.success());

    // verify needs the executables to exist: point the units at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    for unit in ["cortexid.service", "cortexid.socket"] {
        let text = std::fs::read_to_string(units.join(unit))
            .unwrap()
            .replace("/usr/local/bin/cortexid", env!("CARGO_BIN_EXE_cortexid"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = std::process::Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("cortexid.service"))
        .arg(dir.path().join("cortexid.socket"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
