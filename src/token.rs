//! Tokens and credentials in memory: never printed, zeroised when dropped, named by fingerprint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// A token or credential value. Its `Debug` shows only the fingerprint, computed once. Clones
/// share one zeroised buffer (a clone costs a reference count, not a copy of the token).
#[derive(Clone)]
pub struct Secret(std::sync::Arc<SecretBuf>);

/// The bytes behind a [`Secret`]: the value is `text[range]` (an [`IssuedToken`]'s access token
/// lives inside its rendered answer, so it is held once).
struct SecretBuf {
    text: Zeroizing<String>,
    range: std::ops::Range<usize>,
    fingerprint: std::sync::OnceLock<String>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret::from(Zeroizing::new(value))
    }
    pub fn expose(&self) -> &str {
        self.0.text.get(self.0.range.clone()).unwrap_or_default()
    }
    pub fn fingerprint(&self) -> String {
        self.fingerprint_str().to_string()
    }
    /// [`fingerprint`](Self::fingerprint) without a copy.
    pub fn fingerprint_str(&self) -> &str {
        self.0.fingerprint.get_or_init(|| fingerprint(self.expose().as_bytes()))
    }
    /// This secret, held inside `text` at `range` (which must hold the same value), with the
    /// fingerprint already computed.
    fn within(&self, text: Zeroizing<String>, range: std::ops::Range<usize>) -> Secret {
        let fingerprint = std::sync::OnceLock::new();
        let _ = fingerprint.set(self.fingerprint());
        Secret(std::sync::Arc::new(SecretBuf {
            text,
            range,
            fingerprint,
        }))
    }
}

