//! Flow control (issue 9): which ready jobs of a queue may start now. A queue's
//! [`QueueLimits`] (persisted with its settings) cap its starts per window (token bucket),
//! its jobs active at once, and the same two per group; a worker's
//! `RetryHint::RateLimited` holds the queue's starts for a while; and jobs with a group key
//! take turns by group, so one group's backlog cannot starve another's few jobs.
//!
//! Only a queue with limits or grouped jobs has a [`Flow`]; every other queue takes the
//! plain path in `mod.rs` (`take_ready`), which this file does not slow down.
//!
//! Turns: `Flow::turns` lists the sources of ready jobs that may start, in round-robin
//! order: each group with ready jobs, and [`UNGROUPED`] for the queue's own index (jobs
//! without a group count as one more group). A reserve takes one job from the front source
//! and puts it at the back while it has more. Invariants, kept by the broker:
//! 1. A source is in `turns` at most once, and exactly when its `in_turn` flag is set.
//! 2. A source with ready jobs and not at its group concurrency is in `turns`, or has a
//!    wake in `wakes` (its group rate ran dry), or its release/wake will put it back.
//!    Blocked sources leave `turns` when met there, so a reserve never scans the groups
//!    that cannot start: group concurrency returns them on release, rate on their wake.
//! 3. `wakes` holds `(time, source)` for what waits on time: a group whose rate ran dry
//!    (at its next token), [`QUEUE_WAKE`] for the queue's own rate or a rate-limit hold,
//!    and idle groups keeping a rate bucket that is not full yet (dropped when it is).
//!    The broker's `flow_heads` holds each queue's earliest wake, for `poll_timeout`.
//!
//! The hold of `RetryHint::RateLimited` is memory only: after a restart the queue starts
//! at once (the worker meets the 429 again and holds it again). Token buckets are memory
//! only too, and start full.

use std::collections::{BTreeSet, HashMap, VecDeque};

use qd_protocol::{JobId, QueueLimits, Rate};

use super::job::{JobMeta, JobState};
use super::queue::ReadyIndex;
use super::{edit_timed, Broker, Lease};
use crate::model::{ConnId, Millis};

/// The `turns` entry of a queue's jobs without a group.
pub(crate) const UNGROUPED: u32 = u32::MAX;
/// The `wakes` entry of the queue itself (its rate, or a rate-limit hold).
pub(crate) const QUEUE_WAKE: u64 = u64::MAX;

/// How long a reserve that may wait is held back while the queue's rate binds, so that it
/// is answered with a batch rather than with the token or two refilled since the last one.
///
/// Why: every answer costs a round trip, an engine round and, once the jobs are done, an
/// ack commit (an fsync). Handing out each refill as it came made a limit of 10,000/s
/// cost three times the server CPU per job of an unlimited drain (W2 in docs/FLOW.md):
/// about ten jobs per answer and per fsync instead of dozens. Waiting for the tokens of
/// the reserve's whole batch, but no longer than this, keeps the starts per window exact
/// (nothing starts early) and delays a start by at most this much.
pub(crate) const RATE_BATCH_MS: Millis = 5;

/// A token bucket of `rate.max` tokens refilled at `rate.max / rate.per_ms`, kept as one
/// number (the generic cell rate algorithm): `tat`, the theoretical arrival time of the
/// next start, in ms scaled by `rate.max` so that a token's interval `per_ms / max` is the
/// whole number `per_ms`. A start is allowed while `tat - now <= (max - 1)` intervals.
/// u128: `now * max` passes u64 for large `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    tat: u128,
}

impl Bucket {
    fn scaled(now: Millis, rate: Rate) -> u128 {
        u128::from(now) * u128::from(rate.max)
    }

    fn tolerance(rate: Rate) -> u128 {
        u128::from(rate.per_ms) * u128::from(rate.max.saturating_sub(1))
    }

