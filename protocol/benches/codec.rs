//! Codec micro-benchmarks: encoding and decoding the frames of the hot path (add, reserve
//! answers, acks), one at a time and as a pipelined buffer. `cargo bench -p qd-protocol`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use qd_protocol::message::{LeaseRef, ServerFrame};
use qd_protocol::{
    frame, ClientFrame, FrameDecoder, JobOptions, LeasedJob, NewJob, Request, Response,
    DEFAULT_MAX_FRAME,
};

fn add_frame(id: u64) -> ClientFrame {
    let job = NewJob {
        name: "welcome".into(),
        payload: Bytes::from(vec![7u8; 128]),
        options: JobOptions::default(),
    };
    ClientFrame::Request { id, body: Request::Add { queue: "emails".into(), jobs: vec![job] } }
}

fn reserved_frame(jobs: usize) -> ServerFrame {
    let mut job = LeasedJob::new(
        123_456,
        "emails",
        "welcome",
        Bytes::from(vec![7u8; 128]),
        0x1234_5678_9abc_def0,
        1_700_000_030_000,
    );
    job.created_at_ms = 1_700_000_000_000;
    ServerFrame::Response { id: 9, result: Ok(Response::Reserved { jobs: vec![job; jobs] }) }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let add = add_frame(1);
    g.bench_function("encode add (128 B payload)", |b| {
        let mut buf = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            buf.clear();
            frame::encode(&add, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        })
    });
    let mut one = BytesMut::new();
    frame::encode(&add, &mut one, DEFAULT_MAX_FRAME).unwrap();
    let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    g.bench_function("decode add (128 B payload)", |b| {
        b.iter_batched(
            || one.clone(),
            |mut buf| dec.decode_client(&mut buf).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let ack = ClientFrame::Request {
        id: 5,
        body: Request::Ack { leases: vec![LeaseRef { id: 99, token: 77 }] },
    };
    g.bench_function("encode ack", |b| {
        let mut buf = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            buf.clear();
            frame::encode(&ack, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pipelined");
    const N: u64 = 1000;
    g.throughput(Throughput::Elements(N));
    let mut many = BytesMut::new();
    for id in 0..N {
        frame::encode(&add_frame(id), &mut many, DEFAULT_MAX_FRAME).unwrap();
    }
    g.bench_function("decode 1000 adds from one buffer", |b| {
        b.iter_batched(
            || many.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(_f) = dec.decode_client(&mut buf).unwrap() {
                    n += 1;
                }
                assert_eq!(n, N);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("reserve answer");
    g.throughput(Throughput::Elements(64));
    let reserved = reserved_frame(64);
    g.bench_function("encode 64 leased jobs", |b| {
        let mut buf = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            buf.clear();
            frame::encode(&reserved, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
