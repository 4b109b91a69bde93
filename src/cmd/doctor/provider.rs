//! The checks of one provider, in the order the agent meets them: TLS trust (the first request,
//! for the discovery document or, when both endpoints are configured, the JWKS), the clock (that
//! answer's `Date` header), discovery (the document's issuer and token endpoint) and client
//! authentication (the local secret or key, and whether the provider supports the method).

use super::clock::{MAX_SKEW, ahead, now_unix, parse_http_date};
use super::hints;
use super::report::{fail, note, ok};
use crate::config::{ClientAuth, Config, ProviderSettings};
use crate::secrets::SecretFile;

/// Checks one provider. `None` when the provider cannot be used at all (the failure is reported),
/// else whether its clock agrees with this host's.
pub(super) async fn check_provider(config: &Config, p: &ProviderSettings) -> Option<bool> {
    println!();
    println!("provider {:?} ({}, client {:?})", p.name, p.issuer, p.client_id);
    let http = match crate::upstream::http_client(p.ca_file.as_deref(), config.agent.upstream_timeout) {
        Ok(h) => h,
        Err(e) => {
            fail(
                "TLS trust",
                &e,
                "ca_file cannot be used",
                format!(
                    "point ca_file of provider {:?} at the PEM file of the CA that signed the provider's certificate",
                    p.name
                ),
            );
            return None;
        }
    };
    let url = match (&p.token_endpoint, &p.jwks_uri) {
        (Some(_), Some(jwks)) => jwks.clone(),
        _ => format!("{}/.well-known/openid-configuration", p.issuer.trim_end_matches('/')),
    };
    let resp = match http.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            hints::transport_failure(p, &url, &e);
            return None;
        }
    };
    let tls = if p.issuer.starts_with("https://") {
        match &p.ca_file {
            Some(ca) => format!("the provider's certificate is trusted (ca_file {})", ca.display()),
            None => "the provider's certificate is trusted by the system roots".to_string(),
        }
    } else {
        "plain HTTP on loopback, no TLS".to_string()
    };
    ok("TLS trust", tls);
    let date = resp
        .headers()
        .get("date")
        .and_then(|d| d.to_str().ok())
        .and_then(parse_http_date);
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let clock_ok = check_clock(date);
    let methods = check_discovery(p, &url, status, &body)?;
    if !check_client_auth(p, methods) {
        return None;
    }
    Some(clock_ok)
}

/// Compares the provider's `Date` header (Unix seconds) with this host's clock. Returns whether
/// they agree; without the header the token's `iat` is checked later instead.
fn check_clock(date: Option<i64>) -> bool {
    match date {
        Some(t) => {
            let skew = t - now_unix();
            if skew.abs() > MAX_SKEW {
                fail(
                    "clock",
                    format!(
                        "the provider's Date header is {} s {} this host's clock",
                        skew.abs(),
                        ahead(skew)
                    ),
                    "clock skew: tokens will look not yet valid or already expired",
                    "synchronise the clocks (timedatectl set-ntp true; chronyc tracking shows the offset)",
                );
                false
            } else {
                ok(
                    "clock",
                    format!("within {} s of the provider's Date header", skew.abs()),
                );
                true
            }
        }
        None => {
            note(
                "clock",
                "the provider sent no Date header; checked against the token's iat below",
            );
            true
        }
    }
}