    /// Whether a start is allowed at `now`.
    pub(crate) fn allows(&self, now: Millis, rate: Rate) -> bool {
        let now = Self::scaled(now, rate);
        self.tat.saturating_sub(now) <= Self::tolerance(rate)
    }

    /// Spends one token at `now` (the caller checked `allows`).
    pub(crate) fn take(&mut self, now: Millis, rate: Rate) {
        self.tat = self.tat.max(Self::scaled(now, rate)) + u128::from(rate.per_ms);
    }

    /// When the next token is there.
    pub(crate) fn next_at(&self, rate: Rate) -> Millis {
        let at = self.tat.saturating_sub(Self::tolerance(rate));
        unscale(at, rate)
    }

    /// How many starts in a row `now` allows.
    pub(crate) fn available(&self, now: Millis, rate: Rate) -> u64 {
        let ahead = self.tat.saturating_sub(Self::scaled(now, rate));
        let tolerance = Self::tolerance(rate);
        if ahead > tolerance {
            return 0;
        }
        let interval = u128::from(rate.per_ms.max(1));
        u64::try_from((tolerance - ahead) / interval + 1).unwrap_or(u64::MAX)
    }

    /// When `n` starts in a row are allowed (`n` clamped to `1..=rate.max`, what a full
    /// bucket holds); `next_at` is `ready_at(1)`.
    pub(crate) fn ready_at(&self, n: u64, rate: Rate) -> Millis {
        let n = n.clamp(1, u64::from(rate.max.max(1)));
        let last = self.tat + u128::from(rate.per_ms) * u128::from(n - 1);
        unscale(last.saturating_sub(Self::tolerance(rate)), rate)
    }

    /// When the bucket is full again (forgetting it then loses nothing).
    pub(crate) fn full_at(&self, rate: Rate) -> Millis {
        unscale(self.tat, rate)
    }
}

fn unscale(at: u128, rate: Rate) -> Millis {
    let max = u128::from(rate.max.max(1));
    Millis::try_from(at.div_ceil(max)).unwrap_or(Millis::MAX)
}

/// One group of a queue: its ready jobs and what its limits need.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub ready: ReadyIndex,
    /// Its jobs active now.
    pub active: u32,
    pub bucket: Bucket,
    /// Whether it is in `Flow::turns` (invariant 1).
    pub in_turn: bool,
    /// Its entry in `Flow::wakes`, if any.
    pub wake_at: Option<Millis>,
}

/// Flow state of one queue. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// The queue's rate bucket.
    pub bucket: Bucket,
    /// A worker's `RateLimited` nack holds the queue's starts until then (memory only).
    pub held_until: Millis,
    /// Groups with ready or active jobs (or a bucket still refilling), by interned name.
    /// Each holds a reference on its name in the broker's group interner.
    pub groups: HashMap<u32, Group>,
    pub turns: VecDeque<u32>,
    /// Whether `turns` holds [`UNGROUPED`].
    pub ungrouped_in_turn: bool,
    pub wakes: BTreeSet<(Millis, u64)>,
}

impl Flow {
    /// Group `g`, created empty if new. The caller must hold a reference on its name for
    /// a new group (see `Broker::flow_group`).
    pub(crate) fn group_mut(&mut self, g: u32) -> &mut Group {
        self.groups.entry(g).or_default()
    }

    /// Puts source `g` in turn unless it is already, has nothing ready, or is at its group
    /// concurrency (invariant 2).
    fn offer(&mut self, g: u32, limits: &QueueLimits) {
        if g == UNGROUPED {
            return;
        }
        let Some(group) = self.groups.get_mut(&g) else { return };
        let at_limit = limits.group_concurrency.is_some_and(|c| group.active >= c);
        if !group.in_turn && !group.ready.is_empty() && !at_limit {
            group.in_turn = true;
            self.turns.push_back(g);
        }
    }
}

