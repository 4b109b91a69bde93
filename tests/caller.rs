//! Knowing the caller: roles by uid, groups, systemd unit and executable, caller-presented
//! credentials (their claims, and the signature algorithms accepted), and an audit trail that
//! names every caller and leaks nothing. Tests run as root, so they start
//! callers as other users.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use cortexid::config::{AuditTarget, TrustedIssuer};
use cortexid::devidp::fixture::{Identity, Role};
use cortexid::devidp::{DevIdp, DevIdpConfig};

const NOBODY: u32 = 64999;

/// The reasons of a refusal: the `error_description` of the audit line whose `reference` the
/// refusal's text names (callers that are not operators get only the reference).
fn reasons(h: &Harness, err: &str) -> String {
    let reference = err
        .split("under reference ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no reference in {err}"));
    h.audit_lines()
        .into_iter()
        .find(|l| l["reference"] == reference)
        .and_then(|l| l["error_description"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no audit line with reference {reference}"))
}

#[tokio::test]
async fn only_the_uid_a_role_names_gets_the_token() {
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![4242],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let args = ["--identity", "payments", "--audience", PAYMENTS];
    let (code, out, err) = token_as(4242, exe, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let (code, out, err) = token_as(4343, exe, &h.socket, &args).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("access_denied") && err.contains("uid 4343"), "{err}");
    assert!(
        !err.contains("needs uid"),
        "a caller that is not an operator learns no role's conditions: {err}"
    );
    assert!(
        reasons(&h, &err).contains("needs uid in {4242}"),
        "the near miss is named in the audit line the answer refers to"
    );

    let lines = h.audit_lines();
    let issued: Vec<_> = lines.iter().filter(|l| l["event"] == "token.issued").collect();
    let denied: Vec<_> = lines.iter().filter(|l| l["event"] == "token.denied").collect();
    assert_eq!(
        (issued.len(), denied.len()),
        (1, 1),
        "exactly one audit line per request"
    );
    assert_eq!(issued[0]["caller"]["uid"], 4242);
    assert_eq!(denied[0]["caller"]["uid"], 4343);
    for l in [issued[0], denied[0]] {
        assert!(l["caller"]["pid"].as_u64().unwrap() > 1);
        assert_eq!(l["caller"]["exe"], exe.to_str().unwrap());
        assert!(
            l["caller"].get("unit").is_some(),
            "the unit is always reported (null when none): {l}"
        );
    }
    assert_eq!(denied[0]["reason"], "access_denied");
}

#[tokio::test]
async fn a_role_by_executable_admits_the_binary_and_not_a_copy_of_it() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let setup = Setup {
        role_uids: vec![NOBODY],
        roles: vec![Role::new("by-binary", &["payments"]).executables(&[exe])],
        ..Setup::default()
    };
    let h = Harness::new(Duration::from_secs(300), setup).await;
    open_dir(h.dir.path());
    let copy = h.dir.path().join("cortexid-copy");
    std::fs::copy(exe, &copy).unwrap();
    let args = ["--identity", "payments", "--audience", PAYMENTS];
    let (code, _, err) = token_as(4242, exe, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = token_as(4242, &copy, &h.socket, &args).await;
    assert_eq!(code, 1);
    assert!(err.contains(&format!("exe {}", copy.display())), "{err}");
    assert!(reasons(&h, &err).contains("needs executable in"), "{err}");
}

#[tokio::test]
async fn roles_by_group_name_and_by_gid_admit_primary_and_supplementary_groups() {
    // A group every Linux host has (gid 1: daemon or bin), named in the config; and a bare gid.
    let named = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(1))
        .unwrap()
        .expect("a group with gid 1 on this host");
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            roles: vec![
                Role::new("by-group", &["payments"]).groups(&[&named.name]),
                Role::new("by-gid", &["batch"]).gids(&[5151]),
            ],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    let payments = ["--identity", "payments", "--audience", PAYMENTS];
    let batch = ["--identity", "batch", "--audience", LEDGER];
    let ask = |who: As, args: [&'static str; 4]| {
        let socket = h.socket.clone();
        async move { token_with(who, exe, &socket, &args).await }
    };

    // A supplementary group, by name.
    let (code, out, err) = ask(As::user(4242).groups(&[1]), payments).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let (code, _, err) = ask(As::user(4242).groups(&[1]), batch).await;
    assert_eq!(code, 1);
    assert!(
        reasons(&h, &err).contains("role \"by-gid\" needs one of the groups {5151}, caller is in gid 4242 and [1]"),
        "{err}"
    );
    // A supplementary group, by id.
    let (code, out, err) = ask(As::user(4242).groups(&[5151]), batch).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(out.trim())["aud"], LEDGER);
    // The primary group counts too.
    let (code, _, err) = ask(As::user(4242).gid(5151), batch).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ask(As::user(4242).gid(1), payments).await;
    assert_eq!(code, 0, "{err}");
    // In neither group: nothing.
    let (code, _, err) = ask(As::user(4242).groups(&[4343]), payments).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("access_denied") && reasons(&h, &err).contains("role \"by-group\" needs one of the groups {1}"),
        "{err}"
    );
}

