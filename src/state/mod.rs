//! State that survives a restart: small named files in `[agent] state_dir`, each encrypted with
//! AES-256-GCM under one key and written atomically. The store ([`StateStore`]) knows nothing of
//! what it keeps (sessions, the token cache); the key's sources and format are in [`key`].

mod key;
mod store;

pub use store::StateError;
pub(crate) use store::StateStore;
