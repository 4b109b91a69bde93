//! What to ask `/v1/token` for, and how it goes on the wire: the parameters in the query of a
//! `GET`, or, when a credential is presented, everything in the JSON body of a `POST` (a
//! credential never goes in a URL). Its `Debug` never shows a credential.

use std::fmt;

/// What to ask `/v1/token` for. Its `Debug` never shows a credential.
#[derive(Default, Clone)]
pub(crate) struct TokenRequest {
    pub(crate) audience: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) identity: Option<String>,
    /// Seconds the token must still be valid for.
    pub(crate) min_valid: Option<u64>,
    pub(crate) subject_token: Option<String>,
    pub(crate) subject_token_type: Option<String>,
    pub(crate) actor_token: Option<String>,
    pub(crate) actor_token_type: Option<String>,
}

fn redacted(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("identity", &self.identity)
            .field("min_valid", &self.min_valid)
            .field("subject_token", &redacted(&self.subject_token))
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token", &redacted(&self.actor_token))
            .field("actor_token_type", &self.actor_token_type)
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a space is `%20` (never
/// `+`) and `&`, `=`, `#`, `+`, `/`, `?` in a value cannot change the query's meaning.
fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

impl TokenRequest {
    /// Whether this request presents a credential (and so must be a `POST`).
    pub(crate) fn presents_credential(&self) -> bool {
        self.subject_token.is_some() || self.actor_token.is_some()
    }

    /// The scopes as the API wants them: one space-separated string, or `None` when there are none.
    fn scope(&self) -> Option<String> {
        let scopes: Vec<&str> = self.scopes.iter().flat_map(|s| s.split_whitespace()).collect();
        (!scopes.is_empty()).then(|| scopes.join(" "))
    }

    /// The query string of a `GET /v1/token`. Credentials are never part of it.
    pub(crate) fn query(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(a) = &self.audience {
            pairs.push(("audience", a.clone()));
        }
        if let Some(s) = self.scope() {
            pairs.push(("scope", s));
        }
        if let Some(i) = &self.identity {
            pairs.push(("identity", i.clone()));
        }
        if let Some(m) = self.min_valid {
            pairs.push(("min_valid", m.to_string()));
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The JSON body of a `POST /v1/token`: only the fields that are set.
    pub(crate) fn body(&self) -> serde_json::Value {
        let mut b = serde_json::Map::new();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                b.insert(k.to_string(), v);
            }
        };
        put("identity", self.identity.clone().map(Into::into));
        put("audience", self.audience.clone().map(Into::into));
        put("scope", self.scope().map(Into::into));
        put("min_valid", self.min_valid.map(Into::into));
        put("subject_token", self.subject_token.clone().map(Into::into));
        put("subject_token_type", self.subject_token_type.clone().map(Into::into));
        put("actor_token", self.actor_token.clone().map(Into::into));
        put("actor_token_type", self.actor_token_type.clone().map(Into::into));
        serde_json::Value::Object(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hyper::body::Bytes;

    use crate::cmd::client::Response;
    use crate::oauth::TOKEN_TYPE_JWT;

    #[test]
    fn queries_are_percent_encoded_and_credentials_stay_out_of_them() {
        let req = TokenRequest {
            audience: Some("https://a.example/x?y=1&z#f".into()),
            scopes: vec!["read".into(), "write admin+x".into()],
            identity: Some("pay ments".into()),
            min_valid: Some(60),
            subject_token: Some("eyJ.secret.sig".into()),
            ..TokenRequest::default()
        };
        let q = req.query();
        assert_eq!(
            q,
            "audience=https%3A%2F%2Fa.example%2Fx%3Fy%3D1%26z%23f&scope=read%20write%20admin%2Bx\
             &identity=pay%20ments&min_valid=60"
        );
        assert!(!q.contains("secret"));
        // The server parses the query as application/x-www-form-urlencoded: it must round-trip.
        let back: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        assert_eq!(back[0].1, "https://a.example/x?y=1&z#f");
        assert_eq!(back[1].1, "read write admin+x");
        assert_eq!(back[2].1, "pay ments");
        assert_eq!(percent_encode("aZ09-._~ é"), "aZ09-._~%20%C3%A9");
        assert_eq!(TokenRequest::default().query(), "");
    }

    #[test]
    fn bodies_hold_only_set_fields_and_debug_redacts() {
        let req = TokenRequest {
            audience: Some("aud".into()),
            scopes: vec![" a  b ".into(), "".into()],
            actor_token: Some("eyJ.actor.secret".into()),
            actor_token_type: Some(TOKEN_TYPE_JWT.into()),
            subject_token: Some("eyJ.subject.secret".into()),
            ..TokenRequest::default()
        };
        assert!(req.presents_credential());
        assert_eq!(
            req.body(),
            serde_json::json!({"audience": "aud", "scope": "a b", "subject_token": "eyJ.subject.secret",
                "actor_token": "eyJ.actor.secret", "actor_token_type": TOKEN_TYPE_JWT})
        );
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        let resp = Response {
            status: 200,
            headers: hyper::HeaderMap::new(),
            body: Bytes::from_static(br#"{"access_token":"eyJ.secret"}"#),
        };
        assert!(!format!("{resp:?}").contains("secret"));
    }
}
