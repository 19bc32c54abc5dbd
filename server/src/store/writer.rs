//! Group commit: [`Writer`] owns the [`Store`], gathers every batch of changes queued while
//! the previous commit ran into one group, commits the group once (one journal write, one
//! fdatasync in `fsync` mode) and reports per group which tickets it covered. Holding
//! replies until their ticket is reported, and deciding what to do when a commit fails, is
//! the engine's business; applying a group is the store's.
//!
//! Two ways in:
//! - [`Writer::submit`] queues a batch for the dedicated thread `qd-writer`. Why a thread
//!   and not a tokio task: a commit blocks in `fsync` for milliseconds, and the store must
//!   have exactly one writer anyway. Under load the thread is always either committing or
//!   draining the queue, so one fsync serves every request that arrived during the previous
//!   one.
//! - [`Writer::commit_now`] commits on the caller's own thread when nothing is queued and
//!   no `fdatasync` would follow (`interval` and `none`): the commit is then a buffered
//!   write and a fold into memory, tens of microseconds, cheaper than the two thread
//!   hand-offs (a futex wake of this thread, and a wake of the runtime worker that
//!   receives the result) it replaces. At light load that is nearly every batch (issue 10).
//!   In `fsync` mode it declines: blocking a runtime worker for an `fdatasync` would also
//!   hold up the tasks queued behind it on that worker.
//!
//! Both paths commit under one lock, in the order the engine hands them tickets: the engine
//! commits inline only when none of its tickets is in flight, so nothing queued can be
//! older. The thread still owns the interval flush: an inline commit that makes the store
//! dirty tells it so (at most once per flush interval), so "flushed within the interval"
//! holds whichever path committed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::{Durability, Store, StoreError};
use crate::model::Change;

/// Most changes gathered into one group. Beyond this, a bigger journal write no longer saves
/// fsyncs worth mentioning but does delay the first reply of the group; the rest simply
/// waits in the queue for the next group.
const MAX_GROUP_CHANGES: usize = 8_192;

/// Most changes [`Writer::commit_now`] commits on the caller's thread: a bigger batch means
/// load, where the writer thread's overlap of committing and serving pays.
const MAX_INLINE_CHANGES: usize = 256;

/// The outcome of one group commit.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Every ticket whose batch was in the group, in submission order.
    pub tickets: Vec<u64>,
    /// `Ok` once the group is applied (and, in `fsync` mode, on disk). An error means
    /// none of the group's changes may be acknowledged.
    pub result: Result<(), Arc<StoreError>>,
}

/// What the writer thread is told.
enum Message {
    /// A batch to commit under a ticket.
    Submit { ticket: u64, changes: Vec<Change> },
    /// An inline commit left the store unflushed (`interval` mode): arm the flush timer.
    Dirty,
}

/// The writer thread's handle. Dropping it without [`Writer::shutdown`] still lets the
/// thread commit and flush what was queued, but nobody learns the outcome of the flush.
pub struct Writer {
    /// Unbounded on purpose: `submit` must never block the engine's task. The engine bounds
    /// what is in flight (it holds a reply per queued change).
    queue: Sender<Message>,
    /// To answer a submission directly when the thread is gone.
    done: UnboundedSender<Committed>,
    /// The store and its commit state, shared by the thread and [`Writer::commit_now`].
    core: Arc<Mutex<Core>>,
    /// Whether [`Writer::commit_now`] may commit: not in `fsync` mode (see the module docs).
    inline: bool,
    thread: JoinHandle<Result<(), StoreError>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread `qd-writer`. `done` receives one [`Committed`] per group
    /// the thread commits. `interval` matters in [`Durability::Interval`] mode only: the
    /// longest time applied changes stay unflushed.
    pub fn spawn(
        store: Box<dyn Store>,
        durability: Durability,
        interval: Duration,
        done: UnboundedSender<Committed>,
    ) -> Writer {
        let (queue, rx) = mpsc::channel();
        let core = Arc::new(Mutex::new(Core {
            store,
            durability,
            broken: None,
            last_error: None,
            dirty_since: None,
            stats: GroupStats::default(),
        }));
        let loop_ = WriterLoop { core: core.clone(), interval, rx, done: done.clone() };
        let thread = std::thread::Builder::new()
            .name("qd-writer".into())
            .spawn(move || loop_.run())
            .expect("the OS refused to start the qd-writer thread");
        let inline = durability != Durability::Fsync;
        Writer { queue, done, core, inline, thread }
    }

