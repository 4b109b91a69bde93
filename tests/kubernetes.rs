//! Pod attestation end to end: real caller processes moved into pod-shaped cgroups (the kubelet's
//! systemd and cgroupfs layouts, under the unified hierarchy), the agent reading their real
//! `/proc/<pid>/cgroup`, and a kubelet stand-in over HTTPS serving the kubelet API's `/pods`.
//!
//! Needs root and a writable cgroup v2 hierarchy; elsewhere it says so and skips (under CI=true it
//! fails). Every cgroup it makes is removed at the end, its processes moved back first.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use cortexid::devidp::fixture::{Kubernetes, Role};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The uid the pods' processes run as (not an operator: it learns only what any caller does).
const POD_UID: u32 = 4242;
const NODE: &str = "node-1";
const KUBELET_TOKEN: &str = "kubelet-reader-token";

/// A kubelet stand-in: `GET /pods` with the right bearer token answers the pods it holds.
struct KubeletStandIn {
    url: String,
    ca_pem: String,
    pods: Arc<Mutex<Vec<Value>>>,
    /// Pod lists served.
    served: Arc<AtomicUsize>,
    /// Requests refused for a wrong or missing token.
    refused: Arc<AtomicUsize>,
    /// The bearer token it accepts.
    token: Arc<Mutex<String>>,
}

impl KubeletStandIn {
    async fn start() -> KubeletStandIn {
        let (ca_pem, tls) = cortexid::devidp::fixture::localhost_tls().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pods: Arc<Mutex<Vec<Value>>> = Default::default();
        let served: Arc<AtomicUsize> = Default::default();
        let refused: Arc<AtomicUsize> = Default::default();
        let token = Arc::new(Mutex::new(KUBELET_TOKEN.to_string()));
        let (p, s, r, t) = (pods.clone(), served.clone(), refused.clone(), token.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, pods, served, refused, token) =
                    (acceptor.clone(), p.clone(), s.clone(), r.clone(), t.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let authorized = head
                        .lines()
                        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {}", token.lock().unwrap())));
                    let (status, body) = if !head.starts_with("GET /pods ") {
                        ("404 Not Found", "{}".to_string())
                    } else if !authorized {
                        refused.fetch_add(1, Ordering::SeqCst);
                        ("401 Unauthorized", "Unauthorized".to_string())
                    } else {
                        served.fetch_add(1, Ordering::SeqCst);
                        let items = pods.lock().unwrap().clone();
                        let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
                        ("200 OK", list.to_string())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        KubeletStandIn {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem,
            pods,
            served,
            refused,
            token,
        }
    }

    fn list(&self, pod: Value) {
        self.pods.lock().unwrap().push(pod);
    }
}

/// A pod of `namespace` running as service account `sa`, with one container `api` of `id`.
fn pod(namespace: &str, name: &str, uid: &str, sa: &str, id: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {"app": namespace}},
        "spec": {"nodeName": NODE, "serviceAccountName": sa,
                 "containers": [{"name": "api", "image": "registry.example/api:1.4"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "api", "ready": true,
                   "image": "registry.example/api:1.4", "containerID": format!("containerd://{id}")}]}
    })
}

/// Test cgroups live where the kubelet's do, at the top of the hierarchy (a pod is only
/// recognised there); the tests that make them take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cgroups a test made; dropped, it moves their processes back to the root and removes them
/// (and whatever was made below them), deepest first. Cgroups that were there before are left.
struct Cgroups {
    mount: PathBuf,
    created: Mutex<Vec<PathBuf>>,
}

