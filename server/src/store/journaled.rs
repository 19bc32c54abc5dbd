//! [`JournaledStore`]: the [`Store`] that makes groups durable in the journal
//! (`journal.rs`) and moves only their *net effect* into sled, in large background batches
//! (checkpoints). A job added and acked between two checkpoints never costs sled a write.
//! sled stays the store of record; the journal holds what sled does not have yet. Encoding
//! records for sled and syncing it is `sled_store.rs`'s business; the journal's bytes are
//! `journal.rs`'s; grouping requests is the writer's (`writer.rs`).
//!
//! Data and who holds it:
//! - The writer thread (`qd-writer`, the one owner of the `Store`) appends each group to the
//!   journal, then folds it into the *current pending map* (`id -> Put(record) | Delete`).
//! - The checkpoint thread (`qd-checkpoint`) owns the [`SledStore`]. When the current map
//!   grows past a byte budget, or the journal segment past its own budget, or a time
//!   interval passes with something journaled, the map is *frozen*: the journal rotates to a
//!   new segment, the map moves to `frozen` (still visible to readers) and the checkpoint
//!   thread applies it to sled, syncs sled, deletes the segments it covered and only then
//!   drops the map from readers' view. Meanwhile the writer fills a new current map.
//! - Readers look in the current map, then the frozen one, then sled.
//!
//! Invariants:
//! 1. Logical state = sled, overlaid with the frozen map, overlaid with the current map.
//!    Every change is in the journal before it is in a map; a map is dropped only after sled
//!    holds it durably; a segment is deleted only after sled holds all of it durably.
//! 2. `Put { fresh: true }` means the id was inserted after the last freeze, so neither sled
//!    nor the frozen map has it: completing it removes the entry (the job cancels out).
//!    Any other completion leaves a `Delete`.
//! 3. At most one checkpoint runs. The writer keeps accumulating while one runs, but waits
//!    for it once the current map reaches `BACKPRESSURE_FACTOR` times the budget, so memory
//!    stays bounded.
//! 4. Replaying journal segments onto sled gives the logical state whether or not sled
//!    already holds some of their effect (a crash between a checkpoint's sync and the
//!    segment deletion): `Insert` overwrites, `Complete` removes, and `Fail` is idempotent
//!    (`JobRecord::apply_failure`), and segments are replayed in order.
//! 5. The id ceiling a checkpoint writes covers every id journaled so far, including ids
//!    that cancelled out and never reached sled.
//!
//! Lock order: `ctl`, then `views`. The checkpoint thread never holds the sled mutex while
//! it takes `ctl`, so `recover` may hold `ctl` and then take sled.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qd_protocol::JobId;

use super::journal::{remove_segments_before, Journal, JOURNAL_DIR};
use super::{JobLookup, Recovered, SledConfig, SledStore, Store, StoreError, StoreReader};
use crate::model::{Change, JobRecord};

/// The writer waits for a running checkpoint once the current map holds this many times
/// the checkpoint budget.
pub const BACKPRESSURE_FACTOR: u64 = 4;

/// When checkpoints happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Checkpoint once the current pending map holds about this many bytes of records.
    pub checkpoint_bytes: u64,
    /// Checkpoint once the newest journal segment is this long, even if the pending map is
    /// small (jobs that cancel out still fill the journal).
    pub segment_bytes: u64,
    /// Checkpoint when this much time passed since the last one and anything was journaled.
    pub checkpoint_interval: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            checkpoint_bytes: 32 << 20,
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(30),
        }
    }
}

/// What the journal knows about an id that sled does not (yet).
#[derive(Debug, Clone)]
enum Pending {
    /// The record as it is now. `fresh`: see invariant 2. Boxed: a map entry stays small,
    /// which keeps rehashing the big maps cheap.
    Put { record: Box<JobRecord>, fresh: bool },
    /// The job completed; sled (or the frozen map) may still have it.
    Delete,
}

impl Pending {
    fn record(&self) -> Option<&JobRecord> {
        match self {
            Pending::Put { record, .. } => Some(&**record),
            Pending::Delete => None,
        }
    }
}

type PendingMap = HashMap<JobId, Pending>;

/// What readers see on top of sled.
#[derive(Debug, Default)]
struct Views {
    current: PendingMap,
    /// The map a checkpoint is applying (or failed to apply) to sled.
    frozen: Option<Arc<PendingMap>>,
}

/// The writer side's state, shared with the checkpoint thread for idle checkpoints and the
/// hand-back at the end of each checkpoint.
#[derive(Debug)]
struct Control {
    journal: Journal,
    /// Estimated bytes of the current map (see `entry_bytes`).
    pending_bytes: u64,
    /// The highest id ever journaled or stored (invariant 5).
    max_id: JobId,
    /// A checkpoint is running (`views.frozen` is its map).
    running: bool,
    /// Set by a failed journal write or checkpoint: every later commit fails with it (the
    /// in-memory state may no longer match the disk; a restart recovers from the disk).
    failed: Option<Arc<StoreError>>,
    last_checkpoint: Instant,
    checkpoints: u64,
}

