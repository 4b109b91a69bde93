//! The agent's own credential files (subject and actor tokens), cached by file stamp.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::{FileStamp, SecretFile};
use crate::token::Secret;

/// Credential files, re-read when their content changes (inode, size, mtime, ctime), so the
/// request path costs one `stat` and a rotated credential starts a new cache key at once.
#[derive(Default)]
pub(super) struct CredentialFiles {
    seen: Mutex<HashMap<PathBuf, (FileStamp, Secret)>>,
}

impl CredentialFiles {
    pub(super) fn read(&self, file: &SecretFile) -> Result<Secret, String> {
        let stamp = file.stamp();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(stamp), Some((known, value))) = (stamp, seen.get(&file.path))
            && *known == stamp
        {
            return Ok(value.clone());
        }
        let value = Secret::from(file.read()?);
        // Computed once here, so every clone handed out carries it.
        let _ = value.fingerprint();
        if let Some(stamp) = stamp {
            seen.insert(file.path.clone(), (stamp, value.clone()));
        }
        Ok(value)
    }
}
