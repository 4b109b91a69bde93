//! `[[identity]]`: what the agent can obtain: a grant at a provider, its subject (and actor)
//! credential, the audiences it allows and its scope ceiling.

use std::collections::HashMap;
use std::sync::Arc;

use super::locate::{Seg, at};
use super::model::{Grant, IdentitySettings, LoginSettings, ProviderSettings, SubjectSource, TrustedIssuer};
use super::raw::RawIdentity;
use super::validate::{Validator, list_or_none};
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT};

impl Validator<'_> {
    /// Validates every `[[identity]]` against the providers: unique names, a known provider, and a
    /// subject that fits the grant.
    pub(super) fn identities(
        &mut self,
        raw: &[RawIdentity],
        providers: &[Arc<ProviderSettings>],
        logins: &[Arc<LoginSettings>],
    ) -> Vec<Arc<IdentitySettings>> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (i, id) in raw.iter().enumerate() {
            if seen.insert(id.name.clone(), i).is_some() {
                self.problem(
                    &at("identity", i, "name"),
                    format!("identity {:?} is defined twice", id.name),
                );
            }
            if !providers.iter().any(|p| p.name == id.provider) {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                self.problem(
                    &at("identity", i, "provider"),
                    format!(
                        "no [[provider]] named {:?}; defined: {}",
                        id.provider,
                        list_or_none(&known)
                    ),
                );
            }
            let grant = match id.grant.as_deref() {
                None | Some("token_exchange") => Grant::TokenExchange,
                Some("client_credentials") => Grant::ClientCredentials,
                Some(other) => {
                    self.problem(
                        &at("identity", i, "grant"),
                        format!("{other:?} is not \"token_exchange\" or \"client_credentials\""),
                    );
                    Grant::TokenExchange
                }
            };
            let subject = match (grant, &id.subject_token_file, id.subject.as_deref()) {
                (Grant::ClientCredentials, None, None) => SubjectSource::Client,
                (Grant::ClientCredentials, _, _) => {
                    self.problem(
                        &at(
                            "identity",
                            i,
                            if id.subject.is_some() {
                                "subject"
                            } else {
                                "subject_token_file"
                            },
                        ),
                        "client_credentials has no subject credential; remove it or use grant = \"token_exchange\""
                            .into(),
                    );
                    SubjectSource::Client
                }
                (Grant::TokenExchange, Some(f), None) => {
                    SubjectSource::File(self.secret(&at("identity", i, "subject_token_file"), f))
                }
                (Grant::TokenExchange, None, Some("caller")) => SubjectSource::Caller,
                (Grant::TokenExchange, None, Some(s)) if s.starts_with("login:") => {
                    let name = &s["login:".len()..];
                    self.login_ref(&at("identity", i, "subject"), name, logins);
                    SubjectSource::Login(name.to_string())
                }
                (Grant::TokenExchange, None, Some(other)) => {
                    self.problem(
                        &at("identity", i, "subject"),
                        format!("{other:?} is not \"caller\" or \"login:NAME\""),
                    );
                    SubjectSource::Caller
                }
                (Grant::TokenExchange, Some(_), Some(_)) => {
                    self.problem(
                        &at("identity", i, "subject"),
                        "give subject_token_file or subject = \"caller\", not both".into(),
                    );
                    SubjectSource::Caller
                }
                (Grant::TokenExchange, None, None) => {
                    self.problem(
                        &at("identity", i, "name"),
                        "token_exchange needs a subject credential: subject_token_file = \"...\" or subject = \"caller\"".into(),
                    );
                    SubjectSource::Caller
                }
            };
            let mut trusted_issuers = Vec::new();
            for (j, t) in id.trusted_issuers.iter().enumerate() {
                let base = vec![
                    Seg::Key("identity".into()),
                    Seg::Index(i),
                    Seg::Key("trusted_issuers".into()),
                    Seg::Index(j),
                ];
                let issuer = t.issuer.clone();
                let jwks_uri = self.url(&base, &t.jwks_uri);
                let ca_file = t.ca_file.as_ref().map(|f| self.absolute(&base, f));
                trusted_issuers.push(TrustedIssuer {
                    issuer,
                    jwks_uri,
                    audience: t.audience.clone(),
                    ca_file,
                });
            }
            if subject == SubjectSource::Caller && trusted_issuers.is_empty() && id.subject.is_some() {
                self.problem(
                    &at("identity", i, "subject"),
                    "subject = \"caller\" needs trusted_issuers = [{ issuer, jwks_uri, audience }] to verify what callers present".into(),
                );
            }
            if subject != SubjectSource::Caller && !trusted_issuers.is_empty() {
                self.problem(
                    &at("identity", i, "trusted_issuers"),
                    "only used with subject = \"caller\"; remove it".into(),
                );
            }
            let actor_token_file = id.actor_token_file.as_ref().map(|f| {
                if grant == Grant::ClientCredentials {
                    self.problem(
                        &at("identity", i, "actor_token_file"),
                        "client_credentials cannot delegate; use grant = \"token_exchange\"".into(),
                    );
                }
                self.secret(&at("identity", i, "actor_token_file"), f)
            });
            if id.audiences.is_empty() {
                self.problem(
                    &at("identity", i, "name"),
                    "audiences = [...] must list at least one audience".into(),
                );
            }
            let subject_token_type = self.subject_token_type(i, &subject, id.subject_token_type.as_deref());
            if id.actor_identity.is_some() && grant == Grant::ClientCredentials {
                self.problem(
                    &at("identity", i, "actor_identity"),
                    "client_credentials cannot delegate; use grant = \"token_exchange\"".into(),
                );
            }
            if id.actor_identity.is_some() && id.actor_token_file.is_some() {
                self.problem(
                    &at("identity", i, "actor_identity"),
                    "give actor_token_file or actor_identity, not both".into(),
                );
            }
            out.push(Arc::new(IdentitySettings {
                name: id.name.clone(),
                provider: id.provider.clone(),
                grant,
                subject,
                subject_token_type,
                trusted_issuers,
                actor_token_file,
                actor_token_type: id.actor_token_type.clone().unwrap_or_else(|| TOKEN_TYPE_JWT.into()),
                actor_identity: id.actor_identity.clone(),
                requested_token_type: id
                    .requested_token_type
                    .clone()
                    .unwrap_or_else(|| TOKEN_TYPE_ACCESS_TOKEN.into()),
                audiences: id.audiences.clone(),
                scopes: id.scopes.clone(),
            }));
        }
        self.actor_identities(&out);
        out
    }

    /// The token type of identity `i`'s subject credential: for a `login:` subject, the access
    /// token (default, also sent as a JWT) or the ID token; otherwise as written (default JWT).
    fn subject_token_type(&mut self, i: usize, subject: &SubjectSource, written: Option<&str>) -> String {
        match (subject, written) {
            (SubjectSource::Login(_), None) => TOKEN_TYPE_ACCESS_TOKEN.into(),
            (SubjectSource::Login(_), Some(t))
                if [TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT].contains(&t) =>
            {
                t.into()
            }
            (SubjectSource::Login(_), Some(other)) => {
                self.problem(
                    &at("identity", i, "subject_token_type"),
                    format!(
                        "{other:?}: a session's subject credential is its access token ({TOKEN_TYPE_ACCESS_TOKEN}, or {TOKEN_TYPE_JWT}) or its ID token ({TOKEN_TYPE_ID_TOKEN})"
                    ),
                );
                TOKEN_TYPE_ACCESS_TOKEN.into()
            }
            (_, t) => t.unwrap_or(TOKEN_TYPE_JWT).into(),
        }
    }

    /// Each `actor_identity` names another identity whose token the agent can get on its own
    /// (a subject file or client credentials, no caller's credential).
    fn actor_identities(&mut self, identities: &[Arc<IdentitySettings>]) {
        for (i, id) in identities.iter().enumerate() {
            let Some(actor) = &id.actor_identity else { continue };
            match identities.iter().find(|a| &a.name == actor) {
                None => {
                    let known: Vec<&str> = identities.iter().map(|i| i.name.as_str()).collect();
                    self.problem(
                        &at("identity", i, "actor_identity"),
                        format!("no [[identity]] named {actor:?}; defined: {}", list_or_none(&known)),
                    );
                }
                Some(a) if a.name == id.name => self.problem(
                    &at("identity", i, "actor_identity"),
                    "an identity cannot be its own actor; name the agent's own identity".into(),
                ),
                Some(a) if matches!(a.subject, SubjectSource::Caller | SubjectSource::Login(_)) => self.problem(
                    &at("identity", i, "actor_identity"),
                    format!(
                        "identity {actor:?} needs a caller's credential; the actor must be one the agent obtains on its own (subject_token_file or client_credentials)"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;
    use crate::config::test_support::{TestContext, good, problems};
    use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};

    #[test]
    fn token_types_default_to_a_jwt_for_an_access_token() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(&good(dir.path()), Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        let id = &cfg.identities[0];
        assert_eq!(id.subject_token_type, TOKEN_TYPE_JWT);
        assert_eq!(id.actor_token_type, TOKEN_TYPE_JWT);
        assert_eq!(id.requested_token_type, TOKEN_TYPE_ACCESS_TOKEN);
    }

    #[test]
    fn the_subject_must_fit_the_grant() {
        let dir = tempfile::tempdir().unwrap();
        let base = good(dir.path());
        let sa = dir.path().join("sa.jwt");
        let with_batch = |extra: &str| {
            base.replace(
                "grant = \"client_credentials\"\n",
                &format!("grant = \"client_credentials\"\n{extra}\n"),
            )
        };
        assert_eq!(
            problems(&with_batch(&format!("subject_token_file = \"{}\"", sa.display()))),
            vec![
                "identity[1].subject_token_file: client_credentials has no subject credential; remove it or use grant = \"token_exchange\""
            ]
        );
        assert_eq!(
            problems(&with_batch(&format!("actor_token_file = \"{}\"", sa.display()))),
            vec!["identity[1].actor_token_file: client_credentials cannot delegate; use grant = \"token_exchange\""]
        );
        let caller = base.replace(
            &format!("subject_token_file = \"{}\"", sa.display()),
            "subject = \"caller\"",
        );
        assert_eq!(
            problems(&caller),
            vec![
                "identity[0].subject: subject = \"caller\" needs trusted_issuers = [{ issuer, jwks_uri, audience }] to verify what callers present"
            ]
        );
        let neither = base.replace(&format!("subject_token_file = \"{}\"\n", sa.display()), "");
        assert_eq!(
            problems(&neither),
            vec![
                "identity[0].name: token_exchange needs a subject credential: subject_token_file = \"...\" or subject = \"caller\""
            ]
        );
    }

    #[test]
    fn names_are_unique_and_audiences_required() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path())
            .replace("name = \"batch\"", "name = \"payments\"")
            .replace("audiences = [\"https://batch.internal\"]\n", "");
        assert_eq!(
            problems(&text),
            vec![
                "identity[1].name: identity \"payments\" is defined twice",
                "identity[1].name: audiences = [...] must list at least one audience",
            ]
        );
    }
}
