//! Micro-benchmarks of the pure broker core: add/reserve/ack cycles, and timer handling
//! with a million delayed jobs. No I/O, no clock: this is the core's own cost per job, the
//! ceiling above which only the store and the network matter. `cargo bench -p qd-server`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qd_protocol::message::LeaseRef;
use qd_protocol::{JobOptions, NewJob};
use qd_server::broker::{Broker, BrokerConfig, Effect, WaiterKey};

fn job(delay_ms: u64) -> NewJob {
    NewJob {
        name: "bench".into(),
        payload: Bytes::from_static(&[7u8; 128]),
        options: JobOptions { delay_ms, ..JobOptions::default() },
    }
}

fn cycles(c: &mut Criterion) {
    let mut g = c.benchmark_group("broker");
    const N: u64 = 1000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("add+reserve+ack, 1000 jobs one by one", |b| {
        let mut broker = Broker::new(BrokerConfig::default());
        let mut effects = Vec::new();
        let queues = vec!["q".to_string()];
        let mut now = 1_700_000_000_000;
        b.iter(|| {
            now += 1;
            for _ in 0..N {
                // Committed at once, as the engine does when the insert's commit is done.
                let ids = broker.add(now, "q", vec![job(0)]).unwrap();
                broker.commit_added(now, &ids);
            }
            for r in 0..N {
                let waiter = WaiterKey { conn: 1, request: r };
                let leases = broker.reserve(now, waiter, &queues, 1, 0).unwrap().unwrap();
                let l = &leases[0];
                broker.ack(now, LeaseRef { id: l.id, token: l.token }).unwrap();
            }
            effects.clear();
            broker.take_effects(&mut effects);
        })
    });
    g.bench_function("bulk add 1000 + reserve 64 at a time + ack", |b| {
        let mut broker = Broker::new(BrokerConfig::default());
        let mut effects = Vec::new();
        let queues = vec!["q".to_string()];
        let now = 1_700_000_000_000;
        b.iter(|| {
            let ids = broker.add(now, "q", (0..N).map(|_| job(0)).collect()).unwrap();
            broker.commit_added(now, &ids);
            let mut r = 0;
            loop {
                r += 1;
                let leases = broker
                    .reserve(now, WaiterKey { conn: 1, request: r }, &queues, 64, 0)
                    .unwrap()
                    .unwrap();
                if leases.is_empty() {
                    break;
                }
                for l in leases {
                    broker.ack(now, LeaseRef { id: l.id, token: l.token }).unwrap();
                }
            }
            effects.clear();
            broker.take_effects(&mut effects);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("timers");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("promote 1000 due jobs out of 1,000,000 delayed", |b| {
        // One broker with a million delayed jobs, due 1 ms apart; each iteration moves the
        // clock 1000 ms ahead, so 1000 jobs come due. Rebuilt when exhausted (not timed).
        let start = 1_700_000_000_000u64;
        let fresh = || {
            let mut broker = Broker::new(BrokerConfig::default());
            for chunk in 0..1000u64 {
                let jobs = (0..1000u64).map(|i| job(1 + chunk * 1000 + i)).collect();
                let ids = broker.add(start, "q", jobs).unwrap();
                broker.commit_added(start, &ids);
            }
            broker.take_effects(&mut Vec::new());
            broker
        };
        let mut broker = fresh();
        let mut now = start;
        let mut sink: Vec<Effect> = Vec::new();
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                if now >= start + 1_000_000 {
                    broker = fresh();
                    now = start;
                }
                now += 1000;
                let t = std::time::Instant::now();
                broker.handle_timeout(now);
                total += t.elapsed();
                sink.clear();
                broker.take_effects(&mut sink);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, cycles);
criterion_main!(benches);
