//! Every statement the PostgreSQL backend runs, and the mapping between its rows and qd's
//! types. The hot-path statements work on many jobs at once (`unnest` arrays in, one
//! statement out): one job per statement was measured ten times slower (issue 12).
//!
//! The schema is in `migrations/`; docs/BACKENDS.md explains it. What to do with a failed
//! try (retry when, or dead) is not decided here but by the shared policy,
//! [`crate::broker::backoff::after_failure`]; this file only reads the inputs and writes the
//! result. Ids, tokens and unix-ms times are `u64` in qd and `bigint` in the table: they are
//! cast bit for bit (ids and times stay far below 2^63; tokens use all 64 bits).

use std::collections::HashMap;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use qd_protocol::{JobId, JobOptions, RetryHint};
use tokio_postgres::Row;

use crate::broker::backoff::{after_failure, AfterFailure};
use crate::model::Millis;

use super::PgError;

/// `qd_jobs.state` of a waiting job (ready when `run_at <= now`, else delayed).
pub const WAITING: i16 = 0;
/// `qd_jobs.state` of a leased job.
pub const ACTIVE: i16 = 1;
/// `qd_jobs.state` of a dead job (`run_at` is its time of death).
pub const DEAD: i16 = 2;

/// Most rows one expiry sweep fails in one transaction.
const SWEEP_BATCH: i64 = 1000;

/// One job to insert.
#[derive(Debug)]
pub struct NewRow {
    pub queue: String,
    pub name: String,
    pub payload: Bytes,
    pub options: JobOptions,
}

/// A job handed out by [`reserve`].
#[derive(Debug)]
pub struct LeasedRow {
    pub id: JobId,
    pub queue: String,
    pub name: String,
    pub payload: Bytes,
    pub options: JobOptions,
    pub failures: u32,
    pub max_attempts: u32,
    pub token: u64,
    pub deadline_ms: Millis,
    pub created_at_ms: Millis,
    pub priority: i32,
    pub run_at_ms: Millis,
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `qd_jobs.options` of a job whose options are all at their defaults: empty. Most jobs
/// are such, and their JSON (220 bytes) was half of every row, written again by every
/// reserve (an update writes the whole row) and read by every count. As with the embedded
/// store's records, which also leave defaults out, "default" means this version's defaults.
const DEFAULT_OPTIONS: &str = "";

fn options_json(options: &JobOptions) -> String {
    if *options == JobOptions::default() {
        return DEFAULT_OPTIONS.to_owned();
    }
    // JobOptions is plain data with string keys: encoding cannot fail.
    serde_json::to_string(options).unwrap_or_else(|_| "{}".to_owned())
}

pub(super) fn options_of(text: &str) -> JobOptions {
    if text == DEFAULT_OPTIONS {
        return JobOptions::default();
    }
    serde_json::from_str(text).unwrap_or_default()
}

const INSERT: &str = "
WITH input AS (
    SELECT nextval('qd_jobs_id_seq') AS id, t.*
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::int[], $6::bigint[],
                $7::int[], $8::bigint[], $9::text[])
         WITH ORDINALITY AS t(queue, name, payload, options, priority, run_at, max_attempts,
                              lease_ms, idem_key, ord)
), ins AS (
    INSERT INTO qd_jobs (id, queue, name, payload, options, priority, state, run_at,
                         created_at, max_attempts, lease_ms, idem_key)
    SELECT id, queue, name, payload, options, priority, 0, run_at, $10, max_attempts,
           lease_ms, idem_key
    FROM input ORDER BY ord
    ON CONFLICT (queue, idem_key) WHERE idem_key IS NOT NULL AND state IN (0, 1) DO NOTHING
    RETURNING id
)
SELECT input.id, ins.id IS NOT NULL AS inserted
FROM input LEFT JOIN ins ON ins.id = input.id
ORDER BY input.ord";

const INSERT_PLAIN: &str = "
INSERT INTO qd_jobs (queue, name, payload, options, priority, state, run_at, created_at,
                     max_attempts, lease_ms, idem_key)