    /// Queues one batch of changes under `ticket`; never blocks. Its outcome arrives on
    /// `done` as part of one [`Committed`].
    pub fn submit(&self, ticket: u64, changes: Vec<Change>) {
        if self.queue.send(Message::Submit { ticket, changes }).is_err() {
            // The thread is gone (it can only end early by a panic outside a commit): answer
            // the ticket here, so that no reply waits forever.
            let reason = "the writer thread ended".to_string();
            let _ = self.done.send(Committed {
                tickets: vec![ticket],
                result: Err(Arc::new(StoreError::WriterStopped { reason })),
            });
        }
    }

    /// Commits `changes` under `ticket` on the caller's thread and returns the outcome, or
    /// gives the changes back (`Err`) to be [`submit`](Writer::submit)ted instead: in
    /// `fsync` mode, for a big batch, or while the thread holds the store. The caller must
    /// have no ticket in flight (every one it submitted already reported), so that this
    /// one cannot overtake an older one.
    pub fn commit_now(&self, ticket: u64, changes: Vec<Change>) -> Result<Committed, Vec<Change>> {
        if !self.inline || changes.len() > MAX_INLINE_CHANGES {
            return Err(changes);
        }
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(changes),
        };
        let was_dirty = core.dirty_since.is_some();
        let result = core.commit_group(1, &changes);
        let now_dirty = core.dirty_since.is_some();
        drop(core);
        if now_dirty && !was_dirty {
            // The thread sleeps without a deadline while the store is clean; one message per
            // flush interval at most, against one hand-off each way per commit before.
            let _ = self.queue.send(Message::Dirty);
        }
        Ok(Committed { tickets: vec![ticket], result })
    }

    /// Lets the writer thread go without waiting for it: it sees its queue closed and
    /// closes the store on its own, or never, if the store hangs. For a failed store,
    /// whose close must not hold up the process's exit.
    pub fn abandon(self) {
        drop(self.queue);
    }

    /// Commits and flushes everything submitted, stops the thread and returns the final
    /// flush's error, or else the last commit error seen, if any.
    pub fn shutdown(self) -> Result<(), StoreError> {
        drop(self.queue);
        match self.thread.join() {
            Ok(result) => result,
            Err(panic) => Err(StoreError::WriterStopped { reason: panic_message(&*panic) }),
        }
    }
}

/// The store and what the commits of both paths share, behind the writer's one lock.
struct Core {
    store: Box<dyn Store>,
    durability: Durability,
    /// Set when the store panicked: its state is unknown, so every later group fails
    /// without touching it.
    broken: Option<String>,
    last_error: Option<Arc<StoreError>>,
    /// `interval` mode: when the oldest unflushed commit was applied.
    dirty_since: Option<Instant>,
    stats: GroupStats,
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // `guarded` catches the store's panics, so a poisoned lock holds a consistent `Core`.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    /// Commits one group of `batches` batches.
    fn commit_group(&mut self, batches: usize, changes: &[Change]) -> Result<(), Arc<StoreError>> {
        self.stats.record(batches, changes.len());
        tracing::trace!(batches, changes = changes.len(), "group commit");
        let durable = self.durability == Durability::Fsync;
        let started = Instant::now();
        let result = self.guarded(|store| store.commit(changes, durable));
        crate::metrics::group_commit(changes.len(), started.elapsed(), result.is_ok()); // metrics hook
        match &result {
            Ok(()) if self.durability == Durability::Interval && self.dirty_since.is_none() => {
                self.dirty_since = Some(Instant::now());
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!("a group commit of {batches} batches failed: {e}");
                self.last_error = Some(e.clone());
            }
        }
        result
    }

    fn interval_flush(&mut self) {
        self.dirty_since = None;
        if let Err(e) = self.guarded(|store| store.flush()) {
            // The replies are already out: all we can do is say so loudly.
            tracing::error!("interval flush failed; recent acknowledged writes may be lost: {e}");
            self.last_error = Some(e);
        }
    }

