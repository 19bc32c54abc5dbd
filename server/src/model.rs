//! Plain data shared by the broker core and the store: the persisted job record and the
//! changes the core asks to make durable.
//!
//! This file is the interface between the two: the core produces [`Change`]s, the store
//! applies them, and neither imports the other (see `docs/ARCHITECTURE.md`). Nothing here
//! does I/O or reads the clock.

use bytes::Bytes;
use qd_protocol::{JobId, JobOptions, QueueLimits, Schedule};
use serde::{Deserialize, Serialize};

/// Wall-clock time as unix milliseconds. The engine reads the clock; the core is given it.
pub type Millis = u64;

/// Identifies one client connection for the life of the server process.
pub type ConnId = u64;

/// The persisted states of a job. Ready and delayed are not distinguished on disk (that
/// follows from `run_at_ms`), and active is never written: a lease lives in memory only, so
/// after a crash an active job is simply waiting again, without having used an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistedState {
    /// Ready or delayed: will be delivered once `run_at_ms` is reached.
    Waiting,
    /// In the queue's dead set: attempts ran out, or a worker said not to retry.
    Dead,
}

/// One failed try of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Which try failed, starting at 1.
    pub attempt: u32,
    pub at_ms: Millis,
    /// The worker's error text, or `lease expired` / `worker disconnected`.
    pub message: String,
}

/// Most failures kept in a record; older ones are dropped first.
pub const MAX_ERRORS_KEPT: usize = 25;

/// A job as it is stored: everything needed to rebuild the core's state after a restart,
/// plus the payload, which only the store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub queue: String,
    pub name: String,
    pub payload: Bytes,
    /// As given at add time (`delay_ms` is already folded into the first `run_at_ms`).
    pub options: JobOptions,
    pub created_at_ms: Millis,
    /// When the job may run next.
    pub run_at_ms: Millis,
    /// Tries that have failed so far; the next delivery is try `failures + 1`.
    pub failures: u32,
    pub state: PersistedState,
    /// The most recent failures, oldest first, at most [`MAX_ERRORS_KEPT`].
    pub errors: Vec<AttemptError>,
}

/// A change the core asks the store to make durable. Replies that depend on a change are
/// released only after the store has committed it. The store's journal writes changes as
/// they come in an encoding of its own (`store/journal/codec.rs`), not through these serde
/// derives: a change to a wire type (`JobOptions`, `Backoff`) cannot change the disk format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new job (add). Boxed: a record is several times the size of every other change,
    /// and most changes in flight are acks.
    Insert(Box<JobRecord>),
    /// The job completed (ack): its record is removed.
    Complete { id: JobId },
    /// A try failed: record the error and when the job runs next, or that it is dead.
    Fail { id: JobId, error: AttemptError, run_at_ms: Millis, dead: bool },
    /// An operator retried a dead job: it waits again from `run_at_ms` with its attempts
    /// reset (`failures` = 0, state `Waiting`); its error history is kept.
    Retry { id: JobId, run_at_ms: Millis },
    /// A waiting job's next run time moved (an operator promoted a delayed job to now).
    Reschedule { id: JobId, run_at_ms: Millis },
    /// The job's record is deleted without completing: an operator removed it, purged it
    /// from the dead set, or the dead set's retention dropped it.
    Remove { id: JobId },
    /// A queue's persisted settings changed. `QueueSettings::default()` means "no settings":
    /// the store forgets the queue's entry.
    Settings { queue: String, settings: QueueSettings },
    /// Ids below `next_id` are used or promised: after any crash, ids are assigned from at
    /// least here, so an id handed out once is never given to another job.
    IdFloor { next_id: JobId },
    /// A named schedule was set, fired, or (`None`) removed. Carries the whole record, so
    /// replaying it sets an absolute value. A fire's `Insert` precedes it in the same batch:
    /// after a crash between the two, the fire runs again under the same idempotency key
    /// and finds the job already there. Boxed: a schedule is large and rare, and every
    /// `Change` (and `Effect`) would otherwise be as big.
    Schedule { name: String, schedule: Option<Box<ScheduleRecord>> },
    /// A waiting job was debounced (`Unique::Debounce`): a newer add with its key replaced
    /// its payload, and it runs next at `run_at_ms`.
    Replace { id: JobId, payload: Bytes, run_at_ms: Millis },
}