/// The v2 cgroup hierarchy's mount point, from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

/// A cgroup named like a systemd scope (`cortexid-test-PID.scope`), made directly in the v2
/// hierarchy: a process moved into it runs "in" that unit as `/proc/<pid>/cgroup` tells it.
struct Scope {
    dir: PathBuf,
    name: String,
}

impl Scope {
    fn create() -> Result<Scope, String> {
        let root = cgroup2_root().ok_or("no cgroup2 hierarchy is mounted")?;
        let name = format!("cortexid-test-{}.scope", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
        Ok(Scope { dir, name })
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // Removable once its processes are gone, which takes a moment after they are reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The unit this test process runs in, the way the agent reads it (`0::` line, else systemd's
/// named hierarchy; the innermost `.service`, `.scope`, … that is not a slice).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).or_else(|| {
        cgroup
            .lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
    })?;
    path.split('/')
        .rev()
        .find(|c| {
            [".service", ".scope", ".socket", ".mount", ".swap", ".timer"]
                .iter()
                .any(|s| c.ends_with(s) && c.len() > s.len())
        })
        .map(str::to_string)
}

#[tokio::test]
async fn a_role_by_unit_admits_callers_running_in_that_unit_only() {
    // The unit callers run in: a scope made for this test when this host lets root make a
    // cgroup (callers are moved into it), else the unit this test runs in (callers inherit it).
    let scope = Scope::create();
    let (unit, scope) = match scope {
        Ok(s) => (s.name.clone(), Some(s)),
        Err(why) => match own_unit() {
            Some(u) => (u, None),
            None => {
                skip_or_fail(
                    "caller::a_role_by_unit_admits_callers_running_in_that_unit_only",
                    &format!("{why}, and this test runs in no systemd unit"),
                );
                return;
            }
        },
    };
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            roles: vec![
                Role::new("by-unit", &["payments"]).units(&[&unit]),
                Role::new("elsewhere", &["batch"]).units(&["elsewhere.service"]),
            ],
            ..Setup::default()
        },
    )
    .await;
    // `cortexid token` in the unit: moved into the scope by the shell that then becomes it.
    let ask = |args: [&str; 4]| {
        let mut cmd = match &scope {
            Some(s) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0\" && exec \"$@\"")
                    .arg(s.dir.join("cgroup.procs"))
                    .arg(env!("CARGO_BIN_EXE_cortexid"));
                c
            }
            None => tokio::process::Command::new(env!("CARGO_BIN_EXE_cortexid")),
        };
        cmd.arg("token").args(args).env("CORTEXID_SOCKET", &h.socket);
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = ask(["--identity", "payments", "--audience", PAYMENTS]).await;
    assert_eq!(code, 0, "a caller in {unit}: {err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let (code, _, err) = ask(["--identity", "batch", "--audience", LEDGER]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "role \"elsewhere\" needs unit in [\"elsewhere.service\"], caller runs in {unit}"
        )),
        "{err}"
    );
    let issued = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.issued")
        .unwrap();
    assert_eq!(issued["caller"]["unit"], unit.as_str());
    assert_eq!(issued["role"], "by-unit");
    if scope.is_some() {
        // This test process is not in the scope: not admitted.
        let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
        assert_eq!(status, 403, "{body}");
    }
}

/// A cgroup tree made for a test in the v2 hierarchy, `relative` to its root (its first
/// component names the test's own top cgroup); removed, leaf first, when dropped.
struct TestCgroup {
    top: PathBuf,
    leaf: PathBuf,
}