impl Cgroups {
    /// Finds the cgroup v2 hierarchy and checks that a cgroup can be made there, or says why not.
    fn new() -> Result<Cgroups, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("creating cgroups needs root".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (fields, fs) = l.split_once(" - ")?;
                (fs.split_whitespace().next() == Some("cgroup2")).then(|| fields.split_whitespace().nth(4))?
            })
            .map(PathBuf::from)
            .ok_or("no cgroup v2 hierarchy is mounted")?;
        let probe = mount.join(format!("cortexid-test-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup at {}: {e}", probe.display()))?;
        let _ = std::fs::remove_dir(&probe);
        Ok(Cgroups {
            mount,
            created: Default::default(),
        })
    }

    /// Makes the cgroup at `path` (from the top of the hierarchy), one level at a time, and opens
    /// its `cgroup.procs` for a process to move itself in.
    fn make(&self, path: &str) -> std::fs::File {
        let mut dir = self.mount.clone();
        for level in path.split('/') {
            dir.push(level);
            match std::fs::create_dir(&dir) {
                Ok(()) => self.created.lock().unwrap().push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("cannot create the cgroup {}: {e}", dir.display()),
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .unwrap()
    }

    /// `dir` and every cgroup below it, deepest first.
    fn below(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                Self::below(&entry.path(), out);
            }
        }
        out.push(dir.to_path_buf());
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.created.lock().unwrap());
        for top in created.iter().rev() {
            let mut dirs = Vec::new();
            Self::below(top, &mut dirs);
            for dir in dirs {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
                }
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        eprintln!("cannot remove the test cgroup {}: {e}", dir.display())
                    }
                    _ => {}
                }
            }
        }
    }
}

const UID_A: &str = "6f1c2f0a-3b1e-4c7e-9a51-0d2b8c7e4f10";
const UID_B: &str = "0b7d4c1e-2a3f-4e5d-8c9b-1a2b3c4d5e6f";
const UID_C: &str = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b";

/// A container ID of 64 times `c`.
fn container(c: char) -> String {
    c.to_string().repeat(64)
}

/// The agent with the tests' provider and identities, `[kubernetes]` pointing at `kubelet`, and
/// the role `payments-pods` for pods in namespace payments as service account payments/api, in a
/// container named api.
async fn harness(kubelet: &KubeletStandIn) -> Harness {
    let mut h = Harness::new(
        Duration::from_secs(300),
        Setup {
            role_uids: vec![64998],
            ..Setup::default()
        },
    )
    .await;
    open_dir(h.dir.path());
    let token_file = h.dir.path().join("kubelet-token");
    write_secret(&token_file, KUBELET_TOKEN);
    let ca_file = h.dir.path().join("kubelet-ca.pem");
    std::fs::write(&ca_file, &kubelet.ca_pem).unwrap();
    h.config.roles.push(
        Role::new("payments-pods", &["payments"])
            .namespaces(&["payments"])
            .service_accounts(&["payments/api"])
            .containers(&["api"]),
    );
    h.config.kubernetes = Some(Kubernetes {
        kubelet_url: kubelet.url.clone(),
        token_file,
        ca_file: Some(ca_file),
        node_name: Some(NODE.into()),
    });
    h.write_config();
    h.stop().await;
    h.start().await;
    h
}

/// Makes `cmd`'s child move itself into the cgroup whose `cgroup.procs` is `procs` (writing "0"),
/// then drop root for `uid` (no supplementary groups), before it execs.
fn join_as(cmd: &mut std::process::Command, procs: &std::fs::File, uid: u32) {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let procs = procs.try_clone().unwrap();
    // SAFETY: between fork and exec only system calls are made (a write(2) of a constant and the
    // credential changes; nothing allocates).
    unsafe {
        cmd.pre_exec(move || {
            (&procs).write_all(b"0")?;
            setgroups(&[])?;
            setgid(Gid::from_raw(uid))?;
            setuid(Uid::from_raw(uid))?;
            Ok(())
        });
    }
}

