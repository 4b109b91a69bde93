//! oidc-provider (tests/interop/provider.mjs) set up for people, and a browser for its sign-in
//! pages: for tests of the device and browser flows against a real provider. Needs
//! tests/interop/setup.sh (npm ci) and node: check [`node_missing`] first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cortexid::config::{ClientAuth, ProviderSettings};
use cortexid::upstream::ProviderClient;
use cortexid::upstream::keys::{KeyAlg, SigningKey};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::write_secret;

/// The login client registered at the provider: public (`none`), native, with the device,
/// code and refresh grants and the loopback redirect URI `http://127.0.0.1/callback` (any port).
pub const LOGIN: &str = "cortexid-login";
pub const REDIRECT: &str = "http://127.0.0.1:53682/callback";

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

pub fn node_missing() -> Option<String> {
    if !interop_dir().join("node_modules/oidc-provider/package.json").is_file() {
        return Some(format!(
            "{}/node_modules is missing; run tests/interop/setup.sh (npm ci) to test against oidc-provider",
            interop_dir().display()
        ));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("node is not installed; the oidc-provider interop tests need Node.js 18 or newer".into()),
    }
}

/// Starts oidc-provider (tests/interop/provider.mjs) in a node child process with the
/// `setup.json` already written in `d`, its log in `d/node.log`: (the child, its issuer).
pub async fn start_provider(d: &Path) -> (tokio::process::Child, String) {
    let mut node = tokio::process::Command::new("node")
        .arg(interop_dir().join("provider.mjs"))
        .arg(d.join("setup.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("node.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("oidc-provider did not start within 60 s")
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "oidc-provider exited: {}",
                std::fs::read_to_string(d.join("node.log")).unwrap_or_default()
            )
        });
    let issuer = serde_json::from_str::<serde_json::Value>(&first).unwrap()["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    (node, issuer)
}

/// A throw-away CA and a server certificate for 127.0.0.1: (ca.pem, cert.pem, key.pem).
pub fn write_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "cortexid interop CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    write_secret(&paths.2, &leaf_key.serialize_pem());
    (paths.0, paths.1, paths.2)
}

/// oidc-provider with a public login client, and a provider client for it.
pub struct People {
    _node: tokio::process::Child,
    pub dir: tempfile::TempDir,
    pub issuer: String,
    pub ca: PathBuf,
    /// A provider client for it (client_id the login client, `none`).
    pub client: ProviderClient,
}

impl People {
    pub async fn start() -> People {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca, cert, key) = write_tls(d);
        std::fs::write(d.join("people.json"), json!({"alice": ["payments"]}).to_string()).unwrap();
        let unused = SigningKey::generate(KeyAlg::ES256).unwrap();
        let setup = json!({
            "cert": cert, "key": key, "ttl": 300,
            "clients": [{
                "client_id": LOGIN, "token_endpoint_auth_method": "none", "application_type": "native",
                "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "authorization_code", "refresh_token"],
                "response_types": ["code"], "redirect_uris": ["http://127.0.0.1/callback"],
            }],
            "resources": {},
            "subject_issuer": "https://unused.interop.test",
            "subject_jwks": {"keys": [unused.public_jwk()]},
            "people": d.join("people.json"),
        });
        std::fs::write(d.join("setup.json"), setup.to_string()).unwrap();
        let (node, issuer) = start_provider(d).await;
        let settings = ProviderSettings {
            name: "oidc-provider".into(),
            issuer: issuer.clone(),
            token_endpoint: None,
            jwks_uri: None,
            ca_file: Some(ca.clone()),
            client_id: LOGIN.into(),
            client_auth: ClientAuth::None,
            verify_tokens: true,
            target_parameter: None,
            max_concurrent: None,
            rate: None,
        };
        let client = ProviderClient::new(Arc::new(settings), Duration::from_secs(10)).unwrap();
        People {
            _node: node,
            dir,
            issuer,
            ca,
            client,
        }
    }

    pub fn set_groups(&self, login: &str, groups: &[&str]) {
        std::fs::write(
            self.dir.path().join("people.json"),
            json!({ login: groups }).to_string(),
        )
        .unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// Where a browser run ended: on a page, or at a redirect to the loopback `redirect_uri`.
pub enum Ended {
    Page(String),
    Redirect(String),
}

/// A person's browser, as far as the sign-in pages need one: a cookie jar, redirects followed by
/// hand, and every page's first POST form submitted with its hidden fields, the login typed in
/// and any password.
pub struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
    login: String,
    /// oidc-provider's stderr, shown when a request fails.
    log: PathBuf,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let end = tag[at..].find('"')?;
    Some(
        tag[at..at + end]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

impl Browser {
    pub fn new(p: &People, login: &str) -> Browser {
        let ca = &p.ca;
        let pem = std::fs::read(ca).unwrap();
        Browser {
            http: reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
            login: login.into(),
            log: p.dir.path().join("node.log"),
        }
    }

    /// Opens `url` and goes on (redirects, forms) until a page has no form or the browser is
    /// sent to `stop_at`.
    pub async fn sign_in(&mut self, url: &str, stop_at: &str) -> Ended {
        let mut next: (String, Option<Vec<(String, String)>>) = (url.to_string(), None);
        for _ in 0..20 {
            let (url, form) = next;
            let mut req = match &form {
                Some(fields) => self.http.post(&url).form(fields),
                None => self.http.get(&url),
            };
            if !self.cookies.is_empty() {
                let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
                req = req.header("cookie", jar.join("; "));
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}\n{}", std::fs::read_to_string(&self.log).unwrap_or_default()));
            for c in resp.headers().get_all("set-cookie") {
                let c = c.to_str().unwrap();
                let (pair, rest) = c.split_once(';').unwrap_or((c, ""));
                let (k, v) = pair.split_once('=').unwrap();
                if v.is_empty() || rest.to_ascii_lowercase().contains("expires=thu, 01 jan 1970") {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().into(), v.into());
                }
            }
            let base = url::Url::parse(&url).unwrap();
            if resp.status().is_redirection() {
                let location = resp.headers()["location"].to_str().unwrap();
                let target = base.join(location).unwrap().to_string();
                if target.starts_with(stop_at) {
                    return Ended::Redirect(target);
                }
                next = (target, None);
                continue;
            }
            let status = resp.status();
            let page = resp.text().await.unwrap();
            assert!(status.is_success(), "{url} answered {status}: {page}");
            let Some(start) = page.find("<form") else {
                return Ended::Page(page);
            };
            let html = &page[start..];
            let form_tag = &html[..html.find('>').unwrap()];
            let body = &html[..html.find("</form>").unwrap_or(html.len())];
            assert_eq!(
                attr(form_tag, "method").as_deref().map(str::to_lowercase).as_deref(),
                Some("post")
            );
            let action = base.join(&attr(form_tag, "action").unwrap()).unwrap().to_string();
            let mut fields = Vec::new();
            for input in body.split("<input").skip(1) {
                let tag = &input[..input.find('>').unwrap_or(input.len())];
                let Some(name) = attr(tag, "name") else { continue };
                let value = match name.as_str() {
                    "login" => self.login.clone(),
                    "password" => "any password".into(),
                    _ => attr(tag, "value").unwrap_or_default(),
                };
                fields.push((name, value));
            }
            next = (action, Some(fields));
        }
        panic!("the sign-in did not end within 20 pages");
    }
}
