//! Group commit of audit lines: requests answered at the same moment share one `write(2)`, and
//! none of them is answered before that write has succeeded.
//!
//! A line joins the open batch. The first line of a batch makes its request the batch's leader.
//! When the output is free, the leader closes the batch and writes it at once (no added delay,
//! so a lone request pays nothing). While another batch is being written, the leader waits for
//! it without blocking its thread, and the lines that arrive meanwhile join the leader's batch:
//! they are written together when the output is free again. The others wait for their batch's
//! result. A batch that cannot be written fails every line in it, so with
//! `audit_failure = "closed"` none of their tokens is handed out. A leader whose request is
//! dropped while it waits (the caller hung up) still writes its batch, from its drop guard, so
//! no follower waits forever.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Why a batch could not be written, as each of its lines' writers sees it.
#[derive(Debug, Clone)]
struct Failure {
    kind: std::io::ErrorKind,
    message: String,
}

/// One batch of lines and, once written, the outcome every line of it shares.
struct Batch {
    result: OnceLock<Result<(), Failure>>,
    done: tokio::sync::Notify,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            result: OnceLock::new(),
            done: tokio::sync::Notify::new(),
        })
    }

    fn finish(&self, result: &std::io::Result<()>) {
        let shared = result.as_ref().map(|_| ()).map_err(|e| Failure {
            kind: e.kind(),
            message: e.to_string(),
        });
        let _ = self.result.set(shared);
        self.done.notify_waiters();
    }

    async fn outcome(&self) -> std::io::Result<()> {
        loop {
            // Registered before the check, so a `finish` between the two still wakes us.
            let notified = self.done.notified();
            if let Some(r) = self.result.get() {
                return r.clone().map_err(|f| std::io::Error::new(f.kind, f.message));
            }
            notified.await;
        }
    }
}

/// The lines waiting for the next write.
struct Open {
    lines: Vec<u8>,
    count: usize,
    batch: Arc<Batch>,
}

/// An output (`T`) whose lines are written in batches. Direct writes that need no batch (rare
/// events) take the same lock through [`GroupCommit::target`], so every write is serialised.
pub(crate) struct GroupCommit<T> {
    open: Mutex<Open>,
    target: Mutex<T>,
    /// Notified whenever the output is released: a leader waiting for it tries again.
    released: tokio::sync::Notify,
}

/// The output, held; releasing it wakes a leader waiting for it.
pub(crate) struct Held<'a, T> {
    guard: Option<MutexGuard<'a, T>>,
    released: &'a tokio::sync::Notify,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard
            .as_deref()
            .unwrap_or_else(|| unreachable!("held until dropped"))
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("held until dropped"))
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.released.notify_waiters();
    }
}

impl<T> GroupCommit<T> {
    pub(crate) fn new(target: T) -> GroupCommit<T> {
        GroupCommit {
            open: Mutex::new(Open {
                lines: Vec::new(),
                count: 0,
                batch: Batch::new(),
            }),
            target: Mutex::new(target),
            released: tokio::sync::Notify::new(),
        }
    }

