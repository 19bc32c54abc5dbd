//! [`JournaledStore`]: the [`Store`]. It makes groups durable in the journal
//! (`journal.rs`) and moves only their *net effect* into sled's pages, in large background
//! batches (checkpoints). A job added and acked between two checkpoints never costs sled a
//! write. sled stays the store of record; the journal holds what sled does not have yet.
//! Reading and merging pages and syncing sled is `sled_store.rs`'s business; the journal's
//! bytes are `journal.rs`'s; grouping requests is the writer's (`writer.rs`).
//!
//! Data and who holds it:
//! - The writer thread (`qd-writer`, the one owner of the `Store`) appends each group to the
//!   journal, then folds it into the *current pending map* (`id -> Put(encoded record body)
//!   | Delete`): bytes, not decoded records, so an entry costs its encoded size plus a
//!   small fixed overhead (`ENTRY_OVERHEAD`), and that is what the budget counts.
//! - The checkpoint thread (`qd-checkpoint`) owns the [`SledStore`]. When the current map
//!   grows past a byte budget, or the journal segment past its own budget, or a time
//!   interval passes with something journaled, the map is *frozen*: the journal rotates to a
//!   new segment, the map moves to `frozen` (still visible to readers) and the checkpoint
//!   thread merges it into sled page by page, syncs sled, deletes the segments it covered
//!   and only then drops the map from readers' view. Meanwhile the writer fills a new
//!   current map.
//! - Readers look in the current map, then the frozen one, then sled's page of the id; each
//!   decodes one record body.
//!
//! Invariants:
//! 1. Logical state = sled, overlaid with the frozen map, overlaid with the current map.
//!    Every change is in the journal before it is in a map; a map is dropped only after sled
//!    holds it durably; a segment is deleted only after sled holds all of it durably.
//! 2. `Put { fresh: true }` means the id was inserted after the last freeze, so neither sled
//!    nor the frozen map has it: completing it removes the entry (the job cancels out).
//!    Any other completion leaves a `Delete`. Replayed inserts are never fresh (sled may
//!    already hold them).
//! 3. At most one checkpoint runs. The writer keeps accumulating while one runs, but waits
//!    for it once the current map reaches `BACKPRESSURE_FACTOR` times the budget, so the
//!    pending maps together stay below about 2 x that (plus one group).
//! 4. Replaying journal segments onto sled gives the logical state whether or not sled
//!    already holds some of their effect (a crash between a checkpoint's sync and the
//!    segment deletion): `Insert` overwrites, `Complete` removes, and `Fail` is idempotent
//!    (`JobRecord::apply_failure`), and segments are replayed in order.
//! 5. The id ceiling a checkpoint writes covers every id journaled so far, including ids
//!    that cancelled out and never reached sled.
//!
//! Lock order: `ctl`, then `views`. The checkpoint thread never holds the sled mutex while
//! it takes `ctl`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qd_protocol::JobId;

use super::journal::{remove_segments_before, Journal, JOURNAL_DIR};
use super::record;
use super::sled_store::{PageReader, SledStore};
use super::{JobLookup, RecoveredMeta, SledConfig, Store, StoreError, StoreReader};
use crate::model::{Change, JobRecord};

/// The writer waits for a running checkpoint once the current map holds this many times
/// the checkpoint budget.
pub const BACKPRESSURE_FACTOR: u64 = 2;

/// What a pending entry costs besides its body: its slot in the hash table (key, tag,
/// pointer and length, at the table's load factor) and the allocator's header of the body.
/// An estimate; the budget needs the order of magnitude, not the byte.
pub const ENTRY_OVERHEAD: u64 = 64;

/// When checkpoints happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Checkpoint once the current pending map holds about this many bytes (encoded bodies
    /// plus `ENTRY_OVERHEAD` per entry).
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
            checkpoint_bytes: 8 << 20,
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(30),
        }
    }
}

