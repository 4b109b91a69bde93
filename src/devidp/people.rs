//! People at the development provider: who signed in (name, derived `sub`, email, groups),
//! pending device and authorization codes, refresh tokens and the grants they belong to, the
//! tokens a sign-in or refresh issues, and the controls tests use (change a person's groups,
//! revoke their grants, approve a device code without the page, count requests).
//!
//! The HTTP side (device authorization, the sign-in pages, revocation) is in `signin`; the
//! token endpoint's people grants in `session_grants`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::oauth::OAuthError;
use super::{DevIdp, Shared, bump, lock, unix_now};
use crate::oauth::TOKEN_TYPE_BEARER;

/// The scopes every client may ask for in a sign-in, besides its registered ones.
pub(super) const PEOPLE_SCOPES: [&str; 5] = ["openid", "profile", "email", "groups", "offline_access"];
/// How long device codes are valid.
const DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(600);
/// How long an authorization code (and a sign-in page) is valid.
pub(super) const CODE_LIFETIME: Duration = Duration::from_secs(120);
/// The groups the sign-in page offers unless [`DevIdp::set_offered_groups`] says otherwise.
const OFFERED_GROUPS: [&str; 3] = ["developers", "payments", "admins"];

/// A person as the provider knows them.
#[derive(Clone, Debug)]
pub(super) struct Person {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DeviceStatus {
    Pending,
    Approved { sub: String },
    Denied,
}

pub(super) struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub expires: Instant,
    /// The interval a poll must keep now (grows with each `slow_down`).
    pub interval: Duration,
    pub last_poll: Option<Instant>,
    pub status: DeviceStatus,
}

/// A `/authorize` request whose sign-in page is shown, waiting for the person.
#[derive(Clone, Debug)]
pub(super) struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub challenge: String,
    pub expires: Instant,
}

pub(super) struct AuthCode {
    pub request: AuthRequest,
    pub sub: String,
    pub expires: Instant,
    /// The grant its redemption started; a second redemption revokes it (RFC 6749 4.1.2).
    pub redeemed: Option<String>,
}

pub(super) struct RefreshEntry {
    pub client_id: String,
    pub grant: String,
    /// Rotated away: presenting it again is a replay, which revokes the grant.
    pub spent: bool,
}

/// One sign-in and everything refreshed from it (`sid` in the tokens).
pub(super) struct Grant {
    pub client_id: String,
    pub sub: String,
    pub scopes: Vec<String>,
    pub auth_time: u64,
    pub revoked: bool,
}

pub(super) struct PeopleState {
    pub people: HashMap<String, Person>,
    pub devices: Vec<DeviceCode>,
    pub requests: HashMap<String, AuthRequest>,
    pub codes: HashMap<String, AuthCode>,
    pub refresh: HashMap<String, RefreshEntry>,
    pub grants: HashMap<String, Grant>,
    /// The interval device codes start with; may be under a second for tests (the answer's
    /// `interval` is then 1).
    pub device_interval: Duration,
    pub offered_groups: Vec<String>,
    /// How long the device authorization endpoint waits before it answers (tests: a slow
    /// provider).
    pub device_authorization_delay: Duration,
}

impl Default for PeopleState {
    fn default() -> Self {
        PeopleState {
            people: HashMap::new(),
            devices: Vec::new(),
            requests: HashMap::new(),
            codes: HashMap::new(),
            refresh: HashMap::new(),
            grants: HashMap::new(),
            device_interval: Duration::from_secs(5),
            device_authorization_delay: Duration::ZERO,
            offered_groups: OFFERED_GROUPS.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// People requests seen since start (or the last [`DevIdp::reset_counters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeopleCounters {
    /// Requests to the device authorization endpoint.
    pub device_authorizations: u64,
    /// Device code polls at the token endpoint (pending, slow_down and granted alike).
    pub device_polls: u64,
    /// Requests to `/authorize` (the page, the form's submission, and the test control).
    pub authorize_requests: u64,
    /// Authorization codes presented at the token endpoint.
    pub code_redemptions: u64,
    /// Refresh grant requests, refused ones included.
    pub refreshes: u64,
    /// Requests to the revocation endpoint.
    pub revocations: u64,
    /// Sign-ins and refreshes that issued tokens.
    pub sessions_issued: u64,
}

#[derive(Default)]
pub(super) struct AtomicPeopleCounters {
    pub device_authorizations: AtomicU64,
    pub device_polls: AtomicU64,
    pub authorize_requests: AtomicU64,
    pub code_redemptions: AtomicU64,
    pub refreshes: AtomicU64,
    pub revocations: AtomicU64,
    pub sessions_issued: AtomicU64,
}

impl AtomicPeopleCounters {
    fn all(&self) -> [&AtomicU64; 7] {
        [
            &self.device_authorizations,
            &self.device_polls,
            &self.authorize_requests,
            &self.code_redemptions,
            &self.refreshes,
            &self.revocations,
            &self.sessions_issued,
        ]
    }
}

/// The `sub` the development provider gives a person's name: lower case, runs of anything but
/// letters and digits become one `-`. `None` when nothing is left.
pub fn person_sub(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty() && out.len() <= 64).then_some(out)
}

/// The email of a person at the development provider.
fn email(sub: &str) -> String {
    format!("{sub}@example.com")
}

/// Checks names of groups to claim: short, printable, no spaces.
pub(super) fn check_groups<S: AsRef<str>>(groups: &[S]) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for g in groups {
        let g = g.as_ref().trim();
        if g.is_empty() {
            continue;
        }
        if g.len() > 64
            || !g
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
        {
            return Err(OAuthError::invalid_request(format!(
                "group {g:?} is not a group name (letters, digits and . _ - : / @, at most 64)"
            )));
        }
        if !out.iter().any(|x| x == g) {
            out.push(g.to_string());
        }
    }
    Ok(out)
}

