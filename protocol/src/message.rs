//! Every message of the protocol.
//!
//! A connection opens with the client's [`ClientFrame::Hello`]. A server without a secret
//! answers [`ServerFrame::Welcome`] at once; one with a secret sends
//! [`ServerFrame::Challenge`], the client answers [`ClientFrame::Auth`] with a proof of the
//! secret for the [`Role`] it wants (see [`crate::auth`]), and the server answers `Welcome`
//! (granting that role) or `Goodbye` (`AuthFailed`). After that the client sends [`ClientFrame::Request`]s, each
//! with an id it chose, and the server answers each with a [`ServerFrame::Response`]
//! carrying the same id. Responses may come back in any order: a blocking reserve does not
//! hold up the acks pipelined behind it. A `Subscribe` is answered once and then followed by
//! any number of [`ServerFrame::Event`]s (and [`ServerFrame::Lagged`] markers) carrying its
//! id: pushed frames that answer no request. [`ServerFrame::Goodbye`] is the server's last
//! frame before it closes a connection on purpose (protocol violation, shutdown).
//!
//! Variant order is part of the wire format (bincode encodes the variant index): append new
//! variants at the end, never reorder. The golden tests pin it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::admin::{Cursor, JobDetail, JobState, JobSummary, QueueInfo, SearchQuery};
pub use crate::auth::Role;
use crate::auth::NONCE_LEN;
use crate::error::WireError;
use crate::event::JobEvent;
use crate::flow::QueueLimits;
use crate::limits::de;
use crate::schedule::{Schedule, ScheduleInfo};
use crate::types::{JobId, JobOutcome, LeasedJob, NewJob, QueueStats, RetryHint};

/// First frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// Free text shown in logs and the dashboard, e.g. `mailer-worker@host-3`.
    pub client_name: String,
}

/// The server's answer to a good `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    /// Server software and version, e.g. `qd 0.1.0`.
    pub server: String,
    /// Largest frame the server accepts, in bytes (length prefix excluded).
    pub max_frame: u32,
    /// Most requests a connection may have in flight; more are refused with `Busy`.
    pub max_in_flight: u32,
    /// What this connection may do: the role the client proved, or `Admin` on a server
    /// without a secret.
    pub role: Role,
}

/// One frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    Hello(Hello),
    Request {
        id: u64,
        body: Request,
    },
    /// The answer to a [`ServerFrame::Challenge`]: `proof` is
    /// [`crate::auth::proof`]`(secret, nonce, role)`.
    Auth {
        role: Role,
        proof: [u8; NONCE_LEN],
    },
}

/// One frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Welcome(Welcome),
    Response {
        id: u64,
        result: Result<Response, WireError>,
    },
    Goodbye(WireError),
    /// The server wants proof of a secret before its `Welcome`: a fresh random nonce.
    Challenge {
        nonce: [u8; NONCE_LEN],
    },
    /// A lifecycle event for the subscription made by request `subscription` (the id of its
    /// `Subscribe`). Not a `Response`: a subscription is answered once (`Done`) and then
    /// streams any number of these, which neither answer a request nor count against the
    /// connection's requests in flight.
    Event {
        subscription: u64,
        event: JobEvent,
    },
    /// The subscriber read too slowly: `missed` events of `subscription` were dropped here,
    /// between the events before and after this frame. The server never buffers more than
    /// a bounded number of events per connection.
    Lagged {
        subscription: u64,
        missed: u64,
    },
}

