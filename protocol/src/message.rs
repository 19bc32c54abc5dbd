//! Every message of the protocol.
//!
//! A connection opens with the client's [`ClientFrame::Hello`] and the server's
//! [`ServerFrame::Welcome`]. After that the client sends [`ClientFrame::Request`]s, each
//! with an id it chose, and the server answers each with a [`ServerFrame::Response`]
//! carrying the same id. Responses may come back in any order: a blocking reserve does not
//! hold up the acks pipelined behind it. [`ServerFrame::Goodbye`] is the server's last
//! frame before it closes a connection on purpose (protocol violation, shutdown).
//!
//! Variant order is part of the wire format (bincode encodes the variant index): append new
//! variants at the end, never reorder. The golden tests pin it.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::types::{JobId, LeasedJob, NewJob, QueueStats, RetryHint};

/// First frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// Free text shown in logs and the dashboard, e.g. `mailer-worker@host-3`.
    pub client_name: String,
    /// Credentials, when the server requires them.
    pub token: Option<String>,
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
}

/// One frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    Hello(Hello),
    Request { id: u64, body: Request },
}

/// One frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Welcome(Welcome),
    Response { id: u64, result: Result<Response, WireError> },
    Goodbye(WireError),
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
    Add { queue: String, jobs: Vec<NewJob> },
    /// Take up to `max` ready jobs from `queues`: from the first as many as it has, then from
    /// the next, in the order given; wait up to `timeout_ms` for one to become ready when
    /// none is. An empty answer means the wait ran out.
    Reserve { queues: Vec<String>, max: u32, timeout_ms: u64 },
    /// Complete one or more jobs. Leases that are no longer valid are listed in the answer;
    /// the others are acked regardless.
    Ack { leases: Vec<LeaseRef> },
    /// Report a failed try.
    Nack { lease: LeaseRef, error: String, retry: RetryHint },
    /// Extend a lease by `lease_ms` from now (the job's own lease duration when `None`).
    Touch { lease: LeaseRef, lease_ms: Option<u64> },
    /// Job counts per queue.
    Stats,
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
    Stats {
        queues: Vec<QueueStats>,
    },
}
