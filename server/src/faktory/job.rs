//! A Faktory job as qd stores it, and back.
//!
//! The job JSON a client pushes is kept whole as the qd payload (with `queue`, `retry` and
//! `created_at` filled in when missing, as Faktory does), so a client gets back what it
//! pushed. qd's own fields are derived from it:
//!
//! | Faktory | qd |
//! |---|---|
//! | `jobtype` | job name |
//! | `jid` | idempotency key (SHA-256 hex when longer than qd's 256-byte key) |
//! | `retry` N (missing: 25) | N >= 1: N + 1 attempts; 0 and negative: 1 attempt (FAIL then discards or kills, see `commands.rs`) |
//! | `reserve_for` s (0 or missing: 1800; under 60 raised to 60; over 86,400 refused) | lease |
//! | `at` (RFC 3339) | delay from now |
//! | `priority` | ignored, as Faktory does: FIFO |
//!
//! On the way out, [`outgoing`] adds `enqueued_at` and, on a retry, `failure`, rebuilt from
//! qd's attempt count and the last error it recorded (which FAIL wrote as JSON, [`fail_text`]).
//! Validation errors use Faktory's own texts: the clients' test suites compare them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use qd_protocol::{Backoff, JobOptions, NewJob, MAX_ATTEMPTS, MAX_ERROR_TEXT, MAX_KEY};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Retries of a job that does not say (Faktory's `RetryPolicyDefault`).
pub const DEFAULT_RETRY: i64 = 25;
/// Lease of a job that does not say, in seconds.
pub const DEFAULT_RESERVE_S: u64 = 1800;
/// Shortest and longest lease Faktory grants, in seconds.
pub const MIN_RESERVE_S: u64 = 60;
pub const MAX_RESERVE_S: u64 = 86_400;
/// Backtrace lines a FAIL keeps (Faktory cuts to 50).
const MAX_BACKTRACE: usize = 50;

/// A pushed job, checked and mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub jid: String,
    pub queue: String,
    pub job: NewJob,
}