#[derive(Debug)]
struct Shared {
    views: RwLock<Views>,
    ctl: Mutex<Control>,
    /// Notified (with `ctl`) whenever a checkpoint ends.
    checkpoint_ended: Condvar,
    sled_reader: StoreReader,
    config: JournalConfig,
    journal_dir: PathBuf,
}

/// One checkpoint's work.
#[derive(Debug)]
struct Checkpoint {
    map: Arc<PendingMap>,
    /// Every segment below this seq is covered by `map` (and earlier checkpoints).
    before_seq: u64,
    max_id: JobId,
}

#[derive(Debug)]
enum ToCheckpointer {
    Run(Checkpoint),
    Stop,
}

/// The journaled store. Owned by the writer thread; readers go through [`Store::reader`].
pub struct JournaledStore {
    shared: Arc<Shared>,
    sled: Arc<Mutex<SledStore>>,
    to_checkpointer: Sender<ToCheckpointer>,
    checkpointer: Option<JoinHandle<()>>,
    /// What `open` recovered, handed out by the first `recover`.
    recovered: Option<Recovered>,
    closed: bool,
    /// Per-commit scratch: the record each `Fail` of the group applies to, looked up before
    /// the group is journaled (so a failed lookup leaves nothing behind).
    bases: HashMap<JobId, Option<JobRecord>>,
}

impl std::fmt::Debug for JournaledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledStore")
            .field("journal_dir", &self.shared.journal_dir)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// How long each step of `open` took, and what the journal held.
#[derive(Debug, Clone, Default)]
pub struct RecoveryStats {
    pub sled_records: usize,
    pub sled_scan: Duration,
    pub journal_segments: usize,
    pub journal_records: u64,
    pub journal_replay: Duration,
    pub torn_tail_bytes: u64,
    pub total: Duration,
}

impl JournaledStore {
    /// Opens the store in `sled_config.path`: opens sled (partial snapshot cleanup, lock,
    /// format version), scans it, replays the journal in `<data>/journal/` on top (cutting
    /// off a torn tail), and starts the checkpoint thread. The replayed state becomes the
    /// pending map, which a first checkpoint moves into sled in the background. Call
    /// [`Store::recover`] for the result.
    pub fn open(
        sled_config: &SledConfig,
        config: JournalConfig,
    ) -> Result<JournaledStore, StoreError> {
        Self::open_with_stats(sled_config, config).map(|(store, _)| store)
    }

    /// [`JournaledStore::open`], also saying where the time went.
    pub fn open_with_stats(
        sled_config: &SledConfig,
        config: JournalConfig,
    ) -> Result<(JournaledStore, RecoveryStats), StoreError> {
        let started = Instant::now();
        let mut sled = SledStore::open(sled_config)?;
        let base = sled.recover()?;
        let mut stats = RecoveryStats {
            sled_records: base.records.len(),
            sled_scan: started.elapsed(),
            ..RecoveryStats::default()
        };

        let replay_started = Instant::now();
        let journal_dir = sled_config.path.join(JOURNAL_DIR);
        let mut fold = Fold::default();
        let in_base = |id: JobId| base.records.binary_search_by_key(&id, |r| r.id);
        let (journal, replayed) = Journal::open(&journal_dir, |change| {
            fold.apply(
                change,
                |id| in_base(id).is_ok(),
                |id| in_base(id).ok().map(|i| base.records[i].clone()),
            );
            Ok(())
        })?;
        stats.journal_segments = replayed.segments;
        stats.journal_records = replayed.records;
        stats.torn_tail_bytes = replayed.truncated;
        stats.journal_replay = replay_started.elapsed();

        let next_id = base.next_id.max(fold.max_id.saturating_add(1)).max(1);
        let records = merge(base.records, &fold.map);
        let recovered = Recovered { records, next_id };

        let shared = Arc::new(Shared {
            views: RwLock::new(Views { current: fold.map, frozen: None }),
            ctl: Mutex::new(Control {
                journal,
                pending_bytes: fold.bytes,
                max_id: fold.max_id,
                running: false,
                failed: None,
                last_checkpoint: Instant::now(),
                checkpoints: 0,
            }),
            checkpoint_ended: Condvar::new(),
            sled_reader: sled.reader(),
            config,
            journal_dir,
        });
        let sled = Arc::new(Mutex::new(sled));
        let (to_checkpointer, rx) = mpsc::channel();
        let checkpointer = {
            let (shared, sled) = (shared.clone(), sled.clone());
            std::thread::Builder::new()
                .name("qd-checkpoint".into())
                .spawn(move || checkpoint_loop(&shared, &sled, &rx))
                .map_err(|e| StoreError::io("cannot start the qd-checkpoint thread", e))?
        };
        let store = JournaledStore {
            shared,
            sled,
            to_checkpointer,
            checkpointer: Some(checkpointer),
            recovered: Some(recovered),
            closed: false,
            bases: HashMap::new(),
        };
        // Move what was replayed into sled right away, in the background: the next start
        // then has less journal to read.
        if replayed.bytes > 0 {
            let mut ctl = lock(&store.shared.ctl);
            let job = store.shared.freeze(&mut ctl)?;
            drop(ctl);
            store.start(job);
        }
        stats.total = started.elapsed();
        tracing::info!(
            sled_records = stats.sled_records,
            sled_scan_ms = stats.sled_scan.as_millis() as u64,
            journal_segments = stats.journal_segments,
            journal_records = stats.journal_records,
            journal_replay_ms = stats.journal_replay.as_millis() as u64,
            "recovered the journaled store"
        );
        Ok((store, stats))
    }

