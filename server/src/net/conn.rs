//! One client connection: the handshake (with authentication when the server has a
//! secret), a reader that turns frames into engine commands, and a writer that sends
//! replies in batches. Generic over the byte stream, so plain TCP and TLS share all of it.
//!
//! The reader and the writer are separate tasks so that a slow peer reading responses never
//! stops us reading its requests, and so that responses to pipelined requests are written
//! with one syscall per batch rather than one per frame (the difference is 10x at high
//! request rates).
//!
//! Memory per connection is bounded by backpressure, never by dropping answers:
//!
//! 1. Requests: at most `max_in_flight` of one connection are unanswered; further ones are
//!    answered `Busy` and not executed. The engine's command channel is bounded.
//! 2. Replies: the writer encodes every reply as soon as it gets it into one buffer whose
//!    length is the connection's queued bytes. While they exceed `max_conn_buffer` the
//!    reader reads nothing more (so `Busy` and error replies, which the reader makes
//!    itself, stop too: finding 1 of issue 7); if they stay over it for `stuck_timeout`
//!    the connection is dropped. The reader's own replies pass through a small bounded
//!    channel, so they cannot pile up before the writer counts them either.
//! 3. Requests whose answer may be large (stats and admin views, `is_heavy`) go to the
//!    engine one at a time per connection: pipelining thousands of them cannot make the
//!    engine build thousands of big answers before the writer has counted the first
//!    (finding 2).
//! 4. Frames: 4096 bytes until `Welcome`, then `max_frame`; list lengths are held to the
//!    decode limits while decoding (protocol crate).
//! 5. Pushed events (issue 9): the writer takes no engine frame while its unwritten bytes
//!    are over `max_conn_buffer`, and the engine counts the event frames it sent that the
//!    writer has not taken (`Shared::events`), dropping events past its limit. A
//!    subscriber that does not read costs at most that many frames and the reply buffer.
//!    The reader turns a `Subscribe` into `Command::Subscribe`, handing over that counter.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use qd_protocol::codec::{CodecError, Incoming, ServerCodec};
use qd_protocol::message::{ServerFrame, Welcome};
use qd_protocol::{
    frame, ClientFrame, DecodeLimits, ErrorCode, Request, Response, Role, WireError,
    MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::config::Secrets;
use crate::engine::Command;
use crate::model::ConnId;
use crate::net::auth::{self, FailureThrottle};

/// Limits every connection obeys, from the server's configuration.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub handshake_timeout: Duration,
    pub decode_limits: DecodeLimits,
    pub max_conn_buffer: usize,
    pub stuck_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What every connection of one server shares: its limits, its secrets, and the record of
/// failed handshakes per peer.
#[derive(Debug)]
pub struct ConnPolicy {
    pub limits: ConnLimits,
    pub secrets: Secrets,
    pub throttle: FailureThrottle,
}

/// Wrong lease answers (`LeaseLost`/`NotFound` to ack, nack, touch) a connection may earn
/// within [`LEASE_FAILURE_WINDOW`] before it is closed: a worker with a bug makes a few, a
/// peer guessing tokens makes many.
pub const MAX_LEASE_FAILURES: usize = 64;
pub const LEASE_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Replies of the reader itself (handshake, `Busy`, refusals) waiting for the writer.
const OWN_REPLIES: usize = 64;

/// State the reader and the writer of one connection share.
#[derive(Debug, Default)]
struct Shared {
    /// Encoded bytes waiting to be written.
    queued: AtomicUsize,
    /// Requests read and not yet answered to the writer.
    in_flight: AtomicUsize,
    /// Id of the heavy request the engine is answering, if any (point 3 above).
    heavy: Mutex<Option<u64>>,
    /// Ids of ack/nack/touch/progress/snooze requests in flight, whose failures count against the peer.
    lease_ops: Mutex<HashSet<u64>>,
    /// Woken whenever `queued` shrinks or `heavy` clears.
    changed: Notify,
    /// Cancelled by the writer when it has stopped (Goodbye sent, or the peer is gone).
    writer_done: CancellationToken,
    /// Cancelled by the reader to make the writer drop the connection without flushing.
    kill: CancellationToken,
    /// Event frames (issue 9) the engine sent that the writer has not taken yet: the
    /// engine adds, the writer subtracts, and the engine drops events past its limit
    /// (`engine/events.rs`), so a subscriber that does not read costs a bounded amount.
    events: Arc<AtomicUsize>,
}

/// Serves one connection until the peer leaves, breaks the protocol, or the server shuts
/// down.
pub async fn serve<S>(
    stream: S,
    peer: Option<SocketAddr>,
    conn: ConnId,
    policy: Arc<ConnPolicy>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let limits = &policy.limits;
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(
        read,
        ServerCodec::with_limits(MAX_HANDSHAKE_FRAME.min(limits.max_frame), limits.decode_limits),
    );
    let (own_tx, own_rx) = mpsc::channel(OWN_REPLIES);
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let writer = tokio::spawn(write_loop(
        write,
        own_rx,
        engine_rx,
        limits.max_frame,
        limits.max_conn_buffer,
        shared.clone(),
        shutdown.clone(),
    ));

    let (role, client_name) = match handshake(&mut frames, &own_tx, peer, &policy, &shutdown).await
    {
        Ok(welcomed) => welcomed,
        Err(bye) => {
            if let Some(bye) = bye {
                let _ = own_tx.send(bye).await;
            }
            drop((own_tx, engine_tx));
            let _ = writer.await;
            return;
        }
    };
    frames.decoder_mut().set_max_frame(limits.max_frame);
    tracing::debug!(conn, ?peer, ?role, "connected");
    let _ = own_tx
        .send(ServerFrame::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            server: format!("qd {}", env!("CARGO_PKG_VERSION")),
            max_frame: limits.max_frame as u32,
            max_in_flight: limits.max_in_flight as u32,
            role,
        }))
        .await;
    if commands.send(Command::Connect { conn, client_name, replies: engine_tx }).await.is_err() {
        return;
    }

    let outcome =
        read_loop(&mut frames, conn, role, &own_tx, limits, &shared, &commands, &shutdown).await;
    tracing::debug!(conn, ?peer, ?outcome, "connection ends");
    if outcome != Outcome::ServerStopping {
        let _ = commands.send(Command::Disconnect { conn }).await;
    }
    if outcome == Outcome::Stuck {
        shared.kill.cancel();
    }
    drop(own_tx);
    let _ = writer.await;
}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The peer closed, broke the protocol, or the writer closed the connection.
    Closed,
    /// Shutdown or a gone engine: leave without `Disconnect` (the worker did not fail).
    ServerStopping,
    /// Replies stayed over the buffer cap for `stuck_timeout`: drop without flushing.
    Stuck,
}

