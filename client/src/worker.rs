//! [`Worker`]: runs a handler for each job of some queues, with bounded concurrency, lease
//! heartbeats, per-job timeouts, batched acks, and graceful shutdown. A handler gets a
//! [`JobContext`] and returns `Result<`[`Outcome`]`, `[`JobError`]`>` ([`Worker::run`]), or,
//! in the simple form, gets the [`LeasedJob`] and returns `Result<(), E>`
//! ([`Worker::run_simple`]).
//!
//! Tasks and who owns what:
//! - `run` itself is the reserve loop. It holds a semaphore of `concurrency` slots; it
//!   takes every free slot, reserves that many jobs in one request, and hands each job and
//!   its slot to a job task. So at most `concurrency` handlers run, and a worker never
//!   leases a job it has no slot for (a leased job waiting in memory would burn its lease).
//! - A job task (one per job, in a `TaskTracker`) polls the handler's future itself (a
//!   panic is caught with `catch_unwind`; dropping the future aborts a hung handler; a task
//!   of its own per try cost W4 an allocation and a wake-up for nothing), touches the lease
//!   while the handler runs, watches the try's timeout and the worker's shutdown, then
//!   snoozes or nacks the job itself, or passes it to the ack task. Its slot is freed when
//!   it is done, an acked job's once its ack is queued: so jobs waiting for their ack are
//!   bounded too (at most `ACK_BATCH` on the wire + `max(ACK_BATCH, 2 x concurrency)`
//!   queued), and a server
//!   slow to answer acks slows the reserves rather than letting leases run out in memory.
//! - The ack task drains a channel of finished jobs and acks everything queued in one
//!   `ack_many`: acks are the hot path, and while one batch is on the wire the next fills.
//!   Woken by a first finished job, it yields a scheduler round (while each brings more)
//!   before sending, so the jobs of one delivered batch that finish together share one
//!   request and one server commit.
//!
//! Cancellation: the job task cancels the handler's [`JobContext::cancelled`] token when the
//! lease is lost (a touch answered `LeaseLost` or `NotFound`), when the try's timeout runs
//! out, or when the worker shuts down, and from then on gives the handler a grace period
//! (`timeout_grace`, or `shutdown_grace` at shutdown) to return before it aborts it. An
//! aborted try is settled by its reason: a timeout is a failed try ("timed out after ...",
//! retried through the backoff); at shutdown the job is snoozed with no delay, so it runs
//! again at once elsewhere without using an attempt (the handler did not fail; the worker
//! left); with the lease lost there is nothing to send.
//!
//! Shutdown: when the token fires, the reserve loop stops (a reserve already on the wire is
//! awaited and its jobs run: dropping it would leave them leased to nobody until their lease
//! expired, each costing an attempt), every handler's token is cancelled, the tracker is
//! waited on (at most `shutdown_grace` per handler, then it is aborted), then the ack channel
//! closes and the ack task sends what is left. `run` returns after the last ack was answered.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use qd_protocol::message::NackOutcome;
use qd_protocol::{validate_queue_name, ErrorCode, LeasedJob, RetryHint};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::Client;
use crate::context::{CancelReason, JobContext};
use crate::error::Error;
use crate::job::millis;
use crate::outcome::{JobError, Outcome};

/// Most acks sent in one request.
const ACK_BATCH: usize = 1024;
/// At most this many scheduler rounds an ack batch waits for more jobs of its delivered
/// batch to finish (it stops at the first round that brought none): see `ack_loop`.
const ACK_GATHER_ROUNDS: usize = 8;
/// Shortest pause between two touches, whatever the lease (guards against clock skew
/// making the remaining lease look like zero).
const MIN_TOUCH_EVERY: Duration = Duration::from_millis(50);
/// Pause after a failed reserve: starts here, doubles, stops at the cap.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

type CompletedHook = Arc<dyn Fn(&LeasedJob) + Send + Sync>;
type FailedHook = Arc<dyn Fn(&LeasedJob, &str, bool) + Send + Sync>;

/// Consumes jobs from one or more queues. See [`Worker::run`].
#[derive(Clone)]
pub struct Worker {
    client: Client,
    queues: Vec<String>,
    concurrency: usize,
    reserve_timeout: Duration,
    timeout: Option<Duration>,
    timeout_grace: Duration,
    shutdown_grace: Duration,
    on_completed: Option<CompletedHook>,
    on_failed: Option<FailedHook>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("reserve_timeout", &self.reserve_timeout)
            .field("timeout", &self.timeout)
            .field("timeout_grace", &self.timeout_grace)
            .field("shutdown_grace", &self.shutdown_grace)
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
            timeout: None,
            timeout_grace: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(25),
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

