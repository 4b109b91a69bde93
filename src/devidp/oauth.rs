//! OAuth at the token endpoint: form parsing, RFC 6749 errors, client authentication
//! (`client_secret_basic`, `client_secret_post`, RFC 7523 `private_key_jwt` assertions, `none`),
//! and the discovery and JWKS documents.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value, json};

use super::{DevClient, DevClientAuth, Shared, lock};
use crate::oauth::{
    CLIENT_ASSERTION_TYPE_JWT_BEARER, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE,
    GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE,
};
use crate::upstream::keys;

/// The `token_endpoint_auth_methods_supported`.
const AUTH_METHODS: [&str; 4] = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"];

/// An RFC 6749 section 5.2 error.
#[derive(Debug)]
pub(super) struct OAuthError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) description: String,
}

impl OAuthError {
    pub(super) fn new(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
        }
    }
    pub(super) fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    pub(super) fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }
    pub(super) fn invalid_client(d: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: d.into(),
        }
    }
    pub(super) fn server_error(d: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: d.into(),
        }
    }
}

/// A parsed `application/x-www-form-urlencoded` body. Parameters without a value are treated
/// as omitted (RFC 6749 section 3.1).
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    pub(super) fn parse(body: &[u8]) -> Form {
        Form(
            url::form_urlencoded::parse(body)
                .into_owned()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        )
    }

    /// A parameter that must not repeat (RFC 6749 section 3.1).
    pub(super) fn single(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
        }
        Ok(first)
    }

    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Decode one `application/x-www-form-urlencoded` component (RFC 6749 section 2.3.1).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_basic(value: &HeaderValue) -> Result<(String, String), OAuthError> {
    let malformed =
        || OAuthError::invalid_client("malformed Authorization header: expected Basic base64(client_id:client_secret)");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, rest) = text.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(format!(
            "unsupported Authorization scheme {scheme}: the token endpoint takes Basic client authentication"
        )));
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok((form_decode(id), form_decode(secret)))
}

pub(super) fn claim_str<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

