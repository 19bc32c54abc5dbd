//! The admin reads and upkeep of the PostgreSQL backend beyond the hot path: job listings
//! in the embedded store's orders with keyset cursors, search (the payload matching is the
//! embedded store's own, [`crate::engine::admin::matches`]), job detail with the worker's
//! name, dead-set trimming by count, the worker names of long leases, and the `_total`
//! counters shared by every broker (table `qd_counters`, migration V2).

use std::collections::HashMap;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use qd_protocol::admin::{Cursor, JobDetail, JobFailure, JobState, JobSummary, SearchQuery};
use qd_protocol::{ErrorCode, JobId, WireError};
use tokio_postgres::Row;

use crate::engine::admin::{matches, SEARCH_SCAN_JOBS};
use crate::model::Millis;

use super::sql::{options_of, ACTIVE, DEAD};
use super::{Counters, PgError};

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Columns of a job row, as [`summary`] reads them.
const JOB_COLUMNS: &str = "id, queue, name, state, failures, max_attempts, priority, created_at,
    run_at, lease_deadline, errors->-1->>'message', started_at,
    CASE WHEN state = 1 AND worker_token = token THEN worker END AS worker";

fn summary(r: &Row, now: Millis) -> JobSummary {
    let state = match (r.get::<_, i16>(3), r.get::<_, i64>(8) as u64) {
        (ACTIVE, _) => JobState::Active,
        (DEAD, _) => JobState::Dead,
        (_, run_at) if run_at <= now => JobState::Ready,
        _ => JobState::Delayed,
    };
    let mut s = JobSummary::new(
        r.get::<_, i64>(0) as JobId,
        r.get::<_, String>(1),
        r.get::<_, String>(2),
        state,
    );
    let failures = r.get::<_, i32>(4) as u32;
    s.attempts_used = failures + u32::from(state == JobState::Active);
    s.max_attempts = r.get::<_, i32>(5) as u32;
    s.priority = r.get(6);
    s.created_at_ms = r.get::<_, i64>(7) as u64;
    let run_at = r.get::<_, i64>(8) as u64;
    match state {
        JobState::Ready | JobState::Delayed => s.run_at_ms = Some(run_at),
        JobState::Dead => s.finished_at_ms = Some(run_at),
        _ => {}
    }
    s.lease_deadline_ms = r.get::<_, Option<i64>>(9).map(|v| v as u64);
    s.last_error = r.get(10);
    s.worker = r.get("worker");
    s
}

/// Where a listing resumes: the state, and the listing key of the last row given
/// (`(priority, run_at, id)` for ready jobs; `(_, run_at, id)` delayed; `(_, lease
/// deadline, id)` active; `(_, time of death, id)` dead, listed newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub state: JobState,
    pub key: (i64, i64, i64),
}

fn state_tag(state: JobState) -> u8 {
    match state {
        JobState::Ready => 0,
        JobState::Delayed => 1,
        JobState::Active => 2,
        JobState::Dead => 3,
        _ => 4,
    }
}

/// The states a search of "any state" goes through, in order (completed jobs are not
/// kept by this backend).
const SEARCH_STATES: [JobState; 4] =
    [JobState::Ready, JobState::Delayed, JobState::Active, JobState::Dead];

impl At {
    /// The start of `state`'s listing.
    pub fn start(state: JobState) -> At {
        let key = if state == JobState::Dead {
            (0, i64::MAX, i64::MAX)
        } else {
            (i64::MIN, i64::MIN, i64::MIN)
        };
        At { state, key }
    }

    /// Just after `job` in its state's listing.
    fn after(job: &JobSummary) -> At {
        let id = job.id as i64;
        let key = match job.state {
            JobState::Ready => (i64::from(job.priority), ms(job.run_at_ms.unwrap_or(0)), id),
            JobState::Delayed => (0, ms(job.run_at_ms.unwrap_or(0)), id),
            JobState::Active => (0, ms(job.lease_deadline_ms.unwrap_or(0)), id),
            _ => (0, ms(job.finished_at_ms.unwrap_or(0)), id),
        };
        At { state: job.state, key }
    }

    pub fn encode(&self) -> Cursor {
        let mut b = Vec::with_capacity(25);
        b.push(state_tag(self.state));
        for k in [self.key.0, self.key.1, self.key.2] {
            b.extend_from_slice(&k.to_be_bytes());
        }
        Cursor(b)
    }

