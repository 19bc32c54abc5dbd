//! The vocabulary of the admin requests: what an operator lists ([`QueueInfo`],
//! [`JobSummary`]), inspects ([`JobDetail`]), searches for ([`SearchQuery`]), and the
//! opaque [`Cursor`] that pages through job lists.
//!
//! These structs are answers built by the server; the ones a client should only read are
//! `#[non_exhaustive]` so that fields can be appended in a later protocol version without
//! breaking code that matches on them. (Appending a field still changes the bytes, so it
//! still needs a protocol version bump.)

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use crate::flow::QueueLimits;
use crate::limits::{bounded, LimitKind};
use crate::types::{JobId, JobOptions};

/// Longest [`Cursor`], in bytes.
pub const MAX_CURSOR: usize = 64;
/// Minutes of history in [`QueueInfo::minutes`].
pub const HISTORY_MINUTES: usize = 60;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Ready,
    Delayed,
    Active,
    Dead,
    Completed,
}

/// A position in a job list, opaque to clients: pass back the `next` of one page to get
/// the following one. At most [`MAX_CURSOR`] bytes; longer ones do not decode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Cursor(pub Vec<u8>);

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, LimitKind::Cursor).map(Cursor)
    }
}

/// Completions and failures in one minute of a queue's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MinuteCounts {
    /// Unix ms at the start of the minute (a multiple of 60,000).
    pub minute_start_ms: u64,
    pub completed: u32,
    /// Failed tries (nacks, lease expiries), as in [`crate::QueueStats::failed_total`].
    pub failed: u32,
}

impl MinuteCounts {
    pub fn new(minute_start_ms: u64, completed: u32, failed: u32) -> Self {
        MinuteCounts { minute_start_ms, completed, failed }
    }
}

/// One queue as the admin list shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueInfo {
    pub name: String,
    pub ready: u64,
    pub delayed: u64,
    pub active: u64,
    pub dead: u64,
    /// Completed jobs still retained for display.
    pub completed: u64,
    /// Reserves skip a paused queue; adds still go in.
    pub paused: bool,
    /// How long the oldest ready job has waited, in ms; `None` when none is ready.
    pub oldest_ready_age_ms: Option<u64>,
    /// Since the server started, like [`crate::QueueStats::completed_total`].
    pub added_total: u64,
    pub completed_total: u64,
    pub failed_total: u64,
    /// Jobs dead-lettered since the server started.
    pub dead_total: u64,
    /// The last [`HISTORY_MINUTES`] minutes, oldest first.
    pub minutes: Vec<MinuteCounts>,
    /// The queue's flow limits (`Request::SetQueueLimits`).
    pub limits: QueueLimits,
    /// Until when (unix ms) a worker's `RetryHint::RateLimited` holds the queue's starts;
    /// `None` when it does not.
    pub rate_limited_until_ms: Option<u64>,
}

impl QueueInfo {
    /// An empty row for `name`; the server fills in the fields.
    pub fn new(name: impl Into<String>) -> Self {
        QueueInfo { name: name.into(), ..Default::default() }
    }
}

/// One job in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobSummary {
    pub id: JobId,
    pub queue: String,
    pub name: String,
    pub state: JobState,
    /// Tries started so far.
    pub attempts_used: u32,
    pub max_attempts: u32,
    /// As in [`JobOptions::priority`]: lower runs first.
    pub priority: i32,
    pub created_at_ms: u64,
    /// When a delayed or retrying job becomes ready.
    pub run_at_ms: Option<u64>,
    /// When an active job's lease runs out.
    pub lease_deadline_ms: Option<u64>,
    /// The client name of the connection holding an active job.
    pub worker: Option<String>,
    /// The most recent failure's text.
    pub last_error: Option<String>,
    /// When a completed or dead job finished.
    pub finished_at_ms: Option<u64>,
}

impl JobSummary {
    /// A summary with the required fields; the optional ones start as `None`.
    pub fn new(
        id: JobId,
        queue: impl Into<String>,
        name: impl Into<String>,
        state: JobState,
    ) -> Self {
        JobSummary {
            id,
            queue: queue.into(),
            name: name.into(),
            state,
            attempts_used: 0,
            max_attempts: 0,
            priority: 0,
            created_at_ms: 0,
            run_at_ms: None,
            lease_deadline_ms: None,
            worker: None,
            last_error: None,
            finished_at_ms: None,
        }
    }
}

/// One failed try of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobFailure {
    /// Which try failed, starting at 1.
    pub attempt: u32,
    pub at_ms: u64,
    pub message: String,
}

impl JobFailure {
    pub fn new(attempt: u32, at_ms: u64, message: impl Into<String>) -> Self {
        JobFailure { attempt, at_ms, message: message.into() }
    }
}

/// Everything about one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobDetail {
    pub summary: JobSummary,
    pub payload: Bytes,
    pub options: JobOptions,
    /// Failed tries, oldest first (the server may keep only the most recent ones).
    pub errors: Vec<JobFailure>,
    /// When the current or last try started.
    pub started_at_ms: Option<u64>,
    /// Active: the latest progress its worker reported for this try (`Request::Progress`).
    pub progress: Option<Bytes>,
}

impl JobDetail {
    pub fn new(summary: JobSummary, payload: Bytes, options: JobOptions) -> Self {
        JobDetail {
            summary,
            payload,
            options,
            errors: Vec::new(),
            started_at_ms: None,
            progress: None,
        }
    }
}

/// What a `Search` matches in a job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchQuery {
    /// The payload's bytes contain this text.
    Substring(String),
    /// The payload is JSON and the value at `path` (dot-separated object keys, e.g.
    /// `user.id`) has this text: a string's content, or a number's, bool's or null's
    /// JSON spelling (`42`, `true`, `null`). `user.id=42` in a UI means
    /// `Field { path: "user.id", value: "42" }`.
    Field { path: String, value: String },
}
