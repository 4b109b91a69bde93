//! The raw configuration: exactly what the TOML file says, before any check.
//!
//! Every field a section accepts is here, so serde (through `serde_ignored`) reports every other
//! key as unknown. Nothing is resolved or defaulted here beyond "absent"; the validation modules
//! turn these into the model the agent trusts.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::locate::{Seg, segments};

/// The whole file: one `[agent]` table and arrays of the other sections.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) provider: Vec<RawProvider>,
    #[serde(default)]
    pub(super) identity: Vec<RawIdentity>,
    #[serde(default)]
    pub(super) role: Vec<RawRole>,
    #[serde(default)]
    pub(super) sink: Vec<RawSink>,
    #[serde(default)]
    pub(super) login: Vec<RawLogin>,
    pub(super) kubernetes: Option<RawKubernetes>,
}

/// `[kubernetes]`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKubernetes {
    pub(super) kubelet_url: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) node_name: Option<String>,
}

/// `[agent]`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawAgent {
    pub(super) socket: Option<String>,
    pub(super) socket_mode: Option<String>,
    pub(super) socket_group: Option<String>,
    pub(super) refresh_at: Option<f64>,
    pub(super) refresh_jitter: Option<f64>,
    pub(super) min_remaining: Option<String>,
    pub(super) idle_expiry: Option<String>,
    pub(super) upstream_timeout: Option<String>,
    pub(super) audit_log: Option<String>,
    pub(super) audit_failure: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) operators: Option<Vec<String>>,
    pub(super) state_dir: Option<String>,
    pub(super) state_key_file: Option<String>,
    pub(super) persist_tokens: Option<bool>,
}

/// One `[[provider]]`.
#[derive(Debug, Deserialize)]
pub(super) struct RawProvider {
    pub(super) name: String,
    pub(super) issuer: String,
    pub(super) token_endpoint: Option<String>,
    pub(super) jwks_uri: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) client_id: String,
    pub(super) client_auth: Option<String>,
    pub(super) client_secret_file: Option<String>,
    pub(super) private_key_file: Option<String>,
    pub(super) key_id: Option<String>,
    pub(super) verify_tokens: Option<bool>,
    pub(super) target_parameter: Option<String>,
    pub(super) max_concurrent: Option<u32>,
    pub(super) rate: Option<String>,
}

/// One entry of an identity's `trusted_issuers`.
#[derive(Debug, Deserialize)]
pub(super) struct RawTrustedIssuer {
    pub(super) issuer: String,
    pub(super) jwks_uri: String,
    pub(super) audience: String,
    pub(super) ca_file: Option<String>,
}

/// One `[[identity]]`.
#[derive(Debug, Deserialize)]
pub(super) struct RawIdentity {
    pub(super) name: String,
    pub(super) provider: String,
    pub(super) grant: Option<String>,
    pub(super) subject_token_file: Option<String>,
    pub(super) subject_token_type: Option<String>,
    pub(super) subject: Option<String>,
    #[serde(default)]
    pub(super) trusted_issuers: Vec<RawTrustedIssuer>,
    pub(super) actor_token_file: Option<String>,
    pub(super) actor_token_type: Option<String>,
    pub(super) actor_identity: Option<String>,
    pub(super) requested_token_type: Option<String>,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
}

/// A claim condition: one accepted value or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawClaimValues {
    One(String),
    Many(Vec<String>),
}

/// One `[[role]]`.
#[derive(Debug, Deserialize)]
pub(super) struct RawRole {
    pub(super) name: String,
    pub(super) users: Option<Vec<String>>,
    pub(super) uids: Option<Vec<u32>>,
    pub(super) groups: Option<Vec<String>>,
    pub(super) gids: Option<Vec<u32>>,
    pub(super) units: Option<Vec<String>>,
    pub(super) user_units: Option<Vec<String>>,
    pub(super) executables: Option<Vec<String>>,
    #[serde(default)]
    pub(super) executables_any_namespace: bool,
    pub(super) executable_sha256: Option<Vec<String>>,
    pub(super) claims: Option<BTreeMap<String, RawClaimValues>>,
    pub(super) login: Option<String>,
    pub(super) namespaces: Option<Vec<String>>,
    pub(super) service_accounts: Option<Vec<String>>,
    pub(super) pod_labels: Option<BTreeMap<String, String>>,
    pub(super) containers: Option<Vec<String>>,
    #[serde(default)]
    pub(super) identities: Vec<String>,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) scopes: Option<Vec<String>>,
    #[serde(default)]
    pub(super) agent: bool,
    pub(super) rate: Option<String>,
}

/// One `[[sink]]`.
#[derive(Debug, Deserialize)]
pub(super) struct RawSink {
    pub(super) identity: String,
    pub(super) audience: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) path: String,
    pub(super) mode: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) group: Option<String>,
}

/// One `[[login]]`: where people sign in (section `people/`).
#[derive(Debug, Deserialize)]
pub(super) struct RawLogin {
    pub(super) name: String,
    pub(super) provider: String,
    pub(super) client_id: String,
    pub(super) client_auth: Option<String>,
    pub(super) client_secret_file: Option<String>,
    pub(super) private_key_file: Option<String>,
    pub(super) key_id: Option<String>,
    pub(super) scopes: Option<Vec<String>>,
    pub(super) flow: Option<String>,
    pub(super) max_session: Option<String>,
    pub(super) users: Option<Vec<String>>,
    pub(super) groups: Option<Vec<String>>,
    #[serde(default)]
    pub(super) persist: bool,
}

/// The key paths in `table` that no section accepts, each found by deserializing one key at a
/// time: one top-level key, one key of a table such as `[agent]`, or one key of one entry of an
/// array of tables such as `[[role]]`. A value that is missing or has the wrong type therefore
/// hides no unknown key beside it. An empty table or entry is checked as itself, so a misspelled
/// section is found even with no keys.
pub(super) fn unknown_keys(table: toml::Table) -> Vec<Vec<Seg>> {
    let mut out = Vec::new();
    for (name, value) in table {
        match value {
            toml::Value::Table(t) => {
                for piece in one_key_each(t) {
                    check(single(&name, toml::Value::Table(piece)), None, &mut out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for (i, item) in items.into_iter().enumerate() {
                    let toml::Value::Table(t) = item else { continue };
                    for piece in one_key_each(t) {
                        let entry = toml::Value::Array(vec![toml::Value::Table(piece)]);
                        check(single(&name, entry), Some(i), &mut out);
                    }
                }
            }
            other => check(single(&name, other), None, &mut out),
        }
    }
    out
}

/// `table` split into tables of one key each (or itself when it is empty).
fn one_key_each(table: toml::Table) -> Vec<toml::Table> {
    if table.is_empty() {
        return vec![table];
    }
    table.into_iter().map(|(k, v)| single(&k, v)).collect()
}

fn single(key: &str, value: toml::Value) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert(key.to_string(), value);
    t
}

/// Records the unknown keys of a one-key document; `index` is the entry's place in its array of
/// tables, put back into the paths (the document holds that entry alone, at index 0).
fn check(doc: toml::Table, index: Option<usize>, out: &mut Vec<Vec<Seg>>) {
    // A missing field or a wrong type is an error here, and not this function's business: only
    // the unknown keys reported on the way count.
    let _checked: Result<RawConfig, _> = serde_ignored::deserialize(toml::Value::Table(doc), |p| {
        let mut path = segments(&p);
        if let (Some(i), Some(Seg::Index(at))) = (index, path.get_mut(1)) {
            *at = i;
        }
        out.push(path);
    });
}
