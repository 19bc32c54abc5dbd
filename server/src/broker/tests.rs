//! Scenario tests of the broker core: one life-cycle story per test, driven by a fake clock
//! (plain numbers). The randomized comparison against a reference model is in
//! `model_tests.rs`.

use bytes::Bytes;
use qd_protocol::{Backoff, ErrorCode, JobOptions, WireError};

use super::*;

const T0: Millis = 1_700_000_000_000;

fn job(name: &str) -> NewJob {
    NewJob { name: name.into(), payload: Bytes::from_static(b"p"), options: JobOptions::default() }
}

fn job_with(name: &str, f: impl FnOnce(&mut JobOptions)) -> NewJob {
    let mut j = job(name);
    f(&mut j.options);
    j
}

fn no_backoff(o: &mut JobOptions) {
    o.backoff = Backoff::NONE;
}

fn w(conn: ConnId, request: u64) -> WaiterKey {
    WaiterKey { conn, request }
}

fn qs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn lref(l: &Lease) -> LeaseRef {
    LeaseRef { id: l.id, token: l.token }
}

fn broker() -> Broker {
    Broker::new(BrokerConfig::default())
}

/// Adds and, as the engine does once the insert is committed, commits the new jobs.
fn add(
    b: &mut Broker,
    now: Millis,
    queue: &str,
    jobs: Vec<NewJob>,
) -> Result<Vec<JobId>, BrokerError> {
    let ids = b.add(now, queue, jobs)?;
    b.commit_added(now, &ids);
    Ok(ids)
}

/// Reserves with no wait; panics if the call fails or parks.
fn take(b: &mut Broker, now: Millis, queues: &[&str], max: u32) -> Vec<Lease> {
    b.reserve(now, w(1, 0), &qs(queues), max, 0).unwrap().expect("timeout 0 never parks")
}

/// The effects so far, leaving out `IdFloor` changes (tested on their own).
fn effects(b: &mut Broker) -> Vec<Effect> {
    let mut out = Vec::new();
    b.take_effects(&mut out);
    out.retain(|e| !matches!(e, Effect::Persist(Change::IdFloor { .. })));
    out
}

fn fails(effects: &[Effect]) -> Vec<(JobId, u32, String, Millis, bool)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(Change::Fail { id, error, run_at_ms, dead }) => {
                Some((*id, error.attempt, error.message.clone(), *run_at_ms, *dead))
            }
            _ => None,
        })
        .collect()
}

fn stats_of(b: &Broker, queue: &str) -> QueueStats {
    b.stats().into_iter().find(|s| s.queue == queue).expect("queue listed in stats")
}

/// (ready, delayed, active, dead)
fn counts(b: &Broker, queue: &str) -> (u64, u64, u64, u64) {
    let s = stats_of(b, queue);
    (s.ready, s.delayed, s.active, s.dead)
}

#[test]
fn add_reserve_ack() {
    let mut b = broker();
    let ids = add(&mut b, T0, "emails", vec![job("welcome")]).unwrap();
    assert_eq!(ids, [1]);
    let inserted = effects(&mut b);
    let [Effect::Persist(Change::Insert(rec))] = inserted.as_slice() else {
        panic!("expected one insert, got {inserted:?}")
    };
    assert_eq!((rec.id, rec.queue.as_str(), rec.name.as_str()), (1, "emails", "welcome"));
    assert_eq!((rec.run_at_ms, rec.failures, rec.state), (T0, 0, PersistedState::Waiting));
    assert_eq!(rec.payload, Bytes::from_static(b"p"));

    let leases = take(&mut b, T0 + 5, &["emails"], 10);
    assert_eq!(leases.len(), 1);
    let l = &leases[0];
    assert_eq!(
        (l.id, &*l.queue, &*l.name, l.attempt, l.max_attempts),
        (1, "emails", "welcome", 1, 3)
    );
    assert_eq!((l.deadline_ms, l.created_at_ms), (T0 + 5 + 30_000, T0));
    assert_eq!(counts(&b, "emails"), (0, 0, 1, 0));
    assert!(effects(&mut b).is_empty(), "reserve persists nothing");

    b.ack(T0 + 10, lref(l)).unwrap();
    assert!(matches!(effects(&mut b).as_slice(), [Effect::Persist(Change::Complete { id: 1 })]));
    let s = stats_of(&b, "emails");
    assert_eq!((s.ready, s.active, s.completed, s.completed_total), (0, 0, 1, 1));
    assert_eq!(b.completed("emails"), [(1, Arc::from("welcome"), T0 + 10, 1)]);
    assert_eq!(b.ack(T0 + 11, lref(l)), Err(BrokerError::NotFound(1)));
    assert!(take(&mut b, T0 + 12, &["emails"], 1).is_empty());
}