SELECT queue, name, payload, options, priority, 0, run_at, $10, max_attempts, lease_ms, idem_key
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::int[], $6::bigint[],
            $7::int[], $8::bigint[], $9::text[])
     AS t(queue, name, payload, options, priority, run_at, max_attempts, lease_ms, idem_key)
RETURNING id";

const KEY_HOLDERS: &str = "
SELECT j.queue, j.idem_key, j.id FROM qd_jobs j
JOIN unnest($1::text[], $2::text[]) AS k(queue, idem_key)
  ON j.queue = k.queue AND j.idem_key = k.idem_key
WHERE j.state IN (0, 1)";

/// Inserts `rows` in one statement; the answer has one id per row, in order: the new job's,
/// or for a row whose idempotency key a waiting or running job of its queue holds (an
/// earlier row of the same call included), that job's.
pub async fn insert(
    client: &impl GenericClient,
    rows: &[NewRow],
    now: Millis,
) -> Result<Vec<JobId>, PgError> {
    let mut ids: Vec<Option<JobId>> = vec![None; rows.len()];
    let now_ms = ms(now);
    let mut todo: Vec<usize> = (0..rows.len()).collect();
    // A key's holder can complete between the insert and the lookup below; its row is then
    // inserted on the next round. Three rounds are plenty unless something is badly wrong.
    for _ in 0..3 {
        if todo.is_empty() {
            break;
        }
        let pick = |f: &dyn Fn(&NewRow) -> String| todo.iter().map(|&i| f(&rows[i])).collect();
        let queues: Vec<String> = pick(&|r| r.queue.clone());
        let names: Vec<String> = pick(&|r| r.name.clone());
        let payloads: Vec<&[u8]> = todo.iter().map(|&i| &rows[i].payload[..]).collect();
        let options: Vec<String> = pick(&|r| options_json(&r.options));
        let priorities: Vec<i32> = todo.iter().map(|&i| rows[i].options.priority).collect();
        let run_at: Vec<i64> =
            todo.iter().map(|&i| ms(now.saturating_add(rows[i].options.delay_ms))).collect();
        let attempts: Vec<i32> =
            todo.iter().map(|&i| rows[i].options.attempts.min(i32::MAX as u32) as i32).collect();
        let lease: Vec<i64> = todo.iter().map(|&i| ms(rows[i].options.lease_ms)).collect();
        let keys: Vec<Option<&str>> =
            todo.iter().map(|&i| rows[i].options.key.as_deref()).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
            &queues,
            &names,
            &payloads,
            &options,
            &priorities,
            &run_at,
            &attempts,
            &lease,
            &keys,
            &now_ms,
        ];
        let mut held = Vec::new();
        if keys.iter().all(Option::is_none) {
            // No key, no conflict: a plain insert. Its ids come from the sequence in the
            // order the rows are read from `unnest`, so sorted they are in input order.
            let stmt = client.prepare_cached(INSERT_PLAIN).await?;
            let mut new: Vec<JobId> = client
                .query(&stmt, &params)
                .await?
                .iter()
                .map(|r| r.get::<_, i64>(0) as JobId)
                .collect();
            new.sort_unstable();
            for (&i, id) in todo.iter().zip(new) {
                ids[i] = Some(id);
            }
        } else {
            let stmt = client.prepare_cached(INSERT).await?;
            for (&i, row) in todo.iter().zip(&client.query(&stmt, &params).await?) {
                if row.get::<_, bool>(1) {
                    ids[i] = Some(row.get::<_, i64>(0) as JobId);
                } else {
                    held.push(i);
                }
            }
        }
        if held.is_empty() {
            break;
        }
        let hq: Vec<&str> = held.iter().map(|&i| rows[i].queue.as_str()).collect();
        let hk: Vec<&str> =
            held.iter().map(|&i| rows[i].options.key.as_deref().unwrap_or("")).collect();
        let stmt = client.prepare_cached(KEY_HOLDERS).await?;
        let holders: HashMap<(String, String), JobId> = client
            .query(&stmt, &[&hq, &hk])
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2) as JobId))
            .collect();
        todo.clear();
        for i in held {
            let key = (rows[i].queue.clone(), rows[i].options.key.clone().unwrap_or_default());
            match holders.get(&key) {
                Some(&id) => ids[i] = Some(id),
                None => todo.push(i),
            }
        }
    }
    ids.into_iter().map(|id| id.ok_or(PgError::Conflict)).collect::<Result<Vec<_>, _>>()
}

