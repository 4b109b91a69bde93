//! Roles: who the caller is (and the claims of a credential it presented) → which identities,
//! audiences and scopes it may request. Default deny.
//!
//! A caller's rights are the union of the grants of every role that matches it; one request is
//! served under one role, the first (in file order) that allows the identity, the audience and
//! every requested scope together, so that a request never combines an audience from one role
//! with a scope from another.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use super::executable::{executables_mismatch, sha256_mismatch};
use super::login::{Sessions, session_need};
use crate::caller::Caller;
use crate::config::{Config, IdentitySettings, Role};
use crate::error::{ApiError, ErrorKind};

/// What a caller asked for.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub identity: Option<&'a str>,
    pub audience: Option<&'a str>,
    /// Requested scopes, sorted and without duplicates.
    pub scopes: &'a BTreeSet<String>,
}

/// A decision to serve: under which role, for which identity, audience and scopes.
#[derive(Debug, Clone)]
pub struct Grant {
    pub role: Arc<Role>,
    pub identity: Arc<IdentitySettings>,
    pub audience: String,
    pub scopes: BTreeSet<String>,
}

/// One entry of `/v1/identities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityView {
    pub name: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub agent: bool,
}

/// Why a role did not match: the first condition that failed, in words.
fn mismatch(role: &Role, caller: &Caller, claims: Option<&serde_json::Value>, sessions: &Sessions) -> Option<String> {
    mismatch_with(role, caller, claims.map_or(Claims::Absent, Claims::Verified), sessions)
}

/// What is known of a presented credential's claims when a role is matched.
#[derive(Clone, Copy)]
enum Claims<'a> {
    /// No credential was presented.
    Absent,
    /// The claims of a verified credential.
    Verified(&'a serde_json::Value),
    /// A credential was presented and is not verified yet: claim conditions are not decided.
    Unverified,
}

fn mismatch_with(role: &Role, caller: &Caller, claims: Claims<'_>, sessions: &Sessions) -> Option<String> {
    if let Some(why) = super::pod::pod_mismatch(role, caller) {
        return Some(why);
    }
    if let Some(uids) = &role.uids
        && !uids.contains(&caller.uid)
    {
        return Some(format!(
            "role {:?} needs uid in {:?}, caller has uid {}",
            role.name, uids, caller.uid
        ));
    }
    if let Some(gids) = &role.gids
        && !gids.iter().any(|g| caller.in_group(*g))
    {
        return Some(format!(
            "role {:?} needs one of the groups {:?}, caller is in gid {}{}",
            role.name,
            gids,
            caller.gid,
            if caller.groups.is_empty() {
                String::new()
            } else {
                format!(" and {:?}", caller.groups)
            }
        ));
    }
    if let Some(units) = &role.units {
        match &caller.unit {
            Some(unit) if units.iter().any(|u| u == unit) => {}
            Some(unit) => {
                return Some(format!(
                    "role {:?} needs unit in {:?}, caller runs in {unit}",
                    role.name, units
                ));
            }
            None if caller.unreadable.is_some() => {
                return Some(format!(
                    "role {:?} needs unit in {:?}, and the caller's unit could not be read",
                    role.name, units
                ));
            }
            None => {
                return Some(format!(
                    "role {:?} needs unit in {:?}, and the caller runs in no systemd unit",
                    role.name, units
                ));
            }
        }
    }
    if let Some(units) = &role.user_units {
        match &caller.user_unit {
            Some(unit) if units.iter().any(|u| u == unit) => {}
            Some(unit) => {
                return Some(format!(
                    "role {:?} needs user unit in {:?}, caller runs in user unit {unit}",
                    role.name, units
                ));
            }
            None => {
                return Some(format!(
                    "role {:?} needs user unit in {:?}, caller runs in no user's systemd (unit {})",
                    role.name,
                    units,
                    caller.unit.as_deref().unwrap_or("unknown")
                ));
            }
        }
    }
    if let Some(exes) = &role.executables
        && let Some(why) = executables_mismatch(role, exes, caller)
    {
        return Some(why);
    }
    // With `login`, claims are the session's (policy/login.rs), not a presented credential's.
    if let Some(conds) = role.claims.as_ref().filter(|_| role.login.is_none())
        && let Some(why) = claims_mismatch(role, conds, claims)
    {
        return Some(why);
    }
    if let Some(need) = session_need(role, sessions) {
        return Some(match need {
            super::login::SessionNeed::Login(l) => format!("role {:?} needs a session at login {l:?}", role.name),
            super::login::SessionNeed::Claims(why) => why,
        });
    }
    // Last: the only condition that may read a file (once per version of it).
    if let Some(digests) = &role.executable_sha256 {
        return sha256_mismatch(role, digests, caller);
    }
    None
}

