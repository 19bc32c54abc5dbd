//! Decoding cannot multiply size: a request's vectors are held to `DecodeLimits` before
//! they are allocated, and no frame makes the decoder allocate more than a fixed multiple
//! of its own length. Allocation is measured with a counting global allocator, so this is
//! its own test binary, and its tests take one lock so that they do not count each other.

use std::alloc::System;
use std::sync::Mutex;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use qd_protocol::codec::{Incoming, ServerCodec};
use qd_protocol::message::*;
use qd_protocol::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio_util::codec::Decoder;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Held by every test while it measures.
static MEASURING: Mutex<()> = Mutex::new(());

/// Most bytes decoding may allocate per byte of frame (plus a small constant): the
/// in-memory form of a job is some ten times its smallest encoding.
const MULTIPLE: usize = 32;
const SLACK: usize = 64 * 1024;

/// Bytes allocated (in total, not net) while decoding every frame in `wire`.
fn allocated_decoding(codec: &mut ServerCodec, wire: &[u8]) -> (usize, Vec<Incoming>) {
    let mut buf = BytesMut::with_capacity(wire.len());
    buf.extend_from_slice(wire);
    let region = Region::new(GLOBAL);
    let mut out = Vec::with_capacity(16);
    while let Ok(Some(item)) = codec.decode(&mut buf) {
        if out.len() < 16 {
            out.push(item);
        }
    }
    let bytes = region.change().bytes_allocated;
    (bytes, out)
}

fn frame_of(msg: &ClientFrame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf, HARD_MAX_FRAME).unwrap();
    buf
}

/// Hand-written frame: a Request of kind `kind` with id 7, then `body`.
fn raw_request(kind: u8, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32((3 + body.len()) as u32);
    buf.put_slice(&[1, 7, kind]);
    buf.put_slice(body);
    buf
}

/// The story of the limit: a 2 MB frame naming a million one-byte queues used to decode
/// into a million `String`s (tens of MB). Now it is refused after the length prefix, with
/// `InvalidArgument` naming the limit, under the request's id.
#[test]
fn a_million_queues_is_refused_before_allocating() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let reserve = ClientFrame::Request {
        id: 7,
        body: Request::Reserve { queues: vec!["a".into(); 1_000_000], max: 1, timeout_ms: 0 },
    };
    let wire = frame_of(&reserve);
    let mut codec = ServerCodec::new(HARD_MAX_FRAME);
    let (bytes, out) = allocated_decoding(&mut codec, &wire);
    match &out[..] {
        [Incoming::BadRequest { id: 7, error }] => {
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert!(error.message.contains("max_queues"), "{}", error.message);
        }
        other => panic!("expected one BadRequest for id 7, got {other:?}"),
    }
    assert!(bytes < SLACK, "{bytes} bytes allocated to refuse it");
}

/// The connection stays usable: the request after the refused one decodes.
#[test]
fn over_limit_requests_leave_the_stream_in_step() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let limits = DecodeLimits { max_queues: 2, max_jobs: 1, max_ids: 3 };
    let mut codec = ServerCodec::with_limits(DEFAULT_MAX_FRAME, limits);
    let mut wire = BytesMut::new();
    for (id, body) in [
        (1, Request::Reserve { queues: vec!["a".into(); 3], max: 1, timeout_ms: 0 }),
        (2, Request::Reserve { queues: vec!["a".into(); 2], max: 1, timeout_ms: 0 }),
        (3, Request::Ack { leases: vec![LeaseRef { id: 1, token: 1 }; 4] }),
        (4, Request::Remove { ids: vec![1; 4] }),
        (5, Request::Promote { ids: vec![1; 3] }),
        (6, Request::Add { queue: "q".into(), jobs: vec![] }),
        (7, Request::Kill { ids: vec![1; 4] }),
    ] {
        wire.unsplit(frame_of(&ClientFrame::Request { id, body }));
    }
    let (_, out) = allocated_decoding(&mut codec, &wire);
    let summary: Vec<(u64, Option<ErrorCode>)> = out
        .iter()
        .map(|i| match i {
            Incoming::Frame(ClientFrame::Request { id, .. }) => (*id, None),
            Incoming::BadRequest { id, error } => (*id, Some(error.code)),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let bad = Some(ErrorCode::InvalidArgument);
    assert_eq!(
        summary,
        vec![(1, bad), (2, None), (3, bad), (4, bad), (5, None), (6, None), (7, bad)]
    );
}

/// An unknown request kind is still `UnknownRequest`, not a limit.
#[test]
fn unknown_request_kind_is_not_a_limit() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let mut codec = ServerCodec::new(DEFAULT_MAX_FRAME);
    let (_, out) = allocated_decoding(&mut codec, &raw_request(200, &[]));
    match &out[..] {
        [Incoming::BadRequest { id: 7, error }] => {
            assert_eq!(error.code, ErrorCode::UnknownRequest)
        }
        other => panic!("{other:?}"),
    }
}

