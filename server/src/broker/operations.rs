//! What an operator does to the core (issue 8): pause and resume a queue, look at queues
//! and jobs page by page, retry or purge dead jobs, remove jobs, promote delayed ones, kill
//! waiting ones (move them to the dead set; issue 11, Faktory's MUTATE `kill`).
//!
//! Same rules as the worker-facing methods in `mod.rs`: `now` is an argument, every
//! mutation is queued as an `Effect::Persist` (the engine answers only after the commit),
//! and parked waiters are served before a call returns. The answers are the plain types of
//! `admin.rs`; mapping them to wire messages is the engine's job.
//!
//! Costs: listings are O(page) plus a bisection, except active jobs (a scan of all leases,
//! which are bounded by workers' in-flight reserves). `job_view` and the id-based mutations
//! look a delayed or dead job's time up by scanning its queue's set once per call
//! (O(set + ids)): jobs keep 32 bytes of metadata, with no room for a second timestamp.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

use qd_protocol::{validate_queue_name, JobId};

use super::admin::{Cursor, JobStateKind, JobView, MinuteCounts, Page, QueueView};
use super::job::{JobMeta, JobState};
use super::{Broker, BrokerError};
use crate::model::{AttemptError, Change, Millis};

/// Most items one listing page returns, whatever the caller asks.
pub const MAX_PAGE: usize = 1000;

/// Error text recorded on a job an operator killed ([`Broker::kill`]).
pub const KILLED: &str = "killed by an operator";

impl Broker {
    /// Pauses `queue`: reserves get nothing from it and its parked waiters stay parked;
    /// adds still land. Creates the queue if unknown (a paused queue is kept until
    /// resumed). Persists `Change::Settings` when it changes anything.
    pub fn pause(&mut self, now: Millis, queue: &str) -> Result<(), BrokerError> {
        self.set_paused(now, queue, true)
    }

    /// Undoes [`Broker::pause`]; parked waiters get the queue's ready jobs at once.
    pub fn resume(&mut self, now: Millis, queue: &str) -> Result<(), BrokerError> {
        self.set_paused(now, queue, false)
    }

    fn set_paused(&mut self, now: Millis, queue: &str, paused: bool) -> Result<(), BrokerError> {
        validate_queue_name(queue).map_err(BrokerError::from_validation)?;
        if !paused && !self.queue_index.contains_key(queue) {
            return Ok(());
        }
        let q = self.queue_idx(queue);
        let state = &mut self.queues[q as usize];
        if state.settings.paused == paused {
            return Ok(());
        }
        state.settings.paused = paused;
        let settings = state.settings.clone();
        self.effects
            .push(super::Effect::Persist(Change::Settings { queue: queue.to_owned(), settings }));
        if !paused {
            if self.queues[q as usize].has_ready() {
                self.touched.push(q);
            }
            self.serve_touched(now);
            self.forget_if_idle(q);
        }
        Ok(())
    }

    /// Queues sorted by name, the first `limit` (at most [`MAX_PAGE`]) after `after`, and
    /// the name to pass as `after` for the next page (`None`: no more).
    pub fn queue_views(
        &self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<QueueView>, Option<String>) {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut names: Vec<(&Arc<str>, u32)> = self
            .queue_index
            .iter()
            .filter(|(name, _)| after.is_none_or(|a| &***name > a))
            .map(|(name, &q)| (name, q))
            .collect();
        names.sort_unstable();
        let more = names.len() > limit;
        names.truncate(limit);
        let views: Vec<QueueView> = names.iter().map(|&(_, q)| self.queue_view(now, q)).collect();
        let next = if more { views.last().map(|v| v.name.clone()) } else { None };
        (views, next)
    }

    fn queue_view(&self, now: Millis, q: u32) -> QueueView {
        let queue = &self.queues[q as usize];
        let is_ready = |id| self.jobs.get(id).is_some_and(|m| m.state == JobState::Ready);
        QueueView {
            name: queue.name.to_string(),
            paused: queue.paused(),
            ready: queue.count(JobState::Ready) + queue.count(JobState::Uncommitted),
            delayed: queue.count(JobState::Delayed),
            active: queue.count(JobState::Active),
            dead: queue.count(JobState::Dead),
            completed: queue.completed_retained() as u64,
            oldest_ready_age_ms: queue.oldest_ready_since(is_ready).map(|s| now.saturating_sub(s)),
            added_total: queue.added_total,
            completed_total: queue.completed_total,
            failed_total: queue.failed_total,
            dead_total: queue.dead_total,
            retried_total: queue.retried_total,
            minutes: queue
                .minutes(now)
                .into_iter()
                .map(|(completed, failed)| MinuteCounts { completed, failed })
                .collect(),
            limits: queue.settings.limits,
            rate_limited_until_ms: self.held_until(now, q),
        }
    }

