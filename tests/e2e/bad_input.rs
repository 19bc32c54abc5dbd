use std::time::Duration;

use bytes::BytesMut;
use qd_client::Job;
use qd_protocol::message::{Hello, ServerFrame};
use qd_protocol::{frame, ClientFrame, ErrorCode, FrameDecoder, Request, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, counts};

/// A connection speaking frames by hand, to send what the client crate never would. Keeps
/// its read buffer across calls, so frames that arrive together are all seen.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw { s: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    /// Connected and past the handshake.
    async fn hello(addr: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let hello =
            ClientFrame::Hello(Hello { protocol: PROTOCOL_VERSION, client_name: "raw".into() });
        raw.send(&hello).await;
        assert!(matches!(raw.recv().await, Some(ServerFrame::Welcome(_))));
        raw
    }

    async fn send(&mut self, f: &ClientFrame) {
        let mut buf = BytesMut::new();
        frame::encode(f, &mut buf, usize::MAX).unwrap();
        self.write(&buf).await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<ServerFrame> {
        let dec = FrameDecoder::new(qd_protocol::HARD_MAX_FRAME);
        loop {
            if let Some(f) = dec.decode_server(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until the server closes the connection (or resets it).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut b)).await.unwrap()
            {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    let (server, _dir) = support::start();
    let mut s = Raw::connect(&server.addr).await;
    s.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    match s.recv().await {
        Some(ServerFrame::Goodbye(e)) => {
            assert!(matches!(e.code, ErrorCode::FrameTooLarge | ErrorCode::BadFrame), "{e:?}")
        }
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    assert!(s.closed().await);
    // Others are served as before.
    let client = server.client().await;
    client.add("still-up", Job::new("x", "")).await.unwrap();
}

#[tokio::test]
async fn garbage_after_handshake_is_refused_with_a_reason() {
    let (server, _dir) = support::start();
    let mut s = Raw::hello(&server.addr).await;
    s.write(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await;
    match s.recv().await {
        Some(ServerFrame::Goodbye(e)) => assert_eq!(e.code, ErrorCode::BadFrame, "{e:?}"),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    assert!(s.closed().await);
}

#[tokio::test]
async fn oversized_frame_is_refused() {
    let (server, _dir) = support::start_with(&["--max-frame", "4096"]);
    let mut s = Raw::hello(&server.addr).await;
    // Announce 1 GiB; the server must refuse without waiting for (or allocating) it.
    s.write(&(1u32 << 30).to_be_bytes()).await;
    match s.recv().await {
        Some(ServerFrame::Goodbye(e)) => assert_eq!(e.code, ErrorCode::FrameTooLarge, "{e:?}"),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    assert!(s.closed().await);
    // A client that sends a too-big job gets a clear error from its own side or the server's.
    let client = server.client().await;
    let big = vec![7u8; 8192];
    assert!(client.add("big", Job::new("x", big)).await.is_err());
    client.add("big", Job::new("x", "small")).await.unwrap();
}

#[tokio::test]
async fn unknown_request_gets_an_error_and_the_connection_goes_on() {
    let (server, _dir) = support::start();
    let mut s = Raw::hello(&server.addr).await;
    // variant 1 (Request), id 9, request kind 200: from some future protocol.
    s.write(&[0, 0, 0, 4, 0x01, 0x09, 0xc8, 0x00]).await;
    match s.recv().await {
        Some(ServerFrame::Response { id: 9, result: Err(e) }) => {
            assert_eq!(e.code, ErrorCode::UnknownRequest, "{e:?}")
        }
        other => panic!("expected an error response for id 9, got {other:?}"),
    }
    s.send(&ClientFrame::Request { id: 10, body: Request::Stats { after: None, limit: 100 } })
        .await;
    let answer = s.recv().await;
    assert!(matches!(answer, Some(ServerFrame::Response { id: 10, result: Ok(_) })), "{answer:?}");
}

#[tokio::test]
async fn request_before_hello_is_refused() {
    let (server, _dir) = support::start();
    let mut s = Raw::connect(&server.addr).await;
    s.send(&ClientFrame::Request { id: 1, body: Request::Stats { after: None, limit: 100 } }).await;
    match s.recv().await {
        Some(ServerFrame::Goodbye(e)) => assert_eq!(e.code, ErrorCode::HandshakeRequired),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_queue_name_and_unknown_job_are_clear_errors() {
    let (server, _dir) = support::start();
    let mut s = Raw::hello(&server.addr).await;
    // Bypass the client's own validation to see the server's answer.
    let add = Request::Add { queue: "no spaces allowed".into(), jobs: vec![] };
    s.send(&ClientFrame::Request { id: 1, body: add }).await;
    match s.recv().await {
        Some(ServerFrame::Response { id: 1, result: Err(e) }) => {
            assert_eq!(e.code, ErrorCode::InvalidQueueName);
            assert!(e.message.contains("no spaces allowed"), "{}", e.message);
        }
        other => panic!("expected InvalidQueueName, got {other:?}"),
    }
    let client = server.client().await;
    let ack = client.ack_many::<qd_protocol::message::LeaseRef>(&[]).await;
    assert!(ack.is_ok());
    let lease = qd_protocol::message::LeaseRef { id: 987_654, token: 1 };
    s.send(&ClientFrame::Request { id: 2, body: Request::Touch { lease, lease_ms: None } }).await;
    match s.recv().await {
        Some(ServerFrame::Response { id: 2, result: Err(e) }) => {
            assert_eq!(e.code, ErrorCode::NotFound)
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(counts(&client, "x").await, (0, 0, 0, 0, 0));
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let (server, _dir) = support::start_with(&["--handshake-timeout", "200ms"]);
    let mut s = Raw::connect(&server.addr).await;
    // Say nothing: the server must not keep the slot forever.
    match s.recv().await {
        Some(ServerFrame::Goodbye(e)) => assert_eq!(e.code, ErrorCode::HandshakeRequired, "{e:?}"),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    assert!(s.closed().await);
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let (server, _dir) = support::start_with(&["--max-connections", "1"]);
    let first = server.client().await;
    first.add("limit", Job::new("x", "")).await.unwrap();
    // The second connection is not served while the first holds the only slot.
    let second = qd_client::Client::builder(server.addr.clone())
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await;
    assert!(second.is_err(), "a second connection was served past --max-connections 1");
    drop(first);
    let third = crate::support::eventually(Duration::from_secs(20), "a slot frees up", || {
        let addr = server.addr.clone();
        async move {
            qd_client::Client::builder(addr)
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(counts(&third, "limit").await.0, 1);
}

#[tokio::test]
async fn requests_past_the_in_flight_cap_are_refused_busy() {
    let (server, _dir) = support::start_with(&["--max-in-flight", "2"]);
    let mut s = Raw::hello(&server.addr).await;
    // Two parked reserves fill the cap; the third request is refused, not queued.
    for id in 1..=3 {
        let wait = Request::Reserve { queues: vec!["idle".into()], max: 1, timeout_ms: 30_000 };
        s.send(&ClientFrame::Request { id, body: wait }).await;
    }
    match s.recv().await {
        Some(ServerFrame::Response { id: 3, result: Err(e) }) => {
            assert_eq!(e.code, ErrorCode::Busy, "{e:?}");
            assert!(e.message.contains("in flight"), "says why: {}", e.message);
        }
        other => panic!("expected Busy for request 3, got {other:?}"),
    }
    // The parked ones are still served when a job arrives.
    let client = server.client().await;
    client.add("idle", Job::new("x", "")).await.unwrap();
    match s.recv().await {
        Some(ServerFrame::Response { id: 1, result: Ok(_) }) => {}
        other => panic!("expected request 1 to be answered with the job, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_of_another_protocol_version_is_told_so() {
    let (server, _dir) = support::start();
    let mut s = Raw::connect(&server.addr).await;
    let hello = ClientFrame::Hello(Hello { protocol: 99, client_name: "future".into() });
    s.send(&hello).await;
    match s.recv().await {
        Some(ServerFrame::Goodbye(e)) => {
            assert_eq!(e.code, ErrorCode::ProtocolVersion, "{e:?}");
            assert!(e.message.contains("99"), "names the version: {}", e.message);
        }
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    assert!(s.closed().await);
}
