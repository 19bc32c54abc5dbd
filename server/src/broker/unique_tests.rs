//! Scenario tests of throttle, debounce, expiry, results and waits (`unique.rs`,
//! `job_waits.rs`), one rule per test, on a fake clock.

use bytes::Bytes;
use qd_protocol::{JobOptions, JobOutcome, QueueLimits, Unique};

use super::*;

const T0: Millis = 1_700_000_000_000;

fn broker() -> Broker {
    Broker::new(BrokerConfig::default())
}

fn keyed(payload: &'static [u8], unique: Unique, f: impl FnOnce(&mut JobOptions)) -> NewJob {
    let mut options = JobOptions { key: Some("k".into()), unique, ..JobOptions::default() };
    f(&mut options);
    NewJob { name: "n".into(), payload: Bytes::from_static(payload), options }
}

fn plain(f: impl FnOnce(&mut JobOptions)) -> NewJob {
    let mut options = JobOptions::default();
    f(&mut options);
    NewJob { name: "n".into(), payload: Bytes::from_static(b"p"), options }
}

fn w(conn: ConnId, request: u64) -> WaiterKey {
    WaiterKey { conn, request }
}

fn effects(b: &mut Broker) -> Vec<Effect> {
    let mut out = Vec::new();
    b.take_effects(&mut out);
    out.retain(|e| !matches!(e, Effect::Persist(Change::IdFloor { .. })));
    out
}

fn add(b: &mut Broker, now: Millis, job: NewJob) -> JobId {
    let ids = b.add(now, "q", vec![job]).unwrap();
    b.commit_added(now, &ids);
    ids[0]
}

fn take(b: &mut Broker, now: Millis) -> Vec<Lease> {
    b.reserve(now, w(1, 0), &["q".to_string()], 10, 0).unwrap().expect("no wait")
}

fn lref(l: &Lease) -> LeaseRef {
    LeaseRef { id: l.id, token: l.token }
}

fn stats(b: &Broker) -> QueueStats {
    b.stats().into_iter().find(|s| s.queue == "q").expect("queue q")
}

