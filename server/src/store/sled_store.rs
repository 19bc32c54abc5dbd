//! [`SledStore`]: the [`Store`] on sled 0.34 — opening a data dir (leftover cleanup, lock,
//! format version), the recovery scan, applying a group of changes as one atomic batch,
//! and making it durable. Batching requests into groups is the writer's job (`writer.rs`);
//! keys and bytes are `keys.rs` and `record.rs`.
//!
//! Facts about sled 0.34.7 this file is built around (measured on the dev machine; see
//! DESIGN.md "Storage on sled"):
//! - `Db::flush` writes the log with `sync_file_range`, which neither flushes the drive's
//!   cache nor persists file metadata. A durable commit therefore also calls `sync_data` on
//!   the `db` file, and on any new file in `blobs/` (sled writes values too large to inline
//!   there, and never fsyncs them).
//! - A kill -9 while sled generates a snapshot leaves `snap.<lsn>.generating`, and every
//!   later open fails with `Corruption { at: None }` (upstream issues 1527, 1533). Removing
//!   the leftover before opening restores everything acknowledged.
//! - A removal costs one log write, a remove + insert pair four times a plain insert, so a
//!   completed job is one `remove` and nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qd_protocol::JobId;

use super::keys::{
    job_id, job_key, FORMAT_VERSION_KEY, ID_CEILING_KEY, ID_CEILING_STEP, JOBS_TREE, META_TREE,
    STORE_FORMAT_VERSION,
};
use super::record::{decode, encode};
use super::{JobLookup, Recovered, Store, StoreError, StoreReader};
use crate::model::{Change, JobRecord};

/// sled's page cache size when not configured: enough for a few hundred thousand hot
/// records without the ~370 MiB that sled's own default costs per million records.
pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// Where and how to open the sled store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledConfig {
    /// The data directory (created if missing).
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
}

impl SledConfig {
    /// A config for `path` with the default cache.
    pub fn new(path: impl Into<PathBuf>) -> SledConfig {
        SledConfig { path: path.into(), cache_capacity: DEFAULT_CACHE_CAPACITY }
    }
}

/// The job store on sled. Owned by the writer thread; readers go through [`Store::reader`].
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    jobs: sled::Tree,
    meta: sled::Tree,
    /// Mirrors the persisted `id_ceiling`: every id below it may have been used. Raised
    /// (on disk first) before a batch inserts an id at or above it.
    id_ceiling: u64,
    /// sled's log file, held open so that a durable commit can `sync_data` it. `None` if
    /// sled's layout has no `db` file (a future sled); then flush alone is what we get.
    db_file: Option<File>,
    /// The highest blob file name (an LSN) already synced, so each durable commit only
    /// syncs blobs written since.
    blobs_synced_up_to: u64,
    /// Per-commit scratch: what this group did to each id so far, so that a `Fail` sees an
    /// `Insert` or earlier `Fail` of the same group. Kept to reuse its allocation.
    touched: HashMap<JobId, Touched>,
}

