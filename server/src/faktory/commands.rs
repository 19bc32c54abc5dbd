//! The worker commands of Faktory's protocol: PUSH, PUSHB, FETCH, ACK, FAIL and BEAT, each
//! turned into the engine requests a qd client would send (through the front end's one
//! engine connection, `link.rs`), and its answer into Faktory's reply.
//!
//! PUSH and PUSHB answer `+OK` only after qd committed the job (fsync by default), like
//! any qd add. FAIL becomes a nack with Faktory's backoff as an explicit delay; `retry: 0`
//! becomes an ack (Faktory discards such a job on failure), a negative `retry` a nack that
//! dead-letters at once.

use std::collections::BTreeMap;

use qd_protocol::{validate_queue_name, ErrorCode, Request, Response, RetryHint};
use serde::Deserialize;
use serde_json::{json, Value};

use super::codec::Reply;
use super::job::{self, FailureInfo};
use super::link::{qd_jid, LinkError};
use super::Front;

/// How long a FETCH waits for a job when none is ready, as Faktory's server does.
const FETCH_WAIT_MS: u64 = 2000;

/// `-ERR` for an engine call that failed.
pub fn link_error(e: LinkError) -> Reply {
    Reply::err(e.to_string())
}

/// Parses a command's JSON argument, or the `-ERR` Faktory sends for bad JSON.
pub fn parse<T: for<'de> Deserialize<'de>>(args: &str) -> Result<T, Reply> {
    serde_json::from_str(args).map_err(|e| Reply::err(format!("invalid JSON: {e}")))
}

/// `PUSH {job}`.
pub async fn push(front: &Front, args: &str) -> Reply {
    let value: Value = match parse(args) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let pushed = match job::incoming(value, job::now_ms()) {
        Ok(p) => p,
        Err(text) => return Reply::err(text),
    };
    let queue = pushed.queue.clone();
    match front.link.call(Request::Add { queue: pushed.queue, jobs: vec![pushed.job] }).await {
        Ok(_) => {
            front.saw_queue(&queue);
            Reply::Ok
        }
        Err(e) => link_error(e),
    }
}

/// `PUSHB [{job}, ...]`: each job on its own, as in Faktory (one qd add per queue, so a
/// refused add fails the jobs of that queue only). Answers the map of refused jids to
/// their errors (`{}` when all went in).
pub async fn push_bulk(front: &Front, args: &str) -> Reply {
    let values: Vec<Value> = match parse(args) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let now = job::now_ms();
    let mut errors = serde_json::Map::new();
    let mut by_queue: BTreeMap<String, Vec<(String, qd_protocol::NewJob)>> = BTreeMap::new();
    for value in values {
        let jid = value.get("jid").and_then(Value::as_str).unwrap_or_default().to_owned();
        match job::incoming(value, now) {
            Ok(p) => by_queue.entry(p.queue).or_default().push((p.jid, p.job)),
            Err(text) => {
                errors.insert(jid, Value::String(text));
            }
        }
    }
    for (queue, jobs) in by_queue {
        let (jids, jobs): (Vec<String>, Vec<_>) = jobs.into_iter().unzip();
        match front.link.call(Request::Add { queue: queue.clone(), jobs }).await {
            Ok(_) => front.saw_queue(&queue),
            Err(e) => {
                let text = e.to_string();
                errors.extend(jids.into_iter().map(|j| (j, Value::String(text.clone()))));
            }
        }
    }
    Reply::json(&Value::Object(errors))
}

