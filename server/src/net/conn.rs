//! One client connection: the handshake, a reader that turns frames into engine commands,
//! and a writer that sends responses in batches.
//!
//! The reader and the writer are separate tasks so that a slow peer reading responses never
//! stops us reading its requests, and so that responses to pipelined requests are written
//! with one syscall per batch rather than one per frame (the difference is 10x at high
//! request rates). Backpressure: at most `max_in_flight` requests of one connection may be
//! unanswered; further ones are refused with `Busy`, and the engine's command channel is
//! bounded, so a flood waits in the socket, not in our memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use qd_protocol::codec::{CodecError, Incoming, ServerCodec};
use qd_protocol::message::{ServerFrame, Welcome};
use qd_protocol::{frame, ClientFrame, ErrorCode, WireError, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::engine::Command;
use crate::model::ConnId;

/// Limits every connection obeys, from the server's configuration.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub handshake_timeout: Duration,
}

/// Serves one connection until the peer leaves, breaks the protocol, or the server shuts
/// down.
pub async fn serve(
    stream: TcpStream,
    conn: ConnId,
    limits: Arc<ConnLimits>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, ServerCodec::new(limits.max_frame));
    let (tx, rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let writer =
        tokio::spawn(write_loop(write, rx, limits.max_frame, in_flight.clone(), shutdown.clone()));

    // Handshake: the first frame must be a Hello of our protocol version.
    let first = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, frames.next()) => r,
        _ = shutdown.cancelled() => return,
    };
    // Anything but a Hello of our version is refused with a Goodbye that says why.
    let refusal = match first {
        Ok(Some(Ok(Incoming::Frame(ClientFrame::Hello(hello))))) => {
            if hello.protocol == PROTOCOL_VERSION {
                Ok(hello)
            } else {
                Err(goodbye(
                    ErrorCode::ProtocolVersion,
                    format!(
                        "client speaks protocol {}, this server speaks {PROTOCOL_VERSION}; use a matching client",
                        hello.protocol
                    ),
                ))
            }
        }
        Ok(Some(Ok(_))) => Err(goodbye(
            ErrorCode::HandshakeRequired,
            "the first frame must be Hello; see docs/PROTOCOL.md",
        )),
        Ok(Some(Err(e))) => Err(ServerFrame::Goodbye(codec_error(&e))),
        Ok(None) => return,
        Err(_) => {
            Err(goodbye(ErrorCode::HandshakeRequired, "no Hello within the handshake timeout"))
        }
    };
    let hello = match refusal {
        Ok(hello) => hello,
        Err(bye) => {
            let _ = tx.send(bye);
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    tracing::debug!(conn, ?peer, client = %hello.client_name, "connected");
    let _ = tx.send(ServerFrame::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        server: format!("qd {}", env!("CARGO_PKG_VERSION")),
        max_frame: limits.max_frame as u32,
        max_in_flight: limits.max_in_flight as u32,
        // No secrets yet: everyone is Admin (docs/PROTOCOL.md, "Authentication").
        role: qd_protocol::Role::Admin,
    }));
    if commands
        .send(Command::Connect {
            conn,
            client_name: hello.client_name.clone(),
            replies: tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }

    let mut left_cleanly = true;
    loop {
        let next = tokio::select! {
            next = frames.next() => next,
            _ = shutdown.cancelled() => {
                // Leave without Disconnect: the server is going, the worker did not fail.
                left_cleanly = false;
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(Incoming::Frame(ClientFrame::Request { id, body }))) => {
                if in_flight.fetch_add(1, Ordering::AcqRel) >= limits.max_in_flight {
                    let _ = tx.send(ServerFrame::Response {
                        id,
                        result: Err(WireError::new(
                            ErrorCode::Busy,
                            format!(
                                "more than {} requests in flight on this connection; wait for answers before sending more",
                                limits.max_in_flight
                            ),
                        )),
                    });
                    continue;
                }
                if commands.send(Command::Request { conn, id, body }).await.is_err() {
                    left_cleanly = false;
                    break;
                }
            }
            Some(Ok(Incoming::Frame(ClientFrame::Hello(_)))) => {
                let _ = tx.send(goodbye(ErrorCode::BadFrame, "Hello sent twice on one connection"));
                break;
            }
            Some(Ok(Incoming::Frame(ClientFrame::Auth { .. }))) => {
                let _ = tx.send(goodbye(ErrorCode::BadFrame, "Auth sent without a Challenge"));
                break;
            }
            Some(Ok(Incoming::BadRequest { id, error })) => {
                // The frame was well formed, only its request was not: answer and go on.
                in_flight.fetch_add(1, Ordering::AcqRel);
                let _ = tx.send(ServerFrame::Response { id, result: Err(error) });
            }
            Some(Err(e)) => {
                tracing::debug!(conn, ?peer, error = %e, "closing connection after a protocol error");
                let _ = tx.send(ServerFrame::Goodbye(codec_error(&e)));
                break;
            }
        }
    }
    if left_cleanly {
        let _ = commands.send(Command::Disconnect { conn }).await;
    }
    drop(tx);
    let _ = writer.await;
    tracing::debug!(conn, ?peer, "disconnected");
}

fn goodbye(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Goodbye(WireError::new(code, message))
}

fn codec_error(e: &CodecError) -> WireError {
    match e {
        CodecError::Decode(d) => d.to_wire(),
        CodecError::Io(io) => WireError::new(ErrorCode::BadFrame, format!("i/o error: {io}")),
    }
}

/// Writes frames as they come, batching whatever is queued into one write. Ends after a
/// Goodbye, or when every sender is gone (the connection is done).
async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<ServerFrame>,
    max_frame: usize,
    in_flight: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut done = false;
    while !done {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            if matches!(frame, ServerFrame::Response { .. }) {
                in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            done |= matches!(frame, ServerFrame::Goodbye(_));
            encode_or_explain(&frame, &mut buf, max_frame);
            if done || buf.len() >= 1 << 20 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if write.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    if !done && shutdown.is_cancelled() {
        let bye =
            goodbye(ErrorCode::ShuttingDown, "the server is shutting down; reconnect shortly");
        encode_or_explain(&bye, &mut buf, max_frame);
        let _ = write.write_all(&buf).await;
    }
    let _ = write.shutdown().await;
}

/// Encodes a frame; a response too big for a frame becomes an error response instead.
fn encode_or_explain(frame: &ServerFrame, buf: &mut BytesMut, max_frame: usize) {
    if let Err(e) = frame::encode(frame, buf, max_frame) {
        let ServerFrame::Response { id, .. } = frame else {
            tracing::error!(error = %e, "cannot encode a control frame");
            return;
        };
        let err = ServerFrame::Response {
            id: *id,
            result: Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("the answer does not fit in one frame ({e}); ask for fewer jobs at once"),
            )),
        };
        let _ = frame::encode(&err, buf, max_frame);
    }
}