/// Why the presented credential does not satisfy the role's claim conditions `conds`, or
/// `None` when it does (or is not verified yet, so they are not decided).
fn claims_mismatch(
    role: &Role,
    conds: &std::collections::BTreeMap<String, Vec<String>>,
    claims: Claims<'_>,
) -> Option<String> {
    let claims = match claims {
        Claims::Verified(claims) => claims,
        Claims::Unverified => return None,
        Claims::Absent => {
            return Some(format!(
                "role {:?} needs a presented credential with claims {:?}",
                role.name, conds
            ));
        }
    };
    first_unmet_claim(claims, conds).map(|(path, accepted, seen)| {
        format!(
            "role {:?} needs claim {path} in {:?}, the credential has {seen}",
            role.name, accepted
        )
    })
}

/// The first of `conds` that `claims` do not meet: its path, the values it accepts, and what
/// `claims` hold there (`nothing` when absent).
pub(super) fn first_unmet_claim<'c>(
    claims: &serde_json::Value,
    conds: &'c std::collections::BTreeMap<String, Vec<String>>,
) -> Option<(&'c str, &'c [String], String)> {
    let (path, accepted) = conds
        .iter()
        .find(|(path, accepted)| !claim_matches(claims, path, accepted))?;
    let seen = lookup_claim(claims, path)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "nothing".into());
    Some((path, accepted, seen))
}

/// Looks up a claim by a dotted path (`tenant.id`); a key that itself contains dots is found too.
pub(super) fn lookup_claim<'v>(claims: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    lookup_claim(claims.get(head)?, rest)
}

/// A claim matches when it equals one of the accepted values, or is a list containing one.
pub(super) fn claim_matches(claims: &serde_json::Value, path: &str, accepted: &[String]) -> bool {
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => accepted.iter().any(|a| a == s),
        serde_json::Value::Number(n) => accepted.iter().any(|a| *a == n.to_string()),
        serde_json::Value::Bool(b) => accepted.iter().any(|a| *a == b.to_string()),
        _ => false,
    };
    match lookup_claim(claims, path) {
        Some(serde_json::Value::Array(items)) => items.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}

/// The roles that match a caller, in file order.
pub(crate) fn matching_roles<'c>(
    config: &'c Config,
    caller: &Caller,
    claims: Option<&serde_json::Value>,
    sessions: &Sessions,
) -> Vec<&'c Arc<Role>> {
    config
        .roles
        .iter()
        .filter(|r| mismatch(r, caller, claims, sessions).is_none())
        .collect()
}

/// Whether `role` admits the caller on every condition but its session and claims.
pub(super) fn admits_but_session(role: &Role, caller: &Caller) -> bool {
    mismatch_with(role, caller, Claims::Unverified, &Sessions::undecided()).is_none()
}

/// The audiences a role allows for an identity.
fn role_audiences<'a>(role: &'a Role, identity: &'a IdentitySettings) -> impl Iterator<Item = &'a String> {
    identity
        .audiences
        .iter()
        .filter(move |a| role.audiences.as_ref().is_none_or(|narrow| narrow.contains(a)))
}

/// The scopes a role allows for an identity: the identity's ceiling, narrowed by the role; agent
/// roles get only what they list.
fn role_scopes<'a>(role: &'a Role, identity: &'a IdentitySettings) -> impl Iterator<Item = &'a String> {
    identity.scopes.iter().filter(move |s| match &role.scopes {
        Some(narrow) => narrow.contains(s),
        None => !role.agent,
    })
}