    /// Decodes a cursor this backend gave out; `state` is the listing's (or `None`: a
    /// search of any state).
    pub fn decode(cursor: Option<&Cursor>, state: Option<JobState>) -> Result<At, WireError> {
        let first = state.unwrap_or(JobState::Ready);
        let Some(cursor) = cursor else { return Ok(At::start(first)) };
        let bad = || {
            WireError::new(
                ErrorCode::InvalidArgument,
                "this cursor is not one this server gave out for this listing; start the listing again without one",
            )
        };
        let b = &cursor.0;
        if b.len() != 25 {
            return Err(bad());
        }
        let tag = b[0];
        let at_state = *SEARCH_STATES.iter().find(|s| state_tag(**s) == tag).ok_or_else(bad)?;
        if state.is_some_and(|s| s != at_state) {
            return Err(bad());
        }
        let k =
            |i: usize| i64::from_be_bytes(b[1 + 8 * i..9 + 8 * i].try_into().unwrap_or_default());
        Ok(At { state: at_state, key: (k(0), k(1), k(2)) })
    }
}

/// Up to `limit` jobs of `queue` in `at.state` after `at`, in the embedded store's order
/// for that state (ready: reserve order; delayed: by run time; active: by lease deadline;
/// dead: newest death first). With `payloads`, each row's payload comes too.
async fn page(
    client: &impl GenericClient,
    queue: &str,
    at: At,
    limit: usize,
    now: Millis,
    payloads: bool,
) -> Result<Vec<(JobSummary, Option<Bytes>)>, PgError> {
    let (filter, order) = match at.state {
        JobState::Ready => (
            "state = 0 AND run_at <= $3 AND (priority, run_at, id) > ($4::int, $5, $6)",
            "priority, run_at, id",
        ),
        JobState::Delayed => {
            ("state = 0 AND run_at > $3 AND (run_at, id) > ($5, $6)", "run_at, id")
        }
        JobState::Active => ("state = 1 AND (lease_deadline, id) > ($5, $6)", "lease_deadline, id"),
        JobState::Dead => ("state = 2 AND (run_at, id) < ($5, $6)", "run_at DESC, id DESC"),
        JobState::Completed => return Ok(Vec::new()),
    };
    let extra = if payloads { ", payload" } else { "" };
    let sql = format!(
        "SELECT {JOB_COLUMNS}{extra} FROM qd_jobs
         WHERE queue = $1 AND {filter}
           AND $3::bigint IS NOT NULL AND $4::int IS NOT NULL AND $5::bigint IS NOT NULL
         ORDER BY {order} LIMIT $2"
    );
    let priority = at.key.0.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    let rows = client
        .query(&sql, &[&queue, &(limit as i64), &ms(now), &priority, &at.key.1, &at.key.2])
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let payload = payloads.then(|| Bytes::from(r.get::<_, Vec<u8>>("payload")));
            (summary(r, now), payload)
        })
        .collect())
}

/// A page of `queue`'s jobs in `state` (`Jobs`), and the cursor of the next page.
pub async fn list(
    client: &impl GenericClient,
    queue: &str,
    state: JobState,
    cursor: Option<&Cursor>,
    limit: usize,
    now: Millis,
) -> Result<(Vec<JobSummary>, bool), WireError> {
    let at = At::decode(cursor, Some(state))?;
    let mut jobs: Vec<JobSummary> = page(client, queue, at, limit + 1, now, false)
        .await
        .map_err(|e| e.wire())?
        .into_iter()
        .map(|(j, _)| j)
        .collect();
    let more = jobs.len() > limit;
    jobs.truncate(limit);
    Ok((jobs, more))
}

/// The cursor of the page after one ending with `last`.
pub fn cursor_after(last: &JobSummary) -> Cursor {
    At::after(last).encode()
}

/// A search (`Search`): `queue`'s jobs (in `state`, or in any) whose payload matches
/// `query`, by the embedded store's rule, at most `limit`, scanning at most
/// [`SEARCH_SCAN_JOBS`] jobs per request. The answer's cursor is where the scan stopped
/// (`None`: nothing left to scan).
pub async fn search(
    client: &impl GenericClient,
    queue: &str,
    state: Option<JobState>,
    query: &SearchQuery,
    cursor: Option<&Cursor>,
    limit: usize,
    now: Millis,
) -> Result<(Vec<JobSummary>, Option<Cursor>), WireError> {
    const BATCH: usize = 500;
    let mut at = At::decode(cursor, state)?;
    let mut found = Vec::new();
    let mut scanned = 0;
    loop {
        let rows = page(client, queue, at, BATCH, now, true).await.map_err(|e| e.wire())?;
        let full = rows.len() == BATCH;
        for (job, payload) in rows {
            scanned += 1;
            at = At::after(&job);
            if payload.is_some_and(|p| matches(query, &p)) {
                found.push(job);
                if found.len() == limit {
                    return Ok((found, Some(at.encode())));
                }
            }
        }
        if !full {
            // This state is done: on to the next one of an any-state search.
            let next = SEARCH_STATES.iter().skip_while(|s| **s != at.state).nth(1);
            match (state, next) {
                (None, Some(&next)) => at = At::start(next),
                _ => return Ok((found, None)),
            }
        }
        if scanned >= SEARCH_SCAN_JOBS {
            return Ok((found, Some(at.encode())));
        }
    }
}

