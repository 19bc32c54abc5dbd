//! One multiplexed, pipelined, reconnecting connection to a qd server.
//!
//! [`Connection::call`] sends one request and awaits its answer. Many callers share one TCP
//! socket: each request gets an id, and the answer with that id completes the caller's
//! oneshot, in whatever order the server answers.
//!
//! ```text
//!  callers ──(Command: id, request, oneshot, in-flight permit)──► bounded mpsc
//!                                                                    │
//!  driver task:  writer half: drain everything queued, encode, ONE write_all
//!                reader half: read, decode every frame in the buffer, complete oneshots
//!                                 ▲ both share `pending` (id -> oneshot + permit)
//! ```
//!
//! Why one write per batch: a syscall per frame caps the server at a tenth of what it can
//! answer when frames arrive batched. The mpsc drains naturally: while one write is on the
//! wire, the next batch queues up.
//!
//! Why a semaphore: the server's `Welcome` says how many requests a connection may have in
//! flight; beyond that it answers `Busy`. A caller takes a permit before queueing, and the
//! permit lives in `pending` until the answer arrives, so we never exceed the limit.
//!
//! Connection loss: every request that was written (or may have been) fails with
//! `Disconnected` (or the server's `Goodbye` error); requests that certainly were not
//! written (still waiting for a permit, still in the mpsc) are retried on the next
//! connection transparently. The next caller reconnects, with capped exponential backoff,
//! for up to `reconnect_for`; callers that queued behind a failed reconnect round get its
//! error instead of starting a round of their own.
//!
//! Every dial, first or reconnect, does the whole handshake: TCP, TLS when configured,
//! `Hello`, and when the server sends a `Challenge`, an `Auth` with the proof of the
//! secret for the configured role (`qd_protocol::auth`). A refused secret is not transient:
//! reconnecting stops at once and the caller learns to check its secret.
//!
//! Keepalive: when nothing was written for `idle_ping`, the writer sends a `Ping` (its
//! answer is dropped), so a server's idle timeout closes dead clients, not quiet ones.
//!
//! Streams (issue 9): a `Subscribe` is answered once like any request, and then the server
//! pushes `Event`/`Lagged` frames tagged with its request id. The reader routes them to the
//! subscription's bounded channel (`streams`, registered before the `Subscribe` is written)
//! with `try_send`: a caller that does not poll its stream must not stop the reader, which
//! also carries every other caller's answers. What does not fit is counted and announced as
//! one `Event::Lagged` when room returns. When the socket dies the channels close, and
//! `subscription.rs` subscribes again on the next socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::BytesMut;
use qd_protocol::codec::ClientCodec;
use qd_protocol::message::{Hello, Welcome};
use qd_protocol::{
    auth, ClientFrame, ErrorCode, Request, Response, Role, ServerFrame, WireError,
    DEFAULT_MAX_FRAME, HARD_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::subscription::Event;
use crate::tls::Tls;

/// Either half of a plain or TLS socket. Boxed: one indirection per read or write batch
/// is nothing next to a syscall, and it keeps the driver free of type parameters.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Backoff between reconnect attempts: starts here, doubles, stops growing at the cap.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_CAP: Duration = Duration::from_secs(2);
/// Most commands the writer encodes into one write.
const WRITE_BATCH: usize = 512;
/// How often one call may land on a connection that died before its request was written.
/// Each such retry means a fresh connection died at once; past this, give up.
const MAX_UNSENT_RETRIES: usize = 5;
/// Events a subscription buffers on this side while its stream is not polled; past it they
/// are counted and announced as one `Event::Lagged`.
const STREAM_BUFFER: usize = 1024;

/// Settings fixed when the client is built.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub addr: String,
    pub name: String,
    pub secret: Option<Secret>,
    /// The role asked for when the server challenges.
    pub role: Role,
    pub tls: Option<Tls>,
    /// Send a `Ping` after this long without writing anything.
    pub idle_ping: Option<Duration>,
    pub connect_timeout: Duration,
    pub request_timeout: Option<Duration>,
    pub reconnect_for: Duration,
}

