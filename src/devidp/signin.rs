//! The development provider's people endpoints over HTTP: device authorization (RFC 8628
//! section 3.1), the sign-in pages at the verification URI (`/device`) and at `/authorize`
//! (a name and the groups to claim; development only), and revocation (RFC 7009).
//!
//! Everything a page echoes is HTML-escaped; `/authorize` redirects only to loopback
//! `redirect_uri`s of registered clients (RFC 8252 section 7.3) and needs PKCE S256.

use std::fmt::Write as _;
use std::time::Instant;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::http::{Resp, json_response, oauth_error_response as error_response};
use super::oauth::{Form, OAuthError};
use super::people::{AuthCode, AuthRequest, CODE_LIFETIME, DeviceStatus, check_groups, new_device_code, random};
use super::session_grants::check_people_scopes;
use super::{DevIdp, Shared, bump, lock};

/// The paths served here.
pub(super) const ROUTES: [&str; 4] = ["/device_authorization", "/device", "/authorize", "/revoke"];
/// The largest form read.
const MAX_FORM: usize = 64 * 1024;

/// Why the development provider refused a sign-in started with [`DevIdp::approve_authorization`].
#[derive(Debug, thiserror::Error)]
#[error("the development provider refused the sign-in: {0}")]
pub struct SignInRefused(String);

/// How an `/authorize` request is refused: on a page when the redirect URI cannot be trusted,
/// else by redirecting the error to it.
enum Refusal {
    Page(String),
    Redirect(String),
}

pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, title: &str, body: &str) -> Resp {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:34em;margin:2em auto;padding:0 1em}}\
         .dev{{background:#fde68a;padding:.5em;border:1px solid #b45309}}label{{display:block;margin:.4em 0}}\
         fieldset{{margin:1em 0}}</style></head><body>\
         <p class=\"dev\"><strong>cortexid development provider</strong>: for trying cortexid out only. \
         Anyone can sign in here as anyone; never use it for real accounts.</p>\
         <h1>{t}</h1>\n{body}\n</body></html>\n",
        t = escape(title)
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn redirect(location: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A `redirect_uri` the provider may send a code to: `http` on a loopback address, any port
/// (RFC 8252 sections 7.3 and 8.3), no fragment.
fn loopback_redirect(uri: &str) -> Option<url::Url> {
    let u = url::Url::parse(uri).ok()?;
    let loopback = matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    (u.scheme() == "http" && loopback && u.fragment().is_none() && u.username().is_empty()).then_some(u)
}

/// The form fields of a sign-in: name and groups (checked boxes plus the free text field).
fn claimed_groups(form: &Form) -> Result<Vec<String>, OAuthError> {
    let mut groups: Vec<String> = form.all("groups").into_iter().map(str::to_string).collect();
    if let Ok(Some(other)) = form.single("other_groups") {
        groups.extend(other.split([',', ' ']).map(str::to_string));
    }
    check_groups(&groups)
}

pub(super) async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = Form::parse(req.uri().query().unwrap_or("").as_bytes());
    let method = req.method().clone();
    let headers = req.headers().clone();
    if path == "/authorize" {
        bump(&shared.people_counters.authorize_requests);
    }
    if path == "/device_authorization" {
        bump(&shared.people_counters.device_authorizations);
        let delay = lock(&shared.people).device_authorization_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    if path == "/revoke" {
        bump(&shared.people_counters.revocations);
    }
    let form = if method == Method::POST {
        match Limited::new(req.into_body(), MAX_FORM).collect().await {
            Ok(b) => Form::parse(&b.to_bytes()),
            Err(_) => {
                return error_response(&OAuthError::invalid_request(format!(
                    "the request body is unreadable or larger than {MAX_FORM} bytes"
                )));
            }
        }
    } else {
        Form::parse(b"")
    };
    match (path.as_str(), method) {
        ("/device_authorization", Method::POST) => match shared.device_authorization(&headers, &form) {
            Ok(v) => json_response(StatusCode::OK, &v, true),
            Err(e) => error_response(&e),
        },
        ("/device", Method::GET) => shared.device_page(query.single("user_code").ok().flatten().unwrap_or("")),
        ("/device", Method::POST) => shared.device_submit(&form),
        ("/authorize", Method::GET) => match shared.authorize_request(&query) {
            Ok(request) => shared.authorize_page(request),
            Err(Refusal::Page(why)) => html(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &format!("<p>{}</p>", escape(&why)),
            ),
            Err(Refusal::Redirect(location)) => redirect(&location),
        },
        ("/authorize", Method::POST) => shared.authorize_submit(&form),
        ("/revoke", Method::POST) => match shared.revoke(&headers, &form) {
            Ok(()) => json_response(StatusCode::OK, &json!({}), true),
            Err(e) => error_response(&e),
        },
        _ => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "invalid_request", "error_description": format!("{path} does not take this method")}),
            false,
        ),
    }
}

