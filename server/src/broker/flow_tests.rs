//! Flow control in the core (issue 9), one rule per test, on a fake clock: queue rate,
//! queue concurrency, round-robin turns across groups, group concurrency 1 as strict order
//! per key, group rate, the `RateLimited` hold, parked reserves waking when capacity
//! returns, and limits surviving a restart through `restore_settings`.

use std::collections::HashMap;

use bytes::Bytes;
use qd_protocol::{JobOptions, QueueLimits, Rate};

use super::*;
use crate::model::QueueSettings;

const T0: Millis = 1_700_000_000_000;

fn job(name: &str, group: Option<&str>) -> NewJob {
    let options = JobOptions { group: group.map(str::to_owned), ..Default::default() };
    NewJob { name: name.into(), payload: Bytes::from_static(b"p"), options }
}

fn add(b: &mut Broker, now: Millis, queue: &str, jobs: Vec<NewJob>) -> Vec<JobId> {
    let ids = b.add(now, queue, jobs).unwrap();
    b.commit_added(now, &ids);
    ids
}

fn w(conn: ConnId, request: u64) -> WaiterKey {
    WaiterKey { conn, request }
}

fn take(b: &mut Broker, now: Millis, max: u32) -> Vec<Lease> {
    b.reserve(now, w(1, 0), &["q".to_string()], max, 0).unwrap().expect("timeout 0 never parks")
}

fn lref(l: &Lease) -> LeaseRef {
    LeaseRef { id: l.id, token: l.token }
}

fn limits(f: impl FnOnce(&mut QueueLimits)) -> QueueLimits {
    let mut l = QueueLimits::default();
    f(&mut l);
    l
}

fn delivered(b: &mut Broker) -> Vec<(WaiterKey, Vec<Lease>)> {
    let mut out = Vec::new();
    b.take_effects(&mut out);
    out.into_iter()
        .filter_map(|e| match e {
            Effect::Deliver { waiter, leases } => Some((waiter, leases)),
            _ => None,
        })
        .collect()
}

#[test]
fn queue_rate_is_a_token_bucket() {
    let mut b = Broker::new(BrokerConfig::default());
    b.set_queue_limits(T0, "q", limits(|l| l.rate = Some(Rate::new(2, 1000)))).unwrap();
    add(&mut b, T0, "q", (0..10).map(|i| job(&format!("j{i}"), None)).collect());
    // A full bucket allows a burst of 2, then one start per 500 ms.
    assert_eq!(take(&mut b, T0, 10).len(), 2);
    assert_eq!(take(&mut b, T0 + 499, 10).len(), 0);
    assert_eq!(b.poll_timeout(), Some(T0 + 500), "the next token is a deadline");
    assert_eq!(take(&mut b, T0 + 500, 10).len(), 1);
    assert_eq!(take(&mut b, T0 + 999, 10).len(), 0);
    // Over 10 s at most 2 + 10 * 2 starts, whatever the asking.
    let mut started = 3;
    for t in (1_000..=10_000).step_by(100) {
        started += take(&mut b, T0 + t, 10).len();
    }
    assert_eq!(started, 10, "all ten started by then");
    let mut b2 = Broker::new(BrokerConfig::default());
    b2.set_queue_limits(T0, "q", limits(|l| l.rate = Some(Rate::new(2, 1000)))).unwrap();
    add(&mut b2, T0, "q", (0..100).map(|i| job(&format!("j{i}"), None)).collect());
    let mut n = 0;
    for t in (0..=10_000).step_by(50) {
        n += take(&mut b2, T0 + t, 100).len();
    }
    assert_eq!(n, 2 + 20, "burst of 2, then 2 per second for 10 s");
}

#[test]
fn parked_reserve_wakes_when_the_rate_refills() {
    let mut b = Broker::new(BrokerConfig::default());
    b.set_queue_limits(T0, "q", limits(|l| l.rate = Some(Rate::new(1, 1000)))).unwrap();
    add(&mut b, T0, "q", vec![job("a", None), job("b", None)]);
    assert_eq!(take(&mut b, T0, 5).len(), 1);
    let parked = b.reserve(T0 + 10, w(2, 7), &["q".to_string()], 5, 30_000).unwrap();
    assert!(parked.is_none(), "b waits for a token");
    delivered(&mut b);
    assert_eq!(b.poll_timeout(), Some(T0 + 1000));
    b.handle_timeout(T0 + 1000);
    let got = delivered(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1.len()), (w(2, 7), 1));
}