    /// How many checkpoints completed since `open`.
    pub fn checkpoints(&self) -> u64 {
        lock(&self.shared.ctl).checkpoints
    }

    /// Freezes the current map and waits until it is in sled and its segments are gone.
    pub fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        let mut ctl = self.shared.wait_idle(lock(&self.shared.ctl))?;
        let job = self.shared.freeze(&mut ctl)?;
        drop(ctl);
        self.start(job);
        let ctl = self.shared.wait_idle(lock(&self.shared.ctl))?;
        drop(ctl);
        Ok(())
    }

    fn start(&self, job: Checkpoint) {
        if self.to_checkpointer.send(ToCheckpointer::Run(job)).is_err() {
            // Only after a panic outside a checkpoint: make it visible to the next commit.
            let mut ctl = lock(&self.shared.ctl);
            ctl.running = false;
            ctl.failed = Some(Arc::new(StoreError::WriterStopped {
                reason: "the qd-checkpoint thread ended".into(),
            }));
        }
    }

    /// Looks up the record every `Fail` of `changes` applies to unless the current map has
    /// it: in the frozen map, else sled. Done before journaling, so an error leaves nothing.
    fn prefetch_bases(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        self.bases.clear();
        if !changes.iter().any(|c| matches!(c, Change::Fail { .. })) {
            return Ok(());
        }
        let views = read(&self.shared.views);
        for change in changes {
            let Change::Fail { id, .. } = change else { continue };
            if views.current.contains_key(id) || self.bases.contains_key(id) {
                continue;
            }
            let base = match views.frozen.as_ref().and_then(|f| f.get(id)) {
                Some(pending) => pending.record().cloned(),
                None => self.shared.sled_reader.get(*id)?,
            };
            self.bases.insert(*id, base);
        }
        Ok(())
    }

    /// Stops the checkpoint thread after the checkpoint it is running, if any.
    fn stop_checkpointer(&mut self) {
        if let Some(thread) = self.checkpointer.take() {
            let _ = self.to_checkpointer.send(ToCheckpointer::Stop);
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Waits for a running checkpoint to end; fails if the store is failed.
    fn wait_idle<'a>(
        &self,
        mut ctl: MutexGuard<'a, Control>,
    ) -> Result<MutexGuard<'a, Control>, StoreError> {
        while ctl.running && ctl.failed.is_none() {
            ctl = self.checkpoint_ended.wait(ctl).unwrap_or_else(PoisonError::into_inner);
        }
        match &ctl.failed {
            Some(e) => Err(StoreError::Shared(e.clone())),
            None => Ok(ctl),
        }
    }

    /// Rotates the journal and moves the current map to `frozen`. The caller hands the
    /// result to the checkpoint thread (or is it). Requires no checkpoint running.
    fn freeze(&self, ctl: &mut Control) -> Result<Checkpoint, StoreError> {
        debug_assert!(!ctl.running);
        let before_seq = match ctl.journal.rotate() {
            Ok(seq) => seq,
            Err(e) => {
                let e = Arc::new(e);
                ctl.failed = Some(e.clone());
                return Err(StoreError::Shared(e));
            }
        };
        let map = {
            let mut views = write(&self.views);
            // Sized like the last map: growing a big table step by step rehashes it
            // several times, on the writer's path.
            let fresh = HashMap::with_capacity(views.current.len().min(1 << 20));
            let map = Arc::new(std::mem::replace(&mut views.current, fresh));
            views.frozen = Some(map.clone());
            map
        };
        ctl.running = true;
        ctl.pending_bytes = 0;
        Ok(Checkpoint { map, before_seq, max_id: ctl.max_id })
    }

    /// Whether the writer should start a checkpoint now.
    fn checkpoint_due(&self, ctl: &Control) -> bool {
        !ctl.running
            && ctl.failed.is_none()
            && (ctl.pending_bytes >= self.config.checkpoint_bytes
                || ctl.journal.segment_len() >= self.config.segment_bytes
                || (ctl.journal.segment_len() > 0
                    && ctl.last_checkpoint.elapsed() >= self.config.checkpoint_interval))
    }
}