fn form_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        Ok(())
    } else {
        Err(OAuthError::invalid_request(
            "requests must be application/x-www-form-urlencoded",
        ))
    }
}

impl Shared {
    fn device_authorization(&self, headers: &HeaderMap, form: &Form) -> Result<serde_json::Value, OAuthError> {
        form_content_type(headers)?;
        let client = self.authenticate(headers, form)?;
        let scopes = check_people_scopes(&client, form.single("scope")?)?;
        let (device_code, user_code, interval, expires_in) =
            new_device_code(&mut lock(&self.people), &client.client_id, scopes)?;
        let uri = format!("{}/device", self.issuer);
        let complete = format!("{uri}?user_code={user_code}");
        Ok(json!({
            "device_code": device_code, "user_code": user_code,
            "verification_uri": uri, "verification_uri_complete": complete,
            "expires_in": expires_in.as_secs(),
            // Whole seconds, rounded up; at least 1.
            "interval": (interval.as_secs() + u64::from(interval.subsec_nanos() > 0)).max(1),
        }))
    }

    fn groups_fieldset(&self) -> String {
        let offered = lock(&self.people).offered_groups.clone();
        let mut s = String::from("<fieldset><legend>Groups to claim</legend>");
        for g in offered {
            let g = escape(&g);
            let _ = write!(
                s,
                "<label><input type=\"checkbox\" name=\"groups\" value=\"{g}\"> {g}</label>"
            );
        }
        s.push_str(
            "<label>Other groups (separated by spaces or commas) <input name=\"other_groups\"></label></fieldset>",
        );
        s
    }

    fn device_page(&self, user_code: &str) -> Resp {
        let body = format!(
            "<p>Enter the code your terminal shows, and who you are.</p>\
             <form method=\"post\" action=\"/device\">\
             <label>Code <input name=\"user_code\" value=\"{code}\" autocomplete=\"off\" required></label>\
             <label>Your name <input name=\"name\" required></label>{groups}\
             <button name=\"action\" value=\"approve\">Sign in</button> \
             <button name=\"action\" value=\"deny\">Decline</button></form>",
            code = escape(user_code),
            groups = self.groups_fieldset()
        );
        html(StatusCode::OK, "Sign in a device", &body)
    }

    fn device_submit(&self, form: &Form) -> Resp {
        let refused = |why: &str| {
            html(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &format!("<p>{}</p>", escape(why)),
            )
        };
        let Ok(Some(code)) = form.single("user_code") else {
            return refused("enter the code your terminal shows");
        };
        let deny = form.single("action").ok().flatten() == Some("deny");
        let groups = match claimed_groups(form) {
            Ok(g) => g,
            Err(e) => return refused(&e.description),
        };
        let mut people = lock(&self.people);
        if people.pending_device(code).is_none() {
            return refused("no sign-in is waiting for this code; it may have expired or been used");
        }
        if deny {
            if let Some(d) = people.pending_device(code) {
                d.status = DeviceStatus::Denied;
            }
            return html(
                StatusCode::OK,
                "Sign-in declined",
                "<p>The device was not signed in. You can close this page.</p>",
            );
        }
        let name = form.single("name").ok().flatten().unwrap_or("");
        let sub = match people.sign_in(name, groups.clone()) {
            Ok(sub) => sub,
            Err(e) => return refused(&e.description),
        };
        if let Some(d) = people.pending_device(code) {
            d.status = DeviceStatus::Approved { sub: sub.clone() };
        }
        html(
            StatusCode::OK,
            "Signed in",
            &format!(
                "<p>Signed in as <strong>{}</strong> ({}) with groups {}. You can close this page and return to your terminal.</p>",
                escape(name.trim()),
                escape(&sub),
                escape(&groups.join(", "))
            ),
        )
    }