/// A lease presented to ack a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    pub id: JobId,
    pub token: u64,
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Add one or many jobs to one queue (created on first use). All or nothing: if one job
    /// is invalid, none is added.
    Add {
        queue: String,
        #[serde(deserialize_with = "de::jobs")]
        jobs: Vec<NewJob>,
    },
    /// Take up to `max` ready jobs from `queues`: from the first as many as it has, then from
    /// the next, in the order given; wait up to `timeout_ms` for one to become ready when
    /// none is. An empty answer means the wait ran out.
    Reserve {
        #[serde(deserialize_with = "de::queues")]
        queues: Vec<String>,
        max: u32,
        timeout_ms: u64,
    },
    /// Complete one or more jobs. Leases that are no longer valid are listed in the answer;
    /// the others are acked regardless.
    Ack {
        #[serde(deserialize_with = "de::ids")]
        leases: Vec<LeaseRef>,
    },
    /// Report a failed try.
    Nack { lease: LeaseRef, error: String, retry: RetryHint },
    /// Extend a lease by `lease_ms` from now (the job's own lease duration when `None`).
    Touch { lease: LeaseRef, lease_ms: Option<u64> },
    /// Job counts per queue, a page at a time: up to `limit` queues whose names sort after
    /// `after` (from the first when `None`), sorted by name.
    Stats { after: Option<String>, limit: u32 },
    /// Keeps an idle connection from being closed by the server's idle timeout. Answered
    /// `Pong`.
    Ping,
    // Admin requests from here on: a connection of role `Worker` gets `Forbidden`.
    /// Every queue with its counts, state and recent history, a page at a time as in
    /// `Stats`. Answered `Queues`.
    Queues { after: Option<String>, limit: u32 },
    /// Jobs of one queue in one state, a page at a time. Answered `Jobs`.
    Jobs { queue: String, state: JobState, cursor: Option<Cursor>, limit: u32 },
    /// One job in full. Answered `Job`, or `NotFound`.
    Job { id: JobId },
    /// Jobs of one queue (in one state, or any) whose payload matches `query`, a page at a
    /// time. Answered `Jobs`.
    Search {
        queue: String,
        state: Option<JobState>,
        query: SearchQuery,
        cursor: Option<Cursor>,
        limit: u32,
    },
    /// Moves these dead jobs of `queue` back to ready, with fresh attempts. Ids that are not
    /// dead jobs of that queue are skipped. Answered `Count` (jobs moved).
    RetryDead {
        queue: String,
        #[serde(deserialize_with = "de::ids")]
        ids: Vec<JobId>,
    },
    /// Moves every dead job of `queue` (of this job name, when given) back to ready.
    /// Answered `Count`.
    RetryAllDead { queue: String, name: Option<String> },
    /// Deletes the dead jobs of `queue` that died more than `older_than_ms` ago (all when
    /// `None`). Answered `Count`.
    PurgeDead { queue: String, older_than_ms: Option<u64> },
    /// Deletes these jobs, whatever their state but active (an active job belongs to its
    /// worker until acked or expired: it is skipped). Answered `Count`.
    Remove {
        #[serde(deserialize_with = "de::ids")]
        ids: Vec<JobId>,
    },
    /// Makes these delayed jobs ready now. Others are skipped. Answered `Count`.
    Promote {
        #[serde(deserialize_with = "de::ids")]
        ids: Vec<JobId>,
    },
    /// Stops reserves from taking jobs of `queue`; adds still go in. Answered `Done`.
    Pause { queue: String },
    /// Undoes `Pause`. Answered `Done`.
    Resume { queue: String },
    /// Creates or replaces the named schedule. Answered `Schedules` with that one schedule
    /// (its next fire time filled in).
    ScheduleUpsert { schedule: Box<Schedule> },
    /// Deletes the named schedule; jobs it already added stay. Answered `Count` (1 if it
    /// existed, else 0).
    ScheduleRemove { name: String },
    /// The schedules, a page at a time: up to `limit` whose names sort after `after`, in
    /// name order. Answered `Schedules`.
    Schedules { after: Option<String>, limit: u32 },
    /// A running job's progress (a number or small JSON, opaque to the server, at most
    /// [`crate::MAX_PROGRESS`] bytes): kept in memory while the lease lasts and shown in the job's
    /// `JobDetail`; a newer report replaces the older. Answered `Done`.
    Progress { lease: LeaseRef, progress: Bytes },
    /// Puts a leased job back, to run again `delay_ms` from now, without using an attempt:
    /// the lease ends and no failure is recorded. Answered `Nacked { outcome: Retrying }`
    /// with the new run time.
    Snooze { lease: LeaseRef, delay_ms: u64 },
    // Worker and producer requests again (not admin).
    /// Completes one job with a result (at most [`crate::MAX_RESULT`] bytes) that a producer
    /// waiting on it gets. Answered `Acked` (the lease in `failed` when it was not valid).
    AckWithResult { lease: LeaseRef, result: Bytes },
    /// Waits up to `timeout_ms` for job `id` to complete or die. Answered `Outcome` (at once
    /// when it already has), or `NotFound` when the server knows no such job (never added,
    /// removed, or completed so long ago that it left the queue's completed ring).
    Wait { id: JobId, timeout_ms: u64 },
    /// Replaces the flow limits of `queue` (all of them: a limit left `None` is lifted).
    /// Creates the queue if unknown. Answered `Done`.
    SetQueueLimits { queue: String, limits: QueueLimits },
    /// Moves these waiting jobs (ready or delayed) to their queue's dead set now, with the
    /// error `killed by an operator`. Others (active, dead, unknown) are skipped. Admin.
    /// Answered `Count` (jobs moved).
    Kill {
        #[serde(deserialize_with = "de::ids")]
        ids: Vec<JobId>,
    },
    /// Streams the lifecycle events of `queues` (of every queue when empty) on this
    /// connection as [`ServerFrame::Event`]s tagged with this request's id, until
    /// `Unsubscribe` or the connection closes. Answered `Done` once registered; events of
    /// changes committed after that follow. Not replayed: events from before, or while
    /// disconnected, are not sent.
    Subscribe {
        #[serde(deserialize_with = "de::queues")]
        queues: Vec<String>,
    },
    /// Ends the subscription made by request `subscription` of this connection. Answered
    /// `Count` (1 if it existed, else 0); events already on their way may still arrive.
    Unsubscribe { subscription: u64 },
    /// Fires the named schedule now, outside its ticks: adds one job from its template
    /// (keyed `schedule:<name>:now:<unix ms>`) and leaves its next tick and last fire as they
    /// were. Admin. Answered `Added` with the one job's id; an unknown name is
    /// `InvalidArgument`.
    ScheduleRunNow { name: String },
}