/// A named schedule as it is stored: what the operator set, and where its clock stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub schedule: Schedule,
    /// When the current spec was set: an interval counts from here, and no tick before it
    /// fires.
    pub anchor_ms: Millis,
    /// The tick last fired, if any: ticks after it and up to now are due.
    pub last_fire_ms: Option<Millis>,
}

/// What an operator set on a queue; persisted, survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Reserves get nothing from a paused queue; adds still land.
    pub paused: bool,
    /// Flow limits (issue 9): rate, concurrency, per-group concurrency and rate.
    pub limits: QueueLimits,
}

impl JobRecord {
    /// Applies a [`Change::Fail`] to this record.
    ///
    /// Idempotent: applying a failure whose error is already kept changes nothing but
    /// `run_at_ms` and `state` (set to the same values again when failures are replayed in
    /// order). The journal relies on this: after a crash between a checkpoint reaching sled
    /// and its journal segments being deleted, recovery replays `Fail`s that sled already
    /// holds. Attempt numbers only grow between retries, so a genuinely new failure never
    /// equals a kept one, with one exception: after an operator's [`Change::Retry`] the
    /// numbering restarts at 1, and a new failure with the same try number, millisecond and
    /// text as a kept one (retry and redelivery and failure all within the millisecond of
    /// the earlier failure) is taken for a replay and not recorded again. Only the error
    /// history is affected; `failures`, `run_at_ms` and `state` are still set.
    pub fn apply_failure(&mut self, error: AttemptError, run_at_ms: Millis, dead: bool) {
        self.failures = self.failures.max(error.attempt);
        self.run_at_ms = run_at_ms;
        self.state = if dead { PersistedState::Dead } else { PersistedState::Waiting };
        if self.errors.contains(&error) {
            return;
        }
        if self.errors.len() >= MAX_ERRORS_KEPT {
            self.errors.remove(0);
        }
        self.errors.push(error);
    }
}

impl JobRecord {
    /// Applies a [`Change::Retry`]: waiting again from `run_at_ms`, attempts reset, errors
    /// kept. Sets absolute values, so replaying it is harmless.
    pub fn apply_retry(&mut self, run_at_ms: Millis) {
        self.state = PersistedState::Waiting;
        self.failures = 0;
        self.run_at_ms = run_at_ms;
    }

    /// Applies a [`Change::Replace`]: the debounced payload and run time. Absolute values,
    /// so replaying it is harmless.
    pub fn apply_replace(&mut self, payload: &Bytes, run_at_ms: Millis) {
        self.payload = payload.clone();
        self.run_at_ms = run_at_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        JobRecord {
            id: 1,
            queue: "q".into(),
            name: "n".into(),
            payload: Bytes::new(),
            options: JobOptions::default(),
            created_at_ms: 0,
            run_at_ms: 0,
            failures: 0,
            state: PersistedState::Waiting,
            errors: vec![],
        }
    }

    fn error(attempt: u32) -> AttemptError {
        AttemptError { attempt, at_ms: u64::from(attempt) * 10, message: format!("try {attempt}") }
    }

    #[test]
    fn apply_failure_is_idempotent() {
        let mut once = record();
        once.apply_failure(error(1), 100, false);
        once.apply_failure(error(2), 200, true);

        // Replaying both failures (as recovery does when sled already holds them) in order.
        let mut replayed = once.clone();
        replayed.apply_failure(error(1), 100, false);
        replayed.apply_failure(error(2), 200, true);
        assert_eq!(replayed, once);

        // The last one alone, too.
        let mut again = once.clone();
        again.apply_failure(error(2), 200, true);
        assert_eq!(again, once);
        assert_eq!(once.errors, vec![error(1), error(2)]);
        assert_eq!((once.failures, once.state, once.run_at_ms), (2, PersistedState::Dead, 200));

        // A new failure is still recorded.
        again.apply_failure(error(3), 300, false);
        assert_eq!(again.errors.len(), 3);
        assert_eq!(again.failures, 3);
    }
}
