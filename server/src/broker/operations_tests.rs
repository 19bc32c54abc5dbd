//! Scenario tests of the operator's side of the core (`operations.rs`) and of issue 7's
//! security fixes, one story per test, with a fake clock (plain numbers).

use bytes::Bytes;
use qd_protocol::{ErrorCode, JobOptions};

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

fn dies_at_once(o: &mut JobOptions) {
    o.attempts = 1;
}

fn w(conn: ConnId, request: u64) -> WaiterKey {
    WaiterKey { conn, request }
}

fn qs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn effects(b: &mut Broker) -> Vec<Effect> {
    let mut out = Vec::new();
    b.take_effects(&mut out);
    out
}

fn changes(b: &mut Broker) -> Vec<Change> {
    effects(b)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Persist(c) => Some(c),
            Effect::Deliver { .. } | Effect::Outcome { .. } | Effect::Event(_) => None,
        })
        .collect()
}

/// Adds and commits, as the engine does once the insert is durable.
fn add(b: &mut Broker, now: Millis, queue: &str, jobs: Vec<NewJob>) -> Vec<JobId> {
    let ids = b.add(now, queue, jobs).unwrap();
    b.commit_added(now, &ids);
    ids
}

fn take(b: &mut Broker, now: Millis, queues: &[&str], max: u32) -> Vec<Lease> {
    b.reserve(now, w(1, 0), &qs(queues), max, 0).unwrap().expect("timeout 0 never parks")
}

/// Makes each of `ids` (ready, single-attempt jobs of `queue`) dead, one ms apart from `at`.
fn kill(b: &mut Broker, at: Millis, queue: &str, n: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let now = at + i as u64;
        let l = take(b, now, &[queue], 1).remove(0);
        let lease = LeaseRef { id: l.id, token: l.token };
        assert_eq!(b.nack(now, lease, "boom", RetryHint::Never), Ok(NackOutcome::Dead));
        ids.push(l.id);
    }
    ids
}

fn page_ids(page: &Page<JobView>) -> Vec<JobId> {
    page.items.iter().map(|v| v.id).collect()
}

fn queue_names(b: &Broker) -> Vec<String> {
    b.stats().into_iter().map(|s| s.queue).collect()
}

// ---- issue 7: security ----

#[test]
fn tokens_follow_the_key_and_not_each_other() {
    let run = |key: [u8; 32]| {
        let mut b = Broker::new(BrokerConfig { token_key: key, ..BrokerConfig::default() });
        add(&mut b, T0, "q", (0..50).map(|_| job("j")).collect());
        take(&mut b, T0, &["q"], 50).into_iter().map(|l| l.token).collect::<Vec<u64>>()
    };
    let a = run([1; 32]);
    assert_eq!(a, run([1; 32]), "pure: the same key gives the same tokens");
    let other = run([2; 32]);
    assert!(a.iter().zip(&other).all(|(x, y)| x != y), "another key, other tokens");
    for pair in a.windows(2) {
        assert_ne!(pair[1], pair[0].wrapping_add(1));
        assert_ne!(pair[1], backoff::splitmix64(pair[0]));
    }
}

/// Issue 7: a reserve naming many unknown queues used to create each of them for good.
#[test]
fn naming_130k_unknown_queues_leaves_none_behind() {
    let mut b = Broker::new(BrokerConfig::default());
    let names: Vec<String> = (0..130_000).map(|i| format!("ghost-{i}")).collect();
    assert_eq!(b.reserve(T0, w(1, 1), &names, 1, 0), Ok(Some(vec![])));
    assert!(b.stats().is_empty());
    assert_eq!((b.queues.len(), b.queue_index.len()), (0, 0));

    // With a wait, they exist while the waiter is parked, and go when it leaves.
    assert_eq!(b.reserve(T0, w(1, 2), &names, 1, 1_000), Ok(None));
    assert_eq!(b.stats().len(), 130_000);
    b.handle_timeout(T0 + 1_000);
    assert!(
        matches!(effects(&mut b).as_slice(), [Effect::Deliver { leases, .. }] if leases.is_empty())
    );
    assert!(b.stats().is_empty());
    assert_eq!((b.queues.len(), b.free_queues.len()), (0, 0), "no slot is kept");

    // Cancelled or disconnected waiters release their queues the same way.
    let few = qs(&["a", "b"]);
    assert_eq!(b.reserve(T0, w(1, 3), &few, 1, 60_000), Ok(None));
    assert_eq!(b.reserve(T0, w(2, 1), &qs(&["c"]), 1, 60_000), Ok(None));
    b.cancel_waiter(w(1, 3));
    assert_eq!(queue_names(&b), ["c"]);
    b.disconnect(T0, 2);
    assert!(b.stats().is_empty());
}

