//! [`JobContext`]: what a [`Worker`](crate::Worker) hands each handler call: the leased
//! job, a way to report progress, and a cancellation signal with its [`CancelReason`].
//!
//! The worker owns the other end: its job task cancels the token (lease lost, per-job
//! timeout, shutdown) and records why before it does, so a handler that sees the token fire
//! can read the reason. The handler owns the context for the whole call (it is `'static`
//! and cheap to clone), so it may move it into subtasks.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use qd_protocol::LeasedJob;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::Error;

/// Why a handler's token was cancelled. The first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The server no longer holds this try's lease (it ran out, or the job was taken
    /// back): the job will be delivered again and this try's ack would fail.
    LeaseLost,
    /// The try ran longer than its timeout (the job's, else the worker's).
    TimedOut(Duration),
    /// The worker is shutting down.
    ShuttingDown,
}

/// One job as a handler gets it. Derefs to the [`LeasedJob`], so `ctx.id`,
/// `ctx.json::<T>()` (with [`crate::LeasedJobExt`]) read the job directly.
///
/// A handler should watch [`JobContext::cancelled`] in long work (`tokio::select!` on
/// `ctx.cancelled().cancelled()`), and return soon after it fires: the worker aborts the
/// handler after a grace period (see [`crate::Worker::timeout_grace`] and
/// [`crate::Worker::shutdown_grace`]).
#[derive(Debug, Clone)]
pub struct JobContext {
    job: Arc<LeasedJob>,
    client: Client,
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl JobContext {
    /// A context for `job` whose progress reports go through `client`. The worker makes
    /// these; a test of a handler may make one too.
    pub fn new(client: Client, job: LeasedJob) -> Self {
        Self::shared(client, Arc::new(job))
    }

    /// A context on a job the worker's job task also holds, so the job is not copied.
    pub(crate) fn shared(client: Client, job: Arc<LeasedJob>) -> Self {
        JobContext {
            job,
            client,
            token: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
        }
    }

    /// The job being run.
    pub fn job(&self) -> &LeasedJob {
        &self.job
    }

    /// Fires when the handler should stop: see [`JobContext::cancel_reason`] for why.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.token
    }

    /// Why [`JobContext::cancelled`] fired, or `None` while it has not.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    /// Reports how far the job got (a number or small JSON, at most
    /// [`qd_protocol::MAX_PROGRESS`] bytes). The server keeps the latest report with the
    /// lease and shows it in the job's detail; it is gone once the try ends.
    pub async fn progress(&self, progress: impl Into<Bytes>) -> Result<(), Error> {
        self.client.progress(&*self.job, progress.into()).await
    }

    /// [`JobContext::progress`] with `value` as JSON.
    pub async fn progress_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.progress(serde_json::to_vec(value)?).await
    }

    /// Records `reason` (unless one is recorded already) and fires the token.
    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }
}

impl Deref for JobContext {
    type Target = LeasedJob;

    fn deref(&self) -> &LeasedJob {
        &self.job
    }
}
