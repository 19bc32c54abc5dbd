//! The connection layer against scripted fake servers.

use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use qd_client::{Client, Error, ErrorCode, Job};
use qd_protocol::{Request, Response, ServerFrame, WireError};

use crate::fake::{accept, accept_welcome, answer, listen, next_request};

/// Fifty adds from fifty tasks; the server reads all fifty before answering any (so the
/// client must pipeline them), then answers in reverse order. Each caller must get the id
/// meant for its own job.
#[tokio::test]
async fn pipelined_answers_out_of_order_reach_their_callers() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut wire = accept_welcome(&listener, 1000).await;
        let mut got = Vec::new();
        for _ in 0..50 {
            let (id, body) = next_request(&mut wire).await;
            let Request::Add { jobs, .. } = body else { panic!("expected Add, got {body:?}") };
            let n: u64 = jobs[0].name.strip_prefix("job-").unwrap().parse().unwrap();
            got.push((id, n));
        }
        for (id, n) in got.into_iter().rev() {
            answer(&mut wire, id, Ok(Response::Added { ids: vec![1000 + n] })).await;
        }
        wire
    });

    let client = Client::connect(addr).await.unwrap();
    let calls = (0..50u64).map(|n| {
        let client = client.clone();
        async move { (n, client.add("emails", Job::new(format!("job-{n}"), "x")).await) }
    });
    let results = tokio::time::timeout(Duration::from_secs(10), join_all(calls))
        .await
        .expect("requests were not pipelined: the server waits for all 50 before answering");
    for (n, result) in results {
        assert_eq!(result.unwrap(), 1000 + n, "caller {n} got another caller's answer");
    }
    server.await.unwrap();
}

#[tokio::test]
async fn handshake_refusal_is_reported_clearly() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut wire = accept(&listener).await;
        let refusal = WireError::new(ErrorCode::ProtocolVersion, "server speaks protocol 2");
        wire.send(&ServerFrame::Goodbye(refusal)).await.unwrap();
    });
    let err = Client::connect(addr.clone()).await.unwrap_err();
    assert!(matches!(&err, Error::Handshake { code: ErrorCode::ProtocolVersion, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&addr) && text.contains("server speaks protocol 2"), "{text}");
}

#[tokio::test]
async fn connection_refused_says_what_to_do() {
    let (listener, addr) = listen().await;
    drop(listener);
    let err = Client::connect(addr.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("cannot connect to qd at {addr}")), "{text}");
    assert!(text.contains("`qd serve` running"), "{text}");
}

/// The server drops the connection with a request in flight: that request fails with
/// `Disconnected`, and the next one reconnects and succeeds.
#[tokio::test]
async fn dropped_connection_fails_in_flight_then_reconnects() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut first = accept_welcome(&listener, 100).await;
        let _ = next_request(&mut first).await;
        drop(first);
        let mut second = accept_welcome(&listener, 100).await;
        let (id, body) = next_request(&mut second).await;
        assert!(matches!(body, Request::Stats { after: None, .. }), "{body:?}");
        answer(&mut second, id, Ok(Response::Stats { queues: vec![], next: None })).await;
        second
    });
    let client = Client::connect(addr).await.unwrap();
    let err = client.stats().await.unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    assert!(err.to_string().contains("may or may not have been applied"), "{err}");
    assert_eq!(client.stats().await.unwrap(), vec![]);
    server.await.unwrap();
}

