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