/// Runs `cortexid token` as [`POD_UID`] in the cgroup whose `cgroup.procs` is `procs`.
async fn token_in(procs: &std::fs::File, socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"));
    cmd.arg("token").args(args).env("CORTEXID_SOCKET", socket);
    join_as(&mut cmd, procs, POD_UID);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_attested_through_their_cgroup_and_the_kubelet() {
    let _serial = SERIAL.lock().await;
    let cgroups = match Cgroups::new() {
        Ok(c) => c,
        Err(why) => return skip_or_fail("pods_are_attested_through_their_cgroup_and_the_kubelet", &why),
    };
    // Three pods: payments/api (systemd driver, burstable), billing/api (cgroupfs driver,
    // besteffort), and a new payments/api pod the kubelet does not list yet (systemd, guaranteed).
    let (uid_a, uid_b, uid_c) = (UID_A, UID_B, UID_C);
    let (id_a, id_b, id_c) = (container('a'), container('b'), container('c'));
    let procs_a = cgroups.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id_a}.scope",
        uid_a.replace('-', "_")
    ));
    let procs_b = cgroups.make(&format!("kubepods/besteffort/pod{uid_b}/{id_b}"));
    let procs_c = cgroups.make(&format!(
        "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id_c}.scope",
        uid_c.replace('-', "_")
    ));

    let kubelet = KubeletStandIn::start().await;
    kubelet.list(pod("payments", "api-7d9f", uid_a, "api", &id_a));
    kubelet.list(pod("billing", "api-5c2b", uid_b, "api", &id_b));
    let mut h = harness(&kubelet).await;
    let args = ["--audience", PAYMENTS];

    // payments/api: its namespace and service account are the role's.
    let (code, out, err) = token_in(&procs_a, &h.socket, &args).await;
    assert_eq!(code, 0, "the payments pod gets a token: {err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let issued = h
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "token.issued")
        .expect("a token.issued line");
    let seen = &issued["caller"]["pod"];
    assert_eq!(seen["namespace"], "payments", "{issued}");
    assert_eq!(seen["name"], "api-7d9f");
    assert_eq!(seen["uid"], uid_a);
    assert_eq!(seen["service_account"], "api");
    assert_eq!(seen["container"], "api");
    assert_eq!(seen["image"], "registry.example/api:1.4");
    assert_eq!(seen["labels"]["app"], "payments");
    assert_eq!(issued["role"], "payments-pods");
    assert_eq!(
        kubelet.refused.load(Ordering::SeqCst),
        0,
        "the agent presents its token"
    );

    // billing/api: same service-account name, another namespace; refused, the pod named.
    let (code, out, err) = token_in(&procs_b, &h.socket, &args).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("access_denied"), "{err}");
    assert!(
        err.contains(&format!(
            "pod billing/api-5c2b (uid {uid_b}, service account billing/api"
        )),
        "the refusal names the pod as seen: {err}"
    );
    let denied = h
        .audit_lines()
        .into_iter()
        .rfind(|l| l["event"] == "token.denied")
        .expect("a token.denied line");
    assert_eq!(denied["caller"]["pod"]["namespace"], "billing", "{denied}");
    assert!(
        denied["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("namespace in [\"payments\"], the caller's pod billing/api-5c2b is in namespace billing"),
        "{denied}"
    );

    // A pod the kubelet does not list yet: refused with that reason, never guessed, and the
    // kubelet is asked again at most once a second meanwhile.
    // (The list was fetched moments ago for the pods above: wait out the least time between fetches.)
    tokio::time::sleep(cortexid::caller::MIN_REFETCH + Duration::from_millis(200)).await;
    let before = kubelet.served.load(Ordering::SeqCst);
    let (code, _, err) = token_in(&procs_c, &h.socket, &args).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "pod uid {uid_c} (not found: the kubelet does not list pod {uid_c} on node {NODE})"
        )),
        "{err}"
    );
    assert_eq!(
        kubelet.served.load(Ordering::SeqCst),
        before + 1,
        "an unknown pod makes the agent fetch the pod list again"
    );
    let denied = h
        .audit_lines()
        .into_iter()
        .rfind(|l| l["event"] == "token.denied")
        .unwrap();
    assert_eq!(denied["caller"]["pod"]["uid"], uid_c);
    assert!(
        denied["caller"]["pod"]["unknown"]
            .as_str()
            .unwrap_or_default()
            .contains("does not list")
    );
    let (start, fetched) = (Instant::now(), kubelet.served.load(Ordering::SeqCst));
    for _ in 0..5 {
        let (code, _, err) = token_in(&procs_c, &h.socket, &args).await;
        assert_eq!(code, 1, "{err}");
    }
    let refetches = kubelet.served.load(Ordering::SeqCst) - fetched;
    assert!(
        refetches as u64 <= start.elapsed().as_secs() + 1,
        "{refetches} fetches in {:?}: at most one a second",
        start.elapsed()
    );

    // Once the kubelet lists it, the same process shape is served.
    kubelet.list(pod("payments", "api-new", uid_c, "api", &id_c));
    tokio::time::sleep(cortexid::caller::MIN_REFETCH + Duration::from_millis(200)).await;
    let (code, out, err) = token_in(&procs_c, &h.socket, &args).await;
    assert_eq!(code, 0, "served once the kubelet lists the pod: {err}");
    assert_eq!(claims(out.trim())["aud"], PAYMENTS);
    let issued = h
        .audit_lines()
        .into_iter()
        .rfind(|l| l["event"] == "token.issued")
        .unwrap();
    assert_eq!(issued["caller"]["pod"]["name"], "api-new");

    // The kubelet's token rotates (a projected token does, hourly): the agent reads the file again
    // at its next fetch, here for a pod it has not seen.
    let uid_d = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
    let id_d = container('d');
    let procs_d = cgroups.make(&format!("kubepods/pod{uid_d}/{id_d}"));
    kubelet.list(pod("payments", "api-rotated", uid_d, "api", &id_d));
    *kubelet.token.lock().unwrap() = "rotated-reader-token".into();
    write_secret(&h.dir.path().join("kubelet-token"), "rotated-reader-token");
    tokio::time::sleep(cortexid::caller::MIN_REFETCH + Duration::from_millis(200)).await;
    let (code, _, err) = token_in(&procs_d, &h.socket, &args).await;
    assert_eq!(code, 0, "served with the rotated token: {err}");
    assert_eq!(
        kubelet.refused.load(Ordering::SeqCst),
        0,
        "the old token was never sent again"
    );

    // A host process (in no pod) is unchanged: the pod role is not for it.
    let host = h.client.get(&token_path("payments", PAYMENTS, "")).await.unwrap();
    assert_eq!(host.status, 403);
    h.stop().await;
    drop(cgroups);
}

