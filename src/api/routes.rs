//! Routes: what each endpoint does with a request from an attested caller, the strict parsing
//! of `/v1/token` queries and bodies (unknown parameters are errors; credentials only in a
//! body), and the limits on request heads and bodies.

use std::collections::BTreeSet;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use serde::Deserialize;

use std::sync::Arc;

use crate::agent::{Agent, Granted, TokenAsk, TokenMemo};
use crate::caller::Caller;
use crate::error::{ApiError, ErrorKind};
use crate::oauth::TOKEN_TYPE_JWT;
use crate::token::Secret;
use crate::upstream::PresentedToken;

use super::responses::{Body, error_response, json_response, token_response};

/// Largest request body (413 above it).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Largest request head (431 above it).
pub(crate) const MAX_HEADERS: usize = 16 * 1024;

/// Size of the request head as received (request line and headers).
fn head_size(req: &Request<Incoming>) -> usize {
    let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

pub(super) async fn handle(agent: &Agent, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
    if head_size(&req) > MAX_HEADERS {
        return error_response(&ApiError::new(
            ErrorKind::HeadersTooLarge,
            format!("request headers are over {MAX_HEADERS} bytes; send less"),
        ));
    }
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/token") => match parse_query(req.uri().query()) {
            Ok(ask) => agent.token(caller, ask).await.and_then(|g| token_response(&g)),
            Err(e) => {
                audit_malformed(agent, caller, &e);
                Err(e)
            }
        },
        (&Method::POST, "/v1/token") => match read_body(req).await.and_then(|b| parse_body(&b)) {
            Ok(ask) => agent.token(caller, ask).await.and_then(|g| token_response(&g)),
            Err(e) => {
                audit_malformed(agent, caller, &e);
                Err(e)
            }
        },
        (&Method::GET, "/v1/identities") => {
            let body = serde_json::json!({"identities": agent.identities(caller)});
            Ok(json_response(200, body.to_string().into_bytes()))
        }
        (&Method::GET, "/metrics") => {
            let mut resp = json_response(200, agent.metrics_text().into_bytes());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            Ok(resp)
        }
        (&Method::GET, "/v1/health") => {
            let details = crate::policy::is_operator(&agent.config(), caller);
            let (status, body) = agent.health(details);
            Ok(json_response(status, body.to_string().into_bytes()))
        }
        (_, "/v1/token" | "/v1/identities" | "/v1/health" | "/metrics") => Err(ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "{} is not served on {path}; use GET (or POST for /v1/token)",
                req.method()
            ),
        )),
        (_, p) if super::people::owns(p) => super::people::handle(agent, caller, req, &path).await,
        _ => Err(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no endpoint {path}; the API is /v1/token, /v1/identities, /v1/health, /metrics, and for people /v1/login, /v1/sessions and /v1/whoami"
            ),
        )),
    };
    let endpoint = crate::output::metrics::endpoint_label(&path);
    match result {
        Ok(resp) => {
            agent.metrics().request(endpoint, "ok");
            resp
        }
        Err(e) => {
            agent.metrics().request(endpoint, e.code());
            error_response(&e)
        }
    }
}

/// `GET /v1/token` as the connection loop serves it: the grant remembered on this connection for
/// the same query if it still holds ([`Agent::token_again`]), else decided, and remembered.
pub(super) async fn token_get(
    agent: &Agent,
    caller: &Caller,
    memo: &mut TokenMemo,
    query: Option<&str>,
) -> Result<Arc<Granted>, ApiError> {
    let result = match agent.token_again(caller, memo, query.unwrap_or("")).await {
        Some(again) => again,
        None => match parse_query(query) {
            Ok(ask) => agent.token(caller, ask).await.map(Arc::new),
            Err(e) => {
                audit_malformed(agent, caller, &e);
                Err(e)
            }
        },
    };
    match &result {
        Ok(granted) => {
            memo.remember(query.unwrap_or(""), granted);
            agent.metrics().request("token", "ok");
        }
        Err(e) => agent.metrics().request("token", e.code()),
    }
    result
}

/// A request too malformed to reach the policy is still a denial worth recording.
fn audit_malformed(agent: &Agent, caller: &Caller, e: &ApiError) {
    let _ = agent.audit_denial(
        caller,
        serde_json::json!({"outcome": "denied", "caller": caller, "reason": e.code(), "error_description": e.description}),
    );
}

/// A request body must arrive whole within this time after its head (408 otherwise), so a
/// caller that promises a body and never sends it cannot hold a connection.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(result) = tokio::time::timeout(BODY_READ_TIMEOUT, collect).await else {
        return Err(ApiError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} s; send it whole with the request",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    match result {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::invalid_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Longest `identity` a request may name (identity names in a configuration are short).
pub const MAX_IDENTITY_LEN: usize = 256;
/// Longest `audience` a request may ask for.
pub const MAX_AUDIENCE_LEN: usize = 2048;
/// Longest `scope` (all scopes, space-separated) a request may ask for.
pub const MAX_SCOPE_LEN: usize = 4096;