#[test]
fn priorities_then_fifo() {
    let mut b = broker();
    let jobs = vec![
        job_with("a", |o| o.priority = 5),
        job_with("b", |o| o.priority = 0),
        job_with("c", |o| o.priority = 5),
        job_with("d", |o| o.priority = -3),
        job_with("e", |o| o.priority = 0),
    ];
    add(&mut b, T0, "q", jobs).unwrap();
    let names: Vec<String> =
        take(&mut b, T0, &["q"], 10).iter().map(|l| l.name.to_string()).collect();
    assert_eq!(names, ["d", "b", "e", "a", "c"]);
}

#[test]
fn retried_job_queues_behind_jobs_already_waiting() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("first", no_backoff)]).unwrap();
    let first = take(&mut b, T0, &["q"], 1).remove(0);
    add(&mut b, T0 + 1, "q", vec![job_with("second", no_backoff)]).unwrap();
    // Job 1 has the lower id but became ready again after job 2.
    assert_eq!(
        b.nack(T0 + 2, lref(&first), "boom", RetryHint::Backoff),
        Ok(NackOutcome::Retrying { run_at_ms: T0 + 2 })
    );
    let order: Vec<(JobId, u32)> =
        take(&mut b, T0 + 3, &["q"], 2).iter().map(|l| (l.id, l.attempt)).collect();
    assert_eq!(order, [(2, 1), (1, 2)]);
}

#[test]
fn reserve_takes_queues_in_order_until_max() {
    let mut b = broker();
    add(&mut b, T0, "a", vec![job("a1")]).unwrap();
    add(&mut b, T0, "b", vec![job("b1"), job("b2"), job("b3")]).unwrap();
    let got: Vec<String> =
        take(&mut b, T0, &["c", "b", "a"], 3).iter().map(|l| l.name.to_string()).collect();
    assert_eq!(got, ["b1", "b2", "b3"]);
    let got: Vec<String> =
        take(&mut b, T0, &["a", "b"], 3).iter().map(|l| l.name.to_string()).collect();
    assert_eq!(got, ["a1"]);
    // "c" was named by a reserve that did not wait: it holds nothing, so it is not kept.
    assert_eq!(b.stats().iter().map(|s| s.queue.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn reserve_rejects_bad_arguments() {
    let mut b = broker();
    let err = b.reserve(T0, w(1, 1), &qs(&["q"]), 0, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = b.reserve(T0, w(1, 1), &qs(&["ok", "bad name"]), 1, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidQueueName);
    assert!(b.stats().is_empty(), "a refused reserve creates no queue");
    let err = b.reserve(T0, w(1, 1), &[], 1, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(b.reserve(T0, w(1, 1), &qs(&["q"]), 1, 100), Ok(None));
    let err = b.reserve(T0, w(1, 1), &qs(&["q"]), 1, 100).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "same request id parked twice");
}

#[test]
fn delayed_job_becomes_ready_at_run_at() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("later", |o| o.delay_ms = 1_000)]).unwrap();
    let rec = effects(&mut b);
    assert!(matches!(&rec[0], Effect::Persist(Change::Insert(r)) if r.run_at_ms == T0 + 1_000));
    assert_eq!(counts(&b, "q"), (0, 1, 0, 0));
    assert_eq!(b.poll_timeout(), Some(T0 + 1_000));
    assert!(take(&mut b, T0 + 999, &["q"], 1).is_empty());
    b.handle_timeout(T0 + 999);
    assert!(take(&mut b, T0 + 999, &["q"], 1).is_empty());
    b.handle_timeout(T0 + 1_000);
    assert_eq!(counts(&b, "q"), (1, 0, 0, 0));
    assert_eq!(take(&mut b, T0 + 1_000, &["q"], 1).len(), 1);
}

#[test]
fn bulk_add_is_all_or_nothing() {
    let mut b = broker();
    let jobs = vec![job("ok"), job_with("bad", |o| o.attempts = 0), job("ok2")];
    let err = add(&mut b, T0, "q", jobs).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("job 2 of 3"), "{err}");
    assert!(effects(&mut b).is_empty());
    assert!(b.stats().is_empty());
    assert_eq!(b.next_id(), 1, "no id was used");
    let err = add(&mut b, T0, "bad/queue", vec![job("x")]).unwrap_err();
    assert_eq!(WireError::from(err).code, ErrorCode::InvalidQueueName);
    let err = add(&mut b, T0, "q", vec![job("")]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(add(&mut b, T0, "q", vec![job("ok")]).unwrap(), [1]);
}

#[test]
fn idempotency_key_dedupes_while_pending() {
    let mut b = broker();
    let keyed = |k: &str| job_with("k", |o| o.key = Some(k.into()));
    // Within one request too.
    let ids = add(&mut b, T0, "q", vec![keyed("x"), keyed("y"), keyed("x")]).unwrap();
    assert_eq!(ids, [1, 2, 1]);
    assert_eq!(effects(&mut b).len(), 2);
    assert_eq!(add(&mut b, T0, "q", vec![keyed("x")]).unwrap(), [1]);
    // Keys are per queue.
    assert_eq!(add(&mut b, T0, "other", vec![keyed("x")]).unwrap(), [3]);
    // Still pending while active.
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(l.id, 1);
    assert_eq!(add(&mut b, T0, "q", vec![keyed("x")]).unwrap(), [1]);
    // Freed by completion.
    b.ack(T0, lref(&l)).unwrap();
    assert_eq!(add(&mut b, T0, "q", vec![keyed("x")]).unwrap(), [4]);
    // Freed by death.
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(l.id, 2);
    assert_eq!(b.nack(T0, lref(&l), "no", RetryHint::Never), Ok(NackOutcome::Dead));
    assert_eq!(add(&mut b, T0, "q", vec![keyed("y")]).unwrap(), [5]);
}

#[test]
fn fails_twice_then_succeeds_on_attempt_three() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("flaky", |o| o.backoff = Backoff::Fixed { delay_ms: 100 })])
        .unwrap();
    let mut now = T0;
    for attempt in 1..=2 {
        let l = take(&mut b, now, &["q"], 1).remove(0);
        assert_eq!(l.attempt, attempt);
        let out = b.nack(now, lref(&l), "transient", RetryHint::Backoff).unwrap();
        assert_eq!(out, NackOutcome::Retrying { run_at_ms: now + 100 });
        assert!(take(&mut b, now + 99, &["q"], 1).is_empty());
        now += 100;
        b.handle_timeout(now);
    }
    let l = take(&mut b, now, &["q"], 1).remove(0);
    assert_eq!(l.attempt, 3);
    b.ack(now, lref(&l)).unwrap();
    let s = stats_of(&b, "q");
    assert_eq!((s.failed_total, s.completed_total, s.dead), (2, 1, 0));
    assert_eq!(b.completed("q")[0].3, 3);
}

