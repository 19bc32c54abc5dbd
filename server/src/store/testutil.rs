//! Helpers shared by the store's tests: sample records and changes. Test-only.

use std::collections::BTreeMap;

use qd_protocol::{JobId, JobOptions};

use crate::model::{
    AttemptError, Change, JobRecord, PersistedState, QueueSettings, ScheduleRecord,
};

/// A waiting job with `payload_len` bytes of payload derived from its id.
pub fn record(id: JobId, payload_len: usize) -> JobRecord {
    JobRecord {
        id,
        queue: "emails".into(),
        name: "welcome".into(),
        payload: (0..payload_len).map(|i| (id as usize + i) as u8).collect::<Vec<u8>>().into(),
        options: JobOptions::default(),
        created_at_ms: 1_700_000_000_000,
        run_at_ms: 1_700_000_000_000,
        failures: 0,
        state: PersistedState::Waiting,
        errors: vec![],
    }
}

pub fn insert(id: JobId) -> Change {
    Change::Insert(Box::new(record(id, 16)))
}

pub fn fail(id: JobId, attempt: u32, dead: bool) -> Change {
    Change::Fail {
        id,
        error: AttemptError { attempt, at_ms: 5, message: format!("try {attempt} failed") },
        run_at_ms: 1_700_000_000_000 + u64::from(attempt) * 1000,
        dead,
    }
}

pub fn complete(id: JobId) -> Change {
    Change::Complete { id }
}

/// A schedule named `s<n>` whose template payload has `payload_len` bytes.
pub fn schedule(n: u64, payload_len: usize, last_fire_ms: Option<u64>) -> ScheduleRecord {
    ScheduleRecord {
        schedule: qd_protocol::Schedule {
            name: format!("s{n}"),
            spec: qd_protocol::ScheduleSpec::Cron {
                expr: "*/5 * * * * *".into(),
                tz: "UTC".into(),
            },
            queue: "emails".into(),
            job: qd_protocol::NewJob {
                name: "digest".into(),
                payload: vec![7; payload_len].into(),
                options: JobOptions::default(),
            },
        },
        anchor_ms: 1_700_000_000_000,
        last_fire_ms,
    }
}

/// The naive meaning of a sequence of changes: what the store's tests compare against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub jobs: BTreeMap<JobId, JobRecord>,
    pub queues: BTreeMap<String, QueueSettings>,
    pub schedules: BTreeMap<String, ScheduleRecord>,
    /// Ids below this were inserted or promised by an `IdFloor`.
    pub floor: JobId,
}

impl Model {
    /// Applies one change; a change on a missing job changes nothing.
    pub fn apply(&mut self, change: &Change) {
        apply_to_jobs(&mut self.jobs, change);
        match change {
            Change::Insert(r) => self.floor = self.floor.max(r.id + 1),
            Change::Settings { queue, settings } => {
                if *settings == QueueSettings::default() {
                    self.queues.remove(queue);
                } else {
                    self.queues.insert(queue.clone(), settings.clone());
                }
            }
            Change::IdFloor { next_id } => self.floor = self.floor.max(*next_id),
            Change::Schedule { name, schedule: Some(s) } => {
                self.schedules.insert(name.clone(), (**s).clone());
            }
            Change::Schedule { name, schedule: None } => {
                self.schedules.remove(name);
            }
            _ => {}
        }
    }

    pub fn records(&self) -> Vec<JobRecord> {
        self.jobs.values().cloned().collect()
    }

    pub fn queue_list(&self) -> Vec<(String, QueueSettings)> {
        self.queues.iter().map(|(q, s)| (q.clone(), s.clone())).collect()
    }

    pub fn schedule_list(&self) -> Vec<ScheduleRecord> {
        self.schedules.values().cloned().collect()
    }
}

/// What a change does to the records alone.
pub fn apply_to_jobs(jobs: &mut BTreeMap<JobId, JobRecord>, change: &Change) {
    match change {
        Change::Insert(r) => {
            jobs.insert(r.id, (**r).clone());
        }
        Change::Complete { id } | Change::Remove { id } => {
            jobs.remove(id);
        }
        Change::Fail { id, error, run_at_ms, dead } => {
            if let Some(r) = jobs.get_mut(id) {
                r.apply_failure(error.clone(), *run_at_ms, *dead);
            }
        }
        Change::Retry { id, run_at_ms } => {
            if let Some(r) = jobs.get_mut(id) {
                r.apply_retry(*run_at_ms);
            }
        }
        Change::Reschedule { id, run_at_ms } => {
            if let Some(r) = jobs.get_mut(id) {
                r.run_at_ms = *run_at_ms;
            }
        }
        Change::Replace { id, payload, run_at_ms } => {
            if let Some(r) = jobs.get_mut(id) {
                r.apply_replace(payload, *run_at_ms);
            }
        }
        Change::Settings { .. } | Change::IdFloor { .. } | Change::Schedule { .. } => {}
    }
}

