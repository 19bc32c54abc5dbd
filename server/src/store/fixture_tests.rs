//! Data dirs written by earlier releases open and recover every job. Each fixture is a
//! directory under `store/fixtures/` (see its README), copied to a temporary dir first:
//! opening migrates it, and the committed files must stay as the old release wrote them.

use std::path::Path;

use bytes::Bytes;
use qd_protocol::{Backoff, JobId, JobOptions};

use super::pages::keys::STORE_FORMAT_VERSION;
use super::testutil::{open_raw_after_drop, recover_all};
use super::{JournalConfig, JournaledStore, SledConfig, Store};
use crate::model::{AttemptError, JobRecord, PersistedState};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A job as the fixture's writer made it: queue by parity, name and payload by id.
fn job(id: JobId, options: JobOptions) -> JobRecord {
    let created = 1_700_000_000_000 + id * 1000;
    JobRecord {
        id,
        queue: if id % 2 == 0 { "emails".into() } else { "reports".into() },
        name: format!("job-{id}"),
        payload: Bytes::from(format!("payload of job {id}").into_bytes()),
        run_at_ms: created + options.delay_ms,
        options,
        created_at_ms: created,
        failures: 0,
        state: PersistedState::Waiting,
        errors: vec![],
    }
}

/// The failure the fixture's writer recorded for try `attempt` of job `id`.
fn failed(record: &mut JobRecord, attempt: u32, dead: bool) {
    let at_ms = 1_700_000_100_000 + record.id * 1000 + u64::from(attempt);
    let error =
        AttemptError { attempt, at_ms, message: format!("job {} try {attempt} broke", record.id) };
    record.apply_failure(error, at_ms + 500, dead);
}

/// Every job of `fixtures/format3`, field by field (its README says how it was made).
fn format3_jobs() -> Vec<JobRecord> {
    let dies =
        JobOptions { attempts: 2, backoff: Backoff::Fixed { delay_ms: 500 }, ..Default::default() };
    let mut one = job(1, JobOptions::default());
    failed(&mut one, 1, false);
    let two =
        job(2, JobOptions { key: Some("order-42".into()), priority: -1, ..Default::default() });
    let three = job(3, JobOptions { delay_ms: 60_000, ..Default::default() });
    let mut four = job(4, dies.clone());
    failed(&mut four, 1, false);
    failed(&mut four, 2, true);
    let six = job(
        6,
        JobOptions {
            key: Some("k6".into()),
            lease_ms: 5_000,
            backoff: Backoff::Exponential { base_ms: 200, max_ms: 10_000, jitter_pct: 0 },
            ..Default::default()
        },
    );
    let seven = job(7, JobOptions { delay_ms: 3_600_000, priority: 7, ..Default::default() });
    let mut eight = job(8, dies);
    failed(&mut eight, 1, false);
    failed(&mut eight, 2, true);
    vec![one, two, three, four, six, seven, eight, job(70, JobOptions::default())]
}

#[test]
fn a_format3_data_dir_opens_and_recovers_every_job() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/fixtures/format3");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let expected = format3_jobs();
    // Spot checks that the expectation says what the README promises.
    assert_eq!(expected[3].state, PersistedState::Dead);
    assert_eq!(expected[3].errors.len(), 2);
    assert_eq!(expected[2].run_at_ms, expected[2].created_at_ms + 60_000);

    let (mut store, stats) =
        JournaledStore::open_with_stats(&SledConfig::new(dir.path()), JournalConfig::default())
            .unwrap();
    assert_eq!(stats.migrated_records, 9, "the fixture's journal tail has 9 changes");
    let rec = recover_all(&mut store);
    for (got, want) in rec.records.iter().zip(&expected) {
        assert_eq!(got, want, "job {}", want.id);
    }
    assert_eq!(rec.records.len(), expected.len());
    assert!(rec.next_id > 70, "ids may not be reused: next id {}", rec.next_id);
    let reader = store.reader();
    assert_eq!(reader.get(5).unwrap(), None, "job 5 completed in the journal");
    assert_eq!(reader.get(8).unwrap().as_ref(), Some(&expected[6]));
    drop(reader);
    store.close().unwrap();
    drop(store);

    // Migrated: the dir is stamped with the current format and reopens the same.
    let db = open_raw_after_drop(dir.path());
    let version = db.open_tree("meta").unwrap().get("format_version").unwrap().unwrap();
    assert_eq!(version.as_ref(), STORE_FORMAT_VERSION.to_be_bytes());
    drop(db);
    let mut store =
        JournaledStore::open(&SledConfig::new(dir.path()), JournalConfig::default()).unwrap();
    assert_eq!(recover_all(&mut store).records, expected);
}

/// Format 5 only added an optional tail to record bodies, so a format-4 dir (journal tail and
/// pages alike) is read as it is and restamped. Written here by this build with no format-5
/// option set, which is byte for byte what format 4 wrote, then stamped 4.
#[test]
fn a_format4_data_dir_opens_as_it_is_and_is_restamped() {
    let dir = tempfile::tempdir().unwrap();
    let expected = format3_jobs();
    {
        let mut store =
            JournaledStore::open(&SledConfig::new(dir.path()), JournalConfig::default()).unwrap();
        let inserts: Vec<_> =
            expected.iter().map(|r| crate::model::Change::Insert(Box::new(r.clone()))).collect();
        // Half reach the pages through a checkpoint (close), half stay in the journal.
        let (first, second) = inserts.split_at(inserts.len() / 2);
        store.commit(first, true).unwrap();
        store.close().unwrap();
        drop(store);
        let mut store =
            JournaledStore::open(&SledConfig::new(dir.path()), JournalConfig::default()).unwrap();
        recover_all(&mut store);
        store.commit(second, true).unwrap();
        // No close: the second half is left in the journal (unless a checkpoint took it).
        drop(store);
    }
    let db = open_raw_after_drop(dir.path());
    db.open_tree("meta").unwrap().insert("format_version", &4u32.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);

    let mut store =
        JournaledStore::open(&SledConfig::new(dir.path()), JournalConfig::default()).unwrap();
    assert_eq!(recover_all(&mut store).records, expected);
    store.close().unwrap();
    drop(store);
    let db = open_raw_after_drop(dir.path());
    let version = db.open_tree("meta").unwrap().get("format_version").unwrap().unwrap();
    assert_eq!(version.as_ref(), STORE_FORMAT_VERSION.to_be_bytes());
}