impl TestCgroup {
    fn create(relative: &str) -> Result<TestCgroup, String> {
        let root = cgroup2_root().ok_or("no cgroup2 hierarchy is mounted")?;
        let leaf = root.join(relative);
        let top = root.join(relative.split('/').next().unwrap_or(relative));
        std::fs::create_dir_all(&leaf).map_err(|e| format!("cannot create the cgroup {}: {e}", leaf.display()))?;
        Ok(TestCgroup { top, leaf })
    }

    /// [`TestCgroup::create`], or `None` once `test` is skipped (outside CI) or failed (under
    /// `CI=true`) because the host cannot make it.
    fn or_skip(relative: &str, test: &str) -> Option<TestCgroup> {
        TestCgroup::create(relative)
            .map_err(|why| skip_or_fail(test, &why))
            .ok()
    }

    /// Runs `cortexid token ARGS` in this cgroup as `uid` (no groups): joined as root, as the
    /// user's systemd or a container runtime would put it there; (exit code, stdout, stderr).
    async fn token_as(&self, uid: u32, socket: &Path, args: [&str; 4]) -> (i32, String, String) {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec setpriv --reuid=\"$1\" --regid=\"$1\" --clear-groups \"$2\" token \"$3\" \"$4\" \"$5\" \"$6\"")
            .arg(self.leaf.join("cgroup.procs"))
            .arg(uid.to_string())
            .arg(env!("CARGO_BIN_EXE_cortexid"))
            .args(args)
            .env("CORTEXID_SOCKET", socket)
            .output()
            .await
            .expect("sh and setpriv (util-linux) run the attacker");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut dirs: Vec<&Path> = self.leaf.ancestors().take_while(|d| d.starts_with(&self.top)).collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            // Removable once its processes are gone, which takes a moment after they are reaped.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A user's own systemd (`user@UID.service`, its subtree delegated to that user) makes units
/// under whatever name the user asks for: `systemd-run --user --unit=deploy-agent.service`. The
/// attacker, uid 4242, runs `cortexid token` in such a user unit named like the deploy bot's
/// system service (moved there by root here, as its systemd would move it): it is refused the
/// bot's role, and the audit line names its system unit `user@4242.service` and its user unit.
/// A role for that user's own user unit (`user_units` with `uids`) admits it.
#[tokio::test]
async fn a_user_unit_named_like_a_system_service_does_not_pass_for_it() {
    const ATTACKER: u32 = 4242;
    let layout = format!(
        "cortexid-test-{}.slice/user-{ATTACKER}.slice/user@{ATTACKER}.service/app.slice/deploy-agent.service",
        std::process::id()
    );
    let Some(unit) = TestCgroup::or_skip(
        &layout,
        "caller::a_user_unit_named_like_a_system_service_does_not_pass_for_it",
    ) else {
        return;
    };
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            roles: vec![
                Role::new("deploy-bot", &["payments"]).units(&["deploy-agent.service"]),
                Role::new("own-sync", &["batch"])
                    .uids(&[ATTACKER])
                    .user_units(&["deploy-agent.service"]),
            ],
            ..Setup::default()
        },
    )
    .await;
    let ask = |args| unit.token_as(ATTACKER, &h.socket, args);
    let (code, _, err) = ask(["--identity", "payments", "--audience", PAYMENTS]).await;
    assert_eq!(
        code, 1,
        "uid {ATTACKER} in its own user unit deploy-agent.service got the bot's token: {err}"
    );
    assert!(
        err.contains("unit user@4242.service (user unit deploy-agent.service)"),
        "{err}"
    );
    assert!(
        reasons(&h, &err).contains(&format!(
            "role \"deploy-bot\" needs unit in [\"deploy-agent.service\"], caller runs in user@{ATTACKER}.service"
        )),
        "{err}"
    );
    let denied = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.denied")
        .unwrap();
    assert_eq!(denied["caller"]["uid"], ATTACKER);
    assert_eq!(denied["caller"]["unit"], format!("user@{ATTACKER}.service"));
    assert_eq!(denied["caller"]["user_unit"], "deploy-agent.service");

    let (code, out, err) = ask(["--identity", "batch", "--audience", LEDGER]).await;
    assert_eq!(code, 0, "its own user unit, by uid: {err}");
    assert_eq!(claims(out.trim())["aud"], LEDGER);
    let issued = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.issued")
        .unwrap();
    assert_eq!(issued["role"], "own-sync");
    assert_eq!(issued["caller"]["user_unit"], "deploy-agent.service");
}

