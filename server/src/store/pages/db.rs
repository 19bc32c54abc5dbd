//! [`PageDb`]: the page database, sled. It opens a data dir (lock, leftover cleanup,
//! format version), reads records out of pages (point lookups for readers, the recovery
//! scan) and queue settings, applies a checkpoint's net effect page by page, and makes it
//! durable. It is not a [`crate::store::Store`]: durability of each group is the journal's
//! business (`journal/`), which hands the net effect of many groups over in checkpoints.
//! Page bytes are `page.rs`, record bodies `record.rs`, keys and trees `keys.rs`, the lock
//! and file modes `datadir.rs`.
//!
//! Facts about sled 0.34.7 this file is built around (measured on the dev machine; see
//! DESIGN.md "Storage on sled"):
//! - `Db::flush` writes the log with `sync_file_range`, which neither flushes the drive's
//!   cache nor persists file metadata. A durable checkpoint therefore also calls `sync_data`
//!   on the `db` file, and on any new file in `blobs/` (sled writes values too large to
//!   inline there, and never fsyncs them).
//! - A kill -9 while sled generates a snapshot leaves `snap.<lsn>.generating`, and every
//!   later open fails with `Corruption { at: None }` (upstream issues 1527, 1533). Removing
//!   the leftover before opening restores everything acknowledged.
//! - sled's cost is per key (memory for its page table and cache, bytes on disk, time to
//!   open and scan): one key per job cost ~1.7 GiB of RSS, 534 MB of disk and 5.4 s of
//!   recovery at a million jobs. Hence pages of 64 jobs per key.
//! - Its cache bounds memory only for what it counts and looks at: a node written to a
//!   blob file is charged a few dozen bytes, and a shard of its LRU looks at its accesses
//!   only after 64 have queued. Hence `NEW_SEGMENT_SIZE` (nodes stay inline) and
//!   `LRU_NUDGES` (the recovery scan's extra cache hits); docs/STORAGE.md, "Memory".

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qd_protocol::JobId;

use super::keys::{
    page_key, page_of_key, FIRST_READABLE_FORMAT, FORMAT_VERSION_KEY, ID_CEILING_KEY,
    ID_CEILING_STEP, META_TREE, PAGES_TREE, QUEUES_TREE, SCHEDULES_TREE, STORE_FORMAT_VERSION,
};
use super::page::{self, Page};
use super::{queues, record, schedules};
use crate::model::{JobRecord, QueueSettings, ScheduleRecord};
use crate::store::datadir::{self, DataDirLock};
use crate::store::StoreError;

/// sled's page cache size when not configured (`--cache-mb`): 16 MiB. With 1M jobs queued
/// the server's RSS was 246 MiB at a 64 MiB cache and 220 at 16 (one fill each, same
/// session); most of the rest is the broker core's per-job state, not the store's. This is
/// the one home of the default: the CLI and the config read it from here.
pub const DEFAULT_CACHE_CAPACITY: u64 = 16 * 1024 * 1024;

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

/// The pages in sled. Owned by the checkpoint thread (behind a mutex); readers use
/// [`PageReader`]s, which share sled's trees.
pub struct PageDb {
    path: PathBuf,
    db: sled::Db,
    pages: sled::Tree,
    meta: sled::Tree,
    queues: sled::Tree,
    schedules: sled::Tree,
    /// The format the directory was stamped with when opened (see `keys.rs`): older ones
    /// are accepted for the journal's migration, which then calls
    /// [`PageDb::stamp_current_format`].
    found_format: u32,
    /// Mirrors the persisted `id_ceiling`: every id below it may have been used. Raised
    /// (on disk first) before a checkpoint that needs it.
    id_ceiling: u64,
    /// sled's log file, held open so that a durable checkpoint can `sync_data` it. `None` if
    /// sled's layout has no `db` file (a future sled); then flush alone is what we get.
    db_file: Option<File>,
    /// The highest blob file name (an LSN) already synced, so each sync only syncs blobs
    /// written since.
    blobs_synced_up_to: u64,
    /// Dropped last: the directory stays locked while sled is open (see `datadir.rs`).
    _lock: DataDirLock,
}