/// Why a queue's next start must wait.
enum Gate {
    Open,
    /// Until a job of the queue finishes (concurrency).
    Release,
    /// Until this time (rate, hold).
    Time(Millis),
}

impl Broker {
    /// Replaces the flow limits of `queue` (creating it if unknown), persists them with the
    /// queue's settings, and hands ready jobs to parked waiters if the new limits allow.
    /// Buckets start full under new limits.
    pub fn set_queue_limits(
        &mut self,
        now: Millis,
        queue: &str,
        limits: QueueLimits,
    ) -> Result<(), super::BrokerError> {
        qd_protocol::validate_queue_name(queue).map_err(super::BrokerError::from_validation)?;
        limits.validate().map_err(super::BrokerError::from_validation)?;
        if limits.is_unlimited() && !self.queue_index.contains_key(queue) {
            return Ok(());
        }
        let q = self.queue_idx(queue);
        if self.queues[q as usize].settings.limits == limits {
            return Ok(());
        }
        self.queues[q as usize].settings.limits = limits;
        self.ensure_flow(q);
        if let Some(flow) = self.queues[q as usize].flow.as_deref_mut() {
            flow.bucket = Bucket::default();
            for group in flow.groups.values_mut() {
                group.bucket = Bucket::default();
            }
            // A group left out of turns by a group concurrency that was lowered or lifted.
            let gs: Vec<u32> = flow.groups.keys().copied().collect();
            for g in gs {
                flow.offer(g, &limits);
            }
        }
        let settings = self.queues[q as usize].settings.clone();
        self.effects.push(super::Effect::Persist(crate::model::Change::Settings {
            queue: queue.to_owned(),
            settings,
        }));
        if self.queues[q as usize].has_ready() {
            self.touched.push(q);
        }
        self.serve_touched(now);
        self.forget_if_idle(q);
        Ok(())
    }

    /// Gives queue `q` a [`Flow`] if it has none. Ungrouped jobs already ready take a turn.
    pub(super) fn ensure_flow(&mut self, q: u32) {
        let queue = &mut self.queues[q as usize];
        if queue.flow.is_some() {
            return;
        }
        let mut flow = Box::<Flow>::default();
        if queue.has_ungrouped() {
            flow.turns.push_back(UNGROUPED);
            flow.ungrouped_in_turn = true;
        }
        queue.flow = Some(flow);
    }

    /// Makes job `id` (of queue `q`, group handle `g` or [`UNGROUPED`]) ready: into its
    /// index, and its source into turns. The caller sets state and counts.
    pub(super) fn push_ready_flow(
        &mut self,
        q: u32,
        g: u32,
        priority: i32,
        id: JobId,
        since: Millis,
    ) {
        if g == UNGROUPED {
            let queue = &mut self.queues[q as usize];
            queue.push_ready(priority, id, since, None);
            if let Some(flow) = queue.flow.as_deref_mut() {
                if !flow.ungrouped_in_turn {
                    flow.ungrouped_in_turn = true;
                    flow.turns.push_back(UNGROUPED);
                }
            }
            return;
        }
        self.ensure_flow(q);
        self.flow_group(q, g);
        let queue = &mut self.queues[q as usize];
        queue.push_ready(priority, id, since, Some(g));
        let limits = queue.settings.limits;
        if let Some(flow) = queue.flow.as_deref_mut() {
            flow.offer(g, &limits);
        }
    }

    /// Makes sure queue `q`'s flow has group `g`, taking a reference on its name when new.
    fn flow_group(&mut self, q: u32, g: u32) {
        let Some(flow) = self.queues[q as usize].flow.as_deref_mut() else { return };
        if let std::collections::hash_map::Entry::Vacant(slot) = flow.groups.entry(g) {
            self.groups.retain(g);
            slot.insert(Group::default());
        }
    }

