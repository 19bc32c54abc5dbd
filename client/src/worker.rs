//! [`Worker`]: runs a handler for each job of some queues, with bounded concurrency, lease
//! heartbeats, batched acks, and graceful shutdown; [`Permanent`] / [`permanent`] let a
//! handler say "do not retry".
//!
//! Tasks and who owns what:
//! - `run` itself is the reserve loop. It holds a semaphore of `concurrency` slots; it
//!   takes every free slot, reserves that many jobs in one request, and hands each job and
//!   its slot to a job task. So at most `concurrency` handlers run, and a worker never
//!   leases a job it has no slot for (a leased job waiting in memory would burn its lease).
//! - A job task (one per job, in a `TaskTracker`) spawns the handler in a task of its own
//!   (so a panic is caught as a `JoinError`), touches the lease while the handler runs, then
//!   nacks the job itself, or passes it to the ack task. Its slot is freed when it is done.
//! - The ack task drains a channel of finished jobs and acks everything queued in one
//!   `ack_many`: acks are the hot path, and while one batch is on the wire the next fills.
//!
//! Shutdown: when the token fires, the reserve loop stops (a reserve already on the wire is
//! awaited and its jobs run: dropping it would leave them leased to nobody until their lease
//! expired, each costing an attempt), the tracker is waited on, then the ack channel closes
//! and the ack task sends what is left. `run` returns after the last ack was answered.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qd_protocol::message::NackOutcome;
use qd_protocol::{validate_queue_name, ErrorCode, LeasedJob, RetryHint};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::Client;
use crate::error::Error;

/// Most acks sent in one request.
const ACK_BATCH: usize = 1024;
/// Shortest pause between two touches, whatever the lease (guards against clock skew
/// making the remaining lease look like zero).
const MIN_TOUCH_EVERY: Duration = Duration::from_millis(50);
/// Pause after a failed reserve: starts here, doubles, stops at the cap.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

tokio::task_local! {
    /// Set by [`permanent`] inside a handler's task, so that a permanent error is noticed
    /// however the handler wraps it afterwards (`anyhow`, `Box<dyn Error>`, its own enum).
    static PERMANENT_CALLED: Cell<bool>;
}

/// A handler error meaning "this job will never succeed": the job is dead-lettered at once
/// ([`RetryHint::Never`]) instead of retried. Make one with [`permanent`].
///
/// ```
/// # async fn f(job: qd_protocol::LeasedJob) -> anyhow::Result<()> {
/// use qd_client::LeasedJobExt;
/// let to: String = job.json().map_err(qd_client::permanent)?; // bad payload: retrying won't help
/// # let _ = to; Ok(())
/// # }
/// ```
///
/// It is recognised when the handler returns it directly, inside a `Box<dyn Error>`
/// (anywhere in the `source()` chain), or, through any wrapping (`anyhow::Error`,
/// `.context()`), whenever [`permanent`] was called in the handler's task during this try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permanent {
    message: String,
}

impl Permanent {
    /// Same as [`permanent`].
    pub fn new(error: impl fmt::Display) -> Self {
        // Outside a handler (no task-local) there is nothing to mark; the value itself is
        // still recognised when returned directly or boxed.
        let _ = PERMANENT_CALLED.try_with(|c| c.set(true));
        Permanent { message: error.to_string() }
    }

    /// The error text, as it will be recorded with the job.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Permanent {}

/// Marks a handler error as permanent: the job goes to the dead set now, not after its
/// remaining attempts. See [`Permanent`].
pub fn permanent(error: impl fmt::Display) -> Permanent {
    Permanent::new(error)
}

type CompletedHook = Arc<dyn Fn(&LeasedJob) + Send + Sync>;
type FailedHook = Arc<dyn Fn(&LeasedJob, &str, bool) + Send + Sync>;

/// Consumes jobs from one or more queues. See [`Worker::run`].
#[derive(Clone)]
pub struct Worker {
    client: Client,
    queues: Vec<String>,
    concurrency: usize,
    reserve_timeout: Duration,
    on_completed: Option<CompletedHook>,
    on_failed: Option<FailedHook>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("reserve_timeout", &self.reserve_timeout)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for one queue, running one job at a time until told otherwise.
    pub fn new(client: Client, queue: &str) -> Self {
        Worker {
            client,
            queues: vec![queue.to_owned()],
            concurrency: 1,
            reserve_timeout: Duration::from_secs(5),
            on_completed: None,
            on_failed: None,
        }
    }