/// Checks one job object and maps it onto a qd job. `now_ms` is unix ms. The error is the
/// text Faktory sends after `-ERR `.
pub fn incoming(value: Value, now_ms: u64) -> Result<Pushed, String> {
    let Value::Object(mut job) = value else {
        return Err("invalid JSON: a job must be a JSON object".to_owned());
    };
    let jid = match job.get("jid") {
        Some(Value::String(s)) if s.len() >= 8 => s.clone(),
        _ => return Err("jobs must have a reasonable jid parameter".to_owned()),
    };
    let jobtype = match job.get("jobtype") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("jobs must have a jobtype parameter".to_owned()),
    };
    if matches!(job.get("args"), None | Some(Value::Null)) {
        return Err("jobs must have an args parameter".to_owned());
    }
    let reserve_s = match job.get("reserve_for") {
        None | Some(Value::Null) => DEFAULT_RESERVE_S,
        Some(v) => match v.as_u64() {
            Some(0) => DEFAULT_RESERVE_S,
            Some(s) if s > MAX_RESERVE_S => {
                return Err("jobs cannot be reserved for more than one day".to_owned())
            }
            Some(s) => s.max(MIN_RESERVE_S),
            None => return Err("reserve_for must be a number of seconds".to_owned()),
        },
    };
    let queue = match job.get("queue") {
        None | Some(Value::Null) => "default".to_owned(),
        Some(Value::String(q)) if q.is_empty() => "default".to_owned(),
        Some(Value::String(q)) => q.clone(),
        Some(other) => other.to_string(),
    };
    let valid_queue = queue.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid_queue {
        return Err(format!(
            "cannot get \"{queue}\" queue: queue names must match \\A[a-zA-Z0-9._-]+\\z"
        ));
    }
    let delay_ms = match job.get("at") {
        None | Some(Value::Null) => 0,
        Some(Value::String(at)) if at.is_empty() => 0,
        Some(Value::String(at)) => match parse_time(at) {
            Some(at_ms) => at_ms.saturating_sub(now_ms),
            None => {
                return Err(format!("invalid timestamp for 'at': {at:?}: not an RFC 3339 time"))
            }
        },
        Some(other) => return Err(format!("invalid timestamp for 'at': {other}")),
    };
    let retry = match job.get("retry") {
        None | Some(Value::Null) => DEFAULT_RETRY,
        Some(v) => v.as_i64().ok_or("retry must be a whole number")?,
    };
    let attempts = if retry >= 1 { (retry + 1).min(i64::from(MAX_ATTEMPTS)) as u32 } else { 1 };

    // Filled in as Faktory's server does, so what a worker fetches is complete.
    job.insert("queue".into(), Value::String(queue.clone()));
    job.insert("retry".into(), Value::from(retry));
    if !matches!(job.get("created_at"), Some(Value::String(s)) if !s.is_empty()) {
        job.insert("created_at".into(), Value::String(format_time(now_ms)));
    }
    let key = if jid.len() <= MAX_KEY {
        jid.clone()
    } else {
        Sha256::digest(jid.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let options = JobOptions {
        priority: 0,
        delay_ms,
        attempts,
        // Used only when a lease expires: a FAIL names its own delay (Faktory's formula).
        // Exponential from 15 s up to about 4 days is the nearest qd policy.
        backoff: Backoff::Exponential { base_ms: 15_000, max_ms: 4 * 86_400_000, jitter_pct: 0 },
        lease_ms: reserve_s * 1000,
        key: Some(key),
        ..JobOptions::default()
    };
    let payload = Bytes::from(serde_json::to_vec(&Value::Object(job)).unwrap_or_default());
    Ok(Pushed { jid, queue, job: NewJob { name: jobtype, payload, options } })
}

/// The delay before retry number `count + 1` (`count` failures so far, minus one: 0 after
/// the first failure), in ms: Faktory's `count^4 + 15 + rand(30) * (count + 1)` seconds.
/// `random` is any random number (it supplies `rand(30)`).
pub fn backoff_ms(count: u32, random: u32) -> u64 {
    let c = u64::from(count);
    let secs = c.saturating_pow(4) + 15 + u64::from(random % 30) * (c + 1);
    secs.saturating_mul(1000)
}

/// What a FAIL says, as the error text qd records for the failed try: compact JSON with
/// `errtype`, `message` and up to 50 `backtrace` lines, cut to fit qd's error text limit
/// (backtrace lines go first, then the message is shortened).
pub fn fail_text(errtype: &str, message: &str, backtrace: &[String]) -> String {
    let mut lines: Vec<&String> = backtrace.iter().take(MAX_BACKTRACE).collect();
    let mut message = message.to_owned();
    loop {
        let mut v = json!({"errtype": errtype, "message": message});
        if !lines.is_empty() {
            v["backtrace"] = json!(lines);
        }
        let text = v.to_string();
        if text.len() <= MAX_ERROR_TEXT {
            return text;
        }
        if lines.pop().is_none() {
            let keep = message.len().saturating_sub(text.len() - MAX_ERROR_TEXT + 8);
            let mut cut = keep.min(message.len());
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
    }
}

/// The record of earlier failures, for [`outgoing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureInfo {
    /// When the first failure happened, unix ms.
    pub first_failed_ms: u64,
    /// The last error text qd recorded.
    pub last_error: String,
}

/// The job JSON a FETCH answers: the stored payload, with `enqueued_at` and, from the
/// second try on, `failure` (Faktory's keys: `retry_count` counts failures from 0,
/// `remaining` the retries left).
pub fn outgoing(
    payload: &[u8],
    attempt: u32,
    max_attempts: u32,
    now_ms: u64,
    failure: Option<&FailureInfo>,
) -> Vec<u8> {
    let Ok(Value::Object(mut job)) = serde_json::from_slice::<Value>(payload) else {
        // Not a Faktory job (added through qd's own protocol): hand it over as it is.
        return payload.to_vec();
    };
    job.insert("enqueued_at".into(), Value::String(format_time(now_ms)));
    if attempt > 1 {
        let mut f = Map::new();
        let first = failure.map_or(now_ms, |f| f.first_failed_ms);
        f.insert("failed_at".into(), Value::String(format_time(first)));
        f.insert("next_at".into(), Value::String(format_time(now_ms)));
        let (errtype, message, backtrace) = match failure {
            Some(info) => parse_error(&info.last_error),
            None => ("unknown".to_owned(), String::new(), Vec::new()),
        };
        f.insert("message".into(), Value::String(message));
        f.insert("errtype".into(), Value::String(errtype));
        if !backtrace.is_empty() {
            f.insert("backtrace".into(), json!(backtrace));
        }
        f.insert("retry_count".into(), Value::from(attempt - 2));
        f.insert("remaining".into(), Value::from(max_attempts.saturating_sub(attempt - 1)));
        job.insert("failure".into(), Value::Object(f));
    }
    serde_json::to_vec(&Value::Object(job)).unwrap_or_default()
}

/// The errtype, message and backtrace of a recorded error: one a FAIL wrote, or qd's own
/// (a lease that ran out is Faktory's `ReservationExpired`).
fn parse_error(text: &str) -> (String, String, Vec<String>) {
    if let Ok(Value::Object(e)) = serde_json::from_str::<Value>(text) {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let backtrace = e
            .get("backtrace")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        return (s("errtype"), s("message"), backtrace);
    }
    if text.contains("lease") {
        return ("ReservationExpired".into(), "Faktory job reservation expired".into(), vec![]);
    }
    ("qd".into(), text.to_owned(), vec![])
}

/// The `jid` and `retry` of a stored payload (`retry` as pushed, default 25).
pub fn jid_and_retry(payload: &[u8]) -> Option<(String, i64)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let jid = v.get("jid")?.as_str()?.to_owned();
    let retry = v.get("retry").and_then(Value::as_i64).unwrap_or(DEFAULT_RETRY);
    Some((jid, retry))
}

