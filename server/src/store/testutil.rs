//! Helpers shared by the store's tests: sample records and changes. Test-only.

use qd_protocol::{JobId, JobOptions};

use crate::model::{AttemptError, Change, JobRecord, PersistedState};

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
    Change::Insert(record(id, 16))
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

/// Everything a store recovers, collected (tests only: the real caller streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub records: Vec<JobRecord>,
    pub next_id: JobId,
}

/// Runs [`super::Store::recover`] and collects what it visits, checking the count it
/// reports and that ids come in ascending order.
pub fn recover_all(store: &mut dyn super::Store) -> Recovered {
    let mut records = Vec::new();
    let meta = store.recover(&mut |r| records.push(r)).expect("recover");
    assert_eq!(meta.records, records.len() as u64, "recover miscounted");
    assert!(records.windows(2).all(|w| w[0].id < w[1].id), "recover is not in id order");
    Recovered { records, next_id: meta.next_id }
}
