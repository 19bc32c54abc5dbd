//! Lifecycle event subscriptions (issue 9) through the real client: what a subscriber sees,
//! what a slow one loses, and that an announced change survives kill -9.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use qd_client::{Event, EventKind, Job, JobEvent, RetryHint, Subscription};
use qd_protocol::Backoff;

use crate::support;

const LIMIT: Duration = Duration::from_secs(20);

/// The next item of `events`, within [`LIMIT`].
async fn next(events: &mut Subscription) -> Event {
    match tokio::time::timeout(LIMIT, events.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event within {LIMIT:?}, got {other:?}"),
    }
}

/// The next job event, failing on a `Lagged` or `Resubscribed` (none is expected here).
async fn next_job(events: &mut Subscription) -> JobEvent {
    match next(events).await {
        Event::Job(e) => e,
        other => panic!("expected a job event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscriber_sees_its_queue_complete_fail_and_dead_letter_and_nothing_else() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let mut events = client.subscribe(["mail"]).await.unwrap();
    let no_backoff = Backoff::Fixed { delay_ms: 0 };

    let flaky = client.add("mail", Job::new("send", "a").attempts(2).backoff(no_backoff)).await;
    let flaky = flaky.unwrap();
    let job = &client.reserve(&["mail"], 1, Duration::ZERO).await.unwrap()[0];
    client.nack(job, "smtp timeout", RetryHint::Backoff).await.unwrap();
    // Another queue's whole life happens in between: none of it may show.
    client.add("other", Job::new("x", "")).await.unwrap();
    let other = &client.reserve(&["other"], 1, Duration::ZERO).await.unwrap()[0];
    client.ack(other).await.unwrap();
    let job = support::eventually(LIMIT, "the retry is ready", || async {
        client.reserve(&["mail"], 1, Duration::ZERO).await.unwrap().pop()
    })
    .await;
    client.ack(&job).await.unwrap();
    let doomed = client.add("mail", Job::new("send", "b").attempts(1)).await.unwrap();
    let job = &client.reserve(&["mail"], 1, Duration::ZERO).await.unwrap()[0];
    client.nack(job, "bad address", RetryHint::Backoff).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..5 {
        let e = next_job(&mut events).await;
        assert_eq!((e.queue.as_str(), e.name.as_str()), ("mail", "send"), "{e:?}");
        seen.push((e.id, e.kind));
    }
    assert!(
        matches!(&seen[1], (id, EventKind::Failed { error, .. }) if *id == flaky && error == "smtp timeout"),
        "{seen:?}"
    );
    seen[1].1 = EventKind::Failed { error: String::new(), run_at_ms: 0 };
    assert_eq!(
        seen,
        vec![
            (flaky, EventKind::Added),
            (flaky, EventKind::Failed { error: String::new(), run_at_ms: 0 }),
            (flaky, EventKind::Completed),
            (doomed, EventKind::Added),
            (doomed, EventKind::DeadLettered { error: "bad address".into() }),
        ]
    );
    // Nothing of queue `other` is waiting behind them either.
    client.add("mail", Job::new("send", "c")).await.unwrap();
    let e = next_job(&mut events).await;
    assert_eq!((e.queue.as_str(), e.kind), ("mail", EventKind::Added));
}

/// A subscriber that does not read while thousands of jobs go by loses events, is told how
/// many, and neither slows nor breaks the server; every event is either delivered or counted.
#[tokio::test]
async fn a_slow_subscriber_gets_lagged_and_the_server_stays_fine() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let slow = server.client().await;
    let mut events = slow.subscribe(["bulk"]).await.unwrap();

    const JOBS: usize = 3000;
    for _ in 0..JOBS / 500 {
        let jobs = (0..500).map(|i| Job::new("n", format!("{i}"))).collect();
        client.add_bulk("bulk", jobs).await.unwrap();
    }
    let mut acked = 0;
    while acked < JOBS {
        let jobs = client.reserve(&["bulk"], 500, Duration::ZERO).await.unwrap();
        client.ack_many(&jobs).await.unwrap();
        acked += jobs.len();
    }
    // The server answers as usual, the subscriber's own connection too. Its `Pong` comes
    // behind every event of those acks (they went out at their commit, before the acks'
    // answers), so from here on they are all buffered here or counted as missed.
    assert_eq!(support::counts(&client, "bulk").await.4 as usize, 1000.min(JOBS));
    slow.ping().await.unwrap();

    let (mut delivered, mut missed) = (0u64, 0u64);
    let mut count = |event: Event| match event {
        Event::Job(_) => delivered += 1,
        Event::Lagged { missed: n } => missed += n,
        other => panic!("unexpected {other:?}"),
    };
    // Read what is buffered, up to the Lagged that ends it.
    while let Some(event) = events.next().now_or_never() {
        count(event.expect("the stream never ends").unwrap());
    }
    // A last job marks the end: the server sends any count it still holds ahead of it.
    let last = client.add("bulk", Job::new("last", "")).await.unwrap();
    loop {
        match next(&mut events).await {
            Event::Job(e) if e.id == last => break,
            event => count(event),
        }
    }
    assert!(missed > 0, "a subscriber that did not read lost nothing: buffering is unbounded");
    assert_eq!(delivered + missed, 2 * JOBS as u64, "every add and ack is delivered or counted");
}

/// An event announces only what is durable: every job a subscriber heard of as added is
/// still there after kill -9 right after hearing it.
#[tokio::test]
async fn an_announced_add_survives_kill_9() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let mut events = client.subscribe(Vec::<String>::new()).await.unwrap();
    let producer = server.client().await;
    let adding = tokio::spawn(async move {
        for i in 0..200 {
            if producer.add("durable", Job::new("n", format!("{i}"))).await.is_err() {
                break; // the server was killed under us
            }
        }
    });
    let mut announced = Vec::new();
    while announced.len() < 20 {
        let e = next_job(&mut events).await;
        assert_eq!(e.kind, EventKind::Added);
        announced.push(e.id);
    }
    let server = server.kill9_and_restart().await;
    let _ = adding.await;
    let client = server.client().await;
    for id in announced {
        client.job(id).await.unwrap_or_else(|e| panic!("announced job {id} lost: {e}"));
    }
}

/// A restart of the server breaks the connection: the stream renews the subscription on
/// its own, says events may have been missed, and goes on.
#[tokio::test]
async fn a_subscription_is_renewed_after_the_server_restarts() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let mut events = client.subscribe(["renew"]).await.unwrap();
    client.add("renew", Job::new("n", "")).await.unwrap();
    assert_eq!(next_job(&mut events).await.kind, EventKind::Added);

    let server = server.kill9_and_restart().await;
    assert_eq!(next(&mut events).await, Event::Resubscribed);
    let id = server.client().await.add("renew", Job::new("n", "")).await.unwrap();
    let e = next_job(&mut events).await;
    assert_eq!((e.id, e.kind), (id, EventKind::Added));
}
