//! Uniqueness beyond the idempotency key (`JobOptions::unique`) and expiry
//! (`JobOptions::expires_in_ms`): the broker's rules for them, as `impl Broker` blocks.
//!
//! - `WhilePending` (the default): a key held by a pending job (queue.rs invariant 4)
//!   answers with that job's id.
//! - `Window { ms }` (throttle): as `WhilePending`, and besides, for `ms` after the first
//!   job with the key was added, whatever became of it, the key answers with that job's id.
//!   The windows live in the queue (`throttle`, invariant 6) and are pruned by the timer.
//!   After a restart they are rebuilt from the stored records of jobs still waiting or
//!   dead; a job that completed (or was removed) inside its window has no record left, so
//!   its window is lost on restart and the key is free again.
//! - `Debounce`: while the key's holder has not started (uncommitted, ready or delayed, no
//!   failed try), a new add replaces its payload and restarts its delay from now
//!   (`Change::Replace`), and answers with its id. The holder goes back to uncommitted
//!   until the replace is committed, so no worker can take the old payload in between
//!   (read-committed, as for an insert). A holder already running makes a new job, which
//!   takes the key over.
//!
//! The mode of the add being made decides; a key's earlier jobs may have used another.
//!
//! Expiry: a job that has not started by `created_at + expires_in_ms` is not delivered: when
//! a reserve reaches it, or when its delay ends after that instant, it goes to the dead set
//! with the error [`EXPIRED`] (counted in `expired_total`, not as a failed try). Its key
//! stops deduplicating, as a dead job's does. A ready job nobody reserves stays counted as
//! ready until a reserve reaches it. An operator's retry of an expired job runs it however
//! late: expiry applies once.

use std::sync::Arc;

use bytes::Bytes;
use qd_protocol::{JobId, JobOptions, NewJob, Unique};

use super::flow::UNGROUPED;
use super::job::{JobMeta, JobState};
use super::{edit_timed, Broker, Effect};
use crate::model::{Change, JobRecord, Millis};

/// Error text recorded when a job expires before it started.
pub const EXPIRED: &str = "expired";

impl Broker {
    /// The id an add of `job` to queue `q` answers with instead of adding, if any: the
    /// key's pending holder, the first job of an open throttle window, or a debounced
    /// holder (whose payload and run time this replaces).
    pub(super) fn unique_holder(&mut self, now: Millis, q: u32, job: &NewJob) -> Option<JobId> {
        let key = job.options.key.as_deref()?;
        let queue = &self.queues[q as usize];
        let holder = queue.keys.get(key).copied();
        match job.options.unique {
            Unique::WhilePending => holder,
            Unique::Window { .. } => holder.or_else(|| {
                queue.throttle.get(key).filter(|&&(_, end)| end > now).map(|&(id, _)| id)
            }),
            Unique::Debounce => {
                let holder = holder?;
                let meta = *self.jobs.get(holder)?;
                let waiting = matches!(
                    meta.state,
                    JobState::Uncommitted | JobState::Ready | JobState::Delayed
                );
                if !waiting || meta.failures > 0 {
                    return None;
                }
                let run_at_ms = now.saturating_add(job.options.delay_ms);
                self.debounce(holder, &meta, job.payload.clone(), run_at_ms);
                Some(holder)
            }
        }
    }

    /// After job `id` was added to `q` with `options` (and claimed a free key): opens its
    /// throttle window, or records its run time as a debounce holder. A debounced add that
    /// found its holder running takes the key over.
    pub(super) fn unique_added(&mut self, now: Millis, q: u32, options: &JobOptions, id: JobId) {
        let Some(key) = options.key.as_deref() else { return };
        match options.unique {
            Unique::WhilePending => {}
            Unique::Window { ms } => self.open_window(q, key, id, now.saturating_add(ms)),
            Unique::Debounce => {
                let run_at = now.saturating_add(options.delay_ms);
                let queue = &mut self.queues[q as usize];
                if queue.keys.get(key) != Some(&id) {
                    // The holder is running: this job holds the key from now on.
                    let key: Arc<str> = Arc::from(key);
                    queue.keys.insert(key.clone(), id);
                    self.job_keys.insert(id, key);
                    if let Some(meta) = self.jobs.get_mut(id) {
                        meta.keyed = true;
                    }
                }
                self.queues[q as usize].debounce_at.insert(id, run_at);
            }
        }
    }

    /// Recovery: reopens the throttle window of a stored record still inside it.
    pub(super) fn restore_unique(&mut self, now: Millis, q: u32, record: &JobRecord) {
        let (Some(key), Unique::Window { ms }) = (&record.options.key, record.options.unique)
        else {
            return;
        };
        let end = record.created_at_ms.saturating_add(ms);
        let open = self.queues[q as usize].throttle.get(key.as_str()).map(|&(_, e)| e);
        if end > now && open.is_none_or(|e| e < end) {
            self.open_window(q, key, record.id, end);
        }
    }