impl Shared {
    pub(super) fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": format!("{}/jwks", self.issuer),
            "authorization_endpoint": format!("{}/authorize", self.issuer),
            "device_authorization_endpoint": format!("{}/device_authorization", self.issuer),
            "revocation_endpoint": format!("{}/revoke", self.issuer),
            "grant_types_supported": [GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, GRANT_DEVICE_CODE,
                GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": super::people::PEOPLE_SCOPES,
            "claims_supported": ["sub", "name", "email", "email_verified", "groups", "nonce", "sid", "auth_time"],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        })
    }

    pub(super) fn jwks(&self) -> Value {
        let st = lock(&self.state);
        json!({"keys": st.keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
    }

    pub(super) fn authenticate(&self, headers: &HeaderMap, form: &Form) -> Result<DevClient, OAuthError> {
        let basic = headers.get(header::AUTHORIZATION).map(parse_basic).transpose()?;
        let secret = form.single("client_secret")?;
        let assertion = form.single("client_assertion")?;
        let assertion_type = form.single("client_assertion_type")?;
        let form_id = form.single("client_id")?;
        let used = [basic.is_some(), secret.is_some(), assertion.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if used > 1 {
            return Err(OAuthError::invalid_request(
                "the request uses more than one client authentication method",
            ));
        }
        let (method, id) = if let Some((id, _)) = &basic {
            ("client_secret_basic", id.clone())
        } else if secret.is_some() {
            let id = form_id.ok_or_else(|| OAuthError::invalid_request("client_secret was sent without client_id"))?;
            ("client_secret_post", id.to_string())
        } else if let Some(assertion) = assertion {
            if assertion_type != Some(CLIENT_ASSERTION_TYPE_JWT_BEARER) {
                return Err(OAuthError::invalid_client(format!(
                    "client_assertion_type must be {CLIENT_ASSERTION_TYPE_JWT_BEARER}"
                )));
            }
            let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
                .map_err(|_| OAuthError::invalid_client("client_assertion is not a JWT"))?;
            let iss = claim_str(&claims, "iss")
                .ok_or_else(|| OAuthError::invalid_client("client_assertion has no iss claim"))?;
            ("private_key_jwt", iss.to_string())
        } else if let Some(id) = form_id {
            ("none", id.to_string())
        } else {
            return Err(OAuthError::invalid_client(
                "no client authentication: use client_secret_basic, client_secret_post, private_key_jwt, or send client_id",
            ));
        };
        if let Some(form_id) = form_id
            && form_id != id
        {
            return Err(OAuthError::invalid_client(format!(
                "client_id {form_id} does not match the authenticated client {id}"
            )));
        }
        let client = lock(&self.state)
            .clients
            .iter()
            .find(|c| c.client_id == id)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_client(format!("unknown client {id}")))?;
        let expected = client.auth.method();
        if expected != method {
            return Err(OAuthError::invalid_client(format!(
                "client {id} must authenticate with {expected} (the request used {method})"
            )));
        }
        match &client.auth {
            DevClientAuth::SecretBasic(want) => {
                let got = basic.as_ref().map(|(_, s)| s.as_str()).unwrap_or("");
                if !ct_eq(got.as_bytes(), want.as_bytes()) {
                    return Err(OAuthError::invalid_client(format!(
                        "wrong client secret for {id} (client_secret_basic)"
                    )));
                }
            }
            DevClientAuth::SecretPost(want) => {
                if !ct_eq(secret.unwrap_or("").as_bytes(), want.as_bytes()) {
                    return Err(OAuthError::invalid_client(format!(
                        "wrong client secret for {id} (client_secret_post)"
                    )));
                }
            }
            DevClientAuth::PrivateKeyJwt(jwk) => self.verify_client_assertion(&id, jwk, assertion.unwrap_or(""))?,
            DevClientAuth::None => {}
        }
        Ok(client)
    }

    /// RFC 7523 section 3: signature by the registered key, iss = sub = client_id, aud naming the
    /// token endpoint or the issuer, unexpired, and a jti never seen before.
    fn verify_client_assertion(&self, id: &str, jwk: &Value, assertion: &str) -> Result<(), OAuthError> {
        let (key, alg) = keys::decoding_key(jwk)
            .map_err(|e| OAuthError::invalid_client(format!("the key registered for {id} is unusable: {e}")))?;
        let header =
            decode_header(assertion).map_err(|_| OAuthError::invalid_client("client_assertion is not a JWT"))?;
        if header.alg != alg {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion is signed with {:?} but the key registered for {id} is {alg:?}",
                header.alg
            )));
        }
        let mut v = Validation::new(alg);
        v.set_audience(&[self.token_endpoint.as_str(), self.issuer.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.leeway = 30;
        let claims = decode::<Map<String, Value>>(assertion, &key, &v)
            .map_err(|e| {
                OAuthError::invalid_client(match e.kind() {
                    JwtErrorKind::ExpiredSignature => "client_assertion has expired".to_string(),
                    JwtErrorKind::InvalidAudience => format!(
                        "client_assertion aud must contain {} or {}",
                        self.token_endpoint, self.issuer
                    ),
                    JwtErrorKind::InvalidSignature => {
                        format!("client_assertion signature does not verify with the key registered for {id}")
                    }
                    JwtErrorKind::MissingRequiredClaim(c) => format!("client_assertion has no {c} claim"),
                    _ => format!("client_assertion rejected: {e}"),
                })
            })?
            .claims;
        if claim_str(&claims, "iss") != Some(id) || claim_str(&claims, "sub") != Some(id) {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion iss and sub must both be the client_id {id}"
            )));
        }
        let jti =
            claim_str(&claims, "jti").ok_or_else(|| OAuthError::invalid_client("client_assertion has no jti claim"))?;
        if !lock(&self.state)
            .assertion_jtis
            .insert((id.to_string(), jti.to_string()))
        {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion jti {jti} was already used (assertions must not be replayed)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devidp::test_support::*;
    use std::time::Duration;

    use crate::devidp::{DevIdp, DevIdpConfig};
    use crate::upstream::keys::{KeyAlg, SigningKey};

    #[tokio::test]
    async fn discovery_and_jwks() {
        let idp = DevIdp::start(DevIdpConfig::default()).await.unwrap();
        let http = http(&idp);
        assert!(idp.issuer().starts_with("https://127.0.0.1:"));
        let d = get_json(&http, &idp, "/.well-known/openid-configuration").await;
        assert_eq!(d["issuer"], idp.issuer());
        assert_eq!(d["token_endpoint"], format!("{}/token", idp.issuer()));
        assert_eq!(d["jwks_uri"], format!("{}/jwks", idp.issuer()));
        assert!(
            d["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(GRANT_TOKEN_EXCHANGE))
        );
        assert_eq!(d["token_endpoint_auth_methods_supported"].as_array().unwrap().len(), 4);

        let jwks = get_json(&http, &idp, "/jwks").await;
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], idp.current_kid().as_str());
        assert_eq!(keys[0]["kty"], "EC");
        assert!(keys[0].get("d").is_none());

        let missing = http.get(format!("{}/nope", idp.issuer())).send().await.unwrap();
        assert_eq!(missing.status().as_u16(), 404);
        let get_token = http.get(idp.token_endpoint()).send().await.unwrap();
        assert_eq!(get_token.status().as_u16(), 405);

        let c = idp.counters();
        assert_eq!((c.discovery, c.jwks, c.token_requests, c.tokens_issued), (1, 1, 1, 0));
        idp.shutdown().await;
        assert!(http.get(format!("{}/jwks", idp.issuer())).send().await.is_err());
    }

    #[tokio::test]
    async fn client_credentials_with_each_auth_method() {
        let jwt_key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let secret = "s3cr:t/+ &x";
        let idp = DevIdp::start(DevIdpConfig {
            token_lifetime: Duration::from_secs(60),
            clients: vec![
                DevClient::new("basic:client", DevClientAuth::SecretBasic(secret.into()))
                    .with_audiences(&["api"])
                    .with_scopes(&["read"]),
                DevClient::new("post", DevClientAuth::SecretPost("p-secret".into())).with_audiences(&["api"]),
                DevClient::new("jwt", DevClientAuth::PrivateKeyJwt(jwt_key.public_jwk().clone()))
                    .with_audiences(&["api"]),
                DevClient::new("public", DevClientAuth::None).with_audiences(&["api"]),
            ],
        })
        .await
        .unwrap();
        let http = http(&idp);
        let cc = [("grant_type", GRANT_CLIENT_CREDENTIALS)];

        // client_secret_basic, with id and secret form-urlencoded inside the header.
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", enc("basic:client"), enc(secret)))
        );
        let (st, body) = post_with(
            http.post(idp.token_endpoint()).header("authorization", &basic),
            &[("grant_type", GRANT_CLIENT_CREDENTIALS), ("scope", "read")],
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 60);
        assert_eq!(body["scope"], "read");
        assert!(body.get("issued_token_type").is_none());
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api").await;
        assert_eq!(claims["sub"], "basic:client");
        assert_eq!(claims["client_id"], "basic:client");
        assert_eq!(claims["aud"], "api");
        assert_eq!(claims["scope"], "read");
        assert_eq!(claims["exp"].as_u64().unwrap(), claims["iat"].as_u64().unwrap() + 60);

        // Wrong secret.
        let wrong = format!("Basic {}", STANDARD.encode(format!("{}:nope", enc("basic:client"))));
        let (st, body) = post_with(http.post(idp.token_endpoint()).header("authorization", wrong), &cc).await;
        assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));

        // client_secret_post.
        let (st, body) = post(
            &http,
            &idp,
            &[cc[0], ("client_id", "post"), ("client_secret", "p-secret")],
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert!(body.get("scope").is_none());
        let claims = verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api").await;
        assert_eq!(claims["sub"], "post");
        assert!(claims.get("scope").is_none());

        // The wrong method for a registered client names the expected one.
        let basic_for_post = format!("Basic {}", STANDARD.encode("post:p-secret"));
        let (st, body) = post_with(
            http.post(idp.token_endpoint()).header("authorization", basic_for_post),
            &cc,
        )
        .await;
        assert_eq!(st, 401);
        assert_eq!(body["error"], "invalid_client");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("client_secret_post"),
            "{body}"
        );

        // private_key_jwt.
        let assertion = |jti: &str| {
            jwt_key
                .sign(&json!({"iss": "jwt", "sub": "jwt", "aud": idp.token_endpoint(), "jti": jti, "exp": exp()}))
                .unwrap()
        };
        let a1 = assertion("one");
        let jwt_form = |a| {
            [
                cc[0],
                ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER),
                ("client_assertion", a),
            ]
        };
        let (st, body) = post(&http, &idp, &jwt_form(&a1)).await;
        assert_eq!(st, 200);
        assert_eq!(
            verify_at(&http, &idp, body["access_token"].as_str().unwrap(), "api").await["sub"],
            "jwt"
        );
        // Replayed jti.
        let (st, body) = post(&http, &idp, &jwt_form(&a1)).await;
        assert_eq!(st, 401);
        assert!(
            body["error_description"].as_str().unwrap().contains("already used"),
            "{body}"
        );
        // Signed by another key.
        let other = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let forged = other
            .sign(&json!({"iss": "jwt", "sub": "jwt", "aud": idp.issuer(), "jti": "two", "exp": exp()}))
            .unwrap();
        let (st, _) = post(&http, &idp, &jwt_form(&forged)).await;
        assert_eq!(st, 401);
        // Wrong audience.
        let bad_aud = jwt_key
            .sign(&json!({"iss": "jwt", "sub": "jwt", "aud": "https://elsewhere", "jti": "three", "exp": exp()}))
            .unwrap();
        let (st, _) = post(&http, &idp, &jwt_form(&bad_aud)).await;
        assert_eq!(st, 401);

        // none.
        let (st, body) = post(&http, &idp, &[cc[0], ("client_id", "public")]).await;
        assert_eq!(st, 200, "{body}");
        // Unknown client, unknown grant.
        let (st, body) = post(&http, &idp, &[cc[0], ("client_id", "nobody")]).await;
        assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
        let (st, body) = post(&http, &idp, &[("grant_type", "password"), ("client_id", "public")]).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("unsupported_grant_type")));

        let c = idp.counters();
        assert_eq!(c.tokens_issued, 4);
        assert_eq!(c.client_credentials, 4);
        assert_eq!(c.exchanges, 0);
        assert_eq!(c.token_requests, 11);
        assert_eq!(idp.issued().len(), 4);
    }

    #[test]
    fn form_decoding_and_redaction() {
        assert_eq!(form_decode("a%3Ab+c%2"), "a:b c%2");
        let auth = DevClientAuth::SecretBasic("hunter2".into());
        assert!(!format!("{auth:?}").contains("hunter2"));
        let client = DevClient::new("x", DevClientAuth::SecretPost("hunter2".into()));
        assert!(!format!("{client:?}").contains("hunter2"));
    }
}
