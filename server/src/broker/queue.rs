//! [`Queue`]: one queue's indexes and counters: the ready index (priority, then FIFO), the
//! idempotency keys of its pending jobs, its per-state counts and totals, and the ring of
//! recently completed jobs.
//!
//! Delayed jobs, leases and parked waiters are indexed broker-wide (`mod.rs`, `lease.rs`,
//! `waiters.rs`): they are ordered by time across all queues. The job metadata itself lives
//! in the job table (`job.rs`).
//!
//! Invariants, kept by the broker:
//! 1. Every job in state `Ready` has exactly one entry in `ready`, under its priority, and
//!    nothing else does. So `counts[Ready] > 0` iff a pop will find a job.
//! 2. Entries of one priority are in the order their jobs became ready. This is the
//!    "sequence number assigned on entering ready" ordering, kept implicitly by appending:
//!    a retried job queues behind jobs already waiting, whatever its id.
//! 3. `keys` maps a key to the job holding it iff that job is ready, delayed or active.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use qd_protocol::JobId;

use super::job::JobState;
use crate::model::Millis;

/// A completed job as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompletedJob {
    pub id: JobId,
    pub name: Arc<str>,
    pub finished_at_ms: Millis,
    pub attempt: u32,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub name: Arc<str>,
    /// Ready job ids by priority (lower first), each FIFO. An emptied priority is removed so
    /// that clients using many distinct priorities leave nothing behind.
    ready: BTreeMap<i32, VecDeque<JobId>>,
    /// Jobs in each [`JobState`], indexed by `state as usize`.
    counts: [u64; JobState::COUNT],
    /// Idempotency key -> pending job. The `Arc` is shared with the broker's reverse index
    /// so each key is stored once.
    pub keys: HashMap<Arc<str>, JobId>,
    /// Most recent completions, oldest at the front, at most the configured retention.
    completed: VecDeque<CompletedJob>,
    pub completed_total: u64,
    pub failed_total: u64,
}

impl Queue {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Queue {
            name,
            ready: BTreeMap::new(),
            counts: [0; JobState::COUNT],
            keys: HashMap::new(),
            completed: VecDeque::new(),
            completed_total: 0,
            failed_total: 0,
        }
    }

    pub(crate) fn count(&self, state: JobState) -> u64 {
        self.counts[state as usize]
    }

    /// Records a job entering `to` (from `from`, or new when `None`).
    pub(crate) fn recount(&mut self, from: Option<JobState>, to: Option<JobState>) {
        if let Some(from) = from {
            self.counts[from as usize] = self.counts[from as usize].saturating_sub(1);
        }
        if let Some(to) = to {
            self.counts[to as usize] += 1;
        }
    }

    /// Appends a job that just became ready (the caller sets its state and counts).
    pub(crate) fn push_ready(&mut self, priority: i32, id: JobId) {
        self.ready.entry(priority).or_default().push_back(id);
    }

    /// Takes the next ready job id: lowest priority, then earliest ready.
    pub(crate) fn pop_ready(&mut self) -> Option<JobId> {
        let mut entry = self.ready.first_entry()?;
        let fifo = entry.get_mut();
        let id = fifo.pop_front();
        if fifo.is_empty() {
            entry.remove();
        } else if fifo.capacity() > 64 && fifo.len() * 4 <= fifo.capacity() {
            // A drained backlog should not keep its peak memory.
            let keep = fifo.len() * 2;
            fifo.shrink_to(keep);
        }
        id
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.count(JobState::Ready) > 0
    }

    pub(crate) fn push_completed(&mut self, job: CompletedJob, retention: usize) {
        self.completed_total += 1;
        if retention == 0 {
            return;
        }
        while self.completed.len() >= retention {
            self.completed.pop_front();
        }
        self.completed.push_back(job);
    }

    pub(crate) fn completed_retained(&self) -> usize {
        self.completed.len()
    }

    /// Newest first.
    pub(crate) fn completed_newest_first(&self) -> impl Iterator<Item = &CompletedJob> {
        self.completed.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_priority_then_fifo() {
        let mut q = Queue::new("q".into());
        for (prio, id) in [(5, 1), (0, 2), (5, 3), (-1, 4), (0, 5)] {
            q.push_ready(prio, id);
        }
        let order: Vec<JobId> = std::iter::from_fn(|| q.pop_ready()).collect();
        assert_eq!(order, [4, 2, 5, 1, 3]);
        assert!(q.ready.is_empty(), "emptied priorities are dropped");
    }

    #[test]
    fn completed_ring_is_bounded() {
        let mut q = Queue::new("q".into());
        for id in 0..10 {
            let job = CompletedJob { id, name: "n".into(), finished_at_ms: id, attempt: 1 };
            q.push_completed(job, 3);
        }
        let ids: Vec<JobId> = q.completed_newest_first().map(|c| c.id).collect();
        assert_eq!(ids, [9, 8, 7]);
        assert_eq!(q.completed_total, 10);
        let mut none = Queue::new("n".into());
        none.push_completed(
            CompletedJob { id: 1, name: "n".into(), finished_at_ms: 0, attempt: 1 },
            0,
        );
        assert_eq!((none.completed_retained(), none.completed_total), (0, 1));
    }
}
