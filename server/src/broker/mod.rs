//! The broker core: qd's queue state machine, as plain data.
//!
//! [`Broker`] owns every job's metadata and index (ready, delayed, active, dead, completed),
//! the leases and the parked reserves. It never reads the clock, never does I/O and draws
//! randomness only from its keyed token stream: each method takes `now` (unix ms),
//! [`Broker::poll_timeout`] says when [`Broker::handle_timeout`] is next due, and [`Broker::take_effects`] hands the engine what
//! to make durable ([`Effect::Persist`]) and which parked reserves to answer
//! ([`Effect::Deliver`]). Payloads pass through in `Change::Insert` and are never kept.
//!
//! What lives where: `queue.rs` one queue's indexes (ready, delayed, dead), keys, counters
//! and completed ring; `job.rs` per-job metadata and its compact table; `intern.rs` shared
//! names, policies and group keys; `flow.rs` rate limits, concurrency limits and group
//! turns; `lease.rs` active leases and their tokens; `waiters.rs` parked
//! reserves; `running.rs` a running job's snooze and progress; `backoff.rs` retry delays
//! (pure, shared with other backends); `operations.rs` what an operator does (pause, list,
//! retry, purge, remove, promote) and `admin.rs` the plain types it answers with;
//! `schedules.rs` named cron and interval schedules, which fire from `handle_timeout`;
//! `unique.rs` the throttle, debounce and expiry rules; `job_waits.rs` producers waiting for
//! a job's outcome; `effects.rs` and `error.rs` the outputs.
//!
//! Hash maps here use std's randomly seeded hasher (keys and names come from clients, so a
//! fixed hasher would invite collision attacks). That and the lease-token key are the only
//! inputs that are not arguments, and neither shows in ordering: no observable result
//! depends on a hash map's iteration order (indexes that are iterated are B-trees or sorted
//! first), and tokens are opaque.
//!
//! Life of a job: `add` -> uncommitted -> (`commit_added`) ready or delayed -> active ->
//! completed (gone), or back to ready/delayed after a failed try, or dead. Dead -> ready by
//! an operator's retry. Uncommitted exists for read-committed delivery: a job is never
//! handed to a worker before the commit holding its insert is done, so a crash cannot make
//! a worker run a job the server then forgets.
//!
//! Queues (issue 7): a queue exists while it has a job in any state, operator settings
//! (paused) or a parked waiter naming it. Otherwise it is forgotten at once and its slot
//! reused, unless its completed ring holds something: such idle queues with history are
//! kept for display, at most `BrokerConfig::idle_queues_kept` of them, the longest idle
//! forgotten first. So the number of queues is bounded by the jobs held (each a queue at
//! most), the paused queues (an operator's doing), the queues named by parked waiters
//! (bounded by connections x requests in flight x queues per reserve) and
//! `idle_queues_kept`. A forgotten queue loses its completed ring and counters; a new queue
//! of the same name starts from zero.

pub mod admin;
pub mod backoff;
mod effects;
mod error;
mod events;
mod flow;
mod intern;
mod job;
mod job_waits;
mod lease;
mod operations;
mod queue;
mod restore;
mod running;
mod schedules;
mod unique;
mod waiters;

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod operations_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unique_tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use qd_protocol::message::{LeaseRef, NackOutcome};
use qd_protocol::{
    validate_lease, validate_queue_name, EventKind, JobId, NewJob, QueueStats, RetryHint,
    MAX_ERROR_TEXT, MAX_RESULT,
};

use crate::model::{AttemptError, Change, ConnId, JobRecord, Millis, PersistedState};

pub use admin::{JobStateKind, JobView, MinuteCounts, Page, QueueView};
pub use effects::Effect;
pub use error::BrokerError;
pub use events::EventFilter;
pub use job_waits::Waited;
pub use operations::{KILLED, MAX_PAGE};
pub use restore::Restorer;
pub use schedules::{fire_key, MAX_SCHEDULES};
pub use unique::EXPIRED;

use intern::Interner;
use job::{JobMeta, JobState, JobTable, Policy};
use job_waits::JobWaits;
use lease::LeaseTable;
use queue::{CompletedJob, Queue};
use schedules::Schedules;
use waiters::{Waiter, WaiterTable};

/// Error text recorded when a lease runs out.
pub const LEASE_EXPIRED: &str = "lease expired";
/// Error text recorded when the connection holding a lease goes away.
pub const WORKER_DISCONNECTED: &str = "worker disconnected";

/// How far ahead of `next_id` the persisted id floor is kept: one `IdFloor` write per this
/// many ids assigned.
pub const ID_FLOOR_STEP: JobId = 65_536;

