//! The broker core: qd's queue state machine, as plain data.
//!
//! [`Broker`] owns every job's metadata and index (ready, delayed, active, dead, completed),
//! the leases and the parked reserves. It never reads the clock, never does I/O and never
//! draws randomness: each method takes `now` (unix ms), [`Broker::poll_timeout`] says when
//! [`Broker::handle_timeout`] is next due, and [`Broker::take_effects`] hands the engine what
//! to make durable ([`Effect::Persist`]) and which parked reserves to answer
//! ([`Effect::Deliver`]). Payloads pass through in `Change::Insert` and are never kept.
//!
//! What lives where: `queue.rs` one queue's ready index, keys, counters and completed ring;
//! `job.rs` per-job metadata and its compact table; `intern.rs` shared names and policies;
//! `lease.rs` active leases; `waiters.rs` parked reserves; `backoff.rs` retry delays
//! (pure, shared with other backends); `effects.rs` and `error.rs` the outputs.
//!
//! Hash maps here use std's randomly seeded hasher (keys and names come from clients, so a
//! fixed hasher would invite collision attacks). That is the one place the OS's randomness
//! enters, and it never shows: no observable result depends on a hash map's iteration order
//! (indexes that are iterated are B-trees or sorted first).

pub mod backoff;
mod effects;
mod error;
mod intern;
mod job;
mod lease;
mod queue;
mod waiters;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use qd_protocol::message::{LeaseRef, NackOutcome};
use qd_protocol::{
    validate_lease, validate_queue_name, JobId, NewJob, QueueStats, RetryHint, MAX_ERROR_TEXT,
};

use crate::model::{AttemptError, Change, ConnId, JobRecord, Millis, PersistedState};

pub use effects::Effect;
pub use error::BrokerError;

use intern::Interner;
use job::{JobMeta, JobState, JobTable, Policy};
use lease::LeaseTable;
use queue::{CompletedJob, Queue};
use waiters::{Waiter, WaiterTable};

/// Error text recorded when a lease runs out.
pub const LEASE_EXPIRED: &str = "lease expired";
/// Error text recorded when the connection holding a lease goes away.
pub const WORKER_DISCONNECTED: &str = "worker disconnected";

/// Tunables of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Completed jobs kept per queue for display (in memory only).
    pub completed_retention: usize,
    /// Where lease tokens start. Leases are not persisted, so tokens restart with the
    /// process; a different seed per run (the engine draws one at random) keeps a stale
    /// worker's token from matching a delivery made after a restart.
    pub token_seed: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { completed_retention: 1000, token_seed: 0 }
    }
}

/// Identifies one reserve request: the connection and the request id it chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaiterKey {
    pub conn: ConnId,
    pub request: u64,
}

/// One delivery: what the engine needs to build a `qd_protocol::LeasedJob` (the payload
/// comes from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: JobId,
    pub queue: Arc<str>,
    pub name: Arc<str>,
    /// Which try this is, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub token: u64,
    pub deadline_ms: Millis,
    pub created_at_ms: Millis,
}

