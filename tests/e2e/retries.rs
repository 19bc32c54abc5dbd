use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qd_client::{Job, RetryHint, Worker};
use qd_protocol::Backoff;
use qd_server::store::{JournalConfig, JournaledStore, SledConfig, Store};
use tokio_util::sync::CancellationToken;

use crate::support::{self, on_both, wait_for_completed, wait_for_count};

/// Runs a Worker on `queue` until cancelled; returns its task.
fn spawn_worker<F>(
    client: qd_client::Client,
    queue: &str,
    handler: F,
) -> (CancellationToken, tokio::task::JoinHandle<()>)
where
    F: Fn(qd_client::LeasedJob) -> Result<(), String> + Send + Sync + 'static,
{
    let token = CancellationToken::new();
    let worker = Worker::new(client, queue).concurrency(5);
    let handler = Arc::new(handler);
    let t = token.clone();
    let task = tokio::spawn(async move {
        worker
            .run_simple(t, move |job| {
                let handler = handler.clone();
                async move { handler(job) }
            })
            .await
            .expect("worker ran");
    });
    (token, task)
}

on_both! {
async fn fails_twice_then_completes_on_attempt_3(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let id = client
        .add(
            "flaky",
            Job::new("welcome", "bob").attempts(3).backoff(Backoff::Fixed { delay_ms: 20 }),
        )
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (stop, task) = spawn_worker(server.client().await, "flaky", move |job| {
        log.lock().unwrap().push((job.id, job.attempt));
        if job.attempt < 3 {
            Err(format!("smtp timeout on try {}", job.attempt))
        } else {
            Ok(())
        }
    });
    wait_for_completed(&client, "flaky", 1).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(id, 1), (id, 2), (id, 3)]);
    b.expect_counts(&client, "flaky", (0, 0, 0, 0, b.retained(1))).await;
}
}

/// Embedded only: it reads the dead record from the sled store on disk (on both backends,
/// `admin::job_detail_keeps_every_tries_error` checks the errors through the API).
#[tokio::test]
async fn always_failing_job_is_dead_with_every_error_recorded() {
    let (mut server, dir) = support::start();
    let client = server.client().await;
    let id = client
        .add(
            "doomed",
            Job::new("welcome", "x").attempts(3).backoff(Backoff::Fixed { delay_ms: 10 }),
        )
        .await
        .unwrap();
    let (stop, task) =
        spawn_worker(server.client().await, "doomed", |job| Err(format!("boom {}", job.attempt)));
    wait_for_count(&client, "doomed", 3, 1).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(support::counts(&client, "doomed").await, (0, 0, 0, 1, 0));
    drop(client);

    // The dead record on disk carries all three failures, in order.
    assert!(server.terminate().success());
    let config = SledConfig { path: dir.path().join("data"), cache_capacity: 8 << 20 };
    let mut store = JournaledStore::open(&config, JournalConfig::default()).unwrap();
    let mut found = None;
    store
        .recover(&mut |r| {
            if r.id == id {
                found = Some(r);
            }
        })
        .unwrap();
    let record = found.expect("dead job kept");
    let errors: Vec<(u32, &str)> =
        record.errors.iter().map(|e| (e.attempt, e.message.as_str())).collect();
    assert_eq!(errors, vec![(1, "boom 1"), (2, "boom 2"), (3, "boom 3")]);
}

on_both! {
async fn retry_spacing_follows_the_backoff(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let backoff = Backoff::Exponential { base_ms: 100, max_ms: 10_000, jitter_pct: 0 };
    client.add("spaced", Job::new("x", "").attempts(3).backoff(backoff)).await.unwrap();
    let starts = Arc::new(Mutex::new(HashMap::new()));
    let log = starts.clone();
    let (stop, task) = spawn_worker(server.client().await, "spaced", move |job| {
        log.lock().unwrap().insert(job.attempt, Instant::now());
        Err("nope".to_string())
    });
    wait_for_count(&client, "spaced", 3, 1).await;
    stop.cancel();
    task.await.unwrap();
    let starts = starts.lock().unwrap();
    // Only lower bounds: the server never retries early. Upper bounds would test the
    // machine's load, not qd.
    let gap1 = starts[&2] - starts[&1];
    let gap2 = starts[&3] - starts[&2];
    assert!(gap1 >= Duration::from_millis(100), "first retry after {gap1:?}, backoff is 100 ms");
    assert!(gap2 >= Duration::from_millis(200), "second retry after {gap2:?}, backoff is 200 ms");
}
}

on_both! {
async fn nack_never_dead_letters_at_once(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    client.add("perm", Job::new("x", "").attempts(5)).await.unwrap();
    let jobs = client.reserve(&["perm"], 1, Duration::ZERO).await.unwrap();
    client.nack(&jobs[0], "invalid address", RetryHint::Never).await.unwrap();
    b.expect_counts(&client, "perm", (0, 0, 0, 1, 0)).await;
}
}

on_both! {
async fn permanent_error_from_a_handler_skips_the_retries(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    client.add("perm2", Job::new("x", "").attempts(5).backoff(Backoff::NONE)).await.unwrap();
    let token = CancellationToken::new();
    let worker = Worker::new(server.client().await, "perm2").concurrency(1);
    let t = token.clone();
    let task = tokio::spawn(async move {
        worker
            .run(t, |_ctx| async { Err(qd_client::permanent(anyhow::anyhow!("account closed"))) })
            .await
            .unwrap();
    });
    wait_for_count(&client, "perm2", 3, 1).await;
    token.cancel();
    task.await.unwrap();
}
}