/// What the journal knows about an id that sled does not (yet).
#[derive(Debug, Clone)]
enum Pending {
    /// The record as it is now, encoded as in a page slot (`record.rs`). `fresh`: see
    /// invariant 2.
    Put { body: Box<[u8]>, fresh: bool },
    /// The job completed; sled (or the frozen map) may still have it.
    Delete,
}

impl Pending {
    fn body(&self) -> Option<&[u8]> {
        match self {
            Pending::Put { body, .. } => Some(body),
            Pending::Delete => None,
        }
    }

    /// What the budget counts for this entry.
    fn cost(&self) -> u64 {
        ENTRY_OVERHEAD + self.body().map_or(0, |b| b.len() as u64)
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
    /// What the current map costs (see `Pending::cost`).
    pending_bytes: u64,
    /// What the frozen map cost when it was frozen; 0 when there is none.
    frozen_bytes: u64,
    /// The highest id ever journaled or stored (invariant 5).
    max_id: JobId,
    /// A checkpoint is running (`views.frozen` is its map).
    running: bool,
    /// Set by a failed journal write or checkpoint: every later commit fails with it (the
    /// in-memory state may no longer match the disk; a restart recovers from the disk).
    failed: Option<Arc<StoreError>>,
    last_checkpoint: Instant,
    checkpoints: u64,
    /// Commits that waited for a checkpoint (invariant 3), and whether one waits now.
    backpressure_waits: u64,
    waiting: bool,
}

#[derive(Debug)]
struct Shared {
    views: RwLock<Views>,
    ctl: Mutex<Control>,
    /// Notified (with `ctl`) whenever a checkpoint ends.
    checkpoint_ended: Condvar,
    pages: PageReader,
    config: JournalConfig,
    journal_dir: PathBuf,
    /// Tests hold checkpoints here: each one waits for a message (or a hung-up sender).
    #[cfg(test)]
    gate: Mutex<Option<Receiver<()>>>,
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
    /// The checkpoint thread's sled, for tests that watch what reaches it.
    #[cfg(test)]
    sled: Arc<Mutex<SledStore>>,
    to_checkpointer: Sender<ToCheckpointer>,
    checkpointer: Option<JoinHandle<()>>,
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
    pub sled_open: Duration,
    pub journal_segments: usize,
    pub journal_records: u64,
    /// Entries of the journal's net effect (the pending map after replay).
    pub journal_entries: usize,
    pub journal_replay: Duration,
    pub torn_tail_bytes: u64,
    pub total: Duration,
}

impl JournaledStore {
    /// Opens the store in `sled_config.path`: opens sled (partial snapshot cleanup, lock,
    /// format version), replays the journal in `<data>/journal/` into a pending map (cutting
    /// off a torn tail; its size is bounded by the checkpoint budget the crashed process
    /// kept), and starts the checkpoint thread, which moves the replayed map into sled in
    /// the background. Reading sled's pages is left to [`Store::recover`], which streams.
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
        let sled = SledStore::open(sled_config)?;
        let pages = sled.reader();
        let mut stats = RecoveryStats { sled_open: started.elapsed(), ..RecoveryStats::default() };

        let replay_started = Instant::now();
        let journal_dir = sled_config.path.join(JOURNAL_DIR);
        let mut fold = Fold::default();
        let (journal, replayed) = Journal::open(&journal_dir, |change| {
            // Replayed inserts are not fresh: sled may hold them already (invariant 2).
            fold.apply(&change, false, |id| pages.get(id))
        })?;
        stats.journal_segments = replayed.segments;
        stats.journal_records = replayed.records;
        stats.journal_entries = fold.map.len();
        stats.torn_tail_bytes = replayed.truncated;
        stats.journal_replay = replay_started.elapsed();

