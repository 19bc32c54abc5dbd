//! Uniqueness beyond the idempotency key (throttle windows, debounce), expiry, results and
//! waiting, through the client against a real server.

use std::time::Duration;

use qd_client::{Job, JobOutcome, RetryHint};

use crate::support::{self, eventually};

const LONG: Duration = Duration::from_secs(20);

fn stats_of(stats: &[qd_client::QueueStats], queue: &str) -> qd_client::QueueStats {
    stats.iter().find(|s| s.queue == queue).cloned().expect("queue in stats")
}

#[tokio::test]
async fn throttle_window_outlives_the_job_and_a_restart() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let job =
        || Job::new("report", "x").key("daily").unique_for(Duration::from_secs(3600)).attempts(1);
    let first = client.add("reports", job()).await.unwrap();
    let leased = client.reserve(&["reports"], 1, LONG).await.unwrap();
    assert_eq!(leased[0].id, first);
    // Dead: the key no longer deduplicates as a pending job's would, but the window holds.
    client.nack(&leased[0], "smtp down", RetryHint::Never).await.unwrap();
    assert_eq!(client.add("reports", job()).await.unwrap(), first);
    // The window is rebuilt from the stored (dead) record after a crash.
    let server = server.kill9_and_restart().await;
    let client = server.client().await;
    assert_eq!(client.add("reports", job()).await.unwrap(), first);
    // A plain add of the same key is a new job: only pending jobs deduplicate it.
    let plain = client.add("reports", Job::new("report", "y").key("daily")).await.unwrap();
    assert_ne!(plain, first);
}

#[tokio::test]
async fn throttle_window_ends() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let job = || Job::new("ping", "x").key("k").unique_for(Duration::from_millis(200));
    let first = client.add("pings", job()).await.unwrap();
    let leased = client.reserve(&["pings"], 1, LONG).await.unwrap();
    client.ack(&leased[0]).await.unwrap();
    // Within the window the add answers with the first job; once it ends, a new one.
    let second = eventually(LONG, "the throttle window to end", || {
        let client = client.clone();
        async move { client.add("pings", job()).await.ok().filter(|&id| id != first) }
    })
    .await;
    assert!(second > first);
}

#[tokio::test]
async fn debounce_keeps_one_job_with_the_last_payload() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let job = |p: &str| {
        Job::new("reindex", p.to_owned()).key("doc-7").debounce().delay(Duration::from_millis(300))
    };
    let id = client.add("index", job("v1")).await.unwrap();
    assert_eq!(client.add("index", job("v2")).await.unwrap(), id);
    assert_eq!(client.add("index", job("v3")).await.unwrap(), id);
    let s = stats_of(&client.stats().await.unwrap(), "index");
    assert_eq!(s.ready + s.delayed, 1, "one job: {s:?}");
    let leased = client.reserve(&["index"], 10, LONG).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].id, &leased[0].payload[..]), (id, &b"v3"[..]));
    // It runs: the next add is a new job.
    let next = client.add("index", job("v4")).await.unwrap();
    assert_ne!(next, id);
    client.ack(&leased[0]).await.unwrap();
}

#[tokio::test]
async fn a_job_not_started_in_time_expires_into_the_dead_set() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let late = Job::new("otp", "123456")
        .delay(Duration::from_millis(100))
        .expires_in(Duration::from_millis(50));
    let id = client.add("sms", late).await.unwrap();
    let outcome = client.wait(id, LONG).await.unwrap();
    assert_eq!(outcome, JobOutcome::Dead { error: "expired".into() });
    let s = stats_of(&client.stats().await.unwrap(), "sms");
    assert_eq!((s.dead, s.expired_total, s.failed_total), (1, 1, 0));
    // No worker ever sees it.
    assert!(client.reserve(&["sms"], 1, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test]
async fn wait_for_a_result() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let id = client.add("math", Job::new("add", "2+2")).await.unwrap();
    assert_eq!(client.wait(id, Duration::from_millis(50)).await.unwrap(), JobOutcome::Pending);
    let worker = server.client().await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait(id, LONG).await }
    });
    let leased = worker.reserve(&["math"], 1, LONG).await.unwrap();
    worker.ack_with_result(&leased[0], "4").await.unwrap();
    let done = JobOutcome::Completed { result: "4".into() };
    assert_eq!(waiting.await.unwrap().unwrap(), done);
    // Asked again after the fact: answered at once from the completed ring.
    assert_eq!(client.wait(id, LONG).await.unwrap(), done);
    // A result over the limit is refused before it is sent.
    let other = client.add("math", Job::new("add", "1+1")).await.unwrap();
    let leased = worker.reserve(&["math"], 1, LONG).await.unwrap();
    assert_eq!(leased[0].id, other);
    let big = vec![0u8; qd_client::MAX_RESULT + 1];
    assert!(worker.ack_with_result(&leased[0], big).await.is_err());
}

#[tokio::test]
async fn wait_for_a_failure() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let id = client.add("mail", Job::new("send", "bob").attempts(1)).await.unwrap();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait(id, LONG).await }
    });
    let worker = server.client().await;
    let leased = worker.reserve(&["mail"], 1, LONG).await.unwrap();
    worker.nack(&leased[0], "mailbox full", RetryHint::Backoff).await.unwrap();
    let dead = JobOutcome::Dead { error: "mailbox full".into() };
    assert_eq!(waiting.await.unwrap().unwrap(), dead);
    // Already dead: the error comes from the stored record.
    assert_eq!(client.wait(id, LONG).await.unwrap(), dead);
    let err = client.wait(999_999, LONG).await.unwrap_err();
    assert!(err.to_string().contains("999999"), "{err}");
}
