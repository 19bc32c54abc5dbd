//! qd's wire protocol, sans-IO.
//!
//! This crate owns the bytes: how a frame is laid out ([`frame`]), which messages exist
//! ([`message`]), the job vocabulary they carry ([`types`]), and the error codes every
//! failure maps to ([`error`]), how a connection proves a secret ([`auth`]), how much a
//! request may carry ([`limits`]), what the admin requests speak of ([`admin`]), named
//! schedules ([`schedule`]) and a queue's flow limits ([`flow`]). It never touches a socket or a runtime; the optional
//! [`codec`] module adapts it to `tokio_util::codec` for those who do.
//!
//! The byte-level specification lives in `docs/PROTOCOL.md`; the golden tests in
//! `tests/golden.rs` pin the examples printed there.

pub mod admin;
pub mod auth;
pub mod error;
pub mod event;
pub mod flow;
pub mod frame;
pub mod limits;
pub mod message;
pub mod schedule;
pub mod types;

#[cfg(feature = "codec")]
pub mod codec;

pub use admin::{
    Cursor, JobDetail, JobFailure, JobState, JobSummary, MinuteCounts, QueueInfo, SearchQuery,
};
pub use auth::Role;
pub use error::{DecodeError, ErrorCode, WireError};
pub use event::{EventKind, JobEvent};
pub use flow::{QueueLimits, Rate};
pub use frame::{FrameDecoder, DEFAULT_MAX_FRAME, HARD_MAX_FRAME, MAX_HANDSHAKE_FRAME};
pub use limits::DecodeLimits;
pub use message::{ClientFrame, Request, Response, ServerFrame};
pub use schedule::{Schedule, ScheduleInfo, ScheduleSpec};
pub use types::*;

/// Protocol version spoken by this crate. A server refuses a `Hello` with any other number.
///
/// 2: challenge-response auth (`Hello` lost its token; `Challenge`, `Auth`, `Welcome.role`),
/// paged `Stats`, `Ping`, the admin requests, decode limits.
/// 3: job options `group`, `timeout_ms`, `expires_in_ms`, `unique`; `LeasedJob.group` and
/// `timeout_ms`; `Request::SetQueueLimits`, `RetryHint::RateLimited`, `QueueInfo::limits`.
pub const PROTOCOL_VERSION: u32 = 3;
