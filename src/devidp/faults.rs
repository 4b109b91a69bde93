//! Faults injected into `/token`, so tests can see how the agent copes with a provider that
//! misbehaves: error statuses, hangs, closed connections, malformed answers, and tokens that are
//! wrong in one way each.

use std::time::Duration;

use http_body_util::Full;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use serde_json::json;
use tokio::sync::Notify;

use super::http::{Resp, json_response};
use super::{Shared, lock};
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_BEARER};

/// The `aud` of tokens issued while [`Fault::WrongAudience`] is set.
pub const WRONG_AUDIENCE: &str = "https://wrong-audience.example";
/// The `iss` of tokens issued while [`Fault::WrongIssuer`] is set.
pub const WRONG_ISSUER: &str = "https://wrong-issuer.example";

/// A fault injected into `/token` (discovery and JWKS keep answering). Each is selectable per
/// test with [`DevIdp::set_fault`]; [`Fault::None`] restores normal service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer every `/token` request with this HTTP status and `{"error":"temporarily_unavailable"}`
    /// (with `Retry-After: 1` for 429 and 503).
    Status(u16),
    /// Like [`Fault::Status`], with `Retry-After: secs` whatever the status.
    StatusRetryAfter(u16, u64),
    /// Like [`Fault::StatusRetryAfter`] for the next request only; then normal service.
    OnceRetryAfter(u16, u64),
    /// Accept the request and never answer (the connection stays open until shutdown).
    Hang,
    /// Answer normally, but only after this delay.
    Delay(Duration),
    /// Close the connection without answering (the client sees a reset / unexpected EOF).
    Close,
    /// Answer 200 with a body that is not JSON (truncated mid-document).
    MalformedJson,
    /// Answer 200 with a JSON token response that has no `access_token`.
    NoAccessToken,
    /// Issue a token with no `exp` claim and answer without `expires_in`.
    NoExpiry,
    /// Issue a token whose `aud` is [`WRONG_AUDIENCE`] instead of the requested audience.
    WrongAudience,
    /// Issue a token whose `iss` is [`WRONG_ISSUER`] instead of the provider's issuer.
    WrongIssuer,
    /// Issue a token whose signature does not verify (payload changed after signing).
    BadSignature,
    /// The provider's clock is off by this many seconds (positive: ahead): `iat`, `nbf` and
    /// `exp` of issued tokens are shifted; `expires_in` still says the configured lifetime.
    ClockSkew(i64),
}

/// What the fault set now does to a `/token` request before it is served: an answer in its place
/// (`Some`), no answer ever (the future never resolves; [`Fault::Close`] also closes the
/// connection), or `None` to serve it (after [`Fault::Delay`]; the token-shaping faults apply when
/// the token is issued).
pub(super) async fn before_token(shared: &Shared, close: &Notify) -> Option<Resp> {
    let fault = {
        let mut st = lock(&shared.state);
        let fault = st.fault;
        if let Fault::OnceRetryAfter(..) = fault {
            st.fault = Fault::None;
        }
        fault
    };
    match fault {
        Fault::OnceRetryAfter(code, secs) => Some(fault_response(code, Some(secs))),
        Fault::Status(code) => Some(fault_response(code, (code == 429 || code == 503).then_some(1))),
        Fault::StatusRetryAfter(code, secs) => Some(fault_response(code, Some(secs))),
        Fault::Hang => std::future::pending().await,
        Fault::Close => {
            close.notify_one();
            std::future::pending().await
        }
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::MalformedJson => Some(raw_json_response(
            StatusCode::OK,
            r#"{"access_token":"eyJhbGciOiJFUzI1NiJ9.e30.c2ln","token_type":"Bea"#,
        )),
        Fault::NoAccessToken => {
            let lifetime = lock(&shared.state).token_lifetime.as_secs();
            Some(json_response(
                StatusCode::OK,
                &json!({"token_type": TOKEN_TYPE_BEARER, "expires_in": lifetime, "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN}),
                true,
            ))
        }
        Fault::None
        | Fault::NoExpiry
        | Fault::WrongAudience
        | Fault::WrongIssuer
        | Fault::BadSignature
        | Fault::ClockSkew(_) => None,
    }
}

fn fault_response(code: u16, retry_after: Option<u64>) -> Resp {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(
        status,
        &json!({"error": "temporarily_unavailable", "error_description": format!("injected fault: HTTP {code}")}),
        true,
    );
    if let Some(secs) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// A response whose body is sent as given (for malformed-JSON faults).
fn raw_json_response(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devidp::Counters;
    use crate::devidp::test_support::*;
    use crate::oauth::GRANT_CLIENT_CREDENTIALS;
    use serde_json::Value;

    #[tokio::test]
    async fn faults_and_counters() {
        let (idp, http) = exchange_idp().await;
        let form = [
            ("grant_type", GRANT_CLIENT_CREDENTIALS),
            ("client_id", "agent"),
            ("client_secret", "agent-secret"),
        ];
        idp.set_fault(Fault::Status(503));
        let resp = http.post(idp.token_endpoint()).form(&form).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        // Discovery and JWKS keep answering.
        let d = http
            .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
            .send()
            .await
            .unwrap();
        assert_eq!(d.status().as_u16(), 200);

        idp.set_fault(Fault::Status(500));
        let resp = http.post(idp.token_endpoint()).form(&form).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 500);
        assert!(resp.headers().get("retry-after").is_none());

        idp.set_fault(Fault::Close);
        let err = http.post(idp.token_endpoint()).form(&form).send().await;
        assert!(err.is_err(), "a closed connection is an error");

        idp.set_fault(Fault::Hang);
        let err = http
            .post(idp.token_endpoint())
            .form(&form)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(err.unwrap_err().is_timeout());

        let c = idp.counters();
        assert_eq!(
            c,
            Counters {
                discovery: 1,
                token_requests: 4,
                ..Counters::default()
            }
        );

        idp.set_fault(Fault::None);
        idp.reset_counters();
        let (st, _) = post(&http, &idp, &form).await;
        assert_eq!(st, 200);
        assert_eq!(
            idp.counters(),
            Counters {
                token_requests: 1,
                tokens_issued: 1,
                client_credentials: 1,
                ..Counters::default()
            }
        );
        idp.shutdown().await;
    }
}