/// Checks the answer to the first request: a success and, when it is the discovery document, one
/// for this issuer with a token endpoint. `None` after reporting a failure, else the client
/// authentication methods the provider lists (`None` inside when it lists none or discovery was
/// skipped).
fn check_discovery(
    p: &ProviderSettings,
    url: &str,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Option<Option<Vec<String>>> {
    if !status.is_success() {
        fail(
            "discovery",
            format!("{url} answered {status}"),
            "the issuer URL is not the provider's issuer, or the provider is unhealthy",
            format!(
                "set issuer of provider {:?} to the exact issuer of the provider (its discovery document's \"issuer\")",
                p.name
            ),
        );
        return None;
    }
    if !url.ends_with("/openid-configuration") {
        ok("discovery", "skipped: token_endpoint and jwks_uri are configured");
        return Some(None);
    }
    let doc: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            fail(
                "discovery",
                format!("{url} is not JSON: {e}"),
                "the issuer URL does not point at an OpenID Connect provider",
                format!("check issuer of provider {:?}", p.name),
            );
            return None;
        }
    };
    let issuer = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or_default();
    if issuer.trim_end_matches('/') != p.issuer.trim_end_matches('/') {
        fail(
            "discovery",
            format!("the document says issuer {issuer:?}, the config says {:?}", p.issuer),
            "the configured issuer is not the provider's issuer identifier",
            format!("set issuer = {issuer:?} in provider {:?}", p.name),
        );
        return None;
    }
    let te = p
        .token_endpoint
        .clone()
        .or_else(|| doc.get("token_endpoint").and_then(|v| v.as_str()).map(str::to_string));
    let Some(te) = te else {
        fail(
            "discovery",
            "the document has no token_endpoint",
            "the provider does not publish one",
            format!("set token_endpoint in provider {:?}", p.name),
        );
        return None;
    };
    let jwks = p
        .jwks_uri
        .clone()
        .or_else(|| doc.get("jwks_uri").and_then(|v| v.as_str()).map(str::to_string));
    ok(
        "discovery",
        format!("token_endpoint {te}, jwks_uri {}", jwks.as_deref().unwrap_or("(none)")),
    );
    Some(
        doc.get("token_endpoint_auth_methods_supported")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            }),
    )
}

/// Why the client credentials of a provider cannot be used, found before asking the provider.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct UnusableCredential {
    /// The provider setting that names the file: `client_secret_file` or `private_key_file`.
    key: &'static str,
    /// What is wrong with the file or the key in it.
    message: String,
}

impl UnusableCredential {
    fn new(key: &'static str, message: impl ToString) -> UnusableCredential {
        UnusableCredential {
            key,
            message: message.to_string(),
        }
    }
}

/// Whether the secret file can be read.
fn read_check(f: &SecretFile, key: &'static str) -> Result<(), UnusableCredential> {
    f.read().map(|_| ()).map_err(|e| UnusableCredential::new(key, e))
}

/// Whether the private key file can be read and holds a usable key.
fn key_check(f: &SecretFile, key_id: Option<&str>) -> Result<(), UnusableCredential> {
    const KEY: &str = "private_key_file";
    let pem = f.read().map_err(|e| UnusableCredential::new(KEY, e))?;
    crate::upstream::keys::SigningKey::from_pem(&pem, key_id)
        .map(|_| ())
        .map_err(|e| UnusableCredential::new(KEY, e))
}

/// Checks the provider's client authentication: its secret or key here, and that the provider
/// supports the method (when it lists `methods`). Returns whether it may work; only the exchange
/// proves the credentials.
fn check_client_auth(p: &ProviderSettings, methods: Option<Vec<String>>) -> bool {
    let method = p.client_auth.method();
    let local = match &p.client_auth {
        ClientAuth::SecretBasic(f) | ClientAuth::SecretPost(f) => read_check(f, "client_secret_file"),
        ClientAuth::PrivateKeyJwt { key, key_id } => key_check(key, key_id.as_deref()),
        ClientAuth::None => Ok(()),
    };
    if let Err(e) = local {
        fail(
            "client authentication",
            &e,
            format!("the {} of provider {:?} cannot be used", e.key, p.name),
            format!(
                "fix {} (a file readable by cortexid, not by other; for keys: cortexid keygen)",
                e.key
            ),
        );
        return false;
    }
    match methods {
        Some(list) if !list.iter().any(|m| m == method) => {
            fail(
                "client authentication",
                format!("the provider does not support {method}"),
                "wrong client authentication method",
                format!(
                    "set client_auth in provider {:?} to the method client {:?} is registered with; the provider supports: {}",
                    p.name,
                    p.client_id,
                    list.join(", ")
                ),
            );
            return false;
        }
        Some(_) => ok(
            "client authentication",
            format!("{method} is supported; the exchange below proves the credentials"),
        ),
        None => ok(
            "client authentication",
            format!("{method} (the provider lists no methods); the exchange below proves the credentials"),
        ),
    }
    true
}