#[test]
fn always_failing_job_dies_with_three_errors() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("doomed", no_backoff)]).unwrap();
    effects(&mut b);
    for attempt in 1..=3u32 {
        let l = take(&mut b, T0, &["q"], 1).remove(0);
        assert_eq!(l.attempt, attempt);
        let out = b.nack(T0, lref(&l), &format!("err {attempt}"), RetryHint::Backoff).unwrap();
        let want =
            if attempt < 3 { NackOutcome::Retrying { run_at_ms: T0 } } else { NackOutcome::Dead };
        assert_eq!(out, want);
    }
    let got = fails(&effects(&mut b));
    assert_eq!(
        got,
        [
            (1, 1, "err 1".to_string(), T0, false),
            (1, 2, "err 2".to_string(), T0, false),
            (1, 3, "err 3".to_string(), T0, true),
        ]
    );
    assert_eq!(counts(&b, "q"), (0, 0, 0, 1));
    assert_eq!(stats_of(&b, "q").failed_total, 3);
    assert!(take(&mut b, T0, &["q"], 1).is_empty());
}

#[test]
fn retry_hints() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job("a"), job("b")]).unwrap();
    let ls = take(&mut b, T0, &["q"], 2);
    let out = b.nack(T0, lref(&ls[0]), "later", RetryHint::After { delay_ms: 5_000 }).unwrap();
    assert_eq!(out, NackOutcome::Retrying { run_at_ms: T0 + 5_000 });
    assert_eq!(b.nack(T0, lref(&ls[1]), "bad input", RetryHint::Never), Ok(NackOutcome::Dead));
    assert_eq!(counts(&b, "q"), (0, 1, 0, 1));
    // The first retry with the default policy waits about a second, jitter included.
    add(&mut b, T0, "d", vec![job("x")]).unwrap();
    let l = take(&mut b, T0, &["d"], 1).remove(0);
    let NackOutcome::Retrying { run_at_ms } =
        b.nack(T0, lref(&l), "x", RetryHint::Backoff).unwrap()
    else {
        panic!("attempts left")
    };
    assert!((T0 + 800..=T0 + 1_000).contains(&run_at_ms), "{}", run_at_ms - T0);
}

#[test]
fn error_text_is_truncated_at_a_char_boundary() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job("a")]).unwrap();
    effects(&mut b);
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    // 'é' is two bytes; MAX_ERROR_TEXT is even, so start with one byte to straddle the cut.
    let long = format!("x{}", "é".repeat(MAX_ERROR_TEXT));
    b.nack(T0, lref(&l), &long, RetryHint::Backoff).unwrap();
    let msg = fails(&effects(&mut b)).remove(0).2;
    assert_eq!(msg.len(), MAX_ERROR_TEXT - 1);
    assert!(long.starts_with(&msg));
}

