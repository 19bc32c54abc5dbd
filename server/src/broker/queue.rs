//! [`Queue`]: one queue's indexes and counters: the ready index (priority, then FIFO), its
//! delayed and dead sets (by time), the idempotency keys of its pending jobs, its per-state
//! counts, totals and per-minute history, its operator settings, the ring of recently
//! completed jobs (with the results their workers acked them with), and the throttle
//! windows of `Unique::Window` keys.
//!
//! Leases and parked waiters are indexed broker-wide (`lease.rs`, `waiters.rs`), and so is
//! "which queue has the earliest delayed or dead deadline" (`mod.rs`), so that one timer
//! serves every queue. The job metadata itself lives in the job table (`job.rs`).
//!
//! Invariants, kept by the broker:
//! 1. Every job in state `Ready` has exactly one entry in `ready`, under its priority. An
//!    entry whose job is no longer `Ready` (an operator removed it) is stale: pops and
//!    listings skip it. So `counts[Ready] > 0` iff a pop will find a job.
//! 2. Entries of one priority are in the order their jobs became ready, and their `seq`s
//!    grow in that order. A retried job queues behind jobs already waiting, whatever its id.
//!    `seq` is what a listing cursor remembers, so paging survives jobs coming and going.
//!    A grouped job's entry is in its group's index (`flow.rs`) instead, under the same
//!    rules; seqs are shared by all of a queue's indexes, so listings merge by them.
//! 3. `delayed` holds `(run_at, id)` of exactly the queue's `Delayed` jobs, `dead` holds
//!    `(died_at, id)` of exactly its `Dead` jobs.
//! 4. `keys` maps a key to the job holding it iff that job is uncommitted, ready, delayed
//!    or active. A dead job remembers its key (the broker's `job_keys`) without holding it,
//!    and takes it back on retry if it is still free.
//! 5. A queue is forgotten (see `Broker::forget_if_idle`) only when `is_idle()`: no job in
//!    any state, no settings, no open throttle window. So no job's `queue` index ever names
//!    a forgotten slot, and no window is lost while it is open.
//! 6. `throttle` maps a key to `(first job, window end)`, and `throttle_ends` holds exactly
//!    one `(window end, key)` per entry of `throttle`. An entry whose end has passed is
//!    pruned by the broker's timer (`Broker::handle_timeout`), so lookups also check the end.
//! 7. `debounce_at` holds the run time a debounce holder (a keyed job added with
//!    `Unique::Debounce`) was last scheduled at; it is a hint, checked against `delayed`
//!    before use, and dropped when the job lets go of its key.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use qd_protocol::JobId;

use super::flow::Flow;
use super::job::JobState;
use crate::model::{Millis, QueueSettings};

/// A completed job as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompletedJob {
    pub id: JobId,
    pub name: Arc<str>,
    pub finished_at_ms: Millis,
    pub attempt: u32,
    pub created_at_ms: Millis,
    pub priority: i32,
    pub max_attempts: u32,
    /// Position in the queue's completion order (`completed_total` when it completed):
    /// what a listing cursor remembers.
    pub seq: u64,
    /// What the worker acked it with (`AckWithResult`); empty for a plain ack. In memory
    /// only, at most `qd_protocol::MAX_RESULT` bytes.
    pub result: Bytes,
}

/// One entry of the ready index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadyEntry {
    /// Order of becoming ready, per queue (invariant 2).
    pub seq: u64,
    pub id: JobId,
    /// When the job became ready, for `oldest_ready_age_ms`.
    pub since: Millis,
}

/// Minutes of completed/failed history kept per queue.
pub(crate) const MINUTES: usize = 60;

/// Counts of one minute: `(minute since the epoch, completed, failed)`.
pub(crate) type MinuteBucket = (u64, u64, u64);