#[test]
fn a_forgotten_queue_slot_is_reused_without_stale_jobs() {
    let mut b = Broker::new(BrokerConfig { completed_retention: 0, ..BrokerConfig::default() });
    add(&mut b, T0, "first", vec![job("a")]);
    add(&mut b, T0, "keep", vec![job("b")]);
    let l = take(&mut b, T0, &["first"], 1).remove(0);
    b.ack(T0, LeaseRef { id: l.id, token: l.token }).unwrap();
    assert_eq!(queue_names(&b), ["keep"], "no retained history: forgotten at once");
    assert_eq!(b.free_queues, [0]);
    add(&mut b, T0, "second", vec![job("c")]);
    assert_eq!(b.queue_index.get("second"), Some(&0), "slot reused");
    let got: Vec<(JobId, String)> =
        take(&mut b, T0, &["second"], 5).iter().map(|l| (l.id, l.queue.to_string())).collect();
    assert_eq!(got, [(3, "second".to_string())]);
    assert_eq!(b.stats()[0].completed_total, 0, "counters start from zero");
}

#[test]
fn idle_queues_with_history_are_kept_up_to_a_bound() {
    let config = BrokerConfig { idle_queues_kept: 2, ..BrokerConfig::default() };
    let mut b = Broker::new(config);
    for name in ["a", "b", "c"] {
        add(&mut b, T0, name, vec![job("j")]);
        let l = take(&mut b, T0, &[name], 1).remove(0);
        b.ack(T0, LeaseRef { id: l.id, token: l.token }).unwrap();
    }
    assert_eq!(queue_names(&b), ["b", "c"], "the longest idle went first");
    assert_eq!(b.completed("c").len(), 1);
    // A kept queue that gets busy again stays while busy.
    add(&mut b, T0, "b", vec![job("j")]);
    add(&mut b, T0, "d", vec![job("j")]);
    let l = take(&mut b, T0, &["d"], 1).remove(0);
    b.ack(T0, LeaseRef { id: l.id, token: l.token }).unwrap();
    assert_eq!(queue_names(&b), ["b", "c", "d"]);
}

#[test]
fn reserve_max_is_clamped() {
    let mut b = Broker::new(BrokerConfig { max_reserve: 3, ..BrokerConfig::default() });
    add(&mut b, T0, "q", (0..10).map(|_| job("j")).collect());
    assert_eq!(take(&mut b, T0, &["q"], u32::MAX).len(), 3);
    assert_eq!(BrokerConfig::default().max_reserve, 1000);
}

