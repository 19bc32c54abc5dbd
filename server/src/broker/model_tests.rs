//! Model-based test of the broker core: random sequences of add / reserve / ack / nack /
//! touch / advance-time / disconnect run against the real [`Broker`] and against [`Model`],
//! a deliberately naive reference (a `Vec` of jobs, every operation a linear scan).
//!
//! After every step the two must agree on per-queue counts, on which jobs a reserve returns
//! (id and attempt), on every ack/nack/touch result and on `poll_timeout`. The emitted
//! `Change`s are applied to a `HashMap` "store"; it must match the model job for job, and a
//! fresh broker restored from it must see the same ready/delayed/dead counts (active jobs
//! come back ready: leases are not persisted).

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use proptest::prelude::*;
use qd_protocol::{Backoff, ErrorCode, JobOptions};

use super::*;

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
    Add { queue: u8, jobs: Vec<JobSpec>, invalid: bool },
    Reserve { conn: u8, queues: Vec<u8>, max: u32 },
    Ack { pick: usize, bogus: bool },
    Nack { pick: usize, hint: RetryHint },
    Touch { pick: usize, lease_ms: Option<u64> },
    Advance { dt: u64 },
    Disconnect { conn: u8 },
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
        4 => (0..QUEUES, prop::collection::vec(job_strategy(), 1..4), prop::bool::weighted(0.1))
            .prop_map(|(queue, jobs, invalid)| Op::Add { queue, jobs, invalid }),
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
    Ready { seq: u64 },
    Delayed { run_at: Millis },
    Active { token: u64, conn: ConnId, deadline: Millis },
    Dead,
    Completed,
}

#[derive(Debug, Clone)]
struct MJob {
    id: JobId,
    queue: u8,
    spec: JobSpec,
    failures: u32,
    state: MState,
}

#[derive(Debug, Default)]
struct Model {
    now: Millis,
    /// Job `id` is at index `id - 1`.
    jobs: Vec<MJob>,
    seq: u64,
    seen: BTreeSet<u8>,
    completed_total: HashMap<u8, u64>,
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
                        && j.spec.key == Some(k)
                        && !matches!(j.state, MState::Dead | MState::Completed)
                })
            });
            if let Some(holder) = holder {
                ids.push(holder.id);
                continue;
            }
            let id = self.jobs.len() as JobId + 1;
            let state = if spec.delay_ms == 0 {
                self.ready_state()
            } else {
                MState::Delayed { run_at: self.now + spec.delay_ms }
            };
            self.jobs.push(MJob { id, queue, spec: spec.clone(), failures: 0, state });
            ids.push(id);
        }
        Ok(ids)
    }

    /// The jobs a reserve should take, in order, as (id, attempt).
    fn reserve(&mut self, queues: &[u8], max: u32) -> Vec<(JobId, u32)> {
        self.seen.extend(queues);
        let mut taken = Vec::new();
        for &q in queues {
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
            MState::Completed => Err(BrokerError::NotFound(lease.id)),
            MState::Active { token, .. } if token == lease.token => Ok(()),
            _ => Err(BrokerError::LeaseLost(lease.id)),
        }
    }

    fn ack(&mut self, lease: LeaseRef) -> Result<(), BrokerError> {
        self.check(lease)?;
        let job = self.job(lease.id).unwrap();
        job.state = MState::Completed;
        let q = job.queue;
        *self.completed_total.entry(q).or_default() += 1;
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
        };
        let (state, outcome) = if dead {
            (MState::Dead, NackOutcome::Dead)
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
        job.state = state;
        let q = job.queue;
        *self.failed_total.entry(q).or_default() += 1;
        outcome
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

    fn poll_timeout(&self) -> Option<Millis> {
        self.jobs
            .iter()
            .filter_map(|j| match j.state {
                MState::Delayed { run_at } => Some(run_at),
                MState::Active { deadline, .. } => Some(deadline),
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
                        MState::Ready { .. } => c[0] += 1,
                        MState::Delayed { .. } => c[1] += 1,
                        MState::Active { .. } => c[2] += 1,
                        MState::Dead => c[3] += 1,
                        MState::Completed => {}
                    }
                }
                let done = self.completed_total.get(&q).copied().unwrap_or(0);
                let failed = self.failed_total.get(&q).copied().unwrap_or(0);
                (qname(q), c[0], c[1], c[2], c[3], done, failed)
            })
            .collect()
    }
}

