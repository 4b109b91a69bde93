//! The people grants at the token endpoint: device code polls (RFC 8628 section 3.5), the
//! authorization code with PKCE S256 (RFC 7636), and rotating refresh tokens (a replayed one
//! revokes its grant, as OAuth 2.0 Security BCP section 4.14 recommends).

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::oauth::{Form, OAuthError};
use super::people::{DeviceStatus, PEOPLE_SCOPES};
use super::{DevClient, Shared, bump, lock};

/// Scopes a client may ask for in a sign-in: the people scopes and its registered ones.
pub(super) fn check_people_scopes(client: &DevClient, scope: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = Vec::new();
    for s in scope.unwrap_or("").split_whitespace() {
        if !PEOPLE_SCOPES.contains(&s) && !client.scopes.iter().any(|x| x == s) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("scope {s} is not allowed for client {}", client.client_id),
            ));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    Ok(scopes)
}

impl Shared {
    pub(super) fn device_code_grant(&self, client: &DevClient, form: &Form) -> Result<Value, OAuthError> {
        bump(&self.people_counters.device_polls);
        let code = form
            .single("device_code")?
            .ok_or_else(|| OAuthError::invalid_request("device_code is required"))?;
        let now = Instant::now();
        let (sub, scopes) = {
            let mut people = lock(&self.people);
            let i = people
                .devices
                .iter()
                .position(|d| d.device_code == code && d.client_id == client.client_id)
                .ok_or_else(|| OAuthError::invalid_grant("unknown device_code"))?;
            let base = people.device_interval;
            let d = &mut people.devices[i];
            if d.expires <= now {
                people.devices.remove(i);
                return Err(OAuthError::new(
                    "expired_token",
                    "the device code has expired; start again",
                ));
            }
            let too_soon = d.last_poll.is_some_and(|last| now.duration_since(last) < d.interval);
            d.last_poll = Some(now);
            if too_soon {
                d.interval += base.max(std::time::Duration::from_millis(1));
                return Err(OAuthError::new(
                    "slow_down",
                    format!("polled faster than the interval; wait {} ms", d.interval.as_millis()),
                ));
            }
            match d.status.clone() {
                DeviceStatus::Pending => {
                    return Err(OAuthError::new(
                        "authorization_pending",
                        "the person has not signed in yet",
                    ));
                }
                DeviceStatus::Denied => {
                    people.devices.remove(i);
                    return Err(OAuthError::new("access_denied", "the person declined the sign-in"));
                }
                DeviceStatus::Approved { sub } => {
                    let d = people.devices.remove(i);
                    (sub, d.scopes)
                }
            }
        };
        let grant = self.new_grant(&client.client_id, &sub, &scopes)?;
        self.issue_session(&grant, &scopes, None)
    }

    pub(super) fn authorization_code_grant(&self, client: &DevClient, form: &Form) -> Result<Value, OAuthError> {
        bump(&self.people_counters.code_redemptions);
        let code = form
            .single("code")?
            .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
        let redirect_uri = form
            .single("redirect_uri")?
            .ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
        let verifier = form
            .single("code_verifier")?
            .ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
        let (request, grant) = {
            let mut people = lock(&self.people);
            let entry = people
                .codes
                .get_mut(code)
                .ok_or_else(|| OAuthError::invalid_grant("unknown authorization code"))?;
            if let Some(grant) = entry.redeemed.clone() {
                // A code used twice: someone else has it. End what the first use started.
                if let Some(g) = people.grants.get_mut(&grant) {
                    g.revoked = true;
                }
                return Err(OAuthError::invalid_grant(
                    "the authorization code was already used; the sign-in made with it is revoked",
                ));
            }
            if entry.request.client_id != client.client_id {
                return Err(OAuthError::invalid_grant(
                    "the authorization code was issued to another client",
                ));
            }
            if entry.expires <= Instant::now() {
                return Err(OAuthError::invalid_grant("the authorization code has expired"));
            }
            if entry.request.redirect_uri != redirect_uri {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri does not match the one of the authorization request",
                ));
            }
            let valid_verifier = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
            if !valid_verifier || URL_SAFE_NO_PAD.encode(digest.as_ref()) != entry.request.challenge {
                return Err(OAuthError::invalid_grant(
                    "code_verifier does not match the code_challenge (PKCE S256)",
                ));
            }
            let (sub, request) = (entry.sub.clone(), entry.request.clone());
            let grant = super::people::add_grant(&mut people, &client.client_id, &sub, &request.scopes)?;
            if let Some(entry) = people.codes.get_mut(code) {
                entry.redeemed = Some(grant.clone());
            }
            (request, grant)
        };
        self.issue_session(&grant, &request.scopes, request.nonce.as_deref())
    }

    pub(super) fn refresh_grant(&self, client: &DevClient, form: &Form) -> Result<Value, OAuthError> {
        bump(&self.people_counters.refreshes);
        let token = form
            .single("refresh_token")?
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let (grant_id, scopes) = {
            let mut people = lock(&self.people);
            let entry = people
                .refresh
                .get_mut(token)
                .ok_or_else(|| OAuthError::invalid_grant("unknown refresh token"))?;
            if entry.client_id != client.client_id {
                return Err(OAuthError::invalid_grant(
                    "the refresh token was issued to another client",
                ));
            }
            let grant_id = entry.grant.clone();
            if entry.spent {
                if let Some(g) = people.grants.get_mut(&grant_id) {
                    g.revoked = true;
                }
                return Err(OAuthError::invalid_grant(
                    "the refresh token was already used (it rotates); the sign-in is revoked",
                ));
            }
            let grant = people
                .grants
                .get(&grant_id)
                .ok_or_else(|| OAuthError::invalid_grant("the sign-in of this refresh token is gone"))?;
            if grant.revoked {
                return Err(OAuthError::invalid_grant(
                    "the sign-in of this refresh token was revoked",
                ));
            }
            let asked = check_people_scopes(client, form.single("scope")?)?;
            for s in &asked {
                if !grant.scopes.contains(s) {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!("scope {s} was not granted at sign-in"),
                    ));
                }
            }
            let scopes = if asked.is_empty() { grant.scopes.clone() } else { asked };
            // offline_access stays, or the session could not be refreshed again.
            let mut scopes = scopes;
            if grant.scopes.iter().any(|s| s == "offline_access") && !scopes.iter().any(|s| s == "offline_access") {
                scopes.push("offline_access".into());
            }
            // Spent only now: a refused request (a scope too many) leaves it usable.
            if let Some(entry) = people.refresh.get_mut(token) {
                entry.spent = true;
            }
            (grant_id, scopes)
        };
        self.issue_session(&grant_id, &scopes, None)
    }
}