#[test]
fn backoff_spacing_fixed_and_exponential() {
    fn run_ats(backoff: Backoff, attempts: u32) -> Vec<Millis> {
        let mut b = broker();
        add(
            &mut b,
            T0,
            "q",
            vec![job_with("x", |o| {
                o.backoff = backoff;
                o.attempts = attempts;
            })],
        )
        .unwrap();
        let mut now = T0;
        let mut waits = Vec::new();
        loop {
            let l = take(&mut b, now, &["q"], 1).remove(0);
            match b.nack(now, lref(&l), "e", RetryHint::Backoff).unwrap() {
                NackOutcome::Retrying { run_at_ms } => {
                    waits.push(run_at_ms - now);
                    assert_eq!(b.poll_timeout(), Some(run_at_ms));
                    now = run_at_ms;
                    b.handle_timeout(now);
                }
                NackOutcome::Dead => return waits,
            }
        }
    }
    assert_eq!(run_ats(Backoff::Fixed { delay_ms: 250 }, 4), [250, 250, 250]);
    let exp = Backoff::Exponential { base_ms: 100, max_ms: 1_000, jitter_pct: 0 };
    assert_eq!(run_ats(exp, 7), [100, 200, 400, 800, 1_000, 1_000]);
    let jittered = Backoff::Exponential { base_ms: 100, max_ms: 1_000, jitter_pct: 50 };
    let waits = run_ats(jittered, 7);
    for (wait, nominal) in waits.iter().zip([100, 200, 400, 800, 1_000, 1_000]) {
        assert!((nominal / 2..=nominal).contains(wait), "{wait} vs {nominal}");
    }
    assert_eq!(waits, run_ats(jittered, 7), "jitter is reproducible");
}

#[test]
fn lease_expiry_retries_with_next_attempt() {
    let mut b = broker();
    add(
        &mut b,
        T0,
        "q",
        vec![job_with("slow", |o| {
            o.lease_ms = 1_000;
            no_backoff(o);
        })],
    )
    .unwrap();
    effects(&mut b);
    let first = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(first.deadline_ms, T0 + 1_000);
    assert_eq!(b.poll_timeout(), Some(T0 + 1_000));
    b.handle_timeout(T0 + 999);
    assert_eq!(counts(&b, "q"), (0, 0, 1, 0));
    b.handle_timeout(T0 + 1_000);
    assert_eq!(fails(&effects(&mut b)), [(1, 1, LEASE_EXPIRED.to_string(), T0 + 1_000, false)]);
    assert_eq!(counts(&b, "q"), (1, 0, 0, 0));
    let second = take(&mut b, T0 + 1_001, &["q"], 1).remove(0);
    assert_eq!((second.id, second.attempt), (1, 2));
    assert_ne!(second.token, first.token);
    // The first worker finally answers: its lease is gone, even though the job is active.
    assert_eq!(b.ack(T0 + 1_002, lref(&first)), Err(BrokerError::LeaseLost(1)));
    assert_eq!(
        b.nack(T0 + 1_002, lref(&first), "x", RetryHint::Never),
        Err(BrokerError::LeaseLost(1))
    );
    assert_eq!(b.touch(T0 + 1_002, lref(&first), None), Err(BrokerError::LeaseLost(1)));
    assert!(effects(&mut b).is_empty());
    b.ack(T0 + 1_003, lref(&second)).unwrap();
    assert_eq!(b.ack(T0 + 1_004, LeaseRef { id: 77, token: 1 }), Err(BrokerError::NotFound(77)));
}

#[test]
fn touch_extends_the_lease() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("long", |o| o.lease_ms = 1_000)]).unwrap();
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(b.touch(T0 + 900, lref(&l), None), Ok(T0 + 1_900));
    assert_eq!(b.poll_timeout(), Some(T0 + 1_900));
    b.handle_timeout(T0 + 1_000);
    assert_eq!(counts(&b, "q"), (0, 0, 1, 0), "old deadline no longer counts");
    assert_eq!(b.touch(T0 + 1_500, lref(&l), Some(5_000)), Ok(T0 + 6_500));
    b.handle_timeout(T0 + 6_499);
    b.ack(T0 + 6_499, lref(&l)).unwrap();
    assert_eq!(b.poll_timeout(), None);
    let err = b.touch(T0, LeaseRef { id: 1, token: 0 }, Some(5)).unwrap_err();
    assert_eq!(err, BrokerError::NotFound(1));
    add(&mut b, T0, "q", vec![job("x")]).unwrap();
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(b.touch(T0, lref(&l), Some(5)).unwrap_err().code(), ErrorCode::InvalidArgument);
}

