//! Model-based test of the broker core: random sequences of add (committed at once or
//! later) / commit / reserve / ack / nack / touch / advance-time / disconnect and the
//! operator's pause / resume / retry / purge / remove / promote run against the real
//! [`Broker`] and against [`Model`], a deliberately naive reference (a `Vec` of jobs, every
//! operation a linear scan).
//!
//! After every step the two must agree on which queues exist and their counts, on which
//! jobs a reserve returns (id and attempt), on every result and on `poll_timeout`, and every
//! listing (paged two at a time) must give the model's jobs in the model's order. The
//! emitted `Change`s are applied to a `HashMap` "store"; it must match the model job for
//! job, never see an id at or past its persisted id floor, and a fresh broker restored from
//! it must see the same ready/delayed/dead counts and paused queues (active jobs come back
//! ready: leases are not persisted).

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use proptest::prelude::*;
use qd_protocol::{Backoff, ErrorCode, JobOptions};

use super::*;
use crate::model::QueueSettings;

const QUEUES: u8 = 3;
const T0: Millis = 1_000_000;

fn qname(q: u8) -> String {
    format!("q{q}")
}

#[derive(Debug, Clone)]
struct JobSpec {
    priority: i32,
    delay_ms: u64,
    attempts: u32,
    backoff: Backoff,
    lease_ms: u64,
    key: Option<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        queue: u8,
        jobs: Vec<JobSpec>,
        invalid: bool,
        commit_later: bool,
    },
    /// Commits every add not committed yet (the engine's commit finishing).
    Commit,
    Pause {
        queue: u8,
    },
    Resume {
        queue: u8,
    },
    RetryDead {
        queue: u8,
        picks: Vec<usize>,
    },
    RetryAllDead {
        queue: u8,
        name: Option<i32>,
    },
    PurgeDead {
        queue: u8,
        older_than: Option<u64>,
    },
    Remove {
        picks: Vec<usize>,
    },
    Promote {
        picks: Vec<usize>,
    },
    Reserve {
        conn: u8,
        queues: Vec<u8>,
        max: u32,
    },
    Ack {
        pick: usize,
        bogus: bool,
    },
    Nack {
        pick: usize,
        hint: RetryHint,
    },
    Touch {
        pick: usize,
        lease_ms: Option<u64>,
    },
    Advance {
        dt: u64,
    },
    Disconnect {
        conn: u8,
    },
}

fn backoff_strategy() -> impl Strategy<Value = Backoff> {
    prop_oneof![
        Just(Backoff::NONE),
        (1..200u64).prop_map(|delay_ms| Backoff::Fixed { delay_ms }),
        (1..100u64, 0..=60u8).prop_map(|(base_ms, jitter_pct)| Backoff::Exponential {
            base_ms,
            max_ms: base_ms * 3,
            jitter_pct
        }),
    ]
}