/// Issue 7: a job was handed to a worker before its insert was durable; a crash then lost
/// a job that had run.
#[test]
fn uncommitted_jobs_are_not_delivered() {
    let mut b = Broker::new(BrokerConfig::default());
    assert_eq!(b.reserve(T0, w(9, 1), &qs(&["q"]), 5, 60_000), Ok(None));
    let keyed = job_with("k", |o| o.key = Some("once".into()));
    let ids = b.add(T0, "q", vec![job("a"), keyed.clone()]).unwrap();
    assert_eq!(ids, [1, 2]);
    let after_add = effects(&mut b);
    assert!(after_add.iter().all(|e| matches!(e, Effect::Persist(_))), "no delivery yet");
    assert!(take(&mut b, T0, &["q"], 5).is_empty(), "no reserve sees them");
    assert_eq!(b.stats()[0].ready, 2, "stats count them as ready");
    assert_eq!(b.add(T0, "q", vec![keyed]).unwrap(), [2], "keys are claimed at add time");
    assert_eq!(b.poll_timeout(), Some(T0 + 60_000), "not timers either");

    b.commit_added(T0 + 1, &ids);
    let delivered = effects(&mut b);
    let [Effect::Deliver { waiter, leases }] = delivered.as_slice() else {
        panic!("expected one delivery, got {delivered:?}")
    };
    assert_eq!(*waiter, w(9, 1));
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
    b.commit_added(T0 + 1, &ids);
    assert!(effects(&mut b).is_empty(), "committing twice is harmless");

    // A delayed job waits for its run time after the commit, not before it.
    let ids = b.add(T0 + 2, "q", vec![job_with("later", |o| o.delay_ms = 10)]).unwrap();
    b.commit_added(T0 + 20, &ids);
    assert_eq!(take(&mut b, T0 + 20, &["q"], 1).len(), 1, "past its run time at commit");
}

#[test]
fn id_floor_is_persisted_before_the_insert_that_reaches_it() {
    let mut b = Broker::new(BrokerConfig::default());
    b.set_next_id(10);
    b.add(T0, "q", vec![job("a"), job("b")]).unwrap();
    let got = changes(&mut b);
    assert!(matches!(got[0], Change::IdFloor { next_id } if next_id == 10 + ID_FLOOR_STEP));
    assert!(matches!(&got[1], Change::Insert(r) if r.id == 10));
    assert!(matches!(&got[2], Change::Insert(r) if r.id == 11));
    assert_eq!(got.len(), 3);

    // Nothing more until the ids reach the floor; then it rises again, in the same batch.
    b.next_id = 10 + ID_FLOOR_STEP - 1;
    b.add(T0, "q", vec![job("c"), job("d")]).unwrap();
    let got = changes(&mut b);
    assert!(matches!(&got[0], Change::Insert(r) if r.id == 10 + ID_FLOOR_STEP - 1));
    assert!(matches!(got[1], Change::IdFloor { next_id } if next_id == 10 + 2 * ID_FLOOR_STEP));
    assert!(matches!(&got[2], Change::Insert(r) if r.id == 10 + ID_FLOOR_STEP));

    // Recovery from a floor: ids continue from it, and the next add persists a new one.
    let mut restored = Broker::new(BrokerConfig::default());
    restored.set_next_id(10 + 2 * ID_FLOOR_STEP);
    assert_eq!(restored.add(T0, "q", vec![job("e")]).unwrap(), [10 + 2 * ID_FLOOR_STEP]);
    assert!(matches!(changes(&mut restored)[0], Change::IdFloor { .. }));
}

// ---- issue 8: operations ----