/// Tunables of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Completed jobs kept per queue for display (in memory only, since start: a restart
    /// empties the rings).
    pub completed_retention: usize,
    /// Key of the lease-token stream (ChaCha20). The composition root fills it from the OS
    /// at every start, so tokens are unpredictable and a token from before a restart cannot
    /// match a delivery after it; tests pass a fixed key.
    pub token_key: [u8; 32],
    /// A reserve asking for more jobs than this gets at most this many.
    pub max_reserve: u32,
    /// Dead jobs kept per queue; dead-lettering beyond this drops the oldest dead jobs.
    pub dead_max_jobs: usize,
    /// Dead jobs older than this (since they died) are dropped.
    pub dead_max_age_ms: u64,
    /// Idle queues (no jobs, settings or waiters) kept only for their completed history.
    pub idle_queues_kept: usize,
    /// Bytes of ack results (`AckWithResult`) kept across every queue's completed ring;
    /// past it the oldest results are dropped (their jobs stay listed, with an empty
    /// result). Without it, results are bounded only by queues x retention x `MAX_RESULT`.
    pub results_max_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            completed_retention: 1000,
            token_key: [0; 32],
            max_reserve: 1000,
            dead_max_jobs: 10_000,
            dead_max_age_ms: 180 * 24 * 3_600_000,
            idle_queues_kept: 1000,
            results_max_bytes: 64 << 20,
        }
    }
}

/// Identifies one reserve (or wait) request: the connection and the request id it chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// The job's group key, if it has one.
    pub group: Option<Arc<str>>,
    /// How long the worker may run this try, if the job says so.
    pub timeout_ms: Option<u64>,
}

/// `(time, queue)` for the earliest entry of each queue's delayed (or dead, or throttle) set: one timer
/// index over every queue without a second entry per job.
type Heads = BTreeSet<(Millis, u32)>;

