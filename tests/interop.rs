//! Interoperability with real software, not only with cortexid's own development provider:
//!
//! - a real OpenID Connect provider, `oidc-provider` (npm, pinned in tests/interop/package-lock.json),
//!   run by node from tests/interop/provider.mjs over HTTPS with a throw-away CA: every client
//!   authentication method, both grants, JWT access tokens, delegation.
//!
//!   What is oidc-provider's and what is this test's own: oidc-provider (8.8.1) has no RFC 8693
//!   token exchange; its grants are authorization_code, refresh_token, client_credentials,
//!   device_code and CIBA. Discovery, the JWKS, client authentication (`client_secret_basic`,
//!   `client_secret_post`, `private_key_jwt`), the client-credentials grant, resource
//!   indicators, the signing and format of JWT access tokens and the OAuth error answers are
//!   oidc-provider's. The token-exchange grant is provider.mjs's own code, registered with
//!   oidc-provider's `registerGrantType`: it verifies the subject and actor tokens, picks the one
//!   audience, checks the scopes, and sets `sub` and `act` (nesting a subject token's own `act`,
//!   and refusing an actor that the subject's `may_act` does not name). So the token-exchange
//!   tests show that cortexid's requests and its reading of the answers agree with that
//!   script's reading of RFC 8693, not with an independent implementation of it; and delegation
//!   is tested with one actor only (the subject tokens here carry no `act` or `may_act`);
//! - the official Python Kubernetes client loading `cortexid token --format k8s` as an exec
//!   credential plugin.
//!
//! Neither comes with the crate: tests/interop/setup.sh installs oidc-provider (npm ci), and
//! `pip install kubernetes` the Python client. Under `CI=true` a missing one fails the test.
//! Elsewhere the test says on the terminal, past the harness's output capture, that it was
//! skipped and checked nothing, and passes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::oidc_people::{interop_dir, node_missing, start_provider, write_tls};
use common::*;
use cortexid::cmd::client::SocketClient;
use cortexid::config::AuditTarget;
use cortexid::devidp::fixture::{Agent, ConfigFile, Identity, Provider, ProviderAuth, Role};
use cortexid::run::daemon::RunningAgent;
use cortexid::upstream::keys::{KeyAlg, SigningKey};

const SUBJECT_ISSUER: &str = "https://sa-issuer.interop.test";
const TTL: u64 = 300;
const BASIC_SECRET: &str = "interop basic secret, long enough for HS256 too";
const POST_SECRET: &str = "interop post secret, long enough for HS256 as well";
const SA_SUB: &str = "system:serviceaccount:prod:payments";
const BOT_SUB: &str = "bot:deploy-agent";

/// Returns from the test when oidc-provider cannot run here (a failure under `CI=true`).
macro_rules! require_node {
    ($test:literal) => {
        if let Some(why) = node_missing() {
            skip_or_fail($test, &why);
            return;
        }
    };
}

/// oidc-provider in a node child process, with an agent configured for it.
struct Interop {
    _node: tokio::process::Child,
    issuer: String,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    agent: Option<RunningAgent>,
    client: SocketClient,
}

impl Interop {
    async fn start() -> Interop {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca, cert, key) = write_tls(d);

