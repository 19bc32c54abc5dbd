//! The key layout of the sled data directory: tree names, meta keys, and how a job id
//! becomes a key. What goes *into* a job record's value is `record.rs`'s business; what a
//! key means for the queue (ready, delayed, dead) is the broker core's.
//!
//! ```text
//! tree "jobs"   key   = job id, u64, 8 bytes big-endian
//!               value = encoded JobRecord (see record.rs: 1 format byte, then bincode 2)
//! tree "meta"   "format_version" -> u32, 4 bytes big-endian   (STORE_FORMAT_VERSION)
//!               "id_ceiling"     -> u64, 8 bytes big-endian   (ids below it may have been used)
//! ```
//!
//! Big-endian so that sled's byte-wise key order is numeric order: the recovery scan comes
//! out in id order, which is also the order jobs were added in.
//!
//! Invariants:
//! 1. Every key in `jobs` is exactly 8 bytes and equals the `id` field of its record.
//! 2. `id_ceiling` is greater than every id ever inserted in this directory (including ids
//!    whose records were since deleted), so ids are never reused after a restart.

use qd_protocol::JobId;

/// The tree holding one record per live job.
pub const JOBS_TREE: &str = "jobs";
/// The tree holding the directory's format version and id ceiling.
pub const META_TREE: &str = "meta";
/// Meta key: the store format version, u32 big-endian.
pub const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// Meta key: the id ceiling, u64 big-endian.
pub const ID_CEILING_KEY: &[u8] = b"id_ceiling";

/// The on-disk format this build reads and writes. Bump it when the key layout or the
/// record encoding changes incompatibly, and teach `SledStore::open` to migrate or refuse.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// How far beyond the highest inserted id the persisted ceiling is raised. One meta write
/// per million ids; a restart skips at most this many ids, which a u64 can afford.
pub const ID_CEILING_STEP: u64 = 1_000_000;

/// The key of a job's record.
pub fn job_key(id: JobId) -> [u8; 8] {
    id.to_be_bytes()
}

/// The job id a key stands for, or `None` if the key is not 8 bytes long.
pub fn job_id(key: &[u8]) -> Option<JobId> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_ids() {
        let ids = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX - 1, u64::MAX];
        for pair in ids.windows(2) {
            assert!(job_key(pair[0]) < job_key(pair[1]), "{pair:?}");
        }
        assert_eq!(job_key(0x0102_0304_0506_0708), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(job_id(&job_key(42)), Some(42));
        assert_eq!(job_id(b"short"), None);
    }
}
