//! The data directory as a whole: who may use it and who may read it. [`DataDirLock`] is
//! the exclusive lock a store takes before it touches anything in the directory, and the
//! helpers here create files and directories readable by their owner only and remove
//! sled's leftovers. What goes into the files is the pages' (`pages/`) and the journal's
//! (`journal/`) business.
//!
//! ```text
//! <data>/           mode 0700 when qd creates it
//! <data>/lock       empty, mode 0600; an exclusive flock(2) held while a store is open
//! <data>/journal/   the journal's segments (journal/segment.rs), 0700 / 0600
//! <data>/db, conf, blobs/, snap.*   sled's own files, chmodded 0600 (dirs 0700) on open
//! ```
//!
//! Invariants:
//! 1. Nothing in the directory is created, removed or opened for writing before the lock
//!    is held: a second `qd serve` on the same directory fails with
//!    [`StoreError::Locked`] and leaves every file as it found it (sled's own lock is taken
//!    only inside `sled::open`, after the partial-snapshot cleanup, hence this one).
//! 2. The lock is released when the [`DataDirLock`] drops (or the process ends, however
//!    it ends: flock locks die with their file descriptions).

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs2::FileExt;

use super::StoreError;

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "lock";

/// Mode of every file qd creates in the data dir: the jobs' payloads are nobody else's.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory qd creates in the data dir.
pub const DIR_MODE: u32 = 0o700;

/// The exclusive lock on a data dir. Holds the open lock file; dropping it unlocks.
#[derive(Debug)]
pub struct DataDirLock {
    path: PathBuf,
    /// Held, never read: the flock lives as long as this open file.
    _file: File,
}

/// How long a contended lock is tried again before it counts as held (see `acquire`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl DataDirLock {
    /// Creates `dir` (mode 0700) if missing and takes its lock, waiting at most
    /// `LOCK_WAIT` for a holder that is going away: a holder that stays (another qd, or
    /// another store in this process) is reported as [`StoreError::Locked`]. Touches nothing else in the directory (invariant 1).
    pub fn acquire(dir: &Path) -> Result<DataDirLock, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| StoreError::io(format!("cannot open {}", path.display()), e))?;
        // fs2 rather than std's `File::try_lock`: the latter needs Rust 1.89, above the
        // workspace's rust-version. Both are flock(2) on Linux.
        //
        // A contended lock is tried again for a short while before it counts as held: a
        // flock lives as long as any copy of its file description, and copies can outlive
        // their owner briefly. A supervisor restarting qd may start the new process while
        // the old one's descriptors are still being closed, and a child process forked by
        // this one (a test harness spawning `qd serve`) holds copies of every descriptor
        // until it execs, so a store closed and reopened at that moment found its own lock
        // still held. A second live qd holds the lock for good and is still refused.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock_exclusive() {
                Ok(()) => return Ok(DataDirLock { path: dir.to_path_buf(), _file: file }),
                Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked { path: dir.to_path_buf() });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(StoreError::io(format!("cannot lock {}", path.display()), e)),
            }
        }
    }

    /// The directory this lock holds.
    pub fn dir(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` and its missing parents with mode 0700. An existing directory keeps its
/// mode: it may be a volume the operator set up on purpose.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| StoreError::io(format!("cannot create directory {}", dir.display()), e))
}

/// Opens a new file for appending, mode 0600.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(path)
}

/// Takes group and other permissions off sled's files, which sled creates with the
/// process's umask: `db`, `conf`, snapshots, and `blobs/` with what it holds. Our own files
/// (the lock, `journal/`) are created private and left alone.
pub fn restrict_sled_files(dir: &Path) -> Result<(), StoreError> {
    let list_err = |e| StoreError::io(format!("cannot list data dir {}", dir.display()), e);
    let mut paths = vec![];
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "db" || name == "conf" || name == "blobs" || name.starts_with("snap.") {
            paths.push(entry.path());
        }
    }
    if let Ok(blobs) = std::fs::read_dir(dir.join("blobs")) {
        paths.extend(blobs.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let mode = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
        if meta.permissions().mode() & 0o777 == mode {
            continue;
        }
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => {}
            // sled may garbage-collect a blob meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(format!("cannot chmod {}", path.display()), e));
            }
        }
    }
    Ok(())
}

/// Removes `snap.*.generating` leftovers of a snapshot that a kill interrupted; with one
/// present, sled 0.34.7 refuses to open forever (upstream issues 1527, 1533), and the log
/// still holds the data. Takes the lock as proof that no live sled is writing one.
pub fn remove_partial_snapshots(lock: &DataDirLock) -> Result<(), StoreError> {
    let dir = lock.dir();
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

    #[test]
    fn a_second_lock_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        let err = DataDirLock::acquire(&data).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        drop(first);
        DataDirLock::acquire(&data).unwrap();
    }

    /// Regression: a store closed and reopened while a forked child still held a copy of
    /// its lock's descriptor found its own lock held (`Locked`, seen in the unit tests that
    /// run beside the kill -9 loop). A copy that goes away soon must not count as a holder.
    #[test]
    fn a_lock_copy_that_goes_away_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        // A copy of the same file description, as a forked child has until it execs.
        let copy = first._file.try_clone().unwrap();
        drop(first);
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(copy);
        });
        DataDirLock::acquire(&data).expect("the copy went away: the lock is free");
        holder.join().unwrap();
    }

    #[test]
    fn created_dirs_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let _lock = DataDirLock::acquire(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), DIR_MODE);
        assert_eq!(mode(&data.join(LOCK_FILE)), FILE_MODE);
        std::fs::write(data.join("db"), b"x").unwrap();
        std::fs::set_permissions(data.join("db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_sled_files(&data).unwrap();
        assert_eq!(mode(&data.join("db")), FILE_MODE);
    }
}