        let shared = Arc::new(Shared {
            views: RwLock::new(Views { current: fold.map, frozen: None }),
            ctl: Mutex::new(Control {
                journal,
                pending_bytes: fold.bytes,
                frozen_bytes: 0,
                max_id: fold.max_id,
                running: false,
                failed: None,
                last_checkpoint: Instant::now(),
                checkpoints: 0,
                backpressure_waits: 0,
                waiting: false,
            }),
            checkpoint_ended: Condvar::new(),
            pages,
            config,
            journal_dir,
            #[cfg(test)]
            gate: Mutex::new(None),
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
            #[cfg(test)]
            sled,
            to_checkpointer,
            checkpointer: Some(checkpointer),
            closed: false,
            bases: HashMap::new(),
        };
        // Move what was replayed into sled right away, in the background: the next start
        // then has less journal to read. `recover` overlays it meanwhile.
        if replayed.bytes > 0 {
            let mut ctl = lock(&store.shared.ctl);
            let job = store.shared.freeze(&mut ctl)?;
            drop(ctl);
            store.start(job);
        }
        stats.total = started.elapsed();
        tracing::info!(
            sled_open_ms = stats.sled_open.as_millis() as u64,
            journal_segments = stats.journal_segments,
            journal_records = stats.journal_records,
            journal_entries = stats.journal_entries,
            journal_replay_ms = stats.journal_replay.as_millis() as u64,
            "opened the store"
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
                Some(pending) => pending.body().map(|b| record::decode(*id, b)).transpose()?,
                None => self.shared.pages.get(*id)?,
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
        ctl.frozen_bytes = ctl.pending_bytes;
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

/// Emits records in id order during [`Store::recover`], counting them.
struct Emitter<'v> {
    visit: &'v mut dyn FnMut(JobRecord),
    records: u64,
    highest: Option<JobId>,
}

impl Emitter<'_> {
    fn emit(&mut self, id: JobId, body: &[u8]) -> Result<(), StoreError> {
        let record = record::decode(id, body)?;
        self.records += 1;
        self.highest = Some(id);
        (self.visit)(record);
        Ok(())
    }
}

impl Store for JournaledStore {
    /// Streams sled's pages in id order, overlaid with the pending maps (the journal's net
    /// effect, bounded by the budget): an id a map holds is taken from the map (or skipped
    /// if deleted), and the map's inserts that sled does not have yet are emitted in their
    /// place in the order. Only one page and one record are decoded at a time.
    fn recover(&mut self, visit: &mut dyn FnMut(JobRecord)) -> Result<RecoveredMeta, StoreError> {
        let started = Instant::now();
        let max_id = lock(&self.shared.ctl).max_id;
        let ceiling = self.shared.pages.id_ceiling()?;
        // Held during the scan: a checkpoint may still merge the frozen map into sled
        // meanwhile (either version of a page overlaid with the map is the same state), but
        // cannot drop the map or freeze another until the scan is done.
        let views = read(&self.shared.views);
        let mut overlay: Vec<(JobId, Option<&[u8]>)> =
            views.current.iter().map(|(id, p)| (*id, p.body())).collect();
        if let Some(frozen) = &views.frozen {
            overlay.extend(
                frozen
                    .iter()
                    .filter(|(id, _)| !views.current.contains_key(id))
                    .map(|(id, p)| (*id, p.body())),
            );
        }
        overlay.sort_unstable_by_key(|(id, _)| *id);

        let mut out = Emitter { visit, records: 0, highest: None };
        let mut next = 0;
        let mut from_sled = 0u64;
        self.shared.pages.scan(|id, body| {
            while let Some(&(pending_id, pending)) = overlay.get(next) {
                if pending_id > id {
                    break;
                }
                next += 1;
                if let Some(pending) = pending {
                    out.emit(pending_id, pending)?;
                }
                if pending_id == id {
                    return Ok(()); // the journal's version wins (or its deletion)
                }
            }
            from_sled += 1;
            out.emit(id, body)
        })?;
        for &(id, pending) in &overlay[next..] {
            if let Some(body) = pending {
                out.emit(id, body)?;
            }
        }
        drop(views);

        let after_last = out.highest.map_or(0, |id| id.saturating_add(1));
        let next_id = ceiling.max(max_id.saturating_add(1)).max(after_last).max(1);
        tracing::info!(
            records = out.records,
            from_sled,
            from_journal = out.records - from_sled,
            next_id,
            ms = started.elapsed().as_millis() as u64,
            "recovered the store"
        );
        Ok(RecoveredMeta { next_id, records: out.records })
    }