/// The shared secret; its `Debug` does not show it, so configs can be logged.
#[derive(Clone)]
pub(crate) struct Secret(pub Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The shared connection state behind every `Client` clone.
#[derive(Debug)]
pub(crate) struct Connection {
    config: Config,
    /// Request ids; unique for the life of this `Connection`, across reconnects, so a late
    /// answer on a new socket can never complete the wrong caller. Shared with the driver,
    /// which takes ids for its keepalive pings.
    next_id: Arc<AtomicU64>,
    /// The live socket, if any. A std mutex: held only to clone or swap the `Arc`.
    current: StdMutex<Option<Arc<Live>>>,
    /// Held by whoever is reconnecting, so that one caller dials and the rest wait. Holds
    /// how the last reconnect round failed, handed to callers that waited for that round.
    reconnect: tokio::sync::Mutex<Option<Error>>,
    /// Reconnect rounds finished so far.
    rounds: AtomicU64,
}

/// One established socket: the sending side of its driver task.
#[derive(Debug)]
struct Live {
    tx: mpsc::Sender<Command>,
    /// `max_in_flight` permits; closed when the socket dies so that waiters move on.
    permits: Arc<Semaphore>,
    /// Cancelled when the driver task ends.
    closed: CancellationToken,
    welcome: Welcome,
    /// The subscriptions made on this socket, by their `Subscribe` request id.
    streams: StreamMap,
}

/// Where a subscription's pushed events go.
#[derive(Debug)]
struct Sink {
    tx: mpsc::Sender<Event>,
    missed: Missed,
}

/// Events dropped (here or by the server) since the last one delivered. Shared with the
/// stream, which reports it itself when its channel is empty (otherwise a count would wait
/// for the next event); every change happens under this lock, so a drop is counted once.
pub(crate) type Missed = Arc<StdMutex<u64>>;

/// A subscription on one socket: its `Subscribe` request id, its events, its drop count.
#[derive(Debug)]
pub(crate) struct StreamHandle {
    pub id: u64,
    pub rx: mpsc::Receiver<Event>,
    pub missed: Missed,
}

type StreamMap = Arc<StdMutex<HashMap<u64, Sink>>>;

/// What a caller hands the driver.
#[derive(Debug)]
struct Command {
    id: u64,
    body: Request,
    reply: oneshot::Sender<Outcome>,
    permit: OwnedSemaphorePermit,
}

/// What the driver hands back.
#[derive(Debug)]
enum Outcome {
    Done(Result<Response, Error>),
    /// The socket died before this request was written: safe to send again.
    NotSent(Request),
}

/// A written request awaiting its answer. Holds its in-flight permit until then.
#[derive(Debug)]
struct Pending {
    reply: oneshot::Sender<Outcome>,
    _permit: OwnedSemaphorePermit,
}

type PendingMap = Arc<StdMutex<HashMap<u64, Pending>>>;

/// Why a socket's driver stopped.
#[derive(Debug)]
enum Closed {
    /// Every `Client` handle is gone.
    Unused,
    Goodbye(WireError),
    Lost(String),
}

impl Connection {
    /// Dials once (no retries: a wrong address should fail fast) and keeps the socket.
    pub(crate) async fn open(config: Config) -> Result<Connection, Error> {
        let next_id = Arc::new(AtomicU64::new(1));
        let live = dial(&config, &next_id).await?;
        Ok(Connection {
            config,
            next_id,
            current: StdMutex::new(Some(Arc::new(live))),
            reconnect: tokio::sync::Mutex::new(None),
            rounds: AtomicU64::new(0),
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The server's `Welcome` on the current socket, if one is up.
    pub(crate) fn welcome(&self) -> Option<Welcome> {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.as_ref().filter(|l| !l.closed.is_cancelled()).map(|l| l.welcome.clone())
    }

    /// Sends `body` and waits for its answer, up to the request timeout plus `extra` (a
    /// reserve's own wait). A `WireError` answer becomes [`Error::Server`].
    pub(crate) async fn call(&self, body: Request, extra: Duration) -> Result<Response, Error> {
        match self.config.request_timeout {
            None => self.call_inner(body).await,
            Some(t) => {
                let after = t.saturating_add(extra);
                match tokio::time::timeout(after, self.call_inner(body)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout { after }),
                }
            }
        }
    }

    async fn call_inner(&self, body: Request) -> Result<Response, Error> {
        let mut body = Some(body);
        for _ in 0..=MAX_UNSENT_RETRIES {
            let live = self.live().await?;
            // A closed semaphore means the socket died before we could send: try again.
            let Ok(permit) = live.permits.clone().acquire_owned().await else { continue };
            let (reply, answer) = oneshot::channel();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let cmd = Command { id, body: body.take().expect("body present"), reply, permit };
            if let Err(mpsc::error::SendError(cmd)) = live.tx.send(cmd).await {
                body = Some(cmd.body);
                continue;
            }
            match answer.await {
                Ok(Outcome::Done(result)) => return result,
                Ok(Outcome::NotSent(unsent)) => body = Some(unsent),
                Err(_) => {
                    return Err(Error::Disconnected {
                        reason: "the connection task stopped".into(),
                    })
                }
            }
        }
        Err(Error::Disconnected {
            reason: format!(
                "the connection dropped {} times in a row before the request could be sent",
                MAX_UNSENT_RETRIES + 1
            ),
        })
    }

    /// Sends `Subscribe { queues }` on the current socket (or a new one) and returns its
    /// request id, which tags its events, and the channel they arrive on. The channel
    /// closes when the socket dies.
    pub(crate) async fn subscribe(&self, queues: Vec<String>) -> Result<StreamHandle, Error> {
        let live = self.live().await?;
        let lost =
            || Error::Disconnected { reason: "the connection closed while subscribing".into() };
        let permit = live.permits.clone().acquire_owned().await.map_err(|_| lost())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        // Registered before the request is written: events may follow its answer at once.
        let missed = Missed::default();
        lock(&live.streams).insert(id, Sink { tx, missed: missed.clone() });
        let (reply, answer) = oneshot::channel();
        let cmd = Command { id, body: Request::Subscribe { queues }, reply, permit };
        let answered = async {
            live.tx.send(cmd).await.map_err(|_| lost())?;
            match answer.await {
                Ok(Outcome::Done(result)) => result,
                Ok(Outcome::NotSent(_)) | Err(_) => Err(lost()),
            }
        };
        let result = match self.config.request_timeout {
            Some(after) => {
                tokio::time::timeout(after, answered).await.unwrap_or(Err(Error::Timeout { after }))
            }
            None => answered.await,
        };
        match result {
            Ok(Response::Done) => Ok(StreamHandle { id, rx, missed }),
            Ok(other) => {
                lock(&live.streams).remove(&id);
                Err(Error::Protocol(format!("expected Done to Subscribe, got {other:?}")))
            }
            Err(e) => {
                lock(&live.streams).remove(&id);
                Err(e)
            }
        }
    }

    /// The subscription made by request `id` is dropped: stop routing its events and, if
    /// its socket is still up and a permit is free, tell the server (answer ignored). Not
    /// async, so a `Drop` can call it; when it cannot tell the server, the subscription
    /// ends with the socket.
    pub(crate) fn forget_stream(&self, id: u64) {
        let Some(live) = self.current_live() else { return };
        if lock(&live.streams).remove(&id).is_none() {
            return;
        }
        let Ok(permit) = live.permits.clone().try_acquire_owned() else { return };
        let (reply, _ignored) = oneshot::channel();
        let request = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = Request::Unsubscribe { subscription: id };
        let _ = live.tx.try_send(Command { id: request, body, reply, permit });
    }

    /// The current socket, or a new one.
    async fn live(&self) -> Result<Arc<Live>, Error> {
        if let Some(live) = self.current_live() {
            return Ok(live);
        }
        let round_seen = self.rounds.load(Ordering::Acquire);
        let mut last_failure = self.reconnect.lock().await;
        if let Some(live) = self.current_live() {
            return Ok(live);
        }
        // A round ran while we waited for the lock, and failed: share its answer rather
        // than making every queued caller wait out a full round in turn. Callers that
        // arrive after it see the new round number and dial afresh.
        if self.rounds.load(Ordering::Acquire) != round_seen {
            if let Some(err) = &*last_failure {
                return Err(err.clone());
            }
        }
        let result = self.reconnect_round().await;
        self.rounds.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(live) => {
                *last_failure = None;
                let live = Arc::new(live);
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                *last_failure = Some(e.clone());
                Err(e)
            }
        }
    }

    fn current_live(&self) -> Option<Arc<Live>> {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.as_ref().filter(|l| !l.closed.is_cancelled()).cloned()
    }

    /// Dials until it works, a refusal says retrying is pointless, or `reconnect_for` ran out.
    async fn reconnect_round(&self) -> Result<Live, Error> {
        let start = tokio::time::Instant::now();
        let mut wait = RECONNECT_FIRST;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match dial(&self.config, &self.next_id).await {
                Ok(live) => {
                    tracing::info!(addr = %self.config.addr, attempts, "reconnected to qd");
                    return Ok(live);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    let elapsed = start.elapsed();
                    if elapsed + wait > self.config.reconnect_for {
                        tracing::warn!(addr = %self.config.addr, attempts, ?elapsed, error = %e, "giving up reconnecting to qd");
                        return Err(match e {
                            Error::Connect { addr, source } => Error::Connect {
                                addr,
                                source: Arc::new(std::io::Error::new(
                                    source.kind(),
                                    format!("{source} (gave up after {attempts} attempts in {elapsed:.1?})"),
                                )),
                            },
                            other => other,
                        });
                    }
                    tracing::debug!(addr = %self.config.addr, attempts, error = %e, "reconnect failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECONNECT_CAP);
                }
            }
        }
    }
}

/// Connects (TCP, then TLS when configured), says `Hello`, answers a `Challenge` when the
/// server sends one, waits for `Welcome`, and starts the driver task.
async fn dial(config: &Config, next_id: &Arc<AtomicU64>) -> Result<Live, Error> {
    let connect_err = |source: std::io::Error| Error::Connect {
        addr: config.addr.clone(),
        source: Arc::new(source),
    };
    let timed_out = || {
        connect_err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no Welcome within {:?}", config.connect_timeout),
        ))
    };
    let handshake = async {
        let stream = TcpStream::connect(&config.addr).await.map_err(connect_err)?;
        // Requests are small and latency-bound; batching is done by the writer, not Nagle.
        stream.set_nodelay(true).map_err(connect_err)?;
        let (mut rd, mut wr): (Reader, Writer) = match &config.tls {
            None => {
                let (rd, wr) = stream.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Some(tls) => {
                let stream = tls.wrap(stream).await.map_err(|e| Error::Tls {
                    addr: config.addr.clone(),
                    message: e.to_string(),
                })?;
                let (rd, wr) = tokio::io::split(stream);
                (Box::new(rd), Box::new(wr))
            }
        };

        let mut codec = ClientCodec::new(DEFAULT_MAX_FRAME);
        let mut out = BytesMut::new();
        let hello = ClientFrame::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            client_name: config.name.clone(),
        });
        codec.encode(&hello, &mut out).map_err(|e| Error::invalid_arg(e.to_string()))?;
        wr.write_all(&out).await.map_err(connect_err)?;

        let mut buf = BytesMut::with_capacity(8 * 1024);
        let refused =
            |code, message: String| Error::Handshake { addr: config.addr.clone(), code, message };
        let auth_failed = |message: String| Error::Auth { addr: config.addr.clone(), message };
        let mut challenged = false;
        let welcome = loop {
            match codec.decode(&mut buf) {
                Ok(Some(ServerFrame::Welcome(w))) => break w,
                Ok(Some(ServerFrame::Goodbye(e))) if e.code == ErrorCode::AuthFailed => {
                    return Err(auth_failed(e.message))
                }
                Ok(Some(ServerFrame::Goodbye(e))) => return Err(refused(e.code, e.message)),
                Ok(Some(ServerFrame::Challenge { nonce })) if !challenged => {
                    challenged = true;
                    let Some(secret) = &config.secret else {
                        return Err(auth_failed(
                            "the server requires a secret and this client has none".into(),
                        ));
                    };
                    let proof = auth::proof(&secret.0, &nonce, config.role);
                    out.clear();
                    let answer = ClientFrame::Auth { role: config.role, proof };
                    codec
                        .encode(&answer, &mut out)
                        .map_err(|e| Error::invalid_arg(e.to_string()))?;
                    wr.write_all(&out).await.map_err(connect_err)?;
                }
                Ok(Some(other)) => {
                    return Err(refused(
                        ErrorCode::BadFrame,
                        format!("expected Welcome, got {other:?}"),
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(refused(ErrorCode::BadFrame, e.to_string())),
            }
            let n = rd.read_buf(&mut buf).await.map_err(connect_err)?;
            if n == 0 {
                return Err(connect_err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before its Welcome",
                )));
            }
        };
        if welcome.protocol != PROTOCOL_VERSION {
            return Err(refused(
                ErrorCode::ProtocolVersion,
                format!(
                    "server speaks protocol {}, this client {PROTOCOL_VERSION}",
                    welcome.protocol
                ),
            ));
        }
        Ok((rd, wr, buf, welcome))
    };
    let (rd, wr, buf, welcome) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| timed_out())??;
    tracing::debug!(addr = %config.addr, server = %welcome.server, max_in_flight = welcome.max_in_flight, role = ?welcome.role, "connected to qd");

    let in_flight = (welcome.max_in_flight.max(1) as usize).min(Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(in_flight));
    // Callers hold a permit before queueing, so the channel never holds more than
    // `in_flight` commands; the bound only keeps memory small for huge limits.
    let (tx, rx) = mpsc::channel(in_flight.min(4096));
    let closed = CancellationToken::new();
    let streams = StreamMap::default();
    let driver = Driver {
        streams: streams.clone(),
        addr: config.addr.clone(),
        // Encode against the server's limit so an oversized request fails here, alone,
        // instead of getting the whole connection closed by the server.
        encoder: ClientCodec::new(welcome.max_frame as usize),
        // Answers are not bound by the server's request limit (a reserve of many large
        // jobs); the hard cap still keeps a broken length prefix from allocating much.
        decoder: ClientCodec::new(HARD_MAX_FRAME),
        pending: Arc::new(StdMutex::new(HashMap::new())),
        permits: permits.clone(),
        closed: closed.clone(),
        idle_ping: config.idle_ping,
        next_id: next_id.clone(),
    };
    tokio::spawn(driver.run(rd, wr, buf, rx));
    Ok(Live { tx, permits, closed, welcome, streams })
}

