//! The encrypted store: one file per name in `state_dir`, AES-256-GCM with a random nonce per
//! write and the name and format version as associated data (so a file renamed to another name,
//! or from another version, does not decrypt), written atomically.
//!
//! File layout: `CXST`, the version byte, the 12-byte nonce, then ciphertext and 16-byte tag.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::key;
use crate::files::{UnsafePath, check_private_dir};
use crate::secrets::{SecretFile, SecretFileError};

const MAGIC: &[u8; 4] = b"CXST";
const VERSION: u8 = 1;
const HEADER: usize = MAGIC.len() + 1;

/// Why the state store cannot be opened or written. Each message names the path and, where
/// there is one, the fix. A file that cannot be read back is not an error (see
/// [`StateStore::load`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// `state_dir` is not private to the agent (another user could swap its files).
    #[error("state_dir: {0}")]
    UnsafeDir(#[from] UnsafePath),
    /// `state_dir` is a link or not a directory.
    #[error("state_dir {} is not a directory (links are not followed); point state_dir at a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// `state_key_file` is missing, readable by other or owned by another user.
    #[error("state_key_file: {0}")]
    KeyFile(SecretFileError),
    /// The key file does not hold a key in a known format.
    #[error(
        "{} does not hold a 32-byte key: write 32 raw bytes, 64 hexadecimal characters or base64 (e.g. openssl rand -hex 32)",
        path.display()
    )]
    KeyFormat { path: PathBuf },
    /// The generated key is a link (refused rather than followed).
    #[error("{} is a symbolic link; the agent does not read its key through links: remove it", path.display())]
    KeyLink { path: PathBuf },
    /// The generated key can be read by others or belongs to another user.
    #[error(
        "{} has mode {mode:04o} and owner uid {owner}; the state key must be the agent's, mode 0600: run chmod 0600 on it, or remove it (the state it encrypts is then lost)",
        path.display()
    )]
    KeyNotPrivate { path: PathBuf, mode: u32, owner: u32 },
    /// The name is not a plain file name.
    #[error("{name:?} is not a state name: use letters, digits, '.', '_' and '-', not starting with '.'")]
    BadName { name: String },
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The cryptographic library refused (no randomness, or a key it does not accept).
    #[error("encryption failed")]
    Crypto,
}

/// Named, encrypted files in one directory. Its `Debug` shows the directory, never the key.
pub struct StateStore {
    dir: PathBuf,
    key: LessSafeKey,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens `dir` (created 0700 if missing), refusing a link, a non-directory, or a directory
    /// another user can write (`files::check_private_dir`). The key comes from `key_file` (see
    /// `state/key.rs` for the formats), else from `dir/state.key`, generated at first start.
    pub fn open(dir: &Path, key_file: Option<&SecretFile>) -> Result<StateStore, StateError> {
        check_private_dir(dir)?;
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| StateError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: dir.to_path_buf(),
                    source,
                });
            }
            Ok(_) => {}
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(StateError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        check_private_dir(dir)?;
        let raw = match key_file {
            Some(file) => key::from_secret_file(file)?,
            None => key::generated_in(dir)?,
        };
        let key = UnboundKey::new(&AES_256_GCM, &raw[..]).map_err(|_| StateError::Crypto)?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
            key: LessSafeKey::new(key),
        })
    }

    /// Encrypts `plaintext` and replaces the file `name` with it atomically (a temporary file in
    /// the directory, 0600, synced, renamed over the old one, the directory synced).
    pub fn save(&self, name: &str, plaintext: &[u8]) -> Result<(), StateError> {
        let path = self.path(name)?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StateError::Crypto)?;
        let mut sealed = Zeroizing::new(plaintext.to_vec());
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(name), &mut *sealed)
            .map_err(|_| StateError::Crypto)?;
        let mut bytes = Vec::with_capacity(HEADER + NONCE_LEN + sealed.len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);

        let temp = self.dir.join(format!(".{name}.tmp-{:016x}", fastrand::u64(..)));
        let io = |source: std::io::Error| StateError::Io {
            path: temp.clone(),
            source,
        };
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
        self.sync_dir()
    }

    /// The plaintext of `name`, or `None` when there is no such file. A file that cannot be read
    /// or decrypted (another key, a flipped bit, a truncated write, a link) is moved aside as
    /// `NAME.corrupt-<unix seconds>`, logged, and `None` is returned: the caller starts afresh.
    pub fn load(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        let path = self.path(name)?;
        let mut raw = Vec::new();
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .and_then(|mut f| f.read_to_end(&mut raw));
        let why = match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => format!("cannot read it: {e}"),
            Ok(_) => match self.open_sealed(name, raw) {
                Some(plain) => return Ok(Some(plain)),
                None => "it does not decrypt with the state key (another key, or damaged)".to_string(),
            },
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.dir.join(format!("{name}.corrupt-{secs}"));
        std::fs::rename(&path, &aside).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        tracing::warn!(
            file = %path.display(),
            moved_to = %aside.display(),
            "state file not usable, starting without it: {why}"
        );
        Ok(None)
    }

    /// Removes `name`; a missing file is not an error.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn open_sealed(&self, name: &str, raw: Vec<u8>) -> Option<Zeroizing<Vec<u8>>> {
        let mut raw = Zeroizing::new(raw);
        if raw.len() < HEADER + NONCE_LEN || &raw[..MAGIC.len()] != MAGIC || raw[MAGIC.len()] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[HEADER..HEADER + NONCE_LEN]).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, aad(name), &mut raw[HEADER + NONCE_LEN..])
            .ok()?;
        Some(Zeroizing::new(plain.to_vec()))
    }

    fn path(&self, name: &str) -> Result<PathBuf, StateError> {
        let plain = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name != key::GENERATED_KEY
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return Err(StateError::BadName { name: name.into() });
        }
        Ok(self.dir.join(name))
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

