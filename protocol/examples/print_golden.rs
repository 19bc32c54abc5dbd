//! Prints the frames used as examples in docs/PROTOCOL.md and pinned in tests/golden.rs.
use bytes::{Bytes, BytesMut};
use qd_protocol::message::*;
use qd_protocol::*;

fn show(label: &str, msg: &impl serde::Serialize) {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    let hex: Vec<String> = buf.iter().map(|b| format!("{b:02x}")).collect();
    println!("{label}: {}", hex.join(" "));
}

fn main() {
    show(
        "hello",
        &ClientFrame::Hello(Hello { protocol: 1, client_name: "w1".into(), token: None }),
    );
    show(
        "welcome",
        &ServerFrame::Welcome(Welcome {
            protocol: 1,
            server: "qd".into(),
            max_frame: 16777216,
            max_in_flight: 4096,
        }),
    );
    show(
        "add",
        &ClientFrame::Request {
            id: 1,
            body: Request::Add {
                queue: "emails".into(),
                jobs: vec![NewJob {
                    name: "welcome".into(),
                    payload: Bytes::from_static(b"hi"),
                    options: JobOptions {
                        priority: 0,
                        delay_ms: 0,
                        attempts: 3,
                        backoff: Backoff::Exponential {
                            base_ms: 2000,
                            max_ms: 3_600_000,
                            jitter_pct: 0,
                        },
                        lease_ms: 30_000,
                        key: None,
                    },
                }],
            },
        },
    );
    show("added", &ServerFrame::Response { id: 1, result: Ok(Response::Added { ids: vec![1] }) });
    show(
        "reserve",
        &ClientFrame::Request {
            id: 2,
            body: Request::Reserve { queues: vec!["emails".into()], max: 5, timeout_ms: 5000 },
        },
    );
    show(
        "reserved",
        &ServerFrame::Response {
            id: 2,
            result: Ok(Response::Reserved {
                jobs: vec![LeasedJob {
                    id: 1,
                    queue: "emails".into(),
                    name: "welcome".into(),
                    payload: Bytes::from_static(b"hi"),
                    attempt: 1,
                    max_attempts: 3,
                    token: 1,
                    lease_deadline_ms: 1_700_000_030_000,
                    created_at_ms: 1_700_000_000_000,
                }],
            }),
        },
    );
    show(
        "ack",
        &ClientFrame::Request {
            id: 3,
            body: Request::Ack { leases: vec![LeaseRef { id: 1, token: 1 }] },
        },
    );
    show("acked", &ServerFrame::Response { id: 3, result: Ok(Response::Acked { failed: vec![] }) });
    show(
        "nack",
        &ClientFrame::Request {
            id: 4,
            body: Request::Nack {
                lease: LeaseRef { id: 1, token: 1 },
                error: "smtp".into(),
                retry: RetryHint::Backoff,
            },
        },
    );
    show(
        "nacked",
        &ServerFrame::Response {
            id: 4,
            result: Ok(Response::Nacked {
                outcome: NackOutcome::Retrying { run_at_ms: 1_700_000_002_000 },
            }),
        },
    );
    show(
        "touch",
        &ClientFrame::Request {
            id: 5,
            body: Request::Touch { lease: LeaseRef { id: 1, token: 1 }, lease_ms: Some(60_000) },
        },
    );
    show("stats", &ClientFrame::Request { id: 6, body: Request::Stats });
    show(
        "error",
        &ServerFrame::Response { id: 7, result: Err(WireError::new(ErrorCode::LeaseLost, "late")) },
    );
    show("goodbye", &ServerFrame::Goodbye(WireError::new(ErrorCode::FrameTooLarge, "big")));
}
