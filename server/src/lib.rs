//! The qd broker as a library: the `qd` binary (`src/main.rs`) is a thin shell over it, and
//! the end-to-end tests and `qd bench` use it to start servers.
//!
//! Layers, each testable without the ones above it (see `docs/ARCHITECTURE.md`):
//! - [`model`]: the plain data the core and the store exchange;
//! - [`broker`]: the pure queue state machine (no I/O, no clock);
//! - [`store`]: sled persistence, group commit, recovery;
//! - [`engine`]: the actor that owns the core and drives the store;
//! - [`net`]: listener, connections, limits, shutdown;
//! - [`child`]: a `qd serve` child process, for `qd bench` and the end-to-end tests;
//! - [`cli`] and [`config`]: flags and environment in, a validated configuration out.

pub mod bench;
pub mod broker;
pub mod child;
pub mod cli;
pub mod config;
pub mod engine;
pub mod model;
pub mod net;
pub mod store;