/// A cgroup outside systemd's slices is handed to whoever runs in it (an LXD container's
/// `lxc.payload.NAME`, a cgroupfs runtime's `docker/ID`): the attacker, uid 4244, makes a
/// `payments.service` inside the one it was given and runs `cortexid token` there. It is in no
/// unit, as systemd itself reads it, and gets no role by unit.
#[tokio::test]
async fn a_unit_name_made_inside_a_container_s_cgroup_does_not_pass_for_that_unit() {
    const ATTACKER: u32 = 4244;
    let layout = format!("cortexid-test-{}.payload/payments.service", std::process::id());
    let Some(cgroup) = TestCgroup::or_skip(
        &layout,
        "caller::a_unit_name_made_inside_a_container_s_cgroup_does_not_pass_for_that_unit",
    ) else {
        return;
    };
    let h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            roles: vec![Role::new("payments-unit", &["payments"]).units(&["payments.service"])],
            ..Setup::default()
        },
    )
    .await;
    let (code, _, err) = cgroup
        .token_as(ATTACKER, &h.socket, ["--identity", "payments", "--audience", PAYMENTS])
        .await;
    assert_eq!(code, 1, "uid {ATTACKER} passed for payments.service: {err}");
    assert!(
        reasons(&h, &err).contains(
            r#"role "payments-unit" needs unit in ["payments.service"], and the caller runs in no systemd unit"#
        ),
        "{err}"
    );
    let denied = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.denied")
        .unwrap();
    assert_eq!(denied["caller"]["uid"], ATTACKER);
    assert_eq!(denied["caller"]["unit"], serde_json::Value::Null);
}

struct Presented {
    h: Harness,
    k8s: DevIdp,
}

/// An agent with an identity that takes the subject from the caller, trusting a second
/// provider (standing in for a Kubernetes service-account issuer) whose tokens carry `team`.
async fn presented() -> Presented {
    let k8s = DevIdp::start(DevIdpConfig::default()).await.unwrap();
    // The names are only known once the issuer runs; the config is written after.
    let mut h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![NOBODY],
            ..Setup::default()
        },
    )
    .await;
    h.stop().await;
    let k8s_ca = h.dir.path().join("k8s-ca.pem");
    std::fs::write(&k8s_ca, k8s.ca_pem()).unwrap();
    h.idp.trust_key(k8s.jwks()["keys"][0].clone());
    let k8s_issuer = TrustedIssuer {
        issuer: k8s.issuer().to_string(),
        jwks_uri: format!("{}/jwks", k8s.issuer()),
        audience: "cortexid".into(),
        ca_file: Some(k8s_ca),
    };
    h.config.identities.push(
        Identity::presented("delegated", "corp", vec![k8s_issuer])
            .audiences(&[PAYMENTS])
            .scopes(&["payments.read"]),
    );
    h.config.roles.push(
        Role::new("payments-team", &["delegated"])
            .claim("team", &["payments"])
            .claim("tenant.id", &["t1", "t2"]),
    );
    h.write_config();
    h.start().await;
    Presented { h, k8s }
}

fn sa_claims(k8s: &DevIdp, team: &str, aud: &str, exp_offset: i64) -> serde_json::Value {
    let now = unix_now() as i64;
    serde_json::json!({
        "iss": k8s.issuer(), "sub": "system:serviceaccount:prod:payments-api", "aud": aud,
        "team": team, "tenant": {"id": "t2"}, "iat": now - 10, "exp": now + exp_offset,
    })
}

#[tokio::test]
async fn a_presented_jwt_from_a_trusted_issuer_gets_a_token_through_its_claims() {
    let p = presented().await;
    let good = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 600));
    let body = serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": good});
    let r = p.h.client.post_json("/v1/token", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json().unwrap()["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&token)["sub"], "system:serviceaccount:prod:payments-api");
    // The identity is implied when only one takes presented credentials.
    let r =
        p.h.client
            .post_json(
                "/v1/token",
                &serde_json::json!({"audience": PAYMENTS, "subject_token": good}),
            )
            .await
            .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["access_token"].as_str().unwrap(),
        token,
        "the same credential shares a cache key"
    );
    // A different credential gets its own cache entry.
    let other = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 900));
    let r =
        p.h.client
            .post_json(
                "/v1/token",
                &serde_json::json!({"audience": PAYMENTS, "subject_token": other}),
            )
            .await
            .unwrap();
    assert_ne!(r.json().unwrap()["access_token"].as_str().unwrap(), token);
    let issued =
        p.h.audit_lines()
            .into_iter()
            .find(|l| l["event"] == "token.issued")
            .unwrap();
    assert_eq!(issued["role"], "payments-team");
    assert_eq!(issued["subject"]["sub"], "system:serviceaccount:prod:payments-api");
    assert_eq!(issued["subject"]["fingerprint"].as_str().unwrap().len(), 16);
}

