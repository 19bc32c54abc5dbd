//! Golden bytes: these frames are printed in docs/PROTOCOL.md. If a test here fails, the
//! wire format changed: that breaks every client in the field, so bump the protocol version
//! and document it instead of updating the bytes.

use bytes::{Bytes, BytesMut};
use qd_protocol::message::*;
use qd_protocol::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn check_client(msg: &ClientFrame, expected: &str) {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(buf.to_vec(), hex(expected), "encoding of {msg:?}");
    let decoded = FrameDecoder::new(DEFAULT_MAX_FRAME).decode_client(&mut buf).unwrap();
    assert_eq!(decoded.as_ref(), Some(msg));
}

fn check_server(msg: &ServerFrame, expected: &str) {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(buf.to_vec(), hex(expected), "encoding of {msg:?}");
    let decoded = FrameDecoder::new(DEFAULT_MAX_FRAME).decode_server(&mut buf).unwrap();
    assert_eq!(decoded.as_ref(), Some(msg));
}

#[test]
fn hello() {
    check_client(
        &ClientFrame::Hello(Hello { protocol: 1, client_name: "w1".into(), token: None }),
        "00 00 00 06 00 01 02 77 31 00",
    );
}

#[test]
fn welcome() {
    check_server(
        &ServerFrame::Welcome(Welcome {
            protocol: 1,
            server: "qd".into(),
            max_frame: 16777216,
            max_in_flight: 4096,
        }),
        "00 00 00 0d 00 01 02 71 64 fc 00 00 00 01 fb 00 10",
    );
}

#[test]
fn add() {
    check_client(&ClientFrame::Request { id: 1, body: Request::Add { queue: "emails".into(), jobs: vec![NewJob { name: "welcome".into(), payload: Bytes::from_static(b"hi"), options: JobOptions { priority: 0, delay_ms: 0, attempts: 3, backoff: Backoff::Exponential { base_ms: 2000, max_ms: 3_600_000, jitter_pct: 0 }, lease_ms: 30_000, key: None } }] } }, "00 00 00 27 01 01 00 06 65 6d 61 69 6c 73 01 07 77 65 6c 63 6f 6d 65 02 68 69 00 00 03 01 fb d0 07 fc 80 ee 36 00 00 fb 30 75 00");
}

#[test]
fn added() {
    check_server(
        &ServerFrame::Response { id: 1, result: Ok(Response::Added { ids: vec![1] }) },
        "00 00 00 06 01 01 00 00 01 01",
    );
}

#[test]
fn reserve() {
    check_client(
        &ClientFrame::Request {
            id: 2,
            body: Request::Reserve { queues: vec!["emails".into()], max: 5, timeout_ms: 5000 },
        },
        "00 00 00 0f 01 02 01 01 06 65 6d 61 69 6c 73 05 fb 88 13",
    );
}

#[test]
fn reserved() {
    check_server(&ServerFrame::Response { id: 2, result: Ok(Response::Reserved { jobs: vec![LeasedJob { id: 1, queue: "emails".into(), name: "welcome".into(), payload: Bytes::from_static(b"hi"), attempt: 1, max_attempts: 3, token: 1, lease_deadline_ms: 1_700_000_030_000, created_at_ms: 1_700_000_000_000 }] }) }, "00 00 00 2d 01 02 00 01 01 01 06 65 6d 61 69 6c 73 07 77 65 6c 63 6f 6d 65 02 68 69 01 03 01 fd 30 dd e5 cf 8b 01 00 00 fd 00 68 e5 cf 8b 01 00 00");
}

#[test]
fn ack() {
    check_client(
        &ClientFrame::Request {
            id: 3,
            body: Request::Ack { leases: vec![LeaseRef { id: 1, token: 1 }] },
        },
        "00 00 00 06 01 03 02 01 01 01",
    );
}

#[test]
fn acked() {
    check_server(
        &ServerFrame::Response { id: 3, result: Ok(Response::Acked { failed: vec![] }) },
        "00 00 00 05 01 03 00 02 00",
    );
}

#[test]
fn nack() {
    check_client(
        &ClientFrame::Request {
            id: 4,
            body: Request::Nack {
                lease: LeaseRef { id: 1, token: 1 },
                error: "smtp".into(),
                retry: RetryHint::Backoff,
            },
        },
        "00 00 00 0b 01 04 03 01 01 04 73 6d 74 70 00",
    );
}

