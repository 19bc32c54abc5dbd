//! The job vocabulary shared by clients and the server: what a producer sends
//! ([`NewJob`], [`JobOptions`], [`Backoff`]), what a worker receives ([`LeasedJob`]), and
//! what an operator reads ([`QueueStats`]).
//!
//! These are plain data. Validation (queue-name rules, limits) lives here too so that a
//! client can refuse bad input before it costs a round trip; the server checks again.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// Server-assigned job id, unique for the lifetime of a data directory.
pub type JobId = u64;

/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 128;
/// Longest job name (its type, e.g. `welcome`), in bytes.
pub const MAX_JOB_NAME: usize = 256;
/// Longest idempotency key, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest error text kept for one failed attempt; longer text is cut at a char boundary.
pub const MAX_ERROR_TEXT: usize = 4096;
/// Largest progress report (`Request::Progress`), in bytes: a percentage or a small JSON
/// object, not a result.
pub const MAX_PROGRESS: usize = 1024;

/// How long to wait before the next try of a job that failed.
///
/// Delays are milliseconds. `Exponential` waits `base_ms * 2^(failures - 1)`, capped at
/// `max_ms`; with `jitter_pct = p` the wait is drawn from `[d * (100 - p) / 100, d]`, so jitter
/// only ever shortens a wait, never stretches it past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backoff {
    Fixed { delay_ms: u64 },
    Exponential { base_ms: u64, max_ms: u64, jitter_pct: u8 },
}

impl Backoff {
    /// No wait at all between tries.
    pub const NONE: Backoff = Backoff::Fixed { delay_ms: 0 };

    /// Exponential backoff from `base_ms`, capped at one hour, no jitter.
    pub fn exponential_ms(base_ms: u64) -> Self {
        Backoff::Exponential { base_ms, max_ms: 3_600_000, jitter_pct: 0 }
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<(), WireError> {
        match *self {
            Backoff::Fixed { .. } => Ok(()),
            Backoff::Exponential { base_ms, max_ms, jitter_pct } => {
                if jitter_pct > 100 {
                    return Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        format!("backoff jitter is {jitter_pct}%; use 0 to 100"),
                    ));
                }
                if max_ms < base_ms {
                    return Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "backoff cap {max_ms} ms is below its base {base_ms} ms; raise the cap"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s, ... capped at one hour, with 20% jitter so that a burst of failures
    /// does not retry in lockstep.
    fn default() -> Self {
        Backoff::Exponential { base_ms: 1_000, max_ms: 3_600_000, jitter_pct: 20 }
    }
}

/// Options a producer sets on a job. Every field has a default (see [`Default`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Lower runs first; FIFO within one priority. Default 0.
    pub priority: i32,
    /// Milliseconds to wait before the job becomes ready. Default 0.
    pub delay_ms: u64,
    /// Maximum number of tries, at least 1. Default 3.
    pub attempts: u32,
    /// Wait between tries. Default: exponential from 1 s.
    pub backoff: Backoff,
    /// How long a worker may hold the job before it is presumed dead, in ms. Default 30 s.
    pub lease_ms: u64,
    /// Idempotency key: adding a job whose key is already pending in the same queue returns
    /// the existing job's id instead of adding a second one. [`JobOptions::unique`] widens
    /// what "already there" means.
    pub key: Option<String>,
    /// Group (tenant) key: reserves take turns across a queue's groups, so one group's
    /// backlog cannot starve another's, and a queue may cap each group's concurrency and
    /// rate. `None`: the queue's default group.
    pub group: Option<String>,
    /// How long a worker may run one try of this job, in ms, before it gives up on it and
    /// the try fails (`None`: the worker's own default). Sent to the worker with the job.
    pub timeout_ms: Option<u64>,
    /// Discard the job, instead of running it late, when it has not started within this many
    /// ms of being added. Expired jobs are counted, and kept in the dead set with the reason.
    pub expires_in_ms: Option<u64>,
    /// What a repeated [`JobOptions::key`] does. Ignored without a key.
    pub unique: Unique,
}

/// What adding a job whose [`JobOptions::key`] was seen before does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Unique {
    /// While a job with the key is waiting, delayed or running, an add with the same key
    /// returns that job's id and adds nothing (deduplication).
    #[default]
    WhilePending,
    /// For `ms` after a job with the key was added, whatever became of it, an add with the
    /// same key returns that job's id and adds nothing (throttle).
    Window { ms: u64 },
    /// While a job with the key is still waiting (not started), an add with the same key
    /// replaces that job's payload and restarts its delay from now, and returns its id
    /// (debounce). Once it runs, the next add makes a new job.
    Debounce,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            priority: 0,
            delay_ms: 0,
            attempts: 3,
            backoff: Backoff::default(),
            lease_ms: 30_000,
            key: None,
            group: None,
            timeout_ms: None,
            expires_in_ms: None,
            unique: Unique::WhilePending,
        }
    }
}

