//! What a producer builds and a worker reads: the [`Job`] builder (turned into the wire's
//! `NewJob`), [`Backoff`] helpers that take `Duration`s, [`LeasedJobExt`] for reading a
//! leased job's JSON payload, and [`AsLease`], the "anything that carries a lease" the
//! ack/nack/touch calls accept.
//!
//! Validation itself lives in `qd_protocol` (the server runs the same checks); this file only
//! calls it so that bad input fails before a round trip.

use std::time::Duration;

use bytes::Bytes;
use qd_protocol::message::LeaseRef;
use qd_protocol::{JobOptions, LeasedJob, NewJob, Unique};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// Milliseconds of a duration, saturating instead of wrapping for absurd values.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long the server waits before retrying a failed job. Converts into the wire's
/// [`qd_protocol::Backoff`], so either can be passed to [`Job::backoff`].
///
/// ```
/// use std::time::Duration;
/// use qd_client::Backoff;
/// // 2 s, 4 s, 8 s, ... capped at 5 min, each wait shortened by up to 20% at random.
/// let b = Backoff::exponential(Duration::from_secs(2)).max(Duration::from_secs(300)).jitter(20);
/// # let _ = b;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff(qd_protocol::Backoff);

impl Backoff {
    /// The same wait before every retry.
    pub fn fixed(delay: Duration) -> Self {
        Backoff(qd_protocol::Backoff::Fixed { delay_ms: millis(delay) })
    }

    /// Retry at once.
    pub fn none() -> Self {
        Backoff(qd_protocol::Backoff::NONE)
    }

    /// `base`, then twice that, and so on, capped at one hour (see [`Backoff::max`]), no
    /// jitter (see [`Backoff::jitter`]).
    pub fn exponential(base: Duration) -> Self {
        Backoff(qd_protocol::Backoff::exponential_ms(millis(base)))
    }

    /// Caps an exponential backoff. No effect on a fixed one.
    pub fn max(self, cap: Duration) -> Self {
        match self.0 {
            qd_protocol::Backoff::Exponential { base_ms, jitter_pct, .. } => {
                Backoff(qd_protocol::Backoff::Exponential {
                    base_ms,
                    max_ms: millis(cap),
                    jitter_pct,
                })
            }
            fixed => Backoff(fixed),
        }
    }

    /// Shortens each exponential wait by up to `pct` percent at random (0 to 100), so that
    /// jobs failing together do not retry in lockstep. No effect on a fixed backoff.
    pub fn jitter(self, pct: u8) -> Self {
        match self.0 {
            qd_protocol::Backoff::Exponential { base_ms, max_ms, .. } => {
                Backoff(qd_protocol::Backoff::Exponential { base_ms, max_ms, jitter_pct: pct })
            }
            fixed => Backoff(fixed),
        }
    }
}

impl From<Backoff> for qd_protocol::Backoff {
    fn from(b: Backoff) -> Self {
        b.0
    }
}

/// A job to add: its name (type), payload bytes and options. Build one with [`Job::new`] or
/// [`Job::json`], then chain options; every option has the server's default until set.
///
/// ```
/// use std::time::Duration;
/// use qd_client::{Backoff, Job};
/// let job = Job::new("welcome", r#"{"user":42}"#)
///     .attempts(5)
///     .backoff(Backoff::exponential(Duration::from_secs(2)))
///     .delay(Duration::from_secs(10))
///     .priority(-1)
///     .lease(Duration::from_secs(60))
///     .key("welcome-42");
/// # let _ = job;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    inner: NewJob,
}

impl Job {
    /// A job of type `name` carrying `payload` (opaque to qd).
    pub fn new(name: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Job {
            inner: NewJob {
                name: name.into(),
                payload: payload.into(),
                options: JobOptions::default(),
            },
        }
    }

    /// A job whose payload is `value` as JSON; read it back with [`LeasedJobExt::json`].
    pub fn json<T: Serialize + ?Sized>(name: impl Into<String>, value: &T) -> Result<Self, Error> {
        Ok(Job::new(name, serde_json::to_vec(value)?))
    }