/// `FETCH q1 q2 ...`: the first ready job of the first queue that has one, waiting up to
/// 2 s; `$-1` when none came.
pub async fn fetch(front: &Front, args: &str) -> Reply {
    let queues: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    if queues.is_empty() {
        return Reply::err("must call fetch with at least one queue");
    }
    if let Some(e) = queues.iter().find_map(|q| validate_queue_name(q).err()) {
        return Reply::err(e.message);
    }
    let reserve = Request::Reserve { queues, max: 1, timeout_ms: FETCH_WAIT_MS };
    let job = match front.link.call(reserve).await {
        Ok(Response::Reserved { mut jobs }) if !jobs.is_empty() => jobs.swap_remove(0),
        Ok(_) => return Reply::Null,
        Err(e) => return link_error(e),
    };
    let now = job::now_ms();
    // From the second try on, `failure` is rebuilt from the errors qd recorded.
    let failure = if job.attempt > 1 {
        match front.link.call(Request::Job { id: job.id }).await {
            Ok(Response::Job { job: detail }) => detail.errors.first().map(|first| FailureInfo {
                first_failed_ms: first.at_ms,
                last_error: detail.errors.last().map(|e| e.message.clone()).unwrap_or_default(),
            }),
            _ => None,
        }
    } else {
        None
    };
    let body = job::outgoing(&job.payload, job.attempt, job.max_attempts, now, failure.as_ref());
    if job::jid_and_retry(&job.payload).is_none() {
        // A job added through qd's own protocol: give the Faktory worker a job it can run.
        let wrapped = json!({
            "jid": qd_jid(job.id),
            "jobtype": job.name,
            "queue": job.queue,
            "args": [String::from_utf8_lossy(&job.payload)],
            "created_at": job::format_time(job.created_at_ms),
            "enqueued_at": job::format_time(now),
        });
        return Reply::json(&wrapped);
    }
    Reply::Bulk(body)
}

#[derive(Deserialize)]
struct Ack {
    jid: String,
}

/// `ACK {"jid"}`. An unknown or expired jid is `+OK`, as in Faktory: the job is done or
/// will run again either way.
pub async fn ack(front: &Front, args: &str) -> Reply {
    let ack: Ack = match parse(args) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let Some(held) = front.link.take_lease(&ack.jid) else { return Reply::Ok };
    match front.link.call(Request::Ack { leases: vec![held.lease] }).await {
        Ok(_) => Reply::Ok,
        Err(e) => link_error(e),
    }
}

#[derive(Deserialize)]
struct Fail {
    jid: String,
    #[serde(default)]
    errtype: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    backtrace: Option<Vec<String>>,
}

/// `FAIL {"jid","errtype","message","backtrace"}`.
pub async fn fail(front: &Front, args: &str) -> Reply {
    let fail: Fail = match parse(args) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let not_found = || Reply::err(format!("Job not found {}", fail.jid));
    let Some(held) = front.link.take_lease(&fail.jid) else { return not_found() };
    let request = if held.retry == 0 {
        // Faktory discards a job with `retry: 0` when it fails: no retry, no dead set.
        Request::Ack { leases: vec![held.lease] }
    } else {
        let retry = if held.retry < 0 {
            RetryHint::Never
        } else {
            let mut r = [0u8; 4];
            let _ = getrandom::getrandom(&mut r);
            RetryHint::After { delay_ms: job::backoff_ms(held.attempt - 1, u32::from_le_bytes(r)) }
        };
        let error = job::fail_text(
            fail.errtype.as_deref().unwrap_or("unknown"),
            fail.message.as_deref().unwrap_or_default(),
            fail.backtrace.as_deref().unwrap_or_default(),
        );
        Request::Nack { lease: held.lease, error, retry }
    };
    match front.link.call(request).await {
        Ok(_) => Reply::Ok,
        Err(LinkError::Refused(e))
            if matches!(e.code, ErrorCode::NotFound | ErrorCode::LeaseLost) =>
        {
            not_found()
        }
        Err(e) => link_error(e),
    }
}

#[derive(Deserialize)]
struct Beat {
    wid: String,
}

/// `BEAT {"wid"}`: `+OK` while the worker should run, `{"state":"quiet"|"terminate"}` once
/// an operator asked it to stop (see `Front::signal`).
pub async fn beat(front: &Front, args: &str) -> Reply {
    let beat: Beat = match parse(args) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    match front.beat(&beat.wid) {
        None => Reply::Ok,
        Some(state) => Reply::json(&json!({ "state": state.as_str() })),
    }
}