/// What one checkpoint did to sled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PagesWritten {
    pub written: u64,
    pub removed: u64,
}

impl std::fmt::Debug for PageDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageDb")
            .field("path", &self.path)
            .field("id_ceiling", &self.id_ceiling)
            .finish_non_exhaustive()
    }
}

impl PageDb {
    /// Opens (or creates) the pages in `config.path`: locks the directory (before anything
    /// else, see `datadir.rs`), removes a leftover partial snapshot, opens sled, makes its
    /// files private, checks the format version, and stamps a new dir with the current one.
    pub fn open(config: &SledConfig) -> Result<PageDb, StoreError> {
        let path = config.path.clone();
        let lock = DataDirLock::acquire(&path)?;
        datadir::remove_partial_snapshots(&lock)?;

        let db = open_sled(config)?;
        datadir::restrict_sled_files(&path)?;
        let ctx = |what: &str| format!("{what} in data dir {}", path.display());
        let meta = db.open_tree(META_TREE).map_err(|e| StoreError::sled(ctx("opening meta"), e))?;
        let pages =
            db.open_tree(PAGES_TREE).map_err(|e| StoreError::sled(ctx("opening pages"), e))?;
        let queues =
            db.open_tree(QUEUES_TREE).map_err(|e| StoreError::sled(ctx("opening queues"), e))?;
        let schedules = db
            .open_tree(SCHEDULES_TREE)
            .map_err(|e| StoreError::sled(ctx("opening schedules"), e))?;

        let db_file = match File::open(path.join("db")) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(
                    "no `db` file in {}: durable checkpoints rely on sled's flush alone",
                    path.display()
                );
                None
            }
            Err(e) => return Err(StoreError::io(ctx("cannot open sled's db file"), e)),
        };

        let mut store = PageDb {
            path,
            db,
            pages,
            meta,
            queues,
            schedules,
            found_format: STORE_FORMAT_VERSION,
            id_ceiling: 0,
            db_file,
            blobs_synced_up_to: 0,
            _lock: lock,
        };
        store.found_format = store.check_format_version()?;
        store.id_ceiling = store.reader().id_ceiling()?;
        Ok(store)
    }

    /// The format the directory had when it was opened: [`STORE_FORMAT_VERSION`], or an
    /// older one whose pages this build reads but whose journal must be migrated.
    pub fn found_format(&self) -> u32 {
        self.found_format
    }

    /// Stamps the directory with [`STORE_FORMAT_VERSION`], durably: called once whatever
    /// the older format left (its journal) was migrated.
    pub fn stamp_current_format(&mut self) -> Result<(), StoreError> {
        self.meta
            .insert(FORMAT_VERSION_KEY, &STORE_FORMAT_VERSION.to_be_bytes())
            .map_err(|e| StoreError::sled("writing the format version", e))?;
        self.sync()?;
        self.found_format = STORE_FORMAT_VERSION;
        Ok(())
    }

    /// A reader sharing this store's trees.
    pub fn reader(&self) -> PageReader {
        PageReader {
            pages: self.pages.clone(),
            meta: self.meta.clone(),
            queues: self.queues.clone(),
            schedules: self.schedules.clone(),
        }
    }

    /// The `pages` tree itself, for tests that watch what reaches sled.
    #[cfg(test)]
    pub(crate) fn pages_tree(&self) -> &sled::Tree {
        &self.pages
    }

    /// Returns the format found (stamping a new dir with the current one).
    fn check_format_version(&mut self) -> Result<u32, StoreError> {
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
                if found < FIRST_READABLE_FORMAT {
                    return Err(StoreError::OldVersion {
                        path: self.path.clone(),
                        found,
                        expected: STORE_FORMAT_VERSION,
                    });
                }
                if found > STORE_FORMAT_VERSION {
                    return Err(StoreError::UnknownVersion {
                        path: self.path.clone(),
                        found,
                        expected: STORE_FORMAT_VERSION,
                    });
                }
                Ok(found)
            }
            None => {
                let foreign = !self.pages.is_empty()
                    || self.db.tree_names().iter().any(|n| n.as_ref() == b"jobs");
                if foreign {
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
                self.stamp_current_format()?;
                Ok(STORE_FORMAT_VERSION)
            }
        }
    }

    /// Makes sure the persisted id ceiling is above `max_id`.
    ///
    /// The ceiling goes to the log before the pages that need it: sled recovers a prefix
    /// of its log, so whenever the pages survive a crash, so does the ceiling. A ceiling
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

    /// Applies a checkpoint's schedules: each name's record (`Some`) or its removal. Called
    /// with [`PageDb::apply_checkpoint`], before the same [`PageDb::sync`].
    pub fn apply_schedules(
        &mut self,
        entries: &[(&str, Option<&ScheduleRecord>)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (name, schedule) in entries {
            match schedule {
                Some(s) => batch.insert(name.as_bytes(), schedules::encode(s)?),
                None => batch.remove(name.as_bytes()),
            }
        }
        self.schedules.apply_batch(batch).map_err(|e| StoreError::sled("writing schedules", e))
    }

    /// Applies the net effect of many groups, as a journal checkpoint has it: per id, the
    /// new record body (`Some`) or a removal (`None`), in ascending id order; per queue, its
    /// settings (the default ones remove the queue's entry); after raising
    /// the id ceiling above `max_id` (the highest id ever inserted, including ids whose
    /// records never reached sled). Each touched page is read once, merged by copying byte
    /// slices (no record is decoded), and written back or removed once empty. Not durable
    /// until [`PageDb::sync`].
    ///
    /// Applied in sled batches of about `BATCH_BYTES` rather than one: nothing needs the
    /// whole checkpoint to be atomic (the journal still holds it, and replaying it onto any
    /// mix of old and new pages gives the same result), and smaller batches keep sled's
    /// copy of them small.
    pub fn apply_checkpoint(
        &mut self,
        entries: &[(JobId, Option<&[u8]>)],
        settings: &[(&str, &QueueSettings)],
        max_id: JobId,
    ) -> Result<PagesWritten, StoreError> {
        const BATCH_BYTES: usize = 4 << 20;
        self.raise_id_ceiling(max_id)?;
        if !settings.is_empty() {
            let mut batch = sled::Batch::default();
            for (queue, settings) in settings {
                if **settings == QueueSettings::default() {
                    batch.remove(queue.as_bytes());
                } else {
                    batch.insert(queue.as_bytes(), queues::encode(settings).as_slice());
                }
            }
            self.queues
                .apply_batch(batch)
                .map_err(|e| StoreError::sled("writing queue settings", e))?;
        }
        let mut done = PagesWritten::default();
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        let mut edits: Vec<(u32, Option<&[u8]>)> = Vec::with_capacity(page::SLOTS as usize);
        let mut out = Vec::new();
        let mut rest = entries;
        while let Some(&(first, _)) = rest.first() {
            let page_no = page::page_no(first);
            let end = rest.iter().position(|(id, _)| page::page_no(*id) != page_no);
            let (these, after) = rest.split_at(end.unwrap_or(rest.len()));
            rest = after;
            debug_assert!(these.windows(2).all(|w| w[0].0 < w[1].0), "ids must ascend");
            edits.clear();
            edits.extend(these.iter().map(|(id, body)| (page::slot(*id), *body)));

            let key = page_key(page_no);
            let old = self
                .pages
                .get(key)
                .map_err(|e| StoreError::sled(format!("reading page {page_no}"), e))?;
            let old_page = old.as_deref().map(|b| Page::parse(page_no, b)).transpose()?;
            if page::merge(old_page.as_ref(), &edits, &mut out) {
                in_batch += out.len();
                batch.insert(&key, out.as_slice());
                done.written += 1;
            } else if old.is_some() {
                in_batch += 8;
                batch.remove(&key);
                done.removed += 1;
            }
            if in_batch >= BATCH_BYTES {
                self.pages
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| StoreError::sled("applying a checkpoint", e))?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.pages
                .apply_batch(batch)
                .map_err(|e| StoreError::sled("applying a checkpoint", e))?;
        }
        Ok(done)
    }

    /// Flush sled's log, then force it (and new blob files) to stable storage.
    pub fn sync(&mut self) -> Result<(), StoreError> {
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

/// Reads records out of sled's pages, from any thread. Clone it freely.
#[derive(Clone)]
pub struct PageReader {
    pages: sled::Tree,
    meta: sled::Tree,
    queues: sled::Tree,
    schedules: sled::Tree,
}

impl std::fmt::Debug for PageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageReader").finish_non_exhaustive()
    }
}

