//! Sessions of `persist = true` logins across a restart: what is written (in `state/`'s
//! encrypted store, as one document, `sessions`) and how a session comes back from it. Times are
//! kept as Unix seconds; a session past its `max_session` end is not brought back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zeroize::{Zeroize, Zeroizing};

use super::People;
use super::session::{Session, Tokens};
use crate::token::Secret;

/// The name of the sessions' document in the state store.
pub(crate) const STATE_NAME: &str = "sessions";

/// One session as written; its token strings are zeroised when it is dropped.
#[derive(Serialize, Deserialize)]
struct Saved {
    id: String,
    uid: u32,
    login: String,
    flow: String,
    sub: String,
    email: Option<String>,
    started: u64,
    ends: u64,
    access_token: String,
    access_expires: u64,
    access_lifetime: u64,
    id_token: Option<String>,
    refresh_token: Option<String>,
    claims: serde_json::Value,
    last_refresh: Option<u64>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        self.access_token.zeroize();
        self.id_token.zeroize();
        self.refresh_token.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    sessions: Vec<Saved>,
}

/// Why the saved sessions cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("the saved sessions are not a sessions document: {0}")]
pub struct ParseError(serde_json::Error);

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `at` (a wall-clock time) on the monotonic clock, as seen now.
fn instant_of(at: u64, now_wall: SystemTime, now: Instant) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(at);
    match at.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
    }
}

fn flow_name(flow: &str) -> &'static str {
    if flow == "browser" { "browser" } else { "device" }
}

impl People {
    /// The document of the live sessions whose login `persists` says to keep.
    pub(crate) fn saved_document(&self, persists: impl Fn(&str) -> bool) -> Zeroizing<Vec<u8>> {
        let now_wall = SystemTime::now();
        let now = Instant::now();
        let sessions = self
            .sessions()
            .values()
            .filter(|s| persists(&s.login) && !s.is_ended())
            .map(|s| {
                let t = s.tokens();
                let wall = |i: Instant| unix(now_wall + i.saturating_duration_since(now));
                Saved {
                    id: s.id.clone(),
                    uid: s.uid,
                    login: s.login.clone(),
                    flow: s.flow.to_string(),
                    sub: s.sub.clone(),
                    email: s.email.clone(),
                    started: unix(s.started),
                    ends: unix(s.ends_at_system),
                    access_token: t.access_token.expose().to_string(),
                    access_expires: wall(t.access_expires),
                    access_lifetime: t.access_lifetime.as_secs(),
                    id_token: t.id_token.as_ref().map(|x| x.expose().to_string()),
                    refresh_token: t.refresh_token.as_ref().map(|x| x.expose().to_string()),
                    claims: (*t.claims).clone(),
                    last_refresh: t.last_refresh.map(unix),
                }
            })
            .collect();
        let doc = Document { version: 1, sessions };
        Zeroizing::new(serde_json::to_vec(&doc).unwrap_or_default())
    }

    /// Brings back the saved sessions whose login `persists` says to keep and whose
    /// `max_session` has not passed; each gets its refresher. Returns how many came back.
    pub(crate) fn restore(
        self: &Arc<Self>,
        bytes: &[u8],
        persists: impl Fn(&str) -> bool,
    ) -> Result<usize, ParseError> {
        let doc: Document = serde_json::from_slice(bytes).map_err(ParseError)?;
        let now_wall = SystemTime::now();
        let now = Instant::now();
        let mut restored = 0;
        for mut saved in doc.sessions {
            if !persists(&saved.login) || saved.ends <= unix(now_wall) {
                continue;
            }
            let session = Session {
                id: saved.id.clone(),
                uid: saved.uid,
                login: saved.login.clone(),
                flow: flow_name(&saved.flow),
                sub: saved.sub.clone(),
                email: saved.email.clone(),
                started: UNIX_EPOCH + Duration::from_secs(saved.started),
                ends_at: instant_of(saved.ends, now_wall, now),
                ends_at_system: UNIX_EPOCH + Duration::from_secs(saved.ends),
                tokens: std::sync::Mutex::new(Tokens {
                    access_token: Secret::new(std::mem::take(&mut saved.access_token)),
                    access_expires: instant_of(saved.access_expires, now_wall, now),
                    access_lifetime: Duration::from_secs(saved.access_lifetime.max(1)),
                    id_token: saved.id_token.take().map(Secret::new),
                    refresh_token: saved.refresh_token.take().map(Secret::new),
                    claims: Arc::new(saved.claims.take()),
                    last_refresh: saved.last_refresh.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
                    generation: 0,
                    failures: 0,
                    last_error: None,
                    ended: None,
                }),
                refreshing: tokio::sync::Mutex::new(()),
                ended: tokio_util::sync::CancellationToken::new(),
            };
            let session = Arc::new(session);
            self.sessions()
                .insert((session.uid, session.login.clone()), session.clone());
            tokio::spawn(super::refresh::refresher(self.clone(), session));
            restored += 1;
        }
        Ok(restored)
    }
}
