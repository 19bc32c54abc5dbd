//! The key layout of the sled data directory: tree names, meta keys, and how a page number
//! becomes a key. What goes *into* a page is `page.rs`'s business (and a record body
//! `record.rs`'s); what a job means for the queue (ready, delayed, dead) is the broker
//! core's.
//!
//! ```text
//! tree "pages"  key   = page_no = job id / 64, u64, 8 bytes big-endian
//!               value = page (see page.rs): the records of ids page_no*64 .. page_no*64+63
//! tree "meta"   "format_version" -> u32, 4 bytes big-endian   (STORE_FORMAT_VERSION = 4)
//!               "id_ceiling"     -> u64, 8 bytes big-endian   (ids below it may have been used)
//! tree "queues" key   = the queue name's UTF-8 bytes
//!               value = its settings (see queues.rs); a queue at the default settings has
//!                       no entry
//! tree "schedules" key   = the schedule name's UTF-8 bytes
//!                  value = the schedule (see schedules.rs)
//! ```
//!
//! Big-endian so that sled's byte-wise key order is numeric order: the recovery scan comes
//! out in id order, which is also the order jobs were added in.
//!
//! Format history: version 1 stored one key per job in a tree "jobs" (value: a format byte
//! and the bincode of the whole record, id included). Version 2 introduced pages, with
//! record bodies as bincode of every field but the id. Version 3 keeps the pages and the
//! keys but encodes bodies compactly (record.rs: fields at their defaults left out,
//! LEB128 varints, run_at as a delta from created_at). Version 4 keeps all of that, adds
//! the "queues" tree, and writes journal records in the store's own encoding
//! (journal/codec.rs) instead of bincode of `model::Change`. This build reads neither 1 nor
//! 2; a version-3 dir is opened, its journal replayed with the version-3 decoder and
//! checkpointed into the pages, and the dir stamped 4 (journal/mod.rs).
//!
//! Invariants:
//! 1. Every key in `pages` is exactly 8 bytes, and every record in page `p` has an id in
//!    `p*64 .. p*64+63` (its slot says which).
//! 2. `id_ceiling` is greater than every id ever inserted in this directory (including ids
//!    whose records were since deleted), so ids are never reused after a restart.

/// The tree holding the pages of live jobs.
pub const PAGES_TREE: &str = "pages";
/// The tree holding each queue's persisted settings.
pub const QUEUES_TREE: &str = "queues";
/// The tree holding the named schedules (format 5; a format-4 qd refuses the dir by its
/// version stamp).
pub const SCHEDULES_TREE: &str = "schedules";
/// The tree holding the directory's format version and id ceiling.
pub const META_TREE: &str = "meta";
/// Meta key: the store format version, u32 big-endian.
pub const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// Meta key: the id ceiling, u64 big-endian.
pub const ID_CEILING_KEY: &[u8] = b"id_ceiling";

/// The on-disk format this build reads and writes. Bump it when the key layout, the page
/// layout, the record encoding or the journal encoding changes incompatibly, and teach
/// `PageDb::open` and the journal's open to migrate or refuse. 1: one key per job; 2: pages
/// of 64 jobs, bincode bodies; 3: the same pages with compact bodies (defaults left out);
/// 4: the journal in the store's own encoding, queue settings; 5: record bodies may end in an
/// extension of newer job options (a format-4 dir reads as it is and is restamped).
pub const STORE_FORMAT_VERSION: u32 = 5;

/// The oldest format this build opens (and migrates to [`STORE_FORMAT_VERSION`]).
pub const FIRST_READABLE_FORMAT: u32 = 3;

/// How far beyond the highest inserted id the persisted ceiling is raised. One meta write
/// per million ids; a restart skips at most this many ids, which a u64 can afford.
pub const ID_CEILING_STEP: u64 = 1_000_000;

/// The key of a page.
pub fn page_key(page_no: u64) -> [u8; 8] {
    page_no.to_be_bytes()
}

/// The page number a key stands for, or `None` if the key is not 8 bytes long.
pub fn page_of_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_page_numbers() {
        let pages = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX - 1, u64::MAX];
        for pair in pages.windows(2) {
            assert!(page_key(pair[0]) < page_key(pair[1]), "{pair:?}");
        }
        assert_eq!(page_key(0x0102_0304_0506_0708), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(page_of_key(&page_key(42)), Some(42));
        assert_eq!(page_of_key(b"short"), None);
    }
}
