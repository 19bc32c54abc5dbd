//! The admin requests on the PostgreSQL backend: each is one or two statements run on a
//! task of its own, answered with the same wire types as the embedded store's. What differs
//! (no completed history, counters per broker, listings in id order) is in
//! docs/BACKENDS.md.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use qd_protocol::admin::{Cursor, QueueInfo};
use qd_protocol::{validate_queue_name, JobId, QueueStats, Request, Response, WireError};

use crate::engine::admin::{fit_frame, not_found, page_limit};

use super::{now_ms, sql, PgError, Shared};

/// A request's answer, computed on a task.
pub(super) type Answer = Pin<Box<dyn Future<Output = Result<Response, WireError>> + Send>>;

/// The task answering admin request `body`, or `None` when this backend does not serve it.
pub(super) fn answer(shared: Arc<Shared>, body: Request) -> Option<Answer> {
    let task: Answer = match body {
        Request::Stats { after, limit } => Box::pin(async move {
            let counts = page(&shared, after.as_deref(), limit).await?;
            let (mut queues, more): (Vec<QueueStats>, bool) =
                (counts.0.into_iter().map(|c| stats_row(&shared, c)).collect(), counts.1);
            let more = fit_frame(&mut queues, shared.max_frame) || more;
            let next = if more { queues.last().map(|q| q.queue.clone()) } else { None };
            Ok(Response::Stats { queues, next })
        }),
        Request::Queues { after, limit } => Box::pin(async move {
            let now = now_ms();
            let counts = page(&shared, after.as_deref(), limit).await?;
            let (mut queues, more): (Vec<QueueInfo>, bool) =
                (counts.0.into_iter().map(|c| info_row(&shared, c, now)).collect(), counts.1);
            let more = fit_frame(&mut queues, shared.max_frame) || more;
            let next = if more { queues.last().map(|q| q.name.clone()) } else { None };
            Ok(Response::Queues { queues, next })
        }),
        Request::Jobs { queue, state, cursor, limit } => Box::pin(async move {
            let after = decode_cursor(cursor.as_ref())?;
            let limit = page_limit(limit);
            let client = client(&shared).await?;
            let mut jobs = sql::list(&client, &queue, state, after, limit + 1, now_ms())
                .await
                .map_err(|e| e.wire())?;
            let mut more = jobs.len() > limit;
            jobs.truncate(limit);
            more |= fit_frame(&mut jobs, shared.max_frame);
            let next =
                if more { jobs.last().map(|j| Cursor(j.id.to_be_bytes().to_vec())) } else { None };
            Ok(Response::Jobs { jobs, next })
        }),
        Request::Job { id } => Box::pin(async move {
            let client = client(&shared).await?;
            match sql::job(&client, id, now_ms()).await.map_err(|e| e.wire())? {
                Some(job) => Ok(Response::Job { job: Box::new(job) }),
                None => Err(not_found(id)),
            }
        }),
        Request::RetryDead { queue, ids } => Box::pin(async move {
            let client = client(&shared).await?;
            let n = sql::retry_dead(&client, &queue, Some(&ids), None, now_ms()).await;
            n.map(|n| Response::Count { n }).map_err(|e| e.wire())
        }),
        Request::RetryAllDead { queue, name } => Box::pin(async move {
            let client = client(&shared).await?;
            let n = sql::retry_dead(&client, &queue, None, name.as_deref(), now_ms()).await;
            n.map(|n| Response::Count { n }).map_err(|e| e.wire())
        }),
        Request::PurgeDead { queue, older_than_ms } => Box::pin(async move {
            let client = client(&shared).await?;
            let cutoff = older_than_ms.map(|ms| now_ms().saturating_sub(ms));
            let n = sql::purge_dead(&client, &queue, cutoff).await;
            n.map(|n| Response::Count { n }).map_err(|e| e.wire())
        }),
        Request::Remove { ids } => Box::pin(async move {
            let client = client(&shared).await?;
            sql::remove(&client, &ids).await.map(|n| Response::Count { n }).map_err(|e| e.wire())
        }),
        Request::Promote { ids } => Box::pin(async move {
            let client = client(&shared).await?;
            let n = sql::promote(&client, &ids, now_ms()).await;
            n.map(|n| Response::Count { n }).map_err(|e| e.wire())
        }),
        Request::Kill { ids } => Box::pin(async move {
            let client = client(&shared).await?;
            let n = sql::kill(&client, &ids, crate::broker::KILLED, now_ms()).await;
            n.map(|n| Response::Count { n }).map_err(|e| e.wire())
        }),
        Request::Pause { queue } => Box::pin(pause(shared, queue, true)),
        Request::Resume { queue } => Box::pin(pause(shared, queue, false)),
        _ => return None,
    };
    Some(task)
}