#[test]
fn pause_holds_jobs_and_waiters_and_resume_serves_them() {
    let mut b = Broker::new(BrokerConfig::default());
    b.pause(T0, "q").unwrap();
    let got = changes(&mut b);
    assert_eq!(
        got,
        [Change::Settings {
            queue: "q".into(),
            settings: crate::model::QueueSettings { paused: true, ..Default::default() }
        }]
    );
    b.pause(T0, "q").unwrap();
    assert!(effects(&mut b).is_empty(), "no change, nothing to persist");
    assert_eq!(queue_names(&b), ["q"], "a paused queue is kept, even empty");

    add(&mut b, T0, "q", vec![job("a")]);
    add(&mut b, T0, "other", vec![job("b")]);
    assert_eq!(take(&mut b, T0, &["q"], 5), []);
    assert_eq!(b.reserve(T0, w(3, 1), &qs(&["q"]), 5, 60_000), Ok(None));
    // A reserve over several queues skips the paused one.
    let names: Vec<String> =
        take(&mut b, T0, &["q", "other"], 5).iter().map(|l| l.name.to_string()).collect();
    assert_eq!(names, ["b"]);
    add(&mut b, T0, "q", vec![job("c")]);
    assert!(effects(&mut b).iter().all(|e| !matches!(e, Effect::Deliver { .. })));
    let views = b.queue_views(T0, None, 10).0;
    assert_eq!(
        views.iter().map(|v| (v.name.as_str(), v.paused)).collect::<Vec<_>>(),
        [("other", false), ("q", true)]
    );

    b.resume(T0 + 5, "q").unwrap();
    let got = effects(&mut b);
    assert!(
        matches!(&got[0], Effect::Persist(Change::Settings { settings, .. }) if !settings.paused)
    );
    let Effect::Deliver { waiter, leases } = &got[1] else { panic!("{got:?}") };
    assert_eq!((*waiter, leases.len()), (w(3, 1), 2));

    // Recovery restores the setting without persisting it again.
    let mut restored = Broker::new(BrokerConfig::default());
    restored
        .restore_settings("q", crate::model::QueueSettings { paused: true, ..Default::default() });
    assert!(effects(&mut restored).is_empty());
    assert!(restored.queue_views(T0, None, 10).0[0].paused);
    assert_eq!(b.pause(T0, "bad name").unwrap_err().code(), ErrorCode::InvalidQueueName);
}

#[test]
fn queue_views_count_page_by_name_and_keep_a_minute_history() {
    let mut b = Broker::new(BrokerConfig::default());
    for name in ["c", "a", "b"] {
        add(&mut b, T0, name, vec![job("j")]);
    }
    add(
        &mut b,
        T0,
        "a",
        vec![job_with("later", |o| o.delay_ms = 500), job_with("x", dies_at_once)],
    );
    let (page, next) = b.queue_views(T0, None, 2);
    assert_eq!(page.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(next.as_deref(), Some("b"));
    let (rest, next) = b.queue_views(T0, next.as_deref(), 2);
    assert_eq!((rest.len(), rest[0].name.as_str(), next), (1, "c", None));

    // In queue a: job 1 ready since T0, job 4 delayed (no timer handled yet), job 5 ready.
    // Ack one, kill one, a minute apart.
    let now = T0 + 90_000;
    let l = take(&mut b, now, &["a"], 1).remove(0);
    b.ack(now, LeaseRef { id: l.id, token: l.token }).unwrap();
    kill(&mut b, now + 60_000, "a", 1);
    let a = &b.queue_views(now + 60_000, None, 1).0[0];
    assert_eq!((a.ready, a.delayed, a.active, a.dead, a.completed), (0, 1, 0, 1, 1));
    assert_eq!((a.added_total, a.completed_total, a.failed_total, a.dead_total), (3, 1, 1, 1));
    assert_eq!(a.oldest_ready_age_ms, None);
    let n = a.minutes.len();
    assert_eq!(n, 60);
    assert_eq!(a.minutes[n - 1], MinuteCounts { completed: 0, failed: 1 });
    assert_eq!(a.minutes[n - 2], MinuteCounts { completed: 1, failed: 0 });
    b.handle_timeout(now + 60_000);
    add(&mut b, now + 60_000, "a", vec![job("fresh")]);
    // The delayed job became ready at its run time, T0 + 500: that is the oldest wait.
    let a = &b.queue_views(now + 60_000, None, 1).0[0];
    assert_eq!(a.oldest_ready_age_ms, Some(now + 60_000 - (T0 + 500)));
}

#[test]
fn ready_listing_pages_stay_correct_while_the_queue_changes() {
    let mut b = Broker::new(BrokerConfig::default());
    let prio = |p: i32| job_with("j", move |o| o.priority = p);
    // Ready order: 3 (prio -1), 1, 4 (prio 0), 2, 5 (prio 5).
    add(&mut b, T0, "q", vec![prio(0), prio(5), prio(-1), prio(0), prio(5)]);
    let list = |b: &Broker, cursor: Option<&[u8]>| {
        b.list_jobs(T0, "q", JobStateKind::Ready, cursor, 2).unwrap()
    };
    let first = list(&b, None);
    assert_eq!(page_ids(&first), [3, 1]);
    // Meanwhile: the head is leased, a new job lands before the cursor, one after it.
    assert_eq!(take(&mut b, T0, &["q"], 1)[0].id, 3);
    add(&mut b, T0, "q", vec![prio(-9), prio(0)]);
    let second = list(&b, first.next.as_deref());
    assert_eq!(page_ids(&second), [4, 7], "nothing skipped or repeated");
    let third = list(&b, second.next.as_deref());
    assert_eq!((page_ids(&third), third.next), (vec![2, 5], None));
    let view = &first.items[0];
    assert_eq!((view.state, view.priority, view.run_at_ms), (JobStateKind::Ready, -1, Some(T0)));

    let err = b.list_jobs(T0, "q", JobStateKind::Dead, first.next.as_deref(), 2).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "a ready cursor is no dead cursor");
    let unknown = b.list_jobs(T0, "nope", JobStateKind::Ready, None, 2).unwrap();
    assert_eq!(unknown, Page { items: vec![], next: None });
}