#[derive(Debug)]
pub(crate) struct Queue {
    pub name: Arc<str>,
    /// Ready entries of the jobs without a group (of every job, in a queue that has never
    /// seen a group); grouped jobs wait in their group's index in `flow`.
    ready: ReadyIndex,
    next_ready_seq: u64,
    pub delayed: BTreeSet<(Millis, JobId)>,
    pub dead: BTreeSet<(Millis, JobId)>,
    /// Jobs in each [`JobState`], indexed by `state as usize`.
    counts: [u64; JobState::COUNT],
    /// Idempotency key -> pending job. The `Arc` is shared with the broker's reverse index
    /// so each key is stored once.
    pub keys: HashMap<Arc<str>, JobId>,
    /// Throttle windows (`Unique::Window`): key -> (the job added first, end of its
    /// window). Invariant 6.
    pub throttle: HashMap<Arc<str>, (JobId, Millis)>,
    /// The same windows by end time, for pruning. Invariant 6.
    pub throttle_ends: BTreeSet<(Millis, Arc<str>)>,
    /// Run time of debounce holders. Invariant 7.
    pub debounce_at: HashMap<JobId, Millis>,
    /// Most recent completions, oldest at the front, at most the configured retention.
    completed: VecDeque<CompletedJob>,
    pub settings: QueueSettings,
    pub added_total: u64,
    pub completed_total: u64,
    pub failed_total: u64,
    pub dead_total: u64,
    pub retried_total: u64,
    /// Jobs that expired before they started (`expires_in_ms`).
    pub expired_total: u64,
    /// Per-minute completed/failed counts, indexed by `minute % MINUTES`; a slot whose
    /// minute is not the one asked about counts as zero. Allocated on the first count: a
    /// queue that only a waiter names (or a free slot) stays small.
    minutes: Option<Box<[MinuteBucket; MINUTES]>>,
    /// Whether the broker's list of idle queues holds this queue (at most once).
    pub idle_listed: bool,
    /// Flow control state (issue 9), only for a queue with limits or grouped jobs: a queue
    /// without either pays one pointer and takes the plain path.
    pub flow: Option<Box<Flow>>,
}