    /// The group handle of a job ([`UNGROUPED`] for none).
    pub(super) fn group_of(&self, meta: &JobMeta) -> u32 {
        if !meta.grouped {
            return UNGROUPED;
        }
        self.policies.get(meta.policy).map_or(UNGROUPED, |p| p.group)
    }

    /// An active job of a flow-controlled queue stopped being active (acked, failed, held):
    /// frees its group's slot and lets parked waiters have what that frees. Call while the
    /// job's policy is still interned.
    pub(super) fn flow_release(&mut self, now: Millis, meta: &JobMeta) {
        let q = meta.queue;
        if self.queues[q as usize].flow.is_none() {
            return;
        }
        let g = self.group_of(meta);
        let queue = &mut self.queues[q as usize];
        let limits = queue.settings.limits;
        if let Some(flow) = queue.flow.as_deref_mut() {
            if let Some(group) = flow.groups.get_mut(&g) {
                group.active = group.active.saturating_sub(1);
                flow.offer(g, &limits);
            }
        }
        self.drop_group_if_idle(now, q, g);
        // Only a concurrency limit waits for a release. Under a rate alone a parked waiter
        // waits for its wake, and touching the queue on every ack would pop and reinstate
        // it for nothing (about one try per ack in a rate-bound drain).
        let queue = &self.queues[q as usize];
        let waits_for_release = queue.settings.limits.concurrency.is_some()
            || queue.settings.limits.group_concurrency.is_some();
        if waits_for_release && queue.has_ready() && self.touched.last() != Some(&q) {
            self.touched.push(q);
        }
    }

    /// A worker's downstream said "too many requests": the queue starts nothing until
    /// `until`.
    pub(super) fn hold(&mut self, q: u32, until: Millis) {
        self.ensure_flow(q);
        if let Some(flow) = self.queues[q as usize].flow.as_deref_mut() {
            flow.held_until = flow.held_until.max(until);
        }
        self.add_wake(q, until, QUEUE_WAKE);
    }

    /// Until when a `RateLimited` nack holds queue `q`, if it does at `now`.
    pub(super) fn held_until(&self, now: Millis, q: u32) -> Option<Millis> {
        let held = self.queues[q as usize].flow.as_deref()?.held_until;
        (held > now).then_some(held)
    }

    fn add_wake(&mut self, q: u32, at: Millis, what: u64) {
        let Some(flow) = self.queues[q as usize].flow.as_deref_mut() else { return };
        edit_timed(&mut self.flow_heads, &mut flow.wakes, q, |set| set.insert((at, what)));
    }

    /// Sets group `g`'s one wake to `at`, replacing the one it had.
    fn set_group_wake(&mut self, q: u32, g: u32, at: Millis) {
        let Some(flow) = self.queues[q as usize].flow.as_deref_mut() else { return };
        let Some(group) = flow.groups.get_mut(&g) else { return };
        let old = group.wake_at.replace(at);
        if old == Some(at) {
            return;
        }
        edit_timed(&mut self.flow_heads, &mut flow.wakes, q, |set| {
            if let Some(old) = old {
                set.remove(&(old, u64::from(g)));
            }
            set.insert((at, u64::from(g)))
        });
    }

    /// Forgets group `g` of `q` if it has nothing ready or active; one whose rate bucket
    /// is still refilling is kept until it is full (a wake), or its next job could start
    /// early.
    fn drop_group_if_idle(&mut self, now: Millis, q: u32, g: u32) {
        let queue = &mut self.queues[q as usize];
        let group_rate = queue.settings.limits.group_rate;
        let Some(flow) = queue.flow.as_deref_mut() else { return };
        let Some(group) = flow.groups.get(&g) else { return };
        if !group.ready.is_empty() || group.active > 0 || group.in_turn {
            return;
        }
        let full_at = group_rate.map_or(0, |rate| group.bucket.full_at(rate));
        if full_at > now {
            self.set_group_wake(q, g, full_at);
            return;
        }
        if let Some(group) = flow.groups.remove(&g) {
            if let Some(at) = group.wake_at {
                edit_timed(&mut self.flow_heads, &mut flow.wakes, q, |set| {
                    set.remove(&(at, u64::from(g)))
                });
            }
            self.groups.release(g);
        }
    }

