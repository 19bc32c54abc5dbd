//! The `qd` command line as a library, so that the `qd` binary (`main.rs`) and the
//! end-to-end tests' `qd-under-test` binary run the very same code. It sits on top of the
//! `qd-server` library (which knows nothing of flags, the client or benchmarks):
//! - [`cli`]: flags and `QD_*` environment in, a [`qd_server::config::ServerConfig`] or a
//!   client action out, and the process's logging; [`main_exit`] is the whole binary;
//! - [`bench`](mod@bench): `qd bench`, the benchmark workloads run through the real client;
//! - [`admin`]: the operator's subcommands (`qd queues`, `qd jobs`, `qd retry`, ...);
//! - [`health`]: `qd health`, a protocol ping for health checks;
//! - [`schedule`](mod@schedule): `qd schedule set|rm|ls`, named cron and interval schedules;
//! - [`child`]: a `qd serve` child process, shared by `qd bench --spawn` and the e2e tests;
//! - [`config_file`]: the TOML config file, read into the flags' variables before parsing;
//! - [`malloc`]: glibc's mmap threshold, pinned by `qd serve` once recovery is done.

pub mod admin;
pub mod bench;
pub mod child;
pub mod cli;
pub mod config_file;
pub mod health;
pub mod malloc;
pub mod schedule;

pub use cli::main_exit;