/// One job in full, or `None`.
pub async fn job(
    client: &impl GenericClient,
    id: JobId,
    now: Millis,
) -> Result<Option<JobDetail>, PgError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS}, payload, options::text AS options, errors::text AS errors
         FROM qd_jobs WHERE id = $1"
    );
    let Some(r) = client.query_opt(&sql, &[&(id as i64)]).await? else { return Ok(None) };
    let row = summary(&r, now);
    let payload = Bytes::from(r.get::<_, Vec<u8>>("payload"));
    let mut job = JobDetail::new(row, payload, options_of(r.get("options")));
    #[derive(serde::Deserialize)]
    struct Stored {
        attempt: u32,
        at_ms: u64,
        message: String,
    }
    let errors: Vec<Stored> = serde_json::from_str(r.get("errors")).unwrap_or_default();
    job.errors =
        errors.into_iter().map(|e| JobFailure::new(e.attempt, e.at_ms, e.message)).collect();
    job.started_at_ms = r.get::<_, Option<i64>>(11).map(|v| v as u64);
    Ok(Some(job))
}

/// Deletes the oldest dead jobs of `queue` beyond the newest `keep` (`dead_max_jobs`).
/// How many.
pub async fn trim_dead(
    client: &impl GenericClient,
    queue: &str,
    keep: usize,
) -> Result<u64, PgError> {
    Ok(client
        .execute(
            "DELETE FROM qd_jobs WHERE id IN (
                 SELECT id FROM qd_jobs WHERE queue = $1 AND state = 2
                 ORDER BY run_at DESC, id DESC OFFSET $2)",
            &[&queue, &(keep as i64)],
        )
        .await?)
}

/// Records the client name of the connection holding each lease `(id, token, name)`,
/// where the lease is still current.
pub async fn name_workers(
    client: &impl GenericClient,
    leases: &[(JobId, u64, String)],
) -> Result<u64, PgError> {
    let ids: Vec<i64> = leases.iter().map(|l| l.0 as i64).collect();
    let tokens: Vec<i64> = leases.iter().map(|l| l.1 as i64).collect();
    let names: Vec<&str> = leases.iter().map(|l| l.2.as_str()).collect();
    Ok(client
        .execute(
            "UPDATE qd_jobs j SET worker = u.name, worker_token = u.token
             FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(id, token, name)
             WHERE j.id = u.id AND j.token = u.token AND j.state = 1",
            &[&ids, &tokens, &names],
        )
        .await?)
}

/// Adds a broker's counts to the shared ones, in one statement.
pub async fn add_counters(
    client: &impl GenericClient,
    counts: &HashMap<String, Counters>,
) -> Result<(), PgError> {
    let queues: Vec<&str> = counts.keys().map(String::as_str).collect();
    let col = |f: fn(&Counters) -> u64| -> Vec<i64> {
        counts.values().map(|c| f(c).min(i64::MAX as u64) as i64).collect()
    };
    client
        .execute(
            "INSERT INTO qd_counters (queue, added, completed, failed, dead)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::bigint[])
             ON CONFLICT (queue) DO UPDATE SET
                 added = qd_counters.added + excluded.added,
                 completed = qd_counters.completed + excluded.completed,
                 failed = qd_counters.failed + excluded.failed,
                 dead = qd_counters.dead + excluded.dead",
            &[
                &queues,
                &col(|c| c.added),
                &col(|c| c.completed),
                &col(|c| c.failed),
                &col(|c| c.dead),
            ],
        )
        .await?;
    Ok(())
}

/// The shared counters of `queues`.
pub async fn counters(
    client: &impl GenericClient,
    queues: &[&str],
) -> Result<HashMap<String, Counters>, PgError> {
    let rows = client
        .query(
            "SELECT queue, added, completed, failed, dead FROM qd_counters
             WHERE queue = ANY($1)",
            &[&queues],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
            (r.get(0), Counters { added: n(1), completed: n(2), failed: n(3), dead: n(4) })
        })
        .collect())
}