const RESERVE: &str = "
WITH picked AS (
    SELECT id FROM qd_jobs j
    WHERE j.queue = $1 AND j.state = 0 AND j.run_at <= $2
      AND NOT EXISTS (SELECT 1 FROM qd_queues q WHERE q.name = $1 AND q.paused)
    ORDER BY j.priority, j.run_at, j.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) AS rn FROM picked
)
UPDATE qd_jobs j
SET state = 1, token = ($4::bigint[])[n.rn], lease_deadline = $2 + j.lease_ms, started_at = $2
FROM numbered n
WHERE j.id = n.id
RETURNING j.id, j.queue, j.name, j.payload, j.options, j.failures, j.max_attempts,
          j.token, j.lease_deadline, j.created_at, j.priority, j.run_at";

/// Leases up to `max` ready jobs, from the first of `queues` that has any, then the next,
/// one `FOR UPDATE SKIP LOCKED` statement per queue (several brokers never take the same
/// row, nor wait for each other). `tokens` holds at least `max` fresh lease tokens. The
/// answer is in delivery order: by queue as listed, then priority, then age.
pub async fn reserve(
    client: &impl GenericClient,
    queues: &[String],
    max: u32,
    now: Millis,
    tokens: &[u64],
) -> Result<Vec<LeasedRow>, PgError> {
    let stmt = client.prepare_cached(RESERVE).await?;
    let mut out: Vec<LeasedRow> = Vec::new();
    for queue in queues {
        let want = max as usize - out.len();
        if want == 0 {
            break;
        }
        let toks: Vec<i64> =
            tokens[out.len()..out.len() + want].iter().map(|&t| t as i64).collect();
        let rows = client.query(&stmt, &[queue, &ms(now), &(want as i64), &toks]).await?;
        let mut got: Vec<LeasedRow> = rows.iter().map(leased_row).collect();
        got.sort_by_key(|r| (r.priority, r.run_at_ms, r.id));
        out.extend(got);
    }
    Ok(out)
}

fn leased_row(r: &Row) -> LeasedRow {
    LeasedRow {
        id: r.get::<_, i64>(0) as JobId,
        queue: r.get(1),
        name: r.get(2),
        payload: Bytes::from(r.get::<_, Vec<u8>>(3)),
        options: options_of(r.get(4)),
        failures: r.get::<_, i32>(5) as u32,
        max_attempts: r.get::<_, i32>(6) as u32,
        token: r.get::<_, i64>(7) as u64,
        deadline_ms: r.get::<_, i64>(8) as u64,
        created_at_ms: r.get::<_, i64>(9) as u64,
        priority: r.get(10),
        run_at_ms: r.get::<_, i64>(11) as u64,
    }
}

const ACK: &str = "
DELETE FROM qd_jobs j USING unnest($1::bigint[], $2::bigint[]) AS a(id, token)
WHERE j.id = a.id AND j.token = a.token AND j.state = 1
RETURNING j.id, j.queue";

/// Completes the jobs whose `(id, token)` lease is current, in one statement. Returns the
/// `(id, queue)` of each completed job; the others' leases were not valid.
pub async fn ack(
    client: &impl GenericClient,
    leases: &[(JobId, u64)],
) -> Result<Vec<(JobId, String)>, PgError> {
    let ids: Vec<i64> = leases.iter().map(|l| l.0 as i64).collect();
    let tokens: Vec<i64> = leases.iter().map(|l| l.1 as i64).collect();
    let stmt = client.prepare_cached(ACK).await?;
    let rows = client.query(&stmt, &[&ids, &tokens]).await?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as JobId, r.get(1))).collect())
}

