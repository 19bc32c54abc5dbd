//! The Worker's explicit outcomes against the real server (issue 9): retry, retry-after,
//! permanent and snooze each do what they say (a snooze uses no attempt), a hung handler is
//! timed out and aborted, shutdown cancels handlers and aborts hung ones without using an
//! attempt, the dead set keeps an error's whole `{:#}` chain, and progress shows in the
//! job's detail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use qd_client::{CancellationToken, Job, JobContext, JobError, JobState, Outcome, Worker};
use qd_protocol::Backoff;
use tokio::sync::Semaphore;

use crate::support::{self, counts, eventually, wait_for_count};

/// Runs `worker` with `handler` in a task; returns its stop token and the task.
fn spawn<F, Fut>(
    worker: Worker,
    handler: F,
) -> (CancellationToken, tokio::task::JoinHandle<Result<(), qd_client::Error>>)
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Outcome, JobError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone(), handler));
    (stop, task)
}

#[tokio::test]
async fn each_outcome_does_what_it_says() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let job = |name: &str| Job::new(name, "").attempts(2).backoff(Backoff::NONE);
    let retry = client.add("wapi", job("retry")).await.unwrap();
    let perm = client.add("wapi", job("permanent")).await.unwrap();
    let after = client.add("wapi", job("after")).await.unwrap();
    let snooze = client.add("wapi", job("snooze").attempts(1)).await.unwrap();

    let tries = Arc::new(Mutex::new(Vec::new()));
    let seen = tries.clone();
    // The snooze job snoozes on its first delivery only (both deliveries are try 1).
    let snoozed = Arc::new(AtomicBool::new(false));
    let worker = Worker::new(server.client().await, "wapi")
        .concurrency(4)
        .reserve_timeout(Duration::from_millis(200));
    let (stop, task) = spawn(worker, move |ctx: JobContext| {
        seen.lock().unwrap().push((ctx.name.clone(), ctx.attempt));
        let snoozed = snoozed.clone();
        async move {
            match (ctx.name.as_str(), ctx.attempt) {
                ("retry", 1) => Err(anyhow!("smtp timeout").into()),
                ("permanent", _) => {
                    let declined: Result<(), _> = Err(anyhow!("card declined"));
                    declined.context("charging card").map_err(JobError::permanent)?;
                    unreachable!()
                }
                ("after", _) => {
                    Err(JobError::retry_after(Duration::from_secs(3600), anyhow!("HTTP 429")))
                }
                ("snooze", _) if !snoozed.swap(true, Ordering::SeqCst) => {
                    Ok(Outcome::Snooze(Duration::from_millis(300)))
                }
                _ => Ok(Outcome::Done),
            }
        }
    });
    // retry and snooze complete; permanent is dead; after waits an hour.
    wait_for_count(&client, "wapi", 4, 2).await;
    wait_for_count(&client, "wapi", 3, 1).await;
    wait_for_count(&client, "wapi", 1, 1).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let tries = tries.lock().unwrap().clone();
    let of =
        |name: &str| -> Vec<u32> { tries.iter().filter(|t| t.0 == name).map(|t| t.1).collect() };
    assert_eq!(of("retry"), [1, 2], "an error used an attempt");
    assert_eq!(of("snooze"), [1, 1], "a snooze used no attempt");
    assert_eq!(of("permanent"), [1], "permanent skipped the second attempt");
    assert_eq!(of("after"), [1]);

    let dead = client.job(perm).await.unwrap();
    assert_eq!(dead.summary.state, JobState::Dead);
    let texts: Vec<&str> = dead.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(texts, ["charging card: card declined"], "the whole chain is kept");
    let later = client.job(after).await.unwrap();
    assert_eq!(later.summary.state, JobState::Delayed);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let run_at = later.summary.run_at_ms.unwrap();
    assert!(run_at > now + 3_000_000, "retried after the hint, not the backoff: {run_at}");
    for done in [retry, snooze] {
        let job = client.job(done).await.unwrap();
        assert_eq!(job.summary.state, JobState::Completed);
    }
    let snoozed_job = client.job(snooze).await.unwrap();
    assert_eq!(snoozed_job.summary.attempts_used, 1, "completed on its first try");
}

/// A handler that ignores its token and hangs is aborted after the job's timeout plus the
/// grace; the try fails with "timed out after ..." and, on its last attempt, is dead.
#[tokio::test]
async fn a_hung_handler_is_timed_out() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let id = client
        .add("hung", Job::new("h", "").attempts(1).timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    let worker = Worker::new(server.client().await, "hung")
        .timeout_grace(Duration::from_millis(100))
        .reserve_timeout(Duration::from_millis(200));
    let (stop, task) = spawn(worker, |_ctx: JobContext| async move {
        std::future::pending::<()>().await;
        Ok(Outcome::Done)
    });
    wait_for_count(&client, "hung", 3, 1).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    let dead = client.job(id).await.unwrap();
    assert!(dead.errors[0].message.starts_with("timed out after 200ms"), "{:?}", dead.errors);
}

/// Shutdown with a hung handler: `run` returns after the grace, and the job is back in the
/// queue with no attempt used and no error recorded.
#[tokio::test]
async fn shutdown_aborts_a_hung_handler_without_using_an_attempt() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let id = client.add("stop", Job::new("s", "").attempts(1)).await.unwrap();
    let started = Arc::new(Semaphore::new(0));
    let s = started.clone();
    let worker = Worker::new(server.client().await, "stop")
        .shutdown_grace(Duration::from_millis(200))
        .reserve_timeout(Duration::from_millis(200));
    let (stop, task) = spawn(worker, move |_ctx: JobContext| {
        s.add_permits(1);
        async move {
            std::future::pending::<()>().await;
            Ok(Outcome::Done)
        }
    });
    started.acquire().await.unwrap().forget();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    assert_eq!(counts(&client, "stop").await, (1, 0, 0, 0, 0), "ready again");
    let job = client.job(id).await.unwrap();
    assert_eq!(job.summary.attempts_used, 0);
    assert!(job.errors.is_empty(), "{:?}", job.errors);
}

/// Progress reported by a running handler shows in the job's detail.
#[tokio::test]
async fn progress_shows_in_the_job_detail() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let id = client.add("prog", Job::new("p", "")).await.unwrap();
    let release = Arc::new(Semaphore::new(0));
    let r = release.clone();
    let worker =
        Worker::new(server.client().await, "prog").reserve_timeout(Duration::from_millis(200));
    let (stop, task) = spawn(worker, move |ctx: JobContext| {
        let release = r.clone();
        async move {
            ctx.progress("42").await?;
            release.acquire().await?.forget();
            Ok(Outcome::Done)
        }
    });
    let admin = client.clone();
    let progress = eventually(Duration::from_secs(10), "progress in the detail", || {
        let admin = admin.clone();
        async move { admin.job(id).await.ok().and_then(|j| j.progress) }
    })
    .await;
    assert_eq!(&progress[..], b"42");
    release.add_permits(1);
    wait_for_count(&client, "prog", 4, 1).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}