fn real_stats(b: &Broker) -> Vec<(String, u64, u64, u64, u64, u64, u64)> {
    b.stats()
        .into_iter()
        .map(|s| (s.queue, s.ready, s.delayed, s.active, s.dead, s.completed_total, s.failed_total))
        .collect()
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
        },
    }
}

/// The store as the engine would keep it: every `Change` applied in order.
fn apply(store: &mut HashMap<JobId, JobRecord>, effects: Vec<Effect>) {
    for effect in effects {
        let Effect::Persist(change) = effect else { continue };
        match change {
            Change::Insert(record) => {
                assert!(store.insert(record.id, record).is_none(), "id inserted twice");
            }
            Change::Complete { id } => {
                assert!(store.remove(&id).is_some(), "completed a job the store lacks: {id}");
            }
            Change::Fail { id, error, run_at_ms, dead } => {
                store
                    .get_mut(&id)
                    .expect("failed job is stored")
                    .apply_failure(error, run_at_ms, dead);
            }
            other => panic!("this model does not expect {other:?}"),
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut b = Broker::new(BrokerConfig { completed_retention: 5, ..BrokerConfig::default() });
    let mut m = Model { now: T0, ..Model::default() };
    let mut store: HashMap<JobId, JobRecord> = HashMap::new();
    let mut issued: Vec<LeaseRef> = Vec::new();
    let mut request = 0u64;

    for (step, op) in ops.into_iter().enumerate() {
        let now = m.now;
        match &op {
            Op::Add { queue, jobs, invalid } => {
                let mut batch: Vec<NewJob> = jobs.iter().map(|s| new_job(s, false)).collect();
                if *invalid {
                    batch.push(new_job(&jobs[0], true));
                }
                let got = b.add(now, &qname(*queue), batch).map_err(|e| e.code());
                prop_assert_eq!(got, m.add(*queue, jobs, *invalid), "step {}: {:?}", step, op);
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
                let got = b.nack(now, lease, "model says no", *hint);
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
        }

        prop_assert_eq!(real_stats(&b), m.stats(), "step {}: after {:?}", step, op);
        prop_assert_eq!(b.poll_timeout(), m.poll_timeout(), "step {}: after {:?}", step, op);

        let mut effects = Vec::new();
        b.take_effects(&mut effects);
        prop_assert!(
            effects.iter().all(|e| matches!(e, Effect::Persist(_))),
            "no waiter is ever parked in this test"
        );
        apply(&mut store, effects);

        // The store holds exactly the jobs that are not completed, with the model's counts.
        let live = m.jobs.iter().filter(|j| j.state != MState::Completed).count();
        prop_assert_eq!(store.len(), live, "step {}", step);
        for j in m.jobs.iter().filter(|j| j.state != MState::Completed) {
            let rec = &store[&j.id];
            prop_assert_eq!(rec.failures, j.failures, "job {} at step {}", j.id, step);
            prop_assert_eq!(rec.errors.len(), j.failures as usize);
            prop_assert_eq!(rec.state == PersistedState::Dead, j.state == MState::Dead);
        }

        // A broker restored from the store sees the same jobs; active ones come back ready.
        let mut restored = Broker::new(BrokerConfig::default());
        let mut records: Vec<&JobRecord> = store.values().collect();
        records.sort_by_key(|r| r.id);
        for rec in records {
            restored.restore(m.now, rec);
        }
        restored.set_next_id(b.next_id());
        prop_assert_eq!(restored.next_id(), b.next_id());
        let mut want: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for (q, ready, delayed, active, dead, _, _) in m.stats() {
            if ready + delayed + active + dead > 0 {
                want.insert(q, (ready + active, delayed, dead));
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
    let taken = m.reserve(&[0], 1);
    m.job(taken[0].0).unwrap().state = MState::Active { token: 9, conn: 0, deadline: T0 + 100 };
    m.add(0, &[spec], false).unwrap();
    m.nack(LeaseRef { id: 1, token: 9 }, RetryHint::Backoff).unwrap();
    assert_eq!(m.reserve(&[0], 2), [(2, 1), (1, 2)]);
}