#[test]
fn listings_of_delayed_active_dead_and_completed() {
    let mut b = Broker::new(BrokerConfig::default());
    add(
        &mut b,
        T0,
        "q",
        vec![job_with("d", |o| o.delay_ms = 300), job_with("e", |o| o.delay_ms = 100)],
    );
    let delayed = b.list_jobs(T0, "q", JobStateKind::Delayed, None, 10).unwrap();
    assert_eq!(page_ids(&delayed), [2, 1]);
    assert_eq!(delayed.items[0].run_at_ms, Some(T0 + 100));

    add(&mut b, T0, "q", (0..3).map(|_| job_with("x", dies_at_once)).collect());
    let dead = kill(&mut b, T0 + 10, "q", 2);
    let page = b.list_jobs(T0, "q", JobStateKind::Dead, None, 1).unwrap();
    assert_eq!(page_ids(&page), [dead[1]], "newest death first");
    assert_eq!(page.items[0].finished_at_ms, Some(T0 + 11));
    let page = b.list_jobs(T0, "q", JobStateKind::Dead, page.next.as_deref(), 1).unwrap();
    assert_eq!((page_ids(&page), page.next), (vec![dead[0]], None));

    let held = b.reserve(T0 + 20, w(4, 1), &qs(&["q"]), 1, 0).unwrap().unwrap();
    let active = b.list_jobs(T0, "q", JobStateKind::Active, None, 10).unwrap();
    let v = &active.items[0];
    assert_eq!(v.id, held[0].id);
    assert_eq!(
        (v.conn, v.started_at_ms, v.lease_deadline_ms),
        (Some(4), Some(T0 + 20), Some(held[0].deadline_ms))
    );
    b.ack(T0 + 30, LeaseRef { id: held[0].id, token: held[0].token }).unwrap();
    let done = b.list_jobs(T0, "q", JobStateKind::Completed, None, 10).unwrap();
    assert_eq!(page_ids(&done), [held[0].id]);
    assert_eq!(done.items[0].finished_at_ms, Some(T0 + 30));
    assert_eq!(b.job_view(held[0].id).map(|v| v.state), Some(JobStateKind::Completed));
    assert_eq!(b.job_view(dead[0]).map(|v| v.finished_at_ms), Some(Some(T0 + 10)));
    assert_eq!(
        b.job_view(1).map(|v| (v.state, v.run_at_ms)),
        Some((JobStateKind::Delayed, Some(T0 + 300)))
    );
    assert_eq!(b.job_view(999), None);
}