    fn commit(&mut self, changes: &[Change], durable: bool) -> Result<(), StoreError> {
        if self.closed {
            return Err(StoreError::WriterStopped { reason: "the store was closed".into() });
        }
        self.prefetch_bases(changes)?;
        let shared = self.shared.clone();
        let mut ctl = lock(&shared.ctl);
        // Invariant 3: bounded memory. Waiting here holds up the writer thread, and so
        // every reply, until sled has caught up.
        let limit = shared.config.checkpoint_bytes.saturating_mul(BACKPRESSURE_FACTOR);
        if ctl.running && ctl.pending_bytes >= limit {
            tracing::debug!(pending_bytes = ctl.pending_bytes, "waiting for the checkpoint");
            ctl.backpressure_waits += 1;
            ctl.waiting = true;
            let waited = shared.wait_idle(ctl);
            ctl = match waited {
                Ok(ctl) => ctl,
                Err(e) => {
                    lock(&shared.ctl).waiting = false;
                    return Err(e);
                }
            };
            ctl.waiting = false;
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

        let folded = {
            let mut views = write(&shared.views);
            let mut fold = Fold {
                map: std::mem::take(&mut views.current),
                bytes: ctl.pending_bytes,
                max_id: ctl.max_id,
            };
            let bases = &mut self.bases;
            let result = changes
                .iter()
                .try_for_each(|c| fold.apply(c, true, |id| Ok(bases.remove(&id).flatten())));
            views.current = fold.map;
            ctl.pending_bytes = fold.bytes;
            ctl.max_id = fold.max_id;
            result
        };
        if let Err(e) = folded {
            // Journaled but not in the map: the memory no longer matches the journal.
            let e = Arc::new(e);
            ctl.failed = Some(e.clone());
            return Err(StoreError::Shared(e));
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
                return pending.body().map(|b| record::decode(id, b)).transpose();
            }
        }
        // Not pending: sled has the logical state (or had it a moment ago, if a freeze and
        // checkpoint overtook this lookup; either is a consistent answer).
        self.shared.pages.get(id)
    }
}

/// Folding changes into a pending map: the live path and journal replay share it.
#[derive(Debug, Default)]
struct Fold {
    map: PendingMap,
    /// What `map` costs (see `Pending::cost`).
    bytes: u64,
    max_id: JobId,
}

impl Fold {
    /// Applies one change. `fresh`: whether an insert is certainly not in sled or the
    /// frozen map (invariant 2); `base(id)`: the record a `Fail` applies to when the map
    /// has none.
    fn apply(
        &mut self,
        change: &Change,
        fresh: bool,
        base: impl FnOnce(JobId) -> Result<Option<JobRecord>, StoreError>,
    ) -> Result<(), StoreError> {
        match change {
            Change::Insert(record) => {
                let id = record.id;
                self.max_id = self.max_id.max(id);
                self.put(id, record::encode(record)?, fresh);
            }
            Change::Complete { id } | Change::Remove { id } => match self.map.get(id) {
                Some(Pending::Put { fresh: true, .. }) => {
                    // Invariant 2: never in sled, so nothing to write at all.
                    let old = self.map.remove(id).expect("just seen");
                    self.bytes -= old.cost();
                }
                Some(Pending::Delete) => {}
                Some(Pending::Put { .. }) | None => {
                    // Without an entry, sled or the frozen map may hold it: a `Delete` is
                    // right either way (removing a missing slot is harmless).
                    self.bytes += Pending::Delete.cost();
                    let old = self.map.insert(*id, Pending::Delete);
                    self.bytes -= old.as_ref().map_or(0, Pending::cost);
                }
            },
            Change::Fail { id, .. } | Change::Retry { id, .. } | Change::Reschedule { id, .. } => {
                let (mut record, fresh) = match self.map.get(id) {
                    Some(Pending::Put { body, fresh }) => (record::decode(*id, body)?, *fresh),
                    Some(Pending::Delete) => {
                        tracing::warn!(id, "asked to fail job {id}, which completed; skipped");
                        return Ok(());
                    }
                    None => match base(*id)? {
                        Some(record) => (record, false),
                        None => {
                            tracing::warn!(
                                id,
                                "asked to fail job {id}, which is not stored; skipped"
                            );
                            return Ok(());
                        }
                    },
                };
                match change {
                    Change::Fail { error, run_at_ms, dead, .. } => {
                        record.apply_failure(error.clone(), *run_at_ms, *dead);
                    }
                    Change::Retry { run_at_ms, .. } => {
                        record.failures = 0;
                        record.run_at_ms = *run_at_ms;
                        record.state = crate::model::PersistedState::Waiting;
                    }
                    Change::Reschedule { run_at_ms, .. } => record.run_at_ms = *run_at_ms,
                    _ => {}
                }
                self.put(*id, record::encode(&record)?, fresh);
            }
            Change::Settings { queue, .. } => {
                // Not persisted yet (the store's settings table is being built).
                tracing::warn!(queue, "queue settings are not stored yet; skipped");
            }
            Change::IdFloor { .. } => {
                // Not persisted yet: ids still restart from the highest stored id.
            }
        }
        Ok(())
    }