/// The queue state machine. See the module docs.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    jobs: JobTable,
    /// Queue slots; a job's `queue` field indexes this. A forgotten queue's slot holds an
    /// empty placeholder until `queue_idx` reuses it from `free_queues`.
    queues: Vec<Queue>,
    free_queues: Vec<u32>,
    /// Live queues by name. Exactly the slots not in `free_queues`.
    queue_index: HashMap<Arc<str>, u32>,
    /// Idle queues kept for their completed history, longest idle first; each entry's queue
    /// has `idle_listed` set, and no queue is listed twice. See the module docs.
    idle_queues: VecDeque<u32>,
    names: Interner<Arc<str>>,
    policies: Interner<Policy>,
    /// Group keys (issue 9), referenced by each grouped job and each live flow group.
    groups: Interner<Arc<str>>,
    /// The idempotency key of each keyed job (pending, or dead and so not deduplicating), to
    /// free it from its queue's index when the job completes, dies or is deleted, and to
    /// take it back on retry. Shares the `Arc` with that index.
    job_keys: HashMap<JobId, Arc<str>>,
    /// Run time of each job added but not yet committed (state `Uncommitted`).
    uncommitted: HashMap<JobId, Millis>,
    /// Earliest run time of each queue with delayed jobs.
    delayed_heads: Heads,
    /// Earliest death of each queue with dead jobs (for age retention).
    dead_heads: Heads,
    /// Earliest end of each queue's throttle windows (`unique.rs`).
    throttle_heads: Heads,
    /// Earliest flow wake of each queue with one (`flow.rs`, invariant 3).
    flow_heads: Heads,
    leases: LeaseTable,
    waiters: WaiterTable,
    /// Producers waiting for a job's outcome (`job_waits.rs`).
    job_waits: JobWaits,
    /// Results held in completed rings, oldest first, as `(queue, id, bytes)`; their sum is
    /// `result_bytes`. An entry whose job already left its ring still counts until it is
    /// popped, so the sum never underestimates what is held.
    results: VecDeque<(u32, JobId, usize)>,
    result_bytes: usize,
    effects: Vec<Effect>,
    /// Queues that gained ready jobs during the current call, in order; their parked
    /// waiters are served before the call returns, so that no waiter stays parked on a
    /// queue with ready jobs (unless it is paused).
    touched: Vec<u32>,
    next_id: JobId,
    /// Ids below this are promised durable by an `IdFloor` change; assigning `id_floor`
    /// itself first raises it (see `assign_id`).
    id_floor: JobId,
    /// Named schedules and when each fires next (`schedules.rs`).
    schedules: Schedules,
    /// Queues whose lifecycle events are wanted (`events.rs`); empty unless someone
    /// subscribed.
    watch: EventFilter,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        let leases = LeaseTable::keyed(config.token_key);
        Broker {
            config,
            jobs: JobTable::default(),
            queues: Vec::new(),
            free_queues: Vec::new(),
            queue_index: HashMap::new(),
            idle_queues: VecDeque::new(),
            names: Interner::default(),
            policies: Interner::default(),
            groups: Interner::default(),
            job_keys: HashMap::new(),
            uncommitted: HashMap::new(),
            delayed_heads: Heads::new(),
            dead_heads: Heads::new(),
            throttle_heads: Heads::new(),
            flow_heads: Heads::new(),
            leases,
            waiters: WaiterTable::default(),
            job_waits: JobWaits::default(),
            results: VecDeque::new(),
            result_bytes: 0,
            effects: Vec::new(),
            touched: Vec::new(),
            next_id: 1,
            id_floor: 1,
            schedules: Schedules::default(),
            watch: EventFilter::default(),
        }
    }

    /// Recovery: called once per stored record before any command (see [`Restorer`],
    /// which restores many records at once for less). Waiting records become ready
    /// (`run_at <= now`) or delayed; dead records go to the dead set, as dead since their
    /// `run_at_ms` (a dead job's `Fail` stores its time of death there). Attempts already
    /// used (`failures`) are kept. Restored jobs are committed. A record whose id is
    /// already known is ignored.
    pub fn restore(&mut self, now: Millis, record: &JobRecord) {
        self.restorer(now).restore(record);
    }

    /// Recovery: a queue's persisted settings (from `Change::Settings`).
    pub fn restore_settings(&mut self, queue: &str, settings: crate::model::QueueSettings) {
        let q = self.queue_idx(queue);
        let limited = !settings.limits.is_unlimited();
        self.queues[q as usize].settings = settings;
        if limited {
            self.ensure_flow(q);
        }
        self.forget_if_idle(q);
    }

    /// Ids are assigned from here on: the store's high-water mark, or its persisted id floor,
    /// whichever is higher. Never moves backwards past an id already restored or assigned.
    /// The floor is set here too, so the first add after recovery persists a new one before
    /// using any id at or past it.
    pub fn set_next_id(&mut self, next: JobId) {
        self.next_id = self.next_id.max(next);
        self.id_floor = self.next_id;
    }

    pub fn next_id(&self) -> JobId {
        self.next_id
    }

    /// Adds jobs to `queue`, all or nothing: every job is validated before anything changes.
    ///
    /// Emits one `Persist(Change::Insert)` per new job (preceded by a `Change::IdFloor` when
    /// the ids reach the persisted floor). A job whose idempotency key is held by a pending
    /// job of the queue (or by an earlier job of this request) is not added: its slot in the
    /// answer is the holder's id. Keys are claimed here, at add time.
    ///
    /// New jobs are uncommitted: no reserve sees them until the engine calls
    /// [`Broker::commit_added`] once the commit holding their inserts is done.
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
            if let Some(holder) = self.unique_holder(now, q, &job) {
                ids.push(holder);
                continue;
            }
            let id = self.assign_id();
            let options = job.options;
            let (policy, grouped) = self.acquire_policy(&options);
            let meta = JobMeta {
                created_at_ms: now,
                queue: q,
                name: self.names.acquire(job.name.as_str(), || Arc::from(job.name.as_str())),
                policy,
                priority: options.priority,
                failures: 0,
                state: JobState::Uncommitted,
                keyed: false,
                expiry_spent: false,
                grouped,
            };
            self.jobs.insert(id, meta);
            if let Some(key) = &options.key {
                self.claim_key(q, key, id);
            }
            // After the claim: a debounce may take the key over from a running holder.
            self.unique_added(now, q, &options, id);
            let run_at_ms = now.saturating_add(options.delay_ms);
            self.uncommitted.insert(id, run_at_ms);
            let queue_state = &mut self.queues[q as usize];
            queue_state.recount(None, Some(JobState::Uncommitted));
            queue_state.added_total += 1;
            self.effects.push(Effect::Persist(Change::Insert(Box::new(JobRecord {
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
            }))));
            if self.watching(q) {
                self.emit_for(now, id, EventKind::Added);
            }
            ids.push(id);
        }
        // All keys may have been held: a queue created by this call may be idle.
        self.forget_if_idle(q);
        Ok(ids)
    }

    /// The commit holding the inserts of `ids` is done: those jobs become ready (and go to
    /// parked waiters) or delayed. Ids that are not uncommitted (already committed, a key's
    /// holder, unknown) are ignored, so the engine may pass every id an add answered with.
    pub fn commit_added(&mut self, now: Millis, ids: &[JobId]) {
        for &id in ids {
            if let Some(run_at_ms) = self.uncommitted.remove(&id) {
                self.schedule(now, id, Some(JobState::Uncommitted), run_at_ms);
            }
        }
        if self.uncommitted.capacity() > 1024
            && self.uncommitted.len() * 4 <= self.uncommitted.capacity()
        {
            self.uncommitted.shrink_to(self.uncommitted.len() * 2);
        }
        self.serve_touched(now);
    }

    /// Takes up to `max` ready jobs from the first of `queues` (in the order given) that has
    /// any, then the next, until `max` (clamped to `BrokerConfig::max_reserve`). Paused
    /// queues are skipped.
    ///
    /// Returns `Some(leases)` when it took any, `Some(vec![])` when none were ready and
    /// `timeout_ms` is 0; otherwise parks the waiter until `now + timeout_ms` and returns
    /// `None`: an [`Effect::Deliver`] answers it later. Unknown queues are created only for
    /// a parked waiter, and forgotten when it leaves (issue 7: naming queues costs nothing
    /// lasting).
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
        let max = max.min(self.config.max_reserve.max(1));
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
        // Unknown queues hold no jobs: look up, do not create, unless the waiter parks.
        let known: Vec<u32> =
            queues.iter().filter_map(|name| self.queue_index.get(name.as_str()).copied()).collect();
        let deadline = now.saturating_add(timeout_ms);
        // A reserve that may wait may be held back for a fuller batch (`flow.rs`).
        let batch_until = now.saturating_add(flow::RATE_BATCH_MS).min(deadline);
        let leases = self.take_ready(now, waiter.conn, &known, max, batch_until);
        if !leases.is_empty() || timeout_ms == 0 {
            return Ok(Some(leases));
        }
        let qs: Vec<u32> = queues.iter().map(|name| self.queue_idx(name)).collect();
        self.waiters.park(Waiter { key: waiter, queues: qs, max, deadline, batch_until });
        Ok(None)
    }

    /// Completes a job. Wrong token or job not active: `LeaseLost`; unknown id: `NotFound`.
    pub fn ack(&mut self, now: Millis, lease: LeaseRef) -> Result<(), BrokerError> {
        self.ack_with_result(now, lease, Bytes::new())
    }

    /// Completes a job with `result` (at most `MAX_RESULT` bytes), kept with it in its
    /// queue's completed ring and handed to producers waiting on it. Errors as `ack`.
    pub fn ack_with_result(
        &mut self,
        now: Millis,
        lease: LeaseRef,
        result: Bytes,
    ) -> Result<(), BrokerError> {
        if result.len() > MAX_RESULT {
            return Err(BrokerError::InvalidArgument(format!(
                "the result is {} bytes, more than the {MAX_RESULT} a result may have; store \
                 large output elsewhere and return a reference to it",
                result.len()
            )));
        }
        self.check_lease(lease)?;
        self.leases.release(lease.id);
        let Some(meta) = self.jobs.remove(lease.id) else {
            return Err(BrokerError::NotFound(lease.id));
        };
        self.flow_release(now, &meta);
        self.release_group(&meta);
        self.release_key(&meta, lease.id);
        let name = self.names.get(meta.name).cloned().unwrap_or_else(|| Arc::from(""));
        let max_attempts = self.policies.get(meta.policy).map_or(1, |p| p.max_attempts);
        self.names.release(meta.name);
        self.policies.release(meta.policy);
        // Cloned only when someone listens (`events.rs`): the name moves into the ring.
        let event_name = self.watching(meta.queue).then(|| name.clone());
        let retention = self.config.completed_retention;
        let queue = &mut self.queues[meta.queue as usize];
        queue.recount(Some(meta.state), None);
        queue.count_minute(now, 1, 0);
        let done = CompletedJob {
            id: lease.id,
            name,
            finished_at_ms: now,
            attempt: meta.failures.saturating_add(1),
            created_at_ms: meta.created_at_ms,
            priority: meta.priority,
            max_attempts,
            seq: 0,
            result: result.clone(),
        };
        queue.push_completed(done, retention);
        self.effects.push(Effect::Persist(Change::Complete { id: lease.id }));
        if let Some(name) = event_name {
            self.emit(now, meta.queue, lease.id, &name, EventKind::Completed);
        }
        self.notify_completed(lease.id, &result);
        if !result.is_empty() && retention > 0 {
            self.keep_result(meta.queue, lease.id, result.len());
        }
        if !self.touched.is_empty() {
            // A flow limit let go of a slot: parked waiters may have a job now.
            self.serve_touched(now);
        }
        self.forget_if_idle(meta.queue);
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
        if let RetryHint::RateLimited { delay_ms } = hint {
            return Ok(self.rate_limited(now, lease.id, delay_ms));
        }
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
        for waiter in self.waiters.remove_conn(conn) {
            self.forget_all_idle(&waiter.queues);
        }
        self.job_waits.remove_conn(conn);
        for id in self.leases.held_by(conn) {
            self.leases.release(id);
            self.fail(now, id, WORKER_DISCONNECTED.to_owned(), RetryHint::Backoff);
        }
        self.serve_touched(now);
    }

    /// Drops one parked waiter (the client cancelled it); no-op if unknown.
    pub fn cancel_waiter(&mut self, waiter: WaiterKey) {
        if let Some(waiter) = self.waiters.remove(waiter) {
            self.forget_all_idle(&waiter.queues);
        }
    }

    /// Does everything due at `now`: due schedules fire (adding their jobs, uncommitted
    /// like any add), due delayed jobs become ready (and go to waiters),
    /// expired leases fail with "lease expired", dead jobs past `dead_max_age_ms` are
    /// dropped, waiters past their deadline get an empty `Deliver`. Jobs are handed out
    /// before waiters expire, so a job that becomes ready at the very instant a wait ends
    /// is not missed.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.fire_schedules(now);
        while let Some(&(run_at, q)) = self.delayed_heads.first() {
            if run_at > now {
                break;
            }
            let queue = &mut self.queues[q as usize];
            let Some(&(at, id)) = queue.delayed.first() else {
                // Unreachable by invariant 3 of queue.rs; drop the head rather than spin.
                self.delayed_heads.remove(&(run_at, q));
                continue;
            };
            self.delayed_remove(q, at, id);
            match self.jobs.get(id).copied() {
                Some(meta) if self.is_expired(&meta, now) => {
                    self.expire(now, id, JobState::Delayed)
                }
                _ => self.make_ready(id, Some(JobState::Delayed), at),
            }
        }
        while let Some(id) = self.leases.pop_expired(now) {
            self.fail(now, id, LEASE_EXPIRED.to_owned(), RetryHint::Backoff);
        }
        self.flow_timeouts(now);
        let max_age = self.config.dead_max_age_ms;
        while let Some(&(died_at, q)) = self.dead_heads.first() {
            if died_at.saturating_add(max_age) > now {
                break;
            }
            match self.queues[q as usize].dead.first() {
                Some(&(at, id)) => self.drop_dead(q, at, id),
                None => {
                    self.dead_heads.remove(&(died_at, q));
                }
            }
            self.forget_if_idle(q);
        }
        self.prune_windows(now);
        self.serve_touched(now);
        self.expire_waits(now);
        while let Some(waiter) = self.waiters.pop_expired(now) {
            self.effects.push(Effect::Deliver { waiter: waiter.key, leases: Vec::new() });
            self.forget_all_idle(&waiter.queues);
        }
    }

    /// Earliest instant at which [`Broker::handle_timeout`] has something to do, or `None`.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let delayed = self.delayed_heads.first().map(|&(at, _)| at);
        let dead =
            self.dead_heads.first().map(|&(at, _)| at.saturating_add(self.config.dead_max_age_ms));
        let schedule = self.schedules.next_fire();
        let windows = self.throttle_heads.first().map(|&(at, _)| at);
        let waits = self.job_waits.next_deadline();
        let flow = self.flow_heads.first().map(|&(at, _)| at);
        [
            delayed,
            dead,
            flow,
            self.leases.next_deadline(),
            self.waiters.next_deadline(),
            schedule,
            windows,
            waits,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves all pending effects into `out` (appending), in the order they happened.
    pub fn take_effects(&mut self, out: &mut Vec<Effect>) {
        out.append(&mut self.effects);
    }

    /// Per-queue counts, sorted by queue name; every live queue is listed (see the module
    /// docs for when a queue is forgotten). Uncommitted jobs count as ready.
    pub fn stats(&self) -> Vec<QueueStats> {
        let mut stats: Vec<QueueStats> = self
            .queue_index
            .values()
            .map(|&q| {
                let q = &self.queues[q as usize];
                let mut s = QueueStats::new(q.name.to_string());
                s.ready = q.count(JobState::Ready) + q.count(JobState::Uncommitted);
                s.delayed = q.count(JobState::Delayed);
                s.active = q.count(JobState::Active);
                s.dead = q.count(JobState::Dead);
                s.completed = q.completed_retained() as u64;
                s.completed_total = q.completed_total;
                s.failed_total = q.failed_total;
                s.expired_total = q.expired_total;
                s
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

    /// The next id; persists a new floor first when it reaches the current one, so that
    /// the `IdFloor` change precedes (in the same batch) the insert that uses the id.
    fn assign_id(&mut self) -> JobId {
        let id = self.next_id;
        if id >= self.id_floor {
            self.id_floor = id.saturating_add(ID_FLOOR_STEP);
            self.effects.push(Effect::Persist(Change::IdFloor { next_id: self.id_floor }));
        }
        self.next_id += 1;
        id
    }

    fn queue_idx(&mut self, name: &str) -> u32 {
        if let Some(&q) = self.queue_index.get(name) {
            return q;
        }
        let name: Arc<str> = Arc::from(name);
        // Free-list entries past the end or naming a live slot are stale (see `forget`).
        let free = std::iter::from_fn(|| self.free_queues.pop())
            .find(|&q| self.queues.get(q as usize).is_some_and(|slot| slot.name.is_empty()));
        let q = match free {
            Some(q) => {
                self.queues[q as usize] = Queue::new(name.clone());
                q
            }
            None => {
                // Queues are bounded far below 4 billion (see the module docs).
                let q = u32::try_from(self.queues.len()).unwrap_or(u32::MAX);
                self.queues.push(Queue::new(name.clone()));
                q
            }
        };
        self.queue_index.insert(name, q);
        q
    }

    fn forget_all_idle(&mut self, qs: &[u32]) {
        for &q in qs {
            self.forget_if_idle(q);
        }
    }

    /// Forgets queue `q` if nothing needs it: no job, no settings, no parked waiter. One
    /// with completed history is kept in `idle_queues` instead, and the longest-idle queue
    /// beyond `idle_queues_kept` is forgotten. See the module docs.
    fn forget_if_idle(&mut self, q: u32) {
        let Some(queue) = self.queues.get_mut(q as usize) else { return };
        if self.queue_index.get(&queue.name) != Some(&q)
            || !queue.is_idle()
            || self.waiters.waits_on(q)
        {
            return;
        }
        if queue.completed_retained() == 0 || self.config.idle_queues_kept == 0 {
            self.forget(q);
            return;
        }
        if !queue.idle_listed {
            queue.idle_listed = true;
            self.idle_queues.push_back(q);
        }
        while self.idle_queues.len() > self.config.idle_queues_kept {
            let Some(old) = self.idle_queues.pop_front() else { break };
            let queue = &mut self.queues[old as usize];
            queue.idle_listed = false;
            // It may have become busy again since it was listed: then it stays.
            if queue.is_idle() && !self.waiters.waits_on(old) {
                self.forget(old);
            }
        }
    }

    /// Frees queue slot `q` (the caller checked it is idle). Its index entry goes, so no
    /// later lookup can reach the slot until `queue_idx` hands it out again. A free slot
    /// holds a placeholder with an empty name (live names are never empty); free slots at
    /// the end are dropped, so a burst of queues does not keep its peak. That can leave
    /// stale free-list entries, which `queue_idx` skips.
    fn forget(&mut self, q: u32) {
        let queue = std::mem::replace(&mut self.queues[q as usize], Queue::new(Arc::from("")));
        self.queue_index.remove(&queue.name);
        if queue.idle_listed {
            self.idle_queues.retain(|&x| x != q);
        }
        self.free_queues.push(q);
        while self.queues.last().is_some_and(|slot| slot.name.is_empty()) {
            self.queues.pop();
        }
        if self.queues.is_empty() {
            self.free_queues.clear();
        }
        if self.queues.capacity() > 64 && self.queues.len() * 4 <= self.queues.capacity() {
            self.queues.shrink_to(self.queues.len() * 2);
        }
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

    /// Frees the job's key for good (it completed or was deleted). Its queue's index entry
    /// goes only if it still names this job: a dead job's key may be held by a newer job.
    fn release_key(&mut self, meta: &JobMeta, id: JobId) {
        if !meta.keyed {
            return;
        }
        self.queues[meta.queue as usize].debounce_at.remove(&id);
        if let Some(key) = self.job_keys.remove(&id) {
            let keys = &mut self.queues[meta.queue as usize].keys;
            if keys.get(&key) == Some(&id) {
                keys.remove(&key);
            }
        }
        if let Some(meta) = self.jobs.get_mut(id) {
            meta.keyed = false;
        }
    }

    /// The job died: its key stops deduplicating (invariant 4 of queue.rs) so that the
    /// same work can be added again, but the job remembers it in `job_keys` for a retry.
    fn park_key(&mut self, meta: &JobMeta, id: JobId) {
        self.queues[meta.queue as usize].debounce_at.remove(&id);
        if let Some(key) = self.job_keys.get(&id).filter(|_| meta.keyed) {
            let keys = &mut self.queues[meta.queue as usize].keys;
            if keys.get(key) == Some(&id) {
                keys.remove(key);
            }
        }
    }

    /// A dead job was retried: it takes its key back unless a newer job holds it now, in
    /// which case it goes on without one.
    fn reclaim_key(&mut self, q: u32, id: JobId) {
        let Some(key) = self.job_keys.get(&id) else { return };
        let keys = &mut self.queues[q as usize].keys;
        if keys.contains_key(key) {
            self.job_keys.remove(&id);
            if let Some(meta) = self.jobs.get_mut(id) {
                meta.keyed = false;
            }
        } else {
            keys.insert(key.clone(), id);
        }
    }

    /// Puts a job (coming from state `from`, or new) in ready or delayed by its run time.
    fn schedule(&mut self, now: Millis, id: JobId, from: Option<JobState>, run_at_ms: Millis) {
        if run_at_ms <= now {
            self.make_ready(id, from, run_at_ms);
        } else if let Some(meta) = self.jobs.get_mut(id) {
            meta.state = JobState::Delayed;
            let q = meta.queue;
            self.queues[q as usize].recount(from, Some(JobState::Delayed));
            self.delayed_insert(q, run_at_ms, id);
        }
    }

    /// Makes a job ready; `since` is when it became due (its run time), for the age of the
    /// oldest ready job.
    fn make_ready(&mut self, id: JobId, from: Option<JobState>, since: Millis) {
        let Some(meta) = self.jobs.get_mut(id) else { return };
        meta.state = JobState::Ready;
        let meta = *meta;
        let queue = &mut self.queues[meta.queue as usize];
        queue.recount(from, Some(JobState::Ready));
        if meta.grouped || queue.flow.is_some() {
            let g = self.group_of(&meta);
            self.push_ready_flow(meta.queue, g, meta.priority, id, since);
        } else {
            queue.push_ready(meta.priority, id, since, None);
        }
        if self.touched.last() != Some(&meta.queue) {
            self.touched.push(meta.queue);
        }
    }

    fn delayed_insert(&mut self, q: u32, at: Millis, id: JobId) {
        let queue = &mut self.queues[q as usize];
        edit_timed(&mut self.delayed_heads, &mut queue.delayed, q, |set| set.insert((at, id)));
    }

    fn delayed_remove(&mut self, q: u32, at: Millis, id: JobId) -> bool {
        let queue = &mut self.queues[q as usize];
        edit_timed(&mut self.delayed_heads, &mut queue.delayed, q, |set| set.remove(&(at, id)))
    }

    fn dead_insert(&mut self, q: u32, at: Millis, id: JobId) {
        let queue = &mut self.queues[q as usize];
        edit_timed(&mut self.dead_heads, &mut queue.dead, q, |set| set.insert((at, id)));
    }

    fn dead_remove(&mut self, q: u32, at: Millis, id: JobId) -> bool {
        let queue = &mut self.queues[q as usize];
        edit_timed(&mut self.dead_heads, &mut queue.dead, q, |set| set.remove(&(at, id)))
    }

    /// Counts a result just kept in queue `q`'s completed ring, dropping the oldest results
    /// while the total is over `results_max_bytes`.
    fn keep_result(&mut self, q: u32, id: JobId, len: usize) {
        self.results.push_back((q, id, len));
        self.result_bytes += len;
        while self.result_bytes > self.config.results_max_bytes {
            let Some((q, id, len)) = self.results.pop_front() else { break };
            self.result_bytes -= len;
            if let Some(queue) = self.queues.get_mut(q as usize) {
                queue.drop_result(id);
            }
        }
    }

    /// Leases up to `max` ready jobs from `qs`, in order, to `conn`. Paused queues give
    /// nothing; a queue with flow control gives what its limits allow (`flow.rs`), and
    /// before `batch_until` may hold back a partial batch of a rate that binds.
    fn take_ready(
        &mut self,
        now: Millis,
        conn: ConnId,
        qs: &[u32],
        max: u32,
        batch_until: Millis,
    ) -> Vec<Lease> {
        let mut leases = Vec::new();
        for &q in qs {
            if self.queues[q as usize].paused() {
                continue;
            }
            if self.queues[q as usize].flow.is_some() {
                self.take_flow(now, conn, q, max as usize, batch_until, &mut leases);
                continue;
            }
            while leases.len() < max as usize {
                let Some(id) = self.queues[q as usize].pop_ready() else { break };
                if let Some(lease) = self.lease_job(now, conn, q, id) {
                    leases.push(lease);
                }
            }
        }
        leases
    }

    /// Leases ready job `id` of queue `q` to `conn`; `None` if its index entry was stale.
    /// A job that expired (`unique.rs`) goes to the dead set instead, and `None` is returned.
    fn lease_job(&mut self, now: Millis, conn: ConnId, q: u32, id: JobId) -> Option<Lease> {
        let meta = self.jobs.get(id)?;
        if meta.state != JobState::Ready || meta.queue != q {
            return None;
        }
        if self.is_expired(&meta.clone(), now) {
            self.expire(now, id, JobState::Ready);
            return None;
        }
        let meta = self.jobs.get_mut(id)?;
        meta.state = JobState::Active;
        let meta = *meta;
        let queue = &mut self.queues[q as usize];
        queue.recount(Some(JobState::Ready), Some(JobState::Active));
        let policy = self.policies.get(meta.policy);
        let (max_attempts, lease_ms, timeout_ms) =
            policy.map_or((1, 0, None), |p| (p.max_attempts, p.lease_ms, p.timeout_ms));
        let group = match policy {
            Some(p) if meta.grouped => self.groups.get(p.group).cloned(),
            _ => None,
        };
        let deadline = now.saturating_add(lease_ms);
        let token = self.leases.grant(id, conn, now, deadline);
        Some(Lease {
            id,
            queue: queue.name.clone(),
            name: self.names.get(meta.name).cloned().unwrap_or_else(|| Arc::from("")),
            attempt: meta.failures.saturating_add(1),
            max_attempts,
            token,
            deadline_ms: deadline,
            created_at_ms: meta.created_at_ms,
            group,
            timeout_ms,
        })
    }

    /// The interned policy of a job with `options`, and whether it has a group (whose name
    /// it then references in `groups`).
    fn acquire_policy(&mut self, options: &qd_protocol::JobOptions) -> (u32, bool) {
        let mut policy = Policy::of(options);
        if let Some(group) = options.group.as_deref() {
            policy = policy.in_group(self.groups.acquire(group, || Arc::from(group)));
        }
        (self.policies.acquire(&policy, || policy), options.group.is_some())
    }

    /// Drops a leaving job's reference on its group name. Call before its policy is
    /// released.
    fn release_group(&mut self, meta: &JobMeta) {
        if meta.grouped {
            if let Some(p) = self.policies.get(meta.policy) {
                self.groups.release(p.group);
            }
        }
    }

    /// A worker's `RetryHint::RateLimited`: the job (its lease released) goes back to
    /// ready without using an attempt, nothing is persisted (its record is already
    /// waiting), and the queue starts nothing for `delay_ms` (memory only, see `flow.rs`).
    fn rate_limited(&mut self, now: Millis, id: JobId, delay_ms: u64) -> NackOutcome {
        let until = now.saturating_add(delay_ms);
        let Some(meta) = self.jobs.get(id).copied() else {
            return NackOutcome::Retrying { run_at_ms: until };
        };
        self.hold(meta.queue, until);
        self.flow_release(now, &meta);
        self.make_ready(id, Some(JobState::Active), now);
        self.serve_touched(now);
        NackOutcome::Retrying { run_at_ms: until }
    }

    /// Hands ready jobs of the touched queues to their parked waiters, oldest waiter first.
    /// A paused queue's waiters stay parked.
    fn serve_touched(&mut self, now: Millis) {
        let touched = std::mem::take(&mut self.touched);
        for &q in &touched {
            while self.queues[q as usize].has_ready() && !self.queues[q as usize].paused() {
                let Some((seq, waiter)) = self.waiters.pop_first_for_queue(q) else { break };
                let leases = self.take_ready(
                    now,
                    waiter.key.conn,
                    &waiter.queues,
                    waiter.max,
                    waiter.batch_until,
                );
                if leases.is_empty() {
                    // Only flow limits hold back a ready job of an unpaused queue: the
                    // waiter keeps its place until a release or a wake.
                    self.waiters.reinstate(seq, waiter);
                    break;
                }
                self.effects.push(Effect::Deliver { waiter: waiter.key, leases });
                self.forget_all_idle(&waiter.queues);
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
        if from == JobState::Active {
            self.flow_release(now, &meta);
        }
        let policy = self.policies.get(meta.policy).copied();
        let max_attempts = policy.map_or(1, |p| p.max_attempts);
        let backoff = policy.map_or(qd_protocol::Backoff::NONE, |p| p.backoff);
        // `nack` takes `RateLimited` elsewhere; were it to come here, it is a delay. For a
        // dead job, run_at_ms records its time of death (restore reads it back).
        let backoff::AfterFailure { dead, run_at_ms } =
            backoff::after_failure(&backoff, max_attempts, id, attempt, hint, now);
        let queue = &mut self.queues[meta.queue as usize];
        queue.failed_total += 1;
        queue.count_minute(now, 0, 1);
        // For producers waiting on the job (`Wait`), when this is its end.
        let last_error = dead.then(|| message.clone());
        let event = self.watching(meta.queue).then(|| match dead {
            true => EventKind::DeadLettered { error: message.clone() },
            false => EventKind::Failed { error: message.clone(), run_at_ms },
        });
        // The Fail goes first: a dead-set overflow below removes older dead jobs after it.
        self.effects.push(Effect::Persist(Change::Fail {
            id,
            error: AttemptError { attempt, at_ms: now, message },
            run_at_ms,
            dead,
        }));
        if let Some(kind) = event {
            self.emit_for(now, id, kind);
        }
        if dead {
            self.park_key(&meta, id);
            if let Some(m) = self.jobs.get_mut(id) {
                m.state = JobState::Dead;
            }
            let queue = &mut self.queues[meta.queue as usize];
            queue.recount(Some(from), Some(JobState::Dead));
            queue.dead_total += 1;
            self.dead_insert(meta.queue, now, id);
            self.notify_ended(id, last_error.as_deref());
            self.enforce_dead_max(meta.queue);
            NackOutcome::Dead
        } else {
            self.schedule(now, id, Some(from), run_at_ms);
            NackOutcome::Retrying { run_at_ms }
        }
    }

    /// Drops the oldest dead jobs of `q` beyond `dead_max_jobs`.
    fn enforce_dead_max(&mut self, q: u32) {
        while self.queues[q as usize].dead.len() > self.config.dead_max_jobs {
            let Some(&(at, id)) = self.queues[q as usize].dead.first() else { break };
            self.drop_dead(q, at, id);
        }
    }

    /// Deletes dead job `id` of `q` (dead since `at`): retention, purge or removal.
    fn drop_dead(&mut self, q: u32, at: Millis, id: JobId) {
        self.dead_remove(q, at, id);
        self.queues[q as usize].recount(Some(JobState::Dead), None);
        self.delete_job(id);
    }

    /// Removes a job's metadata and names, and persists its removal. The caller has taken
    /// it out of its state's index and counts.
    fn delete_job(&mut self, id: JobId) {
        let Some(meta) = self.jobs.get(id).copied() else { return };
        self.release_key(&meta, id);
        self.release_group(&meta);
        self.jobs.remove(id);
        self.names.release(meta.name);
        self.policies.release(meta.policy);
        self.effects.push(Effect::Persist(Change::Remove { id }));
        self.notify_ended(id, None);
    }

    /// Rough heap bytes of the per-job structures (for tests and metrics).
    #[cfg(test)]
    fn job_heap_bytes(&self) -> usize {
        self.jobs.heap_bytes()
    }
}

/// Edits one queue's time-ordered set and keeps `heads` (the earliest entry per queue) in
/// step with it.
fn edit_timed<T: Ord, R>(
    heads: &mut Heads,
    set: &mut BTreeSet<(Millis, T)>,
    q: u32,
    edit: impl FnOnce(&mut BTreeSet<(Millis, T)>) -> R,
) -> R {
    let before = set.first().map(|&(at, _)| at);
    let result = edit(set);
    let after = set.first().map(|&(at, _)| at);
    if before != after {
        if let Some(at) = before {
            heads.remove(&(at, q));
        }
        if let Some(at) = after {
            heads.insert((at, q));
        }
    }
    result
}

/// Cuts error text to at most `MAX_ERROR_TEXT` bytes, at a char boundary.
pub fn truncate_error(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
