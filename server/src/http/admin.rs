//! The dashboard's way into the engine: an in-process admin connection that speaks the same
//! [`Command`]s a network connection does, so the engine needs no second interface and every
//! answer (and its "persist, then reply" wait) is exactly what a protocol client would get.
//!
//! Each call is its own short connection: `Connect`, one `Request`, the reply, `Disconnect`.
//! The `Disconnect` is sent only after the reply arrived: a reply held for a commit is
//! dropped if its connection is gone by then. Connection ids count down from `u64::MAX`,
//! a range the protocol listener (counting up from 1) never reaches; the metrics hooks use
//! [`crate::metrics::ADMIN_CONNS_FROM`] to leave these out of the connection gauge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qd_protocol::message::ServerFrame;
use qd_protocol::{Request, Response, WireError};
use tokio::sync::mpsc;

use crate::engine::Command;
use crate::model::ConnId;

/// How long one admin request may take before the page says so. Generous: a request that
/// changes something waits for its commit, and a slow disk makes that slow.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an admin request has no answer to show.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The engine has stopped (shutdown, or a storage failure).
    #[error("the server is stopping or has stopped; reload once it is back")]
    Stopped,
    /// The engine refused the request.
    #[error("{}", .0.message)]
    Refused(WireError),
    /// No answer within the time limit.
    #[error("the server did not answer within {} s; it may be overloaded", CALL_TIMEOUT.as_secs())]
    Timeout,
    /// An answer of the wrong kind: a bug.
    #[error("unexpected answer {0}; this is a bug in qd, please report it")]
    Unexpected(String),
}

/// An admin client of the engine, shared by every HTTP request.
#[derive(Debug)]
pub struct AdminConn {
    commands: mpsc::Sender<Command>,
    /// The next connection id, counting down.
    next_conn: AtomicU64,
}

impl AdminConn {
    pub fn new(commands: mpsc::Sender<Command>) -> Self {
        AdminConn { commands, next_conn: AtomicU64::new(u64::MAX) }
    }

    /// Whether the engine still takes commands.
    pub fn engine_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Sends `body` and waits for its answer.
    pub async fn call(&self, body: Request) -> Result<Response, AdminError> {
        let conn: ConnId = self.next_conn.fetch_sub(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let send = |cmd| async { self.commands.send(cmd).await.map_err(|_| AdminError::Stopped) };
        send(Command::Connect { conn, client_name: "dashboard".into(), replies: tx }).await?;
        send(Command::Request { conn, id: 1, body }).await?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await;
        // Best effort: an engine that stopped has forgotten the connection anyway.
        let _ = self.commands.send(Command::Disconnect { conn }).await;
        match answer {
            Err(_) => Err(AdminError::Timeout),
            Ok(None) => Err(AdminError::Stopped),
            Ok(Some(ServerFrame::Response { result, .. })) => result.map_err(AdminError::Refused),
            Ok(Some(other)) => Err(AdminError::Unexpected(format!("{other:?}"))),
        }
    }
}