    fn put(&mut self, id: JobId, body: Box<[u8]>, fresh: bool) {
        let entry = Pending::Put { body, fresh };
        self.bytes += entry.cost();
        let old = self.map.insert(id, entry);
        self.bytes -= old.as_ref().map_or(0, Pending::cost);
    }
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
    #[cfg(test)]
    if let Some(gate) = lock(&shared.gate).as_ref() {
        let _ = gate.recv();
    }
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
        Ok((pages, removed)) => {
            write(&shared.views).frozen = None;
            ctl.frozen_bytes = 0;
            ctl.last_checkpoint = Instant::now();
            ctl.checkpoints += 1;
            tracing::debug!(
                entries,
                pages_written = pages.written,
                pages_removed = pages.removed,
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

/// Merges a frozen map into sled's pages in id order (each touched page read and written
/// once), syncs sled, then deletes the segments the map covered. Holds the sled mutex only
/// meanwhile.
fn apply_checkpoint(
    sled: &Mutex<SledStore>,
    job: &Checkpoint,
    journal_dir: &Path,
) -> Result<(super::sled_store::PagesWritten, usize), StoreError> {
    let mut entries: Vec<(JobId, Option<&[u8]>)> =
        job.map.iter().map(|(id, pending)| (*id, pending.body())).collect();
    entries.sort_unstable_by_key(|(id, _)| *id);
    let pages = {
        let mut sled = lock(sled);
        let pages = sled.apply_checkpoint(&entries, job.max_id)?;
        sled.sync()?;
        pages
    };
    Ok((pages, remove_segments_before(journal_dir, job.before_seq)?))
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
    use std::collections::{BTreeMap, BTreeSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::PersistedState;
    use crate::store::page;
    use crate::store::testutil::{complete, fail, insert, record, recover_all, Recovered};

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

    /// The pages sled's `pages` tree is written with while `f` runs (inserts and
    /// removals), as (page number, whether it was removed).
    fn sled_writes(
        store: &mut JournaledStore,
        f: impl FnOnce(&mut JournaledStore),
    ) -> Vec<(u64, bool)> {
        let mut events = lock(&store.sled).pages_tree().watch_prefix(vec![]);
        f(store);
        let mut keys = vec![];
        // Events are queued while the batch is applied, before `apply_batch` returns.
        while let Ok(event) = events.next_timeout(Duration::ZERO) {
            let removed = matches!(event, sled::Event::Remove { .. });
            keys.push((super::super::keys::page_of_key(event.key()).unwrap(), removed));
        }
        keys.sort_unstable();
        keys
    }

    /// Pages stored in sled right now.
    fn stored_pages(store: &JournaledStore) -> usize {
        lock(&store.sled).pages_tree().len()
    }

    #[test]
    fn a_job_added_and_completed_between_checkpoints_never_reaches_sled() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), manual());
        // One job per page (pages hold 64 ids), so the pages written name the jobs.
        store.commit(&[insert(1), insert(65), insert(129)], true).unwrap();
        store.commit(&[complete(65), fail(129, 1, false)], true).unwrap();
        store.commit(&[insert(193), complete(193)], false).unwrap();
        let written = sled_writes(&mut store, |s| s.checkpoint_now().unwrap());
        assert_eq!(written, vec![(0, false), (2, false)], "only the jobs still pending reach sled");
        let sled = &store.shared.pages;
        assert_eq!(sled.get(1).unwrap(), Some(record(1, 16)));
        assert_eq!(sled.get(129).unwrap().unwrap().failures, 1);
        assert_eq!(sled.get(65).unwrap(), None);

        // Completing the last job of a page removes the page.
        store.commit(&[complete(1)], true).unwrap();
        let written = sled_writes(&mut store, |s| s.checkpoint_now().unwrap());
        assert_eq!(written, vec![(0, true)]);
        assert_eq!(store.shared.pages.get(1).unwrap(), None);
        assert_eq!(stored_pages(&store), 1);
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
            assert_eq!(recover_all(&mut store), Recovered { records: vec![], next_id: 1 });
            store.commit(&(1..=10).map(insert).collect::<Vec<_>>(), true).unwrap();
            store.checkpoint_now().unwrap();
            store.commit(&[complete(1), complete(2), fail(4, 1, false), insert(11)], true).unwrap();
            store.commit(&[complete(11), insert(12), complete(3), fail(4, 2, true)], true).unwrap();
            // Dropped without `close`, as a crash would leave it.
        }
        assert!(!segments(dir.path()).is_empty());
        let (mut store, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), manual()).unwrap();
        assert_eq!(
            (stats.journal_records, stats.journal_entries, stats.torn_tail_bytes),
            (8, 6, 0),
            "ids 1, 2, 3, 11 deleted, 4 failed, 12 inserted"
        );
        let rec = recover_all(&mut store);
        assert_eq!(ids(&rec), vec![4, 5, 6, 7, 8, 9, 10, 12]);
        let four = &rec.records[0];
        assert_eq!((four.failures, four.state, four.errors.len()), (2, PersistedState::Dead, 2));
        assert!(rec.next_id > 12);
        // A second recover (after the background checkpoint of the replayed state) agrees.
        assert_eq!(recover_all(&mut store), rec);
    }

