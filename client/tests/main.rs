//! qd-client's tests against fake servers written inside the tests (the real server's
//! end-to-end tests live in the workspace's `tests/` crate).

/// A scriptable one-connection server and a small in-memory queue server.
mod fake;

/// Connection behaviour: pipelining, out-of-order answers, handshake errors, disconnects,
/// reconnects, in-flight limits, local validation, timeouts.
mod connection;

/// Worker behaviour: concurrency, ack/nack mapping, permanent errors, panics, heartbeats,
/// graceful shutdown.
mod worker;

/// The handshake: challenge-response auth (right, wrong, missing secret; roles), reconnects
/// redoing it, idle pings, TLS with and without the server's CA.
mod auth;

/// Admin requests, ping and paged stats: each method's request and answer mapping.
mod admin;
