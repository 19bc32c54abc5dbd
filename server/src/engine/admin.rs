//! The engine's half of the admin API (issue 8): mapping the core's views
//! (`broker::{QueueView, JobView}`) to the wire types of `qd_protocol::admin`, the search
//! cursor, payload matching, and the store reads that some answers need.
//!
//! What stays in `engine.rs`: deciding which request is answered at once, which waits for a
//! commit, and which is handed to a blocking task. The functions here that read the store
//! (`fill_errors`, `detail`, `search`) run on tokio's blocking pool, never on the engine
//! task: one slow disk read must not stall every queue.

use bytes::Bytes;
use qd_protocol::admin::{
    Cursor, JobDetail, JobFailure, JobState, JobSummary, MinuteCounts, QueueInfo, SearchQuery,
};
use qd_protocol::{ErrorCode, JobOptions, Response, WireError};

use crate::broker::{JobStateKind, JobView, QueueView, MAX_PAGE};
use crate::model::{JobRecord, Millis};
use crate::store::StoreReader;

/// Page size when a request asks for `limit = 0` ("the server's default").
pub const DEFAULT_PAGE: usize = 100;

/// Room left in a frame for all but a page's items: the frame's tag, request id, `next`.
const FRAME_SLACK: usize = 1024;

/// Cuts `items` to the longest prefix (at least one item) whose encoding fits in a frame of
/// `max_frame` bytes, and says whether it cut. A page is cut by count first; this keeps
/// long queue names or many per-minute buckets from making an answer too big to send, which
/// once broke `qd stats` for good on a server with many queues.
pub fn fit_frame<T: serde::Serialize>(items: &mut Vec<T>, max_frame: usize) -> bool {
    let budget = max_frame.saturating_sub(FRAME_SLACK);
    let mut used = 0usize;
    for (i, item) in items.iter().enumerate() {
        let len = bincode::serde::encode_to_vec(item, qd_protocol::frame::config())
            .map_or(usize::MAX, |v| v.len());
        used = used.saturating_add(len);
        if used > budget && i > 0 {
            items.truncate(i);
            return true;
        }
    }
    false
}

/// Most jobs one `Search` request looks at. A queue of 100,000 jobs is searched in
/// several requests (each answer carries a cursor even with no match), so no search holds
/// the engine or a blocking thread for long.
pub const SEARCH_SCAN_JOBS: usize = 10_000;

/// Most listing pages one `Search` takes from the core (each is a bisection, and for
/// active jobs a walk of the lease index): bounds the engine's share of a tiny-limit search.
pub const SEARCH_SCAN_PAGES: usize = 1_000;

/// The states a search without a state walks, in this order; the search cursor's first
/// byte is an index into it.
const SEARCH_ORDER: [JobStateKind; 5] = [
    JobStateKind::Ready,
    JobStateKind::Delayed,
    JobStateKind::Active,
    JobStateKind::Dead,
    JobStateKind::Completed,
];

/// A request's `limit` as a page size: 0 means [`DEFAULT_PAGE`]; the core caps at
/// [`MAX_PAGE`].
pub fn page_limit(limit: u32) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

pub fn kind(state: JobState) -> JobStateKind {
    match state {
        JobState::Ready => JobStateKind::Ready,
        JobState::Delayed => JobStateKind::Delayed,
        JobState::Active => JobStateKind::Active,
        JobState::Dead => JobStateKind::Dead,
        JobState::Completed => JobStateKind::Completed,
    }
}

fn wire_state(kind: JobStateKind) -> JobState {
    match kind {
        JobStateKind::Ready => JobState::Ready,
        JobStateKind::Delayed => JobState::Delayed,
        JobStateKind::Active => JobState::Active,
        JobStateKind::Dead => JobState::Dead,
        JobStateKind::Completed => JobState::Completed,
    }
}

/// A queue row. The core's minutes are the last 60, oldest first, the last one being the
/// minute of `now`: their start times follow from that.
pub fn queue_info(now: Millis, view: QueueView) -> QueueInfo {
    let current = now / 60_000;
    let n = view.minutes.len() as u64;
    let mut info = QueueInfo::new(view.name);
    info.ready = view.ready;
    info.delayed = view.delayed;
    info.active = view.active;
    info.dead = view.dead;
    info.completed = view.completed;
    info.paused = view.paused;
    info.oldest_ready_age_ms = view.oldest_ready_age_ms;
    info.added_total = view.added_total;
    info.completed_total = view.completed_total;
    info.failed_total = view.failed_total;
    info.dead_total = view.dead_total;
    info.limits = view.limits;
    info.rate_limited_until_ms = view.rate_limited_until_ms;
    info.minutes = view
        .minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let minute = current.saturating_sub(n - 1 - i as u64);
            MinuteCounts::new(
                minute * 60_000,
                m.completed.min(u32::MAX as u64) as u32,
                m.failed.min(u32::MAX as u64) as u32,
            )
        })
        .collect();
    info
}