/// Shortest lease the server grants, in ms: shorter ones expire before a worker can act.
pub const MIN_LEASE_MS: u64 = 100;
/// Longest lease, in ms (one day).
pub const MAX_LEASE_MS: u64 = 86_400_000;
/// Longest throttle window ([`Unique::Window`]), in ms (30 days): the server keeps a key's
/// window in memory until it ends, even after its job completed.
pub const MAX_UNIQUE_WINDOW_MS: u64 = 30 * 86_400_000;
/// Most tries a job may ask for.
pub const MAX_ATTEMPTS: u32 = 1_000;

impl JobOptions {
    /// Checks the options against the protocol's limits.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.attempts == 0 || self.attempts > MAX_ATTEMPTS {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("attempts is {}; use 1 to {MAX_ATTEMPTS}", self.attempts),
            ));
        }
        validate_lease(self.lease_ms)?;
        if let Some(key) = &self.key {
            if key.is_empty() || key.len() > MAX_KEY {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("idempotency key is {} bytes; use 1 to {MAX_KEY}", key.len()),
                ));
            }
        }
        if let Some(group) = &self.group {
            if group.is_empty() || group.len() > MAX_KEY {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("group key is {} bytes; use 1 to {MAX_KEY}", group.len()),
                ));
            }
        }
        if let Some(timeout_ms) = self.timeout_ms {
            if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&timeout_ms) {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("timeout is {timeout_ms} ms; use {MIN_LEASE_MS} to {MAX_LEASE_MS}"),
                ));
            }
        }
        if self.expires_in_ms == Some(0) {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                "expires_in is 0 ms: the job would expire before it could start; leave it unset \
                 or give it at least 1 ms",
            ));
        }
        match self.unique {
            Unique::WhilePending => {}
            Unique::Window { ms } if ms == 0 || ms > MAX_UNIQUE_WINDOW_MS => {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "unique window is {ms} ms; use 1 to {MAX_UNIQUE_WINDOW_MS} (30 days), \
                         or WhilePending"
                    ),
                ));
            }
            Unique::Window { .. } | Unique::Debounce if self.key.is_none() => {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    "a unique window or debounce needs a key to compare; set one",
                ));
            }
            Unique::Window { .. } | Unique::Debounce => {}
        }
        self.backoff.validate()
    }
}

/// Checks a lease duration against [`MIN_LEASE_MS`] and [`MAX_LEASE_MS`].
pub fn validate_lease(lease_ms: u64) -> Result<(), WireError> {
    if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("lease is {lease_ms} ms; use {MIN_LEASE_MS} to {MAX_LEASE_MS}"),
        ));
    }
    Ok(())
}

/// A job as a producer submits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// The job's type, e.g. `welcome`: 1 to [`MAX_JOB_NAME`] bytes.
    pub name: String,
    /// Opaque bytes; qd never looks inside.
    pub payload: Bytes,
    pub options: JobOptions,
}

impl NewJob {
    /// Checks the name and options.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.name.is_empty() || self.name.len() > MAX_JOB_NAME {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("job name is {} bytes; use 1 to {MAX_JOB_NAME}", self.name.len()),
            ));
        }
        self.options.validate()
    }
}

/// A job handed to a worker, with the lease that lets it ack, nack or touch the job.
///
/// Fields may be added in later versions: build one with [`LeasedJob::new`] (tests, fakes)
/// and read the fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeasedJob {
    pub id: JobId,
    pub queue: String,
    pub name: String,
    pub payload: Bytes,
    /// Which try this is, starting at 1.
    pub attempt: u32,
    /// The job's maximum number of tries.
    pub max_attempts: u32,
    /// Proof of this delivery: `ack`, `nack` and `touch` must present it.
    pub token: u64,
    /// Unix ms after which the lease is void and the job is tried again.
    pub lease_deadline_ms: u64,
    /// Unix ms when the job was added.
    pub created_at_ms: u64,
    /// The job's group key, if it was added with one.
    pub group: Option<String>,
    /// How long the worker may run this try, in ms, if the job says so.
    pub timeout_ms: Option<u64>,
}

