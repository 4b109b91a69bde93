//! `[[provider]]`: the OpenID Connect providers the agent exchanges at, and how it authenticates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::locate::at;
use super::model::{ClientAuth, ProviderSettings, TargetParameter};
use super::raw::RawProvider;
use super::validate::Validator;
use crate::secrets::SecretFile;

impl Validator<'_> {
    /// Validates every `[[provider]]`: unique names, https URLs, and exactly the credentials its
    /// `client_auth` method uses.
    pub(super) fn providers(&mut self, raw: &[RawProvider]) -> Vec<Arc<ProviderSettings>> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            if seen.insert(p.name.clone(), i).is_some() {
                self.problem(
                    &at("provider", i, "name"),
                    format!("provider {:?} is defined twice", p.name),
                );
            }
            let issuer = self.url(&at("provider", i, "issuer"), &p.issuer);
            // The issuer is compared with `iss` exactly as written (minus a trailing slash).
            let issuer = if p.issuer.ends_with('/') && issuer != p.issuer {
                issuer
            } else {
                p.issuer.clone()
            };
            let token_endpoint = p
                .token_endpoint
                .as_ref()
                .map(|u| self.url(&at("provider", i, "token_endpoint"), u));
            let jwks_uri = p.jwks_uri.as_ref().map(|u| self.url(&at("provider", i, "jwks_uri"), u));
            let ca_file = p.ca_file.as_ref().map(|f| {
                let path = self.absolute(&at("provider", i, "ca_file"), f);
                if path.is_absolute() && !path.is_file() {
                    self.problem(&at("provider", i, "ca_file"), format!("{f:?} does not exist"));
                }
                path
            });
            let method = p.client_auth.as_deref().unwrap_or("client_secret_basic");
            let client_auth = self.client_auth(
                "provider",
                i,
                method,
                &p.client_secret_file,
                &p.private_key_file,
                &p.key_id,
            );
            let target_parameter = match p.target_parameter.as_deref() {
                None => None,
                Some("audience") => Some(TargetParameter::Audience),
                Some("resource") => Some(TargetParameter::Resource),
                Some("both") => Some(TargetParameter::Both),
                Some(other) => {
                    self.problem(
                        &at("provider", i, "target_parameter"),
                        format!("{other:?} is not \"audience\", \"resource\" or \"both\""),
                    );
                    None
                }
            };
            if p.client_id.is_empty() {
                self.problem(&at("provider", i, "client_id"), "must not be empty".into());
            }
            if p.max_concurrent == Some(0) {
                self.problem(
                    &at("provider", i, "max_concurrent"),
                    "0 would send nothing; use 1 or more, or leave it out for no limit".into(),
                );
            }
            let max_concurrent = p.max_concurrent.filter(|m| *m > 0);
            let rate = p.rate.as_ref().and_then(|r| match crate::config::Rate::parse(r) {
                Ok(rate) => Some(rate),
                Err(e) => {
                    self.problem(&at("provider", i, "rate"), e.to_string());
                    None
                }
            });
            out.push(Arc::new(ProviderSettings {
                name: p.name.clone(),
                issuer,
                token_endpoint,
                jwks_uri,
                ca_file,
                client_id: p.client_id.clone(),
                client_auth,
                verify_tokens: p.verify_tokens.unwrap_or(true),
                target_parameter,
                max_concurrent,
                rate,
            }));
        }
        out
    }

    /// The client authentication a `[[provider]]` or `[[login]]` (`section`, entry `i`) asks for
    /// with `method`, taking exactly the credentials that method uses.
    pub(super) fn client_auth(
        &mut self,
        section: &str,
        i: usize,
        method: &str,
        client_secret_file: &Option<String>,
        private_key_file: &Option<String>,
        key_id: &Option<String>,
    ) -> ClientAuth {
        let needs_secret = matches!(method, "client_secret_basic" | "client_secret_post");
        if !needs_secret && client_secret_file.is_some() {
            self.problem(
                &at(section, i, "client_secret_file"),
                format!("client_auth = {method:?} does not use a client secret; remove it"),
            );
        }
        if method != "private_key_jwt" && (private_key_file.is_some() || key_id.is_some()) {
            self.problem(
                &at(section, i, "private_key_file"),
                format!("client_auth = {method:?} does not use a private key; remove private_key_file/key_id"),
            );
        }
        let secret = |v: &mut Self, field: &str, value: &Option<String>| -> SecretFile {
            match value {
                Some(f) => v.secret(&at(section, i, field), f),
                None => {
                    v.problem(
                        &at(section, i, "client_auth"),
                        format!("client_auth = {method:?} needs {field}"),
                    );
                    SecretFile { path: PathBuf::new() }
                }
            }
        };
        match method {
            "client_secret_basic" => ClientAuth::SecretBasic(secret(self, "client_secret_file", client_secret_file)),
            "client_secret_post" => ClientAuth::SecretPost(secret(self, "client_secret_file", client_secret_file)),
            "private_key_jwt" => {
                let key = secret(self, "private_key_file", private_key_file);
                ClientAuth::PrivateKeyJwt {
                    key,
                    key_id: key_id.clone(),
                }
            }
            "none" => ClientAuth::None,
            other => {
                self.problem(
                    &at(section, i, "client_auth"),
                    format!("{other:?} is not one of client_secret_basic, client_secret_post, private_key_jwt, none"),
                );
                ClientAuth::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;
    use crate::config::test_support::{TestContext, good};
    use crate::config::{ClientAuth, TargetParameter};

    #[test]
    fn http_issuers_are_refused_unless_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace("https://idp.example.com", "http://idp.example.com");
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        assert!(err.to_string().contains("http:// to a non-loopback host"));
        let text = good(dir.path()).replace("https://idp.example.com", "http://127.0.0.1:8080");
        parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
    }

    #[test]
    fn client_auth_takes_exactly_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let text = good(dir.path()).replace(
            "client_id = \"node-17\"\n",
            "client_id = \"node-17\"\nclient_auth = \"private_key_jwt\"\ntarget_parameter = \"both\"\n",
        );
        let err = parse(&text, Path::new("t.toml"), &TestContext { creds: None }).unwrap_err();
        let keys: Vec<(&str, &str)> = err
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (
                    "provider[0].client_auth",
                    "client_auth = \"private_key_jwt\" needs private_key_file"
                ),
                (
                    "provider[0].client_secret_file",
                    "client_auth = \"private_key_jwt\" does not use a client secret; remove it"
                ),
            ]
        );
        let key = text.replace("client_secret_file", "private_key_file").replace(
            "target_parameter = \"both\"",
            "target_parameter = \"both\"\nkey_id = \"k1\"",
        );
        let cfg = parse(&key, Path::new("t.toml"), &TestContext { creds: None }).unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.target_parameter, Some(TargetParameter::Both));
        assert!(p.verify_tokens);
        match &p.client_auth {
            ClientAuth::PrivateKeyJwt { key, key_id } => {
                assert_eq!(key.path, dir.path().join("secret"));
                assert_eq!(key_id.as_deref(), Some("k1"));
            }
            other => panic!("{other:?}"),
        }
    }
}