    /// How long one try may run when its job does not say (see
    /// [`Job::timeout`](crate::Job::timeout)); default: no limit. When it runs out the
    /// handler's token is cancelled, and after [`Worker::timeout_grace`] the handler is
    /// aborted and the try fails with "timed out after ...".
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a handler has to return after its token was cancelled for a timeout or a
    /// lost lease, before it is aborted (default 2 s).
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.timeout_grace = grace;
        self
    }

    /// How long running handlers have to finish after shutdown began (their tokens are
    /// cancelled at once) before they are aborted and their jobs put back without using an
    /// attempt (default 25 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
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
    /// job will run again), and when a try was abandoned (lease lost, shutdown).
    pub fn on_failed(mut self, f: impl Fn(&LeasedJob, &str, bool) + Send + Sync + 'static) -> Self {
        self.on_failed = Some(Arc::new(f));
        self
    }

    /// Runs `handler` for every job until `shutdown` is cancelled, then waits for running
    /// handlers (at most [`Worker::shutdown_grace`]) and their acks, and returns `Ok`.
    ///
    /// What the handler returns decides what becomes of the job:
    /// - `Ok(Outcome::Done)`: acked.
    /// - `Ok(Outcome::Snooze(d))`: put back to run after `d`, no attempt used.
    /// - `Err(JobError::Retry(e))` (what `?` gives): nacked with `e`'s whole chain as the
    ///   error text; retried after the job's backoff while attempts remain.
    /// - `Err(JobError::RetryAfter(d, e))`: the same, retried after `d`.
    /// - `Err(JobError::Permanent(e))`: dead-lettered now.
    /// - a panic: a failed try ("handler panicked: ..."), retried.
    /// - running past its timeout: a failed try ("timed out after ..."), retried.
    ///
    /// While a handler runs, its lease is extended every third of the lease. Connection
    /// trouble is logged and retried, not returned: jobs held when the connection dropped go
    /// back to the queue, and their acks fail (logged).
    ///
    /// Returns `Err` only for errors that retrying cannot fix: invalid queue names or
    /// settings, a server refusing this client.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, handler: F) -> Result<(), Error>
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, JobError>> + Send + 'static,
    {
        self.drive(shutdown, Arc::new(WithContext(handler))).await
    }

    /// The reserve loop behind [`Worker::run`] and [`Worker::run_simple`], for either form of
    /// handler (see [`Start`]).
    async fn drive<H: Start>(
        self,
        shutdown: CancellationToken,
        handler: Arc<H>,
    ) -> Result<(), Error> {
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
        // Room for a whole batch: `ack_loop` sends what queued while the previous batch was
        // on the wire, so a smaller channel caps each batch (and the drain rate, one batch
        // per commit) at its size; at 2 x 64 a drain made ~128 acks per fsync.
        let ack_room = self.concurrency.saturating_mul(2).clamp(ACK_BATCH, 64 * 1024);
        let (ack_tx, ack_rx) = mpsc::channel(ack_room);
        let acker = tokio::spawn(ack_loop(self.client.clone(), ack_rx, hooks.clone()));
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let tracker = TaskTracker::new();
        let limits = Limits {
            timeout: self.timeout,
            timeout_grace: self.timeout_grace,
            shutdown_grace: self.shutdown_grace,
        };
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
                            job: Arc::new(job),
                            slot,
                            acks: ack_tx.clone(),
                            hooks: hooks.clone(),
                            handler: handler.clone(),
                            limits,
                            shutdown: shutdown.clone(),
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

    /// The simple form of [`Worker::run`]: the handler gets the [`LeasedJob`] and returns
    /// `Ok(())` (ack) or `Err(e)` (a failed try, retried through the backoff, with
    /// `format!("{e:#}")` as its text: an `anyhow::Error`'s whole chain). There is no way to
    /// dead-letter, snooze or see cancellation from here; use `run` for those.
    ///
    /// ```no_run
    /// # async fn f(worker: qd_client::Worker, shutdown: qd_client::CancellationToken) -> Result<(), qd_client::Error> {
    /// worker
    ///     .run_simple(shutdown, |job: qd_client::LeasedJob| async move {
    ///         println!("job {}", job.id);
    ///         anyhow::Ok(())
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn run_simple<F, Fut, E>(
        self,
        shutdown: CancellationToken,
        handler: F,
    ) -> Result<(), Error>
    where
        F: Fn(LeasedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        self.drive(shutdown, Arc::new(Bare(handler))).await
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
struct JobTask<H> {
    client: Client,
    /// Shared with the handler's [`JobContext`] in `run`'s form, rather than copied.
    job: Arc<LeasedJob>,
    /// This job's concurrency slot; freed when the task ends.
    slot: OwnedSemaphorePermit,
    acks: mpsc::Sender<Arc<LeasedJob>>,
    hooks: Hooks,
    handler: Arc<H>,
    limits: Limits,
    /// The worker's shutdown token: cancels the handler's token, then aborts it after
    /// `shutdown_grace`.
    shutdown: CancellationToken,
}

/// The worker's time limits on one try.
#[derive(Debug, Clone, Copy)]
struct Limits {
    timeout: Option<Duration>,
    timeout_grace: Duration,
    shutdown_grace: Duration,
}

impl Limits {
    /// The job's own timeout, else the worker's.
    fn timeout_for(&self, job: &LeasedJob) -> Option<Duration> {
        job.timeout_ms.map(Duration::from_millis).or(self.timeout)
    }
}

/// A failed try as the handler's task reports it: the nack's text and how to retry.
struct Failure {
    text: String,
    retry: RetryHint,
}

/// How a job task calls the handler of one form and reads what it returned. The two forms
/// pay only for what they use: `run_simple`'s handler sees no [`JobContext`], so none is
/// made (no token, no second copy of the job), and its error is formatted once, straight to
/// text: wrapping it in an `anyhow::Error` first captured a backtrace per failed try
/// whenever `RUST_BACKTRACE` was set, which alone cost W4 (every job fails twice) about a
/// seventh of the client's CPU.
trait Start: Send + Sync + 'static {
    type Fut: Future<Output = Self::Out> + Send + 'static;
    type Out;
    /// Calls the handler on `job`; returns its future and, when the handler has one, the
    /// context whose token the job task cancels.
    fn start(&self, client: &Client, job: &Arc<LeasedJob>) -> (Self::Fut, Option<JobContext>);
    /// What the handler's result means for the try.
    fn settle(out: Self::Out) -> Result<Outcome, Failure>;
}

/// [`Worker::run`]'s handler: gets a [`JobContext`], returns an [`Outcome`] or a [`JobError`].
struct WithContext<F>(F);

impl<F, Fut> Start for WithContext<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, JobError>> + Send + 'static,
{
    type Fut = Fut;
    type Out = Result<Outcome, JobError>;

    fn start(&self, client: &Client, job: &Arc<LeasedJob>) -> (Fut, Option<JobContext>) {
        let ctx = JobContext::shared(client.clone(), job.clone());
        ((self.0)(ctx.clone()), Some(ctx))
    }

    fn settle(out: Self::Out) -> Result<Outcome, Failure> {
        out.map_err(|e| {
            let retry = match &e {
                JobError::Retry(_) => RetryHint::Backoff,
                JobError::RetryAfter(d, _) => RetryHint::After { delay_ms: millis(*d) },
                JobError::Permanent(_) => RetryHint::Never,
            };
            Failure { text: e.text(), retry }
        })
    }
}

/// [`Worker::run_simple`]'s handler: gets the bare job, returns `Ok(())` or any `Display`.
struct Bare<F>(F);

impl<F, Fut, E> Start for Bare<F>
where
    F: Fn(LeasedJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + 'static,
{
    type Fut = Fut;
    type Out = Result<(), E>;

    fn start(&self, _client: &Client, job: &Arc<LeasedJob>) -> (Fut, Option<JobContext>) {
        ((self.0)(LeasedJob::clone(job)), None)
    }

    /// Called the moment the handler returns, before the job task awaits anything, so `E`
    /// need not be `Send` (a plain `Box<dyn Error>` works).
    fn settle(out: Self::Out) -> Result<Outcome, Failure> {
        match out {
            Ok(()) => Ok(Outcome::Done),
            Err(e) => Err(Failure { text: format!("{e:#}"), retry: RetryHint::Backoff }),
        }
    }
}

/// How a try ended, as the job task settles it.
enum Settle {
    Ack,
    Snooze(Duration),
    Nack {
        text: String,
        retry: RetryHint,
    },
    /// The lease is gone: nothing to send; the server delivers the job again.
    Abandon {
        text: String,
    },
}

async fn run_job<H: Start>(task: JobTask<H>) {
    let JobTask { client, job, slot, acks, hooks, handler, limits, shutdown } = task;
    let (handler, ctx) = handler.start(&client, &job);
    let mut cancelled = Cancelled { ctx, reason: None, abort_at: None };
    let timeout = limits.timeout_for(&job);
    let mut timeout_at = timeout.map(|t| Instant::now() + t);
    // The handler and the heartbeat live in this block: leaving it drops them, which aborts
    // a handler that still runs.
    let joined = {
        // Polled right here rather than spawned: a task per try cost an allocation, a
        // scheduling round and a join wake-up, and the job task has nothing else to do.
        // `catch_unwind` turns a panic into a failed try as the task boundary did.
        let handler = AssertUnwindSafe(handler).catch_unwind();
        tokio::pin!(handler);
        // A future of its own, not a branch body, so the handler keeps running while a
        // touch is on the wire.
        let heartbeat = heartbeat(&client, &job);
        tokio::pin!(heartbeat);
        let mut heartbeat_on = true;
        let mut watching_shutdown = true;
        loop {
            tokio::select! {
                out = &mut handler => break Some(out.map(H::settle)),
                () = &mut heartbeat, if heartbeat_on => {
                    tracing::warn!(id = job.id, queue = %job.queue, "lease lost while the handler runs; the job will be delivered again and this run's ack will fail");
                    heartbeat_on = false;
                    cancelled.cancel(CancelReason::LeaseLost, limits.timeout_grace);
                }
                _ = sleep_until(timeout_at) => {
                    timeout_at = None;
                    let after = timeout.unwrap_or_default();
                    tracing::warn!(id = job.id, "handler ran past its timeout of {after:?}; cancelling it");
                    cancelled.cancel(CancelReason::TimedOut(after), limits.timeout_grace);
                }
                _ = shutdown.cancelled(), if watching_shutdown => {
                    watching_shutdown = false;
                    cancelled.cancel(CancelReason::ShuttingDown, limits.shutdown_grace);
                }
                _ = sleep_until(cancelled.abort_at) => break None,
            }
        }
    };

    let settle = match joined {
        Some(Ok(Ok(Outcome::Done))) => Settle::Ack,
        Some(Ok(Ok(Outcome::Snooze(d)))) => Settle::Snooze(d),
        Some(Ok(Err(Failure { text, retry }))) => Settle::Nack { text, retry },
        Some(Err(panic)) => Settle::Nack {
            text: format!("handler panicked: {}", panic_text(panic)),
            retry: RetryHint::Backoff,
        },
        None => match cancelled.reason {
            Some(CancelReason::TimedOut(after)) => Settle::Nack {
                text: format!(
                    "timed out after {after:?}; the handler did not return within {:?} of being cancelled",
                    limits.timeout_grace
                ),
                retry: RetryHint::Backoff,
            },
            Some(CancelReason::ShuttingDown) => Settle::Snooze(Duration::ZERO),
            _ => Settle::Abandon {
                text: "lease lost; the handler was aborted and the job will be delivered again"
                    .to_owned(),
            },
        },
    };
    // A settled try needs no more cancelling; dropping the context is enough.
    drop(cancelled);
    match settle {
        Settle::Ack => {
            // The slot is freed once the ack is queued, not before: the queue is bounded,
            // so while the server is slow to answer acks (each waits for a commit) the
            // reserve loop waits too. Freed first, it went on leasing jobs whose acks piled
            // up behind, until they reached the server after their leases had run out
            // (issue 10: "64 stale leases" draining millions of jobs). The next job still
            // starts while this ack waits for its batch.
            if let Err(mpsc::error::SendError(job)) = acks.send(job).await {
                tracing::error!(id = job.id, "ack task is gone; the job will run again");
            }
            drop(slot);
        }
        Settle::Snooze(delay) => {
            let aborted = delay.is_zero() && shutdown.is_cancelled();
            match client.snooze(&*job, delay).await {
                Ok(_) => tracing::debug!(id = job.id, "snoozed for {delay:?}"),
                Err(e) => {
                    tracing::warn!(id = job.id, error = %e, "snooze failed; the server retries the job when its lease runs out")
                }
            }
            if aborted {
                hooks.failed(
                    &job,
                    "worker shut down before the handler returned; the job was put back without using an attempt",
                    true,
                );
            }
            drop(slot);
        }
        Settle::Nack { text, retry } => {
            tracing::debug!(id = job.id, error = %text, ?retry, "handler failed");
            // The request owns its text: copy it only when a hook wants it too.
            let (sent, kept) = match hooks.failed {
                Some(_) => (text.clone(), Some(text)),
                None => (text, None),
            };
            let will_retry = match client.nack(&*job, sent, retry).await {
                Ok(NackOutcome::Retrying { .. }) => true,
                Ok(NackOutcome::Dead) => false,
                Err(e) => {
                    tracing::warn!(id = job.id, error = %e, "nack failed; the server retries the job when its lease runs out");
                    retry != RetryHint::Never && job.attempt < job.max_attempts
                }
            };
            if let Some(text) = kept {
                hooks.failed(&job, &text, will_retry);
            }
            drop(slot);
        }
        Settle::Abandon { text } => {
            hooks.failed(&job, &text, retry_guess(&job));
            drop(slot);
        }
    }
}

/// What the job task knows of cancelling its handler: the handler's context (none for
/// `run_simple`'s, which cannot see a token), why it was cancelled, and when it is aborted.
struct Cancelled {
    ctx: Option<JobContext>,
    /// The first reason wins, as in [`JobContext::cancel_reason`].
    reason: Option<CancelReason>,
    /// Set once the handler's token is cancelled: when it is aborted if still running.
    abort_at: Option<Instant>,
}

impl Cancelled {
    /// Cancels the handler's token for `reason` and sets when it is aborted, keeping an
    /// earlier abort time if there is one.
    fn cancel(&mut self, reason: CancelReason, grace: Duration) {
        if let Some(ctx) = &self.ctx {
            ctx.cancel(reason);
        }
        self.reason.get_or_insert(reason);
        let at = Instant::now() + grace;
        self.abort_at = Some(self.abort_at.map_or(at, |t| t.min(at)));
    }
}

/// Extends the lease every third of what is left of it, for as long as the handler runs;
/// returns once the lease is lost (a touch answered `LeaseLost` or `NotFound`). Other
/// errors are logged and the touch is tried again at the next beat.
async fn heartbeat(client: &Client, job: &LeasedJob) {
    let mut deadline = job.lease_deadline_ms;
    loop {
        tokio::time::sleep(touch_every(deadline)).await;
        match client.touch(job, None).await {
            Ok(d) => deadline = d,
            Err(e) if e.is_lease_lost() || e.code() == Some(ErrorCode::NotFound) => return,
            Err(e) => {
                tracing::warn!(id = job.id, error = %e, "could not extend the lease; will try again")
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends acks in batches: everything that finished while the previous batch was on the wire,
/// and the jobs finishing in the same scheduler rounds as the first of them ([`gather`]).
async fn ack_loop(client: Client, mut rx: mpsc::Receiver<Arc<LeasedJob>>, hooks: Hooks) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        gather(&mut rx, &mut batch).await;
        let leases: Vec<&LeasedJob> = batch.iter().map(|job| &**job).collect();
        match client.ack_many(&leases).await {
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

/// Adds to `batch` the jobs that finish in the next scheduler rounds, while each round
/// brings more (at most `ACK_GATHER_ROUNDS`, up to `ACK_BATCH` jobs).
///
/// Why: the first job of a delivered batch to finish wakes the ack task, which ran before
/// the batch's other quick jobs (those made ready after it was woken, or still running on
/// the other core) and sent its ack alone or nearly; the rest went in the next request,
/// so a delivered batch could cost the server two commits (two fsyncs) instead of one
/// (issue 10). A yield lets the job tasks already ready run first. It costs a scheduler
/// round, not a timer: a slow handler's ack never waits for it, and a round that brings
/// nothing ends the wait.
async fn gather(rx: &mut mpsc::Receiver<Arc<LeasedJob>>, batch: &mut Vec<Arc<LeasedJob>>) {
    for _ in 0..ACK_GATHER_ROUNDS {
        if batch.len() >= ACK_BATCH {
            return;
        }
        tokio::task::yield_now().await;
        let before = batch.len();
        while batch.len() < ACK_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() == before {
            return;
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
    fn touch_interval_is_a_third_of_what_is_left() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let d = touch_every(now + 30_000);
        assert!(d <= Duration::from_secs(10) && d > Duration::from_secs(9), "{d:?}");
        assert_eq!(touch_every(now.saturating_sub(5)), MIN_TOUCH_EVERY);
    }

    #[test]
    fn the_job_timeout_wins_over_the_worker_timeout() {
        let limits = Limits {
            timeout: Some(Duration::from_secs(9)),
            timeout_grace: Duration::ZERO,
            shutdown_grace: Duration::ZERO,
        };
        let mut job = LeasedJob::new(1, "q", "n", bytes::Bytes::new(), 1, 0);
        assert_eq!(limits.timeout_for(&job), Some(Duration::from_secs(9)));
        job.timeout_ms = Some(250);
        assert_eq!(limits.timeout_for(&job), Some(Duration::from_millis(250)));
        let none = Limits { timeout: None, ..limits };
        job.timeout_ms = None;
        assert_eq!(none.timeout_for(&job), None);
    }
}