/// Of `ids`, the ones that exist (to tell a lost lease from an unknown job).
pub async fn existing(client: &impl GenericClient, ids: &[JobId]) -> Result<Vec<JobId>, PgError> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let rows = client.query("SELECT id FROM qd_jobs WHERE id = ANY($1)", &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0) as JobId).collect())
}

/// What [`fail`] did to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub id: JobId,
    pub queue: String,
    pub outcome: AfterFailure,
}

/// How [`fail`] finds its jobs.
#[derive(Debug)]
pub enum Victims<'a> {
    /// These leases, if still current (a nack, a closed connection).
    Leases(&'a [(JobId, u64)]),
    /// Leases whose deadline passed before `now`, skipping rows another broker is sweeping.
    Expired,
}

const LOCK_LEASES: &str = "
SELECT j.id, j.queue, j.options, j.failures, j.max_attempts FROM qd_jobs j
JOIN unnest($1::bigint[], $2::bigint[]) AS l(id, token) ON j.id = l.id AND j.token = l.token
WHERE j.state = 1
FOR UPDATE OF j";

const LOCK_EXPIRED: &str = "
SELECT id, queue, options, failures, max_attempts FROM qd_jobs
WHERE state = 1 AND lease_deadline < $1
ORDER BY lease_deadline
LIMIT $2
FOR UPDATE SKIP LOCKED";

const WRITE_FAILURES: &str = "
UPDATE qd_jobs j
SET state = u.state, run_at = u.run_at, failures = u.failures, token = NULL,
    lease_deadline = NULL,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', u.failures, 'at_ms', $6::bigint, 'message', u.message))
FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::int[], $5::text[])
     AS u(id, state, run_at, failures, message)
WHERE j.id = u.id";

/// Records a failed try of each victim, in one transaction: each is retried or
/// dead-lettered by the shared rule ([`after_failure`]) with `message` and `hint`.
pub async fn fail(
    client: &mut deadpool_postgres::Object,
    victims: Victims<'_>,
    message: &str,
    hint: RetryHint,
    now: Millis,
) -> Result<Vec<Failed>, PgError> {
    let tx = client.transaction().await?;
    let rows = match victims {
        Victims::Leases(leases) => {
            let ids: Vec<i64> = leases.iter().map(|l| l.0 as i64).collect();
            let tokens: Vec<i64> = leases.iter().map(|l| l.1 as i64).collect();
            let stmt = tx.prepare_cached(LOCK_LEASES).await?;
            tx.query(&stmt, &[&ids, &tokens]).await?
        }
        Victims::Expired => {
            let stmt = tx.prepare_cached(LOCK_EXPIRED).await?;
            tx.query(&stmt, &[&ms(now), &SWEEP_BATCH]).await?
        }
    };
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut failed = Vec::with_capacity(rows.len());
    let (mut ids, mut states, mut run_at, mut failures, mut messages) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let id = r.get::<_, i64>(0) as JobId;
        let options = options_of(r.get(2));
        let attempt = (r.get::<_, i32>(3) as u32).saturating_add(1);
        let max_attempts = r.get::<_, i32>(4) as u32;
        let outcome = after_failure(&options.backoff, max_attempts, id, attempt, hint, now);
        ids.push(id as i64);
        states.push(if outcome.dead { DEAD } else { WAITING });
        run_at.push(ms(outcome.run_at_ms));
        failures.push(attempt.min(i32::MAX as u32) as i32);
        messages.push(message);
        failed.push(Failed { id, queue: r.get(1), outcome });
    }
    let stmt = tx.prepare_cached(WRITE_FAILURES).await?;
    tx.execute(&stmt, &[&ids, &states, &run_at, &failures, &messages, &ms(now)]).await?;
    tx.commit().await?;
    Ok(failed)
}