#[test]
fn disconnect_releases_jobs_and_drops_waiters() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("a", no_backoff), job_with("b", no_backoff)]).unwrap();
    add(
        &mut b,
        T0,
        "r",
        vec![job_with("c", |o| {
            no_backoff(o);
            o.attempts = 1;
        })],
    )
    .unwrap();
    let held = b.reserve(T0, w(7, 1), &qs(&["q", "r"]), 3, 0).unwrap().unwrap();
    assert_eq!(held.len(), 3);
    assert_eq!(b.reserve(T0, w(7, 2), &qs(&["other"]), 1, 60_000), Ok(None));
    effects(&mut b);
    b.disconnect(T0 + 10, 7);
    let f = fails(&effects(&mut b));
    assert_eq!(
        f,
        [
            (1, 1, WORKER_DISCONNECTED.to_string(), T0 + 10, false),
            (2, 1, WORKER_DISCONNECTED.to_string(), T0 + 10, false),
            (3, 1, WORKER_DISCONNECTED.to_string(), T0 + 10, true),
        ]
    );
    assert_eq!(counts(&b, "q"), (2, 0, 0, 0), "ready at once with zero backoff");
    assert_eq!(counts(&b, "r"), (0, 0, 0, 1));
    assert_eq!(
        b.poll_timeout(),
        Some(T0 + 10 + BrokerConfig::default().dead_max_age_ms),
        "the parked waiter is gone: only the dead set's age limit is ahead"
    );
    add(&mut b, T0 + 20, "other", vec![job("d")]).unwrap();
    assert!(
        effects(&mut b).iter().all(|e| !matches!(e, Effect::Deliver { .. })),
        "no delivery to a dropped waiter"
    );
    let again = take(&mut b, T0 + 30, &["q"], 5);
    assert_eq!(again.iter().map(|l| (l.id, l.attempt)).collect::<Vec<_>>(), [(1, 2), (2, 2)]);
}

#[test]
fn parked_waiter_gets_jobs_on_add_or_empty_at_deadline() {
    let mut b = broker();
    assert_eq!(b.reserve(T0, w(1, 10), &qs(&["q"]), 2, 5_000), Ok(None));
    assert_eq!(b.reserve(T0 + 1, w(2, 20), &qs(&["q"]), 1, 1_000), Ok(None));
    assert_eq!(b.poll_timeout(), Some(T0 + 1_001));
    add(&mut b, T0 + 100, "q", vec![job("a"), job("b"), job("c")]).unwrap();
    let eff = effects(&mut b);
    assert_eq!(eff.len(), 5, "{eff:?}");
    assert!(eff[..3].iter().all(|e| matches!(e, Effect::Persist(Change::Insert(_)))));
    // FIFO among waiters, each up to its max.
    let Effect::Deliver { waiter, leases } = &eff[3] else { panic!("{eff:?}") };
    assert_eq!((*waiter, leases.iter().map(|l| l.id).collect::<Vec<_>>()), (w(1, 10), vec![1, 2]));
    let Effect::Deliver { waiter, leases } = &eff[4] else { panic!("{eff:?}") };
    assert_eq!((*waiter, leases.iter().map(|l| l.id).collect::<Vec<_>>()), (w(2, 20), vec![3]));
    assert_eq!(leases[0].deadline_ms, T0 + 100 + 30_000);

    assert_eq!(b.reserve(T0 + 200, w(3, 30), &qs(&["q"]), 1, 1_000), Ok(None));
    b.handle_timeout(T0 + 1_199);
    assert!(effects(&mut b).is_empty());
    assert_eq!(b.poll_timeout(), Some(T0 + 1_200));
    b.handle_timeout(T0 + 1_200);
    let eff = effects(&mut b);
    assert!(
        matches!(eff.as_slice(), [Effect::Deliver { waiter, leases }] if *waiter == w(3, 30) && leases.is_empty()),
        "{eff:?}"
    );
    // Cancelled waiters are never answered.
    assert_eq!(b.reserve(T0, w(4, 40), &qs(&["q"]), 1, 1_000), Ok(None));
    b.cancel_waiter(w(4, 40));
    b.cancel_waiter(w(4, 41));
    add(&mut b, T0, "q", vec![job("d")]).unwrap();
    assert_eq!(effects(&mut b).len(), 1);
    assert_eq!(counts(&b, "q").0, 1);
}

#[test]
fn waiter_on_several_queues_and_delayed_promotion() {
    let mut b = broker();
    add(&mut b, T0, "b", vec![job_with("later", |o| o.delay_ms = 500)]).unwrap();
    assert_eq!(b.reserve(T0, w(1, 1), &qs(&["a", "b"]), 1, 10_000), Ok(None));
    effects(&mut b);
    b.handle_timeout(T0 + 500);
    let eff = effects(&mut b);
    let [Effect::Deliver { waiter, leases }] = eff.as_slice() else { panic!("{eff:?}") };
    assert_eq!((*waiter, leases[0].id, &*leases[0].queue), (w(1, 1), 1, "b"));
    assert_eq!(b.poll_timeout(), Some(T0 + 500 + 30_000), "only the lease is left");
}

