//! End-to-end tests of qd: a real `qd serve` process (the `qd-under-test` binary), the real
//! client crate, real TCP on loopback. One binary, one module per area:

/// Throwaway PostgreSQL clusters: one shared per test process (a fresh database per test),
/// or one of a test's own.
mod pgcluster;
/// Test support: start/kill servers, poll with deadlines.
mod support;

/// The admin API and `qd` admin commands: listings, retry, purge, remove, promote, pause.
mod admin;
/// Garbage bytes, oversized frames, unknown requests, bad names: clear errors, server lives.
mod bad_input;
/// add -> reserve -> ack, delays, priorities, bulk add, idempotency keys.
mod basics;
/// `qd add`, `qd stats` and `qd kill` from the command line.
mod cli;
/// kill -9 and SIGTERM of the server process: nothing acknowledged is lost.
mod crash;
/// Lifecycle event subscriptions: a queue's events and no other's, a slow subscriber's
/// Lagged, announced changes survive kill -9.
mod events;
/// `qd serve --faktory`: Faktory's protocol in raw lines (MUTATE kill, QUEUE LATENCY, idle
/// timeout, TLS), kill -9, and the `faktory` crate.
mod faktory;
/// Flow control: queue limits, `qd limits`, group turns, a worker's RateLimited hold.
mod flow;
/// A full disk: refused, never acknowledged, nothing lost.
mod full_disk;
/// The dashboard, /metrics and health of `qd serve --http`.
mod http;
/// Leases: a vanished worker's jobs come back at once, a late ack is refused.
mod leases;
/// `qd serve --store postgres://...` on a throwaway cluster: the basics, retries, leases,
/// and three brokers on one database with one killed mid-load.
mod pg;
/// Retries with backoff, dead-lettering, the Worker's retry path.
mod retries;
/// Named schedules: an interval adds jobs; update, list, remove; kill -9 fires no tick twice.
mod schedules;
/// Secrets, roles, TLS, limits: one regression test per finding of the security issue.
mod security;
/// Throttle windows, debounce, expiry, results and waiting for a job's outcome.
mod unique;
/// The Worker's outcomes (retry, retry-after, permanent, snooze), timeouts, cancellation on
/// shutdown, error chains in the dead set, progress in the job detail.
mod worker_api;