/// The associated data: the format version and the name, so a file only opens as itself.
fn aad(name: &str) -> Aad<Vec<u8>> {
    let mut aad = b"cortexid-state".to_vec();
    aad.push(VERSION);
    aad.extend_from_slice(name.as_bytes());
    Aad::from(aad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn corrupt_files(dir: &Path, name: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{name}.corrupt-")))
            .collect()
    }

    #[test]
    fn what_is_saved_loads_back_encrypted_and_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let store = StateStore::open(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("state.key")), 0o600);
        assert!(store.load("tokens").unwrap().is_none());
        store.save("tokens", b"the plaintext secret").unwrap();
        assert_eq!(mode(&dir.join("tokens")), 0o600);
        let on_disk = std::fs::read(dir.join("tokens")).unwrap();
        assert!(!on_disk.windows(9).any(|w| w == b"plaintext"), "stored encrypted");
        assert!(!format!("{store:?}").contains("key:"), "{store:?}");
        // A second open (a restart) reads the generated key back.
        let again = StateStore::open(&dir, None).unwrap();
        assert_eq!(&again.load("tokens").unwrap().unwrap()[..], b"the plaintext secret");
        store.save("tokens", b"newer").unwrap();
        assert_eq!(&again.load("tokens").unwrap().unwrap()[..], b"newer");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        again.remove("tokens").unwrap();
        again.remove("tokens").unwrap();
        assert!(again.load("tokens").unwrap().is_none());
        for bad in ["", ".hidden", "a/b", "..", "state.key", "x y"] {
            assert!(
                matches!(store.save(bad, b"x"), Err(StateError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_file_from_another_key_is_moved_aside_and_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let key = root.path().join("key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = StateStore::open(&dir, Some(&SecretFile { path: key.clone() })).unwrap();
        store.save("sessions", b"abc").unwrap();
        assert!(!dir.join("state.key").exists(), "a configured key generates none");
        let other = StateStore::open(&dir, None).unwrap();
        assert!(other.load("sessions").unwrap().is_none());
        assert!(!dir.join("sessions").exists());
        assert_eq!(corrupt_files(&dir, "sessions").len(), 1);
        // The same key written as hex opens what the raw key wrote.
        store.save("sessions", b"abc").unwrap();
        std::fs::write(&key, format!("{}\n", "07".repeat(32))).unwrap();
        let hex = StateStore::open(&dir, Some(&SecretFile { path: key })).unwrap();
        assert_eq!(&hex.load("sessions").unwrap().unwrap()[..], b"abc");
    }

    #[test]
    fn a_flipped_byte_or_a_renamed_file_does_not_decrypt() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let store = StateStore::open(&dir, None).unwrap();
        store.save("tokens", b"0123456789").unwrap();
        let mut bytes = std::fs::read(dir.join("tokens")).unwrap();
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        std::fs::write(dir.join("tokens"), &bytes).unwrap();
        assert!(store.load("tokens").unwrap().is_none());
        assert_eq!(corrupt_files(&dir, "tokens").len(), 1);
        // Associated data: a valid file under another name does not open.
        store.save("a", b"mine").unwrap();
        std::fs::rename(dir.join("a"), dir.join("b")).unwrap();
        assert!(store.load("b").unwrap().is_none());
        assert_eq!(corrupt_files(&dir, "b").len(), 1);
    }

    #[test]
    fn directories_others_can_write_and_links_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = StateStore::open(&open, None).unwrap_err();
        assert!(matches!(e, StateError::UnsafeDir(_)), "{e}");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        assert!(!open.join("state.key").exists());
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = StateStore::open(&link, None).unwrap_err();
        assert!(matches!(e, StateError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn a_linked_or_readable_generated_key_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let planted = root.path().join("planted");
        std::fs::write(&planted, "07".repeat(32)).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&planted, dir.join("state.key")).unwrap();
        let e = StateStore::open(&dir, None).unwrap_err();
        assert!(matches!(e, StateError::KeyLink { .. }), "{e}");
        std::fs::remove_file(dir.join("state.key")).unwrap();
        StateStore::open(&dir, None).unwrap();
        std::fs::set_permissions(dir.join("state.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = StateStore::open(&dir, None).unwrap_err();
        assert!(matches!(e, StateError::KeyNotPrivate { mode: 0o640, .. }), "{e}");
        // A configured key "other" can read is refused like any secret file.
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = StateStore::open(&dir, Some(&SecretFile { path: planted })).unwrap_err();
        assert!(e.to_string().contains("readable by other"), "{e}");
    }
}
