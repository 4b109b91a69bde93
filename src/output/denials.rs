//! Repeated denials, collapsed. A caller that asks again and again for what it may not have
//! (a script in a loop, or someone filling the disk through the audit log) leaves one
//! `token.denied` line per window; the next line for the same denial carries `"repeated": N`,
//! the identical denials left out before it, so every line stands for `1 + repeated` denials.
//! What is left out when the caller stops is written by the periodic [`Denials::flush`], and
//! everything at shutdown ([`Denials::flush_all`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Identical denials of one uid within this window are counted, not written.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(10);
/// Denials tracked at once; past this, denials are written as they come (each line is bounded).
const MAX_TRACKED: usize = 4096;

/// One kind of denial: who (uid, and pod UID for a caller in a pod), why (the error code) and what was asked (a digest of identity,
/// audience and scope). The pid is left out, so a loop that starts a new process each time is
/// still one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    uid: u32,
    ask: u64,
}

#[derive(Debug)]
struct Seen {
    written: Instant,
    left_out: u64,
    /// The fields of the last denial left out, for the line that reports them.
    last: Option<serde_json::Value>,
    /// The `reference` of the written line: denials left out are answered with it, so the
    /// reference a caller is given always leads to a line.
    reference: Option<serde_json::Value>,
}

/// The denials seen recently.
#[derive(Debug, Default)]
pub struct Denials {
    seen: Mutex<HashMap<Key, Seen>>,
}

/// What to do with one denial.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `repeated` identical denials were left out since the last line (0: none).
    Write { repeated: u64 },
    /// Leave it out (counted).
    LeaveOut,
}

impl Denials {
    /// Decides about one denial of `uid` whose `token.denied` fields are `fields` (their
    /// `reason`, `identity`, `audience` and `scope` make it identical to another or not). A
    /// denial left out takes the `reference` of the line written for it.
    pub fn admit(&self, uid: u32, fields: &mut serde_json::Value) -> Verdict {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for k in ["reason", "identity", "audience", "scope"] {
            fields.get(k).map(|v| v.to_string()).hash(&mut h);
        }
        // Pods of one node often share a uid; each pod is a caller of its own.
        fields.pointer("/caller/pod/uid").map(|v| v.to_string()).hash(&mut h);
        let key = Key { uid, ask: h.finish() };
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get_mut(&key) {
            if now.duration_since(s.written) < DENIAL_WINDOW {
                s.left_out += 1;
                if let Some(r) = &s.reference {
                    fields["reference"] = r.clone();
                }
                s.last = Some(fields.clone());
                return Verdict::LeaveOut;
            }
            let repeated = std::mem::take(&mut s.left_out);
            s.written = now;
            s.last = None;
            s.reference = fields.get("reference").cloned();
            return Verdict::Write { repeated };
        }
        if seen.len() >= MAX_TRACKED {
            seen.retain(|_, s| now.duration_since(s.written) < DENIAL_WINDOW || s.left_out > 0);
        }
        if seen.len() < MAX_TRACKED {
            seen.insert(
                key,
                Seen {
                    written: now,
                    left_out: 0,
                    last: None,
                    reference: fields.get("reference").cloned(),
                },
            );
        }
        Verdict::Write { repeated: 0 }
    }

    /// The denials left out whose window has passed, each as the fields of the last one with
    /// `"repeated": N`; forgets denials not seen for a window.
    pub fn flush(&self) -> Vec<serde_json::Value> {
        self.flush_older_than(DENIAL_WINDOW)
    }

    /// Every denial left out, whatever its window (at shutdown: nothing is lost).
    pub fn flush_all(&self) -> Vec<serde_json::Value> {
        self.flush_older_than(Duration::ZERO)
    }

    fn flush_older_than(&self, age: Duration) -> Vec<serde_json::Value> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, s| {
            if now.duration_since(s.written) < age {
                return true;
            }
            if let Some(mut fields) = s.last.take() {
                // This line is the last one left out; it stands for the others too.
                if s.left_out > 1 {
                    fields["repeated"] = (s.left_out - 1).into();
                }
                out.push(fields);
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn identical_denials_of_one_uid_are_written_once_per_window_with_their_count() {
        let d = Denials::default();
        let mut ask =
            serde_json::json!({"reason": "access_denied", "identity": "payments", "pid": 1, "reference": "r1"});
        assert_eq!(d.admit(4242, &mut ask), Verdict::Write { repeated: 0 });
        for _ in 0..99 {
            assert_eq!(d.admit(4242, &mut ask), Verdict::LeaveOut);
        }
        // Another uid, or another identity, is another denial.
        assert_eq!(d.admit(4343, &mut ask), Verdict::Write { repeated: 0 });
        let mut other = serde_json::json!({"reason": "access_denied", "identity": "ledger"});
        assert_eq!(d.admit(4242, &mut other), Verdict::Write { repeated: 0 });
        // The same uid in two pods is two callers.
        let pods = Denials::default();
        let in_pod = |pod: &str| {
            let mut ask = serde_json::json!({"reason": "access_denied", "identity": "payments", "caller": {"uid": 4242, "pod": {"uid": pod}}});
            pods.admit(4242, &mut ask)
        };
        assert_eq!(in_pod("pod-a"), Verdict::Write { repeated: 0 });
        assert_eq!(in_pod("pod-b"), Verdict::Write { repeated: 0 });
        assert_eq!(in_pod("pod-b"), Verdict::LeaveOut);
        assert!(d.flush().is_empty(), "nothing is due inside the window");

        tokio::time::advance(DENIAL_WINDOW).await;
        assert_eq!(d.admit(4242, &mut ask), Verdict::Write { repeated: 99 });
        assert_eq!(d.admit(4242, &mut ask), Verdict::LeaveOut);
        tokio::time::advance(DENIAL_WINDOW).await;
        let flushed = d.flush();
        assert_eq!(flushed.len(), 1, "{flushed:?}");
        assert_eq!(flushed[0].get("repeated"), None, "one left out: the line is that one");
        assert_eq!(flushed[0]["identity"], "payments");
        let mut again = serde_json::json!({"reason": "access_denied", "identity": "payments", "reference": "r2"});
        assert_eq!(d.admit(4242, &mut again), Verdict::Write { repeated: 0 });
        let mut left_out = serde_json::json!({"reason": "access_denied", "identity": "payments", "reference": "r3"});
        assert_eq!(d.admit(4242, &mut left_out), Verdict::LeaveOut);
        assert_eq!(
            left_out["reference"], "r2",
            "a denial left out is answered with the written line's reference"
        );
        tokio::time::advance(DENIAL_WINDOW).await;
        assert_eq!(d.flush()[0]["reference"], "r2", "and reported under it");

        assert_eq!(d.admit(4242, &mut ask), Verdict::Write { repeated: 0 });
        assert_eq!(d.admit(4242, &mut ask), Verdict::LeaveOut);
        assert_eq!(d.admit(4242, &mut ask), Verdict::LeaveOut);
        assert!(d.flush().is_empty());
        assert_eq!(
            d.flush_all()[0]["repeated"],
            1,
            "at shutdown nothing is left out: 1 + 1"
        );
    }
}