fn job_strategy() -> impl Strategy<Value = JobSpec> {
    (
        0..3i32,
        prop_oneof![3 => Just(0u64), 1 => 1..300u64],
        1..4u32,
        backoff_strategy(),
        100..400u64,
        prop::option::weighted(0.3, 0..3u8),
    )
        .prop_map(|(priority, delay_ms, attempts, backoff, lease_ms, key)| JobSpec {
            priority,
            delay_ms,
            attempts,
            backoff,
            lease_ms,
            key,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let hint = prop_oneof![
        3 => Just(RetryHint::Backoff),
        1 => (0..150u64).prop_map(|delay_ms| RetryHint::After { delay_ms }),
        1 => Just(RetryHint::Never),
    ];
    prop_oneof![
        4 => (
            0..QUEUES,
            prop::collection::vec(job_strategy(), 1..4),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.25),
        )
            .prop_map(|(queue, jobs, invalid, commit_later)| Op::Add {
                queue,
                jobs,
                invalid,
                commit_later
            }),
        1 => Just(Op::Commit),
        1 => (0..QUEUES).prop_map(|queue| Op::Pause { queue }),
        1 => (0..QUEUES).prop_map(|queue| Op::Resume { queue }),
        1 => (0..QUEUES, prop::collection::vec(any::<usize>(), 0..3))
            .prop_map(|(queue, picks)| Op::RetryDead { queue, picks }),
        1 => (0..QUEUES, prop::option::of(0..3i32))
            .prop_map(|(queue, name)| Op::RetryAllDead { queue, name }),
        1 => (0..QUEUES, prop::option::of(0..600u64))
            .prop_map(|(queue, older_than)| Op::PurgeDead { queue, older_than }),
        1 => prop::collection::vec(any::<usize>(), 0..3).prop_map(|picks| Op::Remove { picks }),
        1 => prop::collection::vec(any::<usize>(), 0..3).prop_map(|picks| Op::Promote { picks }),
        4 => (0..3u8, prop::collection::vec(0..QUEUES, 1..3), 1..3u32)
            .prop_map(|(conn, queues, max)| Op::Reserve { conn, queues, max }),
        3 => (any::<usize>(), prop::bool::weighted(0.1)).prop_map(|(pick, bogus)| Op::Ack { pick, bogus }),
        2 => (any::<usize>(), hint).prop_map(|(pick, hint)| Op::Nack { pick, hint }),
        1 => (any::<usize>(), prop::option::of(100..500u64))
            .prop_map(|(pick, lease_ms)| Op::Touch { pick, lease_ms }),
        3 => prop_oneof![0..50u64, 50..400u64].prop_map(|dt| Op::Advance { dt }),
        1 => (0..3u8).prop_map(|conn| Op::Disconnect { conn }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Uncommitted { run_at: Millis },
    Ready { seq: u64 },
    Delayed { run_at: Millis },
    Active { token: u64, conn: ConnId, deadline: Millis },
    Dead { at: Millis },
    Completed,
    Removed,
}

impl MState {
    /// Still held by the core (not completed, not removed).
    fn live(self) -> bool {
        !matches!(self, MState::Completed | MState::Removed)
    }
}

#[derive(Debug, Clone)]
struct MJob {
    id: JobId,
    queue: u8,
    spec: JobSpec,
    failures: u32,
    /// Failures over the job's whole life (a retry resets `failures`, not the history).
    errors: u32,
    /// Whether it holds its idempotency key (while not dead). Lost only when a retry finds
    /// the key held by a newer job.
    has_key: bool,
    state: MState,
}

const DEAD_MAX_JOBS: usize = 2;
const DEAD_MAX_AGE_MS: u64 = 700;
const COMPLETED_RETENTION: usize = 5;

#[derive(Debug, Default)]
struct Model {
    now: Millis,
    /// Job `id` is at index `id - 1`.
    jobs: Vec<MJob>,
    seq: u64,
    /// Queues that exist (see `settle`).
    seen: BTreeSet<u8>,
    paused: BTreeSet<u8>,
    /// Completions of each queue's current life, in order.
    completed: HashMap<u8, Vec<JobId>>,
    failed_total: HashMap<u8, u64>,
}

impl Model {
    fn job(&mut self, id: JobId) -> Option<&mut MJob> {
        self.jobs.get_mut(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    fn ready_state(&mut self) -> MState {
        self.seq += 1;
        MState::Ready { seq: self.seq }
    }

    /// Forgets queues with nothing in them: no live job, not paused, no completion
    /// retained (the model never parks waiters and never exceeds `idle_queues_kept`).
    fn settle(&mut self) {
        for q in self.seen.clone() {
            let held = self.jobs.iter().any(|j| j.queue == q && j.state.live());
            let history = self.completed.get(&q).is_some_and(|c| !c.is_empty());
            if !held && !history && !self.paused.contains(&q) {
                self.seen.remove(&q);
                self.completed.remove(&q);
                self.failed_total.remove(&q);
            }
        }
    }

    fn add(&mut self, queue: u8, jobs: &[JobSpec], invalid: bool) -> Result<Vec<JobId>, ErrorCode> {
        if invalid {
            return Err(ErrorCode::InvalidArgument);
        }
        self.seen.insert(queue);
        let mut ids = Vec::new();
        for spec in jobs {
            let holder = spec.key.and_then(|k| {
                self.jobs.iter().find(|j| {
                    j.queue == queue
                        && j.has_key
                        && j.spec.key == Some(k)
                        && !matches!(j.state, MState::Dead { .. })
                        && j.state.live()
                })
            });
            if let Some(holder) = holder {
                ids.push(holder.id);
                continue;
            }
            let id = self.jobs.len() as JobId + 1;
            let state = MState::Uncommitted { run_at: self.now + spec.delay_ms };
            let has_key = spec.key.is_some();
            self.jobs.push(MJob {
                id,
                queue,
                spec: spec.clone(),
                failures: 0,
                errors: 0,
                has_key,
                state,
            });
            ids.push(id);
        }
        Ok(ids)
    }

    fn commit(&mut self, ids: &[JobId]) {
        let now = self.now;
        for &id in ids {
            let Some(MState::Uncommitted { run_at }) = self.job(id).map(|j| j.state) else {
                continue;
            };
            let state = if run_at <= now { self.ready_state() } else { MState::Delayed { run_at } };
            self.job(id).unwrap().state = state;
        }
    }

    /// The jobs a reserve should take, in order, as (id, attempt).
    fn reserve(&mut self, queues: &[u8], max: u32) -> Vec<(JobId, u32)> {
        self.seen.extend(queues);
        let mut taken = Vec::new();
        for &q in queues {
            if self.paused.contains(&q) {
                continue;
            }
            while taken.len() < max as usize {
                let next = self
                    .jobs
                    .iter()
                    .filter(|j| j.queue == q)
                    .filter_map(|j| match j.state {
                        MState::Ready { seq } => Some((j.spec.priority, seq, j.id)),
                        _ => None,
                    })
                    .min();
                let Some((_, _, id)) = next else { break };
                let job = self.job(id).unwrap();
                // Placeholder until the broker's token is known.
                job.state = MState::Active { token: 0, conn: 0, deadline: 0 };
                taken.push((id, job.failures + 1));
            }
        }
        taken
    }

    fn check(&mut self, lease: LeaseRef) -> Result<(), BrokerError> {
        let job = self.job(lease.id).ok_or(BrokerError::NotFound(lease.id))?;
        match job.state {
            MState::Completed | MState::Removed => Err(BrokerError::NotFound(lease.id)),
            MState::Active { token, .. } if token == lease.token => Ok(()),
            _ => Err(BrokerError::LeaseLost(lease.id)),
        }
    }

    fn ack(&mut self, lease: LeaseRef) -> Result<(), BrokerError> {
        self.check(lease)?;
        let job = self.job(lease.id).unwrap();
        job.state = MState::Completed;
        let q = job.queue;
        self.completed.entry(q).or_default().push(lease.id);
        Ok(())
    }

    fn fail(&mut self, id: JobId, hint: RetryHint) -> NackOutcome {
        let now = self.now;
        let job = self.job(id).unwrap().clone();
        let attempt = job.failures + 1;
        let dead = hint == RetryHint::Never || attempt >= job.spec.attempts;
        let delay = match hint {
            RetryHint::Backoff => backoff::delay_ms(&job.spec.backoff, id, attempt),
            RetryHint::After { delay_ms } => delay_ms,
            RetryHint::Never => 0,
            // Not generated: flow control has its own tests (`flow_tests.rs`).
            RetryHint::RateLimited { .. } => unreachable!("not generated"),
        };
        let (state, outcome) = if dead {
            (MState::Dead { at: now }, NackOutcome::Dead)
        } else if delay == 0 {
            (self.ready_state(), NackOutcome::Retrying { run_at_ms: now })
        } else {
            (
                MState::Delayed { run_at: now + delay },
                NackOutcome::Retrying { run_at_ms: now + delay },
            )
        };
        let job = self.job(id).unwrap();
        job.failures = attempt;
        job.errors += 1;
        job.state = state;
        let q = job.queue;
        *self.failed_total.entry(q).or_default() += 1;
        if dead {
            // Retention by count: the oldest dead beyond the limit go.
            let mut dead_jobs = self.dead_of(q);
            while dead_jobs.len() > DEAD_MAX_JOBS {
                let (_, oldest) = dead_jobs.remove(0);
                self.job(oldest).unwrap().state = MState::Removed;
            }
        }
        outcome
    }

    /// `(died_at, id)` of `q`'s dead jobs, oldest first.
    fn dead_of(&self, q: u8) -> Vec<(Millis, JobId)> {
        let mut dead: Vec<(Millis, JobId)> = self
            .jobs
            .iter()
            .filter(|j| j.queue == q)
            .filter_map(|j| match j.state {
                MState::Dead { at } => Some((at, j.id)),
                _ => None,
            })
            .collect();
        dead.sort();
        dead
    }

    fn nack(&mut self, lease: LeaseRef, hint: RetryHint) -> Result<NackOutcome, BrokerError> {
        self.check(lease)?;
        Ok(self.fail(lease.id, hint))
    }

    fn touch(&mut self, lease: LeaseRef, lease_ms: Option<u64>) -> Result<Millis, BrokerError> {
        self.check(lease)?;
        let now = self.now;
        let job = self.job(lease.id).unwrap();
        let new = now + lease_ms.unwrap_or(job.spec.lease_ms);
        if let MState::Active { deadline, .. } = &mut job.state {
            *deadline = new;
        }
        Ok(new)
    }

    fn advance(&mut self, dt: u64) {
        self.now += dt;
        let now = self.now;
        let mut due: Vec<(Millis, JobId)> = self
            .jobs
            .iter()
            .filter_map(|j| match j.state {
                MState::Delayed { run_at } if run_at <= now => Some((run_at, j.id)),
                _ => None,
            })
            .collect();
        due.sort();
        for (_, id) in due {
            let state = self.ready_state();
            self.job(id).unwrap().state = state;
        }
        let mut expired: Vec<(Millis, JobId)> = self
            .jobs
            .iter()
            .filter_map(|j| match j.state {
                MState::Active { deadline, .. } if deadline <= now => Some((deadline, j.id)),
                _ => None,
            })
            .collect();
        expired.sort();
        for (_, id) in expired {
            self.fail(id, RetryHint::Backoff);
        }
        for job in &mut self.jobs {
            if matches!(job.state, MState::Dead { at } if at + DEAD_MAX_AGE_MS <= now) {
                job.state = MState::Removed;
            }
        }
    }

    fn disconnect(&mut self, conn: ConnId) {
        let held: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|j| matches!(j.state, MState::Active { conn: c, .. } if c == conn))
            .map(|j| j.id)
            .collect();
        for id in held {
            self.fail(id, RetryHint::Backoff);
        }
    }

    fn pause(&mut self, q: u8) {
        self.seen.insert(q);
        self.paused.insert(q);
    }

    fn resume(&mut self, q: u8) {
        self.paused.remove(&q);
    }

    /// Dead jobs of `q` picked by `pick` go ready, oldest death first.
    fn retry_dead(&mut self, q: u8, pick: impl Fn(&MJob) -> bool) -> u64 {
        let chosen: Vec<(Millis, JobId)> = self
            .dead_of(q)
            .into_iter()
            .filter(|&(_, id)| pick(&self.jobs[id as usize - 1]))
            .collect();
        for &(_, id) in &chosen {
            let key = self.jobs[id as usize - 1].spec.key;
            let taken = self.jobs.iter().any(|j| {
                j.id != id
                    && j.queue == q
                    && j.has_key
                    && key.is_some()
                    && j.spec.key == key
                    && !matches!(j.state, MState::Dead { .. })
                    && j.state.live()
            });
            let state = self.ready_state();
            let job = self.job(id).unwrap();
            job.failures = 0;
            job.state = state;
            job.has_key = job.has_key && !taken;
        }
        chosen.len() as u64
    }

    fn purge_dead(&mut self, q: u8, older_than: Option<u64>) -> u64 {
        let cut = older_than.map_or(Millis::MAX, |age| self.now.saturating_sub(age));
        let chosen: Vec<JobId> =
            self.dead_of(q).into_iter().filter(|&(at, _)| at <= cut).map(|(_, id)| id).collect();
        for &id in &chosen {
            self.job(id).unwrap().state = MState::Removed;
        }
        chosen.len() as u64
    }

    fn remove(&mut self, ids: &[JobId]) -> u64 {
        let mut n = 0;
        for &id in ids {
            let Some(job) = self.job(id) else { continue };
            if matches!(
                job.state,
                MState::Ready { .. } | MState::Delayed { .. } | MState::Dead { .. }
            ) {
                job.state = MState::Removed;
                n += 1;
            }
        }
        n
    }

    /// Delayed jobs among `ids` go ready: queue by queue in the order the ids first name
    /// them, each queue's by run time then id (the order the broker walks its sets).
    fn promote(&mut self, ids: &[JobId]) -> u64 {
        let mut groups: Vec<(u8, Vec<(Millis, JobId)>)> = Vec::new();
        for &id in ids {
            let Some(job) = self.job(id) else { continue };
            let MState::Delayed { run_at } = job.state else { continue };
            let q = job.queue;
            match groups.iter_mut().find(|g| g.0 == q) {
                Some((_, list)) => list.push((run_at, id)),
                None => groups.push((q, vec![(run_at, id)])),
            }
        }
        let mut n = 0;
        for (_, mut list) in groups {
            list.sort();
            list.dedup();
            for (_, id) in list {
                let state = self.ready_state();
                self.job(id).unwrap().state = state;
                n += 1;
            }
        }
        n
    }

    fn poll_timeout(&self) -> Option<Millis> {
        self.jobs
            .iter()
            .filter_map(|j| match j.state {
                MState::Delayed { run_at } => Some(run_at),
                MState::Active { deadline, .. } => Some(deadline),
                MState::Dead { at } => Some(at + DEAD_MAX_AGE_MS),
                _ => None,
            })
            .min()
    }

    /// Expected stats, as (queue, ready, delayed, active, dead, completed_total, failed_total).
    fn stats(&self) -> Vec<(String, u64, u64, u64, u64, u64, u64)> {
        self.seen
            .iter()
            .map(|&q| {
                let mut c = [0u64; 4];
                for j in self.jobs.iter().filter(|j| j.queue == q) {
                    match j.state {
                        MState::Ready { .. } | MState::Uncommitted { .. } => c[0] += 1,
                        MState::Delayed { .. } => c[1] += 1,
                        MState::Active { .. } => c[2] += 1,
                        MState::Dead { .. } => c[3] += 1,
                        MState::Completed | MState::Removed => {}
                    }
                }
                let done = self.completed.get(&q).map_or(0, |c| c.len() as u64);
                let failed = self.failed_total.get(&q).copied().unwrap_or(0);
                (qname(q), c[0], c[1], c[2], c[3], done, failed)
            })
            .collect()
    }

    /// The ids a listing of `q` in `state` should give, in order.
    fn listing(&self, q: u8, state: JobStateKind) -> Vec<JobId> {
        let of_q = || self.jobs.iter().filter(move |j| j.queue == q);
        let mut keyed: Vec<((i64, u64, u64), JobId)> = match state {
            JobStateKind::Ready => of_q()
                .filter_map(|j| match j.state {
                    MState::Ready { seq } => Some(((i64::from(j.spec.priority), seq, 0), j.id)),
                    _ => None,
                })
                .collect(),
            JobStateKind::Delayed => of_q()
                .filter_map(|j| match j.state {
                    MState::Delayed { run_at } => Some(((0, run_at, j.id), j.id)),
                    _ => None,
                })
                .collect(),
            JobStateKind::Active => of_q()
                .filter_map(|j| match j.state {
                    MState::Active { deadline, .. } => Some(((0, deadline, j.id), j.id)),
                    _ => None,
                })
                .collect(),
            JobStateKind::Dead => {
                return self.dead_of(q).into_iter().rev().map(|(_, id)| id).collect();
            }
            JobStateKind::Completed => {
                let done = self.completed.get(&q).cloned().unwrap_or_default();
                return done.into_iter().rev().take(COMPLETED_RETENTION).collect();
            }
        };
        keyed.sort();
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// What `job_view` should say about job `id`: its state, or `None`.
    fn view_state(&self, id: JobId) -> Option<JobStateKind> {
        let job = &self.jobs[id as usize - 1];
        Some(match job.state {
            MState::Uncommitted { .. } | MState::Ready { .. } => JobStateKind::Ready,
            MState::Delayed { .. } => JobStateKind::Delayed,
            MState::Active { .. } => JobStateKind::Active,
            MState::Dead { .. } => JobStateKind::Dead,
            MState::Removed => return None,
            MState::Completed => {
                let ring = self.listing(job.queue, JobStateKind::Completed);
                return (self.seen.contains(&job.queue) && ring.contains(&id))
                    .then_some(JobStateKind::Completed);
            }
        })
    }
}

fn real_stats(b: &Broker) -> Vec<(String, u64, u64, u64, u64, u64, u64)> {
    b.stats()
        .into_iter()
        .map(|s| (s.queue, s.ready, s.delayed, s.active, s.dead, s.completed_total, s.failed_total))
        .collect()
}

/// Pages through a listing two items at a time.
fn real_listing(b: &Broker, now: Millis, q: u8, state: JobStateKind) -> Vec<JobId> {
    let mut ids = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = b.list_jobs(now, &qname(q), state, cursor.as_deref(), 2).expect("valid cursor");
        assert!(page.items.iter().all(|v| v.state == state));
        ids.extend(page.items.iter().map(|v| v.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

fn new_job(spec: &JobSpec, invalid: bool) -> NewJob {
    NewJob {
        name: format!("n{}", spec.priority),
        payload: Bytes::from_static(b"payload"),
        options: JobOptions {
            priority: spec.priority,
            delay_ms: spec.delay_ms,
            attempts: if invalid { 0 } else { spec.attempts },
            backoff: spec.backoff,
            lease_ms: spec.lease_ms,
            key: spec.key.map(|k| format!("key-{k}")),
            ..JobOptions::default()
        },
    }
}

/// The store as the engine would keep it: every `Change` applied in order.
#[derive(Debug, Default)]
struct Store {
    jobs: HashMap<JobId, JobRecord>,
    settings: HashMap<String, QueueSettings>,
    /// The persisted id floor: every id assigned is below it.
    floor: JobId,
}

impl Store {
    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            let Effect::Persist(change) = effect else { continue };
            match change {
                Change::Insert(record) => {
                    assert!(record.id < self.floor, "id {} not below the floor", record.id);
                    assert!(self.jobs.insert(record.id, *record).is_none(), "id inserted twice");
                }
                Change::Complete { id } => {
                    assert!(
                        self.jobs.remove(&id).is_some(),
                        "completed a job the store lacks: {id}"
                    );
                }
                Change::Remove { id } => {
                    assert!(self.jobs.remove(&id).is_some(), "removed a job the store lacks: {id}");
                }
                Change::Fail { id, error, run_at_ms, dead } => {
                    self.jobs
                        .get_mut(&id)
                        .expect("failed job is stored")
                        .apply_failure(error, run_at_ms, dead);
                }
                Change::Retry { id, run_at_ms } => {
                    let rec = self.jobs.get_mut(&id).expect("retried job is stored");
                    assert_eq!(rec.state, PersistedState::Dead, "retried job {id} was dead");
                    rec.failures = 0;
                    rec.run_at_ms = run_at_ms;
                    rec.state = PersistedState::Waiting;
                }
                Change::Reschedule { id, run_at_ms } => {
                    self.jobs.get_mut(&id).expect("rescheduled job is stored").run_at_ms =
                        run_at_ms;
                }
                Change::Replace { id, payload, run_at_ms } => {
                    self.jobs
                        .get_mut(&id)
                        .expect("debounced job is stored")
                        .apply_replace(&payload, run_at_ms);
                }
                Change::Settings { queue, settings } => {
                    if settings == QueueSettings::default() {
                        self.settings.remove(&queue);
                    } else {
                        self.settings.insert(queue, settings);
                    }
                }
                Change::IdFloor { next_id } => {
                    assert!(next_id > self.floor, "the floor only rises");
                    self.floor = next_id;
                }
                // This model drives no schedules (`schedules.rs` tests them).
                Change::Schedule { .. } => {}
            }
        }
    }
}

fn config() -> BrokerConfig {
    BrokerConfig {
        completed_retention: COMPLETED_RETENTION,
        dead_max_jobs: DEAD_MAX_JOBS,
        dead_max_age_ms: DEAD_MAX_AGE_MS,
        token_key: [3; 32],
        ..BrokerConfig::default()
    }
}

/// Maps a random pick to an id among the model's jobs, or one past them (unknown).
fn pick_ids(m: &Model, picks: &[usize]) -> Vec<JobId> {
    picks.iter().map(|p| (p % (m.jobs.len() + 1)) as JobId + 1).collect()
}

const KINDS: [JobStateKind; 5] = [
    JobStateKind::Ready,
    JobStateKind::Delayed,
    JobStateKind::Active,
    JobStateKind::Dead,
    JobStateKind::Completed,
];

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut b = Broker::new(config());
    let mut m = Model { now: T0, ..Model::default() };
    let mut store = Store::default();
    let mut issued: Vec<LeaseRef> = Vec::new();
    let mut uncommitted: Vec<JobId> = Vec::new();
    let mut request = 0u64;

    for (step, op) in ops.into_iter().enumerate() {
        let now = m.now;
        match &op {
            Op::Add { queue, jobs, invalid, commit_later } => {
                let mut batch: Vec<NewJob> = jobs.iter().map(|s| new_job(s, false)).collect();
                if *invalid {
                    batch.push(new_job(&jobs[0], true));
                }
                let got = b.add(now, &qname(*queue), batch).map_err(|e| e.code());
                prop_assert_eq!(&got, &m.add(*queue, jobs, *invalid), "step {}: {:?}", step, op);
                if let Ok(ids) = got {
                    if *commit_later {
                        uncommitted.extend(ids);
                    } else {
                        b.commit_added(now, &ids);
                        m.commit(&ids);
                    }
                }
            }
            Op::Commit => {
                let ids = std::mem::take(&mut uncommitted);
                b.commit_added(now, &ids);
                m.commit(&ids);
            }
            Op::Reserve { conn, queues, max } => {
                request += 1;
                let names: Vec<String> = queues.iter().map(|&q| qname(q)).collect();
                let waiter = WaiterKey { conn: ConnId::from(*conn), request };
                let leases = b.reserve(now, waiter, &names, *max, 0).unwrap().unwrap();
                let got: Vec<(JobId, u32)> = leases.iter().map(|l| (l.id, l.attempt)).collect();
                prop_assert_eq!(&got, &m.reserve(queues, *max), "step {}: {:?}", step, op);
                for l in &leases {
                    let spec = &m.job(l.id).unwrap().spec;
                    prop_assert_eq!(l.deadline_ms, now + spec.lease_ms);
                    prop_assert_eq!(l.max_attempts, spec.attempts);
                    m.job(l.id).unwrap().state = MState::Active {
                        token: l.token,
                        conn: ConnId::from(*conn),
                        deadline: l.deadline_ms,
                    };
                    issued.push(LeaseRef { id: l.id, token: l.token });
                }
            }
            Op::Ack { pick, bogus } => {
                if issued.is_empty() {
                    continue;
                }
                let mut lease = issued[pick % issued.len()];
                if *bogus {
                    lease.token = lease.token.wrapping_add(1);
                }
                prop_assert_eq!(b.ack(now, lease), m.ack(lease), "step {}: {:?}", step, op);
            }
            Op::Nack { pick, hint } => {
                if issued.is_empty() {
                    continue;
                }
                let lease = issued[pick % issued.len()];
                // Distinct text per step: `apply_failure` takes a failure equal to a kept one
                // (same try, same ms, same text) for a replay, which only a retry within
                // the same millisecond could produce (see `JobRecord::apply_failure`).
                let got = b.nack(now, lease, &format!("model says no at {step}"), *hint);
                prop_assert_eq!(got, m.nack(lease, *hint), "step {}: {:?}", step, op);
            }
            Op::Touch { pick, lease_ms } => {
                if issued.is_empty() {
                    continue;
                }
                let lease = issued[pick % issued.len()];
                prop_assert_eq!(b.touch(now, lease, *lease_ms), m.touch(lease, *lease_ms));
            }
            Op::Advance { dt } => {
                m.advance(*dt);
                b.handle_timeout(m.now);
            }
            Op::Disconnect { conn } => {
                m.disconnect(ConnId::from(*conn));
                b.disconnect(now, ConnId::from(*conn));
            }
            Op::Pause { queue } => {
                b.pause(now, &qname(*queue)).unwrap();
                m.pause(*queue);
            }
            Op::Resume { queue } => {
                b.resume(now, &qname(*queue)).unwrap();
                m.resume(*queue);
            }
            Op::RetryDead { queue, picks } => {
                let ids = pick_ids(&m, picks);
                let want = m.retry_dead(*queue, |j| ids.contains(&j.id));
                prop_assert_eq!(b.retry_dead(now, &qname(*queue), &ids), want, "step {}", step);
            }
            Op::RetryAllDead { queue, name } => {
                let name = name.map(|p| format!("n{p}"));
                let want = m.retry_dead(*queue, |j| {
                    name.as_ref().is_none_or(|n| *n == format!("n{}", j.spec.priority))
                });
                let got = b.retry_all_dead(now, &qname(*queue), name.as_deref());
                prop_assert_eq!(got, want, "step {}", step);
            }
            Op::PurgeDead { queue, older_than } => {
                let want = m.purge_dead(*queue, *older_than);
                prop_assert_eq!(b.purge_dead(now, &qname(*queue), *older_than), want);
            }
            Op::Remove { picks } => {
                let ids = pick_ids(&m, picks);
                prop_assert_eq!(b.remove(now, &ids), m.remove(&ids), "step {}: {:?}", step, op);
            }
            Op::Promote { picks } => {
                let ids = pick_ids(&m, picks);
                prop_assert_eq!(b.promote(now, &ids), m.promote(&ids), "step {}: {:?}", step, op);
            }
        }
        m.settle();

        prop_assert_eq!(real_stats(&b), m.stats(), "step {}: after {:?}", step, op);
        prop_assert_eq!(b.poll_timeout(), m.poll_timeout(), "step {}: after {:?}", step, op);
        let (views, next) = b.queue_views(m.now, None, 100);
        prop_assert!(next.is_none());
        for v in &views {
            let q: u8 = v.name[1..].parse().unwrap();
            prop_assert_eq!(v.paused, m.paused.contains(&q), "step {}", step);
        }
        for &q in &m.seen {
            for kind in KINDS {
                let got = real_listing(&b, m.now, q, kind);
                prop_assert_eq!(got, m.listing(q, kind), "step {}: {:?} of q{}", step, kind, q);
            }
        }
        for id in 1..=m.jobs.len() as JobId {
            let got = b.job_view(id).map(|v| v.state);
            prop_assert_eq!(got, m.view_state(id), "job {} at step {}", id, step);
        }

        let mut effects = Vec::new();
        b.take_effects(&mut effects);
        prop_assert!(
            effects.iter().all(|e| matches!(e, Effect::Persist(_))),
            "no waiter is ever parked in this test"
        );
        store.apply(effects);

        // The store holds exactly the live jobs, with the model's counts.
        let live = m.jobs.iter().filter(|j| j.state.live()).count();
        prop_assert_eq!(store.jobs.len(), live, "step {}", step);
        for j in m.jobs.iter().filter(|j| j.state.live()) {
            let rec = &store.jobs[&j.id];
            prop_assert_eq!(rec.failures, j.failures, "job {} at step {}", j.id, step);
            prop_assert_eq!(rec.errors.len(), j.errors as usize);
            match j.state {
                MState::Dead { at } => {
                    prop_assert_eq!((rec.state, rec.run_at_ms), (PersistedState::Dead, at));
                }
                _ => prop_assert_eq!(rec.state, PersistedState::Waiting),
            }
        }
        let paused: BTreeSet<String> = m.paused.iter().map(|&q| qname(q)).collect();
        prop_assert_eq!(store.settings.keys().cloned().collect::<BTreeSet<_>>(), paused);
        prop_assert!(m.jobs.is_empty() || b.next_id() <= store.floor, "ids stay under the floor");

        // A broker restored from the store sees the same jobs; active ones come back ready,
        // uncommitted ones committed.
        let mut restored = Broker::new(config());
        let mut records: Vec<&JobRecord> = store.jobs.values().collect();
        records.sort_by_key(|r| r.id);
        for (queue, settings) in &store.settings {
            restored.restore_settings(queue, settings.clone());
        }
        for rec in records {
            restored.restore(m.now, rec);
        }
        restored.set_next_id(store.floor);
        prop_assert!(restored.next_id() >= b.next_id());
        let mut want: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for &q in &m.paused {
            want.insert(qname(q), (0, 0, 0));
        }
        for j in m.jobs.iter().filter(|j| j.state.live()) {
            let e = want.entry(qname(j.queue)).or_default();
            match j.state {
                MState::Uncommitted { run_at } if run_at > m.now => e.1 += 1,
                MState::Delayed { .. } => e.1 += 1,
                MState::Dead { .. } => e.2 += 1,
                _ => e.0 += 1,
            }
        }
        let got: HashMap<String, (u64, u64, u64)> = restored
            .stats()
            .into_iter()
            .map(|s| {
                prop_assert_eq!(s.active, 0);
                Ok((s.queue, (s.ready, s.delayed, s.dead)))
            })
            .collect::<Result<_, TestCaseError>>()?;
        prop_assert_eq!(got, want, "restore after step {}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn broker_matches_reference_model(ops in prop::collection::vec(op_strategy(), 1..80)) {
        run(ops)?;
    }
}

/// The model test must be able to fail: a broker that hands out jobs in id order instead of
/// ready order is caught by this fixed sequence.
#[test]
fn model_distinguishes_ready_order_from_id_order() {
    let spec = JobSpec {
        priority: 0,
        delay_ms: 0,
        attempts: 3,
        backoff: Backoff::NONE,
        lease_ms: 100,
        key: None,
    };
    let mut m = Model { now: T0, ..Model::default() };
    m.add(0, std::slice::from_ref(&spec), false).unwrap();
    assert_eq!(m.reserve(&[0], 1), [], "not committed yet");
    m.commit(&[1]);
    let taken = m.reserve(&[0], 1);
    m.job(taken[0].0).unwrap().state = MState::Active { token: 9, conn: 0, deadline: T0 + 100 };
    m.add(0, &[spec], false).unwrap();
    m.commit(&[2]);
    m.nack(LeaseRef { id: 1, token: 9 }, RetryHint::Backoff).unwrap();
    assert_eq!(m.reserve(&[0], 2), [(2, 1), (1, 2)]);
}
