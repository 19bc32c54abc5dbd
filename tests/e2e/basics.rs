//! add -> reserve -> ack, delays, priorities, bulk adds, idempotency keys: on both backends.

use std::time::{Duration, Instant};

use qd_client::Job;

use crate::support::{counts, on_both, wait_for_completed};

on_both! {
    async fn add_reserve_ack(b) {
        let (server, _dir) = b.start();
        let client = server.client().await;
        let id =
            client.add("emails", Job::new("welcome", &b"alice@example.com"[..])).await.unwrap();
        b.expect_counts(&client, "emails", (1, 0, 0, 0, 0)).await;

        let jobs = client.reserve(&["emails"], 10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(jobs.len(), 1);
        let job = &jobs[0];
        assert_eq!(
            (job.id, job.name.as_str(), &job.payload[..]),
            (id, "welcome", &b"alice@example.com"[..])
        );
        assert_eq!((job.attempt, job.queue.as_str()), (1, "emails"));
        b.expect_counts(&client, "emails", (0, 0, 1, 0, 0)).await;

        client.ack(job).await.unwrap();
        b.expect_counts(&client, "emails", (0, 0, 0, 0, b.retained(1))).await;
        // A drained queue stays listed, with its totals (`qd bench` waits on them).
        wait_for_completed(&client, "emails", 1).await;
        // A second ack of the same delivery is refused: the job is gone.
        assert!(client.ack(job).await.is_err());
    }
}

on_both! {
    async fn priorities_then_fifo(b) {
        let (server, _dir) = b.start();
        let client = server.client().await;
        let low = client.add("q", Job::new("low", "1").priority(10)).await.unwrap();
        let first = client.add("q", Job::new("a", "2")).await.unwrap();
        let urgent = client.add("q", Job::new("urgent", "3").priority(-5)).await.unwrap();
        let second = client.add("q", Job::new("b", "4")).await.unwrap();
        let jobs = client.reserve(&["q"], 10, Duration::ZERO).await.unwrap();
        let order: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(order, vec![urgent, first, second, low]);
    }
}

on_both! {
    async fn delayed_job_waits_then_wakes_a_blocked_reserve(b) {
        let (server, _dir) = b.start();
        let client = server.client().await;
        let added = Instant::now();
        let job = Job::new("tick", "").delay(Duration::from_millis(300));
        let id = client.add("later", job).await.unwrap();
        if b.is_postgres() {
            // Counts may be 200 ms old there, and the delay is 300 ms: read once, at once.
            assert_eq!(counts(&client, "later").await.1, 1, "counted as delayed");
        } else {
            b.expect_counts(&client, "later", (0, 1, 0, 0, 0)).await;
        }
        assert!(client.reserve(&["later"], 1, Duration::ZERO).await.unwrap().is_empty());
        // A blocking reserve is answered when the delay is over.
        let jobs = client.reserve(&["later"], 1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
        assert!(added.elapsed() >= Duration::from_millis(300), "delivered before its delay");
    }
}

on_both! {
    async fn blocked_reserve_wakes_on_add_and_times_out_empty(b) {
        let (server, _dir) = b.start();
        let worker = server.client().await;
        let producer = server.client().await;
        let waiting = tokio::spawn(async move {
            worker.reserve(&["wake"], 1, Duration::from_secs(30)).await
        });
        // Make sure the reserve is parked before adding (an active waiter, not yet served).
        tokio::task::yield_now().await;
        let id = producer.add("wake", Job::new("x", "")).await.unwrap();
        let jobs =
            tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);

        let empty =
            producer.reserve(&["nothing-here"], 1, Duration::from_millis(100)).await.unwrap();
        assert!(empty.is_empty());
    }
}

on_both! {
    async fn bulk_add_and_bulk_reserve(b) {
        let (server, _dir) = b.start();
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
        b.expect_counts(&client, "bulk", (0, 0, 0, 0, b.retained(500))).await;
    }
}

on_both! {
    async fn bulk_add_is_all_or_nothing(b) {
        let (server, _dir) = b.start();
        let client = server.client().await;
        let jobs = vec![Job::new("ok", ""), Job::new("bad", "").attempts(0)];
        assert!(client.add_bulk("atomic", jobs).await.is_err());
        b.expect_counts(&client, "atomic", (0, 0, 0, 0, 0)).await;
    }
}

on_both! {
    async fn idempotency_key_returns_the_pending_job(b) {
        let (server, _dir) = b.start();
        let client = server.client().await;
        let a = client.add("k", Job::new("sync", "1").key("user-42")).await.unwrap();
        let c = client.add("k", Job::new("sync", "2").key("user-42")).await.unwrap();
        assert_eq!(a, c);
        // A key repeated within one bulk add names one job too.
        let bulk = client
            .add_bulk("k", vec![Job::new("b", "1").key("b"), Job::new("b", "2").key("b")])
            .await
            .unwrap();
        assert_eq!(bulk[0], bulk[1], "a key repeated within one add names one job");
        b.expect_counts(&client, "k", (2, 0, 0, 0, 0)).await;
        let jobs = client.reserve(&["k"], 1, Duration::ZERO).await.unwrap();
        assert_eq!(jobs[0].id, a);
        client.ack(&jobs[0]).await.unwrap();
        let d = client.add("k", Job::new("sync", "3").key("user-42")).await.unwrap();
        assert_ne!(a, d, "a completed job frees its key");
    }
}

on_both! {
    async fn reserve_takes_queues_in_the_order_given(b) {
        let (server, _dir) = b.start();
        let client = server.client().await;
        let low = client.add("low", Job::new("x", "")).await.unwrap();
        let high = client.add("high", Job::new("x", "")).await.unwrap();
        let got = client.reserve(&["high", "low"], 1, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].id, high);
        let got = client.reserve(&["high", "low"], 1, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].id, low);
    }
}