#[tokio::test]
async fn a_presented_jwt_is_refused_with_the_reason() {
    let p = presented().await;
    let ask = |t: String| serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": t});
    let good = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 600));
    // Change a character in the middle of the signature: the last base64url character of an
    // ES256 signature carries padding bits, so changing it may not change the signature at all.
    let mut tampered = good.clone().into_bytes();
    let i = good.rfind('.').unwrap() + 20;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut unknown = sa_claims(&p.k8s, "payments", "cortexid", 600);
    unknown["iss"] = "https://evil.example".into();
    let cases = [
        (tampered, "signature"),
        (p.k8s.mint(unknown), "not trusted"),
        (
            p.k8s.mint(sa_claims(&p.k8s, "payments", "someone-else", 600)),
            "audience",
        ),
        (p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", -120)), "expired"),
        (
            p.k8s.mint(sa_claims(&p.k8s, "ops", "cortexid", 600)),
            "needs claim team",
        ),
        ("not-a-jwt".to_string(), "not a JWT"),
    ];
    for (token, why) in cases {
        let r = p.h.client.post_json("/v1/token", &ask(token)).await.unwrap();
        let body = r.json().unwrap();
        assert!((400..500).contains(&r.status), "{why}: {} {body}", r.status);
        let text = body["error_description"].as_str().unwrap();
        assert!(text.contains(why), "expected {why:?} in {text}");
    }
    assert_eq!(
        p.h.idp.counters().token_requests,
        0,
        "nothing refused reached the provider"
    );
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The issuer's P-256 public key (its JWKS entry) as the PEM an attacker would use as an HMAC
/// secret: SubjectPublicKeyInfo, DER, base64.
fn public_key_pem(jwk: &serde_json::Value) -> String {
    use base64::Engine;
    let coordinate = |c: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[c].as_str().unwrap())
            .unwrap()
    };
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 04 || x || y } }
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    der.extend(coordinate("x"));
    der.extend(coordinate("y"));
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn presented_jwts_with_alg_none_hmac_or_another_key_family_are_refused() {
    let p = presented().await;
    let jwk = p.k8s.jwks()["keys"][0].clone();
    let kid = jwk["kid"].as_str().unwrap().to_string();
    let claims = sa_claims(&p.k8s, "payments", "cortexid", 600);
    let payload = b64(claims.to_string().as_bytes());
    let hs256 = |secret: &[u8]| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    };
    // EdDSA, from a key of the attacker's, naming the issuer's EC key.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.clone());
    let eddsa = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "alg none, no signature",
            format!(
                "{}.{payload}.",
                b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes())
            ),
            "unreadable header",
        ),
        (
            "HS256 keyed with the issuer's public key (PEM)",
            hs256(public_key_pem(&jwk).as_bytes()),
            "algorithm HS256 is not accepted",
        ),
        (
            "HS256 keyed with the issuer's JWK",
            hs256(jwk.to_string().as_bytes()),
            "algorithm HS256 is not accepted",
        ),
        (
            "EdDSA naming the issuer's P-256 key",
            eddsa,
            "does not publish for EdDSA",
        ),
    ];
    let ask = |t: &str| serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": t});
    for (what, token, why) in &cases {
        let r = p.h.client.post_json("/v1/token", &ask(token)).await.unwrap();
        let body = redacted(&r.json().unwrap());
        assert_eq!(r.status, 403, "{what}: {body}");
        assert_eq!(body["error"], "access_denied", "{what}: {body}");
        let text = body["error_description"].as_str().unwrap();
        assert!(
            text.contains("the presented subject_token is refused"),
            "{what}: {text}"
        );
        assert!(text.contains(why), "{what}: expected {why:?} in {text}");
    }
    assert_eq!(
        p.h.idp.counters().token_requests,
        0,
        "nothing refused reached the provider"
    );
    // The same claims, signed by the issuer's key with its algorithm, are accepted.
    let good = p.k8s.mint(claims.clone());
    let r = p.h.client.post_json("/v1/token", &ask(&good)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn an_unwritable_audit_log_stops_tokens_until_fixed_and_reloaded() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    // A directory where the log should be: it cannot be opened (the agent runs as root here,
    // so a file mode would not stop it).
    let audit = h.dir.path().join("audit-here.jsonl");
    std::fs::create_dir(&audit).unwrap();
    h.config.agent.audit_log = Some(AuditTarget::File(audit.clone()));
    h.write_config();
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "audit_unavailable");
    assert!(body.get("access_token").is_none());

    std::fs::remove_dir(&audit).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let mut status = 0;
    for _ in 0..100 {
        (status, _) = h.get(&token_path("payments", PAYMENTS, "")).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.contains("\"event\":\"token.issued\""));
    assert_eq!(agent.stop(), 0);
}

