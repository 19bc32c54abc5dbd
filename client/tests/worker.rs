//! The Worker against an in-memory fake queue server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qd_client::{permanent, CancellationToken, Client, LeasedJob, RetryHint, Worker};
use tokio::sync::Semaphore;

use crate::fake::{eventually, leased, FakeQueue};

async fn client(fake: &FakeQueue) -> Client {
    Client::connect(fake.addr.clone()).await.unwrap()
}

/// Twelve jobs, concurrency 3: the first three handlers wait until all three run at once
/// (proving the worker fills its slots), and no more than three ever run. Every job is
/// acked and reported completed.
#[tokio::test]
async fn runs_jobs_with_bounded_concurrency_and_acks_them() {
    let fake = FakeQueue::start((1..=12).map(|id| leased(id, 30_000)).collect()).await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();

    let done = completed.clone();
    let worker = Worker::new(client(&fake).await, "jobs")
        .concurrency(3)
        .reserve_timeout(Duration::from_millis(100))
        .on_completed(move |_| {
            done.fetch_add(1, Ordering::SeqCst);
        });
    let (r, m) = (running.clone(), most.clone());
    let run = tokio::spawn(worker.run(shutdown.clone(), move |_job: LeasedJob| {
        let (running, most) = (r.clone(), m.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Hold on until three run together (or give up after 5 s and let the test fail).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while most.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<(), String>(())
        }
    }));

    eventually("all 12 jobs acked", || fake.with(|r| r.acked.len()) == 12).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    assert_eq!(most.load(Ordering::SeqCst), 3, "concurrency limit is 3");
    let mut acked = fake.with(|r| r.acked.clone());
    acked.sort();
    assert_eq!(acked, (1..=12).collect::<Vec<_>>());
    assert_eq!(completed.load(Ordering::SeqCst), 12);
    assert!(fake.with(|r| r.nacked.is_empty()));
}

/// Ok acks; an error nacks with its text and the backoff; `permanent` dead-letters, even
/// when wrapped by anyhow with context; a panic is a failure with the panic's text.
#[tokio::test]
async fn failures_are_nacked_with_their_text() {
    let fake = FakeQueue::start((1..=5).map(|id| leased(id, 30_000)).collect()).await;
    let failed = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let f = failed.clone();
    let worker = Worker::new(client(&fake).await, "jobs")
        .concurrency(2)
        .reserve_timeout(Duration::from_millis(100))
        .on_failed(move |job, err, will_retry| {
            f.lock().unwrap().push((job.id, err.to_owned(), will_retry));
        });
    let run = tokio::spawn(worker.run(shutdown.clone(), |job: LeasedJob| async move {
        match job.id {
            1 => Ok(()),
            2 => Err(anyhow::anyhow!("smtp timeout")),
            3 => Err(permanent("no such mailbox"))?,
            4 => panic!("boom"),
            _ => Err(anyhow::Error::new(permanent("user deleted")).context("lookup user")),
        }
    }));
    eventually("5 jobs settled", || fake.with(|r| r.acked.len() + r.nacked.len()) == 5).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    assert_eq!(fake.with(|r| r.acked.clone()), vec![1]);
    let mut nacked = fake.with(|r| r.nacked.clone());
    nacked.sort_by_key(|n| n.0);
    assert_eq!(
        nacked,
        vec![
            (2, "smtp timeout".to_owned(), RetryHint::Backoff),
            (3, "no such mailbox".to_owned(), RetryHint::Never),
            (4, "handler panicked: boom".to_owned(), RetryHint::Backoff),
            (5, "lookup user".to_owned(), RetryHint::Never),
        ]
    );
    let mut failed = failed.lock().unwrap().clone();
    failed.sort_by_key(|f| f.0);
    let retries: Vec<(u64, bool)> = failed.iter().map(|f| (f.0, f.2)).collect();
    assert_eq!(retries, vec![(2, true), (3, false), (4, true), (5, false)]);
}

/// `Box<dyn Error>` (not `Send`) works as the handler's error type, and a boxed
/// `Permanent` is recognised.
#[tokio::test]
async fn boxed_errors_work_and_boxed_permanent_is_recognised() {
    let fake = FakeQueue::start((1..=2).map(|id| leased(id, 30_000)).collect()).await;
    let shutdown = CancellationToken::new();
    let worker =
        Worker::new(client(&fake).await, "jobs").reserve_timeout(Duration::from_millis(100));
    let run = tokio::spawn(worker.run(shutdown.clone(), |job: LeasedJob| async move {
        let e: Box<dyn std::error::Error> = if job.id == 1 {
            "disk full".into()
        } else {
            // Made outside the handler's task-local scope: found by type, not by flag.
            Box::new(std::thread::spawn(|| permanent("bad input")).join().unwrap())
        };
        Err(e)
    }));
    eventually("2 nacks", || fake.with(|r| r.nacked.len()) == 2).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let mut nacked = fake.with(|r| r.nacked.clone());
    nacked.sort_by_key(|n| n.0);
    assert_eq!(
        nacked,
        vec![
            (1, "disk full".to_owned(), RetryHint::Backoff),
            (2, "bad input".to_owned(), RetryHint::Never)
        ]
    );
}

