//! What the development provider's unit tests share: an HTTPS client that trusts its CA, token
//! requests, and a provider with one client for token exchange.

use std::time::Duration;

use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::Value;

use super::{DevClient, DevClientAuth, DevIdp, DevIdpConfig, unix_now};
use crate::oauth::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};

pub(super) const NOW_PLUS: u64 = 300;

pub(super) fn http(idp: &DevIdp) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(idp.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub(super) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(super) async fn post(http: &reqwest::Client, idp: &DevIdp, form: &[(&str, &str)]) -> (u16, Value) {
    post_with(http.post(idp.token_endpoint()), form).await
}

pub(super) async fn post_with(req: reqwest::RequestBuilder, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = req.form(form).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// GET a JSON document from the provider (`path` starts with `/`).
pub(super) async fn get_json(http: &reqwest::Client, idp: &DevIdp, path: &str) -> Value {
    http.get(format!("{}{path}", idp.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Verify an issued access token against the published JWKS and return its claims.
pub(super) async fn verify_at(http: &reqwest::Client, idp: &DevIdp, token: &str, aud: &str) -> Value {
    let jwks = get_json(http, idp, "/jwks").await;
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut v = Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[idp.issuer()]);
    decode::<Value>(token, &key, &v).unwrap().claims
}

pub(super) fn exp() -> u64 {
    unix_now() + NOW_PLUS
}

pub(super) async fn exchange_idp() -> (DevIdp, reqwest::Client) {
    let idp = DevIdp::start(DevIdpConfig {
        token_lifetime: Duration::from_secs(120),
        clients: vec![
            DevClient::new("agent", DevClientAuth::SecretPost("agent-secret".into()))
                .with_audiences(&["api-a", "api-b"])
                .with_scopes(&["read", "write"]),
        ],
    })
    .await
    .unwrap();
    let http = http(&idp);
    (idp, http)
}

pub(super) fn te_form<'a>(subject: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("client_id", "agent"),
        ("client_secret", "agent-secret"),
        ("subject_token", subject),
        ("subject_token_type", TOKEN_TYPE_JWT),
    ];
    f.extend_from_slice(extra);
    f
}