#[tokio::test]
async fn no_token_or_secret_ever_reaches_a_log_or_audit_line() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    h.stop().await;
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let mut tokens = Vec::new();
    for (identity, aud, scope) in [
        ("payments", PAYMENTS, "payments.read"),
        ("payments", LEDGER, ""),
        ("batch", LEDGER, "payments.read"),
    ] {
        let (status, body) = h.get(&token_path(identity, aud, scope)).await;
        assert_eq!(status, 200, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_string());
    }
    // Denials, a provider refusal, a malformed request and a presented credential.
    h.get(&token_path("payments", UNREGISTERED, "")).await;
    h.get(&token_path("payments", "https://nope", "")).await;
    h.get("/v1/token?audience=x&subject_token=eyJsecret").await;
    let presented = h.mint_sa("presented");
    h.client
        .post_json(
            "/v1/token",
            &serde_json::json!({"audience": PAYMENTS, "subject_token": presented}),
        )
        .await
        .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = agent.logs();
    assert_eq!(agent.stop(), 0);
    let audit = std::fs::read_to_string(&h.audit).unwrap();
    let everything = format!("{logs}\n{audit}");
    assert!(audit.lines().count() >= 8, "{audit}");
    assert!(logs.contains("exchanged"), "the logs were captured: {logs}");
    let sa = std::fs::read_to_string(&h.sa_path).unwrap();
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([SECRET, sa.trim(), presented.as_str(), "eyJsecret"]);
    for s in secrets {
        assert!(
            !everything.contains(s),
            "a secret or token leaked into the logs or the audit log"
        );
        // Not even its signature part alone.
        if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() > 20) {
            assert!(!everything.contains(sig), "a token signature leaked");
        }
    }
}

#[tokio::test]
async fn a_caller_no_role_could_admit_gets_no_signature_check_and_no_jwks_request() {
    use base64::Engine;
    let mut p = presented().await;
    // The team's role is for root only: uid 4701 can never be admitted, whatever it presents.
    p.h.stop().await;
    let role = p.h.config.roles.pop().unwrap();
    p.h.config.roles.push(role.uids(&[0]));
    p.h.write_config();
    p.h.start().await;
    open_dir(p.h.dir.path());
    p.k8s.reset_counters();

    let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = sa_claims(&p.k8s, "payments", "cortexid", 600);
    let exe = Path::new(env!("CARGO_BIN_EXE_cortexid"));
    for n in 0..5 {
        // A trusted issuer, an unknown kid, a signature that cannot verify.
        let forged = format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(serde_json::json!({"alg": "ES256", "kid": format!("forged-{n}")})),
            enc(claims.clone())
        );
        let file = p.h.dir.path().join(format!("forged-{n}.jwt"));
        std::fs::write(&file, &forged).unwrap();
        let args = [
            "--identity",
            "delegated",
            "--audience",
            PAYMENTS,
            "--subject-token-file",
            file.to_str().unwrap(),
        ];
        let (code, _, err) = token_as(4701, exe, &p.h.socket, &args).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("access_denied"), "{err}");
    }
    assert_eq!(p.k8s.counters().jwks, 0, "the issuer's JWKS was never asked for");
    // The caller the role admits is still served.
    let good = p.k8s.mint(sa_claims(&p.k8s, "payments", "cortexid", 600));
    let body = serde_json::json!({"identity": "delegated", "audience": PAYMENTS, "subject_token": good});
    let r = p.h.client.post_json("/v1/token", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
