//! The qd broker as a library: everything a server is, and nothing else. The `qd` binary
//! (the `qd` package: command line, `qd bench`, the `qd serve` child-process helper) and the
//! end-to-end tests sit on top of it; this crate depends on neither the client nor any CLI
//! or benchmark library (`.ci/run` checks that with `cargo tree`).
//!
//! Layers, each testable without the ones above it (see `docs/ARCHITECTURE.md`); imports
//! point down only, `server → net → engine → broker + store`, which a test
//! (`layers.rs`) checks:
//! - [`model`]: the plain data the core and the store exchange;
//! - [`broker`]: the pure queue state machine (no I/O, no clock);
//! - [`store`]: persistence, group commit, recovery;
//! - [`engine`]: the actor that owns the core and drives the store, and opens both;
//! - [`pg`]: the PostgreSQL backend, a second engine on the same command channel whose
//!   state lives in a database that many brokers share;
//! - [`net`]: listener, connections, limits;
//! - [`faktory`]: Faktory's work protocol on a second port, a client of the engine like `http`;
//! - [`http`]: the dashboard, `/metrics`, `/healthz` and `/readyz`, an admin client of the engine;
//! - [`metrics`]: the process's own instruments, fed by hooks in the engine and the store;
//! - [`server`]: the composition root: assembles the layers and shuts them down on one token;
//! - [`config`]: the validated [`config::ServerConfig`] and every server default.

pub mod broker;
pub mod config;
pub mod engine;
pub mod faktory;
pub mod http;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod model;
pub mod net;
pub mod pg;
pub mod server;
pub mod store;
