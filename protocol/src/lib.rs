//! qd's wire protocol, sans-IO.
//!
//! This crate owns the bytes: how a frame is laid out ([`frame`]), which messages exist
//! ([`message`]), the job vocabulary they carry ([`types`]), and the error codes every
//! failure maps to ([`error`]). It never touches a socket or a runtime; the optional
//! [`codec`] module adapts it to `tokio_util::codec` for those who do.
//!
//! The byte-level specification lives in `docs/PROTOCOL.md`; the golden tests in
//! `tests/golden.rs` pin the examples printed there.

pub mod error;
pub mod frame;
pub mod message;
pub mod types;

#[cfg(feature = "codec")]
pub mod codec;

pub use error::{DecodeError, ErrorCode, WireError};
pub use frame::{FrameDecoder, DEFAULT_MAX_FRAME, HARD_MAX_FRAME};
pub use message::{ClientFrame, Request, Response, ServerFrame};
pub use types::*;

/// Protocol version spoken by this crate. A server refuses a `Hello` with any other number.
pub const PROTOCOL_VERSION: u32 = 1;
