//! Tokens and credentials in memory: never printed, zeroised when dropped, named by fingerprint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// A token or credential value. Its `Debug` shows only the fingerprint, computed once.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>, std::sync::OnceLock<String>);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value), std::sync::OnceLock::new())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn fingerprint(&self) -> String {
        self.1.get_or_init(|| fingerprint(self.0.as_bytes())).clone()
    }
}

impl From<Zeroizing<String>> for Secret {
    fn from(v: Zeroizing<String>) -> Secret {
        Secret(v, std::sync::OnceLock::new())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(fingerprint {})", self.fingerprint())
    }
}

/// First 16 hex digits of the SHA-256 of a token: how audit lines and logs name it.
pub fn fingerprint(data: &[u8]) -> String {
    sha256_hex_prefix(data, 16)
}

/// The first `hex_digits` lowercase hex digits of SHA-256(`data`): a fingerprint safe to log.
fn sha256_hex_prefix(data: &[u8], hex_digits: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let n = hex_digits.min(64);
    let mut out = String::with_capacity(n);
    for b in digest.as_ref().iter().take(n.div_ceil(2)) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out.truncate(n);
    out
}

/// The claims of an issued JWT that the agent reports and checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenClaims {
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub jti: Option<String>,
    pub exp: Option<u64>,
    #[serde(skip)]
    pub aud: Vec<String>,
    #[serde(skip)]
    pub scope: Option<String>,
    pub act: Option<serde_json::Value>,
}

impl TokenClaims {
    pub fn from_json(v: &serde_json::Value) -> TokenClaims {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let aud = match v.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(|a| a.as_str().map(str::to_string)).collect()
            }
            _ => Vec::new(),
        };
        TokenClaims {
            sub: s("sub"),
            iss: s("iss"),
            jti: s("jti"),
            exp: v
                .get("exp")
                .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64))),
            aud,
            scope: s("scope"),
            act: v.get("act").cloned(),
        }
    }
}

/// How audit lines name a token: claims and fingerprint, never the value.
#[derive(Debug, Serialize)]
pub(crate) struct TokenAuditView<'a> {
    pub sub: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub exp: u64,
    pub act: Option<&'a serde_json::Value>,
    pub fingerprint: &'a str,
}

/// A token the provider issued, with its lifetime on this host's clocks.
pub struct IssuedToken {
    pub access_token: Secret,
    pub issued_token_type: String,
    /// The scope granted (the provider's answer, else what was asked).
    pub scope: String,
    pub lifetime: Duration,
    pub issued_at: Instant,
    pub expires_at: Instant,
    pub expires_at_system: SystemTime,
    pub claims: Option<TokenClaims>,
    pub fingerprint: String,
    /// JSON fragments rendered once per token, not once per request.
    rendered: std::sync::OnceLock<Rendered>,
}

/// The parts of every response and audit line that depend only on the token.
struct Rendered {
    /// `"access_token":"…","token_type":"Bearer","issued_token_type":"…","expires_at":"…"`
    response: zeroize::Zeroizing<String>,
    /// The `token` object of audit lines.
    audit: Box<serde_json::value::RawValue>,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("fingerprint", &self.fingerprint)
            .field("lifetime", &self.lifetime)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl IssuedToken {
    pub fn new(
        access_token: Secret,
        issued_token_type: String,
        scope: String,
        lifetime: Duration,
        claims: Option<TokenClaims>,
    ) -> IssuedToken {
        let issued_at = Instant::now();
        let fingerprint = access_token.fingerprint();
        IssuedToken {
            access_token,
            issued_token_type,
            scope,
            lifetime,
            issued_at,
            expires_at: issued_at + lifetime,
            expires_at_system: SystemTime::now() + lifetime,
            claims,
            fingerprint,
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// `expires_at` as seconds since the epoch.
    pub(crate) fn expires_unix(&self) -> u64 {
        self.expires_at_system
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// The `token` object of an audit event: never the token itself.
    pub(crate) fn audit_ref(&self) -> TokenAuditView<'_> {
        let c = self.claims.as_ref();
        TokenAuditView {
            sub: c.and_then(|c| c.sub.as_deref()),
            iss: c.and_then(|c| c.iss.as_deref()),
            jti: c.and_then(|c| c.jti.as_deref()),
            exp: c.and_then(|c| c.exp).unwrap_or_else(|| self.expires_unix()),
            act: c.and_then(|c| c.act.as_ref()),
            fingerprint: &self.fingerprint,
        }
    }

    fn rendered(&self) -> &Rendered {
        self.rendered.get_or_init(|| {
            let mut response = zeroize::Zeroizing::new(String::with_capacity(self.access_token.expose().len() + 160));
            response.push_str("\"access_token\":");
            push_json_str(&mut response, self.access_token.expose());
            response.push_str(",\"token_type\":\"Bearer\",\"issued_token_type\":");
            push_json_str(&mut response, &self.issued_token_type);
            response.push_str(",\"expires_at\":");
            push_json_str(&mut response, &rfc3339(self.expires_at_system));
            let audit = serde_json::to_string(&self.audit_ref())
                .ok()
                .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
                .unwrap_or_else(|| serde_json::value::RawValue::from_string("null".into()).unwrap_or_default());
            Rendered { response, audit }
        })
    }

    /// The `/v1/token` answer's fields that depend only on the token, as JSON object members.
    pub(crate) fn response_fields(&self) -> &str {
        &self.rendered().response
    }

    /// The `token` object of audit lines, rendered once.
    pub(crate) fn audit_json(&self) -> &serde_json::value::RawValue {
        &self.rendered().audit
    }

    /// [`audit_ref`](Self::audit_ref) as a JSON value.
    pub(crate) fn audit_view(&self) -> serde_json::Value {
        serde_json::to_value(self.audit_ref()).unwrap_or_default()
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping is exact; writing into a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// RFC 3339 with seconds, UTC: `2026-11-28T12:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339 with milliseconds, UTC, for audit timestamps.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(sha256_hex_prefix(b"abc", 16), "ba7816bf8f01cfea");
        assert_eq!(sha256_hex_prefix(b"abc", 100).len(), 64);
    }

    #[test]
    fn secrets_never_debug_print() {
        let s = Secret::new("eyJhbGciOi.super.secret".into());
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(&s.fingerprint()));
        assert_eq!(s.fingerprint().len(), 16);
        let t = IssuedToken::new(s, "t".into(), String::new(), Duration::from_secs(60), None);
        assert!(!format!("{t:?}").contains("super"));
    }

    #[test]
    fn fingerprint_is_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint(b"abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn claims_accept_aud_as_string_or_list() {
        let c = TokenClaims::from_json(&serde_json::json!({"aud": "a", "exp": 5}));
        assert_eq!(c.aud, vec!["a"]);
        let c = TokenClaims::from_json(&serde_json::json!({"aud": ["a", "b"], "exp": 5.0}));
        assert_eq!(c.aud, vec!["a", "b"]);
        assert_eq!(c.exp, Some(5));
    }
}
