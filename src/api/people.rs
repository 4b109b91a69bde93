//! The people endpoints (SPEC section 8): sign-in (`/v1/login`, its long poll and the browser
//! callback the CLI relays), the caller's sessions (`/v1/sessions`) and `/v1/whoami`. Each acts
//! for the calling uid only; none ever answers with a token, a refresh token or a verifier.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::Deserialize;

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{ApiError, ErrorKind};
use crate::people::LoginStart;

use super::responses::{Body, json_response};
use super::routes::read_body;

/// Whether `path` is one of the people endpoints.
pub(super) fn owns(path: &str) -> bool {
    path == "/v1/login"
        || path.starts_with("/v1/login/")
        || path == "/v1/sessions"
        || path.starts_with("/v1/sessions/")
        || path == "/v1/whoami"
}

/// `POST /v1/login/{id}/callback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Callback {
    code: String,
    state: String,
}

fn ok(body: &impl serde::Serialize) -> Result<Response<Body>, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    Ok(json_response(200, bytes))
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let bytes = if bytes.is_empty() { b"{}".as_slice() } else { bytes };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_request(format!("{what}: the JSON body is not usable: {e}")))
}

/// `wait=SECONDS`, the only parameter of `GET /v1/login/{id}`.
fn parse_wait(query: Option<&str>) -> Result<Duration, ApiError> {
    let mut wait = Duration::ZERO;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "wait" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| ApiError::invalid_request(format!("wait={v:?} is not a whole number of seconds")))?;
                wait = Duration::from_secs(secs);
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown parameter {:?}; GET /v1/login/{{id}} takes wait=SECONDS only",
                    crate::output::audit::clip(other, 64)
                )));
            }
        }
    }
    Ok(wait)
}

/// One segment of a path: no slashes, not empty, a sane length.
fn segment(s: &str, what: &str) -> Result<String, ApiError> {
    if s.is_empty() || s.len() > 128 || s.contains('/') {
        return Err(ApiError::new(ErrorKind::NotFound, format!("no such {what}")));
    }
    Ok(s.to_string())
}

pub(super) async fn handle(
    agent: &Agent,
    caller: &Caller,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    match (&method, path) {
        (&Method::POST, "/v1/login") => {
            let ask: LoginStart = json_body(&read_body(req).await?, "POST /v1/login")?;
            ok(&agent.login_start(caller, ask).await?)
        }
        (&Method::GET, "/v1/sessions") => ok(&agent.sessions(caller)),
        (&Method::GET, "/v1/whoami") => ok(&agent.whoami(caller)),
        (&Method::DELETE, p) if p.starts_with("/v1/sessions/") => {
            let login = segment(&p["/v1/sessions/".len()..], "login")?;
            ok(&agent.logout(caller, &login).await?)
        }
        (&Method::POST, p) if p.starts_with("/v1/login/") && p.ends_with("/callback") => {
            let id = segment(&p["/v1/login/".len()..p.len() - "/callback".len()], "sign-in")?;
            let cb: Callback = json_body(&read_body(req).await?, "POST /v1/login/{id}/callback")?;
            ok(&agent.login_callback(caller, &id, &cb.code, &cb.state).await?)
        }
        (&Method::GET, p) if p.starts_with("/v1/login/") => {
            let id = segment(&p["/v1/login/".len()..], "sign-in")?;
            let wait = parse_wait(req.uri().query())?;
            ok(&agent.login_status(caller, &id, wait).await?)
        }
        _ => Err(ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "{method} is not served on {path}; use POST /v1/login, GET /v1/login/{{id}}, POST /v1/login/{{id}}/callback, GET /v1/sessions, DELETE /v1/sessions/{{login}}, GET /v1/whoami"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_poll_takes_wait_only() {
        assert_eq!(parse_wait(Some("wait=30")).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait(None).unwrap(), Duration::ZERO);
        assert!(parse_wait(Some("wait=soon")).is_err());
        assert!(
            parse_wait(Some("token=x"))
                .unwrap_err()
                .description
                .contains("wait=SECONDS only")
        );
    }

    #[test]
    fn bodies_with_unknown_members_are_refused() {
        let e = json_body::<LoginStart>(br#"{"login":"corp","verifier":"x"}"#, "POST /v1/login").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let ask = json_body::<LoginStart>(b"", "POST /v1/login").unwrap();
        assert!(ask.login.is_none());
    }
}