impl LeasedJob {
    /// A first try of job `id` of `queue`, leased with `token` until `lease_deadline_ms`;
    /// the other fields are defaults (attempt 1 of 3, created at 0, no group, no timeout)
    /// to be set as needed.
    pub fn new(
        id: JobId,
        queue: impl Into<String>,
        name: impl Into<String>,
        payload: impl Into<Bytes>,
        token: u64,
        lease_deadline_ms: u64,
    ) -> Self {
        LeasedJob {
            id,
            queue: queue.into(),
            name: name.into(),
            payload: payload.into(),
            attempt: 1,
            max_attempts: JobOptions::default().attempts,
            token,
            lease_deadline_ms,
            created_at_ms: 0,
            group: None,
            timeout_ms: None,
        }
    }
}

/// What a worker asks for when a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RetryHint {
    /// Follow the job's backoff policy (dead when attempts are used up).
    #[default]
    Backoff,
    /// Retry after this many ms instead of the backoff (still uses an attempt).
    After { delay_ms: u64 },
    /// The failure is permanent: dead-letter the job now.
    Never,
    /// A downstream service said "too many requests, back off for `delay_ms`": the job goes
    /// back to ready without using an attempt, and the whole queue starts nothing for
    /// `delay_ms`.
    RateLimited { delay_ms: u64 },
}

/// Job counts of one queue, by state.
///
/// Fields may be added in later versions: start from [`QueueStats::new`] to build one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    pub queue: String,
    pub ready: u64,
    pub delayed: u64,
    pub active: u64,
    pub dead: u64,
    /// Completed jobs the server still retains for display (the most recent ones).
    pub completed: u64,
    /// Jobs completed since the server started.
    pub completed_total: u64,
    /// Failed tries since the server started (each nack, lease expiry or disconnect).
    pub failed_total: u64,
    /// Jobs discarded since the server started because they had not started within their
    /// `expires_in` (each is in the dead set with the error `expired`).
    pub expired_total: u64,
}

impl QueueStats {
    /// All counts zero.
    pub fn new(queue: impl Into<String>) -> Self {
        QueueStats { queue: queue.into(), ..Default::default() }
    }
}

/// Largest result a worker may ack a job with, in bytes. Results are kept in memory (the
/// queue's ring of recent completions), so they are for small answers, not for data.
pub const MAX_RESULT: usize = 64 * 1024;

/// What became of a job a producer waited for (`Request::Wait`). More outcomes may come:
/// match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobOutcome {
    /// The job completed; `result` is what its worker acked it with (empty when nothing).
    Completed { result: Bytes },
    /// The job is in the dead set: its attempts ran out, a worker said never to retry, or it
    /// expired before it started (`error` is then `expired`). `error` is its last error.
    Dead { error: String },
    /// The wait ran out while the job was still waiting or running.
    Pending,
}

/// Checks a queue name: 1 to 128 bytes of `[A-Za-z0-9._:-]`.
pub fn validate_queue_name(name: &str) -> Result<(), WireError> {
    let ok_len = !name.is_empty() && name.len() <= MAX_QUEUE_NAME;
    let bad = name
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')));
    if ok_len && bad.is_none() {
        return Ok(());
    }
    let shown: String = name.chars().take(40).collect();
    Err(WireError::new(
        ErrorCode::InvalidQueueName,
        format!(
            "queue name {shown:?} is invalid: use 1 to {MAX_QUEUE_NAME} bytes of letters, digits, '.', '_', ':' or '-'"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in ["a", "emails", "tenant:42.mail_v2-x", &"q".repeat(128)] {
            assert!(validate_queue_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/x", "ünï", &"q".repeat(129)] {
            let err = validate_queue_name(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidQueueName, "{bad}");
        }
    }

    #[test]
    fn option_limits() {
        assert!(JobOptions::default().validate().is_ok());
        let bad = JobOptions { attempts: 0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().code, ErrorCode::InvalidArgument);
        let bad = JobOptions { lease_ms: 5, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = JobOptions {
            backoff: Backoff::Exponential { base_ms: 10, max_ms: 5, jitter_pct: 0 },
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = JobOptions { key: Some(String::new()), ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = JobOptions { group: Some(String::new()), ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = JobOptions { timeout_ms: Some(1), ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = JobOptions { expires_in_ms: Some(0), ..Default::default() };
        assert!(bad.validate().is_err());
        let keyless = JobOptions { unique: Unique::Debounce, ..Default::default() };
        assert!(keyless.validate().is_err());
        let keyed = JobOptions { key: Some("k".into()), ..keyless };
        assert!(keyed.validate().is_ok());
        let empty = JobOptions { unique: Unique::Window { ms: 0 }, ..keyed.clone() };
        assert!(empty.validate().is_err());
        let forever =
            JobOptions { unique: Unique::Window { ms: MAX_UNIQUE_WINDOW_MS + 1 }, ..keyed };
        assert!(forever.validate().is_err());
    }
}
