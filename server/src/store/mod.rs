//! Persistence of job records: the [`Store`] interface the engine writes through, its
//! errors, and the one implementation behind it, in two layers.
//!
//! What lives here:
//! - `journal/`: the journal layer and [`JournaledStore`], the [`Store`]. It makes each
//!   group durable in an append-only journal and checkpoints the groups' net effect into
//!   the pages in the background (`segment.rs` files and framing, `codec.rs` the bytes of a
//!   change, `pending.rs` the pending-map algebra, `checkpoint.rs` the checkpoint thread).
//! - `pages/`: the page database, sled, the store of record (`db.rs`), its keys and trees
//!   (`keys.rs`), pages of 64 records (`page.rs`), the one encoding of a job record
//!   (`record.rs`) and of a queue's settings (`queues.rs`).
//! - `datadir.rs`: the data dir's lock and file modes; `varint.rs`: the byte primitives the
//!   encodings share; `writer.rs`: the group-commit writer thread.
//!
//! docs/STORAGE.md describes the bytes on disk. What does not live here: deciding *what*
//! to write (the broker core produces [`Change`]s), and holding replies until their change
//! is committed (the engine does that with the [`Committed`] notices the writer sends). The
//! store never imports the core; `crate::model` is the whole interface between them.

mod datadir;
mod journal;
mod pages;
mod varint;
mod writer;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use qd_protocol::JobId;

use crate::model::{Change, JobRecord, QueueSettings};

pub use journal::{
    JournalConfig, JournaledStore, RecoveryStats, DEFAULT_CHECKPOINT_BYTES,
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_SEGMENT_BYTES,
};
pub use pages::keys::STORE_FORMAT_VERSION;
pub use pages::{SledConfig, DEFAULT_CACHE_CAPACITY};
pub use writer::{Committed, Writer};

/// When a commit counts as done, chosen with `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Reply only after the group is flushed and fsynced: nothing acknowledged is lost, even
    /// on power loss.
    #[default]
    Fsync,
    /// Reply once the group is written to the journal (not yet fsynced); fsync the journal
    /// every interval. A crash of the machine (not of qd alone) can lose the last
    /// interval's writes.
    Interval,
    /// Never fsync the journal explicitly; what reaches the disk is up to the OS until the
    /// next checkpoint syncs the pages. For throwaway data.
    None,
}

/// What [`Store::recover`] found besides the records it handed to its visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMeta {
    /// The first id never used in this data dir: assign ids from here on. At least every
    /// `Change::IdFloor` ever committed.
    pub next_id: JobId,
    /// How many records were visited.
    pub records: u64,
    /// Every queue with settings other than the default, in name order (few: one entry per
    /// queue an operator configured).
    pub queues: Vec<(String, QueueSettings)>,
    /// Every named schedule, in name order.
    pub schedules: Vec<crate::model::ScheduleRecord>,
}

/// A persistence engine for job records. One owner (the writer thread) calls the mutating
/// methods; any number of [`StoreReader`]s may read meanwhile.
pub trait Store: Send + 'static {
    /// One scan of everything stored: calls `visit` with each record, in id order, without
    /// collecting them (a million records must not cost a million records of memory at
    /// once). Returns the first id never used (the largest of the persisted id ceiling, the
    /// highest id ever journaled or promised by an `IdFloor` + 1 and the highest record id
    /// + 1; at least 1), the queues' settings and the schedules.
    fn recover(&mut self, visit: &mut dyn FnMut(JobRecord)) -> Result<RecoveredMeta, StoreError>;

    /// [`Store::recover`] for rebuilding the core: the same records, in the same order,
    /// lent one at a time and **without their payloads** (`payload` is empty), which the
    /// core does not keep. A store can then decode each record into one reused buffer and
    /// skip copying the payloads out: at 10 million jobs that is most of a restart.
    fn recover_index(
        &mut self,
        visit: &mut dyn FnMut(&JobRecord),
    ) -> Result<RecoveredMeta, StoreError> {
        self.recover(&mut |record| visit(&record))
    }

    /// Applies all changes as ONE atomic batch, in order. With `durable`, returns only after
    /// the data is on disk. An error means none of the promises hold: the caller fails every
    /// request in the batch. A `Fail`, `Retry`, `Reschedule`, `Complete` or `Remove` for an
    /// id that is not stored is logged and skipped, not an error.
    fn commit(&mut self, changes: &[Change], durable: bool) -> Result<(), StoreError>;

    /// Makes everything applied so far durable.
    fn flush(&mut self) -> Result<(), StoreError>;

    /// Called once by the writer when it stops: makes everything durable and leaves the
    /// data dir tidy for the next start (the journaled store checkpoints into sled). No
    /// commit follows.
    fn close(&mut self) -> Result<(), StoreError> {
        self.flush()
    }

    /// A cheap, cloneable, thread-safe reader for payload lookups while the writer commits.
    fn reader(&self) -> StoreReader;
}

