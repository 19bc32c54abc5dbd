//! The process's own measurements, the ones no admin request can answer: reserve-to-ack
//! durations, group-commit sizes and durations, open protocol connections, and whether the
//! last commit succeeded (for `/readyz`). The engine and the store writer feed them through
//! one-line hooks ([`ack_observed`], [`group_commit`], [`connection_opened`],
//! [`connection_closed`]); the HTTP layer reads them when `/metrics` is scraped and adds the
//! per-queue numbers it asks the engine for at that moment (see `http::observe`).
//!
//! Why process-wide statics rather than a handle passed down: the hooks sit in hot paths of
//! two layers that must not learn about each other, and a Prometheus process exports one set
//! of numbers anyway. Several servers in one process (tests) share them; nothing asserts on
//! their absolute values across servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Connection ids from here up belong to in-process admin connections (the dashboard counts
/// down from `u64::MAX`); the protocol listener counts up from 1 and never gets here.
pub const ADMIN_CONNS_FROM: u64 = 1 << 63;

/// The process-wide instruments. Cloning one shares its value (they are `Arc`s inside), which
/// is how a scrape registers them without taking them away.
#[derive(Debug)]
pub struct Instruments {
    /// Seconds from a job's reserve to its ack.
    pub reserve_to_ack: Histogram,
    /// Changes per group commit.
    pub commit_changes: Histogram,
    /// Seconds one group commit took (apply, and fsync in `fsync` mode).
    pub commit_seconds: Histogram,
    /// Protocol connections open now (the dashboard's own are not counted).
    pub connections: Gauge,
    /// False from a failed commit on: the engine then stops (fail-stop) and `/readyz` says so.
    last_commit_ok: AtomicBool,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    // 1 ms .. ~9 h: job run times span from trivial to long batch work.
    reserve_to_ack: Histogram::new(exponential_buckets(0.001, 4.0, 13)),
    // 1 .. 65,536 changes.
    commit_changes: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
    // 50 µs .. ~3 s: an fsync is a few ms on SSDs and can stall much longer.
    commit_seconds: Histogram::new(exponential_buckets(0.000_05, 3.0, 11)),
    connections: Gauge::default(),
    last_commit_ok: AtomicBool::new(true),
});

/// The instruments, for the scrape.
pub fn instruments() -> &'static Instruments {
    &INSTRUMENTS
}

/// Whether the last group commit succeeded (true before the first).
pub fn last_commit_ok() -> bool {
    INSTRUMENTS.last_commit_ok.load(Ordering::Relaxed)
}

/// Hook (store writer): one group commit of `changes` changes took `took`.
pub fn group_commit(changes: usize, took: Duration, ok: bool) {
    INSTRUMENTS.commit_changes.observe(changes as f64);
    INSTRUMENTS.commit_seconds.observe(took.as_secs_f64());
    INSTRUMENTS.last_commit_ok.store(ok, Ordering::Relaxed);
}

/// Hook (engine): a job reserved at `started_ms` was acked at `now_ms` (unix ms).
pub fn ack_observed(started_ms: Option<u64>, now_ms: u64) {
    if let Some(started) = started_ms {
        INSTRUMENTS.reserve_to_ack.observe(now_ms.saturating_sub(started) as f64 / 1000.0);
    }
}

/// Hook (engine): connection `conn` finished its handshake.
pub fn connection_opened(conn: u64) {
    if conn < ADMIN_CONNS_FROM {
        INSTRUMENTS.connections.inc();
    }
}

/// Hook (engine): connection `conn` is gone.
pub fn connection_closed(conn: u64) {
    if conn < ADMIN_CONNS_FROM {
        INSTRUMENTS.connections.dec();
    }
}