    /// Runs `op` on the store unless it is broken; a panic inside breaks it.
    fn guarded(
        &mut self,
        op: impl FnOnce(&mut dyn Store) -> Result<(), StoreError>,
    ) -> Result<(), Arc<StoreError>> {
        if let Some(reason) = &self.broken {
            return Err(Arc::new(StoreError::WriterStopped { reason: reason.clone() }));
        }
        let store = &mut *self.store;
        match catch_unwind(AssertUnwindSafe(|| op(store))) {
            Ok(result) => result.map_err(Arc::new),
            Err(panic) => {
                let reason = format!("the store panicked: {}", panic_message(&*panic));
                tracing::error!("{reason}; failing every further commit");
                self.broken = Some(reason.clone());
                Err(Arc::new(StoreError::WriterStopped { reason }))
            }
        }
    }
}

struct WriterLoop {
    core: Arc<Mutex<Core>>,
    interval: Duration,
    rx: Receiver<Message>,
    done: UnboundedSender<Committed>,
}

impl WriterLoop {
    fn run(self) -> Result<(), StoreError> {
        loop {
            let dirty_since = {
                let mut core = lock(&self.core);
                match core.dirty_since {
                    Some(since) if since.elapsed() >= self.interval => {
                        core.interval_flush();
                        None
                    }
                    other => other,
                }
            };
            let message = match dirty_since {
                Some(since) => {
                    let wait = (since + self.interval).saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(wait) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let Message::Submit { ticket, changes: first } = message else { continue };

            let mut tickets = vec![ticket];
            let mut changes = first;
            while changes.len() < MAX_GROUP_CHANGES {
                match self.rx.try_recv() {
                    Ok(Message::Submit { ticket, changes: more }) => {
                        tickets.push(ticket);
                        changes.extend(more);
                    }
                    Ok(Message::Dirty) => {}
                    Err(_) => break,
                }
            }
            let result = lock(&self.core).commit_group(tickets.len(), &changes);
            // The receiver gone means the engine is gone; nothing to tell.
            let _ = self.done.send(Committed { tickets, result });
        }

        let mut core = lock(&self.core);
        tracing::debug!(stats = ?core.stats, "writer stopping");
        // A graceful stop flushes (or checkpoints) in every mode, `none` included.
        match core.guarded(|store| store.close()) {
            Ok(()) => match core.last_error.take() {
                Some(e) => Err(StoreError::Shared(e)),
                None => Ok(()),
            },
            Err(e) => Err(Arc::try_unwrap(e).unwrap_or_else(StoreError::Shared)),
        }
    }
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// How well grouping worked, logged at shutdown: batches per group in powers of two.
#[derive(Debug, Default)]
struct GroupStats {
    groups: u64,
    changes: u64,
    /// `batches_log2[i]`: groups of `2^i ..= 2^(i+1) - 1` batches.
    batches_log2: [u64; 16],
}

impl GroupStats {
    fn record(&mut self, batches: usize, changes: usize) {
        self.groups += 1;
        self.changes += changes as u64;
        let bucket = (usize::BITS - 1 - batches.max(1).leading_zeros()) as usize;
        self.batches_log2[bucket.min(15)] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PersistedState;
    use crate::store::testutil::{complete, fail, insert, recover_all, FakeStore};
    use crate::store::{JournalConfig, JournaledStore, RecoveredMeta, SledConfig, StoreReader};
    use qd_protocol::JobId;
    use std::collections::BTreeSet;
    use std::sync::atomic::Ordering;

    fn open(dir: &std::path::Path) -> JournaledStore {
        JournaledStore::open(&SledConfig::new(dir), JournalConfig::default()).unwrap()
    }

    /// Collects `Committed` until every ticket in `0..n` is seen, checking none twice.
    fn collect(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Committed>, n: u64) -> Vec<Committed> {
        let mut seen = BTreeSet::new();
        let mut groups = vec![];
        while (seen.len() as u64) < n {
            let c = rx.blocking_recv().expect("writer hung up before answering every ticket");
            for t in &c.tickets {
                assert!(seen.insert(*t), "ticket {t} answered twice");
            }
            groups.push(c);
        }
        assert_eq!(seen, (0..n).collect());
        groups
    }

    fn many_batches(durability: Durability) {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = Arc::new(Writer::spawn(
            Box::new(open(dir.path())),
            durability,
            Duration::from_millis(5),
            tx,
        ));
        // Batch t inserts 2t+1 and 2t+2, fails 2t+1, and completes 2t+2 of the batch before.
        let n = 600u64;
        let producer = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for t in 0..n {
                    let mut changes =
                        vec![insert(2 * t + 1), insert(2 * t + 2), fail(2 * t + 1, 1, false)];
                    if t > 0 {
                        changes.push(complete(2 * t));
                    }
                    writer.submit(t, changes);
                }
            })
        };
        producer.join().unwrap();
        let groups = collect(&mut rx, n);
        assert!(groups.iter().all(|g| g.result.is_ok()));
        let writer = Arc::try_unwrap(writer).unwrap();
        writer.shutdown().unwrap();
        eprintln!("{durability:?}: {n} batches in {} groups", groups.len());

        let rec = recover_all(&mut open(dir.path()));
        let expected: Vec<JobId> = (1..=2 * n).filter(|id| id % 2 == 1 || *id == 2 * n).collect();
        assert_eq!(rec.records.iter().map(|r| r.id).collect::<Vec<_>>(), expected);
        assert!(rec.records.iter().filter(|r| r.id % 2 == 1).all(|r| r.failures == 1));
        assert!(rec.next_id > 2 * n);
    }

    #[test]
    fn every_ticket_answered_once_fsync() {
        many_batches(Durability::Fsync);
    }

    #[test]
    fn every_ticket_answered_once_interval() {
        many_batches(Durability::Interval);
    }

    #[test]
    fn every_ticket_answered_once_none() {
        many_batches(Durability::None);
    }

    #[test]
    fn fail_on_a_record_inserted_in_the_same_group() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer =
            Writer::spawn(Box::new(open(dir.path())), Durability::Fsync, Duration::ZERO, tx);
        writer.submit(0, vec![insert(1), fail(1, 1, true)]);
        collect(&mut rx, 1);
        writer.shutdown().unwrap();
        let rec = recover_all(&mut open(dir.path()));
        assert_eq!(rec.records.len(), 1);
        assert_eq!(rec.records[0].state, PersistedState::Dead);
    }

