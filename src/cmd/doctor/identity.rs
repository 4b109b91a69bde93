//! The checks of one identity: its credential files (present, a token, not expired), the
//! exchange at its provider for its first audience, and the claims of what the provider issued
//! (shown, never the token itself), with their `iat` against this host's clock.

use std::collections::BTreeSet;

use base64::Engine;

use super::clock::{self, MAX_SKEW, ahead, now_unix};
use super::hints;
use super::report::{fail, note, ok};
use crate::config::{Grant, IdentitySettings, ProviderSettings, SubjectSource};
use crate::secrets::SecretFile;
use crate::token::Secret;
use crate::upstream::{ExchangeRequest, PresentedToken, ProviderClient};

/// How the check of one identity ended.
pub(super) enum Outcome {
    /// The exchange worked and what it issued looks right.
    Works,
    /// A step failed (and was reported).
    Failed,
    /// Not checkable here: the subject credential comes from each caller (`subject = "caller"`).
    Unchecked,
}

/// The exchange for one identity, as the agent would make it for its first audience: its
/// credential files, the exchange itself, and what the provider issued.
pub(super) async fn check_identity(client: &ProviderClient, p: &ProviderSettings, id: &IdentitySettings) -> Outcome {
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
        (Grant::TokenExchange, SubjectSource::Login(login)) => {
            note(
                "exchange",
                format!("not checked: subject = \"login:{login}\", the subject is each person's own session"),
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
            hints::exchange_failure(p, id, audience, &e);
            return Outcome::Failed;
        }
    };
    ok(
        "exchange",
        format!(
            "{} token for audience {audience}, lifetime {} s",
            if crate::upstream::looks_like_jwt(issued.access_token.expose()) {
                "JWT"
            } else {
                "opaque"
            },
            issued.lifetime.as_secs()
        ),
    );
    match decode_payload(issued.access_token.expose()) {
        Some(claims) => check_claims(&claims),
        None => {
            note("claims", "the token is opaque; nothing to decode");
            Outcome::Works
        }
    }
}

/// Shows what the provider issued (its claims, never the token) and checks its `iat` against
/// this host's clock.
fn check_claims(claims: &serde_json::Value) -> Outcome {
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
        Some(exp) => println!("        exp    {} (in {} s)", clock::rfc3339(exp), exp - now_unix()),
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
                    ahead(skew)
                ),
                "clock skew between this host and the provider: tokens will look not yet valid or already expired",
                "synchronise the clocks of both (timedatectl set-ntp true; chronyc tracking shows the offset)",
            );
            return Outcome::Failed;
        }
    }
    Outcome::Works
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
    if crate::upstream::looks_like_jwt(token.expose()) {
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
                        clock::rfc3339(exp),
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

/// A JWT's payload as JSON, without checking anything.
fn decode_payload(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