#[test]
fn job_becoming_ready_at_wait_deadline_is_delivered() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("x", |o| o.delay_ms = 1_000)]).unwrap();
    assert_eq!(b.reserve(T0, w(1, 1), &qs(&["q"]), 1, 1_000), Ok(None));
    effects(&mut b);
    b.handle_timeout(T0 + 1_000);
    let eff = effects(&mut b);
    assert!(
        matches!(eff.as_slice(), [Effect::Deliver { leases, .. }] if leases.len() == 1),
        "{eff:?}"
    );
}

#[test]
fn poll_timeout_is_the_earliest_deadline() {
    let mut b = broker();
    assert_eq!(b.poll_timeout(), None);
    add(&mut b, T0, "q", vec![job_with("d", |o| o.delay_ms = 5_000)]).unwrap();
    assert_eq!(b.poll_timeout(), Some(T0 + 5_000));
    add(&mut b, T0, "q", vec![job_with("l", |o| o.lease_ms = 2_000)]).unwrap();
    take(&mut b, T0, &["q"], 1);
    assert_eq!(b.poll_timeout(), Some(T0 + 2_000));
    assert_eq!(b.reserve(T0, w(2, 1), &qs(&["z"]), 1, 700), Ok(None));
    assert_eq!(b.poll_timeout(), Some(T0 + 700));
    b.handle_timeout(T0 + 700);
    assert_eq!(b.poll_timeout(), Some(T0 + 2_000));
}

#[test]
fn time_going_backwards_does_not_panic() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("x", |o| o.delay_ms = 100)]).unwrap();
    b.handle_timeout(T0 + 200);
    let l = take(&mut b, T0 + 200, &["q"], 1).remove(0);
    b.handle_timeout(T0 - 1_000);
    assert_eq!(b.touch(T0 - 5_000, lref(&l), None), Ok(T0 - 5_000 + 30_000));
    b.nack(0, lref(&l), "e", RetryHint::Backoff).unwrap();
    add(&mut b, 0, "q", vec![job_with("x", |o| o.delay_ms = u64::MAX)]).unwrap();
    b.handle_timeout(u64::MAX);
    let got = b.reserve(u64::MAX, w(1, 1), &qs(&["q"]), 2, u64::MAX).unwrap().unwrap();
    assert_eq!(got.len(), 2, "the retried and the far-future job are both ready");
    assert_eq!(got[0].deadline_ms, u64::MAX, "deadlines saturate");
}

#[test]
fn restore_rebuilds_ready_delayed_dead_and_keys() {
    let rec =
        |id: JobId, queue: &str, run_at_ms: Millis, state, failures, key: Option<&str>| JobRecord {
            id,
            queue: queue.into(),
            name: format!("n{id}"),
            payload: Bytes::new(),
            options: JobOptions {
                key: key.map(Into::into),
                priority: -(id as i32),
                ..JobOptions::default()
            },
            created_at_ms: T0 - 10_000,
            run_at_ms,
            failures,
            state,
            errors: Vec::new(),
        };
    let mut b = broker();
    let now = T0;
    b.restore(now, &rec(3, "q", now - 5, PersistedState::Waiting, 2, Some("k3")));
    b.restore(now, &rec(4, "q", now, PersistedState::Waiting, 0, None));
    b.restore(now, &rec(9, "q", now + 100, PersistedState::Waiting, 1, Some("k9")));
    b.restore(now, &rec(12, "q", now, PersistedState::Dead, 3, Some("k12")));
    b.restore(now, &rec(5, "r", now, PersistedState::Waiting, 0, None));
    b.restore(now, &rec(5, "r", now, PersistedState::Waiting, 0, None));
    assert!(effects(&mut b).is_empty(), "restore persists nothing");
    assert_eq!(counts(&b, "q"), (2, 1, 0, 1));
    assert_eq!(counts(&b, "r"), (1, 0, 0, 0), "a duplicate record is ignored");
    assert_eq!(b.next_id(), 13);
    b.set_next_id(10);
    assert_eq!(b.next_id(), 13, "never below a restored id");
    b.set_next_id(20);
    assert_eq!(b.next_id(), 20);
    assert_eq!(b.poll_timeout(), Some(now + 100));
    // Keys of pending jobs are held again; the dead job's key is free.
    let keyed = |k: &str| job_with("k", |o| o.key = Some(k.into()));
    assert_eq!(
        add(&mut b, now, "q", vec![keyed("k3"), keyed("k9"), keyed("k12")]).unwrap(),
        [3, 9, 20]
    );
    // Attempts already used are kept; priority order is rebuilt.
    let got: Vec<(JobId, u32, String)> = take(&mut b, now, &["q"], 5)
        .iter()
        .map(|l| (l.id, l.attempt, l.name.to_string()))
        .collect();
    assert_eq!(got, [(4, 1, "n4".into()), (3, 3, "n3".into()), (20, 1, "k".into())]);
}