    /// Takes jobs from these queues instead, preferring earlier ones.
    pub fn queues<Q: AsRef<str>>(mut self, queues: &[Q]) -> Self {
        self.queues = queues.iter().map(|q| q.as_ref().to_owned()).collect();
        self
    }

    /// How many handlers may run at once (default 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How long one reserve waits for jobs (default 5 s). Shutdown may take this long when
    /// it arrives during a reserve.
    pub fn reserve_timeout(mut self, timeout: Duration) -> Self {
        self.reserve_timeout = timeout;
        self
    }

    /// Called after a job's ack was confirmed by the server.
    pub fn on_completed(mut self, f: impl Fn(&LeasedJob) + Send + Sync + 'static) -> Self {
        self.on_completed = Some(Arc::new(f));
        self
    }

    /// Called once per failed try with the error text and whether the job will be tried
    /// again (from the server's answer to the nack; a best guess when that answer was lost).
    /// Also called when a handler succeeded but its ack failed (the lease was lost, so the
    /// job will run again).
    pub fn on_failed(mut self, f: impl Fn(&LeasedJob, &str, bool) + Send + Sync + 'static) -> Self {
        self.on_failed = Some(Arc::new(f));
        self
    }

    /// Runs `handler` for every job until `shutdown` is cancelled, then waits for running
    /// handlers and their acks, and returns `Ok`.
    ///
    /// `Ok(())` acks the job; `Err(e)` nacks it with `e`'s `Display` text and the job's
    /// backoff, or dead-letters it when `e` is [`Permanent`]; a panic counts as a failure
    /// ("handler panicked: ..."). While a handler runs, its lease is extended every third of
    /// the lease. Connection trouble is logged and retried, not returned: jobs held when the
    /// connection dropped go back to the queue, and their acks fail (logged).
    ///
    /// Returns `Err` only for errors that retrying cannot fix: invalid queue names or
    /// settings, a server refusing this client.
    pub async fn run<F, Fut, E>(self, shutdown: CancellationToken, handler: F) -> Result<(), Error>
    where
        F: Fn(LeasedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        if self.queues.is_empty() {
            return Err(Error::invalid_arg("worker has no queues; name at least one"));
        }
        for q in &self.queues {
            validate_queue_name(q).map_err(Error::invalid)?;
        }
        if self.concurrency == 0 || self.concurrency > Semaphore::MAX_PERMITS {
            return Err(Error::invalid_arg(format!(
                "worker concurrency is {}; use at least 1",
                self.concurrency
            )));
        }
        let max = u32::try_from(self.concurrency).unwrap_or(u32::MAX);

        let hooks = Hooks { completed: self.on_completed.clone(), failed: self.on_failed.clone() };
        let (ack_tx, ack_rx) = mpsc::channel(self.concurrency.saturating_mul(2).min(64 * 1024));
        let acker = tokio::spawn(ack_loop(self.client.clone(), ack_rx, hooks.clone()));
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let tracker = TaskTracker::new();
        let mut pause = RETRY_FIRST;
        tracing::info!(queues = ?self.queues, concurrency = self.concurrency, "worker started");

        let outcome = loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                slot = slots.clone().acquire_owned() => slot.expect("slots are never closed"),
            };
            let mut held = vec![first];
            while let Ok(slot) = slots.clone().try_acquire_owned() {
                held.push(slot);
            }
            let want = u32::try_from(held.len()).unwrap_or(max);
            // Not raced against `shutdown`: see the module docs.
            match self.client.reserve(&self.queues, want, self.reserve_timeout).await {
                Ok(jobs) => {
                    pause = RETRY_FIRST;
                    for job in jobs {
                        let slot = match held.pop() {
                            Some(slot) => slot,
                            None => {
                                tracing::error!(
                                    "server returned more jobs than asked for; running them anyway"
                                );
                                slots.clone().acquire_owned().await.expect("never closed")
                            }
                        };
                        let span = tracing::debug_span!("job", id = job.id, queue = %job.queue, name = %job.name, attempt = job.attempt);
                        let task = JobTask {
                            client: self.client.clone(),
                            job,
                            slot,
                            acks: ack_tx.clone(),
                            hooks: hooks.clone(),
                            handler: handler.clone(),
                        };
                        tracker.spawn(run_job(task).instrument(span));
                    }
                }
                Err(e) if is_fatal(&e) => break Err(e),
                Err(e) => {
                    drop(held);
                    tracing::warn!(error = %e, "reserve failed; retrying in {pause:?}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_CAP);
                }
            }
        };

        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(running = tracker.len(), "worker stopping; waiting for running jobs");
        }
        tracker.wait().await;
        drop(ack_tx);
        if let Err(e) = acker.await {
            tracing::error!("ack task failed: {e}");
        }
        tracing::info!("worker stopped");
        outcome
    }
}