    fn open_window(&mut self, q: u32, key: &str, id: JobId, end: Millis) {
        let queue = &mut self.queues[q as usize];
        let key: Arc<str> = Arc::from(key);
        if let Some((_, old_end)) = queue.throttle.insert(key.clone(), (id, end)) {
            let old = (old_end, key.clone());
            edit_timed(&mut self.throttle_heads, &mut queue.throttle_ends, q, |s| s.remove(&old));
        }
        edit_timed(&mut self.throttle_heads, &mut queue.throttle_ends, q, |s| s.insert((end, key)));
    }

    /// Drops the throttle windows that ended at or before `now`.
    pub(super) fn prune_windows(&mut self, now: Millis) {
        while let Some(&(end, q)) = self.throttle_heads.first() {
            if end > now {
                break;
            }
            let queue = &mut self.queues[q as usize];
            let Some((end, key)) = queue.throttle_ends.first().cloned() else {
                self.throttle_heads.remove(&(end, q));
                continue;
            };
            let entry = (end, key.clone());
            edit_timed(&mut self.throttle_heads, &mut queue.throttle_ends, q, |s| s.remove(&entry));
            if queue.throttle.get(&key).is_some_and(|&(_, e)| e == end) {
                queue.throttle.remove(&key);
            }
            self.forget_if_idle(q);
        }
    }

    /// Replaces the payload of waiting job `id` and reschedules it at `run_at_ms`: it goes
    /// back to uncommitted until the `Change::Replace` is committed (`commit_added`).
    fn debounce(&mut self, id: JobId, meta: &JobMeta, payload: Bytes, run_at_ms: Millis) {
        let q = meta.queue;
        match meta.state {
            JobState::Ready => {
                // A grouped job's entry is in its group's index (queue.rs invariant 2), not
                // the queue's: left there, it would be a second live entry once the
                // replace is committed and the job is ready again.
                let g = self.group_of(meta);
                let queue = &mut self.queues[q as usize];
                match queue.flow.as_deref_mut().filter(|_| g != UNGROUPED) {
                    Some(flow) => {
                        if let Some(group) = flow.groups.get_mut(&g) {
                            group.ready.remove(meta.priority, id);
                        }
                    }
                    None => {
                        queue.remove_ready(meta.priority, id);
                    }
                }
            }
            JobState::Delayed => {
                let hint = self.queues[q as usize].debounce_at.get(&id).copied();
                let at = hint.filter(|&at| self.queues[q as usize].delayed.contains(&(at, id)));
                // Without a good hint (after a restart), find the entry by a scan.
                let at = at.or_else(|| {
                    self.queues[q as usize].delayed.iter().find(|e| e.1 == id).map(|e| e.0)
                });
                if let Some(at) = at {
                    self.delayed_remove(q, at, id);
                }
            }
            _ => {}
        }
        if meta.state != JobState::Uncommitted {
            self.queues[q as usize].recount(Some(meta.state), Some(JobState::Uncommitted));
            if let Some(m) = self.jobs.get_mut(id) {
                m.state = JobState::Uncommitted;
            }
        }
        self.uncommitted.insert(id, run_at_ms);
        self.queues[q as usize].debounce_at.insert(id, run_at_ms);
        self.effects.push(Effect::Persist(Change::Replace { id, payload, run_at_ms }));
    }

    /// Whether job `meta` may no longer start at `now` (`expires_in_ms`).
    pub(super) fn is_expired(&self, meta: &JobMeta, now: Millis) -> bool {
        if meta.failures > 0 || meta.expiry_spent {
            return false;
        }
        let expires = self.policies.get(meta.policy).and_then(|p| p.expires_in_ms);
        expires.is_some_and(|ms| meta.created_at_ms.saturating_add(ms) <= now)
    }

    /// Job `id` (in state `from`, already out of that state's index) expired: to the dead
    /// set with the error [`EXPIRED`]. Not a failed try: `failed_total` is not counted.
    pub(super) fn expire(&mut self, now: Millis, id: JobId, from: JobState) {
        let Some(meta) = self.jobs.get_mut(id) else { return };
        meta.expiry_spent = true;
        let q = meta.queue;
        self.queues[q as usize].expired_total += 1;
        self.bury(now, id, from, EXPIRED, || qd_protocol::EventKind::Expired);
    }
}

/// Whether a stored record expired before (restore marks it so a retry can run it).
pub(super) fn expired_before(record: &JobRecord) -> bool {
    record.errors.iter().any(|e| e.message == EXPIRED)
}