#[test]
fn retry_dead_resets_attempts_and_persists_retry() {
    let mut b = Broker::new(BrokerConfig::default());
    add(
        &mut b,
        T0,
        "q",
        vec![job_with("a", dies_at_once), job_with("b", dies_at_once), job_with("c", dies_at_once)],
    );
    let dead = kill(&mut b, T0, "q", 3);
    changes(&mut b);
    assert_eq!(b.retry_dead(T0 + 5, "q", &[dead[1], 999]), 1);
    assert_eq!(changes(&mut b), [Change::Retry { id: dead[1], run_at_ms: T0 + 5 }]);
    let l = take(&mut b, T0 + 5, &["q"], 5);
    assert_eq!((l.len(), l[0].id, l[0].attempt), (1, dead[1], 1), "attempts start over");
    assert_eq!(b.retry_all_dead(T0 + 6, "q", Some("nope")), 0);
    assert_eq!(b.retry_all_dead(T0 + 6, "q", Some("c")), 1);
    assert_eq!(b.retry_all_dead(T0 + 6, "q", None), 1);
    assert_eq!(b.queue_views(T0 + 6, None, 1).0[0].retried_total, 3);
    assert_eq!(b.retry_all_dead(T0 + 6, "unknown", None), 0);
}

#[test]
fn a_retried_job_takes_its_key_back_unless_taken() {
    let mut b = Broker::new(BrokerConfig::default());
    let keyed = |k: &str| {
        job_with("k", |o| {
            o.key = Some(k.into());
            o.attempts = 1;
        })
    };
    add(&mut b, T0, "q", vec![keyed("x"), keyed("y")]);
    kill(&mut b, T0, "q", 2);
    assert_eq!(add(&mut b, T0, "q", vec![keyed("y")]), [3], "a dead job does not dedupe");
    b.retry_all_dead(T0, "q", None);
    assert_eq!(add(&mut b, T0, "q", vec![keyed("x")]), [1], "job 1 holds x again");
    assert_eq!(add(&mut b, T0, "q", vec![keyed("y")]), [3], "y stayed with job 3");
}

#[test]
fn purge_dead_by_age_and_all() {
    let mut b = Broker::new(BrokerConfig::default());
    add(&mut b, T0, "q", (0..3).map(|_| job_with("x", dies_at_once)).collect());
    let dead = kill(&mut b, T0, "q", 3); // died at T0, T0+1, T0+2
    changes(&mut b);
    assert_eq!(b.purge_dead(T0 + 100, "q", Some(99)), 2);
    assert_eq!(changes(&mut b), [Change::Remove { id: dead[0] }, Change::Remove { id: dead[1] }]);
    assert_eq!(b.purge_dead(T0 + 100, "q", None), 1);
    assert!(b.stats().iter().all(|s| s.queue != "q" || s.dead == 0));
}

#[test]
fn remove_takes_ready_delayed_and_dead_but_skips_active() {
    let mut b = Broker::new(BrokerConfig::default());
    let keyed = job_with("k", |o| o.key = Some("once".into()));
    add(
        &mut b,
        T0,
        "q",
        vec![
            job_with("x", dies_at_once),
            keyed.clone(),
            job_with("d", |o| o.delay_ms = 50),
            job("active"),
        ],
    );
    let dead = kill(&mut b, T0, "q", 1)[0];
    let active = take(&mut b, T0, &["q"], 1).remove(0); // job 2 (keyed) is next
    assert_eq!(active.id, 2);
    changes(&mut b);
    assert_eq!(b.remove(T0, &[dead, 2, 3, 4, 4, 999]), 3);
    let got = changes(&mut b);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|c| matches!(c, Change::Remove { .. })));
    assert_eq!(b.stats()[0].active, 1);
    assert_eq!(take(&mut b, T0 + 100, &["q"], 5), [], "the removed ready job is not handed out");
    assert_eq!(b.poll_timeout(), Some(active.deadline_ms), "no timer for the removed delayed job");
    b.ack(T0, LeaseRef { id: active.id, token: active.token }).unwrap();
    assert_eq!(add(&mut b, T0, "q", vec![keyed]), [5], "key freed");
}

