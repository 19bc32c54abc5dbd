//! [`Effect`]: what the core asks of the engine after a command or a timeout. The core
//! queues effects in the order they happen; the engine drains them with
//! `Broker::take_effects`, makes the `Persist`s durable, and only then releases the replies
//! and deliveries that depend on them.

use qd_protocol::{JobEvent, JobId, JobOutcome};

use crate::model::Change;

use super::{Lease, WaiterKey};

/// One thing the engine must do on the core's behalf.
#[derive(Debug)]
pub enum Effect {
    /// Must be made durable; the engine releases replies of the request that caused it only
    /// after commit.
    Persist(Change),
    /// A parked reserve is answered: with jobs when some became ready, or empty when its wait
    /// ran out. Like a reply, it must not go out before the `Persist`s queued ahead of it
    /// are committed (a delivered job may have been added by one of them).
    Deliver { waiter: WaiterKey, leases: Vec<Lease> },
    /// A `Wait` for job `id` is answered: it completed, died, or the wait ran out
    /// (`Pending`); `None` when the job was deleted (removed by an operator) while waited
    /// for. Like a reply, it goes out after the `Persist`s queued ahead of it commit.
    Outcome { waiter: WaiterKey, id: JobId, outcome: Option<JobOutcome> },
    /// A lifecycle event for subscribers (`events.rs`), emitted only for watched queues.
    /// It reports the `Persist` just before it: the engine announces it only once that
    /// change is committed, so no subscriber hears of something a crash could undo.
    /// Boxed: rare next to the other effects.
    Event(Box<JobEvent>),
}
