//! The state key: 32 bytes, from `state_key_file` or generated at first start in `state_dir`.
//!
//! Formats accepted in a key file (the content decides): exactly 32 raw bytes; or, surrounding
//! whitespace aside, 64 hexadecimal characters; or the standard base64 of 32 bytes (43 or 44
//! characters). A generated key is written as 64 hexadecimal characters and a newline, mode 0600,
//! created exclusively and never through a link.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::StateError;
use crate::secrets::SecretFile;

/// The length of an AES-256 key.
pub(super) const KEY_LEN: usize = 32;

/// The name of the generated key in `state_dir` (starts with no dot, but has no state file's
/// shape either: state files are named by their users, and `state.key` is refused as a name).
pub(super) const GENERATED_KEY: &str = "state.key";

/// Reads the key from `file` (a secret file: refused when "other" can read it or another user
/// owns it; links are followed, as for every secret file, since credential mounts use them).
pub(super) fn from_secret_file(file: &SecretFile) -> Result<Zeroizing<[u8; KEY_LEN]>, StateError> {
    let raw = file.read_bytes().map_err(StateError::KeyFile)?;
    decode(&raw).ok_or_else(|| StateError::KeyFormat {
        path: file.path.clone(),
    })
}

/// Reads `dir/state.key`, generating it first if it does not exist. A link, a file another user
/// owns, or one that group or other can read is refused.
pub(super) fn generated_in(dir: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, StateError> {
    let path = dir.join(GENERATED_KEY);
    let io = |source: std::io::Error| StateError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(mut file) => {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            aws_lc_rs::rand::fill(&mut key[..]).map_err(|_| StateError::Crypto)?;
            let mut text = Zeroizing::new(hex(&key[..]));
            text.push('\n');
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "generated the state key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_private(&path),
        Err(e) => Err(io(e)),
    }
}

/// Reads an existing generated key: no link, owned by the agent or root, no group or other bits.
fn read_private(path: &PathBuf) -> Result<Zeroizing<[u8; KEY_LEN]>, StateError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(nix::libc::ELOOP) {
                StateError::KeyLink { path: path.clone() }
            } else {
                StateError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| StateError::Io {
        path: path.clone(),
        source,
    })?;
    let agent = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != agent) || mode & 0o077 != 0 {
        return Err(StateError::KeyNotPrivate {
            path: path.clone(),
            mode,
            owner: meta.uid(),
        });
    }
    let mut raw = Zeroizing::new(Vec::new());
    file.read_to_end(&mut raw).map_err(|source| StateError::Io {
        path: path.clone(),
        source,
    })?;
    decode(&raw).ok_or_else(|| StateError::KeyFormat { path: path.clone() })
}

/// 32 raw bytes, 64 hex characters or base64 of 32 bytes; `None` for anything else.
fn decode(raw: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if raw.len() == KEY_LEN {
        key.copy_from_slice(raw);
        return Some(key);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() == 2 * KEY_LEN {
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            key[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        return Some(key);
    }
    use base64::Engine;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?,
    );
    (decoded.len() == KEY_LEN).then(|| {
        key.copy_from_slice(&decoded);
        key
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_formats_give_the_same_key_and_others_are_refused() {
        let key: Vec<u8> = (0..32u8).collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
        assert_eq!(&decode(&key).unwrap()[..], &key[..]);
        assert_eq!(&decode(format!("{}\n", hex(&key)).as_bytes()).unwrap()[..], &key[..]);
        assert_eq!(&decode(b64.as_bytes()).unwrap()[..], &key[..]);
        assert_eq!(&decode(b64.trim_end_matches('=').as_bytes()).unwrap()[..], &key[..]);
        assert!(decode(b"short").is_none());
        assert!(decode(hex(&key[..31]).as_bytes()).is_none());
        assert!(decode(format!("{}zz", &hex(&key)[..62]).as_bytes()).is_none());
    }
}