    #[test]
    fn close_checkpoints_everything_and_empties_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let mut store = open(dir.path(), manual());
            store.commit(&[insert(1), insert(2), insert(30)], true).unwrap();
            store.commit(&[complete(30), fail(1, 1, false)], false).unwrap();
            let expected = recover_all(&mut store);
            store.close().unwrap();
            expected
        };
        assert!(segments(dir.path()).is_empty(), "{:?}", segments(dir.path()));
        // sled alone holds it all now, including an id ceiling above the cancelled job 30.
        {
            let sled = SledStore::open(&SledConfig::new(dir.path())).unwrap();
            let mut records = vec![];
            sled.reader()
                .scan(|id, body| {
                    records.push(record::decode(id, body)?);
                    Ok(())
                })
                .unwrap();
            assert_eq!(records, expected.records);
            let ceiling = sled.reader().id_ceiling().unwrap();
            assert!(ceiling > 30, "id ceiling {ceiling} would reuse job 30's id");
        }
        let rec = recover_all(&mut open(dir.path(), manual()));
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
            recover_all(&mut store)
        };
        for saved in std::fs::read_dir(saved.path()).unwrap() {
            let saved = saved.unwrap();
            let back = dir.path().join(JOURNAL_DIR).join(saved.file_name());
            std::fs::copy(saved.path(), back).unwrap();
        }
        let rec = recover_all(&mut open(dir.path(), manual()));
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
        assert_eq!(ids(&recover_all(&mut store)), vec![1, 2]);
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
                // The budget counts what the current map holds, entry by entry.
                let ctl = lock(&store.shared.ctl);
                let views = read(&store.shared.views);
                let counted: u64 = views.current.values().map(Pending::cost).sum();
                assert_eq!(ctl.pending_bytes, counted, "round {round}");
            }
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
                    let rec = recover_all(&mut store);
                    assert_eq!(rec.records, model.values().cloned().collect::<Vec<_>>());
                    assert!(rec.next_id >= next_id, "round {round}");
                }
                4 => {
                    checkpoints += store.checkpoints();
                    store.close().unwrap();
                    drop(store);
                    store = open(dir.path(), tiny.clone());
                    let rec = recover_all(&mut store);
                    assert_eq!(rec.records, model.values().cloned().collect::<Vec<_>>());
                }
                _ => {}
            }
        }
        checkpoints += store.checkpoints();
        assert!(checkpoints > 50, "the tiny budget should checkpoint often: {checkpoints}");
        let expected: Vec<JobRecord> = model.into_values().collect();
        assert_eq!(recover_all(&mut store).records, expected);
        store.close().unwrap();
        drop(store);
        let mut store = open(dir.path(), tiny);
        assert_eq!(recover_all(&mut store).records, expected);
        // Empty pages are removed: sled holds exactly the pages of the live jobs.
        let live_pages: BTreeSet<u64> = expected.iter().map(|r| page::page_no(r.id)).collect();
        assert_eq!(stored_pages(&store), live_pages.len());
    }

    /// The journal tail wins over sled's pages for every id it touches: a page whose jobs
    /// all completed in the journal, a job failed in the journal, jobs inserted in the
    /// journal into a page sled already has and into new pages. The stream comes out in id
    /// order and equals the model.
    #[test]
    fn recovery_overlays_the_journal_tail_on_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::<JobId, JobRecord>::new();
        {
            let mut store = open(dir.path(), manual());
            let first: Vec<Change> = (1..=140).map(insert).collect();
            store.commit(&first, true).unwrap();
            store.checkpoint_now().unwrap();
            assert_eq!(stored_pages(&store), 3);
            for id in 1..=140 {
                model.insert(id, record(id, 16));
            }
            // Journal only from here on.
            let mut tail: Vec<Change> = (64..128).map(complete).collect(); // all of page 1
            tail.extend([complete(1), fail(5, 1, false), fail(5, 2, true), insert(141)]);
            tail.extend([
                insert(300),
                insert(301),
                complete(300),
                complete(140),
                fail(130, 1, false),
            ]);
            store.commit(&tail, true).unwrap();
            for change in tail {
                match change {
                    Change::Insert(r) => {
                        model.insert(r.id, r);
                    }
                    Change::Complete { id } => {
                        model.remove(&id);
                    }
                    Change::Fail { id, error, run_at_ms, dead } => {
                        model.get_mut(&id).unwrap().apply_failure(error, run_at_ms, dead);
                    }
                    other => unreachable!("this test commits no {other:?}"),
                }
            }
            // Dropped without `close`: sled has 140 jobs, the journal the rest.
        }
        let (mut store, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), manual()).unwrap();
        assert_eq!(stats.journal_records, 73);
        let rec = recover_all(&mut store);
        assert_eq!(rec.records, model.values().cloned().collect::<Vec<_>>());
        assert!(rec.next_id > 301);
        // Readers agree, before and after the replayed tail reached sled.
        let reader = store.reader();
        for id in 0..310 {
            assert_eq!(reader.get(id).unwrap().as_ref(), model.get(&id), "job {id}");
        }
        store.checkpoint_now().unwrap();
        for id in 0..310 {
            assert_eq!(reader.get(id).unwrap().as_ref(), model.get(&id), "job {id}");
        }
        // Page 1 emptied and is gone; pages 0, 2 and 4 (job 301) remain.
        assert_eq!(stored_pages(&store), 3);
        assert_eq!(recover_all(&mut store).records, model.values().cloned().collect::<Vec<_>>());
    }

    /// Invariant 3 with a checkpoint held up: the writer stops (waits) once the current map
    /// reaches twice the budget, the maps never hold more than that plus one group, and
    /// everything committed meanwhile is there once the checkpoint is let go.
    #[test]
    fn backpressure_bounds_the_pending_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 16 * 1024;
        let config = JournalConfig {
            checkpoint_bytes: budget,
            segment_bytes: u64::MAX,
            checkpoint_interval: Duration::from_secs(3600),
        };
        let mut store = open(dir.path(), config);
        let (release, gate) = mpsc::channel::<()>();
        *lock(&store.shared.gate) = Some(gate);
        let shared = store.shared.clone();
        let group_len = 10u64;
        let groups = 200u64;
        // One insert costs its body plus the entry overhead; a group at most ten of them.
        let one = record::encode(&record(1, 16)).unwrap().len() as u64 + ENTRY_OVERHEAD;
        let writer = std::thread::spawn(move || {
            for g in 0..groups {
                let group: Vec<Change> =
                    (1..=group_len).map(|i| insert(g * group_len + i)).collect();
                store.commit(&group, false).unwrap();
            }
            store
        });
        // Wait (polling, with a deadline) until the writer blocks on the held checkpoint.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let ctl = lock(&shared.ctl);
                if ctl.waiting {
                    assert!(ctl.running);
                    let limit = budget * BACKPRESSURE_FACTOR;
                    assert!(ctl.pending_bytes >= limit, "waited at {} bytes", ctl.pending_bytes);
                    assert!(ctl.pending_bytes < limit + group_len * one, "{}", ctl.pending_bytes);
                    // The frozen map was frozen at the budget, within one group.
                    assert!(
                        ctl.frozen_bytes >= budget && ctl.frozen_bytes < budget + group_len * one
                    );
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the writer never waited for the checkpoint");
            std::thread::yield_now();
        }
        drop(release); // let every checkpoint through
        let mut store = writer.join().unwrap();
        assert!(lock(&store.shared.ctl).backpressure_waits >= 1);
        let rec = recover_all(&mut store);
        assert_eq!(ids(&rec), (1..=groups * group_len).collect::<Vec<_>>());
        assert!(store.checkpoints() >= 2);
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
        let recovering = Instant::now();
        let mut count = 0u64;
        let meta = store.recover(&mut |_| count += 1).unwrap();
        assert_eq!((meta.records, count), (n, n));
        eprintln!(
            "{stats:?}; streaming recover {:?}; peak RSS {}",
            recovering.elapsed(),
            peak_rss()
        );
        let checkpoint = Instant::now();
        store.close().unwrap();
        eprintln!("final checkpoint of the replayed tail: {:?}", checkpoint.elapsed());
        drop(store);
        let (mut store, stats) =
            JournaledStore::open_with_stats(&SledConfig::new(dir.path()), JournalConfig::default())
                .unwrap();
        let recovering = Instant::now();
        let meta = store.recover(&mut |_| {}).unwrap();
        assert_eq!(meta.records, n);
        eprintln!("after a clean stop: {stats:?}; streaming recover {:?}", recovering.elapsed());
    }

    fn peak_rss() -> String {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
            .unwrap_or_default()
    }
}