/// The task that owns one socket.
struct Driver {
    addr: String,
    encoder: ClientCodec,
    decoder: ClientCodec,
    pending: PendingMap,
    permits: Arc<Semaphore>,
    closed: CancellationToken,
    idle_ping: Option<Duration>,
    next_id: Arc<AtomicU64>,
    streams: StreamMap,
}

impl Driver {
    async fn run(self, rd: Reader, wr: Writer, buf: BytesMut, mut rx: mpsc::Receiver<Command>) {
        // Both halves run in this one task; when either stops, the other is dropped with
        // it. Dropping the writer mid-write is fine: the socket is being abandoned anyway.
        //
        // Reading is polled first: if the server already closed the socket (say, it was
        // restarted while this task was not scheduled), we learn it before writing new
        // requests into a dead socket, so they count as never sent and go out again on a
        // new connection instead of failing with an unknown outcome.
        let why = tokio::select! {
            biased;
            why = read_loop(self.decoder, &self.pending, &self.streams, rd, buf) => why,
            why = write_loop(&self, wr, &mut rx) => why,
        };
        // Order matters. First make the socket look dead so new callers reconnect, then
        // stop the permit and command queues so nobody new gets in, and only then fail
        // what is left: nothing can be added to `pending` or the queue after this point.
        self.closed.cancel();
        self.permits.close();
        rx.close();
        // Closing every stream's channel tells its subscription to subscribe again.
        lock(&self.streams).clear();
        while let Ok(cmd) = rx.try_recv() {
            // Never written, so the caller may safely send it again on a new socket.
            let _ = cmd.reply.send(Outcome::NotSent(cmd.body));
        }
        let pending: Vec<Pending> = {
            let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, p)| p).collect()
        };
        let err = match &why {
            Closed::Unused => None,
            Closed::Goodbye(e) => {
                tracing::warn!(addr = %self.addr, code = ?e.code, "qd closed the connection: {}", e.message);
                Some(Error::server(e.clone()))
            }
            Closed::Lost(reason) => {
                tracing::warn!(addr = %self.addr, in_flight = pending.len(), "connection to qd lost: {reason}");
                Some(Error::Disconnected { reason: reason.clone() })
            }
        };
        if let Some(err) = err {
            for p in pending {
                let _ = p.reply.send(Outcome::Done(Err(err.clone())));
            }
        }
    }
}