impl Request {
    /// Whether only a connection of role [`Role::Admin`] may send this request.
    pub fn is_admin(&self) -> bool {
        match self {
            Request::Add { .. }
            | Request::Reserve { .. }
            | Request::Ack { .. }
            | Request::Nack { .. }
            | Request::Touch { .. }
            | Request::Stats { .. }
            | Request::Ping
            | Request::Progress { .. }
            | Request::Snooze { .. }
            | Request::AckWithResult { .. }
            | Request::Wait { .. }
            | Request::Subscribe { .. }
            | Request::Unsubscribe { .. } => false,
            Request::Queues { .. }
            | Request::Jobs { .. }
            | Request::Job { .. }
            | Request::Search { .. }
            | Request::RetryDead { .. }
            | Request::RetryAllDead { .. }
            | Request::PurgeDead { .. }
            | Request::Remove { .. }
            | Request::Promote { .. }
            | Request::Pause { .. }
            | Request::Resume { .. }
            | Request::ScheduleUpsert { .. }
            | Request::ScheduleRemove { .. }
            | Request::Schedules { .. }
            | Request::SetQueueLimits { .. }
            | Request::Kill { .. }
            | Request::ScheduleRunNow { .. } => true,
        }
    }
}

/// What became of a nacked job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackOutcome {
    /// It will be tried again at this unix ms.
    Retrying { run_at_ms: u64 },
    /// It is in the queue's dead set.
    Dead,
}

/// What the server answers when a request succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Ids of the added jobs, in request order (an existing id where a key matched).
    Added {
        ids: Vec<JobId>,
    },
    /// Leased jobs; empty when the wait ran out.
    Reserved {
        jobs: Vec<LeasedJob>,
    },
    /// Leases that could not be acked, with the reason; every other lease was acked.
    Acked {
        failed: Vec<(JobId, WireError)>,
    },
    Nacked {
        outcome: NackOutcome,
    },
    Touched {
        lease_deadline_ms: u64,
    },
    /// One page of queue stats; `next` is the last name on it when more remain (pass it
    /// as the next request's `after`).
    Stats {
        queues: Vec<QueueStats>,
        next: Option<String>,
    },
    Pong,
    /// One page of queues; `next` as in `Stats`.
    Queues {
        queues: Vec<QueueInfo>,
        next: Option<String>,
    },
    /// One page of jobs; `next` is the cursor of the following page when more remain.
    Jobs {
        jobs: Vec<JobSummary>,
        next: Option<Cursor>,
    },
    Job {
        job: Box<JobDetail>,
    },
    /// How many jobs an admin request changed.
    Count {
        n: u64,
    },
    /// The admin request was carried out.
    Done,
    /// One page of schedules; `next` as in `Stats`.
    Schedules {
        schedules: Vec<ScheduleInfo>,
        next: Option<String>,
    },
    /// The answer to `Wait`.
    Outcome {
        outcome: JobOutcome,
    },
}
