//! Rust client for qd, the job-queue server: [`Client`] for producers, [`Worker`] for
//! consumers.
//!
//! This crate owns the client side of a connection: one TCP socket per [`Client`] (shared by
//! its clones), requests pipelined on it and matched to answers by id, reconnecting when it
//! drops, with the handshake and keepalive (`connection.rs`); TLS (`tls.rs`); the typed
//! requests (`client.rs`); the [`Job`] builder (`job.rs`); the [`Worker`] loop (`worker.rs`),
//! what its handlers get ([`JobContext`], `context.rs`) and return ([`Outcome`],
//! [`JobError`], `outcome.rs`); and [`Error`] (`error.rs`). The wire format itself is
//! `qd_protocol`'s, re-exported here where an API needs its types.
//!
//! # Producer
//!
//! ```no_run
//! use std::time::Duration;
//! use qd_client::{Backoff, Client, Job};
//!
//! # async fn producer() -> Result<(), qd_client::Error> {
//! let client = Client::connect("127.0.0.1:7700").await?;
//! let id = client
//!     .add(
//!         "emails",
//!         Job::json("welcome", &serde_json::json!({ "to": "ada@example.com" }))?
//!             .attempts(5)
//!             .backoff(Backoff::exponential(Duration::from_secs(2)))
//!             .key("welcome-ada"),
//!     )
//!     .await?;
//! println!("added job {id}");
//! # Ok(()) }
//! ```
//!
//! # Worker
//!
//! A handler gets a [`JobContext`] (the job, progress reports, a cancellation token) and says
//! what happened with `Result<`[`Outcome`]`, `[`JobError`]`>`; `?` on an ordinary error
//! means "retry after the backoff". [`Worker::run_simple`] takes the plain
//! `|job| -> Result<(), E>` form.
//!
//! ```no_run
//! use std::time::Duration;
//! use qd_client::{Client, JobContext, JobError, LeasedJobExt, Outcome, Worker};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(serde::Deserialize)]
//! struct Welcome { to: String }
//!
//! # async fn worker() -> Result<(), qd_client::Error> {
//! let client = Client::builder("127.0.0.1:7700").name("mailer").connect().await?;
//! let shutdown = CancellationToken::new();
//! // e.g. cancel `shutdown` on SIGTERM; `run` then lets running jobs finish and returns.
//! Worker::new(client, "emails")
//!     .concurrency(5)
//!     .timeout(Duration::from_secs(30))
//!     .on_failed(|job, err, will_retry| eprintln!("job {} failed: {err} (retry: {will_retry})", job.id))
//!     .run(shutdown, |ctx: JobContext| async move {
//!         // A payload that does not parse will never parse: don't retry it.
//!         let msg: Welcome = ctx.json().map_err(JobError::permanent)?;
//!         println!("sending welcome to {}", msg.to);
//!         Ok(Outcome::Done)
//!     })
//!     .await
//! # }
//! ```
//!
//! # Secrets and TLS
//!
//! A server started with a secret challenges every connection; the client proves the
//! secret without sending it. Admin requests ([`Client::queues`], [`Client::retry_dead`],
//! ...) need the admin role, proved with the server's admin secret.
//!
//! ```no_run
//! use qd_client::{Client, TlsOptions};
//!
//! # async fn admin() -> Result<(), qd_client::Error> {
//! let client = Client::builder("qd.internal:7700")
//!     .secret_from_env() // QD_SECRET, unless .secret(..) was given
//!     .admin()
//!     .tls(TlsOptions::new().ca_pem_file("qd-ca.pem")?)
//!     .connect()
//!     .await?;
//! for q in client.queues().await? {
//!     println!("{}: {} ready, {} dead", q.name, q.ready, q.dead);
//! }
//! # Ok(()) }
//! ```
//!
//! # What a failure means
//!
//! When the connection drops, requests in flight fail with [`Error::Disconnected`]: the
//! server may or may not have applied them. Adds with a [`Job::key`] are safe to retry. A
//! worker's leases are released by the server when its connection drops, so the jobs run
//! again (at-least-once); handlers should be idempotent.

mod client;
mod connection;
mod context;
mod error;
mod job;
mod outcome;
mod subscription;
mod tls;
mod worker;

pub use crate::client::{Client, ClientBuilder, JobPage, SECRET_ENV};
pub use crate::context::{CancelReason, JobContext};
pub use crate::error::Error;
pub use crate::job::{AsLease, Backoff, Job, LeasedJobExt};
pub use crate::outcome::{permanent, JobError, Outcome};
pub use crate::subscription::{Event, Subscription};
pub use crate::tls::TlsOptions;
pub use crate::worker::Worker;

pub use qd_protocol::message::{LeaseRef, NackOutcome, Welcome};
pub use qd_protocol::{
    Cursor, ErrorCode, EventKind, JobDetail, JobEvent, JobFailure, JobId, JobOutcome, JobState,
    JobSummary, LeasedJob, MinuteCounts, NewJob, QueueInfo, QueueLimits, QueueStats, Rate,
    RetryHint, Role, Schedule, ScheduleInfo, ScheduleSpec, SearchQuery, Unique, WireError,
    MAX_ERROR_TEXT, MAX_PROGRESS, MAX_RESULT,
};
pub use tokio_util::sync::CancellationToken;

/// The README's Rust examples, compiled as doc tests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