/// What the current group has done to one id.
enum Touched {
    /// Inserted by `changes[index]`, unchanged since.
    Inserted(usize),
    /// Rewritten by a `Fail` of this group.
    Updated(JobRecord),
    /// Removed by a `Complete` of this group.
    Removed,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("id_ceiling", &self.id_ceiling)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `config.path`: removes a leftover partial snapshot,
    /// takes sled's lock, checks the format version, and writes it into a new dir.
    pub fn open(config: &SledConfig) -> Result<SledStore, StoreError> {
        let path = config.path.clone();
        std::fs::create_dir_all(&path)
            .map_err(|e| StoreError::io(format!("cannot create data dir {}", path.display()), e))?;
        remove_partial_snapshots(&path)?;

        let db = open_sled(config)?;
        let ctx = |what: &str| format!("{what} in data dir {}", path.display());
        let jobs = db.open_tree(JOBS_TREE).map_err(|e| StoreError::sled(ctx("opening jobs"), e))?;
        let meta = db.open_tree(META_TREE).map_err(|e| StoreError::sled(ctx("opening meta"), e))?;

        let db_file = match File::open(path.join("db")) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(
                    "no `db` file in {}: durable commits rely on sled's flush alone",
                    path.display()
                );
                None
            }
            Err(e) => return Err(StoreError::io(ctx("cannot open sled's db file"), e)),
        };

        let mut store = SledStore {
            path,
            db,
            jobs,
            meta,
            id_ceiling: 0,
            db_file,
            blobs_synced_up_to: 0,
            touched: HashMap::new(),
        };
        store.check_format_version()?;
        store.id_ceiling = store.read_id_ceiling()?;
        Ok(store)
    }

    /// The `jobs` tree itself, for tests that watch what reaches sled.
    #[cfg(test)]
    pub(super) fn jobs_tree(&self) -> &sled::Tree {
        &self.jobs
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format_version(&mut self) -> Result<(), StoreError> {
        let stored = self
            .meta
            .get(FORMAT_VERSION_KEY)
            .map_err(|e| StoreError::sled("reading the format version", e))?;
        match stored {
            Some(bytes) => {
                let found =
                    <[u8; 4]>::try_from(bytes.as_ref()).map(u32::from_be_bytes).map_err(|_| {
                        StoreError::Corrupt {
                            what: format!(
                                "data dir {}: the format version is {} bytes long, not 4",
                                self.path.display(),
                                bytes.len()
                            ),
                            hint: "this is not a qd data dir, or it is damaged; point --data at \
                               another directory"
                                .into(),
                        }
                    })?;
                if found != STORE_FORMAT_VERSION {
                    return Err(StoreError::UnknownVersion {
                        path: self.path.clone(),
                        found,
                        expected: STORE_FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None => {
                let has_jobs = !self.jobs.is_empty();
                if has_jobs {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "data dir {} holds job records but no format version",
                            self.path.display()
                        ),
                        hint: "it was not written by qd, or it is damaged; point --data at \
                               another directory"
                            .into(),
                    });
                }
                // A new dir: stamp it, durably, so that an older or newer qd pointed at it
                // later refuses it instead of misreading it.
                self.meta
                    .insert(FORMAT_VERSION_KEY, &STORE_FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| StoreError::sled("writing the format version", e))?;
                self.sync()
            }
        }
    }

    fn read_id_ceiling(&self) -> Result<u64, StoreError> {
        let Some(bytes) = self
            .meta
            .get(ID_CEILING_KEY)
            .map_err(|e| StoreError::sled("reading the id ceiling", e))?
        else {
            return Ok(0);
        };
        <[u8; 8]>::try_from(bytes.as_ref()).map(u64::from_be_bytes).map_err(|_| {
            StoreError::Corrupt {
                what: format!(
                    "data dir {}: the id ceiling is {} bytes long, not 8",
                    self.path.display(),
                    bytes.len()
                ),
                hint: "the data dir is damaged; restore it from a backup".into(),
            }
        })
    }

    /// The current record of `id` as this group sees it: its own earlier changes first,
    /// then the tree. `None` if it does not exist (or this group removed it).
    fn current(&self, changes: &[Change], id: JobId) -> Result<Option<JobRecord>, StoreError> {
        match self.touched.get(&id) {
            Some(Touched::Inserted(i)) => match &changes[*i] {
                Change::Insert(r) => Ok(Some(r.clone())),
                _ => unreachable!("Touched::Inserted always points at an Insert"),
            },
            Some(Touched::Updated(r)) => Ok(Some(r.clone())),
            Some(Touched::Removed) => Ok(None),
            None => lookup(&self.jobs, id),
        }
    }

    fn exists(&self, id: JobId) -> Result<bool, StoreError> {
        match self.touched.get(&id) {
            Some(Touched::Inserted(_) | Touched::Updated(_)) => Ok(true),
            Some(Touched::Removed) => Ok(false),
            None => self
                .jobs
                .contains_key(job_key(id))
                .map_err(|e| StoreError::sled(format!("reading job {id}"), e)),
        }
    }

    /// Makes sure the persisted id ceiling is above `max_id`.
    ///
    /// The ceiling goes to the log before the batch that needs it: sled recovers a prefix
    /// of its log, so whenever the batch survives a crash, so does the ceiling. A ceiling
    /// ahead of reality is harmless; one behind would let a restart reuse ids.
    fn raise_id_ceiling(&mut self, max_id: JobId) -> Result<(), StoreError> {
        if max_id >= self.id_ceiling {
            let ceiling = max_id.saturating_add(ID_CEILING_STEP);
            self.meta
                .insert(ID_CEILING_KEY, &ceiling.to_be_bytes())
                .map_err(|e| StoreError::sled("raising the id ceiling", e))?;
            self.id_ceiling = ceiling;
        }
        Ok(())
    }

    /// Applies the net effect of many groups, as a journal checkpoint has it: one final
    /// record (`Some`) or a removal (`None`) per id, after raising the id ceiling above
    /// `max_id` (the highest id ever inserted, including ids whose records never reached
    /// sled). Not durable until [`SledStore::sync`].
    ///
    /// Applied in sled batches of `CHECKPOINT_BATCH` entries rather than one: nothing needs
    /// the whole checkpoint to be atomic (the journal still holds it, and replaying it onto
    /// any mix of old and new records gives the same result), and smaller batches keep the
    /// encoded copy small.
    pub(super) fn apply_net<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (JobId, Option<&'a JobRecord>)>,
        max_id: JobId,
    ) -> Result<(), StoreError> {
        const CHECKPOINT_BATCH: usize = 16 * 1024;
        self.raise_id_ceiling(max_id)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for (id, record) in entries {
            match record {
                Some(record) => batch.insert(&job_key(id), encode(record)?),
                None => batch.remove(&job_key(id)),
            }
            in_batch += 1;
            if in_batch == CHECKPOINT_BATCH {
                self.jobs
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| StoreError::sled("applying a checkpoint", e))?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.jobs
                .apply_batch(batch)
                .map_err(|e| StoreError::sled("applying a checkpoint", e))?;
        }
        Ok(())
    }

    /// Flush sled's log, then force it (and new blob files) to stable storage.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| StoreError::sled("flushing to disk", e))?;
        self.sync_new_blobs()?;
        if let Some(file) = &self.db_file {
            file.sync_data().map_err(|e| {
                StoreError::io(format!("cannot fsync {}", self.path.join("db").display()), e)
            })?;
        }
        Ok(())
    }

    /// sled writes values too big for its log into `blobs/<lsn>` and never fsyncs them,
    /// while the log entry pointing at one is flushed: after a power loss the log would
    /// point at a missing blob. So sync every blob newer than the last one synced, then the
    /// directory (for the new names). Usually the dir is empty and this is one `readdir`.
    fn sync_new_blobs(&mut self) -> Result<(), StoreError> {
        let dir = self.path.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("cannot list {}", dir.display()), e)),
        };
        let mut newest = self.blobs_synced_up_to;
        for entry in entries {
            let entry =
                entry.map_err(|e| StoreError::io(format!("cannot list {}", dir.display()), e))?;
            let Some(lsn) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if lsn <= self.blobs_synced_up_to {
                continue;
            }
            match File::open(entry.path()).and_then(|f| f.sync_data()) {
                Ok(()) => newest = newest.max(lsn),
                // sled garbage-collects blobs concurrently; a vanished one needs no sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::io(
                        format!("cannot fsync {}", entry.path().display()),
                        e,
                    ))
                }
            }
        }
        if newest > self.blobs_synced_up_to {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(format!("cannot fsync {}", dir.display()), e))?;
            self.blobs_synced_up_to = newest;
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        // No `with_capacity(jobs.len())`: sled counts by scanning, which would double the work.
        let mut records = Vec::new();
        for item in self.jobs.iter() {
            let (key, value) = item.map_err(|e| StoreError::sled("scanning jobs", e))?;
            let Some(id) = job_id(&key) else {
                return Err(StoreError::Corrupt {
                    what: format!("a job key is {} bytes long, not 8", key.len()),
                    hint: "the data dir is damaged; restore it from a backup".into(),
                });
            };
            let record = decode(&value, || format!("job {id}"))?;
            if record.id != id {
                return Err(StoreError::Corrupt {
                    what: format!("the record stored under job {id} says it is job {}", record.id),
                    hint: "the data dir is damaged; restore it from a backup".into(),
                });
            }
            records.push(record);
        }
        let after_last = records.last().map_or(0, |r| r.id.saturating_add(1));
        let next_id = self.id_ceiling.max(after_last).max(1);
        tracing::debug!(records = records.len(), next_id, "recovered the store");
        Ok(Recovered { records, next_id })
    }

    fn commit(&mut self, changes: &[Change], durable: bool) -> Result<(), StoreError> {
        self.touched.clear();
        let mut batch = sled::Batch::default();
        let mut max_inserted: Option<JobId> = None;
        for (index, change) in changes.iter().enumerate() {
            match change {
                Change::Insert(record) => {
                    batch.insert(&job_key(record.id), encode(record)?);
                    self.touched.insert(record.id, Touched::Inserted(index));
                    max_inserted = max_inserted.max(Some(record.id));
                }
                Change::Complete { id } => {
                    if !self.exists(*id)? {
                        tracing::warn!(
                            id,
                            "asked to complete job {id}, which is not stored; skipped"
                        );
                        continue;
                    }
                    // One removal and nothing else: sled charges a remove + insert pair
                    // four times a single write.
                    batch.remove(&job_key(*id));
                    self.touched.insert(*id, Touched::Removed);
                }
                Change::Fail { id, error, run_at_ms, dead } => {
                    let Some(mut record) = self.current(changes, *id)? else {
                        tracing::warn!(id, "asked to fail job {id}, which is not stored; skipped");
                        continue;
                    };
                    record.apply_failure(error.clone(), *run_at_ms, *dead);
                    batch.insert(&job_key(*id), encode(&record)?);
                    self.touched.insert(*id, Touched::Updated(record));
                }
            }
        }

        if let Some(max) = max_inserted {
            self.raise_id_ceiling(max)?;
        }
        self.jobs.apply_batch(batch).map_err(|e| StoreError::sled("applying a batch", e))?;
        self.touched.clear();
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.sync()
    }

    fn reader(&self) -> StoreReader {
        StoreReader::new(Arc::new(SledReader { jobs: self.jobs.clone() }))
    }
}