impl Store for JournaledStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        if let Some(recovered) = self.recovered.take() {
            return Ok(recovered);
        }
        // Later calls (tests, tools): sled + the current map, once no checkpoint runs.
        let ctl = self.shared.wait_idle(lock(&self.shared.ctl))?;
        let base = lock(&self.sled).recover()?;
        let views = read(&self.shared.views);
        let next_id = base.next_id.max(ctl.max_id.saturating_add(1));
        Ok(Recovered { records: merge(base.records, &views.current), next_id })
    }

    fn commit(&mut self, changes: &[Change], durable: bool) -> Result<(), StoreError> {
        if self.closed {
            return Err(StoreError::WriterStopped { reason: "the store was closed".into() });
        }
        self.prefetch_bases(changes)?;
        self.recovered = None; // stale from now on
        let shared = self.shared.clone();
        let mut ctl = lock(&shared.ctl);
        // Invariant 3: bounded memory. Waiting here holds up the writer thread, and so
        // every reply, until sled has caught up.
        let limit = shared.config.checkpoint_bytes.saturating_mul(BACKPRESSURE_FACTOR);
        if ctl.running && ctl.pending_bytes >= limit {
            tracing::debug!(pending_bytes = ctl.pending_bytes, "waiting for the checkpoint");
            ctl = shared.wait_idle(ctl)?;
        }
        if let Some(e) = &ctl.failed {
            return Err(StoreError::Shared(e.clone()));
        }

        let written = ctl.journal.append(changes);
        let written = written.and_then(|()| if durable { ctl.journal.sync() } else { Ok(()) });
        if let Err(e) = written {
            // The segment's tail is unknown now: appending more after it could put records
            // behind garbage. Stop; a restart cuts the tail off.
            let e = Arc::new(e);
            ctl.failed = Some(e.clone());
            return Err(StoreError::Shared(e));
        }

        {
            let mut views = write(&shared.views);
            let mut fold = Fold {
                map: std::mem::take(&mut views.current),
                bytes: ctl.pending_bytes,
                max_id: ctl.max_id,
            };
            let bases = &mut self.bases;
            for change in changes {
                fold.apply(change.clone(), |_| false, |id| bases.remove(&id).flatten());
            }
            views.current = fold.map;
            ctl.pending_bytes = fold.bytes;
            ctl.max_id = fold.max_id;
        }

        if shared.checkpoint_due(&ctl) {
            let job = shared.freeze(&mut ctl)?;
            drop(ctl);
            self.start(job);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let mut ctl = lock(&self.shared.ctl);
        if let Some(e) = &ctl.failed {
            return Err(StoreError::Shared(e.clone()));
        }
        if let Err(e) = ctl.journal.sync() {
            let e = Arc::new(e);
            ctl.failed = Some(e.clone());
            return Err(StoreError::Shared(e));
        }
        Ok(())
    }

    /// A final checkpoint: afterwards sled holds everything and the journal is empty.
    fn close(&mut self) -> Result<(), StoreError> {
        if self.closed {
            return Ok(());
        }
        let result = self.checkpoint_now();
        self.closed = true;
        self.stop_checkpointer();
        result?;
        // Only the empty segment the final freeze started is left.
        remove_segments_before(&self.shared.journal_dir, u64::MAX)?;
        Ok(())
    }

    fn reader(&self) -> StoreReader {
        StoreReader::new(Arc::new(JournaledReader { shared: self.shared.clone() }))
    }
}

impl Drop for JournaledStore {
    /// Without `close`: lets a running checkpoint finish, leaves the journal as it is (a
    /// restart replays it).
    fn drop(&mut self) {
        self.stop_checkpointer();
    }
}

/// Lookups: the current map, then the frozen one, then sled.
struct JournaledReader {
    shared: Arc<Shared>,
}

impl JobLookup for JournaledReader {
    fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        {
            let views = read(&self.shared.views);
            let pending =
                views.current.get(&id).or_else(|| views.frozen.as_ref().and_then(|f| f.get(&id)));
            if let Some(pending) = pending {
                return Ok(pending.record().cloned());
            }
        }
        // Not pending: sled has the logical state (or had it a moment ago, if a freeze and
        // checkpoint overtook this lookup; either is a consistent answer).
        self.shared.sled_reader.get(id)
    }
}

/// Folding changes into a pending map: the live path and journal replay share it.
#[derive(Debug, Default)]
struct Fold {
    map: PendingMap,
    bytes: u64,
    max_id: JobId,
}