impl PageReader {
    /// The record of `id`: one page read, one slot decoded.
    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let page_no = page::page_no(id);
        let Some(bytes) = self
            .pages
            .get(page_key(page_no))
            .map_err(|e| StoreError::sled(format!("reading job {id}"), e))?
        else {
            return Ok(None);
        };
        let page = Page::parse(page_no, &bytes)?;
        page.get(page::slot(id)).map(|body| record::decode(id, body)).transpose()
    }

    /// Every stored record body, in id order, with its id. Stops at the first error `visit`
    /// returns.
    pub fn scan(
        &self,
        mut visit: impl FnMut(JobId, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.pages.iter() {
            let (key, bytes) = item.map_err(|e| StoreError::sled("scanning pages", e))?;
            let Some(page_no) = page_of_key(&key) else {
                return Err(StoreError::Corrupt {
                    what: format!("a page key is {} bytes long, not 8", key.len()),
                    hint: "the data dir is damaged; restore it from a backup".into(),
                });
            };
            let page = Page::parse(page_no, &bytes)?;
            for (slot, body) in page.iter() {
                visit(page::id_of(page_no, slot), body)?;
            }
            drop(bytes);
            // See `LRU_NUDGES`: re-reading the page (a cache hit) counts as accesses, so
            // sled's cache gets to evict what the scan read before.
            for _ in 0..LRU_NUDGES {
                self.pages.get(&key).map_err(|e| StoreError::sled("scanning pages", e))?;
            }
        }
        Ok(())
    }

    /// Every queue with settings, in name order.
    pub fn queues(&self) -> Result<Vec<(String, QueueSettings)>, StoreError> {
        let mut out = vec![];
        for item in self.queues.iter() {
            let (key, value) = item.map_err(|e| StoreError::sled("reading queue settings", e))?;
            let name = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "a queue name in the queues tree is not UTF-8".into(),
                hint: "the data dir is damaged; restore it from a backup".into(),
            })?;
            let settings = queues::decode(&name, &value)?;
            out.push((name, settings));
        }
        Ok(out)
    }

    /// Every stored schedule, in name order.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let mut out = vec![];
        for item in self.schedules.iter() {
            let (key, value) = item.map_err(|e| StoreError::sled("reading schedules", e))?;
            let name = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "a schedule name in the schedules tree is not UTF-8".into(),
                hint: "the data dir is damaged; restore it from a backup".into(),
            })?;
            out.push(schedules::decode(&name, &value)?);
        }
        Ok(out)
    }

    /// The persisted id ceiling (0 if none was written yet).
    pub fn id_ceiling(&self) -> Result<u64, StoreError> {
        let Some(bytes) = self
            .meta
            .get(ID_CEILING_KEY)
            .map_err(|e| StoreError::sled("reading the id ceiling", e))?
        else {
            return Ok(0);
        };
        <[u8; 8]>::try_from(bytes.as_ref()).map(u64::from_be_bytes).map_err(|_| {
            StoreError::Corrupt {
                what: format!("the id ceiling is {} bytes long, not 8", bytes.len()),
                hint: "the data dir is damaged; restore it from a backup".into(),
            }
        })
    }
}