        // The client key for private_key_jwt, made and printed the way an operator would.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
            .args(["keygen", "--out"])
            .arg(d.join("node.key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let client_jwk: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

        // Who signs the service-account (subject) and bot (actor) credentials.
        let sa_key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let setup = serde_json::json!({
            "cert": cert, "key": key, "ttl": TTL,
            "clients": [
                {"client_id": "basic-client", "token_endpoint_auth_method": "client_secret_basic", "client_secret": BASIC_SECRET},
                {"client_id": "post-client", "token_endpoint_auth_method": "client_secret_post", "client_secret": POST_SECRET},
                {"client_id": "jwt-client", "token_endpoint_auth_method": "private_key_jwt", "jwk": client_jwk},
            ],
            "resources": {PAYMENTS: "payments.read payments.write", LEDGER: "payments.read"},
            "subject_issuer": SUBJECT_ISSUER,
            "subject_jwks": {"keys": [sa_key.public_jwk()]},
        });
        std::fs::write(d.join("setup.json"), setup.to_string()).unwrap();
        let (node, issuer) = start_provider(d).await;

        write_secret(&d.join("basic-secret"), BASIC_SECRET);
        write_secret(&d.join("post-secret"), POST_SECRET);
        let now = unix_now();
        let sa = sa_key
            .sign(&serde_json::json!({"iss": SUBJECT_ISSUER, "sub": SA_SUB, "aud": issuer, "iat": now, "exp": now + 3600}))
            .unwrap();
        write_secret(&d.join("sa.jwt"), &sa);
        let bot = sa_key
            .sign(&serde_json::json!({"iss": SUBJECT_ISSUER, "sub": BOT_SUB, "aud": issuer, "iat": now, "exp": now + 3600}))
            .unwrap();
        write_secret(&d.join("bot.jwt"), &bot);

        let mut config = ConfigFile {
            agent: Agent {
                socket: d.join("agent.sock"),
                audit_log: Some(AuditTarget::File(d.join("audit.jsonl"))),
                upstream_timeout: Some(Duration::from_secs(10)),
                ..Agent::default()
            },
            ..ConfigFile::default()
        };
        let scopes = ["payments.read", "payments.write"];
        for (name, client_id, auth) in [
            (
                "basic",
                "basic-client",
                ProviderAuth::SecretBasic(d.join("basic-secret")),
            ),
            ("post", "post-client", ProviderAuth::SecretPost(d.join("post-secret"))),
            ("jwt", "jwt-client", ProviderAuth::PrivateKeyJwt(d.join("node.key"))),
        ] {
            config.providers.push(Provider {
                name: name.into(),
                issuer: issuer.clone(),
                ca_file: Some(ca.clone()),
                client_id: client_id.into(),
                auth,
                max_concurrent: None,
                rate: None,
            });
            config.identities.extend([
                Identity::exchange(&format!("{name}-exchange"), name, d.join("sa.jwt"))
                    .audiences(&[PAYMENTS, LEDGER, UNREGISTERED])
                    .scopes(&scopes),
                Identity::client_credentials(&format!("{name}-cc"), name)
                    .audiences(&[PAYMENTS, UNREGISTERED])
                    .scopes(&scopes),
            ]);
        }
        config.identities.push(
            Identity::exchange("delegated", "basic", d.join("sa.jwt"))
                .actor(d.join("bot.jwt"))
                .audiences(&[PAYMENTS])
                .scopes(&["payments.read"]),
        );
        let names: Vec<&str> = config.identities.iter().map(|i| i.name.as_str()).collect();
        config
            .roles
            .push(Role::new("interop", &names).uids(&[nix::unistd::getuid().as_raw()]));
        let config_path = d.join("cortexid.toml");
        config.write(&config_path).unwrap();
        let agent = cortexid::run::daemon::start(
            cortexid::agent::load_config(&config_path).unwrap(),
            cortexid::run::systemd::Notifier::disabled(),
        )
        .await
        .unwrap();
        Interop {
            client: SocketClient::new(d.join("agent.sock")),
            _node: node,
            issuer,
            config_path,
            agent: Some(agent),
            dir,
        }
    }

    async fn token(&self, identity: &str, audience: &str, scope: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(&token_path(identity, audience, scope)).await.unwrap();
        (r.status, r.json().unwrap())
    }

    fn node_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_authentication_method_gets_verified_jwts_by_both_grants() {
    require_node!("interop::every_client_authentication_method_gets_verified_jwts_by_both_grants");
    let t = Interop::start().await;
    for (provider, client_id) in [
        ("basic", "basic-client"),
        ("post", "post-client"),
        ("jwt", "jwt-client"),
    ] {
        for (grant, sub) in [("exchange", SA_SUB), ("cc", client_id)] {
            let identity = format!("{provider}-{grant}");
            let (status, body) = t.token(&identity, PAYMENTS, "payments.read").await;
            assert_eq!(status, 200, "{identity}: {body}\nprovider log:\n{}", t.node_log());
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(body["scope"], "payments.read");
            let expires_in = body["expires_in"].as_u64().unwrap();
            assert!(
                expires_in > TTL - 30 && expires_in <= TTL,
                "{identity}: expires_in {expires_in}"
            );
            let c = claims(body["access_token"].as_str().unwrap());
            assert_eq!(c["iss"], t.issuer, "{identity}");
            assert_eq!(c["aud"], PAYMENTS, "{identity}");
            assert_eq!(c["sub"], sub, "{identity}");
            assert_eq!(c["client_id"], client_id, "{identity}");
            assert_eq!(c["scope"], "payments.read", "{identity}");
            let exp = c["exp"].as_u64().unwrap();
            assert!(exp > unix_now() && exp <= unix_now() + TTL + 5, "{identity}: exp {exp}");
        }
    }
    // A second audience through the same clients, with no scope at all.
    let (status, body) = t.token("jwt-exchange", LEDGER, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], LEDGER);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_oidc_provider_names_the_actor() {
    require_node!("interop::delegation_through_oidc_provider_names_the_actor");
    let t = Interop::start().await;
    let (status, body) = t.token("delegated", PAYMENTS, "payments.read").await;
    assert_eq!(status, 200, "{body}\nprovider log:\n{}", t.node_log());
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], SA_SUB);
    assert_eq!(c["act"]["sub"], BOT_SUB);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_oidc_provider_reach_the_caller_with_what_to_change() {
    require_node!("interop::refusals_of_oidc_provider_reach_the_caller_with_what_to_change");
    let t = Interop::start().await;
    for identity in ["basic-exchange", "post-cc"] {
        let (status, body) = t.token(identity, UNREGISTERED, "").await;
        assert_eq!(status, 403, "{identity}: {body}");
        assert_eq!(body["error"], "invalid_target", "{identity}: {body}");
        let text = body["error_description"].as_str().unwrap();
        assert!(
            text.contains(UNREGISTERED) && text.contains("register the audience"),
            "{text}"
        );
    }
    let (status, body) = t.token("post-exchange", PAYMENTS, "payments.admin").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invalid_scope")), "{body}");

    // A rotated-away secret: the provider refuses the client, and the text says what to check.
    write_secret(&t.dir.path().join("basic-secret"), "not the registered secret at all");
    let (status, body) = t.token("basic-cc", PAYMENTS, "payments.write").await;
    assert_eq!(status, 502, "{body}");
    let text = body["error_description"].as_str().unwrap();
    assert!(
        text.contains("basic-client") && text.contains("client_secret_basic"),
        "{text}"
    );
    assert!(!text.contains("not the registered secret"), "the secret leaked: {text}");
    t.stop().await;
}

#[test]
fn doctor_passes_against_oidc_provider() {
    require_node!("interop::doctor_passes_against_oidc_provider");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(Interop::start());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cortexid"))
        .args(["doctor", "--config"])
        .arg(&t.config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains(BOT_SUB), "the act claim is shown: {stdout}");
    assert!(stdout.contains("summary: 7 of 7 identities work"), "{stdout}");
    rt.block_on(t.stop());
}

/// The official Kubernetes Python client runs `cortexid token --format k8s` as an exec credential
/// plugin and ends up with the agent's token as its bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_python_client_accepts_the_k8s_exec_credential() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip_or_fail(
            "interop::kubernetes_python_client_accepts_the_k8s_exec_credential",
            "python3 cannot import the kubernetes package (pip install kubernetes)",
        );
        return;
    }
    let h = Harness::new(Duration::from_secs(600), Setup::default()).await;
    let (status, body) = h.get(&token_path("payments", PAYMENTS, "payments.read")).await;
    assert_eq!(status, 200, "{body}");
    let expected = cortexid::token::fingerprint(body["access_token"].as_str().unwrap().as_bytes());

    let kubeconfig = h.dir.path().join("kubeconfig");
    let kc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "node", "context": {"cluster": "c", "user": "cortexid"}}],
        "users": [{"name": "cortexid", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": env!("CARGO_BIN_EXE_cortexid"),
            "args": ["token", "--socket", h.socket.to_str().unwrap(), "--identity", "payments",
                     "--audience", PAYMENTS, "--scope", "payments.read", "--format", "k8s"],
            "interactiveMode": "Never",
        }}}],
    });
    // A kubeconfig is YAML, and JSON is YAML.
    std::fs::write(&kubeconfig, kc.to_string()).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(interop_dir().join("k8s_exec.py"))
        .arg(&kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        expected,
        "the client's bearer token is the agent's token"
    );
}