    /// Checks an authorization request (RFC 6749 4.1.1 with PKCE): client and loopback
    /// `redirect_uri` first (refused on a page), then the rest (refused by redirect).
    fn authorize_request(&self, q: &Form) -> Result<AuthRequest, Refusal> {
        let client_id = q
            .single("client_id")
            .ok()
            .flatten()
            .ok_or_else(|| Refusal::Page("client_id is missing".into()))?;
        let client = lock(&self.state)
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
            .cloned()
            .ok_or_else(|| Refusal::Page(format!("unknown client {client_id}")))?;
        let redirect_uri = q
            .single("redirect_uri")
            .ok()
            .flatten()
            .ok_or_else(|| Refusal::Page("redirect_uri is missing".into()))?;
        let back = loopback_redirect(redirect_uri).ok_or_else(|| {
            Refusal::Page(format!(
                "redirect_uri {redirect_uri} is not a loopback address (http://127.0.0.1:PORT/...); only native apps sign in here"
            ))
        })?;
        let state = q.single("state").ok().flatten().map(str::to_string);
        let fail = |error: &str, why: &str| {
            let mut u = back.clone();
            u.query_pairs_mut()
                .append_pair("error", error)
                .append_pair("error_description", why);
            if let Some(s) = &state {
                u.query_pairs_mut().append_pair("state", s);
            }
            Refusal::Redirect(u.into())
        };
        if q.single("response_type").ok().flatten() != Some("code") {
            return Err(fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let challenge = q.single("code_challenge").ok().flatten().unwrap_or("");
        if q.single("code_challenge_method").ok().flatten() != Some("S256")
            || challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(fail(
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method=S256",
            ));
        }
        let scopes = check_people_scopes(&client, q.single("scope").ok().flatten())
            .map_err(|e| fail("invalid_scope", &e.description))?;
        Ok(AuthRequest {
            client_id: client.client_id,
            redirect_uri: redirect_uri.to_string(),
            scopes,
            state,
            nonce: q.single("nonce").ok().flatten().map(str::to_string),
            challenge: challenge.to_string(),
            expires: Instant::now() + CODE_LIFETIME,
        })
    }

    fn authorize_page(&self, request: AuthRequest) -> Resp {
        let Ok(id) = random(16) else {
            return error_response(&OAuthError::server_error("no randomness"));
        };
        let client = request.client_id.clone();
        let scopes = request.scopes.join(" ");
        {
            let mut people = lock(&self.people);
            let now = Instant::now();
            people.requests.retain(|_, r| r.expires > now);
            people.requests.insert(id.clone(), request);
        }
        let body = format!(
            "<p>Client <code>{client}</code> asks for <code>{scopes}</code>.</p>\
             <form method=\"post\" action=\"/authorize\"><input type=\"hidden\" name=\"request\" value=\"{id}\">\
             <label>Your name <input name=\"name\" required></label>{groups}\
             <button name=\"action\" value=\"approve\">Sign in</button> \
             <button name=\"action\" value=\"deny\">Decline</button></form>",
            client = escape(&client),
            scopes = escape(&scopes),
            id = escape(&id),
            groups = self.groups_fieldset()
        );
        html(StatusCode::OK, "Sign in", &body)
    }

    fn authorize_submit(&self, form: &Form) -> Resp {
        let refused = |why: &str| {
            html(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &format!("<p>{}</p>", escape(why)),
            )
        };
        let id = form.single("request").ok().flatten().unwrap_or("");
        let request = match lock(&self.people).requests.get(id) {
            Some(r) if r.expires > Instant::now() => r.clone(),
            _ => return refused("this sign-in page has expired or was used; start the sign-in again"),
        };
        let name = form.single("name").ok().flatten().unwrap_or("");
        let approve = form.single("action").ok().flatten() != Some("deny");
        let groups = match claimed_groups(form) {
            Ok(g) => g,
            Err(e) => return refused(&e.description),
        };
        match self.finish_authorization(id, request, approve.then_some((name, groups))) {
            Ok(location) => redirect(&location),
            Err(e) => refused(&e.description),
        }
    }

    /// Ends a pending authorization: with a person, a code is issued; without, the sign-in is
    /// declined. Returns where the browser goes (the loopback `redirect_uri`).
    fn finish_authorization(
        &self,
        id: &str,
        request: AuthRequest,
        person: Option<(&str, Vec<String>)>,
    ) -> Result<String, OAuthError> {
        let mut back = url::Url::parse(&request.redirect_uri)
            .map_err(|_| OAuthError::invalid_request("the redirect_uri is not a URL"))?;
        let mut people = lock(&self.people);
        match person {
            Some((name, groups)) => {
                let sub = people.sign_in(name, groups)?;
                let code = random(32)?;
                back.query_pairs_mut().append_pair("code", &code);
                people.codes.insert(
                    code,
                    AuthCode {
                        request: request.clone(),
                        sub,
                        expires: Instant::now() + CODE_LIFETIME,
                        redeemed: None,
                    },
                );
            }
            None => {
                back.query_pairs_mut().append_pair("error", "access_denied");
            }
        }
        people.requests.remove(id);
        if let Some(s) = &request.state {
            back.query_pairs_mut().append_pair("state", s);
        }
        back.query_pairs_mut().append_pair("iss", &self.issuer);
        Ok(back.into())
    }

    fn revoke(&self, headers: &HeaderMap, form: &Form) -> Result<(), OAuthError> {
        form_content_type(headers)?;
        let client = self.authenticate(headers, form)?;
        let token = form
            .single("token")?
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let mut people = lock(&self.people);
        // RFC 7009 section 2.2: an unknown token is not an error.
        let Some(entry) = people.refresh.get(token) else {
            return Ok(());
        };
        if entry.client_id != client.client_id {
            return Err(OAuthError::new(
                "unauthorized_client",
                "the token was issued to another client",
            ));
        }
        let grant = entry.grant.clone();
        if let Some(g) = people.grants.get_mut(&grant) {
            g.revoked = true;
        }
        Ok(())
    }
}

impl DevIdp {
    /// Completes a browser sign-in without a browser: checks `authorization_url` as `/authorize`
    /// does, signs in `name` with `groups` as the page would, and returns the URL the browser
    /// would be sent to (the loopback `redirect_uri` with `code` and `state`, or with `error`).
    pub fn approve_authorization<S: AsRef<str>>(
        &self,
        authorization_url: &str,
        name: &str,
        groups: &[S],
    ) -> Result<String, SignInRefused> {
        bump(&self.shared.people_counters.authorize_requests);
        let url = url::Url::parse(authorization_url).map_err(|e| SignInRefused(format!("not a URL: {e}")))?;
        let query = Form::parse(url.query().unwrap_or("").as_bytes());
        let request = match self.shared.authorize_request(&query) {
            Ok(r) => r,
            Err(Refusal::Page(why)) => return Err(SignInRefused(why)),
            Err(Refusal::Redirect(location)) => return Ok(location),
        };
        let groups = check_groups(groups).map_err(|e| SignInRefused(e.description))?;
        self.shared
            .finish_authorization("", request, Some((name, groups)))
            .map_err(|e| SignInRefused(e.description))
    }
}