impl From<Zeroizing<String>> for Secret {
    fn from(text: Zeroizing<String>) -> Secret {
        let range = 0..text.len();
        Secret(std::sync::Arc::new(SecretBuf {
            text,
            range,
            fingerprint: std::sync::OnceLock::new(),
        }))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(fingerprint {})", self.fingerprint_str())
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

/// A token the provider issued, with its lifetime on this host's clocks. The parts of its answer
/// and audit lines that depend only on the token are rendered when it is made, so its times are
/// given then ([`new`](Self::new), [`restored`](Self::restored)) and not changed after.
pub struct IssuedToken {
    /// Held inside the rendered answer's members when its JSON string needs no escapes (a JWT
    /// never does), so the token's bytes are in memory once.
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
    rendered: Rendered,
}

/// The parts of every response and audit line that depend only on the token.
struct Rendered {
    /// `"access_token":"…","token_type":"Bearer","issued_token_type":"…","expires_at":"…"`, when
    /// the access token is not held inside it; `None`: it is the access token's own buffer.
    response: Option<Zeroizing<String>>,
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
    /// A token received now, valid for `lifetime` from now.
    pub fn new(
        access_token: Secret,
        issued_token_type: String,
        scope: String,
        lifetime: Duration,
        claims: Option<TokenClaims>,
    ) -> IssuedToken {
        let issued_at = Instant::now();
        let times = (issued_at, issued_at + lifetime, SystemTime::now() + lifetime);
        IssuedToken::restored(access_token, issued_token_type, scope, lifetime, claims, times)
    }

    /// A token received earlier: `times` is when it was issued and when it expires, on the
    /// monotonic clock and on the wall clock.
    pub(crate) fn restored(
        access_token: Secret,
        issued_token_type: String,
        scope: String,
        lifetime: Duration,
        claims: Option<TokenClaims>,
        times: (Instant, Instant, SystemTime),
    ) -> IssuedToken {
        let (issued_at, expires_at, expires_at_system) = times;
        let fingerprint = access_token.fingerprint();
        let audit = serde_json::to_string(&audit_view(claims.as_ref(), &fingerprint, unix_secs(expires_at_system)))
            .ok()
            .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
            .unwrap_or_else(|| serde_json::value::RawValue::from_string("null".into()).unwrap_or_default());
        let token = access_token.expose();
        let mut response = Zeroizing::new(String::with_capacity(token.len() + 160));
        response.push_str("\"access_token\":\"");
        let start = response.len();
        response.pop();
        push_json_str(&mut response, token);
        // No escapes: the JSON string is the token between quotes.
        let plain = response.len() == start + token.len() + 1;
        response.push_str(",\"token_type\":\"Bearer\",\"issued_token_type\":");
        push_json_str(&mut response, &issued_token_type);
        response.push_str(",\"expires_at\":");
        push_json_str(&mut response, &rfc3339(expires_at_system));
        let (access_token, response) = if plain {
            (access_token.within(response, start..start + token.len()), None)
        } else {
            (access_token, Some(response))
        };
        IssuedToken {
            access_token,
            issued_token_type,
            scope,
            lifetime,
            issued_at,
            expires_at,
            expires_at_system,
            claims,
            fingerprint,
            rendered: Rendered { response, audit },
        }
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// `expires_at` as seconds since the epoch.
    pub(crate) fn expires_unix(&self) -> u64 {
        unix_secs(self.expires_at_system)
    }

    /// The `token` object of an audit event: never the token itself.
    pub(crate) fn audit_ref(&self) -> TokenAuditView<'_> {
        audit_view(self.claims.as_ref(), &self.fingerprint, self.expires_unix())
    }

    /// The `/v1/token` answer's fields that depend only on the token, as JSON object members.
    pub(crate) fn response_fields(&self) -> &str {
        match &self.rendered.response {
            Some(r) => r,
            None => &self.access_token.0.text,
        }
    }

    /// The `token` object of audit lines, rendered once.
    pub(crate) fn audit_json(&self) -> &serde_json::value::RawValue {
        &self.rendered.audit
    }

    /// [`audit_ref`](Self::audit_ref) as a JSON value.
    pub(crate) fn audit_view(&self) -> serde_json::Value {
        serde_json::to_value(self.audit_ref()).unwrap_or_default()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn audit_view<'a>(claims: Option<&'a TokenClaims>, fingerprint: &'a str, expires_unix: u64) -> TokenAuditView<'a> {
    TokenAuditView {
        sub: claims.and_then(|c| c.sub.as_deref()),
        iss: claims.and_then(|c| c.iss.as_deref()),
        jti: claims.and_then(|c| c.jti.as_deref()),
        exp: claims.and_then(|c| c.exp).unwrap_or(expires_unix),
        act: claims.and_then(|c| c.act.as_ref()),
        fingerprint,
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
    fn clones_of_a_secret_share_its_bytes() {
        let s = Secret::new("eyJ.a.b".into());
        let c = s.clone();
        assert_eq!(c, s);
        assert_eq!(c.expose().as_ptr(), s.expose().as_ptr(), "a clone is not a copy");
        assert_eq!(Secret::new("eyJ.a.b".into()), s, "equal by value");
        assert_ne!(Secret::new("eyJ.a.c".into()), s);
    }

    #[test]
    fn an_access_token_is_held_once_inside_its_rendered_answer() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let t = IssuedToken::new(
            Secret::new(jwt.into()),
            "urn:x".into(),
            String::new(),
            Duration::from_secs(60),
            None,
        );
        let fields = t.response_fields();
        let v: serde_json::Value = serde_json::from_str(&format!("{{{fields}}}")).unwrap();
        assert_eq!(v["access_token"], jwt);
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["issued_token_type"], "urn:x");
        assert_eq!(v["expires_at"], rfc3339(t.expires_at_system));
        assert_eq!(t.access_token.expose(), jwt);
        assert_eq!(t.fingerprint, fingerprint(jwt.as_bytes()));
        let within = fields.as_bytes().as_ptr_range();
        assert!(
            within.contains(&t.access_token.expose().as_ptr()),
            "the token's bytes are the answer's, not a second copy"
        );
        // A token whose JSON string needs escapes keeps its own bytes; the answer stays exact.
        let odd = "a\"b\\c";
        let t = IssuedToken::new(
            Secret::new(odd.into()),
            "urn:x".into(),
            String::new(),
            Duration::from_secs(60),
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&format!("{{{}}}", t.response_fields())).unwrap();
        assert_eq!(v["access_token"], odd);
        assert_eq!(t.access_token.expose(), odd);
    }

    #[test]
    fn a_restored_token_is_rendered_with_its_own_expiry() {
        let now = Instant::now();
        let expires = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let times = (now - Duration::from_secs(10), now + Duration::from_secs(50), expires);
        let t = IssuedToken::restored(
            Secret::new("eyJ.a.b".into()),
            "urn:x".into(),
            String::new(),
            Duration::from_secs(60),
            None,
            times,
        );
        assert!(
            t.response_fields().ends_with("\"expires_at\":\"2027-01-15T08:00:00Z\""),
            "{}",
            t.response_fields()
        );
        assert_eq!(
            t.audit_json().get(),
            format!(
                "{{\"sub\":null,\"iss\":null,\"jti\":null,\"exp\":1800000000,\"act\":null,\"fingerprint\":\"{}\"}}",
                t.fingerprint
            )
        );
        assert_eq!(t.remaining(now), Duration::from_secs(50));
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