/// Unix ms now, by the wall clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 in UTC with nanoseconds, as Go's `RFC3339Nano` writes it.
pub fn format_time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Unix ms of an RFC 3339 time (`Z` or a numeric offset; fractions optional).
pub fn parse_time(s: &str) -> Option<u64> {
    // humantime reads only UTC (`Z`); apply a numeric offset ourselves.
    let (base, offset_s): (String, i64) =
        match s.len().checked_sub(6).filter(|&i| s.is_char_boundary(i)).map(|i| s.split_at(i)) {
            Some((head, off))
                if (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':' =>
            {
                let h: i64 = off[1..3].parse().ok()?;
                let m: i64 = off[4..6].parse().ok()?;
                let sign = if off.starts_with('-') { -1 } else { 1 };
                (format!("{head}Z"), sign * (h * 3600 + m * 60))
            }
            _ => (s.to_owned(), 0),
        };
    let t = humantime::parse_rfc3339_weak(base.trim_end_matches('Z')).ok()?;
    let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64 - offset_s * 1000;
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(v: Value) -> Result<Pushed, String> {
        incoming(v, 1_700_000_000_000)
    }

    #[test]
    fn faktory_texts_for_bad_jobs() {
        let e = |v| push(v).unwrap_err();
        assert_eq!(
            e(json!({"jid":"short","jobtype":"x","args":[]})),
            "jobs must have a reasonable jid parameter"
        );
        assert_eq!(
            e(json!({"jid":"12345678","jobtype":"","args":[]})),
            "jobs must have a jobtype parameter"
        );
        assert_eq!(e(json!({"jid":"12345678","jobtype":"x"})), "jobs must have an args parameter");
        assert_eq!(
            e(json!({"jid":"12345678","jobtype":"x","args":[],"reserve_for":86401})),
            "jobs cannot be reserved for more than one day"
        );
        assert!(e(json!({"jid":"12345678","jobtype":"x","args":[],"queue":"a b"}))
            .starts_with("cannot get \"a b\" queue"));
        assert!(e(json!({"jid":"12345678","jobtype":"x","args":[],"at":"soon"}))
            .starts_with("invalid timestamp for 'at'"));
    }

    #[test]
    fn retry_reserve_for_and_at_map_onto_qd_options() {
        let p = push(json!({"jid":"12345678","jobtype":"mail","args":[1]})).unwrap();
        assert_eq!((p.queue.as_str(), p.job.name.as_str()), ("default", "mail"));
        assert_eq!(p.job.options.attempts, 26, "retry 25 by default: 26 runs");
        assert_eq!(p.job.options.lease_ms, 1_800_000);
        assert_eq!(p.job.options.key.as_deref(), Some("12345678"));
        let stored: Value = serde_json::from_slice(&p.job.payload).unwrap();
        assert_eq!(stored["retry"], 25);
        assert!(stored["created_at"].is_string());

        let p = push(json!({"jid":"12345678","jobtype":"m","args":[],"retry":0,"reserve_for":5}))
            .unwrap();
        assert_eq!((p.job.options.attempts, p.job.options.lease_ms), (1, 60_000));
        let p = push(json!({"jid":"12345678","jobtype":"m","args":[],"retry":-1})).unwrap();
        assert_eq!(p.job.options.attempts, 1);
        let p = push(json!({"jid":"12345678","jobtype":"m","args":[],"retry":3,
            "at":"2023-11-14T22:13:30Z"}))
        .unwrap();
        assert_eq!(p.job.options.attempts, 4);
        assert_eq!(p.job.options.delay_ms, 10_000);
    }

    #[test]
    fn times_with_offsets_and_fractions() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01.000000000Z"), Some(1000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(&format_time(1_700_000_000_123)), Some(1_700_000_000_123));
    }

    #[test]
    fn backoff_is_faktorys_polynomial() {
        assert_eq!(backoff_ms(0, 0), 15_000);
        assert_eq!(backoff_ms(0, 29), 44_000);
        assert_eq!(backoff_ms(2, 0), 31_000);
        assert_eq!(backoff_ms(4, 30 + 29), 271_000 + 145_000);
    }

    #[test]
    fn failure_is_rebuilt_from_attempts_and_the_last_error() {
        let payload = br#"{"jid":"12345678","jobtype":"m","args":[],"retry":3}"#;
        let first = outgoing(payload, 1, 4, 1000, None);
        let v: Value = serde_json::from_slice(&first).unwrap();
        assert!(v.get("failure").is_none());
        let info = FailureInfo {
            first_failed_ms: 500,
            last_error: fail_text("RuntimeError", "boom", &["a.rb:1".into()]),
        };
        let v: Value = serde_json::from_slice(&outgoing(payload, 2, 4, 1000, Some(&info))).unwrap();
        let f = &v["failure"];
        assert_eq!((f["retry_count"].as_u64(), f["remaining"].as_u64()), (Some(0), Some(3)));
        assert_eq!(
            (f["errtype"].as_str(), f["message"].as_str()),
            (Some("RuntimeError"), Some("boom"))
        );
        assert_eq!(f["backtrace"][0], "a.rb:1");
        let v: Value = serde_json::from_slice(&outgoing(payload, 4, 4, 1000, Some(&info))).unwrap();
        assert_eq!(
            (v["failure"]["retry_count"].as_u64(), v["failure"]["remaining"].as_u64()),
            (Some(2), Some(1))
        );
    }

    #[test]
    fn long_failures_fit_qds_error_text() {
        let lines: Vec<String> =
            (0..100).map(|i| format!("frame {i} {}", "x".repeat(80))).collect();
        let text = fail_text("E", &"m".repeat(10_000), &lines);
        assert!(text.len() <= MAX_ERROR_TEXT, "{}", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errtype"], "E");
    }
}