/// A job row; `worker` is the client name of the connection holding an active job.
pub fn summary(view: JobView, worker: Option<String>) -> JobSummary {
    let state = wire_state(view.state);
    // Tries started: the failed ones, plus the one running or the one that succeeded.
    let running = matches!(view.state, JobStateKind::Active | JobStateKind::Completed);
    let mut s = JobSummary::new(view.id, view.queue, view.name, state);
    s.attempts_used = view.failures + u32::from(running);
    s.max_attempts = view.max_attempts;
    s.priority = view.priority;
    s.created_at_ms = view.created_at_ms;
    s.run_at_ms = match view.state {
        JobStateKind::Ready | JobStateKind::Delayed => view.run_at_ms,
        _ => None,
    };
    s.lease_deadline_ms = view.lease_deadline_ms;
    s.worker = worker;
    s.finished_at_ms = view.finished_at_ms;
    s
}

/// Fills `last_error` of the rows that have failed before, from their stored records.
/// Blocking. A row whose record cannot be read keeps `None` (the failure is logged).
pub fn fill_errors(reader: &StoreReader, jobs: &mut [JobSummary]) {
    for job in jobs.iter_mut() {
        let failed = matches!(job.state, JobState::Dead)
            || job.attempts_used > u32::from(job.state == JobState::Active);
        if !failed || job.state == JobState::Completed {
            continue;
        }
        if let Some(record) = read(reader, job.id) {
            job.last_error = record.errors.last().map(|e| e.message.clone());
        }
    }
}

/// The `Job` answer for a job that is not completed: its row plus the stored record.
/// Blocking. `NotFound` if the record is gone (removed or completed meanwhile).
pub fn detail(
    reader: &StoreReader,
    mut row: JobSummary,
    started_at_ms: Option<Millis>,
    progress: Option<Bytes>,
) -> Result<Response, WireError> {
    let Some(record) = read(reader, row.id) else {
        return Err(not_found(row.id));
    };
    row.last_error = record.errors.last().map(|e| e.message.clone());
    let mut job = JobDetail::new(row, record.payload, record.options);
    job.errors =
        record.errors.into_iter().map(|e| JobFailure::new(e.attempt, e.at_ms, e.message)).collect();
    job.started_at_ms = started_at_ms;
    job.progress = progress;
    Ok(Response::Job { job: Box::new(job) })
}

/// The `Job` answer for a completed job: the store dropped its record at the ack, so only
/// what the core keeps is known (no payload, no options, no errors).
pub fn completed_detail(row: JobSummary) -> Response {
    Response::Job { job: Box::new(JobDetail::new(row, Default::default(), JobOptions::default())) }
}

pub fn not_found(id: u64) -> WireError {
    WireError::new(
        ErrorCode::NotFound,
        format!(
            "no job {id}: it never existed, was removed, or completed and fell out of the \
             retained history"
        ),
    )
}

fn read(reader: &StoreReader, id: u64) -> Option<JobRecord> {
    match reader.get(id) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(id, error = %e, "cannot read a job's record for an admin answer");
            None
        }
    }
}

/// Where a search resumes: the state it is in and that state's listing cursor (`None`:
/// from the start of that state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchAt {
    pub state: JobStateKind,
    pub inner: Option<Vec<u8>>,
}

impl SearchAt {
    /// Layout: one byte, the state's index in the search order (ready, delayed, active,
    /// dead, completed), then the core's listing cursor of that state, if any.
    pub fn encode(&self) -> Cursor {
        let at = SEARCH_ORDER.iter().position(|s| *s == self.state).unwrap_or(0) as u8;
        let mut bytes = vec![at];
        bytes.extend_from_slice(self.inner.as_deref().unwrap_or_default());
        Cursor(bytes)
    }

    /// Where a search of `state` (or of every state) starts, given the client's cursor.
    pub fn decode(state: Option<JobState>, cursor: Option<&Cursor>) -> Result<SearchAt, WireError> {
        let first = state.map_or(JobStateKind::Ready, kind);
        let Some(cursor) = cursor else { return Ok(SearchAt { state: first, inner: None }) };
        let bad = || {
            WireError::new(
                ErrorCode::InvalidArgument,
                "the cursor is not one this server gave for this search; start again without a \
                 cursor",
            )
        };
        let (&at, inner) = cursor.0.split_first().ok_or_else(bad)?;
        let at = *SEARCH_ORDER.get(at as usize).ok_or_else(bad)?;
        if state.is_some_and(|s| kind(s) != at) {
            return Err(bad());
        }
        Ok(SearchAt { state: at, inner: (!inner.is_empty()).then(|| inner.to_vec()) })
    }

    /// The next state a search of every state walks after this one's listing ends.
    pub fn next_state(&self, all_states: bool) -> Option<SearchAt> {
        if !all_states {
            return None;
        }
        let at = SEARCH_ORDER.iter().position(|s| *s == self.state)?;
        SEARCH_ORDER.get(at + 1).map(|&state| SearchAt { state, inner: None })
    }
}

/// One listing page taken for a search, and where the search resumes after it.
#[derive(Debug)]
pub struct SearchPage {
    pub jobs: Vec<JobSummary>,
    pub resume: Option<SearchAt>,
}