    /// The output itself, for a write outside any batch (blocks while a batch is written).
    pub(crate) fn target(&self) -> Held<'_, T> {
        self.held(self.target.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The output, if no one holds it now.
    fn try_target(&self) -> Option<Held<'_, T>> {
        match self.target.try_lock() {
            Ok(g) => Some(self.held(g)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(self.held(p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn held<'a>(&'a self, guard: MutexGuard<'a, T>) -> Held<'a, T> {
        Held {
            guard: Some(guard),
            released: &self.released,
        }
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `line` (complete, newline included) together with the lines that join the same
    /// batch, by one call of `write` on the output. Returns once that batch was written (`Ok`)
    /// or could not be (the error, shared by every line of the batch).
    pub(crate) async fn commit<W>(&self, line: &[u8], write: W) -> std::io::Result<()>
    where
        W: Fn(&mut T, &[u8]) -> std::io::Result<()>,
    {
        let (batch, leader) = {
            let mut open = self.open();
            open.lines.extend_from_slice(line);
            open.count += 1;
            (open.batch.clone(), open.count == 1)
        };
        if !leader {
            return batch.outcome().await;
        }
        let mut lead = Leader {
            group: self,
            batch,
            write,
            done: false,
        };
        loop {
            // Registered before trying, so a release between the two still wakes us.
            let released = self.released.notified();
            if let Some(target) = self.try_target() {
                return lead.flush(target);
            }
            released.await;
        }
    }
}

/// The leader of one batch: writes it exactly once, even if its own request is dropped while it
/// waits for the output (its followers would wait forever otherwise).
struct Leader<'a, T, W: Fn(&mut T, &[u8]) -> std::io::Result<()>> {
    group: &'a GroupCommit<T>,
    batch: Arc<Batch>,
    write: W,
    done: bool,
}

impl<T, W: Fn(&mut T, &[u8]) -> std::io::Result<()>> Leader<'_, T, W> {
    fn flush(&mut self, mut target: Held<'_, T>) -> std::io::Result<()> {
        self.done = true;
        // The batch closes only now that the output is held: lines that arrived while the
        // previous batch was written are in it. Only this leader closes this batch, so the
        // lines taken are exactly its lines.
        let lines = {
            let mut open = self.group.open();
            open.count = 0;
            open.batch = Batch::new();
            std::mem::take(&mut open.lines)
        };
        let result = (self.write)(&mut target, &lines);
        drop(target);
        self.batch.finish(&result);
        result
    }
}

impl<T, W: Fn(&mut T, &[u8]) -> std::io::Result<()>> Drop for Leader<'_, T, W> {
    fn drop(&mut self) {
        if !self.done {
            let target = self.group.target();
            let _ = self.flush(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records each write and fails the writes `fail` says to.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        fail: fn(usize) -> bool,
    }

    fn write(r: &mut Recorder, lines: &[u8]) -> std::io::Result<()> {
        let n = r.writes.len();
        r.writes.push(lines.to_vec());
        if (r.fail)(n) {
            return Err(std::io::Error::other("disk full"));
        }
        Ok(())
    }

    /// `n` lines committed by `n` tasks while the output is busy (as when another batch is being
    /// written), then released; each task's outcome, in line order.
    #[allow(clippy::await_holding_lock)] // the output is held on purpose while the tasks join
    async fn burst(group: &Arc<GroupCommit<Recorder>>, n: usize) -> Vec<std::io::Result<()>> {
        let busy = group.target();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { group.commit(format!("line {i}\n").as_bytes(), write).await })
            })
            .collect();
        // Every task joins while the output is busy; none is answered before the write.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "answered before its line was written"
        );
        drop(busy);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn lines_committed_together_share_one_write_and_each_is_answered_after_it() {
        let group = Arc::new(GroupCommit::new(Recorder {
            writes: Vec::new(),
            fail: |_| false,
        }));
        let results = burst(&group, 20).await;
        assert!(results.iter().all(|r| r.is_ok()));
        let writes = group.target().writes.clone();
        assert_eq!(writes.len(), 1, "one write for the whole burst");
        let text = String::from_utf8(writes[0].clone()).unwrap();
        assert_eq!(text.lines().count(), 20);
        for i in 0..20 {
            assert!(text.contains(&format!("line {i}\n")));
        }
        // The next burst is a batch of its own.
        assert!(burst(&group, 3).await.iter().all(|r| r.is_ok()));
        assert_eq!(group.target().writes.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_line_in_it_and_only_those() {
        // The second write fails: the first burst is written, the second is refused whole.
        let group = Arc::new(GroupCommit::new(Recorder {
            writes: Vec::new(),
            fail: |n| n == 1,
        }));
        assert!(burst(&group, 5).await.iter().all(|r| r.is_ok()));
        let failed = burst(&group, 7).await;
        assert_eq!(failed.len(), 7);
        for r in &failed {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.to_string(), "disk full");
        }
        assert!(burst(&group, 2).await.iter().all(|r| r.is_ok()));
        let lines: Vec<usize> = group
            .target()
            .writes
            .iter()
            .map(|w| String::from_utf8_lossy(w).lines().count())
            .collect();
        assert_eq!(lines, [5, 7, 2]);
    }

    #[tokio::test]
    async fn a_lone_line_is_written_at_once() {
        let group = GroupCommit::new(Recorder {
            writes: Vec::new(),
            fail: |_| false,
        });
        let mut lone = std::pin::pin!(group.commit(b"alone\n", write));
        assert!(
            matches!(futures_poll_once(lone.as_mut()), Some(Ok(()))),
            "written and answered in one go"
        );
        assert_eq!(group.target().writes, [b"alone\n".to_vec()]);
    }

    #[tokio::test]
    async fn a_leader_dropped_before_writing_still_writes_its_batch() {
        let group = Arc::new(GroupCommit::new(Recorder {
            writes: Vec::new(),
            fail: |_| false,
        }));
        // The output is busy; the leader joins and waits; a follower joins; the output is
        // released; then the leader's request goes away before it was polled again.
        let busy = group.target();
        let mut leader = Box::pin(group.commit(b"leader\n", write));
        assert!(
            futures_poll_once(leader.as_mut()).is_none(),
            "the leader waits for the output"
        );
        let follower = {
            let group = group.clone();
            tokio::spawn(async move { group.commit(b"follower\n", write).await })
        };
        tokio::task::yield_now().await;
        drop(busy);
        drop(leader);
        follower.await.unwrap().unwrap();
        let writes = group.target().writes.clone();
        assert_eq!(writes, [b"leader\nfollower\n".to_vec()]);
    }

    /// Polls a future once with a no-op waker: its output if it is ready at once.
    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
