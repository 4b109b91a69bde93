//! The cause-and-fix hints for failures that only an error value explains: a provider that cannot
//! be fetched, and an exchange the provider refused or that failed. (Failures a check finds itself
//! are explained where it finds them.)

use super::report::fail;
use crate::config::{IdentitySettings, ProviderSettings};
use crate::error::{ProviderError, ProviderErrorKind};

/// Whether an error message says the provider's certificate is not signed by a trusted CA.
fn names_an_untrusted_ca(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("certificate") || lower.contains("unknownissuer")
}

/// Says why the first request to a provider (for its discovery document or its JWKS) failed.
pub(super) fn transport_failure(p: &ProviderSettings, url: &str, e: &reqwest::Error) {
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
    if names_an_untrusted_ca(&detail) {
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

/// Says why the exchange for identity `id` failed, from the provider's OAuth error code or the
/// kind of failure.
pub(super) fn exchange_failure(p: &ProviderSettings, id: &IdentitySettings, audience: &str, e: &ProviderError) {
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
            if names_an_untrusted_ca(msg) {
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