    #[test]
    fn errors_reach_every_ticket_of_the_group_and_panics_stop_the_store() {
        let store = FakeStore::default();
        let state = store.0.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = Writer::spawn(Box::new(store), Durability::Fsync, Duration::ZERO, tx);

        let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Committed>| {
            rx.blocking_recv().expect("an answer")
        };
        writer.submit(0, vec![insert(1)]);
        assert!(next(&mut rx).result.is_ok());

        state.fail_next.store(true, Ordering::SeqCst);
        writer.submit(1, vec![insert(2)]);
        let c = next(&mut rx);
        assert_eq!(c.tickets, vec![1]);
        assert!(c.result.unwrap_err().to_string().contains("no space left"));

        writer.submit(2, vec![insert(3)]);
        assert!(next(&mut rx).result.is_ok(), "one failed commit must not break the next");

        state.panic_next.store(true, Ordering::SeqCst);
        writer.submit(3, vec![insert(4)]);
        let err = next(&mut rx).result.unwrap_err();
        assert!(err.to_string().contains("injected panic"), "{err}");
        writer.submit(4, vec![insert(5)]);
        let err = next(&mut rx).result.unwrap_err();
        assert!(matches!(*err, StoreError::WriterStopped { .. }), "{err}");

        assert_eq!(*state.commits.lock().unwrap(), vec![1, 1]);
        assert!(matches!(writer.shutdown(), Err(StoreError::WriterStopped { .. })));
    }

    /// Issue 10: in `interval` mode a lone batch is committed on the caller's thread, and
    /// the writer thread still flushes it within the interval; `fsync` mode never commits
    /// inline (its `fdatasync` would block the caller), nor does a big batch.
    #[test]
    fn commit_now_commits_inline_and_the_thread_still_flushes() {
        let store = FakeStore::default();
        let state = store.0.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer =
            Writer::spawn(Box::new(store), Durability::Interval, Duration::from_millis(5), tx);
        let done = writer.commit_now(1, vec![insert(1)]).expect("committed inline");
        assert_eq!(done.tickets, vec![1]);
        assert!(done.result.is_ok());
        assert!(state.records.lock().unwrap().contains_key(&1), "applied before returning");
        assert!(rx.try_recv().is_err(), "an inline commit is not reported on the channel");
        let deadline = Instant::now() + Duration::from_secs(30);
        while state.syncs.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the inline commit was never flushed");
            std::thread::sleep(Duration::from_millis(1));
        }