async fn write_loop(driver: &Driver, mut wr: Writer, rx: &mut mpsc::Receiver<Command>) -> Closed {
    let (mut codec, pending) = (driver.encoder, &driver.pending);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let received = match driver.idle_ping {
            None => rx.recv_many(&mut batch, WRITE_BATCH).await,
            Some(every) => {
                match tokio::time::timeout(every, rx.recv_many(&mut batch, WRITE_BATCH)).await {
                    Ok(n) => n,
                    Err(_) => match driver.ping() {
                        // Queued as a command like any other, with a permit (so it never
                        // pushes the connection past its in-flight limit) and a reply
                        // nobody waits for. All permits taken: requests are in flight, the
                        // server is not idle-waiting on us, skip this one.
                        Some(cmd) => {
                            batch.push(cmd);
                            1
                        }
                        None => continue,
                    },
                }
            }
        };
        if received == 0 {
            return Closed::Unused;
        }
        {
            // Register before writing: the answer may arrive before write_all returns.
            let mut map = pending.lock().unwrap_or_else(|e| e.into_inner());
            for cmd in batch.drain(..) {
                let frame = ClientFrame::Request { id: cmd.id, body: cmd.body };
                match codec.encode(&frame, &mut out) {
                    Ok(()) => {
                        map.insert(cmd.id, Pending { reply: cmd.reply, _permit: cmd.permit });
                    }
                    Err(e) => {
                        // `encode` left `out` as it was; only this request fails.
                        let _ = cmd.reply.send(Outcome::Done(Err(Error::Invalid {
                            code: ErrorCode::FrameTooLarge,
                            message: e.to_string(),
                        })));
                    }
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        if let Err(e) = wr.write_all(&out).await {
            return Closed::Lost(format!("write failed: {e}"));
        }
        out.clear();
    }
}

impl Driver {
    /// A keepalive `Ping`, if an in-flight permit is free.
    fn ping(&self) -> Option<Command> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let (reply, _ignored) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(addr = %self.addr, id, "idle: sending Ping");
        Some(Command { id, body: Request::Ping, reply, permit })
    }
}

async fn read_loop(
    mut codec: ClientCodec,
    pending: &PendingMap,
    streams: &StreamMap,
    mut rd: Reader,
    mut buf: BytesMut,
) -> Closed {
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(ServerFrame::Response { id, result })) => {
                    let waiter = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    match waiter {
                        // The caller may have timed out and left; its permit still returns.
                        Some(p) => {
                            let _ = p.reply.send(Outcome::Done(result.map_err(Error::server)));
                        }
                        None => tracing::debug!(id, "answer to an unknown request id; ignored"),
                    }
                }
                Ok(Some(ServerFrame::Event { subscription, event })) => {
                    route(streams, subscription, Some(event), 0)
                }
                Ok(Some(ServerFrame::Lagged { subscription, missed })) => {
                    route(streams, subscription, None, missed)
                }
                Ok(Some(ServerFrame::Goodbye(e))) => return Closed::Goodbye(e),
                Ok(Some(ServerFrame::Welcome(_) | ServerFrame::Challenge { .. })) => {
                    return Closed::Lost("protocol error: a handshake frame after Welcome".into())
                }
                Ok(None) => break,
                Err(e) => return Closed::Lost(format!("protocol error: {e}")),
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return Closed::Lost("the server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Closed::Lost(format!("read failed: {e}")),
        }
    }
}

/// Hands a pushed event (or, with `None`, the server's count of `missed` events) to its
/// subscription without ever waiting: what does not fit is counted, and the count goes out
/// as one `Event::Lagged` ahead of the next event that fits. Events of a subscription
/// unknown here (dropped, or from before a reconnect) are ignored.
fn route(
    streams: &StreamMap,
    subscription: u64,
    event: Option<qd_protocol::JobEvent>,
    missed: u64,
) {
    let mut map = lock(streams);
    let Some(sink) = map.get_mut(&subscription) else { return };
    let closed = {
        let mut lost = lock(&sink.missed);
        *lost += missed;
        let mut closed = false;
        if *lost > 0 {
            match sink.tx.try_send(Event::Lagged { missed: *lost }) {
                Ok(()) => *lost = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        match event {
            // Behind a count still unsent, an event must not overtake it.
            Some(_) if *lost > 0 => *lost += 1,
            Some(event) => match sink.tx.try_send(Event::Job(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => *lost += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            },
            None => {}
        }
        closed
    };
    if closed {
        // The stream was dropped; `forget_stream` may not have run on this socket.
        map.remove(&subscription);
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