/// What `/v1/identities` shows this caller.
pub(crate) fn identities_for(
    config: &Config,
    caller: &Caller,
    claims: Option<&serde_json::Value>,
    sessions: &Sessions,
) -> Vec<IdentityView> {
    let roles = matching_roles(config, caller, claims, sessions);
    let mut out: Vec<IdentityView> = Vec::new();
    for identity in &config.identities {
        let granting: Vec<_> = roles.iter().filter(|r| r.identities.contains(&identity.name)).collect();
        if granting.is_empty() {
            continue;
        }
        let mut audiences: Vec<String> = Vec::new();
        let mut scopes: Vec<String> = Vec::new();
        for role in &granting {
            for a in role_audiences(role, identity) {
                if !audiences.contains(a) {
                    audiences.push(a.clone());
                }
            }
            for s in role_scopes(role, identity) {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
        out.push(IdentityView {
            name: identity.name.clone(),
            audiences,
            scopes,
            agent: granting.iter().all(|r| r.agent),
        });
    }
    out
}

/// Whether some role for `identity` admits the caller on everything but the claims of a
/// presented credential (which are not verified yet): if none does, the credential need not be
/// checked at all.
pub(crate) fn could_admit(config: &Config, caller: &Caller, identity: &str) -> bool {
    config
        .roles
        .iter()
        .filter(|r| r.identities.iter().any(|i| i == identity))
        .any(|r| mismatch_with(r, caller, Claims::Unverified, &Sessions::undecided()).is_none())
}

/// Whether the caller is one of `[agent] operators`, who see the agent's details.
pub(crate) fn is_operator(config: &Config, caller: &Caller) -> bool {
    config.agent.operators.include(caller.uid, |g| caller.in_group(g))
}

/// Decides a token request for a caller with no sessions.
#[cfg(test)]
pub(crate) fn authorize(
    config: &Config,
    caller: &Caller,
    claims: Option<&serde_json::Value>,
    ask: &Ask<'_>,
) -> Result<Grant, ApiError> {
    authorize_with(config, caller, claims, &Sessions::none(), ask)
}

/// Decides a token request. Default deny: no matching role, no token.
pub(crate) fn authorize_with(
    config: &Config,
    caller: &Caller,
    claims: Option<&serde_json::Value>,
    sessions: &Sessions,
    ask: &Ask<'_>,
) -> Result<Grant, ApiError> {
    if let Some(name) = ask.identity
        && config.identity(name).is_none()
    {
        return Err(ApiError::new(
            ErrorKind::UnknownIdentity,
            format!("no identity named {name:?} is configured on this agent"),
        ));
    }
    let roles = matching_roles(config, caller, claims, sessions);
    let near_misses = |identity: Option<&str>| -> String {
        let misses: Vec<String> = config
            .roles
            .iter()
            .filter(|r| identity.is_none_or(|i| r.identities.iter().any(|x| x == i)))
            .filter_map(|r| mismatch(r, caller, claims, sessions))
            .collect();
        if misses.is_empty() {
            String::new()
        } else {
            format!("; {}", misses.join("; "))
        }
    };
    if roles.is_empty() {
        return Err(ApiError::access_denied(format!(
            "no role matches the caller ({}){}",
            caller.describe(),
            near_misses(ask.identity)
        )));
    }

    let allowed: Vec<&str> = config
        .identities
        .iter()
        .filter(|i| roles.iter().any(|r| r.identities.contains(&i.name)))
        .map(|i| i.name.as_str())
        .collect();
    let identity_name = match ask.identity {
        Some(name) if allowed.contains(&name) => name,
        Some(name) => {
            return Err(ApiError::access_denied(format!(
                "no role lets the caller ({}) use identity {name:?}{}",
                caller.describe(),
                near_misses(Some(name))
            )));
        }
        None => match allowed.as_slice() {
            [only] => only,
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "this caller may use several identities; say which with identity=NAME (one of: {})",
                    allowed.join(", ")
                )));
            }
        },
    };
    let identity = config.identity(identity_name).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorKind::UnknownIdentity,
            format!("no identity named {identity_name:?}"),
        )
    })?;
    let granting: Vec<&Arc<Role>> = roles
        .into_iter()
        .filter(|r| r.identities.iter().any(|i| i == identity_name))
        .collect();

    // The hot path (an allowed audience and scopes) checks membership only; the deduplicated
    // lists are built when the answer needs them (no audience given, or a refusal that names
    // what is allowed). Identities may list hundreds of audiences.
    let all_audiences = || {
        let mut audiences: Vec<&String> = Vec::new();
        for role in &granting {
            for a in role_audiences(role, &identity) {
                if !audiences.contains(&a) {
                    audiences.push(a);
                }
            }
        }
        audiences
    };
    let audience = match ask.audience {
        Some(a) => a.to_string(),
        None => match all_audiences().as_slice() {
            [only] => (*only).clone(),
            audiences => {
                return Err(ApiError::invalid_request(format!(
                    "audience is required for identity {identity_name:?}; one of: {}",
                    join(audiences)
                )));
            }
        },
    };
    let role_allows_audience = |role: &Role| {
        identity.audiences.contains(&audience)
            && role.audiences.as_ref().is_none_or(|narrow| narrow.contains(&audience))
    };
    if !granting.iter().any(|r| role_allows_audience(r)) {
        return Err(ApiError::invalid_target(format!(
            "audience {audience:?} is not allowed for the caller ({}) with identity {identity_name:?}; allowed: {}",
            caller.describe(),
            join(&all_audiences())
        )));
    }

    let candidates = || granting.iter().filter(|r| role_allows_audience(r));
    let role_allows_scope = |role: &Role, s: &String| {
        identity.scopes.contains(s)
            && match &role.scopes {
                Some(narrow) => narrow.contains(s),
                None => !role.agent,
            }
    };
    if let Some(role) = candidates().find(|r| ask.scopes.iter().all(|s| role_allows_scope(r, s))) {
        return Ok(Grant {
            role: (*role).clone(),
            identity,
            audience,
            scopes: ask.scopes.clone(),
        });
    }
    let mut allowed_scopes: BTreeSet<&String> = BTreeSet::new();
    for role in candidates() {
        allowed_scopes.extend(role_scopes(role, &identity));
    }
    let refused: Vec<&String> = ask.scopes.iter().filter(|s| !allowed_scopes.contains(s)).collect();
    let detail = if refused.is_empty() {
        "no single role allows all of them together; ask for them in separate requests".to_string()
    } else {
        format!("not allowed: {}", join(&refused))
    };
    Err(ApiError::invalid_scope(format!(
        "scope {:?} is not allowed for the caller ({}) with identity {identity_name:?} and audience {audience:?} ({detail}); allowed: {}",
        ask.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
        caller.describe(),
        if allowed_scopes.is_empty() {
            "no scopes".to_string()
        } else {
            join(&allowed_scopes.into_iter().collect::<Vec<_>>())
        }
    )))
}