    /// Does the flow wakes due at `now`: sources whose wait ran out take turns again, idle
    /// groups whose bucket refilled are forgotten, and the queues go to `touched`.
    pub(super) fn flow_timeouts(&mut self, now: Millis) {
        while let Some(&(at, q)) = self.flow_heads.first() {
            if at > now {
                break;
            }
            let Some(flow) = self.queues[q as usize].flow.as_deref_mut() else {
                self.flow_heads.remove(&(at, q));
                continue;
            };
            let Some(&(at, what)) = flow.wakes.first() else {
                self.flow_heads.remove(&(at, q));
                continue;
            };
            edit_timed(&mut self.flow_heads, &mut flow.wakes, q, |set| set.remove(&(at, what)));
            if let Ok(g) = u32::try_from(what) {
                let limits = self.queues[q as usize].settings.limits;
                if let Some(flow) = self.queues[q as usize].flow.as_deref_mut() {
                    if let Some(group) = flow.groups.get_mut(&g) {
                        group.wake_at = None;
                        flow.offer(g, &limits);
                    }
                }
                self.drop_group_if_idle(now, q, g);
            }
            if self.queues[q as usize].has_ready() && self.touched.last() != Some(&q) {
                self.touched.push(q);
            }
        }
    }

    /// What stops queue `q` from starting a job at `now`, by its queue-wide limits.
    fn gate(&self, now: Millis, q: u32) -> Gate {
        let queue = &self.queues[q as usize];
        let Some(flow) = queue.flow.as_deref() else { return Gate::Open };
        let limits = &queue.settings.limits;
        if flow.held_until > now {
            return Gate::Time(flow.held_until);
        }
        if limits.concurrency.is_some_and(|c| queue.count(JobState::Active) >= u64::from(c)) {
            return Gate::Release;
        }
        match limits.rate {
            Some(rate) if !flow.bucket.allows(now, rate) => Gate::Time(flow.bucket.next_at(rate)),
            _ => Gate::Open,
        }
    }

    /// When a reserve that could take only part of its batch of `want` jobs from `q` at
    /// `now`, because the queue's rate binds, should look again (see [`RATE_BATCH_MS`]):
    /// once the tokens for the batch are there, but not after `until`, nor before the next
    /// token. `None`: take what the limits allow now (no rate, a full enough bucket, or a
    /// hold or concurrency limit, which `gate` handles).
    fn batch_wait(&self, now: Millis, q: u32, want: usize, until: Millis) -> Option<Millis> {
        let queue = &self.queues[q as usize];
        let flow = queue.flow.as_deref()?;
        let limits = &queue.settings.limits;
        let rate = limits.rate?;
        if flow.held_until > now {
            return None;
        }
        let mut want = u64::try_from(want).unwrap_or(u64::MAX);
        want = want.min(queue.count(JobState::Ready)).min(u64::from(rate.max));
        if let Some(c) = limits.concurrency {
            want = want.min(u64::from(c).saturating_sub(queue.count(JobState::Active)));
        }
        if want == 0 || flow.bucket.available(now, rate) >= want {
            return None;
        }
        let batch_at = flow.bucket.ready_at(want, rate).min(until);
        Some(batch_at.max(flow.bucket.next_at(rate)))
    }