/// Refuses a request whose names are longer than any configuration could allow, before they
/// reach the policy, the cache or the audit log.
fn check_lengths(ask: TokenAsk) -> Result<TokenAsk, ApiError> {
    let scope_len = ask.scopes.iter().map(|s| s.len() + 1).sum::<usize>();
    for (what, len, max) in [
        (
            "identity",
            ask.identity.as_deref().map_or(0, str::len),
            MAX_IDENTITY_LEN,
        ),
        (
            "audience",
            ask.audience.as_deref().map_or(0, str::len),
            MAX_AUDIENCE_LEN,
        ),
        ("scope", scope_len, MAX_SCOPE_LEN),
    ] {
        if len > max {
            return Err(ApiError::invalid_request(format!(
                "{what} is {len} bytes long; at most {max} are accepted"
            )));
        }
    }
    Ok(ask)
}

fn parse_min_valid(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>()
        .map_err(|_| ApiError::invalid_request(format!("min_valid={v:?} is not a whole number of seconds")))
}

/// `audience`, `scope`, `identity`, `min_valid`; anything else is an error.
pub fn parse_query(query: Option<&str>) -> Result<TokenAsk, ApiError> {
    let mut ask = TokenAsk::default();
    let mut seen = BTreeSet::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(ApiError::invalid_request(format!(
                "parameter {k:?} is given twice; give it once (scopes go space-separated in one scope=)"
            )));
        }
        match k.as_ref() {
            "audience" => ask.audience = Some(v.into_owned()),
            "scope" => ask.scopes = crate::policy::parse_scopes(&v),
            "identity" => ask.identity = Some(v.into_owned()),
            "min_valid" => ask.min_valid = Some(parse_min_valid(&v)?),
            "subject_token" | "actor_token" | "subject_token_type" | "actor_token_type" => {
                return Err(ApiError::invalid_request(format!(
                    "{k} is accepted in a POST /v1/token JSON body only, never in the query string"
                )));
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown parameter {:?}; /v1/token takes audience, scope, identity and min_valid",
                    crate::output::audit::clip(other, 64)
                )));
            }
        }
    }
    if ask.audience.as_deref() == Some("") {
        return Err(ApiError::invalid_request("audience is empty"));
    }
    check_lengths(ask)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    identity: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
    min_valid: Option<u64>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
}

pub fn parse_body(body: &[u8]) -> Result<TokenAsk, ApiError> {
    let b: TokenBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!(
            "the body is not a valid token request ({}); send JSON with identity, audience, scope, min_valid, subject_token, subject_token_type, actor_token, actor_token_type",
            crate::output::audit::clip(&e.to_string(), 256)
        ))
    })?;
    let presented = |t: Option<String>, ty: Option<String>, what: &str| -> Result<Option<PresentedToken>, ApiError> {
        match t {
            Some(t) if t.trim().is_empty() => Err(ApiError::invalid_request(format!("{what} is empty"))),
            Some(t) => Ok(Some(PresentedToken {
                token: Secret::new(t.trim().to_string()),
                token_type: ty.unwrap_or_else(|| TOKEN_TYPE_JWT.to_string()),
            })),
            None if ty.is_some() => Err(ApiError::invalid_request(format!(
                "{what}_type is given without {what}"
            ))),
            None => Ok(None),
        }
    };
    check_lengths(TokenAsk {
        identity: b.identity,
        audience: b.audience.filter(|a| !a.is_empty()),
        scopes: b.scope.as_deref().map(crate::policy::parse_scopes).unwrap_or_default(),
        min_valid: b.min_valid,
        subject_token: presented(b.subject_token, b.subject_token_type, "subject_token")?,
        actor_token: presented(b.actor_token, b.actor_token_type, "actor_token")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_strict() {
        let ask = parse_query(Some("audience=https%3A%2F%2Fa&scope=b%20a&min_valid=30")).unwrap();
        assert_eq!(ask.audience.as_deref(), Some("https://a"));
        assert_eq!(ask.scopes.iter().cloned().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(ask.min_valid, Some(30));
        let e = parse_query(Some("audience=a&colour=red")).unwrap_err();
        assert!(e.description.contains("colour"));
        let e = parse_query(Some("subject_token=abc")).unwrap_err();
        assert!(e.description.contains("body only"));
        assert!(parse_query(Some("min_valid=soon")).is_err());
        assert!(parse_query(Some("audience=a&audience=b")).is_err());
    }

    #[test]
    fn bodies_are_strict_and_credentials_are_wrapped() {
        let ask = parse_body(br#"{"audience":"a","subject_token":"eyJ.x.y"}"#).unwrap();
        assert_eq!(ask.subject_token.unwrap().token_type, TOKEN_TYPE_JWT);
        let e = parse_body(br#"{"audience":"a","extra":1}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(parse_body(b"not json").is_err());
        assert!(parse_body(br#"{"subject_token_type":"x"}"#).is_err());
    }
}
