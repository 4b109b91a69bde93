//! `cortexid doctor`: connect to each provider as the agent would and report, step by step,
//! what works and, for what does not, its likely cause and the fix. Never prints a token or a
//! secret: only the decoded claims of what the provider issued.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::config::{Config, Grant, IdentitySettings, ProviderSettings, SecretFile, SubjectSource};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::token::Secret;
use crate::upstream::provider::{ExchangeRequest, PresentedToken, ProviderClient};

/// More than this between the provider's clock and this host's is reported as clock skew.
const MAX_SKEW: i64 = 60;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ok(step: &str, detail: impl AsRef<str>) {
    println!("  ok    {step}: {}", detail.as_ref());
}

fn fail(step: &str, problem: impl AsRef<str>, cause: impl AsRef<str>, fix: impl AsRef<str>) {
    println!("  FAIL  {step}: {}", problem.as_ref());
    println!("        cause: {}", cause.as_ref());
    println!("        fix:   {}", fix.as_ref());
}

fn note(step: &str, detail: impl AsRef<str>) {
    println!("  --    {step}: {}", detail.as_ref());
}

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    #[arg(long, env = "CORTEXID_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// Check only this identity
    #[arg(long)]
    pub(crate) identity: Option<String>,
}

/// Runs the checks for every identity (or only `--identity`) of the config at `--config`.
/// Returns the exit code: 0 only if every identity checked works.
pub async fn run(args: DoctorArgs) -> i32 {
    let config_path = args.config.as_path();
    let identity = args.identity.as_deref();
    let config = match crate::config::load(config_path, &crate::config::SystemContext) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("cortexid doctor: fix the configuration first (cortexid check-config shows every problem)");
            return 1;
        }
    };
    let identities: Vec<Arc<IdentitySettings>> = match identity {
        Some(name) => match config.identity(name) {
            Some(i) => vec![i.clone()],
            None => {
                let known: Vec<&str> = config.identities.iter().map(|i| i.name.as_str()).collect();
                eprintln!(
                    "cortexid doctor: no identity {name:?} in {}; it has: {}",
                    config_path.display(),
                    known.join(", ")
                );
                return 2;
            }
        },
        None => config.identities.clone(),
    };
    println!("cortexid doctor: {}", config_path.display());
    let mut working = 0;
    let mut failed = Vec::new();
    let mut unchecked = Vec::new();
    for provider in &config.providers {
        let mine: Vec<&Arc<IdentitySettings>> = identities.iter().filter(|i| i.provider == provider.name).collect();
        if mine.is_empty() && identity.is_some() {
            continue;
        }
        let reachable = check_provider(&config, provider).await;
        let client = match ProviderClient::new(provider.clone(), config.agent.upstream_timeout) {
            Ok(c) => Some(c),
            Err(e) => {
                fail(
                    "provider client",
                    &e,
                    "the HTTPS client cannot be set up",
                    format!("fix ca_file of provider {:?}", provider.name),
                );
                None
            }
        };
        for id in mine {
            println!(
                "identity {:?} ({}, provider {:?})",
                id.name,
                id.grant.as_str(),
                provider.name
            );
            let outcome = match (&client, reachable) {
                (Some(client), Some(clock_ok)) => match check_identity(client, provider, id).await {
                    Outcome::Works if !clock_ok => {
                        note("result", "the exchange worked, but the clock skew above must be fixed");
                        Outcome::Failed
                    }
                    other => other,
                },
                _ => {
                    note("exchange", "not attempted: the provider checks above failed");
                    Outcome::Failed
                }
            };
            match outcome {
                Outcome::Works => working += 1,
                Outcome::Failed => failed.push(id.name.clone()),
                Outcome::Unchecked => unchecked.push(id.name.clone()),
            }
        }
    }
    println!();
    let total = working + failed.len() + unchecked.len();
    println!("summary: {working} of {total} identities work");
    if !unchecked.is_empty() {
        println!(
            "  not checked (subject = \"caller\": each caller presents its own credential): {}",
            unchecked.join(", ")
        );
    }
    if failed.is_empty() {
        0
    } else {
        println!("  failing: {}", failed.join(", "));
        1
    }
}

