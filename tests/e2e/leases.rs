use std::time::{Duration, Instant};

use qd_client::Job;
use qd_protocol::Backoff;

use crate::support::{on_both, wait_for_completed, wait_for_count};

on_both! {
async fn a_vanished_worker_releases_its_jobs_at_once(b) {
    let (server, _dir) = b.start();
    let producer = server.client().await;
    // A long lease: if the job came back only when the lease ran out, this test would wait
    // a minute and time out.
    let id = producer
        .add(
            "mail",
            Job::new("x", "").attempts(3).backoff(Backoff::NONE).lease(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    {
        let doomed = server.client().await;
        let jobs = doomed.reserve(&["mail"], 1, Duration::ZERO).await.unwrap();
        assert_eq!(jobs[0].id, id);
        b.expect_counts(&producer, "mail", (0, 0, 1, 0, 0)).await;
    } // the worker's connection drops here

    let started = Instant::now();
    let other = server.client().await;
    let jobs = other.reserve(&["mail"], 1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(jobs.len(), 1, "the job came back");
    assert_eq!((jobs[0].id, jobs[0].attempt), (id, 2), "the lost try counts as an attempt");
    assert!(started.elapsed() < Duration::from_secs(20));
    other.ack(&jobs[0]).await.unwrap();
}
}

on_both! {
async fn a_worker_that_outlives_its_lease_cannot_ack(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let id = client
        .add(
            "slow",
            Job::new("x", "").attempts(3).backoff(Backoff::NONE).lease(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let slow = server.client().await;
    let first = slow.reserve(&["slow"], 1, Duration::ZERO).await.unwrap().remove(0);

    // The lease runs out; another worker gets the job again as attempt 2.
    let fast = server.client().await;
    let second = fast.reserve(&["slow"], 1, Duration::from_secs(20)).await.unwrap().remove(0);
    assert_eq!((second.id, second.attempt), (id, 2));

    let err = slow.ack(&first).await.unwrap_err();
    assert!(err.is_lease_lost(), "late ack must be refused as lease lost, got {err}");
    fast.ack(&second).await.unwrap();
    b.expect_counts(&client, "slow", (0, 0, 0, 0, b.retained(1))).await;
}
}

on_both! {
async fn touch_keeps_a_long_job_leased(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    client
        .add("long", Job::new("x", "").backoff(Backoff::NONE).lease(Duration::from_millis(300)))
        .await
        .unwrap();
    let job = client.reserve(&["long"], 1, Duration::ZERO).await.unwrap().remove(0);
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        client.touch(&job, None).await.unwrap();
        if !b.is_postgres() {
            // (The postgres backend's counts may be 200 ms old: its check is below.)
            assert_eq!(crate::support::counts(&client, "long").await.2, 1, "still active");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still leased after three lease lengths: the ack is taken.
    b.expect_counts(&client, "long", (0, 0, 1, 0, 0)).await;
    client.ack(&job).await.unwrap();
}
}

on_both! {
async fn expired_lease_without_attempts_left_goes_dead(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    client
        .add("once", Job::new("x", "").attempts(1).lease(Duration::from_millis(100)))
        .await
        .unwrap();
    let _job = client.reserve(&["once"], 1, Duration::ZERO).await.unwrap();
    wait_for_count(&client, "once", 3, 1).await;
}
}

on_both! {
async fn the_worker_heartbeats_a_job_that_outlives_its_lease(b) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let (server, _dir) = b.start();
    let client = server.client().await;
    // The handler runs three times as long as the lease; without heartbeats the job would
    // expire, be retried, and run more than once.
    client
        .add(
            "hb",
            Job::new("x", "").attempts(3).backoff(Backoff::NONE).lease(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let seen = runs.clone();
    let stop = qd_client::CancellationToken::new();
    let worker = qd_client::Worker::new(server.client().await, "hb").concurrency(2);
    let token = stop.clone();
    let task = tokio::spawn(async move {
        worker
            .run_simple(token, move |job: qd_client::LeasedJob| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(job.attempt, 1, "the job was retried although its worker was alive");
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    Ok::<(), String>(())
                }
            })
            .await
            .unwrap();
    });
    wait_for_completed(&client, "hb", 1).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "ran exactly once");
    b.expect_counts(&client, "hb", (0, 0, 0, 0, b.retained(1))).await;
}
}