fn outcomes(effects: &[Effect]) -> Vec<(WaiterKey, JobId, Option<JobOutcome>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Outcome { waiter, id, outcome } => Some((*waiter, *id, outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn throttle_window_blocks_the_key_after_completion_until_it_ends() {
    let mut b = broker();
    let window = Unique::Window { ms: 1000 };
    let first = add(&mut b, T0, keyed(b"a", window, |_| {}));
    let lease = take(&mut b, T0).remove(0);
    b.ack(T0 + 10, lref(&lease)).unwrap();
    effects(&mut b);
    // Completed, yet inside the window: the add answers with the first job, adds nothing.
    assert_eq!(add(&mut b, T0 + 999, keyed(b"b", window, |_| {})), first);
    assert!(effects(&mut b).is_empty(), "nothing persisted for a throttled add");
    assert_eq!(b.poll_timeout(), Some(T0 + 1000), "the window's end is a deadline");
    b.handle_timeout(T0 + 1000);
    let second = add(&mut b, T0 + 1000, keyed(b"c", window, |_| {}));
    assert_ne!(second, first, "the window ended: a new job");
    // While the new job is pending, and inside its window, the key answers with it.
    assert_eq!(add(&mut b, T0 + 1500, keyed(b"d", window, |_| {})), second);
}

#[test]
fn throttle_windows_are_pruned_and_the_idle_queue_forgotten() {
    let mut b = broker();
    let mut b0 = Broker::new(BrokerConfig { idle_queues_kept: 0, ..BrokerConfig::default() });
    for b in [&mut b, &mut b0] {
        add(b, T0, keyed(b"a", Unique::Window { ms: 50 }, |_| {}));
        let lease = take(b, T0).remove(0);
        b.ack(T0, lref(&lease)).unwrap();
        b.handle_timeout(T0 + 50);
        assert_eq!(b.poll_timeout(), None);
        assert!(b.queues.iter().all(|q| q.throttle.is_empty() && q.throttle_ends.is_empty()));
    }
    assert!(b0.stats().is_empty(), "a queue with nothing left is forgotten once its window ends");
}

#[test]
fn throttle_windows_are_rebuilt_from_stored_records() {
    let mut b = broker();
    let record = |id, created_at_ms| JobRecord {
        id,
        queue: "q".into(),
        name: "n".into(),
        payload: Bytes::new(),
        options: JobOptions {
            key: Some("k".into()),
            unique: Unique::Window { ms: 1000 },
            ..JobOptions::default()
        },
        created_at_ms,
        run_at_ms: created_at_ms,
        failures: 1,
        state: PersistedState::Dead,
        errors: vec![],
    };
    b.restore(T0, &record(7, T0 - 500));
    b.restore(T0, &record(3, T0 - 5000));
    // Job 7 is dead (it holds no key) but its window is open until T0 + 500.
    assert_eq!(add(&mut b, T0 + 100, keyed(b"x", Unique::Window { ms: 1000 }, |_| {})), 7);
    assert!(add(&mut b, T0 + 500, keyed(b"y", Unique::Window { ms: 1000 }, |_| {})) > 7);
}

#[test]
fn debounce_replaces_the_waiting_payload_and_restarts_the_delay() {
    let mut b = broker();
    let deb = |p| keyed(p, Unique::Debounce, |o| o.delay_ms = 1000);
    let id = add(&mut b, T0, deb(b"one"));
    effects(&mut b);
    // Half-way through the delay, a second add: same id, new payload, delay from now.
    let ids = b.add(T0 + 500, "q", vec![deb(b"two")]).unwrap();
    assert_eq!(ids, [id]);
    let replaced =
        Change::Replace { id, payload: Bytes::from_static(b"two"), run_at_ms: T0 + 1500 };
    assert!(matches!(&effects(&mut b)[..], [Effect::Persist(c)] if *c == replaced));
    // Uncommitted until the replace commits: the old run time does nothing.
    b.commit_added(T0 + 500, &ids);
    b.handle_timeout(T0 + 1000);
    assert!(take(&mut b, T0 + 1000).is_empty(), "the old delay no longer applies");
    assert_eq!(stats(&b).delayed, 1);
    b.handle_timeout(T0 + 1500);
    let lease = take(&mut b, T0 + 1500).remove(0);
    assert_eq!(lease.id, id);
    // Once it runs, a debounced add makes a new job, which takes the key over.
    let next = add(&mut b, T0 + 1600, deb(b"three"));
    assert_ne!(next, id);
    assert_eq!(add(&mut b, T0 + 1700, deb(b"four")), next, "the new job is debounced");
    b.ack(T0 + 1800, lref(&lease)).unwrap();
    assert_eq!(add(&mut b, T0 + 1900, deb(b"five")), next, "the old job's ack kept the key");
    // The job that took the key over frees it when it completes.
    b.handle_timeout(T0 + 2900);
    let lease = take(&mut b, T0 + 2900).remove(0);
    assert_eq!(lease.id, next);
    b.ack(T0 + 2900, lref(&lease)).unwrap();
    assert!(b.queues.iter().all(|q| q.keys.is_empty() && q.debounce_at.is_empty()));
    assert!(add(&mut b, T0 + 3000, deb(b"six")) > next);
}

#[test]
fn debounce_of_a_ready_job_takes_it_out_of_the_ready_index() {
    let mut b = broker();
    let id = add(&mut b, T0, keyed(b"one", Unique::Debounce, |_| {}));
    let other = add(&mut b, T0, plain(|_| {}));
    let ids = b.add(T0 + 1, "q", vec![keyed(b"two", Unique::Debounce, |_| {})]).unwrap();
    assert_eq!(ids, [id]);
    assert_eq!(stats(&b).ready, 2, "an uncommitted job counts as ready");
    let leases = take(&mut b, T0 + 1);
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), [other], "not until committed");
    b.commit_added(T0 + 2, &ids);
    let leases = take(&mut b, T0 + 2);
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), [id], "once, from one entry");
    assert!(take(&mut b, T0 + 3).is_empty());
}