enum Outcome {
    Works,
    Failed,
    Unchecked,
}

/// Discovery, TLS trust, clock and client credentials of one provider. `None` when the provider
/// cannot be used at all, else whether its clock agrees with this host's.
async fn check_provider(config: &Config, p: &ProviderSettings) -> Option<bool> {
    println!();
    println!("provider {:?} ({}, client {:?})", p.name, p.issuer, p.client_id);
    let http = match crate::upstream::provider::http_client(p.ca_file.as_deref(), config.agent.upstream_timeout) {
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
            transport_failure(p, &url, &e);
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
    let mut clock_ok = true;
    match date {
        Some(t) => {
            let skew = t - now_unix();
            if skew.abs() > MAX_SKEW {
                clock_ok = false;
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
            } else {
                ok(
                    "clock",
                    format!("within {} s of the provider's Date header", skew.abs()),
                );
            }
        }
        None => note(
            "clock",
            "the provider sent no Date header; checked against the token's iat below",
        ),
    }
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
    let mut methods = None;
    if url.ends_with("/openid-configuration") {
        let doc: serde_json::Value = match serde_json::from_slice(&body) {
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
        methods = doc
            .get("token_endpoint_auth_methods_supported")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            });
    } else {
        ok("discovery", "skipped: token_endpoint and jwks_uri are configured");
    }
    let method = p.client_auth.method();
    let local = match &p.client_auth {
        crate::config::ClientAuth::SecretBasic(f) | crate::config::ClientAuth::SecretPost(f) => {
            read_check(f, "client_secret_file")
        }
        crate::config::ClientAuth::PrivateKeyJwt { key, key_id } => {
            read_check(key, "private_key_file").and_then(|()| {
                let pem = key.read().map_err(|e| (e, "private_key_file".to_string()))?;
                crate::upstream::keys::SigningKey::from_pem(&pem, key_id.as_deref())
                    .map(|_| ())
                    .map_err(|e| (e.to_string(), "private_key_file".to_string()))
            })
        }
        crate::config::ClientAuth::None => Ok(()),
    };
    if let Err((e, key)) = local {
        fail(
            "client authentication",
            e,
            format!("the {key} of provider {:?} cannot be used", p.name),
            format!("fix {key} (a file readable by cortexid, not by other; for keys: cortexid keygen)"),
        );
        return None;
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
            return None;
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
    Some(clock_ok)
}

fn read_check(f: &SecretFile, key: &str) -> Result<(), (String, String)> {
    f.read().map(|_| ()).map_err(|e| (e, key.to_string()))
}

fn ahead(skew: i64) -> &'static str {
    if skew > 0 { "ahead of" } else { "behind" }
}

fn transport_failure(p: &ProviderSettings, url: &str, e: &reqwest::Error) {
    let mut detail = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(inner) = cur {
        let m = inner.to_string();
        if !detail.contains(&m) {
            detail.push_str(": ");
            detail.push_str(&m);
        }
        cur = inner.source();
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        let fix = match &p.ca_file {
            Some(ca) => format!(
                "ca_file {} does not hold the CA that signed the provider's certificate; add the provider's CA there",
                ca.display()
            ),
            None => format!(
                "add the provider's CA as ca_file = \"/etc/cortexid/{}-ca.pem\" in provider {:?}",
                p.name, p.name
            ),
        };
        fail(
            "TLS trust",
            format!("{url}: {detail}"),
            "untrusted CA: the provider's certificate is not signed by a CA this host trusts",
            fix,
        );
    } else if e.is_timeout() {
        fail(
            "discovery",
            format!("{url} did not answer in time"),
            "the provider is down or a firewall drops the connection",
            "check that this host reaches the provider (curl the URL above), or raise upstream_timeout",
        );
    } else {
        fail(
            "discovery",
            format!("{url}: {detail}"),
            "the provider cannot be reached",
            format!(
                "check issuer of provider {:?} and that this host reaches it (DNS, firewall, proxy)",
                p.name
            ),
        );
    }
}