/// Errors that retrying the reserve cannot fix.
fn is_fatal(e: &Error) -> bool {
    match e {
        Error::Invalid { .. } => true,
        Error::Handshake { .. } => !e.is_transient(),
        Error::Server { code, .. } => matches!(
            code,
            ErrorCode::InvalidArgument
                | ErrorCode::InvalidQueueName
                | ErrorCode::UnknownRequest
                | ErrorCode::ProtocolVersion
                | ErrorCode::HandshakeRequired
        ),
        _ => false,
    }
}

#[derive(Clone)]
struct Hooks {
    completed: Option<CompletedHook>,
    failed: Option<FailedHook>,
}

impl Hooks {
    fn completed(&self, job: &LeasedJob) {
        if let Some(f) = &self.completed {
            f(job);
        }
    }

    fn failed(&self, job: &LeasedJob, error: &str, will_retry: bool) {
        if let Some(f) = &self.failed {
            f(job, error, will_retry);
        }
    }
}

/// Everything one job task needs.
struct JobTask<F> {
    client: Client,
    job: LeasedJob,
    /// This job's concurrency slot; freed when the task ends.
    slot: OwnedSemaphorePermit,
    acks: mpsc::Sender<LeasedJob>,
    hooks: Hooks,
    handler: Arc<F>,
}

/// How a handler failed.
struct Failure {
    text: String,
    permanent: bool,
}

