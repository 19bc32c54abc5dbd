//! The admin requests on the PostgreSQL backend: each is one or two statements run on a
//! task of its own, answered with the same wire types as the embedded store's. What differs
//! (no completed history, no minute history) is in docs/BACKENDS.md.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use qd_protocol::admin::QueueInfo;
use qd_protocol::{validate_queue_name, QueueStats, Request, Response, WireError};

use crate::engine::admin::{fit_frame, not_found, page_limit};

use super::{listing, now_ms, sql, Counters, PgError, Shared};

/// A request's answer, computed on a task.
pub(super) type Answer = Pin<Box<dyn Future<Output = Result<Response, WireError>> + Send>>;

/// The task answering admin request `body`, or `None` when this backend does not serve it.
pub(super) fn answer(shared: Arc<Shared>, body: Request) -> Option<Answer> {
    let task: Answer = match body {
        Request::Stats { after, limit } => Box::pin(async move {
            let (counts, more, totals) = page(&shared, after.as_deref(), limit).await?;
            let (mut queues, more): (Vec<QueueStats>, bool) =
                (counts.into_iter().map(|c| stats_row(&totals, c)).collect(), more);
            let more = fit_frame(&mut queues, shared.max_frame) || more;
            let next = if more { queues.last().map(|q| q.queue.clone()) } else { None };
            Ok(Response::Stats { queues, next })
        }),
        Request::Queues { after, limit } => Box::pin(async move {
            let now = now_ms();
            let (counts, more, totals) = page(&shared, after.as_deref(), limit).await?;
            let (mut queues, more): (Vec<QueueInfo>, bool) =
                (counts.into_iter().map(|c| info_row(&totals, c, now)).collect(), more);
            let more = fit_frame(&mut queues, shared.max_frame) || more;
            let next = if more { queues.last().map(|q| q.name.clone()) } else { None };
            Ok(Response::Queues { queues, next })
        }),
        Request::Jobs { queue, state, cursor, limit } => Box::pin(async move {
            let limit = page_limit(limit);
            let client = client(&shared).await?;
            let (mut jobs, mut more) =
                listing::list(&client, &queue, state, cursor.as_ref(), limit, now_ms()).await?;
            more |= fit_frame(&mut jobs, shared.max_frame);
            let next = if more { jobs.last().map(listing::cursor_after) } else { None };
            Ok(Response::Jobs { jobs, next })
        }),
        Request::Search { queue, state, query, cursor, limit } => Box::pin(async move {
            let limit = page_limit(limit);
            let client = client(&shared).await?;
            let now = now_ms();
            let (mut jobs, mut next) =
                listing::search(&client, &queue, state, &query, cursor.as_ref(), limit, now)
                    .await?;
            if fit_frame(&mut jobs, shared.max_frame) {
                next = jobs.last().map(listing::cursor_after);
            }
            Ok(Response::Jobs { jobs, next })
        }),
        Request::Job { id } => Box::pin(async move {
            let client = client(&shared).await?;
            match listing::job(&client, id, now_ms()).await.map_err(|e| e.wire())? {
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
            let now = now_ms();
            let killed = sql::kill(&client, &ids, crate::broker::KILLED, now).await;
            let n = killed.map_err(|e| e.wire())?;
            if n > 0 {
                // Their queues' dead sets may now pass --dead-max-jobs.
                let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let rows = client
                    .query("SELECT DISTINCT queue FROM qd_jobs WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(|e| PgError::from(e).wire())?;
                for r in rows {
                    shared.trim.mark(r.get(0));
                }
            }
            Ok(Response::Count { n })
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

/// One page of queue counts, whether more follow, and the `_total` counters of its queues.
///
/// Counting scans `qd_jobs`, and clients poll stats (the dashboard, `qd bench` every 5 ms):
/// a page is reused for [`COUNTS_TTL`] and computed by one request at a time, so polling
/// costs the database at most a few scans a second, whatever the number of pollers. The
/// counters are taken with the page: each page's are at least the last one's, so a
/// Prometheus counter never seems to go back.
async fn page(shared: &Shared, after: Option<&str>, limit: u32) -> Result<Page, WireError> {
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
    // A queue drained through this broker since its last counter flush is in no table
    // yet: listed from its pending counts, as it will be from `qd_counters`.
    {
        let pending = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        for queue in pending.keys() {
            let listed = counts.iter().any(|c| c.queue == *queue);
            if !listed && after.is_none_or(|a| queue.as_str() > a) {
                counts.push(sql::Counts { queue: queue.clone(), ..Default::default() });
            }
        }
    }
    counts.sort_by(|a, b| a.queue.cmp(&b.queue));
    let more = counts.len() > limit;
    counts.truncate(limit);
    let totals = totals(shared, &counts).await?;
    let page = (counts, more, totals);
    *cache = Some((std::time::Instant::now(), key, page.clone()));
    Ok(page)
}

/// A page of queue counts, whether more follow, and the page's `_total` counters.
pub(super) type Page = (Vec<sql::Counts>, bool, std::collections::HashMap<String, Counters>);

/// How long a page of counts is reused.
const COUNTS_TTL: std::time::Duration = std::time::Duration::from_millis(200);

/// The last page of counts: when, for which `(after, limit)`, and the page.
pub(super) type CountsCache = Option<(std::time::Instant, (Option<String>, usize), Page)>;

/// The `_total` counters of these queues: the shared ones (`qd_counters`) plus this
/// broker's counts not yet added to them.
async fn totals(
    shared: &Shared,
    counts: &[sql::Counts],
) -> Result<std::collections::HashMap<String, Counters>, WireError> {
    let queues: Vec<&str> = counts.iter().map(|c| c.queue.as_str()).collect();
    let client = client(shared).await?;
    let _flushing = shared.counters_flush.lock().await;
    let mut totals = listing::counters(&client, &queues).await.map_err(|e| e.wire())?;
    let pending = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
    for q in queues {
        if let Some(p) = pending.get(q) {
            let t = totals.entry(q.to_owned()).or_default();
            t.added += p.added;
            t.completed += p.completed;
            t.failed += p.failed;
            t.dead += p.dead;
        }
    }
    Ok(totals)
}

fn stats_row(totals: &std::collections::HashMap<String, Counters>, c: sql::Counts) -> QueueStats {
    let k = totals.get(&c.queue).copied().unwrap_or_default();
    let mut s = QueueStats::new(c.queue);
    s.ready = c.ready;
    s.delayed = c.delayed;
    s.active = c.active;
    s.dead = c.dead;
    s.completed_total = k.completed;
    s.failed_total = k.failed;
    s
}

fn info_row(
    totals: &std::collections::HashMap<String, Counters>,
    c: sql::Counts,
    now: u64,
) -> QueueInfo {
    let k = totals.get(&c.queue).copied().unwrap_or_default();
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
