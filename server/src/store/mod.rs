//! Persistence of job records: the [`Store`] interface the engine writes through, its
//! errors, and the two implementations behind it.
//!
//! What lives here: the key layout (`keys.rs`), pages of 64 records per sled key
//! (`page.rs`), the record encoding (`record.rs`), the sled side with its page reads,
//! checkpoint merges and schema-version check (`sled_store.rs`), the append-only journal
//! (`journal.rs`), the journaled store that makes groups durable in the journal and
//! checkpoints their net effect into sled's pages in the background (`journaled.rs`, the
//! one [`Store`]), and the group-commit writer thread (`writer.rs`). docs/STORAGE.md
//! describes the bytes on disk. What does not: deciding *what* to write (the
//! broker core produces [`Change`]s), and holding replies until their change is committed
//! (the engine does that with the [`Committed`] notices the writer sends). The store never
//! imports the core; `crate::model` is the whole interface between them.

mod journal;
mod journaled;
mod keys;
mod page;
mod record;
mod sled_store;
mod writer;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use qd_protocol::JobId;

use crate::model::{Change, JobRecord};

pub use journaled::{JournalConfig, JournaledStore, RecoveryStats};
pub use keys::STORE_FORMAT_VERSION;
pub use sled_store::{SledConfig, DEFAULT_CACHE_CAPACITY};
pub use writer::{Committed, Writer};

/// When a commit counts as done, chosen with `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Reply only after the group is flushed and fsynced: nothing acknowledged is lost, even
    /// on power loss.
    #[default]
    Fsync,
    /// Reply once the group is written (to the journal, or applied to sled); fsync every
    /// interval. A crash of the machine (not of qd alone) can lose the last interval's
    /// writes.
    Interval,
    /// Never flush explicitly; sled's background flush only. For throwaway data.
    None,
}

/// What [`Store::recover`] found besides the records it handed to its visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredMeta {
    /// The first id never used in this data dir: assign ids from here on.
    pub next_id: JobId,
    /// How many records were visited.
    pub records: u64,
}

/// A persistence engine for job records. One owner (the writer thread) calls the mutating
/// methods; any number of [`StoreReader`]s may read meanwhile.
pub trait Store: Send + 'static {
    /// One scan of everything stored: calls `visit` with each record, in id order, without
    /// collecting them (a million records must not cost a million records of memory at
    /// once). Returns the first id never used (the largest of the persisted id ceiling, the
    /// highest id ever journaled + 1 and the highest record id + 1; at least 1).
    fn recover(&mut self, visit: &mut dyn FnMut(JobRecord)) -> Result<RecoveredMeta, StoreError>;

    /// Applies all changes as ONE atomic batch, in order. With `durable`, returns only after
    /// the data is on disk. An error means none of the promises hold: the caller fails every
    /// request in the batch. A `Fail` or `Complete` for an id that is not stored is logged
    /// and skipped, not an error.
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

    /// Another process holds the data dir's lock.
    #[error(
        "data dir {} is in use by another process; stop the other qd or point --data at \
         another directory",
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

    /// A record could not be encoded (a bug: our types always encode).
    #[error("could not encode job {id}: {source}; this is a bug in qd, please report it")]
    Encode {
        id: JobId,
        #[source]
        source: bincode::error::EncodeError,
    },

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
