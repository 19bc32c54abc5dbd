//! The page database: the store of record. Jobs live in sled, 64 record bodies to a key,
//! next to the directory's meta data, each queue's settings and the named schedules. Nothing here knows about
//! the journal; the journal (`store/journal/`) hands over the net effect of many groups in
//! checkpoints, and reads pages through a [`PageReader`].
//!
//! - `db.rs`: [`PageDb`], opening the directory, checkpoint merges, syncing, reading.
//! - `keys.rs`: tree names, meta keys, page keys, the format version.
//! - `page.rs`: the bytes of one page of 64 slots.
//! - `record.rs`: the bytes of one job record (also what the journal carries for an insert).
//! - `queues.rs`: the bytes of one queue's settings.
//! - `schedules.rs`: the bytes of one named schedule.

mod db;
pub mod keys;
pub mod page;
pub mod queues;
pub mod record;
pub mod schedules;

#[cfg(test)]
pub(crate) use db::segment_size_for;
pub use db::{PageDb, PageReader, PagesWritten, SledConfig, DEFAULT_CACHE_CAPACITY};