/// Puts leased jobs back to waiting without charging an attempt (a delivery that found no
/// taker, or a snooze/rate-limit hint for `delay_ms`). Returns the ids put back.
pub async fn release(
    client: &impl GenericClient,
    leases: &[(JobId, u64)],
    now: Millis,
    delay_ms: u64,
) -> Result<Vec<JobId>, PgError> {
    let ids: Vec<i64> = leases.iter().map(|l| l.0 as i64).collect();
    let tokens: Vec<i64> = leases.iter().map(|l| l.1 as i64).collect();
    // A job released at once keeps its place (its old run_at); a snoozed one moves.
    let rows = client
        .query(
            "UPDATE qd_jobs j SET state = 0, token = NULL, lease_deadline = NULL,
                 run_at = CASE WHEN $4::bigint = 0 THEN j.run_at ELSE $3 + $4 END
             FROM unnest($1::bigint[], $2::bigint[]) AS l(id, token)
             WHERE j.id = l.id AND j.token = l.token AND j.state = 1
             RETURNING j.id",
            &[&ids, &tokens, &ms(now), &ms(delay_ms)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0) as JobId).collect())
}

/// Extends a current lease to `now + lease_ms` (the job's own lease when `None`); the new
/// deadline, or `None` when the lease is not current.
pub async fn touch(
    client: &impl GenericClient,
    lease: (JobId, u64),
    lease_ms: Option<u64>,
    now: Millis,
) -> Result<Option<Millis>, PgError> {
    let row = client
        .query_opt(
            "UPDATE qd_jobs SET lease_deadline = $3 + COALESCE($4, lease_ms)
             WHERE id = $1 AND token = $2 AND state = 1 RETURNING lease_deadline",
            &[&(lease.0 as i64), &(lease.1 as i64), &ms(now), &lease_ms.map(ms)],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// Deletes dead jobs that died before `cutoff`; how many.
pub async fn drop_old_dead(client: &impl GenericClient, cutoff: Millis) -> Result<u64, PgError> {
    Ok(client
        .execute("DELETE FROM qd_jobs WHERE state = 2 AND run_at < $1", &[&ms(cutoff)])
        .await?)
}

/// Counts of one queue, as the stats and queue listings show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub queue: String,
    pub ready: u64,
    pub delayed: u64,
    pub active: u64,
    pub dead: u64,
    pub oldest_ready_ms: Option<Millis>,
    pub paused: bool,
}

/// Counts of up to `limit` queues whose names sort after `after`, in name order: every
/// queue with a job, a setting or counters (a drained queue stays listed, with its totals).
pub async fn counts(
    client: &impl GenericClient,
    now: Millis,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Counts>, PgError> {
    let rows = client
        .query(
            "WITH c AS (
                 SELECT queue,
                     count(*) FILTER (WHERE state = 0 AND run_at <= $1) AS ready,
                     count(*) FILTER (WHERE state = 0 AND run_at > $1) AS delayed,
                     count(*) FILTER (WHERE state = 1) AS active,
                     count(*) FILTER (WHERE state = 2) AS dead,
                     min(run_at) FILTER (WHERE state = 0 AND run_at <= $1) AS oldest
                 FROM qd_jobs WHERE $2::text IS NULL OR queue > $2 GROUP BY queue
             )
             , names AS (
                 SELECT queue AS name FROM c
                 UNION SELECT name FROM qd_queues WHERE $2::text IS NULL OR name > $2
                 UNION SELECT queue FROM qd_counters WHERE $2::text IS NULL OR queue > $2
             )
             SELECT n.name, coalesce(c.ready, 0), coalesce(c.delayed, 0),
                    coalesce(c.active, 0), coalesce(c.dead, 0), c.oldest,
                    coalesce(q.paused, false)
             FROM names n LEFT JOIN c ON c.queue = n.name LEFT JOIN qd_queues q ON q.name = n.name
             ORDER BY 1 LIMIT $3",
            &[&ms(now), &after, &(limit as i64)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Counts {
            queue: r.get(0),
            ready: r.get::<_, i64>(1) as u64,
            delayed: r.get::<_, i64>(2) as u64,
            active: r.get::<_, i64>(3) as u64,
            dead: r.get::<_, i64>(4) as u64,
            oldest_ready_ms: r.get::<_, Option<i64>>(5).map(|v| v as u64),
            paused: r.get(6),
        })
        .collect())
}

/// Dead jobs of `queue` back to waiting with fresh attempts: the given ids, or all (of job
/// `name` when given). A key now held by another pending job is dropped from the retried
/// job rather than failing the retry. How many.
pub async fn retry_dead(
    client: &impl GenericClient,
    queue: &str,
    ids: Option<&[JobId]>,
    name: Option<&str>,
    now: Millis,
) -> Result<u64, PgError> {
    let ids: Option<Vec<i64>> = ids.map(|ids| ids.iter().map(|&i| i as i64).collect());
    Ok(client
        .execute(
            "UPDATE qd_jobs j SET state = 0, run_at = $4, failures = 0,
                 idem_key = CASE WHEN EXISTS (
                     SELECT 1 FROM qd_jobs o WHERE o.queue = j.queue AND o.idem_key = j.idem_key
                         AND o.state IN (0, 1)) THEN NULL ELSE j.idem_key END
             WHERE j.queue = $1 AND j.state = 2 AND ($2::bigint[] IS NULL OR j.id = ANY($2))
               AND ($3::text IS NULL OR j.name = $3)",
            &[&queue, &ids, &name, &ms(now)],
        )
        .await?)
}

/// Deletes dead jobs of `queue` that died before `cutoff` (all when `None`). How many.
pub async fn purge_dead(
    client: &impl GenericClient,
    queue: &str,
    cutoff: Option<Millis>,
) -> Result<u64, PgError> {
    Ok(client
        .execute(
            "DELETE FROM qd_jobs WHERE queue = $1 AND state = 2
               AND ($2::bigint IS NULL OR run_at < $2)",
            &[&queue, &cutoff.map(ms)],
        )
        .await?)
}

/// Deletes these jobs unless active. How many.
pub async fn remove(client: &impl GenericClient, ids: &[JobId]) -> Result<u64, PgError> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Ok(client.execute("DELETE FROM qd_jobs WHERE id = ANY($1) AND state <> 1", &[&ids]).await?)
}