fn join(items: &[&String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Parses a space-separated scope string into a sorted set.
pub(crate) fn parse_scopes(s: &str) -> BTreeSet<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Grant as GrantType, SubjectSource};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn identity(name: &str, auds: &[&str], scopes: &[&str]) -> Arc<IdentitySettings> {
        Arc::new(IdentitySettings {
            name: name.into(),
            provider: "corp".into(),
            grant: GrantType::ClientCredentials,
            subject: SubjectSource::Client,
            subject_token_type: String::new(),
            trusted_issuers: vec![],
            actor_token_file: None,
            actor_token_type: String::new(),
            actor_identity: None,
            requested_token_type: String::new(),
            audiences: auds.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn role(name: &str, uids: &[u32], ids: &[&str]) -> Role {
        Role {
            name: name.into(),
            uids: Some(uids.iter().copied().collect()),
            gids: None,
            units: None,
            user_units: None,
            executables: None,
            executables_any_namespace: false,
            executable_sha256: None,
            claims: None,
            login: None,
            pod: Default::default(),
            identities: ids.iter().map(|s| s.to_string()).collect(),
            audiences: None,
            scopes: None,
            agent: false,
            rate: None,
        }
    }

    fn config(roles: Vec<Role>) -> Config {
        Config {
            path: PathBuf::from("t.toml"),
            agent: crate::config::parse("", std::path::Path::new("t"), &NoCtx)
                .unwrap()
                .agent,
            providers: vec![],
            identities: vec![
                identity("payments", &["https://payments", "https://ledger"], &["read", "write"]),
                identity("batch", &["https://batch"], &["run"]),
            ],
            roles: roles.into_iter().map(Arc::new).collect(),
            sinks: vec![],
            logins: vec![],
            kubernetes: None,
        }
    }

    struct NoCtx;
    impl crate::config::LoadContext for NoCtx {
        fn credentials_directory(&self) -> Option<PathBuf> {
            None
        }
        fn under_systemd(&self) -> bool {
            false
        }
        fn uid_of_user(&self, _: &str) -> Option<u32> {
            None
        }
        fn gid_of_group(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn ask<'a>(identity: Option<&'a str>, audience: Option<&'a str>, scopes: &'a BTreeSet<String>) -> Ask<'a> {
        Ask {
            identity,
            audience,
            scopes,
        }
    }

    #[test]
    fn default_deny_names_the_caller() {
        let cfg = config(vec![role("r", &[1001], &["payments"])]);
        let none = BTreeSet::new();
        let err = authorize(
            &cfg,
            &Caller::from_ids(2002, 2002, Some(7)),
            None,
            &ask(None, Some("https://payments"), &none),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::AccessDenied);
        assert!(err.description.contains("uid 2002"), "{}", err.description);
        assert!(err.description.contains("needs uid in {1001}"), "{}", err.description);
    }

    #[test]
    fn audience_and_scope_narrowing() {
        let mut r = role("r", &[1001], &["payments"]);
        r.audiences = Some(vec!["https://payments".into()]);
        r.scopes = Some(vec!["read".into()]);
        let cfg = config(vec![r]);
        let c = Caller::from_ids(1001, 1001, None);
        let read = parse_scopes("read");
        let g = authorize(&cfg, &c, None, &ask(None, None, &read)).unwrap();
        assert_eq!(
            (g.identity.name.as_str(), g.audience.as_str()),
            ("payments", "https://payments")
        );
        let err = authorize(&cfg, &c, None, &ask(None, Some("https://ledger"), &read)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidTarget);
        assert!(err.description.contains("https://ledger"));
        let write = parse_scopes("read write");
        let err = authorize(&cfg, &c, None, &ask(None, None, &write)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidScope);
        assert!(err.description.contains("not allowed: write"), "{}", err.description);
    }

    #[test]
    fn rights_are_the_union_of_matching_roles_but_one_request_uses_one_role() {
        let mut a = role("a", &[1001], &["payments"]);
        a.audiences = Some(vec!["https://payments".into()]);
        a.scopes = Some(vec!["read".into()]);
        let mut b = role("b", &[1001], &["payments", "batch"]);
        b.audiences = Some(vec!["https://ledger".into()]);
        let cfg = config(vec![a, b]);
        let c = Caller::from_ids(1001, 1001, None);
        let none = BTreeSet::new();
        let err = authorize(&cfg, &c, None, &ask(None, None, &none)).unwrap_err();
        assert!(err.description.contains("payments, batch"), "{}", err.description);
        let rw = parse_scopes("read write");
        let g = authorize(&cfg, &c, None, &ask(Some("payments"), Some("https://ledger"), &rw)).unwrap();
        assert_eq!(g.role.name, "b");
        // Role a allows https://payments but only "read"; role b allows "write" but not that audience.
        let err = authorize(&cfg, &c, None, &ask(Some("payments"), Some("https://payments"), &rw)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidScope);
        let ids = identities_for(&cfg, &c, None, &super::Sessions::none());
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].audiences, vec!["https://payments", "https://ledger"]);
        assert_eq!(ids[0].scopes, vec!["read", "write"]);
    }

    #[test]
    fn agent_roles_get_only_listed_scopes() {
        let mut r = role("bot", &[1001], &["payments"]);
        r.agent = true;
        let cfg = config(vec![r]);
        let c = Caller::from_ids(1001, 1001, None);
        let read = parse_scopes("read");
        let err = authorize(&cfg, &c, None, &ask(None, Some("https://payments"), &read)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidScope);
        assert!(err.description.contains("allowed: no scopes"), "{}", err.description);
    }

    #[test]
    fn unknown_identity_is_404_and_missing_audience_is_400() {
        let cfg = config(vec![role("r", &[1001], &["payments"])]);
        let c = Caller::from_ids(1001, 1001, None);
        let none = BTreeSet::new();
        assert_eq!(
            authorize(&cfg, &c, None, &ask(Some("nope"), None, &none))
                .unwrap_err()
                .kind,
            ErrorKind::UnknownIdentity
        );
        let err = authorize(&cfg, &c, None, &ask(None, None, &none)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert!(err.description.contains("audience is required"));
        let err = authorize(&cfg, &c, None, &ask(Some("batch"), None, &none)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::AccessDenied);
    }

    #[test]
    fn claims_match_strings_lists_and_nested_paths() {
        let mut r = role("claims", &[1001], &["payments"]);
        r.claims = Some(BTreeMap::from([
            ("team".to_string(), vec!["payments".to_string()]),
            ("tenant.id".to_string(), vec!["t1".to_string(), "t2".to_string()]),
        ]));
        let cfg = config(vec![r]);
        let c = Caller::from_ids(1001, 1001, None);
        let none = BTreeSet::new();
        let good = serde_json::json!({"team": ["ops", "payments"], "tenant": {"id": "t2"}});
        authorize(&cfg, &c, Some(&good), &ask(None, Some("https://payments"), &none)).unwrap();
        let bad = serde_json::json!({"team": "ops", "tenant": {"id": "t2"}});
        let err = authorize(&cfg, &c, Some(&bad), &ask(None, Some("https://payments"), &none)).unwrap_err();
        assert!(err.description.contains("needs claim team"), "{}", err.description);
        let err = authorize(&cfg, &c, None, &ask(None, Some("https://payments"), &none)).unwrap_err();
        assert!(err.description.contains("presented credential"), "{}", err.description);
    }
}