impl Queue {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Queue {
            name,
            ready: ReadyIndex::default(),
            next_ready_seq: 0,
            delayed: BTreeSet::new(),
            dead: BTreeSet::new(),
            counts: [0; JobState::COUNT],
            keys: HashMap::new(),
            throttle: HashMap::new(),
            throttle_ends: BTreeSet::new(),
            debounce_at: HashMap::new(),
            completed: VecDeque::new(),
            settings: QueueSettings::default(),
            added_total: 0,
            completed_total: 0,
            failed_total: 0,
            dead_total: 0,
            retried_total: 0,
            expired_total: 0,
            minutes: None,
            idle_listed: false,
            flow: None,
        }
    }

    pub(crate) fn count(&self, state: JobState) -> u64 {
        self.counts[state as usize]
    }

    /// No job in any state, no settings and no throttle window: nothing would be lost by
    /// forgetting the queue except its completed ring and counters (see
    /// `Broker::forget_if_idle`).
    pub(crate) fn is_idle(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
            && self.settings == QueueSettings::default()
            && self.throttle.is_empty()
    }

    /// Takes ready job `id` (of `priority`) out of the ready index; whether it was there.
    /// A linear scan of that priority's entries: only a debounce of a job that is ready
    /// (its delay already over, no worker has taken it yet) needs it.
    /// Only the ungrouped index is searched: a queue with flow control keeps its ready
    /// jobs per group (`flow.rs`), and there the entry is not found.
    pub(crate) fn remove_ready(&mut self, priority: i32, id: JobId) -> bool {
        self.ready.remove(priority, id)
    }

    /// Forgets the result of completed job `id` (the job stays in the ring).
    pub(crate) fn drop_result(&mut self, id: JobId) {
        if let Some(c) = self.completed.iter_mut().rev().find(|c| c.id == id) {
            c.result = Bytes::new();
        }
    }

    /// The result of completed job `id`, if the ring still holds it.
    pub(crate) fn completed_result(&self, id: JobId) -> Option<&Bytes> {
        self.completed.iter().rev().find(|c| c.id == id).map(|c| &c.result)
    }

    pub(crate) fn paused(&self) -> bool {
        self.settings.paused
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

    /// Appends a job that just became ready (the caller sets its state and counts) to the
    /// ungrouped index, or to group `group`'s index in `flow` (which the caller created).
    /// Returns whether the index was empty before.
    pub(crate) fn push_ready(
        &mut self,
        priority: i32,
        id: JobId,
        now: Millis,
        group: Option<u32>,
    ) -> bool {
        let seq = self.next_ready_seq;
        self.next_ready_seq += 1;
        let entry = ReadyEntry { seq, id, since: now };
        match (group, self.flow.as_deref_mut()) {
            (Some(g), Some(flow)) => flow.group_mut(g).ready.push(priority, entry),
            _ => self.ready.push(priority, entry),
        }
    }

    /// Takes the next ungrouped ready entry: lowest priority, then earliest ready. May be
    /// stale (invariant 1): the caller checks the job's state.
    pub(crate) fn pop_ready(&mut self) -> Option<JobId> {
        self.ready.pop()
    }

    /// Whether the ungrouped index holds an entry (maybe stale).
    pub(crate) fn has_ungrouped(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.count(JobState::Ready) > 0
    }

    /// Ready entries in reserve order strictly after `(priority, seq)` (from the start when
    /// `None`), across the ungrouped index and every group's. Stale entries included; the
    /// caller filters. With groups this gathers and sorts every entry after the cursor
    /// (admin listings only; reserves go by turns, see `flow.rs`).
    pub(crate) fn ready_after(
        &self,
        after: Option<(i32, u64)>,
    ) -> Box<dyn Iterator<Item = (i32, ReadyEntry)> + '_> {
        match self.flow.as_deref().filter(|f| !f.groups.is_empty()) {
            None => Box::new(self.ready.after(after)),
            Some(flow) => {
                let mut all: Vec<(i32, ReadyEntry)> = self.ready.after(after).collect();
                for group in flow.groups.values() {
                    all.extend(group.ready.after(after));
                }
                all.sort_unstable_by_key(|&(prio, e)| (prio, e.seq));
                Box::new(all.into_iter())
            }
        }
    }

    /// The longest a ready job of this queue has been waiting, by the time it became ready.
    /// Stale entries are filtered by `is_ready`.
    pub(crate) fn oldest_ready_since(&self, is_ready: impl Fn(JobId) -> bool) -> Option<Millis> {
        let groups = self.flow.iter().flat_map(|f| f.groups.values().map(|g| &g.ready));
        std::iter::once(&self.ready).chain(groups).filter_map(|r| r.oldest_since(&is_ready)).min()
    }

    /// Counts a completion or a failed try in the per-minute history.
    pub(crate) fn count_minute(&mut self, now: Millis, completed: u64, failed: u64) {
        let minute = now / 60_000;
        let minutes = self.minutes.get_or_insert_with(|| Box::new([(u64::MAX, 0, 0); MINUTES]));
        let slot = &mut minutes[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0, 0);
        }
        slot.1 += completed;
        slot.2 += failed;
    }

    /// `(completed, failed)` per minute for the last [`MINUTES`] minutes, oldest first, the
    /// last being the current minute.
    pub(crate) fn minutes(&self, now: Millis) -> Vec<(u64, u64)> {
        let current = now / 60_000;
        (0..MINUTES as u64)
            .rev()
            .map(|back| {
                let Some(minute) = current.checked_sub(back) else { return (0, 0) };
                let Some(minutes) = &self.minutes else { return (0, 0) };
                let slot = minutes[(minute % MINUTES as u64) as usize];
                if slot.0 == minute {
                    (slot.1, slot.2)
                } else {
                    (0, 0)
                }
            })
            .collect()
    }

    pub(crate) fn push_completed(&mut self, mut job: CompletedJob, retention: usize) {
        job.seq = self.completed_total;
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

    /// Newest first, strictly older than completion `seq` when given.
    pub(crate) fn completed_before(&self, seq: Option<u64>) -> impl Iterator<Item = &CompletedJob> {
        // Seqs grow along the ring: bisect for the cut.
        let end =
            seq.map_or(self.completed.len(), |s| self.completed.partition_point(|c| c.seq < s));
        self.completed.range(..end).rev()
    }
}

/// Ready entries by priority (lower first), each FIFO: the ungrouped jobs of a queue, or
/// the jobs of one group. An emptied priority is removed so that clients using many
/// distinct priorities leave nothing behind.
#[derive(Debug, Default)]
pub(crate) struct ReadyIndex {
    by_priority: BTreeMap<i32, VecDeque<ReadyEntry>>,
}

impl ReadyIndex {
    /// Appends; returns whether the index was empty before.
    pub(crate) fn push(&mut self, priority: i32, entry: ReadyEntry) -> bool {
        let was_empty = self.by_priority.is_empty();
        self.by_priority.entry(priority).or_default().push_back(entry);
        was_empty
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_priority.is_empty()
    }