impl Fold {
    /// Applies one change. `in_base(id)`: whether sled (and the frozen map) hold `id`
    /// (decides `fresh`); `base(id)`: the record a `Fail` applies to when the map has none.
    fn apply(
        &mut self,
        change: Change,
        in_base: impl FnOnce(JobId) -> bool,
        base: impl FnOnce(JobId) -> Option<JobRecord>,
    ) {
        match change {
            Change::Insert(record) => {
                let id = record.id;
                self.max_id = self.max_id.max(id);
                let fresh = !in_base(id);
                self.bytes += record_bytes(&record);
                let old = self.map.insert(id, Pending::Put { record: Box::new(record), fresh });
                self.bytes -= old.as_ref().map_or(0, entry_bytes);
            }
            Change::Complete { id } => match self.map.get(&id) {
                Some(Pending::Put { fresh: true, .. }) => {
                    // Invariant 2: never in sled, so nothing to write at all.
                    let old = self.map.remove(&id).expect("just seen");
                    self.bytes -= entry_bytes(&old);
                }
                Some(Pending::Delete) => {}
                Some(Pending::Put { .. }) | None => {
                    // Without an entry, sled or the frozen map may hold it: a `Delete` is
                    // right either way (removing a missing key is harmless).
                    let old = self.map.insert(id, Pending::Delete);
                    self.bytes += entry_bytes(&Pending::Delete);
                    self.bytes -= old.as_ref().map_or(0, entry_bytes);
                }
            },
            Change::Fail { id, error, run_at_ms, dead } => match self.map.get_mut(&id) {
                Some(Pending::Put { record, .. }) => {
                    self.bytes -= record_bytes(record);
                    record.apply_failure(error, run_at_ms, dead);
                    self.bytes += record_bytes(record);
                }
                Some(Pending::Delete) => {
                    tracing::warn!(id, "asked to fail job {id}, which completed; skipped");
                }
                None => match base(id) {
                    Some(mut record) => {
                        record.apply_failure(error, run_at_ms, dead);
                        self.bytes += record_bytes(&record);
                        self.map
                            .insert(id, Pending::Put { record: Box::new(record), fresh: false });
                    }
                    None => {
                        tracing::warn!(id, "asked to fail job {id}, which is not stored; skipped");
                    }
                },
            },
        }
    }
}

/// Rough memory of a pending record: what the budget counts.
fn record_bytes(record: &JobRecord) -> u64 {
    let errors: usize = record.errors.iter().map(|e| 48 + e.message.len()).sum();
    let key = record.options.key.as_ref().map_or(0, String::len);
    (160 + record.payload.len() + record.queue.len() + record.name.len() + key + errors) as u64
}

fn entry_bytes(pending: &Pending) -> u64 {
    match pending {
        Pending::Put { record, .. } => record_bytes(record),
        Pending::Delete => 32,
    }
}

/// The records of `base` (sled's, in id order) overlaid with `map`, in id order.
fn merge(base: Vec<JobRecord>, map: &PendingMap) -> Vec<JobRecord> {
    if map.is_empty() {
        return base;
    }
    let mut seen = 0;
    let mut records = Vec::with_capacity(base.len() + map.len());
    for record in base {
        match map.get(&record.id) {
            Some(pending) => {
                seen += 1;
                records.extend(pending.record().cloned());
            }
            None => records.push(record),
        }
    }
    if seen < map.len() {
        let in_order = records.len();
        for pending in map.values() {
            if let Pending::Put { record, fresh: true } = pending {
                records.push((**record).clone());
            }
        }
        // Usually every new id is above sled's, and only the new part needs sorting.
        let start = in_order.saturating_sub(1);
        if records[start..].windows(2).any(|w| w[0].id > w[1].id) {
            records[start..].sort_unstable_by_key(|r| r.id);
            if records.windows(2).any(|w| w[0].id > w[1].id) {
                records.sort_unstable_by_key(|r| r.id);
            }
        }
    }
    records
}

/// The checkpoint thread: runs the checkpoints the writer hands over, and starts one itself
/// when the writer is idle but something was journaled long enough ago.
fn checkpoint_loop(shared: &Shared, sled: &Mutex<SledStore>, rx: &Receiver<ToCheckpointer>) {
    let interval = shared.config.checkpoint_interval;
    let tick = (interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let job = match rx.recv_timeout(tick) {
            Ok(ToCheckpointer::Run(job)) => job,
            Ok(ToCheckpointer::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut ctl = lock(&shared.ctl);
                if !shared.checkpoint_due(&ctl) {
                    continue;
                }
                match shared.freeze(&mut ctl) {
                    Ok(job) => job,
                    Err(_) => continue, // recorded in `failed` for the next commit
                }
            }
        };
        run_checkpoint(shared, sled, job);
    }
}