async fn client(shared: &Shared) -> Result<deadpool_postgres::Object, WireError> {
    shared.pool.get().await.map_err(|e| PgError::from(e).wire())
}

async fn pause(shared: Arc<Shared>, queue: String, paused: bool) -> Result<Response, WireError> {
    validate_queue_name(&queue)?;
    let client = client(&shared).await?;
    sql::set_paused(&client, &queue, paused).await.map_err(|e| e.wire())?;
    Ok(Response::Done)
}

/// One page of queue counts, and whether more follow.
///
/// Counting scans `qd_jobs`, and clients poll stats (the dashboard, `qd bench` every 5 ms):
/// a page is reused for [`COUNTS_TTL`] and computed by one request at a time, so polling
/// costs the database at most a few scans a second, whatever the number of pollers.
async fn page(
    shared: &Shared,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<sql::Counts>, bool), WireError> {
    let limit = page_limit(limit);
    let key = (after.map(str::to_owned), limit);
    let mut cache = shared.counts_cache.lock().await;
    if let Some((at, cached_key, page)) = cache.as_ref() {
        if *cached_key == key && at.elapsed() < COUNTS_TTL {
            return Ok(page.clone());
        }
    }
    let client = client(shared).await?;
    let mut counts =
        sql::counts(&client, now_ms(), after, limit + 1).await.map_err(|e| e.wire())?;
    let more = counts.len() > limit;
    counts.truncate(limit);
    *cache = Some((std::time::Instant::now(), key, (counts.clone(), more)));
    Ok((counts, more))
}

/// How long a page of counts is reused.
const COUNTS_TTL: std::time::Duration = std::time::Duration::from_millis(200);

/// The last page of counts: when, for which `(after, limit)`, and the page.
pub(super) type CountsCache =
    Option<(std::time::Instant, (Option<String>, usize), (Vec<sql::Counts>, bool))>;

fn counters(shared: &Shared, queue: &str) -> super::Counters {
    let counters = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
    counters.get(queue).copied().unwrap_or_default()
}

fn stats_row(shared: &Shared, c: sql::Counts) -> QueueStats {
    let k = counters(shared, &c.queue);
    let mut s = QueueStats::new(c.queue);
    s.ready = c.ready;
    s.delayed = c.delayed;
    s.active = c.active;
    s.dead = c.dead;
    s.completed_total = k.completed;
    s.failed_total = k.failed;
    s
}

fn info_row(shared: &Shared, c: sql::Counts, now: u64) -> QueueInfo {
    let k = counters(shared, &c.queue);
    let mut q = QueueInfo::new(c.queue);
    q.ready = c.ready;
    q.delayed = c.delayed;
    q.active = c.active;
    q.dead = c.dead;
    q.paused = c.paused;
    q.oldest_ready_age_ms = c.oldest_ready_ms.map(|at| now.saturating_sub(at));
    q.added_total = k.added;
    q.completed_total = k.completed;
    q.failed_total = k.failed;
    q.dead_total = k.dead;
    q
}

fn decode_cursor(cursor: Option<&Cursor>) -> Result<JobId, WireError> {
    let Some(cursor) = cursor else { return Ok(0) };
    let bytes: [u8; 8] = cursor.0.as_slice().try_into().map_err(|_| {
        WireError::new(
            qd_protocol::ErrorCode::InvalidArgument,
            "this cursor is not one this server gave out; start the listing again without one",
        )
    })?;
    Ok(JobId::from_be_bytes(bytes))
}