/// Everything a store recovers, collected (tests only: the real caller streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub records: Vec<JobRecord>,
    pub next_id: JobId,
    pub queues: Vec<(String, QueueSettings)>,
    pub schedules: Vec<ScheduleRecord>,
}

/// Runs [`super::Store::recover`] and collects what it visits, checking the count it
/// reports and that ids come in ascending order.
pub fn recover_all(store: &mut dyn super::Store) -> Recovered {
    let mut records = Vec::new();
    let meta = store.recover(&mut |r| records.push(r)).expect("recover");
    assert_eq!(meta.records, records.len() as u64, "recover miscounted");
    assert!(records.windows(2).all(|w| w[0].id < w[1].id), "recover is not in id order");
    Recovered { records, next_id: meta.next_id, queues: meta.queues, schedules: meta.schedules }
}

/// What a [`FakeStore`] holds and how it misbehaves, shared with the test that made it.
#[derive(Debug, Default)]
pub struct FakeState {
    pub records: std::sync::Mutex<std::collections::BTreeMap<JobId, JobRecord>>,
    /// Sizes of the commits that succeeded, in order.
    pub commits: std::sync::Mutex<Vec<usize>>,
    /// The next commit fails with a "disk full" I/O error.
    pub fail_next: std::sync::atomic::AtomicBool,
    /// Every commit fails so, until cleared.
    pub fail_always: std::sync::atomic::AtomicBool,
    /// The next commit panics.
    pub panic_next: std::sync::atomic::AtomicBool,
    /// Commits with `durable` set, and calls of `flush`.
    pub syncs: std::sync::atomic::AtomicUsize,
}

/// An in-memory [`super::Store`] that fails or panics on demand: for the error paths of
/// the writer and the engine, which a real disk rarely shows.
#[derive(Debug, Default, Clone)]
pub struct FakeStore(pub std::sync::Arc<FakeState>);

impl super::JobLookup for FakeState {
    fn get(&self, id: JobId) -> Result<Option<JobRecord>, super::StoreError> {
        Ok(self.records.lock().unwrap().get(&id).cloned())
    }
}

impl super::Store for FakeStore {
    fn recover(
        &mut self,
        visit: &mut dyn FnMut(JobRecord),
    ) -> Result<super::RecoveredMeta, super::StoreError> {
        let records = self.0.records.lock().unwrap();
        records.values().cloned().for_each(&mut *visit);
        let next_id = records.keys().next_back().map_or(1, |id| id + 1);
        Ok(super::RecoveredMeta {
            next_id,
            records: records.len() as u64,
            queues: vec![],
            schedules: vec![],
        })
    }

    fn commit(&mut self, changes: &[Change], durable: bool) -> Result<(), super::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if durable {
            self.0.syncs.fetch_add(1, SeqCst);
        }
        if self.0.panic_next.swap(false, SeqCst) {
            panic!("injected panic");
        }
        if self.0.fail_next.swap(false, SeqCst) || self.0.fail_always.load(SeqCst) {
            return Err(super::StoreError::io(
                "writing the batch",
                std::io::Error::other("no space left on device"),
            ));
        }
        let mut records = self.0.records.lock().unwrap();
        for change in changes {
            apply_to_jobs(&mut records, change);
        }
        self.0.commits.lock().unwrap().push(changes.len());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), super::StoreError> {
        self.0.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn reader(&self) -> super::StoreReader {
        super::StoreReader::new(self.0.clone())
    }
}

/// sled opened on a dir whose previous `Db` was just dropped: sled's flusher thread can
/// hold the file lock a moment longer on a loaded machine, so retry for a while.
pub fn open_raw_after_drop(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // With the size the dir was created with: sled refuses any other.
        let segment_size = crate::store::pages::segment_size_for(path).expect("conf");
        match sled::Config::new().path(path).segment_size(segment_size).open() {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}
