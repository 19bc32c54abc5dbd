//! [`Error`]: everything that can go wrong in the client, each variant saying what happened
//! and what to do about it.
//!
//! The split that matters to a caller is *did the server see my request?*
//! - [`Error::Invalid`]: refused locally; nothing was sent.
//! - [`Error::Connect`], [`Error::Handshake`], [`Error::Auth`], [`Error::Tls`]: no
//!   connection, so nothing was sent.
//! - [`Error::Server`]: the server answered this request with an error, so it was not
//!   applied (the protocol's add is all or nothing). One exception: when the server says
//!   `Goodbye` (shutting down, protocol violation) every request in flight gets that error,
//!   and like `Disconnected` such a request may or may not have been applied.
//! - [`Error::Disconnected`], [`Error::Timeout`]: unknown. The request may or may not have
//!   been applied; an `add` may have added the job (use an idempotency key to make a retry
//!   safe), an `ack` may have completed it.
//!
//! `Error` is `Clone` (io and JSON errors sit behind `Arc`) because one failure, such as a
//! server's `Goodbye`, is handed to every request that was in flight.

use std::sync::Arc;
use std::time::Duration;

use qd_protocol::{ErrorCode, WireError};

/// A client error. See the module docs for which variants mean the request may have run.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No TCP connection could be made (or kept up) to the server.
    #[error("cannot connect to qd at {addr}: {source}; is `qd serve` running and reachable at that address?")]
    Connect {
        addr: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The server refused the `Hello` (wrong protocol version, ...), or answered it with
    /// something other than `Welcome`.
    #[error("qd at {addr} refused the handshake: {message} (code {code:?}); check the client's protocol version")]
    Handshake { addr: String, code: ErrorCode, message: String },
    /// The server wants a secret and this client's is missing or wrong (or does not grant
    /// the role asked for). Not retried: another try would fail the same way.
    #[error("qd at {addr} refused the secret: {message}; check the secret given to ClientBuilder::secret or in QD_SECRET (and, for admin requests, that it is the server's admin secret)")]
    Auth { addr: String, message: String },
    /// The TLS handshake failed: most often the server's certificate is not signed by the
    /// CA given, or is for another name.
    #[error("TLS with qd at {addr} failed: {message}; check the CA given to TlsOptions and the server name the certificate is for")]
    Tls { addr: String, message: String },
    /// The connection dropped while the request was in flight. The server may or may not
    /// have applied it; the next request reconnects.
    #[error("connection to qd lost while the request was in flight ({reason}); it may or may not have been applied, retry only if that is safe (e.g. adds with a key)")]
    Disconnected { reason: String },
    /// No answer within the request timeout. The request may still be applied.
    #[error("no answer from qd within {after:?}; the request may or may not have been applied (raise the timeout with ClientBuilder::request_timeout if the server is just slow)")]
    Timeout { after: Duration },
    /// The server answered with an error, or said `Goodbye` while the request was in flight
    /// (then the outcome is unknown, as with `Disconnected`). `code` is stable; match on it
    /// or use the `is_*` helpers.
    #[error("qd refused the request: {message} (code {code:?})")]
    Server { code: ErrorCode, message: String },
    /// Refused on this side before anything was sent: a bad queue name, an option out of
    /// range, a message too large.
    #[error("invalid request: {message} (code {code:?}); nothing was sent")]
    Invalid { code: ErrorCode, message: String },
    /// A payload could not be turned into JSON, or read back from it.
    #[error("JSON: {0}; check the payload's type matches what was added")]
    Json(#[source] Arc<serde_json::Error>),
    /// The server sent something this client does not understand: a bug on one side, or
    /// a version mismatch. The connection was closed.
    #[error("protocol error: {0}; is the server a qd of a compatible version?")]
    Protocol(String),
}

impl Error {
    /// The wire error code, for errors that carry one (server answers, local validation,
    /// handshake refusals).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Auth { .. } => Some(ErrorCode::AuthFailed),
            Error::Server { code, .. } | Error::Invalid { code, .. } => Some(*code),
            Error::Handshake { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The lease is gone: it expired, or the connection that held it dropped, and the job
    /// belongs to another delivery now. Ack, nack and touch with this lease will all fail;
    /// stop working on the job.
    pub fn is_lease_lost(&self) -> bool {
        self.code() == Some(ErrorCode::LeaseLost)
    }

    /// The connection dropped with the request in flight (outcome unknown).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected { .. })
    }

    /// The secret is missing or wrong, or an admin request was sent without the admin
    /// role: fix the configuration, retrying will not help.
    pub fn is_auth(&self) -> bool {
        matches!(self.code(), Some(ErrorCode::AuthFailed | ErrorCode::Forbidden))
    }

    /// The job id is unknown to the server (it may have completed already).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }

    /// Trying the same request again later may succeed: connection trouble, timeouts, a busy
    /// or restarting server, a storage hiccup. Mind that `Disconnected` and `Timeout` do not
    /// say whether the first try was applied.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => true,
            Error::Server { code, .. } => matches!(
                code,
                ErrorCode::Busy
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Storage
                    | ErrorCode::Internal
            ),
            Error::Handshake { code, .. } => {
                matches!(code, ErrorCode::Busy | ErrorCode::ShuttingDown)
            }
            _ => false,
        }
    }

    pub(crate) fn server(e: WireError) -> Self {
        Error::Server { code: e.code, message: e.message }
    }

    pub(crate) fn invalid(e: WireError) -> Self {
        Error::Invalid { code: e.code, message: e.message }
    }

    pub(crate) fn invalid_arg(message: impl Into<String>) -> Self {
        Error::Invalid { code: ErrorCode::InvalidArgument, message: message.into() }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(Arc::new(e))
    }
}