    /// One page of `queue`'s jobs in `state`, at most `limit` (at most [`MAX_PAGE`]).
    ///
    /// Orders: ready in reserve order (priority, then the order they became ready);
    /// delayed by run time, then id; active by lease deadline, then id; dead newest death
    /// first (then higher id first); completed newest first. `cursor` is a page's `next`;
    /// see `admin.rs` for why paging stays correct while the queue changes. An unknown
    /// queue lists nothing. Uncommitted jobs are not listed.
    pub fn list_jobs(
        &self,
        _now: Millis,
        queue: &str,
        state: JobStateKind,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page<JobView>, BrokerError> {
        let cursor = cursor.map(|c| Cursor::decode(state, c)).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let Some(&q) = self.queue_index.get(queue) else {
            return Ok(Page { items: Vec::new(), next: None });
        };
        let qs = &self.queues[q as usize];
        // Take one more than asked to learn whether a next page exists.
        let mut found: Vec<(Cursor, JobView)> = Vec::with_capacity(limit + 1);
        match state {
            JobStateKind::Ready => {
                let after = match cursor {
                    Some(Cursor::Ready { priority, seq }) => Some((priority, seq)),
                    _ => None,
                };
                for (priority, entry) in qs.ready_after(after) {
                    if found.len() > limit {
                        break;
                    }
                    let Some(meta) = self.jobs.get(entry.id) else { continue };
                    if meta.state != JobState::Ready || meta.queue != q {
                        continue;
                    }
                    let mut view = self.view(entry.id, meta, JobStateKind::Ready);
                    view.run_at_ms = Some(entry.since);
                    found.push((Cursor::Ready { priority, seq: entry.seq }, view));
                }
            }
            JobStateKind::Delayed => {
                let from = match cursor {
                    Some(Cursor::Delayed { run_at, id }) => Bound::Excluded((run_at, id)),
                    _ => Bound::Unbounded,
                };
                for &(run_at, id) in qs.delayed.range((from, Bound::Unbounded)).take(limit + 1) {
                    let Some(meta) = self.jobs.get(id) else { continue };
                    let mut view = self.view(id, meta, JobStateKind::Delayed);
                    view.run_at_ms = Some(run_at);
                    found.push((Cursor::Delayed { run_at, id }, view));
                }
            }
            JobStateKind::Active => {
                let after = match cursor {
                    Some(Cursor::Active { deadline, id }) => Some((deadline, id)),
                    _ => None,
                };
                for (deadline, id) in self.leases.by_deadline() {
                    if found.len() > limit {
                        break;
                    }
                    if after.is_some_and(|a| (deadline, id) <= a) {
                        continue;
                    }
                    let Some(meta) = self.jobs.get(id).filter(|m| m.queue == q) else { continue };
                    let view = self.active_view(id, meta);
                    found.push((Cursor::Active { deadline, id }, view));
                }
            }
            JobStateKind::Dead => {
                let to = match cursor {
                    Some(Cursor::Dead { died_at, id }) => Bound::Excluded((died_at, id)),
                    _ => Bound::Unbounded,
                };
                for &(died_at, id) in qs.dead.range((Bound::Unbounded, to)).rev().take(limit + 1) {
                    let Some(meta) = self.jobs.get(id) else { continue };
                    let mut view = self.view(id, meta, JobStateKind::Dead);
                    view.finished_at_ms = Some(died_at);
                    found.push((Cursor::Dead { died_at, id }, view));
                }
            }
            JobStateKind::Completed => {
                let before = match cursor {
                    Some(Cursor::Completed { seq }) => Some(seq),
                    _ => None,
                };
                for c in qs.completed_before(before).take(limit + 1) {
                    found.push((Cursor::Completed { seq: c.seq }, self.completed_view(q, c)));
                }
            }
        }
        let more = found.len() > limit;
        found.truncate(limit);
        let next = if more { found.last().map(|(c, _)| c.encode()) } else { None };
        Ok(Page { items: found.into_iter().map(|(_, v)| v).collect(), next })
    }

    /// When the lease on `id` was granted, if the job is active: one hash lookup, for the
    /// reserve-to-ack metric on the ack path (`job_view` may scan every completed ring,
    /// which a flood of acks naming unknown ids would turn into work per id).
    pub fn lease_started(&self, id: JobId) -> Option<Millis> {
        self.leases.get(id).map(|lease| lease.since)
    }

    /// One job, in whatever state, including the completed jobs still in a ring.
    pub fn job_view(&self, id: JobId) -> Option<JobView> {
        let Some(meta) = self.jobs.get(id) else {
            return self.queue_index.values().find_map(|&q| {
                let c = self.queues[q as usize].completed_newest_first().find(|c| c.id == id)?;
                Some(self.completed_view(q, c))
            });
        };
        let queue = &self.queues[meta.queue as usize];
        Some(match meta.state {
            JobState::Ready => {
                let mut view = self.view(id, meta, JobStateKind::Ready);
                view.run_at_ms =
                    queue.ready_after(None).find(|(_, e)| e.id == id).map(|(_, e)| e.since);
                view
            }
            JobState::Uncommitted => {
                let mut view = self.view(id, meta, JobStateKind::Ready);
                view.run_at_ms = self.uncommitted.get(&id).copied();
                view
            }
            JobState::Delayed => {
                let mut view = self.view(id, meta, JobStateKind::Delayed);
                view.run_at_ms = queue.delayed.iter().find(|e| e.1 == id).map(|e| e.0);
                view
            }
            JobState::Dead => {
                let mut view = self.view(id, meta, JobStateKind::Dead);
                view.finished_at_ms = queue.dead.iter().find(|e| e.1 == id).map(|e| e.0);
                view
            }
            JobState::Active => self.active_view(id, meta),
        })
    }

    /// Dead jobs of `queue` among `ids` go back to ready now with their attempts reset
    /// (`failures` = 0; the stored error history is kept). Returns how many. Persists
    /// `Change::Retry` each. A retried job takes back its idempotency key unless a job
    /// added since holds it (then it goes on without; after a restart, too, the first
    /// pending job by id claims it).
    pub fn retry_dead(&mut self, now: Millis, queue: &str, ids: &[JobId]) -> u64 {
        let wanted: HashSet<JobId> = ids.iter().copied().collect();
        self.retry_dead_where(now, queue, |_, id| wanted.contains(&id))
    }

    /// Every dead job of `queue` (only those named `name`, when given) goes back to ready,
    /// as [`Broker::retry_dead`].
    pub fn retry_all_dead(&mut self, now: Millis, queue: &str, name: Option<&str>) -> u64 {
        self.retry_dead_where(now, queue, |broker, id| match name {
            None => true,
            Some(name) => broker
                .jobs
                .get(id)
                .and_then(|m| broker.names.get(m.name))
                .is_some_and(|n| &**n == name),
        })
    }

    fn retry_dead_where(
        &mut self,
        now: Millis,
        queue: &str,
        pick: impl Fn(&Broker, JobId) -> bool,
    ) -> u64 {
        let Some(&q) = self.queue_index.get(queue) else { return 0 };
        let chosen: Vec<(Millis, JobId)> = self.queues[q as usize]
            .dead
            .iter()
            .copied()
            .filter(|&(_, id)| pick(self, id))
            .collect();
        for &(died_at, id) in &chosen {
            self.dead_remove(q, died_at, id);
            if let Some(meta) = self.jobs.get_mut(id) {
                meta.failures = 0;
            }
            self.queues[q as usize].retried_total += 1;
            self.reclaim_key(q, id);
            self.schedule(now, id, Some(JobState::Dead), now);
            self.effects.push(super::Effect::Persist(Change::Retry { id, run_at_ms: now }));
        }
        self.serve_touched(now);
        chosen.len() as u64
    }

    /// Deletes `queue`'s dead jobs that died at least `older_than_ms` before `now` (all of
    /// them when `None`). Returns how many. Persists `Change::Remove` each.
    pub fn purge_dead(&mut self, now: Millis, queue: &str, older_than_ms: Option<u64>) -> u64 {
        let Some(&q) = self.queue_index.get(queue) else { return 0 };
        let cut = older_than_ms.map_or(Millis::MAX, |age| now.saturating_sub(age));
        let chosen: Vec<(Millis, JobId)> =
            self.queues[q as usize].dead.range(..=(cut, JobId::MAX)).copied().collect();
        for &(died_at, id) in &chosen {
            self.drop_dead(q, died_at, id);
        }
        self.forget_if_idle(q);
        chosen.len() as u64
    }

    /// Deletes jobs that are ready, delayed or dead; returns how many. Active jobs are
    /// skipped, not refused: a worker holds them, and its ack or nack decides (remove it
    /// after that, if it is then dead). Uncommitted and unknown ids are skipped too.
    /// Frees idempotency keys. Persists `Change::Remove` each.
    pub fn remove(&mut self, _now: Millis, ids: &[JobId]) -> u64 {
        let mut removed = 0;
        let mut touched_queues: Vec<u32> = Vec::new();
        let mut by_queue: Vec<(u32, HashSet<JobId>)> = Vec::new();
        for &id in ids {
            let Some(meta) = self.jobs.get(id).copied() else { continue };
            match meta.state {
                JobState::Ready => {
                    // Its ready entry goes stale (invariant 1 of queue.rs): no scan needed.
                    self.queues[meta.queue as usize].recount(Some(JobState::Ready), None);
                    self.delete_job(id);
                    touched_queues.push(meta.queue);
                    removed += 1;
                }
                JobState::Delayed | JobState::Dead => {
                    match by_queue.iter_mut().find(|e| e.0 == meta.queue) {
                        Some((_, set)) => {
                            set.insert(id);
                        }
                        None => by_queue.push((meta.queue, HashSet::from([id]))),
                    }
                }
                JobState::Active | JobState::Uncommitted => {}
            }
        }
        for (q, wanted) in by_queue {
            touched_queues.push(q);
            let queue = &self.queues[q as usize];
            let delayed: Vec<(Millis, JobId)> =
                queue.delayed.iter().copied().filter(|e| wanted.contains(&e.1)).collect();
            let dead: Vec<(Millis, JobId)> =
                queue.dead.iter().copied().filter(|e| wanted.contains(&e.1)).collect();
            for (at, id) in delayed {
                self.delayed_remove(q, at, id);
                self.queues[q as usize].recount(Some(JobState::Delayed), None);
                self.delete_job(id);
                removed += 1;
            }
            for (at, id) in dead {
                self.drop_dead(q, at, id);
                removed += 1;
            }
        }
        touched_queues.sort_unstable();
        touched_queues.dedup();
        self.forget_all_idle(&touched_queues);
        removed
    }

    /// Delayed jobs among `ids` become ready now; returns how many. Persists
    /// `Change::Reschedule` each. Other states are skipped.
    pub fn promote(&mut self, now: Millis, ids: &[JobId]) -> u64 {
        let mut delayed = DelayedPick::default();
        for &id in ids {
            if let Some(meta) = self.jobs.get(id).filter(|m| m.state == JobState::Delayed) {
                delayed.add(meta.queue, id);
            }
        }
        let mut promoted = 0;
        for id in self.take_delayed(delayed) {
            self.make_ready(id, Some(JobState::Delayed), now);
            self.effects.push(super::Effect::Persist(Change::Reschedule { id, run_at_ms: now }));
            promoted += 1;
        }
        self.serve_touched(now);
        promoted
    }

    /// Takes the picked jobs out of their queues' delayed sets, each queue's in run order,
    /// and returns their ids. (A delayed entry is keyed by its run time, which the pick does
    /// not know: each picked queue's set is walked once.)
    fn take_delayed(&mut self, pick: DelayedPick) -> Vec<JobId> {
        let mut taken = Vec::new();
        for (q, wanted) in pick.by_queue {
            let chosen: Vec<(Millis, JobId)> = self.queues[q as usize]
                .delayed
                .iter()
                .copied()
                .filter(|e| wanted.contains(&e.1))
                .collect();
            for (at, id) in chosen {
                self.delayed_remove(q, at, id);
                taken.push(id);
            }
        }
        taken
    }

    /// Waiting jobs among `ids` (ready or delayed) go to their queue's dead set now; returns
    /// how many. Active jobs are skipped, as `remove` skips them: a worker holds them, and
    /// its ack or nack decides. Dead, uncommitted and unknown ids are skipped too.
    ///
    /// A kill is recorded like an expiry: a `Change::Fail` with `dead` and the error
    /// [`KILLED`], under the next attempt number. So the stored record says why the job
    /// died, replay needs no change kind of its own, and `Fail`'s replay rule (attempt
    /// numbers only grow between retries) holds. It counts in `dead_total`, not as a failed
    /// try. An operator's retry brings the job back with fresh attempts.
    pub fn kill(&mut self, now: Millis, ids: &[JobId]) -> u64 {
        let mut killed = 0;
        let mut delayed = DelayedPick::default();
        for &id in ids {
            let Some(meta) = self.jobs.get(id).copied() else { continue };
            match meta.state {
                JobState::Ready => {
                    // Unlike a removal, the job lives on (and may be retried): its ready
                    // entry must go, or a retry would give it two (invariant 1 of queue.rs).
                    let g = self.group_of(&meta);
                    let queue = &mut self.queues[meta.queue as usize];
                    let in_group = queue.flow.as_deref_mut().and_then(|f| f.groups.get_mut(&g));
                    match in_group {
                        Some(group) => group.ready.remove(meta.priority, id),
                        None => queue.remove_ready(meta.priority, id),
                    };
                    self.bury(now, id, JobState::Ready, KILLED, killed_event);
                    killed += 1;
                }
                JobState::Delayed => delayed.add(meta.queue, id),
                JobState::Active | JobState::Dead | JobState::Uncommitted => {}
            }
        }
        for id in self.take_delayed(delayed) {
            self.bury(now, id, JobState::Delayed, KILLED, killed_event);
            killed += 1;
        }
        killed
    }

    /// Job `id` (in state `from`, already out of that state's index) goes to the dead set
    /// without a try having failed (an expiry or a kill): persisted as a dead `Fail` with
    /// `message` under the next attempt number, counted in `dead_total` only.
    /// `event` builds the lifecycle event, called only when someone watches the queue.
    pub(super) fn bury(
        &mut self,
        now: Millis,
        id: JobId,
        from: JobState,
        message: &str,
        event: impl FnOnce() -> qd_protocol::EventKind,
    ) {
        let Some(meta) = self.jobs.get_mut(id) else { return };
        let attempt = meta.failures.saturating_add(1);
        meta.failures = attempt;
        meta.state = JobState::Dead;
        let meta = *meta;
        self.effects.push(super::Effect::Persist(Change::Fail {
            id,
            error: AttemptError { attempt, at_ms: now, message: message.to_owned() },
            run_at_ms: now,
            dead: true,
        }));
        if self.watching(meta.queue) {
            self.emit_for(now, id, event());
        }
        self.park_key(&meta, id);
        let queue = &mut self.queues[meta.queue as usize];
        queue.recount(Some(from), Some(JobState::Dead));
        queue.dead_total += 1;
        self.dead_insert(meta.queue, now, id);
        self.notify_ended(id, Some(message));
        self.enforce_dead_max(meta.queue);
    }

    /// The fields every state shares; the caller fills the state's times.
    fn view(&self, id: JobId, meta: &JobMeta, state: JobStateKind) -> JobView {
        JobView {
            id,
            queue: self.queues[meta.queue as usize].name.to_string(),
            name: self.names.get(meta.name).map(|n| n.to_string()).unwrap_or_default(),
            state,
            failures: meta.failures,
            max_attempts: self.policies.get(meta.policy).map_or(1, |p| p.max_attempts),
            priority: meta.priority,
            created_at_ms: meta.created_at_ms,
            run_at_ms: None,
            lease_deadline_ms: None,
            conn: None,
            started_at_ms: None,
            finished_at_ms: None,
        }
    }

    fn active_view(&self, id: JobId, meta: &JobMeta) -> JobView {
        let mut view = self.view(id, meta, JobStateKind::Active);
        if let Some(lease) = self.leases.get(id) {
            view.lease_deadline_ms = Some(lease.deadline);
            view.conn = Some(lease.conn);
            view.started_at_ms = Some(lease.since);
        }
        view
    }

    fn completed_view(&self, q: u32, c: &super::queue::CompletedJob) -> JobView {
        JobView {
            id: c.id,
            queue: self.queues[q as usize].name.to_string(),
            name: c.name.to_string(),
            state: JobStateKind::Completed,
            failures: c.attempt.saturating_sub(1),
            max_attempts: c.max_attempts,
            priority: c.priority,
            created_at_ms: c.created_at_ms,
            run_at_ms: None,
            lease_deadline_ms: None,
            conn: None,
            started_at_ms: None,
            finished_at_ms: Some(c.finished_at_ms),
        }
    }
}

/// The event of an operator's kill: the job is dead-lettered, with [`KILLED`] as its error.
fn killed_event() -> qd_protocol::EventKind {
    qd_protocol::EventKind::DeadLettered { error: KILLED.to_owned() }
}

/// Delayed jobs picked by id for an operator's action (promote, kill), grouped by queue.
#[derive(Default)]
struct DelayedPick {
    by_queue: Vec<(u32, HashSet<JobId>)>,
}

impl DelayedPick {
    fn add(&mut self, queue: u32, id: JobId) {
        match self.by_queue.iter_mut().find(|e| e.0 == queue) {
            Some((_, set)) => {
                set.insert(id);
            }
            None => self.by_queue.push((queue, HashSet::from([id]))),
        }
    }
}