#[test]
fn concurrency_caps_active_jobs_and_an_ack_serves_the_parked() {
    let mut b = Broker::new(BrokerConfig::default());
    b.set_queue_limits(T0, "q", limits(|l| l.concurrency = Some(2))).unwrap();
    add(&mut b, T0, "q", (0..5).map(|i| job(&format!("j{i}"), None)).collect());
    let first = take(&mut b, T0, 10);
    assert_eq!(first.len(), 2);
    assert!(take(&mut b, T0, 10).is_empty(), "two active: the limit");
    assert!(b.reserve(T0, w(2, 1), &["q".to_string()], 10, 60_000).unwrap().is_none());
    let lease_end = first[0].deadline_ms.min(first[1].deadline_ms);
    assert_eq!(b.poll_timeout(), Some(lease_end), "no flow timer: only a release frees a slot");
    b.ack(T0 + 5, lref(&first[0])).unwrap();
    let got = delivered(&mut b);
    assert_eq!(got.len(), 1, "the ack served the parked reserve");
    assert_eq!(got[0].1.len(), 1, "one slot freed, one job");
    // A failed try frees its slot too (and the retry queues behind).
    b.nack(T0 + 6, lref(&first[1]), "x", RetryHint::After { delay_ms: 0 }).unwrap();
    assert_eq!(take(&mut b, T0 + 6, 10).len(), 1);
    assert_eq!(b.stats()[0].active, 2);
}

#[test]
fn groups_take_turns() {
    let mut b = Broker::new(BrokerConfig::default());
    // A big tenant first, then two small ones and ungrouped jobs.
    add(&mut b, T0, "q", (0..1000).map(|i| job(&format!("big{i}"), Some("big"))).collect());
    add(&mut b, T0 + 1, "q", vec![job("s1", Some("small")), job("s2", Some("small"))]);
    add(&mut b, T0 + 1, "q", vec![job("t1", Some("tiny"))]);
    add(&mut b, T0 + 2, "q", vec![job("u1", None)]);
    let first: Vec<(String, Option<String>)> = take(&mut b, T0 + 3, 6)
        .into_iter()
        .map(|l| (l.name.to_string(), l.group.map(|g| g.to_string())))
        .collect();
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["big0", "s1", "t1", "u1", "big1", "s2"]);
    assert_eq!(first[1].1.as_deref(), Some("small"), "the lease names the group");
    assert_eq!(first[3].1, None);
    // One reserve at a time gives the same fairness.
    add(&mut b, T0 + 4, "q", vec![job("t2", Some("tiny"))]);
    let next: Vec<String> = (0..3).map(|_| take(&mut b, T0 + 5, 1)[0].name.to_string()).collect();
    assert_eq!(next, ["big2", "t2", "big3"]);
}

#[test]
fn group_concurrency_one_is_strict_order_per_key() {
    let mut b = Broker::new(BrokerConfig::default());
    b.set_queue_limits(T0, "q", limits(|l| l.group_concurrency = Some(1))).unwrap();
    let mut jobs = Vec::new();
    for i in 0..5 {
        for key in ["a", "b", "c"] {
            jobs.push(job(&format!("{key}{i}"), Some(key)));
        }
    }
    add(&mut b, T0, "q", jobs);
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut now = T0;
    for _ in 0..20 {
        now += 1;
        let leases = take(&mut b, now, 10);
        let mut groups: Vec<&str> = leases.iter().filter_map(|l| l.group.as_deref()).collect();
        groups.sort_unstable();
        groups.dedup();
        assert_eq!(groups.len(), leases.len(), "never two of one group at once");
        for l in &leases {
            let g = l.group.as_deref().unwrap_or_default().to_owned();
            order.entry(g).or_default().push(l.name.to_string());
            b.ack(now, lref(l)).unwrap();
        }
    }
    for key in ["a", "b", "c"] {
        let want: Vec<String> = (0..5).map(|i| format!("{key}{i}")).collect();
        assert_eq!(order[key], want, "group {key} ran in order");
    }
    assert_eq!(b.stats()[0].ready, 0);
}