    /// Leases up to `max` jobs of flow-controlled queue `q` to `conn`, by turns, within
    /// the queue's limits; appends them to `leases`. Before `batch_until` (the caller may
    /// wait that long) a partial batch of a binding rate is held back: nothing is taken and
    /// the queue wakes when the batch is there ([`RATE_BATCH_MS`]).
    pub(super) fn take_flow(
        &mut self,
        now: Millis,
        conn: ConnId,
        q: u32,
        max: usize,
        batch_until: Millis,
        leases: &mut Vec<Lease>,
    ) {
        if now < batch_until {
            let want = max.saturating_sub(leases.len());
            if let Some(at) = self.batch_wait(now, q, want, batch_until) {
                self.add_wake(q, at, QUEUE_WAKE);
                return;
            }
        }
        while leases.len() < max {
            match self.gate(now, q) {
                Gate::Open => {}
                Gate::Release => break,
                Gate::Time(at) => {
                    // A caller with jobs is answered and needs no wake; one more timer
                    // round per answer is what a binding rate used to cost. A waiter
                    // still parked was turned away here itself, and has its own.
                    if leases.is_empty() {
                        self.add_wake(q, at, QUEUE_WAKE);
                    }
                    break;
                }
            }
            let Some(source) = self.next_source(now, q) else { break };
            let id = self.pop_live(q, source);
            let lease = id.and_then(|id| self.lease_job(now, conn, q, id));
            let queue = &mut self.queues[q as usize];
            let limits = queue.settings.limits;
            let has_ungrouped = queue.has_ungrouped();
            let Some(flow) = queue.flow.as_deref_mut() else { break };
            if lease.is_some() {
                if let Some(rate) = limits.rate {
                    flow.bucket.take(now, rate);
                }
            }
            if source == UNGROUPED {
                // Back at the end of the turns while it has more.
                flow.ungrouped_in_turn = has_ungrouped;
                if has_ungrouped {
                    flow.turns.push_back(UNGROUPED);
                }
            } else {
                if let Some(group) = flow.groups.get_mut(&source) {
                    if lease.is_some() {
                        group.active += 1;
                        if let Some(rate) = limits.group_rate {
                            group.bucket.take(now, rate);
                        }
                    }
                }
                flow.offer(source, &limits);
                self.drop_group_if_idle(now, q, source);
            }
            if let Some(lease) = lease {
                leases.push(lease);
            }
        }
    }

    /// Takes the front source of `q`'s turns that may start a job now; sources that may not
    /// leave the turns (and wait for a release or a wake), empty ones are forgotten.
    fn next_source(&mut self, now: Millis, q: u32) -> Option<u32> {
        loop {
            let queue = &mut self.queues[q as usize];
            let limits = queue.settings.limits;
            let has_ungrouped = queue.has_ungrouped();
            let flow = queue.flow.as_deref_mut()?;
            let source = flow.turns.pop_front()?;
            if source == UNGROUPED {
                if has_ungrouped {
                    return Some(source);
                }
                flow.ungrouped_in_turn = false;
                continue;
            }
            let Some(group) = flow.groups.get_mut(&source) else { continue };
            group.in_turn = false;
            if group.ready.is_empty() || limits.group_concurrency.is_some_and(|c| group.active >= c)
            {
                self.drop_group_if_idle(now, q, source);
                continue;
            }
            if let Some(rate) = limits.group_rate {
                if !group.bucket.allows(now, rate) {
                    let at = group.bucket.next_at(rate);
                    self.set_group_wake(q, source, at);
                    continue;
                }
            }
            // Out of turn until `take_flow` offers it again after the take.
            return Some(source);
        }
    }

    /// Pops the next live ready job of `source` (skipping stale entries).
    fn pop_live(&mut self, q: u32, source: u32) -> Option<JobId> {
        let jobs = &self.jobs;
        let queue = &mut self.queues[q as usize];
        loop {
            let id = if source == UNGROUPED {
                queue.pop_ready()?
            } else {
                queue.flow.as_deref_mut()?.groups.get_mut(&source)?.ready.pop()?
            };
            if jobs.get(id).is_some_and(|m| m.state == JobState::Ready && m.queue == q) {
                return Some(id);
            }
        }
    }
}