/// Hello, then Challenge/Auth when the server has a secret. `Ok((role, client name))` to go on;
/// `Err(Some(goodbye))` to refuse with a reason; `Err(None)` when there is no one to tell.
async fn handshake<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, ServerCodec>,
    out: &mpsc::Sender<ServerFrame>,
    peer: Option<SocketAddr>,
    policy: &ConnPolicy,
    shutdown: &CancellationToken,
) -> Result<(Role, String), Option<ServerFrame>> {
    // One deadline for the whole handshake: a peer cannot stretch it frame by frame.
    let deadline = Instant::now() + policy.limits.handshake_timeout;
    let mut next = async || -> Result<Incoming, Option<ServerFrame>> {
        let got = tokio::select! {
            r = tokio::time::timeout_at(deadline, frames.next()) => r,
            _ = shutdown.cancelled() => return Err(None),
        };
        match got {
            Ok(Some(Ok(incoming))) => Ok(incoming),
            Ok(Some(Err(e))) => Err(Some(ServerFrame::Goodbye(codec_error(&e)))),
            Ok(None) => Err(None),
            Err(_) => Err(Some(goodbye(
                ErrorCode::HandshakeRequired,
                "the handshake did not complete within the handshake timeout",
            ))),
        }
    };
    let client_name = match next().await? {
        Incoming::Frame(ClientFrame::Hello(hello)) if hello.protocol == PROTOCOL_VERSION => {
            hello.client_name
        }
        Incoming::Frame(ClientFrame::Hello(hello)) => {
            return Err(Some(goodbye(
                ErrorCode::ProtocolVersion,
                format!(
                    "client speaks protocol {}, this server speaks {PROTOCOL_VERSION}; use a matching client",
                    hello.protocol
                ),
            )))
        }
        Incoming::BadRequest { .. } => {
            return Err(Some(goodbye(
                ErrorCode::UnknownRequest,
                "the first frame must be Hello; see docs/PROTOCOL.md",
            )))
        }
        Incoming::Frame(_) => {
            return Err(Some(goodbye(
                ErrorCode::HandshakeRequired,
                "the first frame must be Hello; see docs/PROTOCOL.md",
            )))
        }
    };
    if !policy.secrets.required() {
        // No secret configured: everyone is Admin (docs/PROTOCOL.md §3.1.1). `qd serve`
        // allows this only on loopback or with --insecure.
        return Ok((Role::Admin, client_name));
    }
    let mut nonce = [0u8; qd_protocol::auth::NONCE_LEN];
    if let Err(e) = getrandom::getrandom(&mut nonce) {
        tracing::error!(error = %e, "no randomness for a handshake nonce");
        return Err(Some(goodbye(ErrorCode::Internal, "the server cannot make a nonce")));
    }
    if out.send(ServerFrame::Challenge { nonce }).await.is_err() {
        return Err(None);
    }
    match next().await? {
        Incoming::Frame(ClientFrame::Auth { role, proof }) => {
            if auth::check(&policy.secrets, &nonce, role, &proof) {
                return Ok((role, client_name));
            }
            // Slow down guessing: the Goodbye comes later with each recent failure of
            // this peer address.
            let ip = peer.map(|p| p.ip()).unwrap_or([0, 0, 0, 0].into());
            let delay = policy.throttle.fail(ip, std::time::Instant::now());
            tracing::info!(?peer, ?role, "authentication failed");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Err(None),
            }
            Err(Some(goodbye(
                ErrorCode::AuthFailed,
                "authentication failed: wrong secret for the requested role; check QD_SECRET",
            )))
        }
        _ => Err(Some(goodbye(
            ErrorCode::HandshakeRequired,
            "after a Challenge the next frame must be Auth; see docs/PROTOCOL.md",
        ))),
    }
}