/// Regression: in a queue with groups the debounce took a ready holder out of the queue's
/// own index, where a grouped job has no entry, so its group's entry stayed: once the
/// replace was committed the job had two entries (listed twice, started from its old place
/// ahead of jobs that were waiting before the debounce), one more per debounce.
#[test]
fn debounce_of_a_ready_grouped_job_leaves_no_second_entry() {
    let mut b = broker();
    b.set_queue_limits(T0, "q", QueueLimits { concurrency: Some(100), ..Default::default() })
        .unwrap();
    let grouped = |o: &mut JobOptions| o.group = Some("g".into());
    let id = add(&mut b, T0, keyed(b"one", Unique::Debounce, grouped));
    let other = add(&mut b, T0, plain(grouped));
    for i in 1..=20 {
        let ids = b.add(T0 + i, "q", vec![keyed(b"two", Unique::Debounce, grouped)]).unwrap();
        assert_eq!(ids, [id]);
        b.commit_added(T0 + i, &ids);
    }
    let listed = b.list_jobs(T0 + 30, "q", JobStateKind::Ready, None, 100).unwrap();
    let listed: Vec<JobId> = listed.items.iter().map(|v| v.id).collect();
    assert_eq!(listed, [other, id], "each ready job listed once, the debounced one last");
    let leases = take(&mut b, T0 + 30);
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), [other, id]);
    for l in &leases {
        b.ack(T0 + 31, lref(l)).unwrap();
    }
    let flow = b.queues[0].flow.as_deref();
    assert!(flow.is_none_or(|f| f.groups.is_empty()), "an idle group is forgotten");
}

#[test]
fn a_job_not_started_in_time_expires_into_the_dead_set() {
    let mut b = broker();
    let id = add(&mut b, T0, plain(|o| o.expires_in_ms = Some(1000)));
    let fresh = add(&mut b, T0 + 600, plain(|o| o.expires_in_ms = Some(1000)));
    effects(&mut b);
    let leases = take(&mut b, T0 + 1000);
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), [fresh], "the late one is skipped");
    let e = effects(&mut b);
    assert!(e.iter().any(|e| matches!(e,
        Effect::Persist(Change::Fail { id: f, error, dead: true, .. })
            if *f == id && error.message == EXPIRED)));
    let s = stats(&b);
    assert_eq!((s.dead, s.expired_total, s.failed_total), (1, 1, 0));
    // An operator's retry runs it, late as it is.
    assert_eq!(b.retry_dead(T0 + 2000, "q", &[id]), 1);
    assert_eq!(take(&mut b, T0 + 2000).iter().map(|l| l.id).collect::<Vec<_>>(), [id]);
}

#[test]
fn a_delayed_job_past_its_expiry_dies_when_its_delay_ends() {
    let mut b = broker();
    let expiring = |o: &mut JobOptions| {
        o.delay_ms = 2000;
        o.expires_in_ms = Some(1000);
    };
    add(&mut b, T0, plain(expiring));
    b.handle_timeout(T0 + 2000);
    let s = stats(&b);
    assert_eq!((s.ready, s.delayed, s.dead, s.expired_total), (0, 0, 1, 1));
    // A job that started once is never expired: a retry after a failure runs late.
    let id = add(&mut b, T0, plain(|o| o.expires_in_ms = Some(10)));
    let lease = take(&mut b, T0).remove(0);
    assert_eq!(lease.id, id);
    b.nack(T0 + 1, lref(&lease), "boom", RetryHint::After { delay_ms: 0 }).unwrap();
    assert_eq!(take(&mut b, T0 + 100).len(), 1);
}

#[test]
fn wait_gets_the_result_of_an_ack() {
    let mut b = broker();
    let id = add(&mut b, T0, plain(|_| {}));
    assert_eq!(b.wait(T0, w(9, 1), id, 5000), Ok(Waited::Parked));
    let lease = take(&mut b, T0).remove(0);
    effects(&mut b);
    b.ack_with_result(T0 + 5, lref(&lease), Bytes::from_static(b"42")).unwrap();
    let e = effects(&mut b);
    let done = JobOutcome::Completed { result: Bytes::from_static(b"42") };
    assert_eq!(outcomes(&e), [(w(9, 1), id, Some(done.clone()))]);
    assert!(matches!(e[0], Effect::Persist(Change::Complete { .. })), "persist, then answer");
    // Later waits are answered at once from the completed ring.
    assert_eq!(b.wait(T0 + 6, w(9, 2), id, 5000), Ok(Waited::Now(done)));
    assert_eq!(b.poll_timeout(), None, "no wait left behind");
}