pub(super) fn random(bytes: usize) -> Result<String, OAuthError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| OAuthError::server_error("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A user code like `BCDF-GHJK`, from letters that spell no words and cannot be confused.
pub(super) fn user_code() -> Result<String, OAuthError> {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut buf = [0u8; 8];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| OAuthError::server_error("no randomness"))?;
    let mut code = String::with_capacity(9);
    for (i, b) in buf.iter().enumerate() {
        if i == 4 {
            code.push('-');
        }
        code.push(LETTERS[usize::from(*b) % LETTERS.len()] as char);
    }
    Ok(code)
}

/// A user code as typed: upper case, without the dash and spaces.
pub(super) fn normalize_user_code(c: &str) -> String {
    c.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl PeopleState {
    /// Records a sign-in by `name` claiming `groups`; returns the person's `sub`.
    pub(super) fn sign_in(&mut self, name: &str, groups: Vec<String>) -> Result<String, OAuthError> {
        let name = name.trim();
        if name.chars().any(char::is_control) || name.len() > 128 {
            return Err(OAuthError::invalid_request(
                "the name must be printable and at most 128 bytes",
            ));
        }
        let sub = person_sub(name).ok_or_else(|| OAuthError::invalid_request("enter a name with letters or digits"))?;
        self.people.insert(
            sub.clone(),
            Person {
                name: name.to_string(),
                groups,
            },
        );
        Ok(sub)
    }

    pub(super) fn pending_device(&mut self, user_code: &str) -> Option<&mut DeviceCode> {
        let want = normalize_user_code(user_code);
        let now = Instant::now();
        self.devices
            .iter_mut()
            .find(|d| normalize_user_code(&d.user_code) == want && d.status == DeviceStatus::Pending && d.expires > now)
    }
}

impl Shared {
    /// Signs the tokens of a sign-in or refresh of `grant`: an access token (`sub` the person,
    /// `aud` the client, `sid` the grant), an ID token when `openid` was asked for, and a new
    /// refresh token when `offline_access` was. `nonce` goes into the ID token.
    pub(super) fn issue_session(
        &self,
        grant_id: &str,
        scopes: &[String],
        nonce: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let (client_id, sub, auth_time, person) = {
            let people = lock(&self.people);
            let grant = people
                .grants
                .get(grant_id)
                .ok_or_else(|| OAuthError::server_error("unknown grant"))?;
            let person = people
                .people
                .get(&grant.sub)
                .cloned()
                .ok_or_else(|| OAuthError::invalid_grant("the person of this grant is unknown"))?;
            (grant.client_id.clone(), grant.sub.clone(), grant.auth_time, person)
        };
        let refresh_token = if scopes.iter().any(|s| s == "offline_access") {
            let token = random(32)?;
            lock(&self.people).refresh.insert(
                token.clone(),
                RefreshEntry {
                    client_id: client_id.clone(),
                    grant: grant_id.to_string(),
                    spent: false,
                },
            );
            Some(token)
        } else {
            None
        };
        let now = unix_now();
        let scope = scopes.join(" ");
        let st = lock(&self.state);
        let lifetime = st.token_lifetime.as_secs();
        let key = st
            .keys
            .last()
            .ok_or_else(|| OAuthError::server_error("the provider has no signing key"))?;
        let access = json!({
            "iss": self.issuer, "sub": sub, "aud": client_id, "client_id": client_id, "scope": scope,
            "iat": now, "nbf": now, "exp": now + lifetime, "jti": random(16)?, "sid": grant_id,
        });
        let access_token = key
            .sign_typed("at+jwt", &access)
            .map_err(|e| OAuthError::server_error(format!("could not sign the access token: {e}")))?;
        let mut resp = json!({
            "access_token": access_token, "token_type": TOKEN_TYPE_BEARER, "expires_in": lifetime, "scope": scope,
        });
        if scopes.iter().any(|s| s == "openid") {
            let mut id = Map::new();
            id.insert("iss".into(), json!(self.issuer));
            id.insert("sub".into(), json!(sub));
            id.insert("aud".into(), json!(client_id));
            id.insert("azp".into(), json!(client_id));
            id.insert("iat".into(), json!(now));
            id.insert("exp".into(), json!(now + lifetime));
            id.insert("auth_time".into(), json!(auth_time));
            id.insert("sid".into(), json!(grant_id));
            if let Some(n) = nonce {
                id.insert("nonce".into(), json!(n));
            }
            id.insert("name".into(), json!(person.name));
            id.insert("email".into(), json!(email(&sub)));
            id.insert("email_verified".into(), json!(true));
            id.insert("groups".into(), json!(person.groups));
            let id_token = key
                .sign(&Value::Object(id))
                .map_err(|e| OAuthError::server_error(format!("could not sign the ID token: {e}")))?;
            resp["id_token"] = Value::String(id_token);
        }
        if let Some(r) = refresh_token {
            resp["refresh_token"] = Value::String(r);
        }
        drop(st);
        bump(&self.people_counters.sessions_issued);
        Ok(resp)
    }

    /// Starts a grant for `sub` at `client_id` with `scopes`; returns its id.
    pub(super) fn new_grant(&self, client_id: &str, sub: &str, scopes: &[String]) -> Result<String, OAuthError> {
        add_grant(&mut lock(&self.people), client_id, sub, scopes)
    }

    /// A subject token whose `sid` names a revoked grant is refused, as providers that check
    /// sessions in token exchange do.
    pub(super) fn session_alive(&self, claims: &Map<String, Value>, what: &str) -> Result<(), OAuthError> {
        let Some(sid) = claims.get("sid").and_then(Value::as_str) else {
            return Ok(());
        };
        match lock(&self.people).grants.get(sid) {
            Some(g) if g.revoked => Err(OAuthError::invalid_grant(format!(
                "{what} belongs to a sign-in that was revoked"
            ))),
            _ => Ok(()),
        }
    }
}

impl DevIdp {
    /// The people counters.
    pub fn people_counters(&self) -> PeopleCounters {
        let c = &self.shared.people_counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeopleCounters {
            device_authorizations: get(&c.device_authorizations),
            device_polls: get(&c.device_polls),
            authorize_requests: get(&c.authorize_requests),
            code_redemptions: get(&c.code_redemptions),
            refreshes: get(&c.refreshes),
            revocations: get(&c.revocations),
            sessions_issued: get(&c.sessions_issued),
        }
    }

    pub(super) fn reset_people_counters(&self) {
        for c in self.shared.people_counters.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Changes the groups of a person (by name or `sub`); the next ID token (a refresh's)
    /// shows them. Returns false for a person who never signed in.
    pub fn set_groups<S: AsRef<str>>(&self, person: &str, groups: &[S]) -> bool {
        let Some(sub) = person_sub(person) else {
            return false;
        };
        let Ok(groups) = check_groups(groups) else {
            return false;
        };
        match lock(&self.shared.people).people.get_mut(&sub) {
            Some(p) => {
                p.groups = groups;
                true
            }
            None => false,
        }
    }

    /// Revokes every grant of a person (by name or `sub`): their refresh tokens are refused
    /// (`invalid_grant`) and their session tokens no longer work as subject tokens. Returns
    /// how many grants were revoked.
    pub fn revoke_person(&self, person: &str) -> usize {
        let Some(sub) = person_sub(person) else {
            return 0;
        };
        let mut people = lock(&self.shared.people);
        let mut n = 0;
        for g in people.grants.values_mut().filter(|g| g.sub == sub && !g.revoked) {
            g.revoked = true;
            n += 1;
        }
        n
    }

    /// Approves a pending device code as `name` claiming `groups`, as the sign-in page does.
    /// Returns false when no pending, unexpired code has this user code (or the name or a
    /// group is unusable).
    pub fn approve_device<S: AsRef<str>>(&self, user_code: &str, name: &str, groups: &[S]) -> bool {
        let Ok(groups) = check_groups(groups) else {
            return false;
        };
        let mut people = lock(&self.shared.people);
        if people.pending_device(user_code).is_none() {
            return false;
        }
        let Ok(sub) = people.sign_in(name, groups) else {
            return false;
        };
        match people.pending_device(user_code) {
            Some(d) => {
                d.status = DeviceStatus::Approved { sub };
                true
            }
            None => false,
        }
    }

    /// Declines a pending device code, as the page's "Decline" does.
    pub fn deny_device(&self, user_code: &str) -> bool {
        match lock(&self.shared.people).pending_device(user_code) {
            Some(d) => {
                d.status = DeviceStatus::Denied;
                true
            }
            None => false,
        }
    }

    /// The user codes of device sign-ins waiting for a person.
    pub fn pending_user_codes(&self) -> Vec<String> {
        let now = Instant::now();
        lock(&self.shared.people)
            .devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Pending && d.expires > now)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// Makes every device code expire now (polls then get `expired_token`).
    pub fn expire_device_codes(&self) {
        let now = Instant::now();
        for d in lock(&self.shared.people).devices.iter_mut() {
            d.expires = now;
        }
    }

    /// The polling interval of new device codes (5 s by default). Under a second is allowed
    /// for tests: the answer then says 1, and polls closer than this get `slow_down`, which
    /// adds this much again to the code's interval.
    pub fn set_device_interval(&self, interval: Duration) {
        lock(&self.shared.people).device_interval = interval;
    }

    /// Makes the device authorization endpoint answer only after `delay`, as a provider far away
    /// does.
    pub fn set_device_authorization_delay(&self, delay: Duration) {
        lock(&self.shared.people).device_authorization_delay = delay;
    }

    /// The groups the sign-in page offers as checkboxes.
    pub fn set_offered_groups<S: AsRef<str>>(&self, groups: &[S]) {
        lock(&self.shared.people).offered_groups = groups.iter().map(|g| g.as_ref().to_string()).collect();
    }

    /// `{issuer}/device`, where people enter a user code.
    pub fn verification_uri(&self) -> String {
        format!("{}/device", self.shared.issuer)
    }
}

/// Starts a grant for `sub` at `client_id` with `scopes`; returns its id (`sid`).
pub(super) fn add_grant(
    people: &mut PeopleState,
    client_id: &str,
    sub: &str,
    scopes: &[String],
) -> Result<String, OAuthError> {
    let id = random(12)?;
    people.grants.insert(
        id.clone(),
        Grant {
            client_id: client_id.to_string(),
            sub: sub.to_string(),
            scopes: scopes.to_vec(),
            auth_time: unix_now(),
            revoked: false,
        },
    );
    Ok(id)
}

/// A new device code for `client_id` with `scopes`, kept pending.
pub(super) fn new_device_code(
    people: &mut PeopleState,
    client_id: &str,
    scopes: Vec<String>,
) -> Result<(String, String, Duration, Duration), OAuthError> {
    let device_code = random(32)?;
    let user_code = user_code()?;
    let now = Instant::now();
    people.devices.retain(|d| d.expires + DEVICE_CODE_LIFETIME > now);
    let interval = people.device_interval;
    people.devices.push(DeviceCode {
        device_code: device_code.clone(),
        user_code: user_code.clone(),
        client_id: client_id.to_string(),
        scopes,
        expires: now + DEVICE_CODE_LIFETIME,
        interval,
        last_poll: None,
        status: DeviceStatus::Pending,
    });
    Ok((device_code, user_code, interval, DEVICE_CODE_LIFETIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subs_come_from_names_and_codes_are_easy_to_type() {
        assert_eq!(person_sub("Alice Smith").as_deref(), Some("alice-smith"));
        assert_eq!(person_sub("  bob  ").as_deref(), Some("bob"));
        assert_eq!(person_sub("<script>x</script>").as_deref(), Some("script-x-script"));
        assert_eq!(person_sub("--- "), None);
        let c = user_code().unwrap();
        assert_eq!(c.len(), 9);
        assert_eq!(&c[4..5], "-");
        assert_eq!(
            normalize_user_code(&c.to_lowercase().replace('-', " ")),
            c.replace('-', "")
        );
        assert!(check_groups(&["payments", " ", "payments", "team:a"]).unwrap() == vec!["payments", "team:a"]);
        assert!(check_groups(&["bad group"]).is_err());
        assert!(check_groups(&["<b>"]).is_err());
    }
}
