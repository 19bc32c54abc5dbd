use std::time::{Duration, Instant};

use qd_client::Job;

use crate::support::{self, counts};

#[tokio::test]
async fn add_reserve_ack() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let id = client.add("emails", Job::new("welcome", &b"alice@example.com"[..])).await.unwrap();
    assert_eq!(counts(&client, "emails").await, (1, 0, 0, 0, 0));

    let jobs = client.reserve(&["emails"], 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        (job.id, job.name.as_str(), &job.payload[..]),
        (id, "welcome", &b"alice@example.com"[..])
    );
    assert_eq!((job.attempt, job.queue.as_str()), (1, "emails"));
    assert_eq!(counts(&client, "emails").await, (0, 0, 1, 0, 0));

    client.ack(job).await.unwrap();
    assert_eq!(counts(&client, "emails").await, (0, 0, 0, 0, 1));
    // A second ack of the same delivery is refused: the job is gone.
    assert!(client.ack(job).await.is_err());
}

#[tokio::test]
async fn priorities_then_fifo() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let low = client.add("q", Job::new("low", "1").priority(10)).await.unwrap();
    let first = client.add("q", Job::new("a", "2")).await.unwrap();
    let urgent = client.add("q", Job::new("urgent", "3").priority(-5)).await.unwrap();
    let second = client.add("q", Job::new("b", "4")).await.unwrap();
    let jobs = client.reserve(&["q"], 10, Duration::ZERO).await.unwrap();
    let order: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(order, vec![urgent, first, second, low]);
}

#[tokio::test]
async fn delayed_job_waits_then_wakes_a_blocked_reserve() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let added = Instant::now();
    let id =
        client.add("later", Job::new("tick", "").delay(Duration::from_millis(300))).await.unwrap();
    assert_eq!(counts(&client, "later").await.1, 1, "counted as delayed");
    assert!(client.reserve(&["later"], 1, Duration::ZERO).await.unwrap().is_empty());
    // A blocking reserve is answered when the delay is over, without polling.
    let jobs = client.reserve(&["later"], 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert!(added.elapsed() >= Duration::from_millis(300), "delivered before its delay");
}

#[tokio::test]
async fn blocked_reserve_wakes_on_add_and_times_out_empty() {
    let (server, _dir) = support::start();
    let worker = server.client().await;
    let producer = server.client().await;
    let waiting =
        tokio::spawn(async move { worker.reserve(&["wake"], 1, Duration::from_secs(30)).await });
    // Make sure the reserve is parked before adding (it is an active waiter, not yet served).
    tokio::task::yield_now().await;
    let id = producer.add("wake", Job::new("x", "")).await.unwrap();
    let jobs =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);

    let empty = producer.reserve(&["nothing-here"], 1, Duration::from_millis(100)).await.unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn bulk_add_and_bulk_reserve() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let jobs: Vec<Job> = (0..500).map(|i| Job::new("bulk", format!("{i}"))).collect();
    let ids = client.add_bulk("bulk", jobs).await.unwrap();
    assert_eq!(ids.len(), 500);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend in request order");
    let got = client.reserve(&["bulk"], 1000, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 500);
    for (i, job) in got.iter().enumerate() {
        assert_eq!(&job.payload[..], format!("{i}").as_bytes(), "FIFO within a priority");
    }
    client.ack_many(&got).await.unwrap();
    assert_eq!(counts(&client, "bulk").await, (0, 0, 0, 0, 500));
}

#[tokio::test]
async fn bulk_add_is_all_or_nothing() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let jobs = vec![Job::new("ok", ""), Job::new("bad", "").attempts(0)];
    assert!(client.add_bulk("atomic", jobs).await.is_err());
    assert_eq!(counts(&client, "atomic").await, (0, 0, 0, 0, 0));
}

#[tokio::test]
async fn idempotency_key_returns_the_pending_job() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let a = client.add("k", Job::new("sync", "1").key("user-42")).await.unwrap();
    let b = client.add("k", Job::new("sync", "2").key("user-42")).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(counts(&client, "k").await.0, 1);
    let jobs = client.reserve(&["k"], 1, Duration::ZERO).await.unwrap();
    client.ack(&jobs[0]).await.unwrap();
    let c = client.add("k", Job::new("sync", "3").key("user-42")).await.unwrap();
    assert_ne!(a, c, "a completed job frees its key");
}

#[tokio::test]
async fn reserve_takes_queues_in_the_order_given() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let low = client.add("low", Job::new("x", "")).await.unwrap();
    let high = client.add("high", Job::new("x", "")).await.unwrap();
    let got = client.reserve(&["high", "low"], 1, Duration::ZERO).await.unwrap();
    assert_eq!(got[0].id, high);
    let got = client.reserve(&["high", "low"], 1, Duration::ZERO).await.unwrap();
    assert_eq!(got[0].id, low);
}