/// Whether a request's answer can be large: these go to the engine one at a time.
fn is_heavy(body: &Request) -> bool {
    matches!(
        body,
        Request::Stats { .. }
            | Request::Queues { .. }
            | Request::Jobs { .. }
            | Request::Job { .. }
            | Request::Search { .. }
    )
}

/// Waits until `ready` holds, for at most `limit`. False on timeout, shutdown or a writer
/// that has stopped.
async fn wait_until(
    shared: &Shared,
    limit: Duration,
    shutdown: &CancellationToken,
    ready: impl Fn(&Shared) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready(shared) {
            return true;
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, notified) => if r.is_err() { return false },
            _ = shutdown.cancelled() => return false,
            _ = shared.writer_done.cancelled() => return false,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, ServerCodec>,
    conn: ConnId,
    role: Role,
    out: &mpsc::Sender<ServerFrame>,
    limits: &ConnLimits,
    shared: &Shared,
    commands: &mpsc::Sender<Command>,
    shutdown: &CancellationToken,
) -> Outcome {
    let reply = |id, error: WireError| ServerFrame::Response { id, result: Err(error) };
    let mut idle_deadline = Instant::now() + limits.idle_timeout;
    loop {
        // Backpressure on replies: read nothing more while too much waits to be written.
        if shared.queued.load(Ordering::Acquire) > limits.max_conn_buffer {
            let ok = wait_until(shared, limits.stuck_timeout, shutdown, |s| {
                s.queued.load(Ordering::Acquire) <= limits.max_conn_buffer
            })
            .await;
            if shutdown.is_cancelled() {
                return Outcome::ServerStopping;
            }
            if !ok {
                if shared.writer_done.is_cancelled() {
                    return Outcome::Closed;
                }
                tracing::info!(conn, "closing a connection whose peer does not read its replies");
                return Outcome::Stuck;
            }
        }
        let next = tokio::select! {
            next = frames.next() => next,
            _ = tokio::time::sleep_until(idle_deadline) => {
                if shared.in_flight.load(Ordering::Acquire) > 0 {
                    // Waiting for answers (a parked reserve, a commit) is not idleness.
                    idle_deadline = Instant::now() + limits.idle_timeout;
                    continue;
                }
                // No code of its own in protocol 2: "handshake again" is what the peer
                // must do to go on.
                let bye = goodbye(
                    ErrorCode::HandshakeRequired,
                    format!(
                        "closing an idle connection: nothing sent and nothing in flight for {}s; clients Ping when idle",
                        limits.idle_timeout.as_secs()
                    ),
                );
                let _ = out.send(bye).await;
                return Outcome::Closed;
            }
            _ = shared.writer_done.cancelled() => return Outcome::Closed,
            _ = shutdown.cancelled() => return Outcome::ServerStopping,
        };
        idle_deadline = Instant::now() + limits.idle_timeout;
        let frame = match next {
            None => return Outcome::Closed,
            Some(Ok(Incoming::Frame(ClientFrame::Request { id, body }))) => (id, body),
            Some(Ok(Incoming::Frame(ClientFrame::Hello(_)))) => {
                let _ = out
                    .send(goodbye(ErrorCode::BadFrame, "Hello sent twice on one connection"))
                    .await;
                return Outcome::Closed;
            }
            Some(Ok(Incoming::Frame(ClientFrame::Auth { .. }))) => {
                let _ =
                    out.send(goodbye(ErrorCode::BadFrame, "Auth sent on an open connection")).await;
                return Outcome::Closed;
            }
            Some(Ok(Incoming::BadRequest { id, error })) => {
                // The frame was well formed, only its request was not: answer and go on.
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
                let _ = out.send(reply(id, error)).await;
                continue;
            }
            Some(Err(e)) => {
                tracing::debug!(conn, error = %e, "closing connection after a protocol error");
                let _ = out.send(ServerFrame::Goodbye(codec_error(&e))).await;
                return Outcome::Closed;
            }
        };
        let (id, body) = frame;
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= limits.max_in_flight {
            let busy = WireError::new(
                ErrorCode::Busy,
                format!(
                    "more than {} requests in flight on this connection; wait for answers before sending more",
                    limits.max_in_flight
                ),
            );
            let _ = out.send(reply(id, busy)).await;
            continue;
        }
        if role == Role::Worker && body.is_admin() {
            let no = WireError::new(
                ErrorCode::Forbidden,
                "admin requests need the Admin role: connect with the admin secret",
            );
            let _ = out.send(reply(id, no)).await;
            continue;
        }
        if is_heavy(&body) {
            let free = |s: &Shared| s.heavy.lock().expect("never poisoned").is_none();
            if !wait_until(shared, limits.stuck_timeout, shutdown, free).await {
                if shutdown.is_cancelled() {
                    return Outcome::ServerStopping;
                }
                return if shared.writer_done.is_cancelled() {
                    Outcome::Closed
                } else {
                    Outcome::Stuck
                };
            }
            *shared.heavy.lock().expect("never poisoned") = Some(id);
        }
        if matches!(
            body,
            Request::Ack { .. }
                | Request::Nack { .. }
                | Request::Touch { .. }
                | Request::Progress { .. }
                | Request::Snooze { .. }
        ) {
            shared.lease_ops.lock().expect("never poisoned").insert(id);
        }
        let command = match body {
            Request::Subscribe { queues } => {
                Command::Subscribe { conn, id, queues, queued: shared.events.clone() }
            }
            body => Command::Request { conn, id, body },
        };
        if commands.send(command).await.is_err() {
            return Outcome::ServerStopping;
        }
    }
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

/// The writer's state: the encoded bytes not yet written, and the wrong-lease record.
struct Writer {
    pending: BytesMut,
    max_frame: usize,
    shared: Arc<Shared>,
    /// Times of recent wrong-lease answers, at most [`MAX_LEASE_FAILURES`].
    lease_failures: VecDeque<Instant>,
    /// A Goodbye is encoded: take nothing more.
    done: bool,
}

impl Writer {
    /// Encodes one frame into the pending bytes, accounting for what it answers.
    fn take(&mut self, frame: ServerFrame, from_engine: bool) {
        if let ServerFrame::Response { id, result } = &frame {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            if from_engine {
                self.account(*id, result);
            }
        }
        if matches!(frame, ServerFrame::Event { .. } | ServerFrame::Lagged { .. }) {
            self.shared.events.fetch_sub(1, Ordering::AcqRel);
        }
        self.done |= matches!(frame, ServerFrame::Goodbye(_));
        encode_or_explain(&frame, &mut self.pending, self.max_frame);
        self.publish();
    }

    /// Clears the heavy slot and counts wrong-lease answers; closes past the limit.
    fn account(&mut self, id: u64, result: &Result<Response, WireError>) {
        {
            let mut heavy = self.shared.heavy.lock().expect("never poisoned");
            if *heavy == Some(id) {
                *heavy = None;
                self.shared.changed.notify_waiters();
            }
        }
        if !self.shared.lease_ops.lock().expect("never poisoned").remove(&id) {
            return;
        }
        let wrong = |code: ErrorCode| matches!(code, ErrorCode::LeaseLost | ErrorCode::NotFound);
        let failures = match result {
            Err(e) => usize::from(wrong(e.code)),
            Ok(Response::Acked { failed }) => failed.iter().filter(|(_, e)| wrong(e.code)).count(),
            Ok(_) => 0,
        };
        let now = Instant::now();
        for _ in 0..failures {
            self.lease_failures.push_back(now);
        }
        while self.lease_failures.front().is_some_and(|t| now - *t > LEASE_FAILURE_WINDOW) {
            self.lease_failures.pop_front();
        }
        if self.lease_failures.len() >= MAX_LEASE_FAILURES && !self.done {
            let bye = goodbye(
                ErrorCode::LeaseLost,
                format!(
                    "closing: {MAX_LEASE_FAILURES} or more acks/nacks/touches with wrong or stale leases within {}s",
                    LEASE_FAILURE_WINDOW.as_secs()
                ),
            );
            encode_or_explain(&bye, &mut self.pending, self.max_frame);
            self.done = true;
        }
        while self.lease_failures.len() > MAX_LEASE_FAILURES {
            self.lease_failures.pop_front();
        }
    }

    fn publish(&self) {
        self.shared.queued.store(self.pending.len(), Ordering::Release);
    }
}

/// Takes frames from the reader's channel and the engine's as they come, encodes them at
/// once (so their size is counted), and writes whatever is pending in one call. Ends after
/// a Goodbye is written, or when both channels are closed and everything is written.
async fn write_loop<S: AsyncWrite>(
    mut write: WriteHalf<S>,
    mut own: mpsc::Receiver<ServerFrame>,
    mut engine: mpsc::UnboundedReceiver<ServerFrame>,
    max_frame: usize,
    max_conn_buffer: usize,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut w = Writer {
        pending: BytesMut::with_capacity(64 * 1024),
        max_frame,
        shared: shared.clone(),
        lease_failures: VecDeque::new(),
        done: false,
    };
    let (mut own_open, mut engine_open) = (true, true);
    let clean = loop {
        if w.pending.is_empty() && (w.done || (!own_open && !engine_open)) {
            break true;
        }
        let taking = !w.done;
        // Frames from the engine wait in its channel while too much is unwritten: replies
        // are bounded by `max_in_flight` there, and events by the engine's count of them
        // (`Shared::events`), which only moves when they are taken here.
        let room = w.pending.len() < max_conn_buffer;
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => break false,
            f = own.recv(), if taking && own_open => match f {
                Some(f) => w.take(f, false),
                None => own_open = false,
            },
            f = engine.recv(), if taking && room && engine_open => match f {
                Some(f) => w.take(f, true),
                None => engine_open = false,
            },
            r = write.write(&w.pending), if !w.pending.is_empty() => match r {
                Ok(n) if n > 0 => {
                    w.pending.advance(n);
                    if w.pending.is_empty() {
                        if w.pending.capacity() > 1 << 20 {
                            // Give back what a burst took.
                            w.pending = BytesMut::with_capacity(64 * 1024);
                        }
                        if write.flush().await.is_err() {
                            break false;
                        }
                    }
                    w.publish();
                    shared.changed.notify_waiters();
                }
                _ => break false,
            },
        }
    };
    if clean {
        if !w.done && shutdown.is_cancelled() {
            let bye =
                goodbye(ErrorCode::ShuttingDown, "the server is shutting down; reconnect shortly");
            encode_or_explain(&bye, &mut w.pending, max_frame);
            let _ = write.write_all(&w.pending).await;
        }
        let _ = write.shutdown().await;
    }
    shared.writer_done.cancel();
    shared.changed.notify_waiters();
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
