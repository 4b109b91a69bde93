//! `[[login]]`: where people on this host sign in (the provider, the login client, the flow),
//! who may, and how long a session may last.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::locate::{Seg, at};
use super::model::{DEFAULT_MAX_SESSION, LoginFlow, LoginSettings, MAX_SESSION, MIN_SESSION, ProviderSettings};
use super::raw::RawLogin;
use super::validate::{Validator, list_or_none};

impl Validator<'_> {
    /// Validates every `[[login]]` against the providers: unique names, a known provider, a
    /// flow and a `max_session` in range, users and groups that exist.
    pub(super) fn logins(
        &mut self,
        raw: &[RawLogin],
        providers: &[Arc<ProviderSettings>],
        state_dir: bool,
    ) -> Vec<Arc<LoginSettings>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            if !seen.insert(l.name.as_str()) {
                self.problem(
                    &at("login", i, "name"),
                    format!("login {:?} is defined twice; give each [[login]] its own name", l.name),
                );
            }
            if l.name.is_empty() || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                self.problem(
                    &at("login", i, "name"),
                    format!(
                        "{:?} is not a login name; use letters, digits, '-', '_' and '.' (it is typed as `cortexid login NAME`)",
                        l.name
                    ),
                );
            }
            if !providers.iter().any(|p| p.name == l.provider) {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                self.problem(
                    &at("login", i, "provider"),
                    format!(
                        "no [[provider]] named {:?}; defined: {}",
                        l.provider,
                        list_or_none(&known)
                    ),
                );
            }
            if l.client_id.is_empty() {
                self.problem(&at("login", i, "client_id"), "must not be empty".into());
            }
            let method = l.client_auth.as_deref().unwrap_or("none");
            let client_auth = self.client_auth(
                "login",
                i,
                method,
                &l.client_secret_file,
                &l.private_key_file,
                &l.key_id,
            );
            let scopes = l
                .scopes
                .clone()
                .unwrap_or_else(|| vec!["openid".into(), "offline_access".into()]);
            if !scopes.iter().any(|s| s == "openid") {
                self.problem(
                    &at("login", i, "scopes"),
                    "must include \"openid\": a session's claims (what roles match) come from its ID token".into(),
                );
            }
            let flow = match l.flow.as_deref() {
                None | Some("auto") => LoginFlow::Auto,
                Some("device") => LoginFlow::Device,
                Some("browser") => LoginFlow::Browser,
                Some(other) => {
                    self.problem(
                        &at("login", i, "flow"),
                        format!("{other:?} is not \"auto\", \"device\" or \"browser\""),
                    );
                    LoginFlow::Auto
                }
            };
            let max_session = self.duration(
                &at("login", i, "max_session"),
                l.max_session.as_deref(),
                DEFAULT_MAX_SESSION,
            );
            if !(MIN_SESSION..=MAX_SESSION).contains(&max_session) {
                self.problem(
                    &at("login", i, "max_session"),
                    format!(
                        "{:?} is out of range; a session lasts between \"1m\" and \"30d\"",
                        l.max_session.as_deref().unwrap_or_default()
                    ),
                );
            }
            let uids = l.users.as_ref().map(|users| {
                let mut set = BTreeSet::new();
                for (j, name) in users.iter().enumerate() {
                    let path = list_item("login", i, "users", j);
                    if let Some(uid) = self.uid(&path, name) {
                        set.insert(uid);
                    }
                }
                set
            });
            let gids = l.groups.as_ref().map(|groups| {
                let mut set = BTreeSet::new();
                for (j, name) in groups.iter().enumerate() {
                    let path = list_item("login", i, "groups", j);
                    if let Some(gid) = self.gid(&path, name) {
                        set.insert(gid);
                    }
                }
                set
            });
            for (field, list) in [("users", &l.users), ("groups", &l.groups)] {
                if list.as_ref().is_some_and(Vec::is_empty) {
                    self.problem(
                        &at("login", i, field),
                        "an empty list lets nobody sign in; remove the key (any user but root) or name who may".into(),
                    );
                }
            }
            if l.persist && !state_dir {
                self.problem(
                    &at("login", i, "persist"),
                    "persist = true keeps sessions in [agent] state_dir, which is not set; set state_dir (systemd StateDirectory=) or remove persist".into(),
                );
            }
            out.push(Arc::new(LoginSettings {
                name: l.name.clone(),
                provider: l.provider.clone(),
                client_id: l.client_id.clone(),
                client_auth,
                scopes,
                flow,
                max_session,
                uids,
                gids,
                persist: l.persist,
            }));
        }
        out
    }

    /// A `login = "NAME"` (of a role) or `subject = "login:NAME"` at `path` names a `[[login]]`.
    pub(super) fn login_ref(&mut self, path: &[Seg], name: &str, logins: &[Arc<LoginSettings>]) {
        if !logins.iter().any(|l| l.name == name) {
            let known: Vec<&str> = logins.iter().map(|l| l.name.as_str()).collect();
            self.problem(
                path,
                format!("no [[login]] named {name:?}; defined: {}", list_or_none(&known)),
            );
        }
    }
}

