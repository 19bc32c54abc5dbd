//! The admin commands of Faktory's protocol: INFO, FLUSH, QUEUE and MUTATE, built from
//! qd's own admin requests (stats, job listings, remove, promote, retry-dead, pause), so
//! they need nothing of the engine that the dashboard does not use too.
//!
//! Faktory's sets map onto qd's states: *scheduled* is a delayed job that never failed,
//! *retries* a delayed job that failed at least once, *dead* the dead set. Listings and
//! payload filters are O(jobs in the set), as in Faktory (which scans Redis).
//!
//! MUTATE `kill` is qd's own `Kill` (the broker's `kill`: a waiting job goes to the dead
//! set with the error `killed by an operator`). QUEUE LATENCY reads each queue's oldest
//! ready age from qd's queue views (`Queues`).

use std::collections::BTreeMap;

use qd_protocol::admin::{JobState, JobSummary, QueueInfo};
use qd_protocol::{JobId, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::codec::Reply;
use super::commands::{link_error, parse};
use super::job;
use super::link::LinkError;
use super::Front;

/// Queues and jobs per listing page.
const PAGE: u32 = 1000;
/// Ids per remove, promote or retry request.
const CHUNK: usize = 1000;

/// Every queue's stats, following pages.
async fn all_stats(front: &Front) -> Result<Vec<qd_protocol::QueueStats>, LinkError> {
    let (mut out, mut after) = (Vec::new(), None);
    loop {
        match front.link.call(Request::Stats { after: after.clone(), limit: PAGE }).await? {
            Response::Stats { queues, next } => {
                out.extend(queues);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
            _ => return Ok(out),
        }
    }
}

/// Every queue's operator view (counts, oldest ready age), following pages.
async fn all_queues(front: &Front) -> Result<Vec<QueueInfo>, LinkError> {
    let (mut out, mut after) = (Vec::new(), None);
    loop {
        match front.link.call(Request::Queues { after: after.clone(), limit: PAGE }).await? {
            Response::Queues { queues, next } => {
                out.extend(queues);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
            _ => return Ok(out),
        }
    }
}

/// Every job of `queue` in `state`, following pages.
async fn all_jobs(
    front: &Front,
    queue: &str,
    state: JobState,
) -> Result<Vec<JobSummary>, LinkError> {
    let (mut out, mut cursor) = (Vec::new(), None);
    loop {
        let request = Request::Jobs { queue: queue.to_owned(), state, cursor, limit: PAGE };
        match front.link.call(request).await? {
            Response::Jobs { jobs, next } => {
                out.extend(jobs);
                match next {
                    Some(n) => cursor = Some(n),
                    None => return Ok(out),
                }
            }
            _ => return Ok(out),
        }
    }
}

/// Sends `make(chunk)` for the ids in chunks.
async fn in_chunks(
    front: &Front,
    ids: &[JobId],
    make: impl Fn(Vec<JobId>) -> Request,
) -> Result<(), LinkError> {
    for chunk in ids.chunks(CHUNK) {
        front.link.call(make(chunk.to_vec())).await?;
    }
    Ok(())
}

/// `INFO`: the shape Faktory's clients read (`faktory.queues`, `faktory.tasks.*.size`,
/// totals, `server.faktory_version`). `description` says "Faktory" and the version is a
/// 1.x, so clients that run Enterprise tests only against Faktory Enterprise skip them;
/// qd names itself in `server.qd_version`.
pub async fn info(front: &Front) -> Reply {
    match info_json(front).await {
        Ok(v) => Reply::json(&v),
        Err(e) => link_error(e),
    }
}

async fn info_json(front: &Front) -> Result<Value, LinkError> {
    let stats = all_stats(front).await?;
    let mut queues = serde_json::Map::new();
    let (mut scheduled, mut retries, mut dead, mut working) = (0u64, 0u64, 0u64, 0u64);
    let (mut processed, mut failures, mut enqueued) = (0u64, 0u64, 0u64);
    for q in &stats {
        if q.ready > 0 || front.is_visible(&q.queue) {
            queues.insert(q.queue.clone(), Value::from(q.ready));
        }
        if q.delayed > 0 {
            for j in all_jobs(front, &q.queue, JobState::Delayed).await? {
                if j.attempts_used == 0 {
                    scheduled += 1;
                } else {
                    retries += 1;
                }
            }
        }
        dead += q.dead;
        working += q.active;
        processed += q.completed_total;
        failures += q.failed_total;
        enqueued += q.ready;
    }
    let now = job::now_ms();
    let clock = job::format_time(now);
    let utc_time = clock.get(11..19).unwrap_or("00:00:00");
    let size = |n: u64| json!({ "size": n });
    Ok(json!({
        "now": clock,
        "server_utc_time": format!("{utc_time} UTC"),
        "faktory": {
            "queues": queues,
            "sets": { "scheduled": scheduled, "retries": retries, "dead": dead, "working": working },
            "tasks": {
                "Scheduled": size(scheduled),
                "Retries": size(retries),
                "Dead": size(dead),
                "Busy": { "size": working, "reaped": 0 },
                "Workers": { "size": front.workers(), "reaped": 0 },
            },
            "total_failures": failures,
            "total_processed": processed,
            "total_enqueued": enqueued,
            "total_queues": queues.len(),
        },
        "server": {
            "description": "Faktory",
            "faktory_version": super::FAKTORY_VERSION,
            "qd_version": env!("CARGO_PKG_VERSION"),
            // At least 1: a client that checks "the server has been up" right after
            // starting it must not read 0.
            "uptime": front.uptime_secs().max(1),
            "connections": front.connections(),
            "command_count": front.command_count(),
            "used_memory_mb": 0,
        },
    }))
}

/// `FLUSH`: deletes every waiting, scheduled and dead job of every queue (jobs a worker
/// holds are left to finish), and forgets the queues INFO lists.
pub async fn flush(front: &Front) -> Reply {
    let result: Result<(), LinkError> = async {
        for q in all_stats(front).await? {
            let mut ids = Vec::new();
            for state in [JobState::Ready, JobState::Delayed, JobState::Dead] {
                ids.extend(all_jobs(front, &q.queue, state).await?.into_iter().map(|j| j.id));
            }
            in_chunks(front, &ids, |ids| Request::Remove { ids }).await?;
            front.forget_queue(&q.queue);
        }
        Ok(())
    }
    .await;
    result.map_or_else(link_error, |()| Reply::Ok)
}

/// `QUEUE PAUSE|RESUME|REMOVE name... | *`, and `QUEUE LATENCY name...`.
pub async fn queue(front: &Front, args: &str) -> Reply {
    let mut words = args.split_whitespace();
    let op = words.next().unwrap_or_default().to_ascii_uppercase();
    let mut names: Vec<String> = words.map(str::to_owned).collect();
    if names.is_empty() {
        return Reply::err("QUEUE needs an operation and queue names (or *)");
    }
    if op == "LATENCY" {
        return latency(front, &names).await;
    }
    if names.iter().any(|n| n == "*") {
        names = match all_stats(front).await {
            Ok(stats) => stats.into_iter().map(|q| q.queue).collect(),
            Err(e) => return link_error(e),
        };
    }
    let result = async {
        for name in names {
            match op.as_str() {
                "PAUSE" => front.link.call(Request::Pause { queue: name }).await.map(drop)?,
                "RESUME" => front.link.call(Request::Resume { queue: name }).await.map(drop)?,
                _ => {
                    let ids: Vec<_> = all_jobs(front, &name, JobState::Ready)
                        .await?
                        .into_iter()
                        .map(|j| j.id)
                        .collect();
                    in_chunks(front, &ids, |ids| Request::Remove { ids }).await?;
                    front.forget_queue(&name);
                }
            }
        }
        Ok::<(), LinkError>(())
    };
    match op.as_str() {
        "PAUSE" | "RESUME" | "REMOVE" => result.await.map_or_else(link_error, |()| Reply::Ok),
        other => Reply::err(format!(
            "QUEUE {other} is not served here; use PAUSE, RESUME, REMOVE or LATENCY"
        )),
    }
}

/// `QUEUE LATENCY q1 q2...` (Faktory 1.9.2): `{"q1":seconds,...}`, how long each queue's
/// oldest ready job has waited, in (fractional) seconds; 0 for a queue with none ready or
/// unknown. qd counts from when the job became ready (its run time), which for a job that
/// was never delayed is when it was pushed, as in Faktory.
async fn latency(front: &Front, names: &[String]) -> Reply {
    if names.iter().any(|n| n == "*") {
        return Reply::err("QUEUE LATENCY does not support wildcards; name the queues");
    }
    let queues = match all_queues(front).await {
        Ok(queues) => queues,
        Err(e) => return link_error(e),
    };
    let mut out = serde_json::Map::new();
    for name in names {
        let age_ms = queues
            .iter()
            .find(|q| q.name == *name)
            .and_then(|q| q.oldest_ready_age_ms)
            .unwrap_or(0);
        // Fractional seconds; an f64 keeps any realistic age to the millisecond.
        #[allow(clippy::cast_precision_loss)]
        out.insert(name.clone(), json!(age_ms as f64 / 1000.0));
    }
    Reply::json(&Value::Object(out))
}

#[derive(Debug, Deserialize)]
struct Mutation {
    cmd: String,
    target: String,
    #[serde(default)]
    filter: Option<Filter>,
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    jids: Option<Vec<String>>,
    #[serde(default)]
    jobtype: Option<String>,
    #[serde(default)]
    regexp: Option<String>,
}

/// `MUTATE {"cmd","target","filter"}`: `clear`, `discard`, `requeue` and `kill` over the
/// scheduled, retries and dead sets, with Faktory's filters (jids first; else jobtype
/// and a Redis glob over the job's JSON).
pub async fn mutate(front: &Front, args: &str) -> Reply {
    let m: Mutation = match parse(args) {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    let (state, failed) = match m.target.as_str() {
        "scheduled" => (JobState::Delayed, Some(false)),
        "retries" => (JobState::Delayed, Some(true)),
        "dead" => (JobState::Dead, None),
        other => {
            return Reply::err(format!("unknown target {other:?}: use scheduled, retries or dead"))
        }
    };
    if !matches!(m.cmd.as_str(), "clear" | "discard" | "requeue" | "kill") {
        return Reply::err(format!(
            "unknown mutate operation {:?}: use clear, discard, requeue or kill",
            m.cmd
        ));
    }
    if m.cmd == "kill" && state == JobState::Dead {
        // Killing what is already dead changes nothing, as in Faktory.
        return Reply::Ok;
    }
    // `clear` ignores the filter, as in Faktory.
    let filter = if m.cmd == "clear" { Filter::default() } else { m.filter.unwrap_or_default() };
    let result: Result<(), LinkError> = async {
        let mut by_queue: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
        for q in all_stats(front).await? {
            let count = if state == JobState::Dead { q.dead } else { q.delayed };
            if count == 0 {
                continue;
            }
            for j in all_jobs(front, &q.queue, state).await? {
                if failed.is_some_and(|f| f != (j.attempts_used > 0)) {
                    continue;
                }
                if matches(front, &filter, &j).await? {
                    by_queue.entry(j.queue.clone()).or_default().push(j.id);
                }
            }
        }
        for (queue, ids) in by_queue {
            match (m.cmd.as_str(), state) {
                ("requeue", JobState::Dead) => {
                    let queue = queue.clone();
                    in_chunks(front, &ids, |ids| Request::RetryDead { queue: queue.clone(), ids })
                        .await?
                }
                ("requeue", _) => in_chunks(front, &ids, |ids| Request::Promote { ids }).await?,
                ("kill", _) => in_chunks(front, &ids, |ids| Request::Kill { ids }).await?,
                _ => in_chunks(front, &ids, |ids| Request::Remove { ids }).await?,
            }
        }
        Ok(())
    }
    .await;
    result.map_or_else(link_error, |()| Reply::Ok)
}

/// Whether job `j` passes the filter. jids and globs read the job's payload.
async fn matches(front: &Front, filter: &Filter, j: &JobSummary) -> Result<bool, LinkError> {
    let needs_payload = filter.jids.is_some() || filter.regexp.is_some();
    if filter.jids.is_none() {
        if let Some(t) = &filter.jobtype {
            if *t != j.name {
                return Ok(false);
            }
        }
    }
    if !needs_payload {
        return Ok(true);
    }
    let payload = match front.link.call(Request::Job { id: j.id }).await {
        Ok(Response::Job { job }) => job.payload,
        Ok(_) | Err(LinkError::Refused(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some(jids) = &filter.jids {
        let jid = job::jid_and_retry(&payload).map(|(jid, _)| jid);
        return Ok(jid.is_some_and(|jid| jids.contains(&jid)));
    }
    let pattern = filter.regexp.as_deref().unwrap_or("*");
    Ok(glob(pattern.as_bytes(), &payload))
}

/// Redis's `MATCH` glob: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to quote the next byte.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == '['`; the position after the
/// class when it matches.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut i = p + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pattern[i] == c;
            i += 1;
        }
    }
    // An unclosed class matches like Redis: up to the end of the pattern.
    (hit != negate).then_some((i + 1).min(pattern.len()))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn redis_globs() {
        let g = |p: &str, t: &str| glob(p.as_bytes(), t.as_bytes());
        assert!(g("*", ""));
        assert!(g("*\"jobtype\":\"mail\"*", r#"{"jid":"x","jobtype":"mail","args":[]}"#));
        assert!(!g("*\"jobtype\":\"mail\"*", r#"{"jobtype":"mailer"}"#));
        assert!(g(r#"*\"args\":\[\"local\"\]*"#, r#"{"args":["local"],"jid":"1"}"#));
        assert!(!g(r#"*\"args\":\[\"local\"\]*"#, r#"{"args":["remote"]}"#));
        assert!(g("h?llo", "hello") && g("h[ae]llo", "hallo") && !g("h[^e]llo", "hello"));
        assert!(g("h[a-c]llo", "hbllo") && !g("h[a-c]llo", "hdllo"));
        assert!(g("a*b*c", "axxbyyc") && !g("a*b*c", "axxbyy"));
    }
}