/// Reads a credential file and checks that it is not expired. `None` after reporting a failure.
fn read_credential(step: &str, f: &SecretFile, token_type: &str, key: &str) -> Option<PresentedToken> {
    let token = match f.read() {
        Ok(t) => Secret::from(t),
        Err(e) => {
            fail(
                step,
                e,
                "the credential file is missing or unreadable",
                format!("fix {key} (the file must exist, be readable by cortexid and not by other)"),
            );
            return None;
        }
    };
    if crate::upstream::provider::looks_like_jwt(token.expose()) {
        let Some(c) = decode_payload(token.expose()) else {
            fail(
                step,
                format!("{} is not a readable JWT", f.path.display()),
                "the credential file holds something else than a token",
                format!("put the credential itself in {}", f.path.display()),
            );
            return None;
        };
        let sub = c.get("sub").and_then(|v| v.as_str()).unwrap_or("(no sub)");
        match c.get("exp").and_then(|v| v.as_i64()) {
            Some(exp) if exp <= now_unix() => {
                fail(
                    step,
                    format!(
                        "{} (sub {sub:?}) expired at {} ({} s ago)",
                        f.path.display(),
                        crate::token::rfc3339(UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64)),
                        now_unix() - exp
                    ),
                    "subject token expired: whatever renews this file has stopped",
                    format!(
                        "renew {} (for a projected service-account token, check the kubelet or the job that writes it)",
                        f.path.display()
                    ),
                );
                return None;
            }
            Some(exp) => ok(
                step,
                format!("{} (sub {sub:?}), expires in {} s", f.path.display(), exp - now_unix()),
            ),
            None => ok(step, format!("{} (sub {sub:?}), no exp", f.path.display())),
        }
    } else {
        ok(step, format!("{} (opaque, expiry unknown)", f.path.display()));
    }
    Some(PresentedToken {
        token,
        token_type: token_type.to_string(),
    })
}

async fn check_identity(client: &ProviderClient, p: &ProviderSettings, id: &IdentitySettings) -> Outcome {
    let Some(audience) = id.audiences.first() else {
        fail(
            "exchange",
            "the identity has no audience",
            "audiences is empty",
            format!("add the audiences of identity {:?}", id.name),
        );
        return Outcome::Failed;
    };
    let subject = match (&id.grant, &id.subject) {
        (Grant::TokenExchange, SubjectSource::File(f)) => {
            match read_credential("subject credential", f, &id.subject_token_type, "subject_token_file") {
                Some(t) => Some(t),
                None => return Outcome::Failed,
            }
        }
        (Grant::TokenExchange, SubjectSource::Caller) => {
            note(
                "exchange",
                "not checked: subject = \"caller\", the subject credential comes from each caller",
            );
            return Outcome::Unchecked;
        }
        _ => None,
    };
    let actor = match &id.actor_token_file {
        Some(f) => match read_credential("actor credential", f, &id.actor_token_type, "actor_token_file") {
            Some(t) => Some(t),
            None => return Outcome::Failed,
        },
        None => None,
    };
    let scopes = BTreeSet::new();
    let req = ExchangeRequest {
        identity: id,
        audience,
        scopes: &scopes,
        subject: subject.as_ref(),
        actor: actor.as_ref(),
    };
    let issued = match client.exchange(&req).await {
        Ok(t) => t,
        Err(e) => {
            exchange_failure(p, id, audience, &e);
            return Outcome::Failed;
        }
    };
    ok(
        "exchange",
        format!(
            "{} token for audience {audience}, lifetime {} s",
            if crate::upstream::provider::looks_like_jwt(issued.access_token.expose()) {
                "JWT"
            } else {
                "opaque"
            },
            issued.lifetime.as_secs()
        ),
    );
    let Some(claims) = decode_payload(issued.access_token.expose()) else {
        note("claims", "the token is opaque; nothing to decode");
        return Outcome::Works;
    };
    let show = |k: &str| match claims.get(k) {
        None | Some(serde_json::Value::Null) => "(none)".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    println!("        iss    {}", show("iss"));
    println!("        sub    {}", show("sub"));
    println!("        aud    {}", show("aud"));
    println!("        scope  {}", show("scope"));
    match claims.get("exp").and_then(|v| v.as_i64()) {
        Some(exp) => println!(
            "        exp    {} (in {} s)",
            crate::token::rfc3339(UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64)),
            exp - now_unix()
        ),
        None => println!("        exp    (none)"),
    }
    println!("        act    {}", show("act"));
    if let Some(iat) = claims.get("iat").and_then(|v| v.as_i64()) {
        let skew = iat - now_unix();
        if skew.abs() > MAX_SKEW {
            fail(
                "clock",
                format!(
                    "the token was issued (iat) {} s {} this host's clock",
                    skew.abs(),
                    if skew > 0 { "ahead of" } else { "behind" }
                ),
                "clock skew between this host and the provider: tokens will look not yet valid or already expired",
                "synchronise the clocks of both (timedatectl set-ntp true; chronyc tracking shows the offset)",
            );
            return Outcome::Failed;
        }
    }
    Outcome::Works
}

