//! User names by uid, looked up at most once a second per uid.
//!
//! A name only describes a caller (in audit lines, answers and logs): roles that name a user are
//! resolved to a uid when the configuration is loaded, and callers match by uid. So a name may be
//! a little stale without granting anything: a change in the user database (`/etc/passwd`, or
//! whatever NSS source answers `getpwuid`) reaches the connections made a second later at most.
//! The lookup itself (reading and parsing `/etc/passwd`, or asking a directory service) was a
//! large part of the cost of attesting a new connection.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a looked-up name is used before it is looked up again.
const FRESH: Duration = Duration::from_secs(1);
/// Uids remembered at most; beyond, the stale ones go, then all.
const MAX_ENTRIES: usize = 4096;

/// Names by uid, each with the time it was looked up; `None` for a uid without a name.
struct Names {
    entries: BTreeMap<u32, (Instant, Option<String>)>,
}

impl Names {
    const fn new() -> Names {
        Names {
            entries: BTreeMap::new(),
        }
    }

    /// The name of `uid` if looked up less than [`FRESH`] before `now`.
    fn fresh(&self, uid: u32, now: Instant) -> Option<Option<String>> {
        let (at, name) = self.entries.get(&uid)?;
        (now.saturating_duration_since(*at) < FRESH).then(|| name.clone())
    }

    fn insert(&mut self, uid: u32, now: Instant, name: Option<String>) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&uid) {
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < FRESH);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(uid, (now, name));
    }
}

static NAMES: Mutex<Names> = Mutex::new(Names::new());

/// The user name of `uid`, looked up at most once every [`FRESH`].
pub(super) fn name_of(uid: u32) -> Option<String> {
    name_with(uid, Instant::now(), lookup)
}

fn name_with(uid: u32, now: Instant, lookup: impl FnOnce(u32) -> Option<String>) -> Option<String> {
    if let Some(name) = NAMES.lock().unwrap_or_else(PoisonError::into_inner).fresh(uid, now) {
        return name;
    }
    // Looked up without the lock: a slow directory service holds up no other connection.
    let name = lookup(uid);
    NAMES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(uid, now, name.clone());
    name
}

fn lookup(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_looked_up_again_once_a_second_has_passed() {
        // A uid no other test uses, so the shared table is this test's.
        let uid = 4_000_000_001;
        let t0 = Instant::now();
        assert_eq!(name_with(uid, t0, |_| Some("before".into())).as_deref(), Some("before"));
        let same = name_with(uid, t0 + Duration::from_millis(999), |_| Some("after".into()));
        assert_eq!(same.as_deref(), Some("before"), "within the second: not looked up");
        let renamed = name_with(uid, t0 + FRESH, |_| Some("after".into()));
        assert_eq!(renamed.as_deref(), Some("after"), "a second later: looked up again");
        let removed = name_with(uid, t0 + FRESH * 2, |_| None);
        assert_eq!(removed, None, "a user removed from the database loses the name too");
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut names = Names::new();
        for uid in 0..MAX_ENTRIES as u32 {
            names.insert(uid, t0, None);
        }
        names.insert(1, t0, Some("again".into()));
        assert_eq!(names.entries.len(), MAX_ENTRIES, "an update takes no room");
        names.insert(MAX_ENTRIES as u32, t0 + FRESH, Some("new".into()));
        assert_eq!(names.entries.len(), 1, "the stale entries made room");
        assert_eq!(names.fresh(MAX_ENTRIES as u32, t0 + FRESH), Some(Some("new".into())));
        assert_eq!(names.fresh(0, t0 + FRESH), None);
    }

    #[test]
    fn root_is_named() {
        assert_eq!(name_of(0).as_deref(), Some("root"));
    }
}