/// A tiny frame whose string claims 60 MB: bincode would allocate the claim before reading;
/// the per-frame byte limit refuses it first.
#[test]
fn a_small_frame_cannot_claim_a_huge_string() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    // Pause { queue }: kind 16, then the string length as a varint u32 (0xfc + 4 bytes LE).
    let claim = 60_000_000u32.to_le_bytes();
    let wire = raw_request(16, &[0xfc, claim[0], claim[1], claim[2], claim[3], b'q']);
    let mut codec = ServerCodec::new(HARD_MAX_FRAME);
    let (bytes, out) = allocated_decoding(&mut codec, &wire);
    assert!(matches!(&out[..], [Incoming::BadRequest { id: 7, .. }]), "{out:?}");
    assert!(bytes < SLACK, "{bytes} bytes allocated for a {} byte frame", wire.len());
}

/// The handshake limit: a codec started at `MAX_HANDSHAKE_FRAME` refuses a bigger frame,
/// and accepts it once raised.
#[test]
fn handshake_limit_can_be_raised() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let big = frame_of(&ClientFrame::Request {
        id: 1,
        body: Request::Pause { queue: "q".repeat(MAX_HANDSHAKE_FRAME) },
    });
    let mut codec = ServerCodec::new(MAX_HANDSHAKE_FRAME);
    assert!(codec.decode(&mut big.clone()).is_err());
    codec.set_max_frame(DEFAULT_MAX_FRAME);
    assert!(matches!(codec.decode(&mut big.clone()), Ok(Some(Incoming::Frame(_)))));
}

// Property tests run their cases through a `TestRunner` inside the lock: the runner's own
// allocations (generating and shrinking inputs) must not land in another test's count.

/// Random frame bodies behind a valid request envelope (so the decoder goes deep into
/// request bodies) never allocate more than `MULTIPLE` times their length.
#[test]
fn random_requests_never_multiply_size() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let bodies = proptest::collection::vec(
        prop_oneof![Just(0u8), Just(1), Just(0xfb), Just(0xfc), Just(0xff), any::<u8>()],
        0..400,
    );
    TestRunner::default()
        .run(&(0u8..20, bodies), |(kind, body)| {
            let wire = raw_request(kind, &body);
            let mut codec = ServerCodec::new(DEFAULT_MAX_FRAME);
            let (bytes, _) = allocated_decoding(&mut codec, &wire);
            prop_assert!(bytes <= MULTIPLE * wire.len() + SLACK, "{bytes} B for {} B", wire.len());
            Ok(())
        })
        .unwrap();
}

/// Big valid requests (many small jobs, queues or ids, within the limits) too.
#[test]
fn big_valid_requests_never_multiply_size() {
    let _m = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    TestRunner::default()
        .run(&(0usize..5_000, 0u8..3), |(n, kind)| {
            let body = match kind {
                0 => Request::Add {
                    queue: "q".into(),
                    jobs: vec![
                        NewJob {
                            name: "n".into(),
                            payload: Default::default(),
                            options: JobOptions::default()
                        };
                        n
                    ],
                },
                1 => {
                    Request::Reserve { queues: vec!["a".into(); n.min(64)], max: 1, timeout_ms: 0 }
                }
                _ => Request::Remove { ids: vec![1; n] },
            };
            let wire = frame_of(&ClientFrame::Request { id: 1, body });
            let mut codec = ServerCodec::new(DEFAULT_MAX_FRAME);
            let (bytes, out) = allocated_decoding(&mut codec, &wire);
            prop_assert!(matches!(&out[..], [Incoming::Frame(_)]), "{out:?}");
            prop_assert!(bytes <= MULTIPLE * wire.len() + SLACK, "{bytes} B for {} B", wire.len());
            Ok(())
        })
        .unwrap();
}