#[test]
fn completed_ring_is_bounded_by_retention() {
    let mut b = Broker::new(BrokerConfig { completed_retention: 3, ..BrokerConfig::default() });
    add(&mut b, T0, "q", (0..5).map(|i| job(&format!("j{i}"))).collect()).unwrap();
    for (i, l) in take(&mut b, T0, &["q"], 5).iter().enumerate() {
        b.ack(T0 + i as u64, lref(l)).unwrap();
    }
    let done: Vec<(JobId, String, Millis)> =
        b.completed("q").into_iter().map(|(id, name, at, _)| (id, name.to_string(), at)).collect();
    assert_eq!(
        done,
        [(5, "j4".into(), T0 + 4), (4, "j3".into(), T0 + 3), (3, "j2".into(), T0 + 2)]
    );
    let s = stats_of(&b, "q");
    assert_eq!((s.completed, s.completed_total), (3, 5));
    assert!(b.completed("nope").is_empty());
}

#[test]
fn stats_count_every_state() {
    let mut b = broker();
    add(&mut b, T0, "b", vec![job("x")]).unwrap();
    add(
        &mut b,
        T0,
        "a",
        vec![
            job("r1"),
            job("r2"),
            job_with("d", |o| o.delay_ms = 10),
            job("act"),
            job("dead"),
            job("done"),
        ],
    )
    .unwrap();
    let ls = take(&mut b, T0, &["a"], 3);
    b.ack(T0, lref(&ls[0])).unwrap();
    b.nack(T0, lref(&ls[1]), "x", RetryHint::Never).unwrap();
    let s = b.stats();
    assert_eq!(s[0], {
        let mut s = QueueStats::new("a");
        (s.ready, s.delayed, s.active, s.dead) = (2, 1, 1, 1);
        (s.completed, s.completed_total, s.failed_total) = (1, 1, 1);
        s
    });
    assert_eq!((s[1].queue.as_str(), s[1].ready), ("b", 1));
}

#[test]
fn names_and_policies_are_forgotten_with_their_last_job() {
    let mut b = broker();
    for i in 0..100u64 {
        add(&mut b, T0, "q", vec![job_with(&format!("unique-{i}"), |o| o.lease_ms = 1_000 + i)])
            .unwrap();
        let l = take(&mut b, T0, &["q"], 1).remove(0);
        b.ack(T0, lref(&l)).unwrap();
    }
    assert_eq!((b.names.live(), b.policies.live(), b.jobs.len()), (0, 0, 0));
    assert!(b.job_keys.is_empty() && b.leases.len() == 0 && b.waiters.len() == 0);
}

#[test]
fn a_million_job_backlog_is_compact() {
    let mut b = broker();
    let now = T0;
    for chunk in 0..100 {
        let jobs =
            (0..10_000).map(|i| job_with("bulk", |o| o.priority = (i % 3) - chunk % 2)).collect();
        add(&mut b, now, "q", jobs).unwrap();
        effects(&mut b);
    }
    assert_eq!(counts(&b, "q").0, 1_000_000);
    let table = b.job_heap_bytes();
    // Job table plus the ready index (8 bytes per id, at most doubled by growth).
    let total = table + 16 * 1_000_000;
    assert!(total < 60 << 20, "{} MiB", total >> 20);
    assert!(table < 40 << 20, "job table {} MiB", table >> 20);
}

/// Issue 9: a snooze puts the job back delayed without using an attempt or recording an
/// error, persists the new run time as a `Reschedule`, and the next try is still try 1.
#[test]
fn snooze_puts_the_job_back_without_using_an_attempt() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job_with("wait", |o| o.attempts = 1)]).unwrap();
    effects(&mut b);
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(b.snooze(T0 + 10, lref(&l), 500), Ok(T0 + 510));
    let out = effects(&mut b);
    assert!(
        matches!(out.as_slice(), [Effect::Persist(Change::Reschedule { id, run_at_ms })]
            if *id == l.id && *run_at_ms == T0 + 510),
        "{out:?}"
    );
    assert_eq!(counts(&b, "q"), (0, 1, 0, 0));
    assert_eq!(stats_of(&b, "q").failed_total, 0, "a snooze is not a failure");
    assert_eq!(b.ack(T0 + 11, lref(&l)), Err(BrokerError::LeaseLost(l.id)), "the lease ended");
    assert_eq!(b.snooze(T0 + 11, lref(&l), 1), Err(BrokerError::LeaseLost(l.id)));

    assert!(take(&mut b, T0 + 509, &["q"], 1).is_empty());
    b.handle_timeout(T0 + 510);
    let again = take(&mut b, T0 + 510, &["q"], 1).remove(0);
    assert_eq!((again.attempt, again.max_attempts), (1, 1), "still the first try");
    // Its one attempt is still there to use: a failure now dead-letters it as try 1.
    assert_eq!(b.nack(T0 + 520, lref(&again), "x", RetryHint::Backoff), Ok(NackOutcome::Dead));
    assert_eq!(fails(&effects(&mut b)), [(l.id, 1, "x".to_owned(), T0 + 520, true)]);
}