/// How many times [`PageReader::scan`] reads each page again, from sled's cache, after
/// visiting it.
///
/// Why: sled 0.34's cache (its `lru.rs`) has 256 shards (a node's shard is its page id
/// modulo 256), and a shard looks at its accesses, and evicts, only once 64 of them have
/// queued up. A scan reads each tree node once, so a shard saw its 64th access only after
/// about 16,000 nodes had been read, all kept meanwhile whatever `--cache-mb` says: at
/// W7's sizes that is every node of 1 million jobs and most of 10 million (heaptrack at
/// 1M: 131 MiB of nodes pulled in by the scan, still held when the server listened). A
/// cache hit is an access too, so reading each page 8 more times (a leaf node holds 8 to 17
/// pages after a split) fills its shard's queue within the node, and the shard evicts down
/// to its share of the cache. Costs 8 cache hits per 64 jobs. Tied to sled 0.34's
/// constants, which the workspace pins.
const LRU_NUDGES: usize = 8;

/// How long `open` waits for sled's lock before reporting [`StoreError::Locked`].
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// sled's log segment size for a new data dir: 2 MiB, four times sled's default.
///
/// Why: sled 0.34 writes a tree node larger than a quarter of a segment (minus a header) to
/// a blob file, and its page cache then charges that node the size of its in-log pointer
/// (a few dozen bytes), not the node's. Our leaf nodes hold 8 to 17 pages of 64 records
/// (~15 KiB a page for 200-byte payloads), so at the default 512 KiB segments nearly every
/// node was a blob and `--cache-mb` bounded nothing: every node the recovery scan or a
/// reserve's payload read pulled in stayed in memory (heaptrack, 2M jobs: 73% of the heap
/// after recovery). With 2 MiB segments nodes up to 512 KiB are written inline and
/// charged their size, so the cache evicts them (pages whose record bodies average up to
/// ~470 bytes; larger bodies make blob nodes again, see docs/STORAGE.md).
pub const NEW_SEGMENT_SIZE: usize = 2 << 20;