fn run_checkpoint(shared: &Shared, sled: &Mutex<SledStore>, job: Checkpoint) {
    let started = Instant::now();
    let entries = job.map.len();
    let result =
        catch_unwind(AssertUnwindSafe(|| apply_checkpoint(sled, &job, &shared.journal_dir)))
            .unwrap_or_else(|panic| {
                Err(StoreError::WriterStopped {
                    reason: format!(
                        "the checkpoint panicked: {}",
                        super::writer::panic_message(&*panic)
                    ),
                })
            });
    let mut ctl = lock(&shared.ctl);
    ctl.running = false;
    match result {
        Ok(removed) => {
            write(&shared.views).frozen = None;
            ctl.last_checkpoint = Instant::now();
            ctl.checkpoints += 1;
            tracing::debug!(
                entries,
                segments_removed = removed,
                ms = started.elapsed().as_millis() as u64,
                "checkpoint done"
            );
        }
        Err(e) => {
            // The journal still holds everything, and readers still see the frozen map;
            // but sled can no longer take the journal's content, so stop accepting more.
            tracing::error!("checkpoint failed; the store refuses further writes: {e}");
            ctl.failed = Some(Arc::new(e));
        }
    }
    shared.checkpoint_ended.notify_all();
}

/// Applies a frozen map to sled in id order (sled likes neighbouring keys together), syncs
/// sled, then deletes the segments the map covered. Holds the sled mutex only meanwhile.
fn apply_checkpoint(
    sled: &Mutex<SledStore>,
    job: &Checkpoint,
    journal_dir: &Path,
) -> Result<usize, StoreError> {
    let mut entries: Vec<(JobId, Option<&JobRecord>)> =
        job.map.iter().map(|(id, pending)| (*id, pending.record())).collect();
    entries.sort_unstable_by_key(|(id, _)| *id);
    {
        let mut sled = lock(sled);
        sled.apply_net(entries, job.max_id)?;
        sled.sync()?;
    }
    remove_segments_before(journal_dir, job.before_seq)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::PersistedState;
    use crate::store::testutil::{complete, fail, insert, record};

    /// A budget no test reaches by accident: checkpoints happen when the test says.
    fn manual() -> JournalConfig {
        JournalConfig {
            checkpoint_bytes: u64::MAX / 8,
            segment_bytes: u64::MAX,
            checkpoint_interval: Duration::from_secs(3600),
        }
    }

    fn open(dir: &Path, config: JournalConfig) -> JournaledStore {
        JournaledStore::open(&SledConfig::new(dir), config).expect("open journaled store")
    }

    fn ids(recovered: &Recovered) -> Vec<JobId> {
        recovered.records.iter().map(|r| r.id).collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(JOURNAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    /// The keys sled's `jobs` tree is written with while `f` runs (inserts and removals).
    fn sled_writes(store: &mut JournaledStore, f: impl FnOnce(&mut JournaledStore)) -> Vec<JobId> {
        let mut events = lock(&store.sled).jobs_tree().watch_prefix(vec![]);
        f(store);
        let mut keys = vec![];
        // Events are queued while the batch is applied, before `apply_batch` returns.
        while let Ok(event) = events.next_timeout(Duration::ZERO) {
            keys.push(super::super::keys::job_id(event.key()).unwrap());
        }
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_job_added_and_completed_between_checkpoints_never_reaches_sled() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), manual());
        store.commit(&[insert(1), insert(2), insert(3)], true).unwrap();
        store.commit(&[complete(2), fail(3, 1, false)], true).unwrap();
        store.commit(&[insert(4), complete(4)], false).unwrap();
        let written = sled_writes(&mut store, |s| s.checkpoint_now().unwrap());
        assert_eq!(written, vec![1, 3], "only the jobs still pending reach sled");
        let sled = &store.shared.sled_reader;
        assert_eq!(sled.get(1).unwrap(), Some(record(1, 16)));
        assert_eq!(sled.get(3).unwrap().unwrap().failures, 1);
        assert_eq!(sled.get(2).unwrap(), None);

        // Completing a job sled holds is one removal.
        store.commit(&[complete(1)], true).unwrap();
        let written = sled_writes(&mut store, |s| s.checkpoint_now().unwrap());
        assert_eq!(written, vec![1]);
        assert_eq!(store.shared.sled_reader.get(1).unwrap(), None);
        assert_eq!(segments(dir.path()).len(), 1, "covered segments are deleted");
    }

    #[test]
    fn reader_sees_pending_changes_before_any_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), manual());
        let reader = store.reader();
        store.commit(&[insert(1), insert(2)], true).unwrap();
        assert_eq!(reader.get(1).unwrap(), Some(record(1, 16)));
        store.commit(&[complete(1), fail(2, 1, true)], true).unwrap();
        assert_eq!(reader.get(1).unwrap(), None);
        assert_eq!(reader.get(2).unwrap().unwrap().state, PersistedState::Dead);
        store.checkpoint_now().unwrap();
        // Now from sled; a change on top of it shows before the next checkpoint.
        assert_eq!(reader.get(2).unwrap().unwrap().failures, 1);
        store.commit(&[fail(2, 2, false)], true).unwrap();
        assert_eq!(reader.get(2).unwrap().unwrap().failures, 2);
        store.commit(&[complete(2)], true).unwrap();
        assert_eq!(reader.get(2).unwrap(), None);
        assert_eq!(reader.get(99).unwrap(), None);
    }

    #[test]
    fn recovery_replays_the_journal_tail_onto_sled() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path(), manual());
            assert_eq!(store.recover().unwrap(), Recovered { records: vec![], next_id: 1 });
            store.commit(&(1..=10).map(insert).collect::<Vec<_>>(), true).unwrap();
            store.checkpoint_now().unwrap();
            store.commit(&[complete(1), complete(2), fail(4, 1, false), insert(11)], true).unwrap();
            store.commit(&[complete(11), insert(12), complete(3), fail(4, 2, true)], true).unwrap();
            // Dropped without `close`, as a crash would leave it.
        }
        assert!(!segments(dir.path()).is_empty());
        let (mut store, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), manual()).unwrap();
        assert_eq!((stats.sled_records, stats.journal_records, stats.torn_tail_bytes), (10, 8, 0));
        let rec = store.recover().unwrap();
        assert_eq!(ids(&rec), vec![4, 5, 6, 7, 8, 9, 10, 12]);
        let four = &rec.records[0];
        assert_eq!((four.failures, four.state, four.errors.len()), (2, PersistedState::Dead, 2));
        assert!(rec.next_id > 12);
        // A second recover (after the background checkpoint of the replayed state) agrees.
        assert_eq!(store.recover().unwrap(), rec);
    }

    #[test]
    fn close_checkpoints_everything_and_empties_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let mut store = open(dir.path(), manual());
            store.commit(&[insert(1), insert(2), insert(30)], true).unwrap();
            store.commit(&[complete(30), fail(1, 1, false)], false).unwrap();
            let expected = store.recover().unwrap();
            store.close().unwrap();
            expected
        };
        assert!(segments(dir.path()).is_empty(), "{:?}", segments(dir.path()));
        // sled alone holds it all now, including an id ceiling above the cancelled job 30.
        let rec = SledStore::open(&SledConfig::new(dir.path())).unwrap().recover().unwrap();
        assert_eq!(rec.records, expected.records);
        assert!(rec.next_id > 30, "next id {} would reuse job 30's id", rec.next_id);
        let rec = open(dir.path(), manual()).recover().unwrap();
        assert_eq!(rec.records, expected.records);
        assert!(rec.next_id > 30);
    }

    /// A crash after a checkpoint synced sled but before it deleted its segments: replaying
    /// them onto a sled that already holds their effect must change nothing (invariant 4).
    #[test]
    fn replaying_segments_sled_already_holds_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let saved = tempfile::tempdir().unwrap();
        let expected = {
            let mut store = open(dir.path(), manual());
            store.commit(&[insert(1), insert(2), insert(3), insert(4)], true).unwrap();
            store.checkpoint_now().unwrap();
            // Segment(s) of the next checkpoint: fails of a job sled has, two of them.
            store.commit(&[fail(1, 1, false), complete(2), insert(5)], true).unwrap();
            store
                .commit(&[fail(1, 2, false), insert(6), fail(6, 1, false), insert(7)], true)
                .unwrap();
            for path in segments(dir.path()) {
                std::fs::copy(&path, saved.path().join(path.file_name().unwrap())).unwrap();
            }
            store.checkpoint_now().unwrap();
            // Job 7 is in sled and in the saved segments; completing it must not leave the
            // sled copy behind when its replayed insert is mistaken for a new one.
            store.commit(&[fail(1, 3, true), complete(3), complete(7)], true).unwrap();
            store.recover().unwrap()
        };
        for saved in std::fs::read_dir(saved.path()).unwrap() {
            let saved = saved.unwrap();
            let back = dir.path().join(JOURNAL_DIR).join(saved.file_name());
            std::fs::copy(saved.path(), back).unwrap();
        }
        let rec = open(dir.path(), manual()).recover().unwrap();
        assert_eq!(rec.records, expected.records);
        assert_eq!(ids(&rec), vec![1, 4, 5, 6]);
        let one = &rec.records[0];
        assert_eq!(one.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((one.failures, one.state), (3, PersistedState::Dead));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_acknowledged_groups_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path(), manual());
            store.commit(&[insert(1), insert(2)], true).unwrap();
        }
        let newest = segments(dir.path()).pop().unwrap();
        let mut half = vec![];
        super::super::journal::encode_record(&insert(3), &mut half).unwrap();
        half.truncate(half.len() - 3);
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes.extend_from_slice(&half);
        std::fs::write(&newest, &bytes).unwrap();

        let (mut store, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), manual()).unwrap();
        assert_eq!(stats.torn_tail_bytes, half.len() as u64);
        assert_eq!(ids(&store.recover().unwrap()), vec![1, 2]);
    }

    #[test]
    fn damage_in_an_older_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path(), manual());
            store.commit(&[insert(1), insert(2)], true).unwrap();
            lock(&store.shared.ctl).journal.rotate().unwrap();
            store.commit(&[insert(3)], true).unwrap();
        }
        assert_eq!(segments(dir.path()).len(), 2);
        let oldest = segments(dir.path()).remove(0);
        let mut bytes = std::fs::read(&oldest).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&oldest, &bytes).unwrap();
        let err = JournaledStore::open(&SledConfig::new(dir.path()), manual()).unwrap_err();
        assert!(err.to_string().contains("restore the data dir from a backup"), "{err}");
    }

    /// Random groups against a plain map, with checkpoints from tiny budgets, explicit
    /// checkpoints, crash-like drops and clean closes in between; every reopen and a sample
    /// of reader lookups must agree with the model.
    #[test]
    fn random_operations_match_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = JournalConfig {
            checkpoint_bytes: 2048,
            segment_bytes: 4096,
            checkpoint_interval: Duration::from_secs(3600),
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut model = BTreeMap::<JobId, JobRecord>::new();
        let mut next_id = 1;
        let mut store = open(dir.path(), tiny.clone());
        let mut checkpoints = 0;
        for round in 0..600 {
            let mut group = vec![];
            for _ in 0..rng.gen_range(1..12) {
                let live: Vec<JobId> = model.keys().copied().collect();
                match rng.gen_range(0..10) {
                    0..=4 => {
                        let r = record(next_id, rng.gen_range(0..64));
                        next_id += 1;
                        model.insert(r.id, r.clone());
                        group.push(Change::Insert(r));
                    }
                    5..=7 if !live.is_empty() => {
                        let id = live[rng.gen_range(0..live.len())];
                        model.remove(&id);
                        group.push(complete(id));
                    }
                    _ if !live.is_empty() => {
                        let id = live[rng.gen_range(0..live.len())];
                        let r = model.get_mut(&id).unwrap();
                        let change = fail(id, r.failures + 1, rng.gen_bool(0.2));
                        if let Change::Fail { error, run_at_ms, dead, .. } = change.clone() {
                            r.apply_failure(error, run_at_ms, dead);
                        }
                        group.push(change);
                    }
                    _ => {}
                }
            }
            store.commit(&group, rng.gen_bool(0.5)).unwrap();
            {
                // Dropped before a reopen: a reader keeps sled (and its lock) alive.
                let reader = store.reader();
                for _ in 0..4 {
                    let id = rng.gen_range(1..next_id + 2);
                    assert_eq!(reader.get(id).unwrap().as_ref(), model.get(&id), "round {round}");
                }
            }
            match rng.gen_range(0..100) {
                0..=1 => store.checkpoint_now().unwrap(),
                2..=3 => {
                    checkpoints += store.checkpoints();
                    drop(store); // like a crash: the journal stays
                    store = open(dir.path(), tiny.clone());
                    let rec = store.recover().unwrap();
                    assert_eq!(rec.records, model.values().cloned().collect::<Vec<_>>());
                    assert!(rec.next_id >= next_id, "round {round}");
                }
                4 => {
                    checkpoints += store.checkpoints();
                    store.close().unwrap();
                    drop(store);
                    store = open(dir.path(), tiny.clone());
                    let rec = store.recover().unwrap();
                    assert_eq!(rec.records, model.values().cloned().collect::<Vec<_>>());
                }
                _ => {}
            }
        }
        checkpoints += store.checkpoints();
        assert!(checkpoints > 50, "the tiny budget should checkpoint often: {checkpoints}");
        let expected: Vec<JobRecord> = model.into_values().collect();
        assert_eq!(store.recover().unwrap().records, expected);
        store.close().unwrap();
        drop(store);
        assert_eq!(open(dir.path(), tiny).recover().unwrap().records, expected);
    }

    /// Recovery time with a million jobs queued. Run with
    /// `cargo test -p qd-server --release --lib journaled_recovery_time -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn journaled_recovery_time() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1_000_000u64;
        let started = Instant::now();
        {
            let mut store = open(dir.path(), JournalConfig::default());
            for g in 0..n / 1000 {
                let group: Vec<Change> = (1..=1000).map(|i| insert(g * 1000 + i)).collect();
                store.commit(&group, false).unwrap();
            }
            store.flush().unwrap();
            eprintln!(
                "{n} inserts journaled in {:?}, {} checkpoints done; peak RSS {}; dropping \
                 (like a crash)",
                started.elapsed(),
                store.checkpoints(),
                peak_rss()
            );
        }
        eprintln!("segments left: {}", segments(dir.path()).len());
        let (mut store, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), JournalConfig::default())
                .unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(rec.records.len(), n as usize);
        eprintln!("{stats:?}");
        let checkpoint = Instant::now();
        store.close().unwrap();
        eprintln!("final checkpoint of the replayed tail: {:?}", checkpoint.elapsed());
        drop(store);
        let (_, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), JournalConfig::default())
                .unwrap();
        eprintln!("after a clean stop: {stats:?}");
    }

    fn peak_rss() -> String {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
            .unwrap_or_default()
    }
}