/// A snooze of 0 makes the job ready at once, and a parked reserve gets it.
#[test]
fn snooze_of_zero_hands_the_job_to_a_waiter() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job("a")]).unwrap();
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(b.reserve(T0, w(2, 7), &qs(&["q"]), 1, 60_000), Ok(None));
    effects(&mut b);
    b.snooze(T0 + 1, lref(&l), 0).unwrap();
    let out = effects(&mut b);
    assert!(
        out.iter().any(|e| matches!(e, Effect::Deliver { waiter, leases }
            if *waiter == w(2, 7) && leases.len() == 1 && leases[0].attempt == 1)),
        "{out:?}"
    );
}

/// Progress is kept per lease: replaced by newer reports, refused for a wrong token or
/// when too large, and gone when the try ends.
#[test]
fn progress_lives_with_the_lease() {
    let mut b = broker();
    add(&mut b, T0, "q", vec![job("a")]).unwrap();
    effects(&mut b);
    let l = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!(b.progress(l.id), None);
    b.report_progress(lref(&l), Bytes::from_static(b"10")).unwrap();
    b.report_progress(lref(&l), Bytes::from_static(b"{\"pct\":50}")).unwrap();
    assert_eq!(b.progress(l.id).map(|p| &p[..]), Some(&b"{\"pct\":50}"[..]));
    let wrong = LeaseRef { id: l.id, token: l.token ^ 1 };
    assert_eq!(b.report_progress(wrong, Bytes::new()), Err(BrokerError::LeaseLost(l.id)));
    let big = Bytes::from(vec![b'x'; qd_protocol::MAX_PROGRESS + 1]);
    assert!(matches!(b.report_progress(lref(&l), big), Err(BrokerError::InvalidArgument(_))));
    assert!(effects(&mut b).iter().all(|e| !matches!(e, Effect::Persist(_))), "memory only");

    b.nack(T0 + 1, lref(&l), "x", RetryHint::After { delay_ms: 0 }).unwrap();
    assert_eq!(b.progress(l.id), None, "a new try starts without progress");
    let l2 = take(&mut b, T0 + 1, &["q"], 1).remove(0);
    assert_eq!(b.progress(l2.id), None);
}

/// The restorer (issue 10) remembers the last queue, job name and policy instead of looking
/// each up again; every job must still take its own reference, or the values would be
/// forgotten while jobs use them (too few) or never (too many). Runs of shared values,
/// a switch and a switch back, then every job acked: nothing may stay interned.
#[test]
fn restored_jobs_hold_one_reference_each_on_their_name_and_policy() {
    let rec = |id: JobId, queue: &str, name: &str, lease_ms| JobRecord {
        id,
        queue: queue.into(),
        name: name.into(),
        payload: Bytes::new(),
        options: JobOptions { lease_ms, ..JobOptions::default() },
        created_at_ms: T0 - 10,
        run_at_ms: T0 - 10,
        failures: 0,
        state: PersistedState::Waiting,
        errors: Vec::new(),
    };
    let mut b = broker();
    {
        let mut restorer = b.restorer(T0);
        for id in 1..=3 {
            restorer.restore(&rec(id, "q", "a", 1_000));
        }
        restorer.restore(&rec(4, "r", "a", 2_000));
        restorer.restore(&rec(5, "q", "b", 1_000));
        restorer.restore(&rec(6, "q", "b", 1_000));
        restorer.restore(&rec(6, "q", "b", 1_000)); // a duplicate takes nothing
    }
    assert_eq!((counts(&b, "q").0, counts(&b, "r").0), (5, 1));
    assert_eq!((b.names.live(), b.policies.live(), b.jobs.len()), (2, 2, 6));
    let leases = take(&mut b, T0, &["q", "r"], 10);
    assert_eq!(leases.len(), 6);
    for (i, l) in leases.iter().enumerate() {
        b.ack(T0, lref(l)).unwrap();
        let names = b.names.live();
        assert!(i == 5 || names > 0, "a name was forgotten with jobs still holding it");
    }
    assert_eq!((b.names.live(), b.policies.live(), b.jobs.len()), (0, 0, 0));
}