#[test]
fn promote_makes_delayed_jobs_ready_now() {
    let mut b = Broker::new(BrokerConfig::default());
    assert_eq!(b.reserve(T0, w(2, 1), &qs(&["q"]), 1, 60_000), Ok(None));
    add(&mut b, T0, "q", vec![job_with("later", |o| o.delay_ms = 60_000), job("now")]);
    let delivered = effects(&mut b);
    assert!(matches!(&delivered[..], [.., Effect::Deliver { leases, .. }] if leases[0].id == 2));
    assert_eq!(b.promote(T0 + 1, &[1, 2]), 1, "job 2 is active, not delayed");
    assert_eq!(changes(&mut b), [Change::Reschedule { id: 1, run_at_ms: T0 + 1 }]);
    assert_eq!(take(&mut b, T0 + 1, &["q"], 5)[0].id, 1);
    assert_eq!(b.poll_timeout(), Some(T0 + 30_000), "only job 2's lease is ahead");
}

#[test]
fn dead_set_retention_by_count_and_by_age() {
    let config =
        BrokerConfig { dead_max_jobs: 2, dead_max_age_ms: 1_000, ..BrokerConfig::default() };
    let mut b = Broker::new(config);
    add(&mut b, T0, "q", (0..3).map(|_| job_with("x", dies_at_once)).collect());
    let dead = kill(&mut b, T0, "q", 3);
    let got = changes(&mut b);
    // The third death pushes the oldest out: its Fail, then the Remove.
    assert!(matches!(got[got.len() - 2], Change::Fail { id, dead: true, .. } if id == dead[2]));
    assert_eq!(got[got.len() - 1], Change::Remove { id: dead[0] });
    assert_eq!(b.stats()[0].dead, 2);
    assert_eq!(b.poll_timeout(), Some(T0 + 1 + 1_000), "the oldest kept death ages out");
    b.handle_timeout(T0 + 1_001);
    assert_eq!(changes(&mut b), [Change::Remove { id: dead[1] }]);
    b.handle_timeout(T0 + 1_002);
    assert_eq!(changes(&mut b), [Change::Remove { id: dead[2] }]);
    assert!(b.stats().is_empty(), "an emptied queue is forgotten");
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn restored_dead_jobs_keep_their_time_of_death() {
    let mut b = Broker::new(BrokerConfig::default());
    add(&mut b, T0, "q", vec![job_with("x", dies_at_once)]);
    kill(&mut b, T0 + 7, "q", 1);
    let mut records = std::collections::HashMap::new();
    for change in changes(&mut b) {
        match change {
            Change::Insert(r) => {
                records.insert(r.id, r);
            }
            Change::Fail { id, error, run_at_ms, dead } => {
                records.get_mut(&id).unwrap().apply_failure(error, run_at_ms, dead);
            }
            _ => {}
        }
    }
    let mut restored = Broker::new(BrokerConfig::default());
    restored.restore(T0 + 100, &records[&1]);
    let view = restored.job_view(1).unwrap();
    assert_eq!((view.state, view.finished_at_ms), (JobStateKind::Dead, Some(T0 + 7)));
}

/// The ack path reads a lease's start through `lease_started` (one lookup): it answers for
/// active jobs only, never for unknown or finished ones.
#[test]
fn lease_started_is_the_active_lease_start() {
    let mut b = Broker::new(BrokerConfig::default());
    let ids = add(&mut b, 1_000, "q", vec![job("a")]);
    assert_eq!(b.lease_started(ids[0]), None, "ready, not leased");
    let leases = take(&mut b, 2_000, &["q"], 1);
    assert_eq!(b.lease_started(ids[0]), Some(2_000));
    b.ack(3_000, LeaseRef { id: ids[0], token: leases[0].token }).unwrap();
    assert_eq!(b.lease_started(ids[0]), None, "completed");
    assert_eq!(b.lease_started(424_242), None);
}

/// Faktory's MUTATE `kill` (issue 11): waiting jobs go to the dead set, recorded as a dead
/// `Fail` so a restart keeps them there; active, dead and unknown jobs are left alone.
#[test]
fn kill_moves_ready_and_delayed_jobs_to_the_dead_set() {
    let mut b = Broker::new(BrokerConfig::default());
    let keyed = job_with("k", |o| o.key = Some("once".into()));
    let ids = add(
        &mut b,
        T0,
        "q",
        vec![
            job_with("x", dies_at_once),
            job("active"),
            keyed.clone(),
            job_with("d", |o| o.delay_ms = 50),
        ],
    );
    let dead = kill(&mut b, T0, "q", 1)[0];
    let active = take(&mut b, T0, &["q"], 1).remove(0);
    assert_eq!((dead, active.id), (ids[0], ids[1]));
    let mut records = std::collections::HashMap::new();
    for change in changes(&mut b) {
        if let Change::Insert(r) = change {
            records.insert(r.id, *r);
        }
    }

    assert_eq!(b.kill(T0 + 5, &[dead, active.id, ids[2], ids[3], ids[3], 999]), 2);
    let got = changes(&mut b);
    let killed = |id| Change::Fail {
        id,
        error: AttemptError { attempt: 1, at_ms: T0 + 5, message: KILLED.into() },
        run_at_ms: T0 + 5,
        dead: true,
    };
    assert_eq!(got, [killed(ids[2]), killed(ids[3])]);
    let s = &b.stats()[0];
    assert_eq!((s.ready, s.delayed, s.active, s.dead), (0, 0, 1, 3));
    assert_eq!(take(&mut b, T0 + 100, &["q"], 5), [], "the killed jobs are not handed out");
    assert_eq!(b.poll_timeout(), Some(active.deadline_ms), "no timer for the killed delayed job");
    assert_eq!(b.queue_views(T0 + 5, None, 1).0[0].dead_total, 3);
    assert_eq!(b.queue_views(T0 + 5, None, 1).0[0].failed_total, 1, "a kill is not a try");
    assert_eq!(add(&mut b, T0 + 5, "q", vec![keyed]), [5], "a killed job's key is free");

    // After a restart the killed jobs are still dead, died when they were killed.
    for change in got {
        if let Change::Fail { id, error, run_at_ms, dead } = change {
            records.get_mut(&id).unwrap().apply_failure(error, run_at_ms, dead);
        }
    }
    let mut restored = Broker::new(BrokerConfig::default());
    restored.restore(T0 + 100, &records[&ids[3]]);
    let view = restored.job_view(ids[3]).unwrap();
    assert_eq!((view.state, view.finished_at_ms), (JobStateKind::Dead, Some(T0 + 5)));
}

/// A killed ready job leaves the ready index: retried, it is handed out once, not twice
/// (a stale entry would look live again once the job is ready). Grouped jobs too.
#[test]
fn a_killed_then_retried_ready_job_is_delivered_once() {
    for group in [None, Some("g")] {
        let mut b = Broker::new(BrokerConfig::default());
        let j = job_with("x", |o| o.group = group.map(str::to_owned));
        let ids = add(&mut b, T0, "q", vec![j.clone(), j]);
        assert_eq!(b.kill(T0, &[ids[0]]), 1);
        assert_eq!(b.retry_dead(T0 + 1, "q", &[ids[0]]), 1);
        let ready = b.list_jobs(T0 + 1, "q", JobStateKind::Ready, None, 10).unwrap();
        assert_eq!(page_ids(&ready), [ids[1], ids[0]], "{group:?}");
        let got: Vec<JobId> = take(&mut b, T0 + 1, &["q"], 5).iter().map(|l| l.id).collect();
        assert_eq!(got, [ids[1], ids[0]], "{group:?}");
        assert_eq!(take(&mut b, T0 + 1, &["q"], 5), [], "{group:?}");
    }
}
