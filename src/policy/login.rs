//! Roles with `login = "NAME"`: the caller must hold a live session at that `[[login]]`, and the
//! role's `claims` are matched against the session's current ID-token claims (replaced at each
//! refresh), not against a presented credential. The sessions themselves live in `people/`; the
//! request path hands policy a snapshot of the caller's ([`Sessions`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::roles::first_unmet_claim;
use crate::config::{Config, Role};

/// The caller's live sessions, by login, with their current claims.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sessions {
    by_login: BTreeMap<String, Arc<Value>>,
    /// Not known (deciding everything else first): session conditions are left undecided.
    undecided: bool,
}

impl Sessions {
    /// No sessions at all.
    #[cfg(test)]
    pub(crate) fn none() -> Sessions {
        Sessions::default()
    }

    /// No live session.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_login.is_empty()
    }

    /// These sessions, (login, current claims).
    pub(crate) fn of(sessions: impl IntoIterator<Item = (String, Arc<Value>)>) -> Sessions {
        Sessions {
            by_login: sessions.into_iter().collect(),
            undecided: false,
        }
    }

    /// Sessions not looked at: a role's login condition neither matches nor fails.
    pub(crate) fn undecided() -> Sessions {
        Sessions {
            by_login: BTreeMap::new(),
            undecided: true,
        }
    }

    /// The current claims of the session at `login`.
    pub(crate) fn claims(&self, login: &str) -> Option<&Arc<Value>> {
        self.by_login.get(login)
    }
}

/// What keeps a role with `login` from matching a caller that meets its other conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionNeed {
    /// The caller has no live session at this login.
    Login(String),
    /// The session's claims do not match: the text names the claim, what the role accepts and
    /// what the session has.
    Claims(String),
}

/// Why `role` does not match the caller's sessions, or `None` when it has no `login` or matches.
pub(super) fn session_need(role: &Role, sessions: &Sessions) -> Option<SessionNeed> {
    let login = role.login.as_ref()?;
    if sessions.undecided {
        return None;
    }
    let Some(claims) = sessions.claims(login) else {
        return Some(SessionNeed::Login(login.clone()));
    };
    let conds = role.claims.as_ref()?;
    first_unmet_claim(claims, conds).map(|(path, accepted, seen)| {
        SessionNeed::Claims(format!(
            "role {:?} needs claim {path} in {accepted:?} at login {login:?}, and your session has {seen}; if you were added at the provider, it shows after the next refresh or `cortexid login {login}`",
            role.name
        ))
    })
}

/// Why a caller refused an identity would be let in by some role with `login`: it meets every
/// other condition of such a role and lacks the session, or the session's claims. `None` when no
/// role with `login` for the identity (or for any identity, when none is named) would admit the
/// caller even with a session. A missing session is reported before claims that do not match.
pub(crate) fn person_refusal(
    config: &Config,
    caller: &crate::caller::Caller,
    sessions: &Sessions,
    identity: Option<&str>,
) -> Option<SessionNeed> {
    let mut needs: Vec<SessionNeed> = config
        .roles
        .iter()
        .filter(|r| r.login.is_some())
        .filter(|r| identity.is_none_or(|i| r.identities.iter().any(|x| x == i)))
        .filter(|r| super::roles::admits_but_session(r, caller))
        .filter_map(|r| session_need(r, sessions))
        .collect();
    needs.sort_by_key(|n| matches!(n, SessionNeed::Claims(_)));
    needs.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn role(login: &str, claims: &[(&str, &[&str])]) -> Role {
        Role {
            name: "team".into(),
            uids: None,
            gids: None,
            units: None,
            user_units: None,
            executables: None,
            executables_any_namespace: false,
            executable_sha256: None,
            claims: (!claims.is_empty()).then(|| {
                claims
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                    .collect::<BTreeMap<_, _>>()
            }),
            login: Some(login.into()),
            pod: Default::default(),
            identities: vec!["me".into()],
            audiences: None,
            scopes: None,
            agent: false,
            rate: None,
        }
    }

    #[test]
    fn a_login_role_needs_a_session_whose_current_claims_match() {
        let r = role("corp", &[("groups", &["payments"])]);
        assert_eq!(
            session_need(&r, &Sessions::none()),
            Some(SessionNeed::Login("corp".into()))
        );
        let member = Sessions::of([(
            "corp".to_string(),
            Arc::new(serde_json::json!({"sub": "alice", "groups": ["payments", "eng"]})),
        )]);
        assert_eq!(session_need(&r, &member), None);
        let removed = Sessions::of([(
            "corp".to_string(),
            Arc::new(serde_json::json!({"sub": "alice", "groups": ["eng"]})),
        )]);
        match session_need(&r, &removed) {
            Some(SessionNeed::Claims(why)) => assert!(
                why.contains("claim groups in [\"payments\"]") && why.contains("[\"eng\"]"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let elsewhere = Sessions::of([("lab".to_string(), Arc::new(serde_json::json!({"groups": "payments"})))]);
        assert_eq!(session_need(&r, &elsewhere), Some(SessionNeed::Login("corp".into())));
        assert_eq!(session_need(&r, &Sessions::undecided()), None);
    }
}
