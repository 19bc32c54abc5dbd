//! The core's own plain types for operations (issue 8): what a queue and a job look like to
//! an operator, a page of a listing, and the listing cursor's encoding.
//!
//! These are not wire types: the engine maps them to the admin API's messages, so the core
//! does not depend on how the protocol spells them. The operations themselves (pause,
//! listings, retry, purge, remove, promote) are methods of `Broker` in `mod.rs`.
//!
//! Cursor layout (opaque to clients, big-endian): one tag byte naming the listing's state,
//! then the sort key of the last item returned:
//!
//! | state     | tag | key                                  | bytes |
//! |-----------|-----|--------------------------------------|-------|
//! | ready     | 0   | priority `i32`, ready seq `u64`      | 13    |
//! | delayed   | 1   | run_at `u64`, id `u64`               | 17    |
//! | active    | 2   | lease deadline `u64`, id `u64`       | 17    |
//! | dead      | 3   | died_at `u64`, id `u64`              | 17    |
//! | completed | 4   | completion seq `u64`                 | 9     |
//!
//! A listing resumes strictly after that key in its own order, so items added or removed
//! meanwhile neither shift nor repeat the rest: an item is skipped only if it moved (a ready
//! job was leased, a delayed job came due), never because another one did.

use qd_protocol::JobId;

use super::BrokerError;
use crate::model::{ConnId, Millis};

/// A job's state as an operator sees it. Jobs not yet committed (an add whose batch is
/// still being written) are not listed; stats count them as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStateKind {
    Ready,
    Delayed,
    Active,
    Dead,
    Completed,
}

impl JobStateKind {
    fn tag(self) -> u8 {
        match self {
            JobStateKind::Ready => 0,
            JobStateKind::Delayed => 1,
            JobStateKind::Active => 2,
            JobStateKind::Dead => 3,
            JobStateKind::Completed => 4,
        }
    }
}

/// One job, in whatever state. Times are unix ms; `None` where the state has no such time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub id: JobId,
    pub queue: String,
    pub name: String,
    pub state: JobStateKind,
    /// Failed tries so far (for a completed job: before the try that succeeded).
    pub failures: u32,
    pub max_attempts: u32,
    pub priority: i32,
    pub created_at_ms: Millis,
    /// Delayed: when it becomes ready. Ready: when it became ready.
    pub run_at_ms: Option<Millis>,
    /// Active: when the lease runs out unless touched.
    pub lease_deadline_ms: Option<Millis>,
    /// Active: the connection holding the lease.
    pub conn: Option<ConnId>,
    /// Active: when the current try started.
    pub started_at_ms: Option<Millis>,
    /// Completed: when it completed. Dead: when it died.
    pub finished_at_ms: Option<Millis>,
}

/// Completions and failed tries in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    pub completed: u64,
    pub failed: u64,
}

/// One queue as an operator sees it. Totals count since the queue was last created: since
/// start, unless it was forgotten meanwhile (see `Broker::forget_if_idle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    /// Includes jobs added but not yet committed.
    pub ready: u64,
    pub delayed: u64,
    pub active: u64,
    pub dead: u64,
    /// Completed jobs retained in memory for display.
    pub completed: u64,
    /// How long the oldest ready job has waited since it became ready (its run time).
    pub oldest_ready_age_ms: Option<u64>,
    pub added_total: u64,
    pub completed_total: u64,
    /// Failed tries (each nack, lease expiry or disconnect counts one).
    pub failed_total: u64,
    pub dead_total: u64,
    pub retried_total: u64,
    /// The last 60 minutes, oldest first; the last entry is the current minute.
    pub minutes: Vec<MinuteCounts>,
    /// Flow limits (issue 9).
    pub limits: qd_protocol::QueueLimits,
    /// Until when a worker's `RateLimited` nack holds the queue's starts, if it does now.
    pub rate_limited_until_ms: Option<Millis>,
}