        let big: Vec<Change> = (10..10 + MAX_INLINE_CHANGES as u64 + 1).map(insert).collect();
        let back = writer.commit_now(2, big.clone()).expect_err("too big to commit inline");
        assert_eq!(back, big, "the batch comes back whole, to be submitted");
        writer.submit(2, back);
        assert_eq!(rx.blocking_recv().unwrap().tickets, vec![2]);
        writer.shutdown().unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer =
            Writer::spawn(Box::new(FakeStore::default()), Durability::Fsync, Duration::ZERO, tx);
        let back = writer.commit_now(1, vec![insert(1)]).expect_err("fsync mode: no inline");
        writer.submit(1, back);
        assert!(rx.blocking_recv().unwrap().result.is_ok());
        writer.shutdown().unwrap();
    }

    /// A store whose commits wait for the test's go-ahead, so that the test knows what
    /// is queued while a commit runs.
    struct Gated {
        started: mpsc::Sender<Vec<Change>>,
        proceed: mpsc::Receiver<()>,
    }

    impl Store for Gated {
        fn recover(
            &mut self,
            _visit: &mut dyn FnMut(crate::model::JobRecord),
        ) -> Result<RecoveredMeta, StoreError> {
            Ok(RecoveredMeta { next_id: 1, records: 0, queues: vec![], schedules: vec![] })
        }
        fn commit(&mut self, changes: &[Change], _durable: bool) -> Result<(), StoreError> {
            self.started.send(changes.to_vec()).unwrap();
            self.proceed.recv().unwrap();
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn reader(&self) -> StoreReader {
            unreachable!("not used by the writer")
        }
    }

    #[test]
    fn batches_queued_during_a_commit_form_the_next_group() {
        let (started_tx, started) = mpsc::channel();
        let (proceed, proceed_rx) = mpsc::channel();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let store = Gated { started: started_tx, proceed: proceed_rx };
        let writer = Writer::spawn(Box::new(store), Durability::Fsync, Duration::ZERO, tx);

        writer.submit(0, vec![insert(1)]);
        assert_eq!(started.recv().unwrap(), vec![insert(1)]); // commit of ticket 0 running
        for t in 1..=10 {
            writer.submit(t, vec![insert(t + 1), complete(t)]);
        }
        proceed.send(()).unwrap();
        assert_eq!(rx.blocking_recv().unwrap().tickets, vec![0]);

        // All ten queued batches, in order, as one group and one commit.
        let group = started.recv().unwrap();
        let expected: Vec<Change> = (1..=10).flat_map(|t| [insert(t + 1), complete(t)]).collect();
        assert_eq!(group, expected);
        proceed.send(()).unwrap();
        let c = rx.blocking_recv().unwrap();
        assert_eq!(c.tickets, (1..=10).collect::<Vec<_>>());
        assert!(c.result.is_ok());
        writer.shutdown().unwrap();
    }

    /// Prints the writer's throughput; run with
    /// `cargo test -p qd-server --release --lib writer_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn writer_throughput() {
        for durability in [Durability::Fsync, Durability::Interval, Durability::None] {
            let dir = tempfile::tempdir().unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let writer = Writer::spawn(
                Box::new(open(dir.path())),
                durability,
                Duration::from_millis(10),
                tx,
            );
            let (batches, per_batch) = (20_000u64, 10u64);
            let start = Instant::now();
            for t in 0..batches {
                writer.submit(t, (0..per_batch).map(|i| insert(1 + t * per_batch + i)).collect());
            }
            let groups = collect(&mut rx, batches).len();
            let elapsed = start.elapsed();
            writer.shutdown().unwrap();
            eprintln!(
                "{durability:?}: {} inserts in {elapsed:?} = {:.0}/s, {groups} groups",
                batches * per_batch,
                (batches * per_batch) as f64 / elapsed.as_secs_f64()
            );
        }
    }
}