fn exchange_failure(p: &ProviderSettings, id: &IdentitySettings, audience: &str, e: &ProviderError) {
    let msg = &e.message;
    match &e.kind {
        ProviderErrorKind::Rejected { error } => match error.as_str() {
            "invalid_target" => fail(
                "exchange",
                msg,
                format!(
                    "audience not registered at the provider: client {:?} may not request {audience}",
                    p.client_id
                ),
                format!(
                    "register {audience} for client {:?} at the provider, or remove it from the audiences of identity {:?} (doctor uses the first)",
                    p.client_id, id.name
                ),
            ),
            "invalid_client" | "unauthorized_client" => fail(
                "client authentication",
                msg,
                format!(
                    "wrong client authentication method or credentials: the provider did not accept client {:?} with {}",
                    p.client_id,
                    p.client_auth.method()
                ),
                format!(
                    "set client_auth in provider {:?} to the method the client is registered with, and check the secret or key file (and client_id)",
                    p.name
                ),
            ),
            "invalid_grant" => fail(
                "exchange",
                msg,
                "the provider refused the subject credential: expired, not yet valid (clock skew), or from an issuer it does not trust",
                format!(
                    "renew subject_token_file of identity {:?}, and check the provider trusts its issuer",
                    id.name
                ),
            ),
            "unsupported_grant_type" => fail(
                "exchange",
                msg,
                format!("client {:?} is not allowed this grant at the provider", p.client_id),
                format!(
                    "allow the grant for the client at the provider, or change grant of identity {:?}",
                    id.name
                ),
            ),
            _ => fail(
                "exchange",
                msg,
                "the provider refused the request",
                "see the provider's message above",
            ),
        },
        ProviderErrorKind::Unreachable => {
            let lower = msg.to_ascii_lowercase();
            if lower.contains("certificate") || lower.contains("unknownissuer") {
                fail(
                    "TLS trust",
                    msg,
                    "untrusted CA",
                    format!("add the provider's CA as ca_file in provider {:?}", p.name),
                )
            } else {
                fail(
                    "exchange",
                    msg,
                    "the provider cannot be reached or is failing",
                    "check that this host reaches the token endpoint, and the provider's health",
                )
            }
        }
        ProviderErrorKind::Verification if msg.contains("clock") => fail(
            "exchange",
            msg,
            "clock skew between this host and the provider",
            "synchronise the clocks of both (timedatectl set-ntp true; chronyc tracking shows the offset)",
        ),
        ProviderErrorKind::Verification => fail(
            "token verification",
            msg,
            "the issued token does not match what the agent expects (issuer, audience, signing key)",
            format!(
                "check issuer and jwks_uri of provider {:?}, or set verify_tokens = false for opaque tokens",
                p.name
            ),
        ),
        ProviderErrorKind::BadResponse => fail(
            "exchange",
            msg,
            "the provider's answer is not a usable token response",
            "check token_endpoint and the provider's token settings",
        ),
        ProviderErrorKind::Local => fail("exchange", msg, "a local file or key problem", "see the message above"),
    }
}

/// A JWT's payload as JSON, without checking anything.
fn decode_payload(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Parses an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
fn parse_http_date(s: &str) -> Option<i64> {
    let mut it = s.split_whitespace();
    let _weekday = it.next()?;
    let day: i64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|v| v.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sat, 29 Feb 2020 12:00:00 GMT"), Some(1_582_977_600));
        assert_eq!(parse_http_date("garbage"), None);
    }
}