/// Point lookups on the `jobs` tree; sled trees are safe to share between threads.
struct SledReader {
    jobs: sled::Tree,
}

impl JobLookup for SledReader {
    fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        lookup(&self.jobs, id)
    }
}

fn lookup(jobs: &sled::Tree, id: JobId) -> Result<Option<JobRecord>, StoreError> {
    match jobs.get(job_key(id)).map_err(|e| StoreError::sled(format!("reading job {id}"), e))? {
        Some(bytes) => decode(&bytes, || format!("job {id}")).map(Some),
        None => Ok(None),
    }
}

/// How long `open` waits for sled's lock before reporting [`StoreError::Locked`].
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled, waiting a little for its lock. Another process's lock is released when that
/// process ends, but within one process sled 0.34 closes its file only when its epoch-based
/// garbage collector gets round to the last deferred reference, some time after the `Db`
/// was dropped. A restart in the same process (tests, an embedding application) would
/// otherwise fail at random; a real conflict is merely reported `LOCK_WAIT` later.
fn open_sled(config: &SledConfig) -> Result<sled::Db, StoreError> {
    let path = &config.path;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // sled's default background flush (every 500 ms) stays on in every durability mode:
        // it is cheap, and in `none` mode it is the only thing bounding what a crash loses.
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open();
        match result {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked { path: path.clone() });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(StoreError::sled(format!("cannot open data dir {}", path.display()), e))
            }
        }
    }
}