/// The segment size to open `path` with: sled refuses to open a directory with another
/// size than the one it was created with (recorded in its `conf` file), so an existing
/// directory keeps its own and a new one gets [`NEW_SEGMENT_SIZE`].
pub(crate) fn segment_size_for(path: &Path) -> Result<usize, StoreError> {
    let conf = path.join("conf");
    let bytes = match std::fs::read(&conf) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NEW_SEGMENT_SIZE),
        Err(e) => return Err(StoreError::io(format!("cannot read {}", conf.display()), e)),
    };
    // `key: value` lines, then sled's CRC (4 binary bytes).
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| line.strip_prefix("segment_size:"))
        .find_map(|value| value.trim().parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("{} has no readable segment_size line", conf.display()),
            hint: "the data dir is damaged; restore it from a backup".into(),
        })
}

/// Opens sled, waiting a little for its lock. Another process is kept out by the data
/// dir's own lock (`datadir.rs`), taken before this; but within one process sled 0.34
/// closes its file only when its epoch-based garbage collector gets round to the last
/// deferred reference, some time after the `Db` was dropped. A restart in the same process
/// (tests, an embedding application) would otherwise fail at random.
fn open_sled(config: &SledConfig) -> Result<sled::Db, StoreError> {
    let path = &config.path;
    let segment_size = segment_size_for(path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // sled's default background flush (every 500 ms) stays on in every durability mode:
        // it is cheap, and in `none` mode it is the only thing bounding what a crash loses.
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity)
            .segment_size(segment_size)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::testutil::record;

    fn open(dir: &Path) -> PageDb {
        PageDb::open(&SledConfig::new(dir)).expect("open store")
    }

    fn bodies(ids: &[JobId]) -> Vec<(JobId, Box<[u8]>)> {
        ids.iter().map(|&id| (id, record::encode(&record(id, 16)).unwrap())).collect()
    }

    fn scan(store: &PageDb) -> Vec<JobRecord> {
        let mut out = vec![];
        store
            .reader()
            .scan(|id, body| {
                out.push(record::decode(id, body)?);
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn checkpoints_write_pages_and_remove_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let puts = bodies(&[1, 2, 63, 64, 200]);
        let entries: Vec<(JobId, Option<&[u8]>)> =
            puts.iter().map(|(id, b)| (*id, Some(&b[..]))).collect();
        let done = store.apply_checkpoint(&entries, &[], 200).unwrap();
        assert_eq!(done, PagesWritten { written: 3, removed: 0 });
        assert_eq!(store.pages_tree().len(), 3);
        {
            // Dropped before the reopen: a reader keeps sled (and its lock) alive.
            let reader = store.reader();
            for id in [1, 2, 63, 64, 200] {
                assert_eq!(reader.get(id).unwrap(), Some(record(id, 16)), "job {id}");
            }
            assert_eq!(reader.get(3).unwrap(), None);
            assert_eq!(reader.get(65).unwrap(), None);
        }

        // Deleting every job of page 1, one of page 0 (and one that never existed).
        let done = store.apply_checkpoint(&[(2, None), (5, None), (64, None)], &[], 200).unwrap();
        assert_eq!(done, PagesWritten { written: 1, removed: 1 });
        assert_eq!(store.pages_tree().len(), 2);
        assert_eq!(scan(&store).iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 63, 200]);
        store.sync().unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(scan(&store), vec![record(1, 16), record(63, 16), record(200, 16)]);
        assert!(store.reader().id_ceiling().unwrap() > 200);
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
        let err = PageDb::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnknownVersion { found: 7, expected: STORE_FORMAT_VERSION, .. }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("format version 7"), "{msg}");
        assert!(msg.contains("upgrade qd or point --data at a new directory"), "{msg}");
    }

    /// A data dir of format 1 (one sled key per job, before pages) is refused with what to
    /// do about it; nothing in it is touched.
    #[test]
    fn refuses_the_one_key_per_job_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(META_TREE)
                .unwrap()
                .insert(FORMAT_VERSION_KEY, &1u32.to_be_bytes())
                .unwrap();
            db.open_tree("jobs").unwrap().insert(7u64.to_be_bytes(), b"old record").unwrap();
            db.flush().unwrap();
        }
        let err = PageDb::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(
            matches!(err, StoreError::OldVersion { found: 1, expected: STORE_FORMAT_VERSION, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("format version 1"), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
        let db = crate::store::testutil::open_raw_after_drop(dir.path());
        assert_eq!(db.open_tree("jobs").unwrap().len(), 1, "the old data is left alone");
    }

    /// A data dir of format 2 (pages holding bincode record bodies) is refused the same way;
    /// its pages are left alone.
    #[test]
    fn refuses_the_bincode_body_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(META_TREE)
                .unwrap()
                .insert(FORMAT_VERSION_KEY, &2u32.to_be_bytes())
                .unwrap();
            db.open_tree(PAGES_TREE).unwrap().insert(page_key(0), b"old page").unwrap();
            db.flush().unwrap();
        }
        let err = PageDb::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(
            matches!(err, StoreError::OldVersion { found: 2, expected: STORE_FORMAT_VERSION, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("format version 2"), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
        let db = crate::store::testutil::open_raw_after_drop(dir.path());
        assert_eq!(db.open_tree(PAGES_TREE).unwrap().len(), 1, "the old data is left alone");
    }

    #[test]
    fn refuses_foreign_data_without_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(PAGES_TREE).unwrap().insert(b"x", b"y").unwrap();
            db.flush().unwrap();
        }
        let err = PageDb::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(err.to_string().contains("no format version"), "{err}");
    }

    #[test]
    fn a_new_dir_is_stamped_with_our_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let db = crate::store::testutil::open_raw_after_drop(dir.path());
        let stored = db.open_tree(META_TREE).unwrap().get(FORMAT_VERSION_KEY).unwrap().unwrap();
        assert_eq!(stored.as_ref(), &STORE_FORMAT_VERSION.to_be_bytes());
    }

    /// Regression (security issue, item 7): a second `qd serve` on the same data dir used
    /// to delete files (partial snapshots) before it found the dir locked, because sled's
    /// lock was taken only after the cleanup. The dir's own lock now comes first: the second
    /// open fails with a clear error and touches nothing.
    #[test]
    fn a_second_open_fails_clearly_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        // As if the first qd were writing a snapshot right now.
        let snapshot = dir.path().join("snap.00000000000000aa.generating");
        std::fs::write(&snapshot, b"half a snapshot").unwrap();
        let err = PageDb::open(&SledConfig::new(dir.path())).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("another qd is running on data dir"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(snapshot.exists(), "the second open removed a file of the first");
    }

    #[test]
    fn sleds_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        drop(open(&data));
        for name in ["", "db", "conf", "lock"] {
            let mode = std::fs::metadata(data.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name:?} is open to others: {mode:o}");
        }
    }

    #[test]
    fn a_format3_dir_is_opened_for_migration() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(META_TREE)
                .unwrap()
                .insert(FORMAT_VERSION_KEY, &3u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let mut store = open(dir.path());
        assert_eq!(store.found_format(), 3);
        store.stamp_current_format().unwrap();
        drop(store);
        assert_eq!(open(dir.path()).found_format(), STORE_FORMAT_VERSION);
    }

    #[test]
    fn leftover_partial_snapshot_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            let puts = bodies(&[1, 2]);
            let entries: Vec<_> = puts.iter().map(|(id, b)| (*id, Some(&b[..]))).collect();
            store.apply_checkpoint(&entries, &[], 2).unwrap();
            store.sync().unwrap();
        }
        let junk = dir.path().join("snap.0000000000000001.generating");
        std::fs::write(&junk, b"half a snapshot").unwrap();
        let store = open(dir.path());
        assert!(!junk.exists(), "the partial snapshot is still there");
        assert_eq!(scan(&store).len(), 2);
    }

    /// Regression (issue 10, W7): at sled's default 512 KiB segments, leaf nodes of 8-17
    /// pages were written as blob files, which sled's cache charges a few dozen bytes each:
    /// recovery and payload reads kept every node they touched (1.7 GiB of RSS recovering
    /// 10M jobs with a 16 MiB cache). A new dir gets 2 MiB segments, and pages of 200-byte
    /// payloads (W7's) are written inline, where the cache counts their size.
    #[test]
    fn a_new_dir_keeps_pages_of_small_jobs_out_of_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            // 200 pages: many full leaf nodes of sled.
            let ids: Vec<JobId> = (0..200 * page::SLOTS).collect();
            let puts: Vec<(JobId, Box<[u8]>)> =
                ids.iter().map(|&id| (id, record::encode(&record(id, 200)).unwrap())).collect();
            let entries: Vec<_> = puts.iter().map(|(id, b)| (*id, Some(&b[..]))).collect();
            store.apply_checkpoint(&entries, &[], ids.len() as u64).unwrap();
            store.sync().unwrap();
            assert_eq!(scan(&store).len(), ids.len());
        }
        assert_eq!(segment_size_for(dir.path()).unwrap(), NEW_SEGMENT_SIZE);
        let blobs = std::fs::read_dir(dir.path().join("blobs")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "sled wrote nodes of small jobs to blob files");
    }

    /// A dir created with sled's default segments (every dir before issue 10's change)
    /// opens with the size it was created with: sled refuses any other.
    #[test]
    fn an_existing_dir_keeps_its_segment_size() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = {
                let db = sled::Config::new().path(dir.path()).segment_size(512 * 1024);
                let db = db.open().unwrap();
                db.open_tree(META_TREE)
                    .unwrap()
                    .insert(FORMAT_VERSION_KEY, &STORE_FORMAT_VERSION.to_be_bytes())
                    .unwrap();
                db.flush().unwrap();
                drop(db);
                let store = PageDb::open(&SledConfig::new(dir.path()));
                store.expect("a dir with 512 KiB segments opens")
            };
            let body = record::encode(&record(3, 16)).unwrap();
            store.apply_checkpoint(&[(3, Some(&body[..]))], &[], 3).unwrap();
            store.sync().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(scan(&store), vec![record(3, 16)]);
        assert_eq!(segment_size_for(dir.path()).unwrap(), 512 * 1024);
    }

    #[test]
    fn large_payloads_round_trip() {
        // Big enough for sled to put the page in a blob file, which `sync` must fsync.
        let dir = tempfile::tempdir().unwrap();
        let big = record(7, 600 * 1024);
        {
            let mut store = open(dir.path());
            let body = record::encode(&big).unwrap();
            store.apply_checkpoint(&[(7, Some(&body[..]))], &[], 7).unwrap();
            store.sync().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(scan(&store), vec![big.clone()]);
        assert_eq!(store.reader().get(7).unwrap(), Some(big));
    }
}