/// A `Goodbye` fails what is in flight with the server's code, and the client reconnects.
#[tokio::test]
async fn goodbye_fails_in_flight_with_the_servers_error() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut first = accept_welcome(&listener, 100).await;
        let _ = next_request(&mut first).await;
        let bye = WireError::new(ErrorCode::ShuttingDown, "restarting");
        first.send(&ServerFrame::Goodbye(bye)).await.unwrap();
        let mut second = accept_welcome(&listener, 100).await;
        let (id, _) = next_request(&mut second).await;
        answer(&mut second, id, Ok(Response::Stats { queues: vec![], next: None })).await;
        (first, second)
    });
    let client = Client::connect(addr).await.unwrap();
    let err = client.stats().await.unwrap_err();
    assert!(matches!(&err, Error::Server { code: ErrorCode::ShuttingDown, .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(client.stats().await.is_ok());
    server.await.unwrap();
}

/// With `max_in_flight = 2`, six concurrent requests must arrive at most two at a time.
#[tokio::test]
async fn in_flight_limit_from_welcome_is_respected() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut wire = accept_welcome(&listener, 2).await;
        let mut most = 0;
        let mut answered = 0;
        while answered < 6 {
            let a = next_request(&mut wire).await;
            let b = next_request(&mut wire).await;
            let mut outstanding = 2;
            // A correct client sends nothing more until we answer; give a wrong one the
            // chance to show itself.
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(50), wire.next()).await
            {
                outstanding += 1;
            }
            most = most.max(outstanding);
            for (id, _) in [a, b] {
                answer(&mut wire, id, Ok(Response::Stats { queues: vec![], next: None })).await;
                answered += 1;
            }
            if outstanding > 2 {
                break;
            }
        }
        most
    });
    let client = Client::connect(addr).await.unwrap();
    let calls = (0..6).map(|_| {
        let client = client.clone();
        async move { client.stats().await }
    });
    let waiting = tokio::spawn(join_all(calls));
    let most = server.await.unwrap();
    assert_eq!(most, 2, "client had {most} requests in flight; the server allows 2");
    for r in waiting.await.unwrap() {
        r.unwrap();
    }
}

/// Bad input fails locally; only the valid request reaches the server.
#[tokio::test]
async fn invalid_input_fails_without_a_round_trip() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut wire = accept_welcome(&listener, 100).await;
        let (id, body) = next_request(&mut wire).await;
        answer(&mut wire, id, Ok(Response::Stats { queues: vec![], next: None })).await;
        body
    });
    let client = Client::connect(addr).await.unwrap();
    let err = client.add("has space", Job::new("w", "")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidQueueName), "{err:?}");
    assert!(matches!(err, Error::Invalid { .. }));
    let err = client.add("q", Job::new("w", "").attempts(0)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err:?}");
    let err = client.add_bulk("q", vec![Job::new("ok", ""), Job::new("", "")]).await.unwrap_err();
    assert!(err.to_string().contains("job 1"), "{err}");
    let err = client.reserve(&["q"], 0, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let none: [&str; 0] = [];
    assert!(client.reserve(&none, 1, Duration::from_secs(1)).await.is_err());
    assert!(client
        .touch(&qd_client::LeaseRef { id: 1, token: 1 }, Some(Duration::ZERO))
        .await
        .is_err());
    client.stats().await.unwrap();
    let sent = server.await.unwrap();
    assert!(matches!(sent, Request::Stats { .. }), "only the valid request was sent: {sent:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut wire = accept_welcome(&listener, 100).await;
        let _ = next_request(&mut wire).await;
        wire // kept open, never answered
    });
    let client = Client::builder(addr)
        .request_timeout(Some(Duration::from_millis(200)))
        .connect()
        .await
        .unwrap();
    let err = client.stats().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    drop(server);
}

/// The server goes away for good: after the reconnect window, requests fail with a
/// `Connect` error that says so, instead of hanging.
#[tokio::test]
async fn reconnecting_gives_up_after_the_window() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let wire = accept_welcome(&listener, 100).await;
        drop(listener);
        drop(wire);
    });
    let client = Client::builder(addr.clone())
        .reconnect_for(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    server.await.unwrap();
    let started = std::time::Instant::now();
    let mut last = None;
    // The first call may still land on the dying socket (Disconnected); a later one dials.
    for _ in 0..3 {
        match client.stats().await {
            Err(e @ Error::Connect { .. }) => {
                last = Some(e);
                break;
            }
            Err(e) => assert!(e.is_disconnected(), "{e:?}"),
            Ok(_) => panic!("no server, yet stats succeeded"),
        }
    }
    let err = last.expect("expected a Connect error");
    let text = err.to_string();
    assert!(text.contains(&addr) && text.contains("gave up after"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up too late: {:?}",
        started.elapsed()
    );
}