/// The path of item `j` of the list `field` in entry `i` of `section`.
fn list_item(section: &str, i: usize, field: &str, j: usize) -> Vec<Seg> {
    vec![
        Seg::Key(section.into()),
        Seg::Index(i),
        Seg::Key(field.into()),
        Seg::Index(j),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::test_support::{TestContext, good, problems};
    use crate::config::{ClientAuth, LoginFlow, SubjectSource, parse};
    use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN};

    const LOGIN: &str = "\n[[login]]\nname = \"corp\"\nprovider = \"corp\"\nclient_id = \"cortexid-login\"\n";
    const PERSON: &str = "\n[[identity]]\nname = \"me\"\nprovider = \"corp\"\nsubject = \"login:corp\"\naudiences = [\"https://payments.internal\"]\n";
    const TEAM: &str =
        "\n[[role]]\nname = \"team\"\nlogin = \"corp\"\nclaims = { groups = \"payments\" }\nidentities = [\"me\"]\n";

    #[test]
    fn a_login_defaults_to_a_public_client_asking_for_openid_and_offline_access() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{}{LOGIN}{PERSON}{TEAM}", good(dir.path()));
        let cfg = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        let login = cfg.login("corp").unwrap();
        assert_eq!(login.client_auth, ClientAuth::None);
        assert_eq!(login.scopes, vec!["openid", "offline_access"]);
        assert_eq!(login.flow, LoginFlow::Auto);
        assert_eq!(login.max_session, Duration::from_secs(12 * 3600));
        assert!(!login.persist);
        assert!(login.may_sign_in(1001, |_| false), "any user but root by default");
        assert!(!login.may_sign_in(0, |_| true), "root only when named");
        let me = cfg.identity("me").unwrap();
        assert_eq!(me.subject, SubjectSource::Login("corp".into()));
        assert_eq!(me.subject_token_type, TOKEN_TYPE_ACCESS_TOKEN);
        assert_eq!(cfg.roles[1].login.as_deref(), Some("corp"));
    }

    #[test]
    fn who_may_sign_in_is_users_or_groups() {
        let dir = tempfile::tempdir().unwrap();
        let login = LOGIN.replace("client_id", "users = [\"root\"]\ngroups = [\"payments\"]\nclient_id");
        let cfg = parse(
            &format!("{}{login}", good(dir.path())),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap();
        let login = cfg.login("corp").unwrap();
        assert!(login.may_sign_in(0, |_| false));
        assert!(login.may_sign_in(1002, |g| g == 1001));
        assert!(!login.may_sign_in(1002, |_| false));
    }

    #[test]
    fn a_login_names_a_provider_once_with_a_flow_and_max_session_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let bad = LOGIN.replace("provider = \"corp\"", "provider = \"crop\"").replace(
            "client_id",
            "flow = \"qr\"\nmax_session = \"45d\"\nscopes = [\"email\"]\nusers = []\npersist = true\nclient_id",
        );
        let text = format!("{}{bad}{LOGIN}", good(dir.path()));
        assert_eq!(
            problems(&text),
            vec![
                "login[0].provider: no [[provider]] named \"crop\"; defined: corp",
                "login[0].flow: \"qr\" is not \"auto\", \"device\" or \"browser\"",
                "login[0].max_session: \"45d\" is out of range; a session lasts between \"1m\" and \"30d\"",
                "login[0].scopes: must include \"openid\": a session's claims (what roles match) come from its ID token",
                "login[0].users: an empty list lets nobody sign in; remove the key (any user but root) or name who may",
                "login[0].persist: persist = true keeps sessions in [agent] state_dir, which is not set; set state_dir (systemd StateDirectory=) or remove persist",
                "login[1].name: login \"corp\" is defined twice; give each [[login]] its own name",
            ]
        );
        let short = LOGIN.replace("client_id", "max_session = \"30s\"\nclient_id");
        assert_eq!(
            problems(&format!("{}{short}", good(dir.path()))),
            vec!["login[0].max_session: \"30s\" is out of range; a session lasts between \"1m\" and \"30d\""]
        );
    }

    #[test]
    fn a_login_client_takes_exactly_the_credentials_of_its_client_auth() {
        let dir = tempfile::tempdir().unwrap();
        let login = LOGIN.replace("client_id", "client_auth = \"client_secret_post\"\nclient_id");
        assert_eq!(
            problems(&format!("{}{login}", good(dir.path()))),
            vec!["login[0].client_auth: client_auth = \"client_secret_post\" needs client_secret_file"]
        );
    }

    #[test]
    fn identities_and_roles_name_logins_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{}{PERSON}{TEAM}", good(dir.path()));
        assert_eq!(
            problems(&text),
            vec![
                "identity[2].subject: no [[login]] named \"corp\"; defined: none",
                "role[1].login: no [[login]] named \"corp\"; defined: none",
            ]
        );
        let other = LOGIN.replace("name = \"corp\"", "name = \"lab\"");
        let text = format!(
            "{}{LOGIN}{other}{PERSON}{}",
            good(dir.path()),
            TEAM.replace("login = \"corp\"", "login = \"lab\"")
        );
        assert_eq!(
            problems(&text),
            vec![
                "role[1].login: identity \"me\" takes its subject from login \"corp\", not \"lab\"; make them the same"
            ]
        );
    }

    #[test]
    fn a_session_subject_is_its_access_token_or_its_id_token() {
        let dir = tempfile::tempdir().unwrap();
        let id_token = PERSON.replace(
            "subject = \"login:corp\"",
            &format!("subject = \"login:corp\"\nsubject_token_type = \"{TOKEN_TYPE_ID_TOKEN}\""),
        );
        let cfg = parse(
            &format!("{}{LOGIN}{id_token}", good(dir.path())),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap();
        assert_eq!(cfg.identity("me").unwrap().subject_token_type, TOKEN_TYPE_ID_TOKEN);
        let saml = PERSON.replace(
            "subject = \"login:corp\"",
            "subject = \"login:corp\"\nsubject_token_type = \"urn:ietf:params:oauth:token-type:saml2\"",
        );
        let found = problems(&format!("{}{LOGIN}{saml}", good(dir.path())));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("identity[2].subject_token_type: \"urn:ietf:params:oauth:token-type:saml2\": a session's subject credential is its access token"), "{found:?}");
    }

    #[test]
    fn an_actor_identity_is_one_the_agent_obtains_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let with_actor = |actor: &str| {
            let person = PERSON.replace(
                "subject = \"login:corp\"",
                &format!("subject = \"login:corp\"\nactor_identity = \"{actor}\""),
            );
            problems(&format!("{}{LOGIN}{person}", good(dir.path())))
        };
        assert_eq!(
            with_actor("bot"),
            vec!["identity[2].actor_identity: no [[identity]] named \"bot\"; defined: payments, batch, me"]
        );
        assert_eq!(
            with_actor("me"),
            vec!["identity[2].actor_identity: an identity cannot be its own actor; name the agent's own identity"]
        );
        let dir2 = tempfile::tempdir().unwrap();
        let person = PERSON.replace(
            "subject = \"login:corp\"",
            "subject = \"login:corp\"\nactor_identity = \"batch\"",
        );
        let cfg = parse(
            &format!("{}{LOGIN}{person}", good(dir2.path())),
            Path::new("t.toml"),
            &TestContext { creds: None },
        )
        .unwrap();
        assert_eq!(cfg.identity("me").unwrap().actor_identity.as_deref(), Some("batch"));
    }
}