/// The uid of a user on the node who has a cgroup subtree of their own (as systemd's
/// `user@.service` delegates one) and tries to pass for a pod.
const ATTACKER: u32 = 4343;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_cgroup_named_like_a_pod_is_no_pod() {
    let _serial = SERIAL.lock().await;
    let cgroups = match Cgroups::new() {
        Ok(c) => c,
        Err(why) => return skip_or_fail("a_users_own_cgroup_named_like_a_pod_is_no_pod", &why),
    };
    let id_a = container('a');
    let procs_a = cgroups.make(&format!("kubepods/burstable/pod{UID_A}/{id_a}"));
    let kubelet = KubeletStandIn::start().await;
    kubelet.list(pod("payments", "api-7d9f", UID_A, "api", &id_a));
    let mut h = harness(&kubelet).await;
    let args = ["--audience", PAYMENTS];

    // The attacker's delegated subtree: the directory and its interface files are theirs.
    let delegated = format!("cortexid-test-{}-user-{ATTACKER}.slice", std::process::id());
    let procs = cgroups.make(&delegated);
    let dir = cgroups.mount.join(&delegated);
    let owner = Some(nix::unistd::Uid::from_raw(ATTACKER));
    let group = Some(nix::unistd::Gid::from_raw(ATTACKER));
    for file in ["", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
        nix::unistd::chown(&dir.join(file), owner, group).unwrap();
    }
    // Inside it, the attacker makes a cgroup shaped like pod A's container (whose UID and
    // container ID anyone can read in /proc/<pid>/cgroup) and moves into it.
    let forged = dir.join(format!("kubepods/burstable/pod{UID_A}/{id_a}"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        r#"mkdir -p "$1" && echo 0 > "$1/cgroup.procs" && shift && exec "$@""#,
        "sh",
    ])
    .arg(&forged)
    .arg(env!("CARGO_BIN_EXE_cortexid"))
    .arg("token")
    .args(args)
    .env("CORTEXID_SOCKET", &h.socket);
    join_as(&mut cmd, &procs, ATTACKER);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(forged.exists(), "the attacker made the cgroup: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("access_denied"), "refused by the agent: {err}");
    assert!(
        !err.contains("pod payments/"),
        "the attacker is not taken for pod A: {err}"
    );
    let denied = h
        .audit_lines()
        .into_iter()
        .rfind(|l| l["event"] == "token.denied")
        .expect("a token.denied line");
    assert_eq!(denied["caller"]["uid"], ATTACKER, "{denied}");
    assert!(denied["caller"].get("pod").is_none(), "no pod: {denied}");

    // Pod A itself still is.
    let (code, _, err) = token_in(&procs_a, &h.socket, &args).await;
    assert_eq!(code, 0, "{err}");
    h.stop().await;
    drop(cgroups);
}

/// [`harness`] with a role `node-user` for [`POD_UID`] on the node (by uid alone), stopped (the
/// caller starts the agent it needs).
async fn with_node_user(kubelet: &KubeletStandIn) -> Harness {
    let mut h = harness(kubelet).await;
    h.config
        .roles
        .push(Role::new("node-user", &["payments"]).uids(&[POD_UID]));
    h.write_config();
    h.stop().await;
    h
}

/// What `caller` printed must be a 403, whose `token.denied` line (for [`POD_UID`]) gives the
/// reasons returned.
async fn refused(h: &Harness, caller: &mut tokio::process::Child) -> String {
    let mut out = String::new();
    caller.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let denied = h
        .audit_lines()
        .into_iter()
        .rfind(|l| l["event"] == "token.denied")
        .expect("a token.denied line");
    assert_eq!(denied["caller"]["uid"], POD_UID, "{denied}");
    denied["error_description"].as_str().unwrap_or_default().to_string()
}

/// A process in a pod the kubelet does not list connects and exits at once; its child asks for
/// a token on the inherited connection. The agent is held stopped until the process that
/// connected is gone, so it cannot read its cgroup: such a caller may have been in any pod and
/// matches no role, not even the one for its uid on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gone_before_its_cgroup_is_read_is_not_taken_for_a_host_process() {
    let _serial = SERIAL.lock().await;
    let cgroups = match Cgroups::new() {
        Ok(c) => c,
        Err(why) => {
            return skip_or_fail(
                "a_caller_gone_before_its_cgroup_is_read_is_not_taken_for_a_host_process",
                &why,
            );
        }
    };
    let id_c = container('c');
    let procs_c = cgroups.make(&format!("kubepods/besteffort/pod{UID_C}/{id_c}"));
    let kubelet = KubeletStandIn::start().await;
    let h = with_node_user(&kubelet).await;
    let agent = AgentProcess::spawn(&h.config_path, &h.socket, h.dir.path().join("agent.log"), &[]).await;
    let args = ["--audience", PAYMENTS];
    // Read while it lives, the caller is in a pod the kubelet does not list: refused.
    let (code, _, err) = token_in(&procs_c, &h.socket, &args).await;
    assert_eq!(code, 1, "{err}");

    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    let script = "parent = os.getpid()\n\
                  s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
                  if os.fork():\n    os._exit(0)\n\
                  while os.getppid() == parent:\n    pass\n\
                  print(status_line(s, sys.argv[2]).decode(), flush=True)\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(format!("{PY_WIRE}{script}"))
        .arg(&h.socket)
        .arg(token_path("payments", PAYMENTS, ""))
        .stdout(std::process::Stdio::piped());
    join_as(&mut cmd, &procs_c, POD_UID);
    let mut connector = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 plays the caller");
    // Reaped: its pid and /proc directory are gone before the agent runs again.
    connector.wait().await.unwrap();
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    let why = refused(&h, &mut connector).await;
    assert!(
        why.contains(r#"role "node-user" does not match: the caller's cgroup could not be read"#)
            && why.contains("may run in a pod the kubelet does not list"),
        "{why}"
    );
    drop(agent);
    drop(cgroups);
}

/// Waits until the main thread has exited (the process's leader a zombie), then connects from
/// the thread left and prints the status line of its token request (argv[2]) to argv[1].
const AFTER_THE_MAIN_THREAD: &str = r#"
import ctypes, threading, time
leader = os.getpid()
def run():
    while open("/proc/%d/stat" % leader).read().rsplit(") ", 1)[1][0] != "Z":
        time.sleep(0.01)
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    os.write(1, status_line(s, sys.argv[2]) + b"\n")
    os._exit(0)
threading.Thread(target=run).start()
ctypes.CDLL(None).syscall(60, 0)
"#;

/// A process whose main thread has exited connects from another thread: `/proc/<pid>` is the
/// dead main thread's and shows no executable and, on cgroup v1, `/` for every cgroup, so a
/// process in a pod would read as one of the node. Such a caller is unreadable, and with pods
/// looked up it matches no role, not even its uid's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_main_thread_has_exited_is_not_taken_for_a_host_process() {
    let _serial = SERIAL.lock().await;
    let kubelet = KubeletStandIn::start().await;
    let mut h = with_node_user(&kubelet).await;
    h.start().await;
    let mut caller = attacker(
        POD_UID,
        AFTER_THE_MAIN_THREAD,
        [h.socket.to_str().unwrap(), &token_path("payments", PAYMENTS, "")],
    );
    let why = refused(&h, &mut caller).await;
    assert!(why.contains("main thread has exited"), "{why}");
    assert!(why.contains(r#"role "node-user" does not match"#), "{why}");
}
