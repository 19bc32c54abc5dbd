//! The journal: an append-only log of [`Change`]s that makes a group durable with one
//! sequential write and one `fdatasync`, long before (or instead of) sled seeing it. This
//! file owns the files and their bytes: segments, records, checksums, replay and the torn
//! tail. What a change *means* and when a checkpoint moves the journal's net effect into
//! sled is `journaled.rs`'s business.
//!
//! ```text
//! <data>/journal/<seq>.log     seq = u64 as exactly 16 lowercase hex digits; replayed in
//!                              seq order; appends go to the highest one only
//! segment = record*
//! record  = len   u32 little-endian   bytes in body, 1 ..= MAX_RECORD_LEN
//!           crc   u32 little-endian   CRC-32 (IEEE, as crc32fast computes it) of body
//!           body  len bytes           bincode 2, serde API, bincode::config::standard()
//!                                     encoding of one model::Change
//! ```
//!
//! Invariants:
//! 1. A group of changes is written with one `write_all` of a buffer built in memory, so a
//!    crash leaves at most one partial group, at the end of the newest segment.
//! 2. Every segment but the newest is complete: `rotate` fsyncs a segment before the next
//!    one is created (and fsyncs the directory so the new name survives a power loss). A
//!    short or checksum-bad record in an older segment is therefore damage, never a crash
//!    artefact, and replay refuses it instead of silently dropping what follows.
//! 3. A record ends the log when it is short or its checksum fails; in the newest segment
//!    the file is cut there (that tail was never acknowledged: acknowledging a group waits
//!    for the write, and in `fsync` mode for its `fdatasync`). A length of 0 counts as bad:
//!    file systems can leave zeros behind after a power loss, and a `Change` is never empty.
//! 4. A record whose checksum holds but whose body does not decode was written by another
//!    format: refused, wherever it is.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::Change;

use super::StoreError;

/// Bytes of a record's header: length and checksum.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted on replay; anything longer is a damaged length field. Far above
/// any frame the server accepts.
pub const MAX_RECORD_LEN: u32 = 1 << 30;
/// The journal's directory inside the data dir.
pub const JOURNAL_DIR: &str = "journal";

/// The segment file of `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

/// The appending end of the journal. Owned by whoever commits (the store's writer side).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// The newest segment, open for appending.
    file: File,
    seq: u64,
    /// Bytes in the newest segment.
    len: u64,
    /// Bytes appended since the last `sync`.
    unsynced: bool,
    /// Scratch for one group's records, kept to reuse its allocation.
    buf: Vec<u8>,
}

/// What `Journal::open` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Bytes cut off the newest segment (a torn tail); 0 after a clean stop.
    pub truncated: u64,
}

impl Journal {
    /// Opens the journal in `dir` (created if missing): replays every record of every
    /// segment, in order, into `apply`; cuts a torn tail off the newest segment; then starts
    /// a new, empty segment for appends. Segments replayed are left in place: deleting them
    /// is up to whoever makes their changes durable elsewhere (see [`remove_segments_before`]).
    pub fn open(
        dir: &Path,
        mut apply: impl FnMut(Change) -> Result<(), StoreError>,
    ) -> Result<(Journal, Replayed), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        let seqs = list_segments(dir)?;
        let mut replayed = Replayed::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let newest = i + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let bytes = std::fs::read(&path)
                .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
            let good = replay_segment(&bytes, &path, &mut apply, &mut replayed.records)?;
            replayed.segments += 1;
            replayed.bytes += good as u64;
            if good < bytes.len() {
                let cut = bytes.len() - good;
                if !newest {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "journal segment {} is damaged at byte {good} ({cut} bytes of \
                             {} cannot be read), and newer segments follow it",
                            path.display(),
                            bytes.len()
                        ),
                        hint: "the disk or file system lost data qd had synced; restore the data \
                               dir from a backup. To start anyway with what can be read, move \
                               this segment and every newer one out of the journal directory \
                               (their changes will be lost)"
                            .into(),
                    });
                }
                tracing::warn!(
                    "journal segment {} ends in {cut} bytes that are not a whole record: the \
                     tail of a write a crash interrupted, never acknowledged; cutting it off",
                    path.display()
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(good as u64).and_then(|()| f.sync_all()))
                    .map_err(|e| {
                        StoreError::io(format!("cannot truncate {}", path.display()), e)
                    })?;
                replayed.truncated = cut as u64;
            }
        }
        let seq = seqs.last().map_or(1, |s| s + 1);
        let file = create_segment(dir, seq)?;
        let journal =
            Journal { dir: dir.to_path_buf(), file, seq, len: 0, unsynced: false, buf: Vec::new() };
        Ok((journal, replayed))
    }

    /// Appends `changes` as one write (invariant 1). Not durable until [`Journal::sync`].
    /// After an error the segment's tail is unknown: the caller must stop appending.
    pub fn append(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        self.buf.clear();
        for change in changes {
            encode_record(change, &mut self.buf)?;
        }
        self.file.write_all(&self.buf).map_err(|e| {
            StoreError::io(
                format!("cannot write {}", segment_path(&self.dir, self.seq).display()),
                e,
            )
        })?;
        self.len += self.buf.len() as u64;
        self.unsynced = true;
        // A huge group would keep its buffer forever: let it go.
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Forces everything appended to stable storage (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.file.sync_data().map_err(|e| {
                StoreError::io(
                    format!("cannot fsync {}", segment_path(&self.dir, self.seq).display()),
                    e,
                )
            })?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Closes the newest segment (synced, invariant 2) and starts the next one. Returns the
    /// new segment's seq: every change appended so far is in a segment below it. A no-op
    /// when the newest segment is still empty.
    pub fn rotate(&mut self) -> Result<u64, StoreError> {
        if self.len == 0 {
            return Ok(self.seq);
        }
        self.sync()?;
        let seq = self.seq + 1;
        self.file = create_segment(&self.dir, seq)?;
        self.seq = seq;
        self.len = 0;
        Ok(seq)
    }

    /// Bytes in the newest segment.
    pub fn segment_len(&self) -> u64 {
        self.len
    }
}

/// Deletes every segment below `seq` (those a checkpoint made redundant). Deleting is not
/// fsynced: a segment that reappears after a power loss is replayed again, which is
/// harmless (replay is idempotent, see `journaled.rs`).
pub fn remove_segments_before(dir: &Path, seq: u64) -> Result<usize, StoreError> {
    let mut removed = 0;
    for old in list_segments(dir)?.into_iter().filter(|&s| s < seq) {
        let path = segment_path(dir, old);
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::io(format!("cannot remove {}", path.display()), e))?;
        removed += 1;
    }
    Ok(removed)
}