/// Shutdown stops taking jobs but waits for running handlers and sends their acks before
/// `run` returns.
#[tokio::test]
async fn shutdown_waits_for_running_handlers_and_their_acks() {
    let fake = FakeQueue::start((1..=4).map(|id| leased(id, 30_000)).collect()).await;
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let shutdown = CancellationToken::new();
    let worker = Worker::new(client(&fake).await, "jobs")
        .concurrency(2)
        .reserve_timeout(Duration::from_millis(100));
    let (s, g) = (started.clone(), gate.clone());
    let mut run = tokio::spawn(worker.run(shutdown.clone(), move |_job: LeasedJob| {
        let (started, gate) = (s.clone(), g.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            Ok::<(), String>(())
        }
    }));
    eventually("two handlers running", || started.load(Ordering::SeqCst) == 2).await;
    shutdown.cancel();
    // Give a wrong implementation time to return early; a right one cannot.
    let early = tokio::time::timeout(Duration::from_millis(200), &mut run).await;
    assert!(early.is_err(), "run returned while handlers were still running: {early:?}");
    assert!(fake.with(|r| r.acked.is_empty()));

    gate.add_permits(2);
    tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap().unwrap();
    let mut acked = fake.with(|r| r.acked.clone());
    acked.sort();
    assert_eq!(acked, vec![1, 2], "both acks sent before run returned");
    assert_eq!(started.load(Ordering::SeqCst), 2, "no job started after shutdown");
    assert_eq!(fake.with(|r| r.ready.len()), 2, "the other jobs were not reserved");
}

/// A handler that outlives a third of its lease gets the lease touched, repeatedly.
#[tokio::test]
async fn long_handlers_get_their_lease_touched() {
    let fake = FakeQueue::start(vec![leased(1, 600)]).await;
    let shutdown = CancellationToken::new();
    let worker =
        Worker::new(client(&fake).await, "jobs").reserve_timeout(Duration::from_millis(100));
    let f = fake.clone();
    let run = tokio::spawn(worker.run(shutdown.clone(), move |_job: LeasedJob| {
        let fake = f.clone();
        async move {
            eventually("two touches", || fake.with(|r| r.touched.len()) >= 2).await;
            Ok::<(), String>(())
        }
    }));
    eventually("job acked", || fake.with(|r| r.acked.len()) == 1).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert!(fake.with(|r| r.touched.iter().all(|&id| id == 1)));
}

/// The handler succeeded but the lease was lost meanwhile: the ack is refused, and the
/// worker reports a failure rather than a completion.
#[tokio::test]
async fn an_ack_with_a_lost_lease_is_reported_as_failed() {
    let fake = FakeQueue::start(vec![leased(1, 30_000)]).await;
    fake.with(|r| r.lost.insert(100));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let completed = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (f, c) = (failed.clone(), completed.clone());
    let worker = Worker::new(client(&fake).await, "jobs")
        .reserve_timeout(Duration::from_millis(100))
        .on_failed(move |job, err, _| f.lock().unwrap().push((job.id, err.to_owned())))
        .on_completed(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
    let run = tokio::spawn(
        worker.run(shutdown.clone(), |_job: LeasedJob| async { Ok::<(), String>(()) }),
    );
    eventually("ack refused", || !failed.lock().unwrap().is_empty()).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let failed = failed.lock().unwrap().clone();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.contains("lease expired"), "{failed:?}");
    assert_eq!(completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn invalid_worker_settings_fail_at_once() {
    let fake = FakeQueue::start(vec![]).await;
    let c = client(&fake).await;
    let noop = |_job: LeasedJob| async { Ok::<(), String>(()) };
    let err = Worker::new(c.clone(), "bad name").run(CancellationToken::new(), noop).await;
    assert!(err.is_err());
    let err = Worker::new(c, "jobs").concurrency(0).run(CancellationToken::new(), noop).await;
    assert!(err.is_err());
}

/// The connection drops under a waiting reserve: the worker logs, reconnects through its
/// Client, and goes on working.
#[tokio::test]
async fn keeps_working_after_the_connection_drops() {
    let fake = FakeQueue::start(vec![leased(1, 30_000)]).await;
    fake.with(|r| r.drop_on_reserve = true);
    let shutdown = CancellationToken::new();
    let worker =
        Worker::new(client(&fake).await, "jobs").reserve_timeout(Duration::from_millis(100));
    let run = tokio::spawn(
        worker.run(shutdown.clone(), |_job: LeasedJob| async { Ok::<(), String>(()) }),
    );
    eventually("job acked after reconnecting", || fake.with(|r| r.acked.len()) == 1).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(fake.connections.load(Ordering::SeqCst), 2);
}