#[test]
fn nacked() {
    check_server(
        &ServerFrame::Response {
            id: 4,
            result: Ok(Response::Nacked {
                outcome: NackOutcome::Retrying { run_at_ms: 1_700_000_002_000 },
            }),
        },
        "00 00 00 0e 01 04 00 03 00 fd d0 6f e5 cf 8b 01 00 00",
    );
}

#[test]
fn touch() {
    check_client(
        &ClientFrame::Request {
            id: 5,
            body: Request::Touch { lease: LeaseRef { id: 1, token: 1 }, lease_ms: Some(60_000) },
        },
        "00 00 00 09 01 05 04 01 01 01 fb 60 ea",
    );
}

#[test]
fn stats() {
    check_client(&ClientFrame::Request { id: 6, body: Request::Stats }, "00 00 00 03 01 06 05");
}

#[test]
fn error() {
    check_server(
        &ServerFrame::Response { id: 7, result: Err(WireError::new(ErrorCode::LeaseLost, "late")) },
        "00 00 00 09 01 07 01 0d 04 6c 61 74 65",
    );
}

#[test]
fn goodbye() {
    check_server(
        &ServerFrame::Goodbye(WireError::new(ErrorCode::FrameTooLarge, "big")),
        "00 00 00 06 02 02 03 62 69 67",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn add_all_options() {
    check_client(&ClientFrame::Request { id: 8, body: Request::Add { queue: "q".into(), jobs: vec![NewJob { name: "n".into(), payload: Bytes::from_static(b"p"), options: JobOptions { priority: -3, delay_ms: 1000, attempts: 5, backoff: Backoff::Exponential { base_ms: 100, max_ms: 1000, jitter_pct: 20 }, lease_ms: 500, key: Some("k1".into()) } }, NewJob { name: "m".into(), payload: Bytes::new(), options: JobOptions { backoff: Backoff::Fixed { delay_ms: 10 }, ..JobOptions::default() } }] } }, "00 00 00 28 01 08 00 01 71 02 01 6e 01 70 05 fb e8 03 05 01 64 fb e8 03 14 fb f4 01 01 02 6b 31 01 6d 00 00 00 03 00 0a fb 30 75 00");
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn hello_token() {
    check_client(
        &ClientFrame::Hello(Hello {
            protocol: 1,
            client_name: "w".into(),
            token: Some("s3".into()),
        }),
        "00 00 00 08 00 01 01 77 01 02 73 33",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn nack_after() {
    check_client(
        &ClientFrame::Request {
            id: 9,
            body: Request::Nack {
                lease: LeaseRef { id: 2, token: 3 },
                error: "e".into(),
                retry: RetryHint::After { delay_ms: 250 },
            },
        },
        "00 00 00 09 01 09 03 02 03 01 65 01 fa",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn nack_never() {
    check_client(
        &ClientFrame::Request {
            id: 10,
            body: Request::Nack {
                lease: LeaseRef { id: 2, token: 3 },
                error: "".into(),
                retry: RetryHint::Never,
            },
        },
        "00 00 00 07 01 0a 03 02 03 00 02",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn nacked_dead() {
    check_server(
        &ServerFrame::Response {
            id: 9,
            result: Ok(Response::Nacked { outcome: NackOutcome::Dead }),
        },
        "00 00 00 05 01 09 00 03 01",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn touched() {
    check_server(
        &ServerFrame::Response {
            id: 5,
            result: Ok(Response::Touched { lease_deadline_ms: 1_700_000_060_000 }),
        },
        "00 00 00 0d 01 05 00 04 fd 60 52 e6 cf 8b 01 00 00",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn stats_answer() {
    check_server(
        &ServerFrame::Response {
            id: 6,
            result: Ok(Response::Stats {
                queues: vec![QueueStats {
                    queue: "q".into(),
                    ready: 1,
                    delayed: 2,
                    active: 3,
                    dead: 4,
                    completed: 5,
                    completed_total: 300,
                    failed_total: 7,
                }],
            }),
        },
        "00 00 00 10 01 06 00 05 01 01 71 01 02 03 04 05 fb 2c 01 07",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn acked_failed() {
    check_server(
        &ServerFrame::Response {
            id: 3,
            result: Ok(Response::Acked {
                failed: vec![(1, WireError::new(ErrorCode::LeaseLost, "x"))],
            }),
        },
        "00 00 00 09 01 03 00 02 01 01 0d 01 78",
    );
}