/// Removes `snap.*.generating` leftovers of a snapshot that a kill interrupted; with one
/// present, sled 0.34.7 refuses to open forever (see the file header).
fn remove_partial_snapshots(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("cannot list data dir {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry
            .map_err(|e| StoreError::io(format!("cannot list data dir {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            tracing::warn!(
                "removing {}: a snapshot that sled was writing when the process died; sled \
                 cannot open the data dir while it exists, and the log still holds its data",
                path.display()
            );
            std::fs::remove_file(&path)
                .map_err(|e| StoreError::io(format!("cannot remove {}", path.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PersistedState;
    use crate::store::testutil::{complete, fail, insert, record};

    fn open(dir: &Path) -> SledStore {
        SledStore::open(&SledConfig::new(dir)).expect("open store")
    }

    fn ids(recovered: &Recovered) -> Vec<JobId> {
        recovered.records.iter().map(|r| r.id).collect()
    }

    #[test]
    fn insert_complete_fail_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            assert_eq!(store.recover().unwrap(), Recovered { records: vec![], next_id: 1 });
            store.commit(&[insert(1), insert(2), insert(3), insert(4)], true).unwrap();
            store.commit(&[complete(2), fail(3, 1, false), fail(4, 1, false)], true).unwrap();
            store.commit(&[fail(4, 2, true)], false).unwrap();
            store.flush().unwrap();
        }
        let mut store = open(dir.path());
        let rec = store.recover().unwrap();
        assert_eq!(ids(&rec), vec![1, 3, 4]);
        assert_eq!(rec.records[0], record(1, 16));
        let three = &rec.records[1];
        assert_eq!(
            (three.failures, three.state, three.errors.len()),
            (1, PersistedState::Waiting, 1)
        );
        assert_eq!(three.run_at_ms, 1_700_000_001_000);
        let four = &rec.records[2];
        assert_eq!((four.failures, four.state), (2, PersistedState::Dead));
        assert_eq!(four.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1, 2]);
        assert!(rec.next_id > 4);
    }

    #[test]
    fn changes_to_one_id_within_a_group_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let group = [
            insert(10),
            fail(10, 1, false),
            fail(10, 2, false),
            insert(11),
            complete(11),
            insert(12),
            fail(12, 1, true),
            complete(12),
            fail(12, 2, false), // after its completion: skipped, not resurrected
            complete(99),       // never existed: skipped
            fail(98, 1, false), // never existed: skipped
        ];
        store.commit(&group, true).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(ids(&rec), vec![10]);
        assert_eq!(rec.records[0].failures, 2);
        assert_eq!(rec.records[0].errors.len(), 2);
        // The reader sees the same.
        let reader = store.reader();
        assert_eq!(reader.get(10).unwrap().unwrap().failures, 2);
        assert_eq!(reader.get(11).unwrap(), None);
    }

    #[test]
    fn ids_are_not_reused_after_everything_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            store.commit(&[insert(1), insert(2), insert(500)], true).unwrap();
            store.commit(&[complete(1), complete(2), complete(500)], true).unwrap();
            assert!(store.recover().unwrap().records.is_empty());
        }
        let mut store = open(dir.path());
        let rec = store.recover().unwrap();
        assert!(rec.records.is_empty());
        assert!(rec.next_id > 500, "next_id {} would reuse an id", rec.next_id);

        // And the ceiling keeps moving when ids pass it.
        let beyond = rec.next_id + 5;
        store.commit(&[insert(beyond), complete(beyond)], true).unwrap();
        drop(store);
        let rec = open(dir.path()).recover().unwrap();
        assert!(rec.next_id > beyond);
    }

    #[test]
    fn refuses_unknown_format_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree(META_TREE).unwrap();
            meta.insert(FORMAT_VERSION_KEY, &7u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(matches!(err, StoreError::UnknownVersion { found: 7, expected: 1, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("format version 7"), "{msg}");
        assert!(msg.contains("upgrade qd or point --data at a new directory"), "{msg}");
    }

    #[test]
    fn refuses_foreign_data_without_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(JOBS_TREE).unwrap().insert(b"x", b"y").unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(err.to_string().contains("no format version"), "{err}");
    }

    #[test]
    fn a_new_dir_is_stamped_with_our_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let db = sled::open(dir.path()).unwrap();
        let stored = db.open_tree(META_TREE).unwrap().get(FORMAT_VERSION_KEY).unwrap().unwrap();
        assert_eq!(stored.as_ref(), &STORE_FORMAT_VERSION.to_be_bytes());
    }

    #[test]
    fn second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let err = SledStore::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("in use by another process"), "{err}");
    }

    #[test]
    fn leftover_partial_snapshot_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            store.commit(&[insert(1), insert(2)], true).unwrap();
        }
        let junk = dir.path().join("snap.0000000000000001.generating");
        std::fs::write(&junk, b"half a snapshot").unwrap();
        let mut store = open(dir.path());
        assert!(!junk.exists(), "the partial snapshot is still there");
        assert_eq!(ids(&store.recover().unwrap()), vec![1, 2]);
    }

    #[test]
    fn large_payloads_round_trip() {
        // Big enough for sled to put it in a blob file, which `sync` must fsync.
        let dir = tempfile::tempdir().unwrap();
        let big = record(7, 600 * 1024);
        {
            let mut store = open(dir.path());
            store.commit(&[Change::Insert(big.clone())], true).unwrap();
        }
        let mut store = open(dir.path());
        assert_eq!(store.recover().unwrap().records, vec![big]);
    }
}
