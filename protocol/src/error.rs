//! Errors of the wire layer: [`ErrorCode`], the stable numeric code every failure maps to,
//! [`WireError`], the code plus a human message as it travels in a response, and
//! [`DecodeError`], what the frame decoder reports when bytes break the protocol.

use serde::{Deserialize, Serialize};

use crate::limits::LimitKind;

/// Stable error codes. The number is what travels on the wire (see `docs/PROTOCOL.md`);
/// a code this crate does not know decodes as [`ErrorCode::Other`] so that an older client
/// can still show a newer server's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The bytes are not a valid frame or message; the connection is closed.
    BadFrame,
    /// A frame is longer than the negotiated maximum; the connection is closed.
    FrameTooLarge,
    /// The request kind is unknown to this server, or its body does not decode.
    UnknownRequest,
    /// The client speaks a protocol version this server does not.
    ProtocolVersion,
    /// The first frame of a connection was not a `Hello`.
    HandshakeRequired,
    /// The `Auth` proof is wrong (wrong secret, or a role that secret does not grant), or
    /// the server wants a secret and got none; the connection is closed.
    AuthFailed,
    /// An admin request on a connection of role `Worker`; connect with the admin secret.
    Forbidden,
    /// A field is out of range (attempts, lease, sizes, ...).
    InvalidArgument,
    /// A queue name breaks the naming rules.
    InvalidQueueName,
    /// No job with that id (it may have completed already).
    NotFound,
    /// The lease token is wrong or expired: another delivery owns the job now.
    LeaseLost,
    /// Too many requests in flight on this connection. (Past the connection limit, new
    /// connections wait in the accept backlog instead.)
    Busy,
    /// The server is shutting down; reconnect to another or retry shortly.
    ShuttingDown,
    /// The store failed (disk full, I/O error); the change was not made durable.
    Storage,
    /// A bug in the server.
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnknownRequest => 3,
            ErrorCode::ProtocolVersion => 4,
            ErrorCode::HandshakeRequired => 5,
            ErrorCode::AuthFailed => 6,
            ErrorCode::Forbidden => 14,
            ErrorCode::InvalidArgument => 10,
            ErrorCode::InvalidQueueName => 11,
            ErrorCode::NotFound => 12,
            ErrorCode::LeaseLost => 13,
            ErrorCode::Busy => 20,
            ErrorCode::ShuttingDown => 21,
            ErrorCode::Storage => 30,
            ErrorCode::Internal => 31,
            ErrorCode::Other(n) => n,
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> Self {
        match n {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::UnknownRequest,
            4 => ErrorCode::ProtocolVersion,
            5 => ErrorCode::HandshakeRequired,
            6 => ErrorCode::AuthFailed,
            14 => ErrorCode::Forbidden,
            10 => ErrorCode::InvalidArgument,
            11 => ErrorCode::InvalidQueueName,
            12 => ErrorCode::NotFound,
            13 => ErrorCode::LeaseLost,
            20 => ErrorCode::Busy,
            21 => ErrorCode::ShuttingDown,
            30 => ErrorCode::Storage,
            31 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        c.as_u16()
    }
}

/// An error as it travels in a response: a stable code and a message that says what
/// happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code:?})")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }
}

/// Why bytes could not be decoded. Every variant is a protocol violation; "not enough bytes
/// yet" is not an error but `Ok(None)` from the decoder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame of {len} bytes is over the limit of {max} bytes; send smaller messages (split bulk adds)")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of 0 bytes; every frame carries one message")]
    EmptyFrame,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message in one frame")]
    TrailingBytes(usize),
    /// The frame's envelope decoded (so its request id is known) but the request body did
    /// not: an unknown request kind or a malformed body. The connection can go on.
    #[error("request {id}: unknown or malformed request body: {reason}; check the client's protocol version")]
    BadRequest { id: u64, reason: String },
    /// A request carries more elements than a [`DecodeLimits`](crate::DecodeLimits) field
    /// allows; refused before they were allocated. The connection can go on.
    #[error("request {id}: {len} elements over the server's {} limit of {max}; send smaller batches", kind.name())]
    OverLimit { id: u64, kind: LimitKind, len: usize, max: usize },
}

impl DecodeError {
    /// The request this error is about, for the errors that leave the connection usable
    /// (`BadRequest`, `OverLimit`): answer it under this id and go on. `None` for the
    /// others, which end the connection with a `Goodbye`.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::BadRequest { id, .. } | DecodeError::OverLimit { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The wire error to send back (before closing, for all but `BadRequest` and
    /// `OverLimit`).
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::BadRequest { .. } => ErrorCode::UnknownRequest,
            DecodeError::OverLimit { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::BadFrame,
        };
        WireError::new(code, self.to_string())
    }
}