/// What a [`StoreReader`] needs from an engine: point lookups, from any thread.
pub trait JobLookup: Send + Sync + 'static {
    /// The stored record of `id`, if any.
    fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;
}

/// Reads records (payloads, for `reserve` and the admin API) concurrently with the
/// writer. Sees every applied change, durable or not yet. Clone it freely.
#[derive(Clone)]
pub struct StoreReader {
    inner: Arc<dyn JobLookup>,
}

impl StoreReader {
    /// Wraps an engine's lookup.
    pub fn new(lookup: Arc<dyn JobLookup>) -> StoreReader {
        StoreReader { inner: lookup }
    }

    /// The stored record of `id`, if any.
    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner.get(id)
    }
}

impl fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreReader").finish_non_exhaustive()
    }
}

/// What went wrong in the store. Each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation of our own failed (creating the dir, fsync, ...).
    #[error("{context}: {source}; check free disk space and the permissions of the data dir")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// sled returned an error.
    #[error("{context}: {source}; {}", sled_hint(.source))]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },

    /// Another qd (or another store in this process) holds the data dir's lock.
    #[error(
        "another qd is running on data dir {} (it holds the dir's lock file); stop the \
         other qd or point --data at another directory",
        path.display()
    )]
    Locked { path: PathBuf },

    /// Stored bytes do not make sense.
    #[error("{what}; {hint}")]
    Corrupt { what: String, hint: String },

    /// The data dir was written by a format this build does not read.
    #[error(
        "data dir {} was written by format version {found}; this qd reads version \
         {expected}: upgrade qd or point --data at a new directory",
        path.display()
    )]
    UnknownVersion { path: PathBuf, found: u32, expected: u32 },

    /// The data dir was written by an older format this build cannot convert.
    #[error(
        "data dir {} was written by an older qd (store format version {found}; this qd reads \
         version {expected}, which keeps jobs in pages of 64, and cannot convert it): drain it \
         with the qd that wrote it, or move it aside and start with an empty --data",
        path.display()
    )]
    OldVersion { path: PathBuf, found: u32, expected: u32 },

    /// Something to be written is larger than its encoding allows.
    #[error("{what} of {len} bytes is too large to store; send smaller payloads")]
    TooLarge { what: &'static str, len: u64 },

    /// The writer thread is gone or broken; nothing more will be committed.
    #[error(
        "the store writer stopped ({reason}); restart qd: it recovers everything that was \
         acknowledged from the data dir"
    )]
    WriterStopped { reason: String },

    /// An error already reported to the tickets of a group, returned again at shutdown.
    #[error(transparent)]
    Shared(Arc<StoreError>),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io { context: context.into(), source }
    }

    pub(crate) fn sled(context: impl Into<String>, source: sled::Error) -> StoreError {
        StoreError::Sled { context: context.into(), source }
    }
}

fn sled_hint(err: &sled::Error) -> &'static str {
    match err {
        sled::Error::Io(_) => "check free disk space and the permissions of the data dir",
        sled::Error::Corruption { .. } => {
            "the data dir is damaged: restore it from a backup, or move it aside and start \
             qd with an empty --data"
        }
        _ => "this looks like a bug in sled or qd; please report it with the log",
    }
}