/// One page of a listing; `next` resumes after its last item (`None`: nothing more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Vec<u8>>,
}

/// A decoded listing cursor: the sort key of the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    Ready { priority: i32, seq: u64 },
    Delayed { run_at: Millis, id: JobId },
    Active { deadline: Millis, id: JobId },
    Dead { died_at: Millis, id: JobId },
    Completed { seq: u64 },
}

impl Cursor {
    pub(crate) fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        let (kind, a, b) = match self {
            Cursor::Ready { priority, seq } => {
                out.push(JobStateKind::Ready.tag());
                out.extend_from_slice(&priority.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                return out;
            }
            Cursor::Completed { seq } => {
                out.push(JobStateKind::Completed.tag());
                out.extend_from_slice(&seq.to_be_bytes());
                return out;
            }
            Cursor::Delayed { run_at, id } => (JobStateKind::Delayed, run_at, id),
            Cursor::Active { deadline, id } => (JobStateKind::Active, deadline, id),
            Cursor::Dead { died_at, id } => (JobStateKind::Dead, died_at, id),
        };
        out.push(kind.tag());
        out.extend_from_slice(&a.to_be_bytes());
        out.extend_from_slice(&b.to_be_bytes());
        out
    }

    /// Decodes a cursor that must belong to a listing of `state`.
    pub(crate) fn decode(state: JobStateKind, bytes: &[u8]) -> Result<Cursor, BrokerError> {
        let bad = || {
            BrokerError::InvalidArgument(format!(
                "the cursor is not one this server gave for a listing of {state:?} jobs; \
                 start again without a cursor"
            ))
        };
        let (&tag, rest) = bytes.split_first().ok_or_else(bad)?;
        if tag != state.tag() {
            return Err(bad());
        }
        let u64_at = |at: usize| -> Result<u64, BrokerError> {
            let b: [u8; 8] =
                rest.get(at..at + 8).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
            Ok(u64::from_be_bytes(b))
        };
        let want = match state {
            JobStateKind::Ready => 12,
            JobStateKind::Completed => 8,
            _ => 16,
        };
        if rest.len() != want {
            return Err(bad());
        }
        Ok(match state {
            JobStateKind::Ready => {
                let p: [u8; 4] = rest[..4].try_into().map_err(|_| bad())?;
                Cursor::Ready { priority: i32::from_be_bytes(p), seq: u64_at(4)? }
            }
            JobStateKind::Completed => Cursor::Completed { seq: u64_at(0)? },
            JobStateKind::Delayed => Cursor::Delayed { run_at: u64_at(0)?, id: u64_at(8)? },
            JobStateKind::Active => Cursor::Active { deadline: u64_at(0)?, id: u64_at(8)? },
            JobStateKind::Dead => Cursor::Dead { died_at: u64_at(0)?, id: u64_at(8)? },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_pin_their_bytes() {
        let cases = [
            (JobStateKind::Ready, Cursor::Ready { priority: -2, seq: 5 }),
            (JobStateKind::Delayed, Cursor::Delayed { run_at: 7, id: 9 }),
            (JobStateKind::Active, Cursor::Active { deadline: 1, id: 2 }),
            (JobStateKind::Dead, Cursor::Dead { died_at: 3, id: 4 }),
            (JobStateKind::Completed, Cursor::Completed { seq: 6 }),
        ];
        for (state, cursor) in cases {
            assert_eq!(Cursor::decode(state, &cursor.encode()), Ok(cursor));
        }
        assert_eq!(
            Cursor::Ready { priority: -2, seq: 5 }.encode(),
            [0, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 5]
        );
        let dead = Cursor::Dead { died_at: 3, id: 4 }.encode();
        assert!(Cursor::decode(JobStateKind::Delayed, &dead).is_err(), "wrong listing");
        assert!(Cursor::decode(JobStateKind::Dead, &dead[..16]).is_err(), "cut short");
        assert!(Cursor::decode(JobStateKind::Dead, &[]).is_err());
    }
}