#[test]
fn wait_gets_the_final_error_a_timeout_or_not_found() {
    let mut b = broker();
    let id = add(&mut b, T0, plain(|o| o.attempts = 1));
    assert_eq!(b.wait(T0, w(9, 1), id, 5000), Ok(Waited::Parked));
    assert_eq!(b.wait(T0, w(8, 1), id, 100), Ok(Waited::Parked));
    assert!(b.wait(T0, w(8, 1), id, 100).is_err(), "a request id waits once");
    assert_eq!(b.poll_timeout(), Some(T0 + 100));
    b.handle_timeout(T0 + 100);
    assert_eq!(outcomes(&effects(&mut b)), [(w(8, 1), id, Some(JobOutcome::Pending))]);
    let lease = take(&mut b, T0 + 200).remove(0);
    b.nack(T0 + 200, lref(&lease), "bad input", RetryHint::Backoff).unwrap();
    let dead = Some(JobOutcome::Dead { error: "bad input".into() });
    assert_eq!(outcomes(&effects(&mut b)), [(w(9, 1), id, dead)]);
    assert_eq!(b.wait(T0 + 300, w(9, 2), id, 100), Ok(Waited::Dead));
    assert_eq!(b.wait(T0 + 300, w(9, 3), 999, 100), Err(BrokerError::NotFound(999)));
    // A wait on a job an operator removes is answered "not found"; a disconnect drops
    // its connection's waits without an answer.
    let other = add(&mut b, T0, plain(|_| {}));
    assert_eq!(b.wait(T0, w(7, 1), other, 5000), Ok(Waited::Parked));
    assert_eq!(b.wait(T0, w(6, 1), other, 5000), Ok(Waited::Parked));
    b.disconnect(T0, 6);
    assert_eq!(b.job_waits.len(), 1);
    b.remove(T0, &[other]);
    assert_eq!(outcomes(&effects(&mut b)), [(w(7, 1), other, None)]);
    assert_eq!(b.job_waits.len(), 0);
}

#[test]
fn an_expiry_answers_its_waits_and_large_results_are_refused() {
    let mut b = broker();
    let id = add(&mut b, T0, plain(|o| o.expires_in_ms = Some(10)));
    assert_eq!(b.wait(T0, w(9, 1), id, 5000), Ok(Waited::Parked));
    assert!(take(&mut b, T0 + 10).is_empty());
    let expired = Some(JobOutcome::Dead { error: EXPIRED.into() });
    assert_eq!(outcomes(&effects(&mut b)), [(w(9, 1), id, expired)]);
    let id = add(&mut b, T0, plain(|_| {}));
    let lease = take(&mut b, T0 + 20).remove(0);
    let big = Bytes::from(vec![0u8; MAX_RESULT + 1]);
    assert!(matches!(
        b.ack_with_result(T0 + 20, lref(&lease), big),
        Err(BrokerError::InvalidArgument(_))
    ));
    assert_eq!(lease.id, id);
    b.ack_with_result(T0 + 20, lref(&lease), Bytes::from(vec![0u8; MAX_RESULT])).unwrap();
}

/// Results are bounded across queues, not only per ring: past `results_max_bytes` the oldest
/// result is dropped (its job stays completed), whichever queue holds it.
#[test]
fn results_beyond_the_budget_drop_the_oldest() {
    let mut b = Broker::new(BrokerConfig { results_max_bytes: 25, ..BrokerConfig::default() });
    let mut done = Vec::new();
    for (i, queue) in ["a", "b", "a"].into_iter().enumerate() {
        let id = b.add(T0, queue, vec![plain(|_| {})]).unwrap()[0];
        b.commit_added(T0, &[id]);
        let qs = [queue.to_string()];
        let lease = b.reserve(T0, w(1, i as u64), &qs, 1, 0).unwrap().expect("ready").remove(0);
        b.ack_with_result(T0 + 1, lref(&lease), Bytes::from(vec![b'x'; 10])).unwrap();
        done.push(id);
    }
    effects(&mut b);
    let result = |b: &mut Broker, id: JobId| match b.wait(T0 + 2, w(2, id), id, 0) {
        Ok(Waited::Now(JobOutcome::Completed { result })) => result.len(),
        other => panic!("job {id}: {other:?}"),
    };
    assert_eq!(result(&mut b, done[0]), 0, "the oldest result went over the budget");
    assert_eq!(result(&mut b, done[1]), 10);
    assert_eq!(result(&mut b, done[2]), 10);
}
