//! Flow control end to end (issue 9): queue limits set through the client and `qd limits`,
//! persisted across a kill -9; concurrency releasing a blocked reserve on ack; groups
//! taking turns; a worker's `RateLimited` nack holding the queue without using an attempt.

use std::process::Command;
use std::time::{Duration, Instant};

use qd_client::{Job, QueueLimits, Rate, RetryHint};

use crate::support::{self, qd_bin, Server};

#[tokio::test]
async fn limits_survive_kill9_and_an_ack_frees_a_concurrency_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(&dir.path().join("data"), &[]);
    let client = server.client().await;
    let limits = QueueLimits {
        rate: Some(Rate::new(1000, 1000)),
        concurrency: Some(1),
        group_concurrency: None,
        group_rate: None,
    };
    client.set_queue_limits("c", limits).await.unwrap();
    let bad = QueueLimits { concurrency: Some(0), ..limits };
    let e = client.set_queue_limits("c", bad).await.unwrap_err();
    assert!(e.to_string().contains("concurrency is 0"), "{e}");
    drop(client);
    let server = server.kill9_and_restart().await;
    let client = server.client().await;
    let q = client.queues().await.unwrap().into_iter().find(|q| q.name == "c").unwrap();
    assert_eq!(q.limits, limits, "limits survive a kill -9");

    client.add_bulk("c", vec![Job::new("x", "1"), Job::new("x", "2")]).await.unwrap();
    let first = client.reserve(&["c"], 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1, "concurrency 1");
    let other = server.client().await;
    let waiting =
        tokio::spawn(
            async move { other.reserve(&["c"], 10, Duration::from_secs(20)).await.unwrap() },
        );
    // The parked reserve gets the second job when the first is acked, not before.
    support::eventually(Duration::from_secs(10), "the reserve parked", || async {
        let q = client.queues().await.unwrap().into_iter().find(|q| q.name == "c").unwrap();
        (q.ready == 1 && q.active == 1).then_some(())
    })
    .await;
    assert!(!waiting.is_finished());
    client.ack(&first[0]).await.unwrap();
    let second = waiting.await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(&second[0].payload[..], b"2");
}

#[tokio::test]
async fn groups_take_turns_and_leases_name_their_group() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let big: Vec<Job> = (0..200).map(|i| Job::new("x", format!("big{i}")).group("big")).collect();
    client.add_bulk("g", big).await.unwrap();
    client.add("g", Job::new("x", "small").group("small")).await.unwrap();
    let jobs = client.reserve(&["g"], 2, Duration::ZERO).await.unwrap();
    let groups: Vec<Option<&str>> = jobs.iter().map(|j| j.group.as_deref()).collect();
    assert_eq!(groups, [Some("big"), Some("small")], "the small group's turn comes second");
}

#[tokio::test]
async fn a_rate_limited_nack_holds_the_queue_without_an_attempt() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    client.add("r", Job::new("x", "email").attempts(1)).await.unwrap();
    let job = client.reserve(&["r"], 1, Duration::ZERO).await.unwrap().remove(0);
    let held_at = Instant::now();
    client
        .nack(&job, "429 from the provider", RetryHint::RateLimited { delay_ms: 700 })
        .await
        .unwrap();
    assert!(client.reserve(&["r"], 1, Duration::ZERO).await.unwrap().is_empty(), "held");
    let q = client.queues().await.unwrap().into_iter().find(|q| q.name == "r").unwrap();
    assert!(q.rate_limited_until_ms.is_some());
    let again = client.reserve(&["r"], 1, Duration::from_secs(20)).await.unwrap();
    assert!(held_at.elapsed() >= Duration::from_millis(600), "{:?}", held_at.elapsed());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1, "with attempts(1) a counted failure would have killed it");
}

#[tokio::test]
async fn the_cli_sets_limits() {
    let (server, _dir) = support::start();
    let addr = server.addr.clone();
    let out = Command::new(qd_bin())
        .args(["limits", "q", "--rate", "100/1s", "--concurrency", "10"])
        .args(["--group-concurrency", "1", "--addr", &addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--rate 100/1s --concurrency 10 --group-concurrency 1"), "{stdout}");
    let client = server.client().await;
    let q = client.queues().await.unwrap().into_iter().find(|q| q.name == "q").unwrap();
    assert_eq!(q.limits.rate, Some(Rate::new(100, 1000)));
    assert_eq!((q.limits.concurrency, q.limits.group_concurrency), (Some(10), Some(1)));
    let out = Command::new(qd_bin())
        .args(["limits", "q", "--rate", "lots", "--addr", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAX/DURATION"));
}