/// Appends one record (header and body) for `change` to `out`.
pub fn encode_record(change: &Change, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    bincode::serde::encode_into_std_write(change, out, bincode::config::standard()).map_err(
        |source| StoreError::Encode {
            id: match change {
                Change::Insert(r) => r.id,
                Change::Complete { id }
                | Change::Fail { id, .. }
                | Change::Retry { id, .. }
                | Change::Reschedule { id, .. }
                | Change::Remove { id } => *id,
                Change::Settings { .. } | Change::IdFloor { .. } => 0,
            },
            source,
        },
    )?;
    let body = &out[start + HEADER_LEN..];
    let len = u32::try_from(body.len()).ok().filter(|&l| l <= MAX_RECORD_LEN).ok_or_else(|| {
        StoreError::io(
            "appending to the journal",
            std::io::Error::other(format!("a change of {} bytes is too large", body.len())),
        )
    })?;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Replays the whole records of one segment; returns how many bytes they span. Anything
/// after that is a short or checksum-bad record (invariant 3); a record that checks out
/// but does not decode is an error (invariant 4).
fn replay_segment(
    bytes: &[u8],
    path: &Path,
    apply: &mut impl FnMut(Change) -> Result<(), StoreError>,
    records: &mut u64,
) -> Result<usize, StoreError> {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_LEN) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_LEN {
            break;
        }
        let Some(body) = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len as usize) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let decoded =
            bincode::serde::decode_from_slice::<Change, _>(body, bincode::config::standard());
        match decoded {
            Ok((change, used)) if used == body.len() => apply(change)?,
            Ok(_) | Err(_) => {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "journal segment {} holds a record at byte {at} that passes its \
                         checksum but is not a change this qd can read",
                        path.display()
                    ),
                    hint: "the data dir was written by another version of qd: run that \
                           version, or restore the data dir from a backup"
                        .into(),
                });
            }
        }
        *records += 1;
        at += HEADER_LEN + len as usize;
    }
    Ok(at)
}