/// Whether a payload matches. `Field`: the payload is JSON, the value at the dotted path
/// exists, and its text (a string's content, anything else's JSON spelling) equals `value`.
pub fn matches(query: &SearchQuery, payload: &[u8]) -> bool {
    match query {
        SearchQuery::Substring(text) => {
            let needle = text.as_bytes();
            needle.is_empty() || payload.windows(needle.len()).any(|w| w == needle)
        }
        SearchQuery::Field { path, value } => {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(payload) else {
                return false;
            };
            let mut at = &json;
            for key in path.split('.') {
                match at.get(key) {
                    Some(v) => at = v,
                    None => return false,
                }
            }
            match at {
                serde_json::Value::String(s) => s == value,
                other => serde_json::to_string(other).is_ok_and(|text| text == *value),
            }
        }
    }
}

/// Runs a search over pages already taken from the core. Blocking: reads each payload.
///
/// Pages are examined whole, because a listing can only resume at a page's end (the
/// ready and completed listings key on sequence numbers the rows do not carry). So a page
/// is examined only if all its rows could match without passing `limit`; the answer then
/// has at most `limit` matches, and its cursor is the end of the last page examined.
pub fn search(
    reader: &StoreReader,
    query: &SearchQuery,
    pages: Vec<SearchPage>,
    limit: usize,
) -> Response {
    let mut found: Vec<JobSummary> = Vec::new();
    let mut next: Option<SearchAt> = None;
    let mut examined_any = false;
    for page in pages {
        if examined_any && found.len() + page.jobs.len() > limit {
            break;
        }
        examined_any = true;
        next = page.resume;
        for mut job in page.jobs {
            if job.state == JobState::Completed {
                // Its payload left the store with its ack.
                continue;
            }
            let Some(record) = read(reader, job.id) else { continue };
            if matches(query, &record.payload) {
                job.last_error = record.errors.last().map(|e| e.message.clone());
                found.push(job);
            }
        }
    }
    Response::Jobs { jobs: found, next: next.map(|at| at.encode()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fit_frame_cuts_at_the_budget_and_keeps_one() {
        let mut names: Vec<String> = (0..100).map(|i| format!("{i:0>120}")).collect();
        // 121 bytes each (a 1-byte length, 120 bytes): 4096 - 1024 holds 25 of them.
        assert!(super::fit_frame(&mut names, 4096));
        assert_eq!(names.len(), 25);
        let mut one = vec!["x".repeat(5000)];
        assert!(!super::fit_frame(&mut one, 4096), "a lone item is kept, not cut");
        let mut small: Vec<String> = vec!["a".into(); 10];
        assert!(!super::fit_frame(&mut small, 4096));
        assert_eq!(small.len(), 10);
    }

    use super::*;

    fn field(path: &str, value: &str) -> SearchQuery {
        SearchQuery::Field { path: path.into(), value: value.into() }
    }

    #[test]
    fn field_values_compare_as_their_json_text() {
        let payload = br#"{"user":{"id":42,"name":"ann","admin":true,"nick":null}}"#;
        assert!(matches(&field("user.id", "42"), payload));
        assert!(matches(&field("user.name", "ann"), payload), "a string without quotes");
        assert!(matches(&field("user.admin", "true"), payload));
        assert!(matches(&field("user.nick", "null"), payload));
        assert!(!matches(&field("user.id", "43"), payload));
        assert!(!matches(&field("user.name", "\"ann\""), payload));
        assert!(!matches(&field("user.missing", "null"), payload), "absent is not null");
        assert!(!matches(&field("user.id.deeper", "42"), payload));
        assert!(!matches(&field("user.id", "42"), b"not json user.id=42"));
    }

    #[test]
    fn substrings_match_anywhere_in_the_bytes() {
        let q = |s: &str| SearchQuery::Substring(s.into());
        assert!(matches(&q("needle"), b"hay needle stack"));
        assert!(!matches(&q("needles"), b"hay needle"));
        assert!(matches(&q(""), b"anything"));
    }

    #[test]
    fn search_cursors_name_their_state() {
        let at = SearchAt { state: JobStateKind::Dead, inner: Some(vec![3; 17]) };
        let c = at.encode();
        assert_eq!(c.0[0], 3);
        assert_eq!(SearchAt::decode(None, Some(&c)).unwrap(), at);
        assert_eq!(SearchAt::decode(Some(JobState::Dead), Some(&c)).unwrap(), at);
        assert!(SearchAt::decode(Some(JobState::Ready), Some(&c)).is_err(), "other state");
        assert!(SearchAt::decode(None, Some(&Cursor(vec![9]))).is_err());
        assert!(SearchAt::decode(None, Some(&Cursor(vec![]))).is_err());
        let start = SearchAt::decode(None, None).unwrap();
        assert_eq!(start.state, JobStateKind::Ready);
        assert_eq!(start.next_state(true).unwrap().state, JobStateKind::Delayed);
        assert_eq!(start.next_state(false), None);
    }
}
