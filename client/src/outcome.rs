//! What a [`Worker`](crate::Worker) handler says happened: [`Outcome`] when the try went as
//! planned, [`JobError`] when it failed and how to go on. The worker turns each into one
//! request (ack, snooze, nack with a retry hint); this file only holds the vocabulary.
//!
//! Why a return value and not a flag: the first worker API marked "do not retry" with a
//! task-local flag set by `permanent()`. The flag marked the whole try, so an error wrapped
//! and then recovered from still dead-lettered the job, and a call made in a spawned subtask
//! was lost. A value says exactly what the handler returned, wherever it was made.
//!
//! `JobError` holds an [`anyhow::Error`] and converts from anything that converts into one,
//! so `?` on an ordinary error in a handler means "retry with the job's backoff". For that
//! blanket `From` to be coherent `JobError` itself must not implement
//! `std::error::Error` (the pattern anyhow uses for its own type).

use std::fmt;
use std::time::Duration;

/// A handler's successful result.
///
/// `#[non_exhaustive]`: done-with-a-result will join these once acks can carry one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The job is finished: ack it.
    Done,
    /// Not now: put the job back to run again after this long, without using an attempt
    /// and without recording an error (a resource is not ready yet, a time window is closed).
    /// `Duration::ZERO` makes it ready again at once.
    Snooze(Duration),
}

/// A handler's failure, and what to do about it. Anything that converts into an
/// [`anyhow::Error`] converts into `JobError::Retry`, so `?` retries:
///
/// ```
/// use std::time::Duration;
/// use qd_client::{JobContext, JobError, LeasedJobExt, Outcome};
///
/// async fn handle(ctx: JobContext) -> Result<Outcome, JobError> {
///     // A payload that does not parse never will: dead-letter it now.
///     let to: String = ctx.job().json().map_err(JobError::permanent)?;
///     // An ordinary error: retried after the job's backoff.
///     let addr: std::net::SocketAddr = "127.0.0.1:25".parse()?;
///     # let _ = (to, addr);
///     // A downstream asked us to slow down: retry in a minute (still an attempt).
///     # if false {
///     return Err(JobError::retry_after(Duration::from_secs(60), anyhow::anyhow!("HTTP 429")));
///     # }
///     Ok(Outcome::Done)
/// }
/// ```
///
/// The text kept with the job is the whole chain of the error (`format!("{:#}", e)`, so
/// `.context("sending welcome")` on a "connection refused" keeps both), cut to
/// [`qd_protocol::MAX_ERROR_TEXT`] bytes.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// Try again after the job's backoff, while attempts remain.
    Retry(anyhow::Error),
    /// Try again after this delay instead of the backoff, while attempts remain.
    RetryAfter(Duration, anyhow::Error),
    /// The job can never succeed: dead-letter it now, whatever attempts remain.
    Permanent(anyhow::Error),
}

impl JobError {
    /// Same as `JobError::Retry(e.into())`.
    pub fn retry(error: impl Into<anyhow::Error>) -> Self {
        JobError::Retry(error.into())
    }

    /// Same as `JobError::RetryAfter(delay, e.into())`.
    pub fn retry_after(delay: Duration, error: impl Into<anyhow::Error>) -> Self {
        JobError::RetryAfter(delay, error.into())
    }

    /// Same as `JobError::Permanent(e.into())`; also usable as `.map_err(JobError::permanent)`.
    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        JobError::Permanent(error.into())
    }

    /// The underlying error.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            JobError::Retry(e) | JobError::RetryAfter(_, e) | JobError::Permanent(e) => e,
        }
    }

    /// Whether the job is dead-lettered rather than retried.
    pub fn is_permanent(&self) -> bool {
        matches!(self, JobError::Permanent(_))
    }

    /// The text recorded with the job: the error's whole chain.
    pub fn text(&self) -> String {
        format!("{:#}", self.error())
    }
}

impl<E: Into<anyhow::Error>> From<E> for JobError {
    fn from(error: E) -> Self {
        JobError::Retry(error.into())
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry(e) => write!(f, "{e:#} (will retry)"),
            JobError::RetryAfter(d, e) => write!(f, "{e:#} (will retry after {d:?})"),
            JobError::Permanent(e) => write!(f, "{e:#} (permanent)"),
        }
    }
}

/// Marks an error as permanent: `.map_err(qd_client::permanent)?` dead-letters the job
/// instead of retrying it. Same as [`JobError::permanent`].
pub fn permanent(error: impl Into<anyhow::Error>) -> JobError {
    JobError::Permanent(error.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question_mark(fail: bool) -> Result<Outcome, JobError> {
        if fail {
            Err(std::io::Error::other("disk full"))?;
        }
        Ok(Outcome::Done)
    }

    #[test]
    fn question_mark_means_retry_and_text_keeps_the_chain() {
        let e = question_mark(true).unwrap_err();
        assert!(matches!(e, JobError::Retry(_)));
        assert_eq!(e.text(), "disk full");
        let wrapped: JobError =
            anyhow::Error::new(std::io::Error::other("refused")).context("sending welcome").into();
        assert_eq!(wrapped.text(), "sending welcome: refused");
        assert!(question_mark(false).is_ok());
    }

    #[test]
    fn constructors_choose_the_variant() {
        assert!(permanent(anyhow::anyhow!("x")).is_permanent());
        assert!(!JobError::retry(anyhow::anyhow!("x")).is_permanent());
        let e = JobError::retry_after(Duration::from_secs(3), anyhow::anyhow!("429"));
        assert!(matches!(e, JobError::RetryAfter(d, _) if d == Duration::from_secs(3)));
        assert_eq!(e.to_string(), "429 (will retry after 3s)");
    }
}