/// The seqs of the segments in `dir`, ascending. Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let list_err = |e| StoreError::io(format!("cannot list {}", dir.display()), e);
    let mut seqs = vec![];
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let name = entry.map_err(list_err)?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else { continue };
        if stem.len() != 16 {
            continue;
        }
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Creates an empty segment and makes its name durable (fsync of the directory), so that
/// records synced into it later cannot vanish with their file after a power loss.
fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("cannot create {}", path.display()), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("cannot fsync {}", dir.display()), e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::{complete, fail, insert};

    fn open(dir: &Path) -> (Journal, Vec<Change>, Replayed) {
        let mut seen = vec![];
        let (journal, replayed) = Journal::open(dir, |c| {
            seen.push(c);
            Ok(())
        })
        .unwrap();
        (journal, seen, replayed)
    }

    fn open_err(dir: &Path) -> StoreError {
        Journal::open(dir, |_| Ok(())).unwrap_err()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the record layout: len and crc little-endian, then bincode.
    #[test]
    fn golden_record() {
        let mut out = vec![];
        encode_record(&complete(300), &mut out).unwrap();
        // Body: variant 1 (Complete), then id 300 as a bincode varint (0xfb, u16 LE).
        let body = [0x01, 0xfb, 0x2c, 0x01];
        let mut expected = 4u32.to_le_bytes().to_vec();
        expected.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        expected.extend_from_slice(&body);
        assert_eq!(hex(&out), hex(&expected));
        assert_eq!(hex(&out[..4]), "04000000");
    }

    #[test]
    fn round_trip_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let groups = [
            vec![insert(1), insert(2)],
            vec![fail(1, 1, false), complete(2)],
            vec![insert(3)],
            vec![],
        ];
        {
            let (mut j, seen, replayed) = open(dir.path());
            assert!(seen.is_empty());
            assert_eq!(replayed, Replayed::default());
            j.append(&groups[0]).unwrap();
            j.sync().unwrap();
            assert_eq!(j.rotate().unwrap(), 2);
            assert_eq!(j.rotate().unwrap(), 2, "an empty segment is not rotated");
            j.append(&groups[1]).unwrap();
            j.append(&groups[2]).unwrap();
            j.append(&groups[3]).unwrap();
            j.sync().unwrap();
        }
        let (mut j, seen, replayed) = open(dir.path());
        let all: Vec<Change> = groups.concat();
        assert_eq!(seen, all);
        assert_eq!((replayed.segments, replayed.records, replayed.truncated), (2, 5, 0));
        j.append(&[complete(1)]).unwrap();
        drop(j);
        let (_, seen, replayed) = open(dir.path());
        assert_eq!(seen.len(), 6);
        assert_eq!(replayed.segments, 3, "1 and 2 from the first run, 3 from the reopen");
    }

    #[test]
    fn torn_tail_is_cut_off_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let newest = {
            let (mut j, _, _) = open(dir.path());
            j.append(&[insert(1), insert(2)]).unwrap();
            j.sync().unwrap();
            segment_path(dir.path(), j.seq)
        };
        let good_len = std::fs::metadata(&newest).unwrap().len();
        // Half a record of the next group, as a kill in the middle of `write_all` leaves it.
        let mut half = vec![];
        encode_record(&insert(3), &mut half).unwrap();
        let mut file = OpenOptions::new().append(true).open(&newest).unwrap();
        file.write_all(&half[..half.len() / 2]).unwrap();
        drop(file);

        let (_, seen, replayed) = open(dir.path());
        assert_eq!(seen, vec![insert(1), insert(2)]);
        assert_eq!(replayed.truncated, (half.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), good_len, "not truncated");

        // Zeros, a bad checksum: the same.
        for junk in [vec![0u8; 64], {
            let mut bad = half.clone();
            *bad.last_mut().unwrap() ^= 1;
            bad
        }] {
            let mut file = OpenOptions::new().append(true).open(&newest).unwrap();
            file.write_all(&junk).unwrap();
            drop(file);
            // The newest segment is now the empty one made by the last open: put the junk
            // in the newest one by removing the empty ones.
            for seq in list_segments(dir.path()).unwrap() {
                let p = segment_path(dir.path(), seq);
                if p != newest && std::fs::metadata(&p).unwrap().len() == 0 {
                    std::fs::remove_file(p).unwrap();
                }
            }
            let (_, seen, replayed) = open(dir.path());
            assert_eq!(seen, vec![insert(1), insert(2)]);
            assert_eq!(replayed.truncated, junk.len() as u64);
        }
    }

    #[test]
    fn damage_in_an_older_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let (mut j, _, _) = open(dir.path());
            j.append(&[insert(1), insert(2)]).unwrap();
            let first = segment_path(dir.path(), j.seq);
            j.rotate().unwrap();
            j.append(&[insert(3)]).unwrap();
            j.sync().unwrap();
            first
        };
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&first, &bytes).unwrap();
        let err = open_err(dir.path());
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(msg.contains(&first.display().to_string()), "{msg}");
        assert!(msg.contains("newer segments follow"), "{msg}");
        assert!(msg.contains("restore the data dir from a backup"), "{msg}");
        // Refusing must not have touched it.
        assert_eq!(std::fs::read(&first).unwrap(), bytes);
    }

    #[test]
    fn a_record_that_checks_out_but_does_not_decode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let body = [0x07u8, 0, 0]; // no Change has variant 7
        let mut record = 3u32.to_le_bytes().to_vec();
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        std::fs::write(segment_path(dir.path(), 5), &record).unwrap();
        let msg = open_err(dir.path()).to_string();
        assert!(msg.contains("another version of qd"), "{msg}");
    }

    #[test]
    fn remove_segments_before_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = open(dir.path());
        for id in 1..=3 {
            j.append(&[insert(id)]).unwrap();
            j.rotate().unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"not a segment").unwrap();
        assert_eq!(remove_segments_before(dir.path(), 3).unwrap(), 2);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![3, 4]);
        assert!(dir.path().join("notes.txt").exists());
        drop(j);
        let (_, seen, _) = open(dir.path());
        assert_eq!(seen, vec![insert(3)]);
    }
}
