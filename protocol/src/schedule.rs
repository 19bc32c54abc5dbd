//! The vocabulary of named schedules: when a schedule fires ([`ScheduleSpec`]), what an
//! operator sets ([`Schedule`]: a name, a spec and a job template) and what the server
//! lists ([`ScheduleInfo`]).
//!
//! These are plain data. What can be checked without a cron parser or a time-zone database
//! is checked here ([`Schedule::validate`]: the name, the queue, the template, the interval),
//! so a client can refuse bad input before it costs a round trip; the server parses the cron
//! expression and the zone name itself and refuses what does not parse, or never fires.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::types::{validate_queue_name, NewJob};

/// Longest schedule name, in bytes.
pub const MAX_SCHEDULE_NAME: usize = 128;
/// Longest cron expression or time-zone name, in bytes.
pub const MAX_CRON_TEXT: usize = 256;
/// Shortest interval of an [`ScheduleSpec::Every`] schedule, in ms (cron's granularity is
/// one second too).
pub const MIN_EVERY_MS: u64 = 1_000;

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleSpec {
    /// A cron expression with an optional leading seconds field (`sec min hour dom month
    /// dow`, or the classic five fields, which fire at second 0), evaluated in `tz`, an
    /// IANA zone name such as `Europe/Berlin` or `UTC`.
    Cron { expr: String, tz: String },
    /// Every `every_ms` milliseconds, counted from when this spec was set: the first fire
    /// is one interval after the upsert that set it.
    Every { every_ms: u64 },
}

/// A named schedule as an operator sets it: every fire adds `job` to `queue`.
///
/// The template's idempotency key must be unset: each fire's job gets the key
/// `schedule:<name>:<fire time in unix ms>`, which is what keeps a fire from adding two
/// jobs when the server crashes around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// 1 to [`MAX_SCHEDULE_NAME`] bytes of letters, digits, `.`, `_`, `:` or `-`.
    pub name: String,
    pub spec: ScheduleSpec,
    pub queue: String,
    pub job: NewJob,
}

impl Schedule {
    /// Checks what can be checked without a cron parser: the name, the queue, the template,
    /// the interval and the lengths of the cron texts.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_schedule_name(&self.name)?;
        validate_queue_name(&self.queue)?;
        self.job.validate()?;
        if self.job.options.key.is_some() {
            return Err(invalid(format!(
                "schedule {:?}: its job template sets an idempotency key; leave it unset, \
                 each fire sets the key schedule:<name>:<fire ms> itself",
                self.name
            )));
        }
        match &self.spec {
            ScheduleSpec::Every { every_ms } if *every_ms < MIN_EVERY_MS => Err(invalid(format!(
                "schedule {:?}: an interval of {every_ms} ms is too short; use at least \
                 {MIN_EVERY_MS} ms",
                self.name
            ))),
            ScheduleSpec::Cron { expr, tz }
                if expr.len() > MAX_CRON_TEXT || tz.len() > MAX_CRON_TEXT =>
            {
                Err(invalid(format!(
                    "schedule {:?}: a cron expression or zone name is longer than \
                     {MAX_CRON_TEXT} bytes",
                    self.name
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Checks a schedule name: 1 to [`MAX_SCHEDULE_NAME`] bytes of `[A-Za-z0-9._:-]`.
pub fn validate_schedule_name(name: &str) -> Result<(), WireError> {
    let ok_len = !name.is_empty() && name.len() <= MAX_SCHEDULE_NAME;
    let ok_bytes =
        name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok_len && ok_bytes {
        return Ok(());
    }
    let shown: String = name.chars().take(40).collect();
    Err(invalid(format!(
        "schedule name {shown:?} is invalid: use 1 to {MAX_SCHEDULE_NAME} bytes of letters, \
         digits, '.', '_', ':' or '-'"
    )))
}

fn invalid(message: String) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

/// One schedule as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    pub schedule: Schedule,
    /// When the current spec was set (unix ms); an `Every` schedule counts from here.
    pub anchor_ms: u64,
    /// The last time it fired (the tick's time, unix ms), if it has.
    pub last_fire_ms: Option<u64>,
    /// When it fires next; `None` if it never will again (a cron expression whose last
    /// matching time has passed).
    pub next_fire_ms: Option<u64>,
}

impl ScheduleInfo {
    pub fn new(
        schedule: Schedule,
        anchor_ms: u64,
        last_fire_ms: Option<u64>,
        next_fire_ms: Option<u64>,
    ) -> Self {
        ScheduleInfo { schedule, anchor_ms, last_fire_ms, next_fire_ms }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::types::JobOptions;

    fn schedule(spec: ScheduleSpec) -> Schedule {
        Schedule {
            name: "nightly".into(),
            spec,
            queue: "reports".into(),
            job: NewJob { name: "r".into(), payload: Bytes::new(), options: JobOptions::default() },
        }
    }

    #[test]
    fn validation() {
        assert!(schedule(ScheduleSpec::Every { every_ms: 1_000 }).validate().is_ok());
        let cron = ScheduleSpec::Cron { expr: "0 0 3 * * *".into(), tz: "UTC".into() };
        assert!(schedule(cron).validate().is_ok());
        assert!(schedule(ScheduleSpec::Every { every_ms: 999 }).validate().is_err());
        let mut bad = schedule(ScheduleSpec::Every { every_ms: 5_000 });
        bad.name = "has space".into();
        assert!(bad.validate().is_err());
        let mut bad = schedule(ScheduleSpec::Every { every_ms: 5_000 });
        bad.job.options.key = Some("k".into());
        assert!(bad.validate().unwrap_err().message.contains("leave it unset"));
        let mut bad = schedule(ScheduleSpec::Every { every_ms: 5_000 });
        bad.queue = "a/b".into();
        assert_eq!(bad.validate().unwrap_err().code, ErrorCode::InvalidQueueName);
    }
}