    /// Maximum number of tries (1 to 1000; default 3).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.inner.options.attempts = attempts;
        self
    }

    /// Wait between tries (default: exponential from 1 s with 20% jitter, capped at 1 h).
    pub fn backoff(mut self, backoff: impl Into<qd_protocol::Backoff>) -> Self {
        self.inner.options.backoff = backoff.into();
        self
    }

    /// Do not run before `delay` from now (millisecond precision).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.inner.options.delay_ms = millis(delay);
        self
    }

    /// Lower runs first; FIFO within one priority (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.inner.options.priority = priority;
        self
    }

    /// How long a worker may hold the job before it is presumed dead (100 ms to 1 day;
    /// default 30 s). The [`Worker`](crate::Worker) extends it while a handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.inner.options.lease_ms = millis(lease);
        self
    }

    /// Idempotency key: adding a job whose key is already pending in the queue returns the
    /// pending job's id instead of adding another. Makes retrying an add safe.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.inner.options.key = Some(key.into());
        self
    }

    /// Group (tenant) key: the queue's reserves take turns across groups, so one group's
    /// backlog cannot starve another's, and the queue may cap each group's concurrency and
    /// rate.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.inner.options.group = Some(group.into());
        self
    }

    /// How long a worker may run one try before it gives up and the try fails. The
    /// [`crate::Worker`] cancels the handler then; without it, the worker's own timeout
    /// applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner.options.timeout_ms = Some(millis(timeout));
        self
    }

    /// Discard the job, instead of running it late, if it has not started within `ttl` of
    /// being added.
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        self.inner.options.expires_in_ms = Some(millis(ttl));
        self
    }

    /// With [`Job::key`]: for `window` after a job with this key was added, whatever became
    /// of it, adding another returns the first one's id and adds nothing (throttle).
    pub fn unique_for(mut self, window: Duration) -> Self {
        self.inner.options.unique = Unique::Window { ms: millis(window) };
        self
    }

    /// With [`Job::key`]: while a job with this key has not started, adding another replaces
    /// its payload and restarts its delay from now (debounce), keeping one job.
    pub fn debounce(mut self) -> Self {
        self.inner.options.unique = Unique::Debounce;
        self
    }

    /// The job as it goes on the wire.
    pub fn as_new_job(&self) -> &NewJob {
        &self.inner
    }

    /// Checks name and options against the protocol's limits.
    pub fn validate(&self) -> Result<(), Error> {
        self.inner.validate().map_err(Error::invalid)
    }
}

impl From<Job> for NewJob {
    fn from(job: Job) -> Self {
        job.inner
    }
}

impl From<NewJob> for Job {
    fn from(inner: NewJob) -> Self {
        Job { inner }
    }
}

/// Reading a leased job's payload.
pub trait LeasedJobExt {
    /// The payload parsed as JSON (the counterpart of [`Job::json`]).
    fn json<T: DeserializeOwned>(&self) -> Result<T, Error>;
}

impl LeasedJobExt for LeasedJob {
    fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// Anything that carries a lease: a [`LeasedJob`] or a bare [`LeaseRef`]. `ack`, `nack` and
/// `touch` accept either, so a worker may keep just the 16-byte lease around.
pub trait AsLease {
    fn lease(&self) -> LeaseRef;
}

impl AsLease for LeasedJob {
    fn lease(&self) -> LeaseRef {
        LeaseRef { id: self.id, token: self.token }
    }
}

impl AsLease for LeaseRef {
    fn lease(&self) -> LeaseRef {
        *self
    }
}

impl<T: AsLease + ?Sized> AsLease for &T {
    fn lease(&self) -> LeaseRef {
        (**self).lease()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_options() {
        let job = Job::new("w", "p")
            .attempts(7)
            .backoff(Backoff::exponential(Duration::from_secs(2)).max(Duration::from_secs(60)))
            .delay(Duration::from_millis(1500))
            .priority(-3)
            .lease(Duration::from_secs(9))
            .key("k");
        let n: NewJob = job.into();
        assert_eq!(n.options.attempts, 7);
        assert_eq!(
            n.options.backoff,
            qd_protocol::Backoff::Exponential { base_ms: 2000, max_ms: 60_000, jitter_pct: 0 }
        );
        assert_eq!(n.options.delay_ms, 1500);
        assert_eq!(n.options.priority, -3);
        assert_eq!(n.options.lease_ms, 9000);
        assert_eq!(n.options.key.as_deref(), Some("k"));
        assert_eq!(&n.payload[..], b"p");
    }

    #[test]
    fn validation_catches_bad_options() {
        assert!(Job::new("w", "").validate().is_ok());
        assert!(Job::new("", "").validate().is_err());
        assert!(Job::new("w", "").attempts(0).validate().is_err());
        assert!(Job::new("w", "").lease(Duration::from_millis(1)).validate().is_err());
        let bad = Backoff::exponential(Duration::from_secs(10)).max(Duration::from_secs(1));
        assert!(Job::new("w", "").backoff(bad).validate().is_err());
    }

    #[test]
    fn json_round_trip() {
        let job: NewJob = Job::json("w", &serde_json::json!({"a": 1})).unwrap().into();
        let leased = LeasedJob::new(1, "q", job.name, job.payload, 9, 0);
        let v: serde_json::Value = leased.json().unwrap();
        assert_eq!(v["a"], 1);
        assert!(leased.json::<Vec<u8>>().is_err());
    }
}