/// Makes these delayed jobs ready now. How many.
pub async fn promote(
    client: &impl GenericClient,
    ids: &[JobId],
    now: Millis,
) -> Result<u64, PgError> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Ok(client
        .execute(
            "UPDATE qd_jobs SET run_at = $2 WHERE id = ANY($1) AND state = 0 AND run_at > $2",
            &[&ids, &ms(now)],
        )
        .await?)
}

/// Moves these waiting jobs (ready or delayed) to the dead set now with `message` under the
/// next attempt number, as the embedded broker's `kill` does; others are left alone.
pub async fn kill(
    client: &impl GenericClient,
    ids: &[JobId],
    message: &str,
    now: Millis,
) -> Result<u64, PgError> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Ok(client
        .execute(
            "UPDATE qd_jobs SET state = 2, run_at = $2, failures = failures + 1,
                 errors = errors || jsonb_build_array(jsonb_build_object(
                     'attempt', failures + 1, 'at_ms', $2::bigint, 'message', $3::text))
             WHERE id = ANY($1) AND state = 0",
            &[&ids, &ms(now), &message],
        )
        .await?)
}

/// Sets or clears a queue's pause flag.
pub async fn set_paused(
    client: &impl GenericClient,
    queue: &str,
    paused: bool,
) -> Result<(), PgError> {
    // A resumed queue has no setting left: its row goes, so it is not listed for ever.
    if paused {
        client
            .execute(
                "INSERT INTO qd_queues (name, paused) VALUES ($1, true)
                 ON CONFLICT (name) DO UPDATE SET paused = true",
                &[&queue],
            )
            .await?;
    } else {
        client.execute("DELETE FROM qd_queues WHERE name = $1", &[&queue]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_stored_empty_and_read_back_whole() {
        let default = JobOptions::default();
        assert_eq!(options_json(&default), "");
        assert_eq!(options_of(""), default);
        let custom =
            JobOptions { attempts: 7, group: Some("tenant-1".into()), ..JobOptions::default() };
        let text = options_json(&custom);
        assert!(text.starts_with('{'), "{text}");
        assert_eq!(options_of(&text), custom);
        // Rows written before the empty form keep their JSON, which still reads.
        assert_eq!(options_of(&serde_json::to_string(&default).unwrap()), default);
    }
}