async fn run_job<F, Fut, E>(task: JobTask<F>)
where
    F: Fn(LeasedJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + 'static,
{
    let JobTask { client, job, slot, acks, hooks, handler } = task;
    let fut = handler(job.clone());
    // The error is turned into text inside the handler's task, right where it is produced,
    // so `E` need not be `Send` (a plain `Box<dyn Error>` works).
    let mut handle = tokio::spawn(PERMANENT_CALLED.scope(Cell::new(false), async move {
        let result = fut.await;
        let called = PERMANENT_CALLED.with(Cell::get);
        result.map_err(|e| Failure { text: e.to_string(), permanent: called || is_permanent(&e) })
    }));

    let mut deadline = job.lease_deadline_ms;
    let mut heartbeat = true;
    let joined = loop {
        tokio::select! {
            joined = &mut handle => break joined,
            _ = tokio::time::sleep(touch_every(deadline)), if heartbeat => {
                match client.touch(&job, None).await {
                    Ok(d) => deadline = d,
                    Err(e) if e.is_lease_lost() => {
                        tracing::warn!(id = job.id, queue = %job.queue, "lease lost while the handler runs; the job will be delivered again and this run's ack will fail");
                        heartbeat = false;
                    }
                    Err(e) => tracing::warn!(id = job.id, error = %e, "could not extend the lease; will try again"),
                }
            }
        }
    };

    let failure = match joined {
        Ok(Ok(())) => None,
        Ok(Err(f)) => Some(f),
        Err(e) if e.is_panic() => Some(Failure {
            text: format!("handler panicked: {}", panic_text(e.into_panic())),
            permanent: false,
        }),
        Err(e) => {
            Some(Failure { text: format!("handler task was cancelled: {e}"), permanent: false })
        }
    };
    match failure {
        None => {
            // Free the slot first: the next job may start while this ack waits for a batch.
            drop(slot);
            if let Err(mpsc::error::SendError(job)) = acks.send(job).await {
                tracing::error!(id = job.id, "ack task is gone; the job will run again");
            }
        }
        Some(f) => {
            let retry = if f.permanent { RetryHint::Never } else { RetryHint::Backoff };
            tracing::debug!(id = job.id, error = %f.text, permanent = f.permanent, "handler failed");
            let will_retry = match client.nack(&job, f.text.clone(), retry).await {
                Ok(NackOutcome::Retrying { .. }) => true,
                Ok(NackOutcome::Dead) => false,
                Err(e) => {
                    tracing::warn!(id = job.id, error = %e, "nack failed; the server retries the job when its lease runs out");
                    !f.permanent && job.attempt < job.max_attempts
                }
            };
            hooks.failed(&job, &f.text, will_retry);
            drop(slot);
        }
    }
}

/// Sends acks in batches: everything that finished while the previous batch was on the wire.
async fn ack_loop(client: Client, mut rx: mpsc::Receiver<LeasedJob>, hooks: Hooks) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        match client.ack_many(&batch).await {
            Ok(failed) => {
                let failed: HashMap<u64, _> = failed.into_iter().collect();
                for job in batch.drain(..) {
                    match failed.get(&job.id) {
                        None => hooks.completed(&job),
                        Some(e) => {
                            tracing::warn!(id = job.id, queue = %job.queue, code = ?e.code, "ack refused: {}; the job will run again", e.message);
                            hooks.failed(
                                &job,
                                &format!("ack refused: {}", e.message),
                                retry_guess(&job),
                            );
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(jobs = batch.len(), error = %e, "ack failed; those jobs may run again");
                let text = format!("ack failed: {e}");
                for job in batch.drain(..) {
                    hooks.failed(&job, &text, retry_guess(&job));
                }
            }
        }
    }
}

/// Whether the server will try a job again after it lost our lease: it counted a failed
/// attempt, so only if attempts remain.
fn retry_guess(job: &LeasedJob) -> bool {
    job.attempt < job.max_attempts
}

/// When to touch next: a third of what is left of the lease (by this machine's clock).
fn touch_every(deadline_ms: u64) -> Duration {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(deadline_ms.saturating_sub(now_ms) / 3).max(MIN_TOUCH_EVERY)
}

/// Is `e` a [`Permanent`], directly or in a boxed error's source chain?
fn is_permanent<E: 'static>(e: &E) -> bool {
    let any = e as &dyn Any;
    if any.is::<Permanent>() {
        return true;
    }
    let boxed: Option<&(dyn std::error::Error + 'static)> =
        if let Some(b) = any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
            Some(&**b)
        } else if let Some(b) = any.downcast_ref::<Box<dyn std::error::Error + Send>>() {
            Some(&**b)
        } else if let Some(b) = any.downcast_ref::<Box<dyn std::error::Error>>() {
            Some(&**b)
        } else {
            None
        };
    let mut cur = boxed;
    while let Some(err) = cur {
        if err.is::<Permanent>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_is_found_directly_and_in_boxes() {
        assert!(is_permanent(&Permanent::new("x")));
        let b: Box<dyn std::error::Error> = Box::new(Permanent::new("x"));
        assert!(is_permanent(&b));
        let b: Box<dyn std::error::Error + Send + Sync> = Box::new(Permanent::new("x"));
        assert!(is_permanent(&b));
        let b: Box<dyn std::error::Error> = "plain".into();
        assert!(!is_permanent(&b));
        assert!(!is_permanent(&"text"));
    }

    #[test]
    fn touch_interval_is_a_third_of_what_is_left() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let d = touch_every(now + 30_000);
        assert!(d <= Duration::from_secs(10) && d > Duration::from_secs(9), "{d:?}");
        assert_eq!(touch_every(now.saturating_sub(5)), MIN_TOUCH_EVERY);
    }
}