/// The queue state machine. See the module docs.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    jobs: JobTable,
    /// Every queue ever seen; a job's `queue` field indexes this. Never shrinks: stats list
    /// every queue since start.
    queues: Vec<Queue>,
    queue_index: HashMap<Arc<str>, u32>,
    names: Interner<Arc<str>>,
    policies: Interner<Policy>,
    /// The idempotency key of each pending keyed job, to free it from its queue's index
    /// when the job completes or dies. Shares the `Arc` with that index.
    job_keys: HashMap<JobId, Arc<str>>,
    /// Delayed jobs by run time, then id. Exactly one entry per delayed job: a job leaves
    /// the delayed state only by becoming due.
    delayed: BinaryHeap<Reverse<(Millis, JobId)>>,
    leases: LeaseTable,
    waiters: WaiterTable,
    effects: Vec<Effect>,
    /// Queues that gained ready jobs during the current call, in order; their parked
    /// waiters are served before the call returns, so that no waiter stays parked on a
    /// queue with ready jobs.
    touched: Vec<u32>,
    next_id: JobId,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        let leases = LeaseTable::seeded(config.token_seed);
        Broker {
            config,
            jobs: JobTable::default(),
            queues: Vec::new(),
            queue_index: HashMap::new(),
            names: Interner::default(),
            policies: Interner::default(),
            job_keys: HashMap::new(),
            delayed: BinaryHeap::new(),
            leases,
            waiters: WaiterTable::default(),
            effects: Vec::new(),
            touched: Vec::new(),
            next_id: 1,
        }
    }

    /// Recovery: called once per stored record before any command. Waiting records become
    /// ready (`run_at <= now`) or delayed; dead records go to the dead set. Attempts already
    /// used (`failures`) are kept. A record whose id is already known is ignored.
    pub fn restore(&mut self, now: Millis, record: &JobRecord) {
        if self.jobs.get(record.id).is_some() {
            return;
        }
        let q = self.queue_idx(&record.queue);
        let meta = JobMeta {
            created_at_ms: record.created_at_ms,
            queue: q,
            name: self.names.acquire(record.name.as_str(), || Arc::from(record.name.as_str())),
            policy: self
                .policies
                .acquire(&Policy::of(&record.options), || Policy::of(&record.options)),
            priority: record.options.priority,
            failures: record.failures,
            state: JobState::Dead,
            keyed: false,
        };
        self.jobs.insert(record.id, meta);
        self.next_id = self.next_id.max(record.id.saturating_add(1));
        match record.state {
            PersistedState::Dead => self.queues[q as usize].recount(None, Some(JobState::Dead)),
            PersistedState::Waiting => {
                if let Some(key) = &record.options.key {
                    self.claim_key(q, key, record.id);
                }
                self.schedule(now, record.id, None, record.run_at_ms);
            }
        }
        self.serve_touched(now);
    }

    /// Ids are assigned from here on (the store knows the high-water mark). Never moves
    /// backwards past an id already restored or assigned.
    pub fn set_next_id(&mut self, next: JobId) {
        self.next_id = self.next_id.max(next);
    }

    pub fn next_id(&self) -> JobId {
        self.next_id
    }

    /// Adds jobs to `queue`, all or nothing: every job is validated before anything changes.
    ///
    /// Emits one `Persist(Change::Insert)` per new job. A job whose idempotency key is held
    /// by a pending job of the queue (or by an earlier job of this request) is not added:
    /// its slot in the answer is the holder's id. Newly ready jobs go to parked waiters at
    /// once.
    pub fn add(
        &mut self,
        now: Millis,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>, BrokerError> {
        validate_queue_name(queue).map_err(BrokerError::from_validation)?;
        let n = jobs.len();
        for (i, job) in jobs.iter().enumerate() {
            job.validate().map_err(|e| {
                BrokerError::InvalidArgument(format!(
                    "job {} of {n} in this add: {}; nothing was added",
                    i + 1,
                    e.message
                ))
            })?;
        }
        let q = self.queue_idx(queue);
        let mut ids = Vec::with_capacity(n);
        for job in jobs {
            if let Some(key) = &job.options.key {
                if let Some(&holder) = self.queues[q as usize].keys.get(key.as_str()) {
                    ids.push(holder);
                    continue;
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let options = job.options;
            let meta = JobMeta {
                created_at_ms: now,
                queue: q,
                name: self.names.acquire(job.name.as_str(), || Arc::from(job.name.as_str())),
                policy: self.policies.acquire(&Policy::of(&options), || Policy::of(&options)),
                priority: options.priority,
                failures: 0,
                state: JobState::Delayed,
                keyed: false,
            };
            self.jobs.insert(id, meta);
            if let Some(key) = &options.key {
                self.claim_key(q, key, id);
            }
            let run_at_ms = now.saturating_add(options.delay_ms);
            self.schedule(now, id, None, run_at_ms);
            self.effects.push(Effect::Persist(Change::Insert(JobRecord {
                id,
                queue: queue.to_owned(),
                name: job.name,
                payload: job.payload,
                options,
                created_at_ms: now,
                run_at_ms,
                failures: 0,
                state: PersistedState::Waiting,
                errors: Vec::new(),
            })));
            ids.push(id);
        }
        self.serve_touched(now);
        Ok(ids)
    }

    /// Takes up to `max` ready jobs from the first of `queues` (in the order given) that has
    /// any, then the next, until `max`.
    ///
    /// Returns `Some(leases)` when it took any, `Some(vec![])` when none were ready and
    /// `timeout_ms` is 0; otherwise parks the waiter until `now + timeout_ms` and returns
    /// `None`: an [`Effect::Deliver`] answers it later. Unknown queues are created.
    pub fn reserve(
        &mut self,
        now: Millis,
        waiter: WaiterKey,
        queues: &[String],
        max: u32,
        timeout_ms: u64,
    ) -> Result<Option<Vec<Lease>>, BrokerError> {
        if max == 0 {
            return Err(BrokerError::InvalidArgument(
                "reserve max is 0; ask for at least 1 job".into(),
            ));
        }
        if queues.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "reserve names no queue; give at least one".into(),
            ));
        }
        for name in queues {
            validate_queue_name(name).map_err(BrokerError::from_validation)?;
        }
        if self.waiters.contains(waiter) {
            return Err(BrokerError::InvalidArgument(format!(
                "request {} of this connection is already waiting in a reserve; use a new request id",
                waiter.request
            )));
        }
        let qs: Vec<u32> = queues.iter().map(|name| self.queue_idx(name)).collect();
        let leases = self.take_ready(now, waiter.conn, &qs, max);
        if !leases.is_empty() || timeout_ms == 0 {
            return Ok(Some(leases));
        }
        self.waiters.park(Waiter {
            key: waiter,
            queues: qs,
            max,
            deadline: now.saturating_add(timeout_ms),
        });
        Ok(None)
    }

    /// Completes a job. Wrong token or job not active: `LeaseLost`; unknown id: `NotFound`.
    pub fn ack(&mut self, now: Millis, lease: LeaseRef) -> Result<(), BrokerError> {
        self.check_lease(lease)?;
        self.leases.release(lease.id);
        let Some(meta) = self.jobs.remove(lease.id) else {
            return Err(BrokerError::NotFound(lease.id));
        };
        self.release_key(&meta, lease.id);
        let name = self.names.get(meta.name).cloned().unwrap_or_else(|| Arc::from(""));
        self.names.release(meta.name);
        self.policies.release(meta.policy);
        let retention = self.config.completed_retention;
        let queue = &mut self.queues[meta.queue as usize];
        queue.recount(Some(meta.state), None);
        let done = CompletedJob {
            id: lease.id,
            name,
            finished_at_ms: now,
            attempt: meta.failures.saturating_add(1),
        };
        queue.push_completed(done, retention);
        self.effects.push(Effect::Persist(Change::Complete { id: lease.id }));
        Ok(())
    }

    /// Records a failed try: retried after the backoff (or `delay_ms` for `After`) while
    /// attempts are left, dead otherwise or at once for `Never`. Error text is cut to
    /// `MAX_ERROR_TEXT` bytes at a char boundary.
    pub fn nack(
        &mut self,
        now: Millis,
        lease: LeaseRef,
        error: &str,
        hint: RetryHint,
    ) -> Result<NackOutcome, BrokerError> {
        self.check_lease(lease)?;
        self.leases.release(lease.id);
        let outcome = self.fail(now, lease.id, truncate_error(error), hint);
        self.serve_touched(now);
        Ok(outcome)
    }

    /// Extends a lease to `now + lease_ms` (the job's own lease duration when `None`) and
    /// returns the new deadline. Leases are memory-only: nothing to persist.
    pub fn touch(
        &mut self,
        now: Millis,
        lease: LeaseRef,
        lease_ms: Option<u64>,
    ) -> Result<Millis, BrokerError> {
        self.check_lease(lease)?;
        let ms = match lease_ms {
            Some(ms) => {
                validate_lease(ms).map_err(BrokerError::from_validation)?;
                ms
            }
            None => self.policy_of(lease.id).map(|p| p.lease_ms).unwrap_or(0),
        };
        let deadline = now.saturating_add(ms);
        self.leases.extend(lease.id, deadline);
        Ok(deadline)
    }

    /// The connection is gone: its parked waiters are dropped without a `Deliver`, and each
    /// job it holds fails at once with "worker disconnected" (an attempt, through backoff).
    pub fn disconnect(&mut self, now: Millis, conn: ConnId) {
        self.waiters.remove_conn(conn);
        for id in self.leases.held_by(conn) {
            self.leases.release(id);
            self.fail(now, id, WORKER_DISCONNECTED.to_owned(), RetryHint::Backoff);
        }
        self.serve_touched(now);
    }

    /// Drops one parked waiter (the client cancelled it); no-op if unknown.
    pub fn cancel_waiter(&mut self, waiter: WaiterKey) {
        self.waiters.remove(waiter);
    }

    /// Does everything due at `now`: due delayed jobs become ready (and go to waiters),
    /// expired leases fail with "lease expired", waiters past their deadline get an empty
    /// `Deliver`. Jobs are handed out before waiters expire, so a job that becomes ready at
    /// the very instant a wait ends is not missed.
    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some(&Reverse((run_at, id))) = self.delayed.peek() {
            if run_at > now {
                break;
            }
            self.delayed.pop();
            if self.jobs.get(id).is_some_and(|m| m.state == JobState::Delayed) {
                self.make_ready(id, Some(JobState::Delayed));
            }
        }
        if self.delayed.capacity() > 1024 && self.delayed.len() * 4 <= self.delayed.capacity() {
            // A burst of scheduled jobs that has come due should not keep its peak memory.
            self.delayed.shrink_to(self.delayed.len() * 2);
        }
        while let Some(id) = self.leases.pop_expired(now) {
            self.fail(now, id, LEASE_EXPIRED.to_owned(), RetryHint::Backoff);
        }
        self.serve_touched(now);
        while let Some(waiter) = self.waiters.pop_expired(now) {
            self.effects.push(Effect::Deliver { waiter: waiter.key, leases: Vec::new() });
        }
    }

    /// Earliest instant at which [`Broker::handle_timeout`] has something to do, or `None`.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let delayed = self.delayed.peek().map(|Reverse((at, _))| *at);
        [delayed, self.leases.next_deadline(), self.waiters.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves all pending effects into `out` (appending), in the order they happened.
    pub fn take_effects(&mut self, out: &mut Vec<Effect>) {
        out.append(&mut self.effects);
    }

    /// Per-queue counts, sorted by queue name; every queue seen since start is listed.
    pub fn stats(&self) -> Vec<QueueStats> {
        let mut stats: Vec<QueueStats> = self
            .queues
            .iter()
            .map(|q| QueueStats {
                queue: q.name.to_string(),
                ready: q.count(JobState::Ready),
                delayed: q.count(JobState::Delayed),
                active: q.count(JobState::Active),
                dead: q.count(JobState::Dead),
                completed: q.completed_retained() as u64,
                completed_total: q.completed_total,
                failed_total: q.failed_total,
            })
            .collect();
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        stats
    }

    /// Recent completed jobs of a queue, newest first: (id, name, finished_at_ms, attempt).
    pub fn completed(&self, queue: &str) -> Vec<(JobId, Arc<str>, Millis, u32)> {
        let Some(&q) = self.queue_index.get(queue) else { return Vec::new() };
        self.queues[q as usize]
            .completed_newest_first()
            .map(|c| (c.id, c.name.clone(), c.finished_at_ms, c.attempt))
            .collect()
    }

    // ---- internals ----

    fn queue_idx(&mut self, name: &str) -> u32 {
        if let Some(&q) = self.queue_index.get(name) {
            return q;
        }
        let q = u32::try_from(self.queues.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(name);
        self.queues.push(Queue::new(name.clone()));
        self.queue_index.insert(name, q);
        q
    }

    fn policy_of(&self, id: JobId) -> Option<&Policy> {
        self.policies.get(self.jobs.get(id)?.policy)
    }

    fn check_lease(&self, lease: LeaseRef) -> Result<(), BrokerError> {
        if self.jobs.get(lease.id).is_none() {
            return Err(BrokerError::NotFound(lease.id));
        }
        match self.leases.get(lease.id) {
            Some(held) if held.token == lease.token => Ok(()),
            _ => Err(BrokerError::LeaseLost(lease.id)),
        }
    }

    fn claim_key(&mut self, q: u32, key: &str, id: JobId) {
        let queue = &mut self.queues[q as usize];
        if queue.keys.contains_key(key) {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        queue.keys.insert(key.clone(), id);
        self.job_keys.insert(id, key);
        if let Some(meta) = self.jobs.get_mut(id) {
            meta.keyed = true;
        }
    }

    fn release_key(&mut self, meta: &JobMeta, id: JobId) {
        if !meta.keyed {
            return;
        }
        if let Some(key) = self.job_keys.remove(&id) {
            self.queues[meta.queue as usize].keys.remove(&key);
        }
        if let Some(meta) = self.jobs.get_mut(id) {
            meta.keyed = false;
        }
    }

    /// Puts a job (coming from state `from`, or new) in ready or delayed by its run time.
    fn schedule(&mut self, now: Millis, id: JobId, from: Option<JobState>, run_at_ms: Millis) {
        if run_at_ms <= now {
            self.make_ready(id, from);
        } else if let Some(meta) = self.jobs.get_mut(id) {
            meta.state = JobState::Delayed;
            self.queues[meta.queue as usize].recount(from, Some(JobState::Delayed));
            self.delayed.push(Reverse((run_at_ms, id)));
        }
    }

    fn make_ready(&mut self, id: JobId, from: Option<JobState>) {
        let Some(meta) = self.jobs.get_mut(id) else { return };
        meta.state = JobState::Ready;
        let queue = &mut self.queues[meta.queue as usize];
        queue.recount(from, Some(JobState::Ready));
        queue.push_ready(meta.priority, id);
        if self.touched.last() != Some(&meta.queue) {
            self.touched.push(meta.queue);
        }
    }

    /// Leases up to `max` ready jobs from `qs`, in order, to `conn`.
    fn take_ready(&mut self, now: Millis, conn: ConnId, qs: &[u32], max: u32) -> Vec<Lease> {
        let mut leases = Vec::new();
        for &q in qs {
            while leases.len() < max as usize {
                let Some(id) = self.queues[q as usize].pop_ready() else { break };
                let Some(meta) = self.jobs.get_mut(id) else { continue };
                if meta.state != JobState::Ready {
                    continue;
                }
                meta.state = JobState::Active;
                let meta = *meta;
                let queue = &mut self.queues[q as usize];
                queue.recount(Some(JobState::Ready), Some(JobState::Active));
                let (max_attempts, lease_ms) =
                    self.policies.get(meta.policy).map_or((1, 0), |p| (p.max_attempts, p.lease_ms));
                let deadline = now.saturating_add(lease_ms);
                let token = self.leases.grant(id, conn, deadline);
                leases.push(Lease {
                    id,
                    queue: queue.name.clone(),
                    name: self.names.get(meta.name).cloned().unwrap_or_else(|| Arc::from("")),
                    attempt: meta.failures.saturating_add(1),
                    max_attempts,
                    token,
                    deadline_ms: deadline,
                    created_at_ms: meta.created_at_ms,
                });
            }
        }
        leases
    }

    /// Hands ready jobs of the touched queues to their parked waiters, oldest waiter first.
    fn serve_touched(&mut self, now: Millis) {
        let touched = std::mem::take(&mut self.touched);
        for &q in &touched {
            while self.queues[q as usize].has_ready() {
                let Some(waiter) = self.waiters.pop_first_for_queue(q) else { break };
                // Non-empty: queue q has a ready job and is one of the waiter's queues.
                let leases = self.take_ready(now, waiter.key.conn, &waiter.queues, waiter.max);
                self.effects.push(Effect::Deliver { waiter: waiter.key, leases });
            }
        }
        self.touched = touched;
        self.touched.clear();
    }

    /// The one failure path (nack, lease expiry, disconnect) for a job whose lease the
    /// caller has already released. Uses an attempt; schedules the retry or dead-letters.
    fn fail(&mut self, now: Millis, id: JobId, message: String, hint: RetryHint) -> NackOutcome {
        let Some(meta) = self.jobs.get_mut(id) else {
            return NackOutcome::Dead;
        };
        let from = meta.state;
        let attempt = meta.failures.saturating_add(1);
        meta.failures = attempt;
        let meta = *meta;
        let policy = self.policies.get(meta.policy).copied();
        let max_attempts = policy.map_or(1, |p| p.max_attempts);
        let dead = matches!(hint, RetryHint::Never) || attempt >= max_attempts;
        let delay = match hint {
            RetryHint::Backoff => policy.map_or(0, |p| backoff::delay_ms(&p.backoff, id, attempt)),
            RetryHint::After { delay_ms } => delay_ms,
            RetryHint::Never => 0,
        };
        let run_at_ms = if dead { now } else { now.saturating_add(delay) };
        self.queues[meta.queue as usize].failed_total += 1;
        let outcome = if dead {
            self.release_key(&meta, id);
            if let Some(m) = self.jobs.get_mut(id) {
                m.state = JobState::Dead;
            }
            self.queues[meta.queue as usize].recount(Some(from), Some(JobState::Dead));
            NackOutcome::Dead
        } else {
            self.schedule(now, id, Some(from), run_at_ms);
            NackOutcome::Retrying { run_at_ms }
        };
        self.effects.push(Effect::Persist(Change::Fail {
            id,
            error: AttemptError { attempt, at_ms: now, message },
            run_at_ms,
            dead,
        }));
        outcome
    }

    /// Rough heap bytes of the per-job structures (for tests and metrics).
    #[cfg(test)]
    fn job_heap_bytes(&self) -> usize {
        self.jobs.heap_bytes()
    }
}

/// Cuts error text to at most `MAX_ERROR_TEXT` bytes, at a char boundary.
fn truncate_error(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