#[test]
fn group_rate_limits_each_group_alone() {
    let mut b = Broker::new(BrokerConfig::default());
    b.set_queue_limits(T0, "q", limits(|l| l.group_rate = Some(Rate::new(1, 1000)))).unwrap();
    add(&mut b, T0, "q", vec![job("a1", Some("a")), job("a2", Some("a")), job("b1", Some("b"))]);
    let first = take(&mut b, T0, 10);
    let names: Vec<&str> = first.iter().map(|l| l.name.as_ref()).collect();
    assert_eq!(names, ["a1", "b1"]);
    for l in &first {
        b.ack(T0, lref(l)).unwrap();
    }
    assert!(take(&mut b, T0 + 999, 10).is_empty());
    assert_eq!(b.poll_timeout(), Some(T0 + 1000));
    b.handle_timeout(T0 + 1000);
    let second = take(&mut b, T0 + 1000, 10);
    assert_eq!(second[0].name.as_ref(), "a2");
    b.ack(T0 + 1000, lref(&second[0])).unwrap();
    // Idle groups with a refilling bucket are forgotten once it is full.
    b.handle_timeout(T0 + 5000);
    let flow = b.queues[b.queue_index["q"] as usize].flow.as_deref().unwrap();
    assert!(flow.groups.is_empty() && flow.wakes.is_empty(), "{flow:?}");
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn rate_limited_nack_holds_the_queue_without_an_attempt() {
    let mut b = Broker::new(BrokerConfig::default());
    add(&mut b, T0, "q", vec![job("a", None), job("b", None)]);
    let l = take(&mut b, T0, 1).remove(0);
    let mut out = Vec::new();
    b.take_effects(&mut out);
    let outcome = b.nack(T0 + 10, lref(&l), "429", RetryHint::RateLimited { delay_ms: 5000 });
    assert_eq!(outcome, Ok(NackOutcome::Retrying { run_at_ms: T0 + 5010 }));
    out.clear();
    b.take_effects(&mut out);
    assert!(out.is_empty(), "nothing to persist: no attempt used, {out:?}");
    assert!(take(&mut b, T0 + 5009, 5).is_empty(), "held");
    let (views, _) = b.queue_views(T0 + 20, None, 10);
    assert_eq!(views[0].rate_limited_until_ms, Some(T0 + 5010));
    assert!(b.reserve(T0 + 20, w(3, 1), &["q".to_string()], 5, 60_000).unwrap().is_none());
    assert_eq!(b.poll_timeout(), Some(T0 + 5010));
    b.handle_timeout(T0 + 5010);
    let got = delivered(&mut b);
    let names: Vec<&str> = got[0].1.iter().map(|l| l.name.as_ref()).collect();
    assert_eq!(names, ["b", "a"], "the held job queued behind");
    assert!(got[0].1.iter().all(|l| l.attempt == 1), "no attempt used");
}

#[test]
fn limits_persist_and_restore() {
    let mut b = Broker::new(BrokerConfig::default());
    let l = limits(|l| {
        l.concurrency = Some(1);
        l.group_rate = Some(Rate::new(3, 60_000));
    });
    b.set_queue_limits(T0, "q", l).unwrap();
    let mut out = Vec::new();
    b.take_effects(&mut out);
    let want = QueueSettings { paused: false, limits: l };
    assert!(
        matches!(&out[..], [Effect::Persist(Change::Settings { queue, settings })]
            if queue == "q" && *settings == want),
        "{out:?}"
    );
    let mut restored = Broker::new(BrokerConfig::default());
    restored.restore_settings("q", want);
    add(&mut restored, T0, "q", vec![job("a", None), job("b", None)]);
    assert_eq!(take(&mut restored, T0, 5).len(), 1, "concurrency 1 after restart");
    // Lifting every limit persists the default settings, and the queue goes when idle.
    b.set_queue_limits(T0, "q", QueueLimits::default()).unwrap();
    assert!(b.stats().is_empty());
    assert!(b.set_queue_limits(T0, "q", limits(|l| l.concurrency = Some(0))).is_err());
}

#[test]
fn ungrouped_queues_take_the_plain_path() {
    let mut b = Broker::new(BrokerConfig::default());
    add(&mut b, T0, "q", vec![job("a", None)]);
    assert!(b.queues[b.queue_index["q"] as usize].flow.is_none());
    assert_eq!(take(&mut b, T0, 1)[0].group, None);
}

/// Regression (W2 with `--rate-limit 10000` cost 3x the server CPU per job): a worker that
/// re-reserves as soon as it has jobs met a bucket holding the one or two tokens refilled
/// since its last reserve, and a parked reserve was woken by every refill; so each answer
/// carried a handful of jobs, and every answer costs a round trip, a wake and an ack commit.
/// Now a reserve that can wait is answered with a batch: once its jobs' tokens are there,
/// or after `RATE_BATCH_MS`. The limit stays exact.
#[test]
fn a_binding_rate_answers_reserves_in_batches() {
    const N: usize = 10_000;
    let mut b = Broker::new(BrokerConfig::default());
    // 10 starts per ms, as in the bench, with a small burst so that the limit binds early.
    let rate = Rate::new(100, 10);
    b.set_queue_limits(T0, "q", limits(|l| l.rate = Some(rate))).unwrap();
    add(&mut b, T0, "q", (0..N).map(|i| job(&format!("j{i}"), None)).collect());
    delivered(&mut b);
    let q = ["q".to_string()];
    let (mut now, mut request, mut started) = (T0, 0, 0);
    let (mut answers, mut timeouts) = (0usize, 0usize);
    while started < N {
        request += 1;
        let leases = match b.reserve(now, w(1, request), &q, 64, 500).unwrap() {
            Some(leases) => leases,
            None => loop {
                now = now.max(b.poll_timeout().expect("a parked reserve has a deadline"));
                b.handle_timeout(now);
                timeouts += 1;
                if let Some((_, leases)) = delivered(&mut b).pop() {
                    break leases;
                }
            },
        };
        answers += 1;
        started += leases.len();
        let allowed = 100 + (now - T0) as usize * 10;
        assert!(
            started <= allowed,
            "{started} starts by {} ms, the limit allows {allowed}",
            now - T0
        );
        // The worker runs its jobs and comes back 1 ms later.
        now += 1;
        for l in &leases {
            b.ack(now, lref(l)).unwrap();
        }
        delivered(&mut b);
    }
    assert_eq!(started, N);
    let per_answer = N / answers;
    assert!(per_answer >= 32, "{per_answer} jobs per answered reserve ({answers} answers)");
    assert!(N / timeouts.max(1) >= 32, "{timeouts} timer rounds for {N} jobs");
    assert!(now - T0 < 1_100, "the drain kept the rate: {} ms", now - T0);
}
