//! Lifecycle events of jobs, pushed to subscribers (`Request::Subscribe`).
//!
//! This file owns the event's wire shape only. Which changes produce an event, and when it
//! may be sent (after the change it reports is committed), is the server's business; how a
//! slow subscriber loses events (`ServerFrame::Lagged`) is described in docs/EVENTS.md.
//!
//! Variant order is part of the wire format (bincode encodes the variant index): append new
//! kinds at the end, never reorder. The golden tests pin it.

use serde::{Deserialize, Serialize};

use crate::types::JobId;

/// Something that happened to one job. Only sent once the change it reports is durable, so
/// a subscriber never hears of something a crash could undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub queue: String,
    pub id: JobId,
    /// The job's name (its kind of work), as added.
    pub name: String,
    pub kind: EventKind,
    /// When it happened, unix ms (the server's clock).
    pub at_ms: u64,
}

/// What happened. More kinds may come: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// The job was added (committed: a worker may now get it).
    Added,
    /// A worker acked it; its record is gone.
    Completed,
    /// A try failed; it runs again at `run_at_ms`.
    Failed { error: String, run_at_ms: u64 },
    /// It went to the dead set: attempts ran out, or its worker said never to retry.
    DeadLettered { error: String },
    /// It was not started by its deadline (`expires_in`) and went to the dead set.
    Expired,
}