    /// Takes the next entry: lowest priority, then earliest ready. May be stale.
    pub(crate) fn pop(&mut self) -> Option<JobId> {
        let mut entry = self.by_priority.first_entry()?;
        let fifo = entry.get_mut();
        let popped = fifo.pop_front();
        if fifo.is_empty() {
            entry.remove();
        } else if fifo.capacity() > 64 && fifo.len() * 4 <= fifo.capacity() {
            // A drained backlog should not keep its peak memory.
            let keep = fifo.len() * 2;
            fifo.shrink_to(keep);
        }
        popped.map(|e| e.id)
    }

    /// Takes `id` out of `priority`'s entries (a linear scan); whether it was there.
    pub(crate) fn remove(&mut self, priority: i32, id: JobId) -> bool {
        let Some(fifo) = self.by_priority.get_mut(&priority) else { return false };
        let Some(at) = fifo.iter().position(|e| e.id == id) else { return false };
        fifo.remove(at);
        if fifo.is_empty() {
            self.by_priority.remove(&priority);
        }
        true
    }

    /// Entries in pop order strictly after `(priority, seq)`.
    pub(crate) fn after(
        &self,
        after: Option<(i32, u64)>,
    ) -> impl Iterator<Item = (i32, ReadyEntry)> + '_ {
        let start = after.map_or(i32::MIN, |(p, _)| p);
        self.by_priority.range(start..).flat_map(move |(&prio, fifo)| {
            // Seqs grow along the deque (invariant 2): skip up to the cursor by bisection.
            let skip = match after {
                Some((p, seq)) if p == prio => fifo.partition_point(|e| e.seq <= seq),
                _ => 0,
            };
            fifo.range(skip..).map(move |e| (prio, *e))
        })
    }

    fn oldest_since(&self, is_ready: impl Fn(JobId) -> bool) -> Option<Millis> {
        // The front live entry of each priority is its oldest (FIFO by time of readiness).
        self.by_priority
            .values()
            .filter_map(|fifo| fifo.iter().find(|e| is_ready(e.id)).map(|e| e.since))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(id: JobId) -> CompletedJob {
        CompletedJob {
            id,
            name: "n".into(),
            finished_at_ms: id,
            attempt: 1,
            created_at_ms: 0,
            priority: 0,
            max_attempts: 1,
            seq: 0,
            result: Bytes::new(),
        }
    }

    #[test]
    fn pops_by_priority_then_fifo() {
        let mut q = Queue::new("q".into());
        for (prio, id) in [(5, 1), (0, 2), (5, 3), (-1, 4), (0, 5)] {
            q.push_ready(prio, id, 0, None);
        }
        let listed: Vec<JobId> = q.ready_after(None).map(|(_, e)| e.id).collect();
        assert_eq!(listed, [4, 2, 5, 1, 3]);
        let after_2: Vec<JobId> = q.ready_after(Some((0, 1))).map(|(_, e)| e.id).collect();
        assert_eq!(after_2, [5, 1, 3]);
        let order: Vec<JobId> = std::iter::from_fn(|| q.pop_ready()).collect();
        assert_eq!(order, [4, 2, 5, 1, 3]);
        assert!(q.ready.is_empty(), "emptied priorities are dropped");
    }

    #[test]
    fn completed_ring_is_bounded() {
        let mut q = Queue::new("q".into());
        for id in 0..10 {
            q.push_completed(done(id), 3);
        }
        let ids: Vec<JobId> = q.completed_newest_first().map(|c| c.id).collect();
        assert_eq!(ids, [9, 8, 7]);
        let before: Vec<JobId> = q.completed_before(Some(9)).map(|c| c.id).collect();
        assert_eq!(before, [8, 7]);
        assert_eq!(q.completed_total, 10);
        let mut none = Queue::new("n".into());
        none.push_completed(done(1), 0);
        assert_eq!((none.completed_retained(), none.completed_total), (0, 1));
    }

    #[test]
    fn minute_buckets_forget_old_minutes() {
        let mut q = Queue::new("q".into());
        q.count_minute(0, 1, 0);
        q.count_minute(59_999, 1, 2);
        q.count_minute(60_000, 1, 0);
        let m = q.minutes(60_000);
        assert_eq!(m.len(), MINUTES);
        assert_eq!(&m[MINUTES - 2..], [(2, 2), (1, 0)]);
        // An hour later the slot of minute 0 is reused for minute 60.
        q.count_minute(3_600_000, 0, 1);
        let m = q.minutes(3_600_000);
        assert_eq!(m[MINUTES - 1], (0, 1));
        assert_eq!(m.iter().map(|c| c.0).sum::<u64>(), 1, "minute 0 fell out, minute 1 stays");
    }
}
