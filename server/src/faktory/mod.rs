//! Faktory's work protocol on a second port (`qd serve --faktory ADDR`), so the Faktory
//! clients of every language (Node `faktory-worker`, Python `faktory`, Rust `faktory`, Go,
//! Ruby) push and work qd jobs unchanged. docs/FAKTORY.md is the user's side of this.
//!
//! It is a front end, like the dashboard: it drives the same engine as qd's own protocol,
//! through one in-process engine connection (`link.rs`), so jobs pushed here are qd jobs
//! (durable before `+OK`, on the dashboard, in `qd` admin commands). It owns:
//! - `codec.rs`: command lines in (length-capped), RESP replies out;
//! - `auth.rs`: the `+HI` challenge and Faktory's iterated-SHA-256 password hash;
//! - `job.rs`: job JSON to qd job and back, Faktory's validation texts and backoff;
//! - `link.rs`: the engine connection and the `jid` to lease map;
//! - `commands.rs`: PUSH, PUSHB, FETCH, ACK, FAIL, BEAT;
//! - `admin.rs`: INFO, FLUSH, QUEUE, MUTATE;
//! - this file: the accept loop, one task per socket (TLS when the server has it, the
//!   handshake, then one command at a time, as every Faktory client sends them, until the
//!   connection has been idle too long), and the state the sockets share ([`Front`]: the
//!   worker registry, the queues INFO lists, counters).
//!
//! It leaves to others: the engine and everything below it; the secret, the idle timeout
//! and the TLS acceptor (the native port's, handed over by the composition root); the
//! refusal to listen beyond loopback without a secret (`server.rs`).

mod admin;
mod auth;
mod codec;
mod commands;
mod job;
mod link;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use link::FAKTORY_CONN;

use crate::engine::Command;
use crate::net::listener::accept_bounded;
use crate::net::tls::TlsAcceptor;
use auth::Challenge;
use codec::{split_verb, FaktoryCodec, LineError, Reply};
use link::EngineLink;

/// The Faktory version INFO reports: a 1.x at or above what the clients' suites check
/// (the Rust crate wants 1.8 or later).
pub const FAKTORY_VERSION: &str = "1.9.0";

/// What the Faktory port needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct FaktoryConfig {
    /// The password clients must prove (the server's worker secret); none: no challenge.
    pub password: Option<Vec<u8>>,
    /// Longest command line, in bytes (the server's `max_frame`).
    pub max_line: usize,
    /// A client must say HELLO within this time.
    pub handshake_timeout: Duration,
    /// Sockets served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends no command for this long is closed (the server's
    /// `idle_timeout`). A command being answered (a FETCH waiting) is not idleness.
    pub idle_timeout: Duration,
}

/// What a worker was asked to do by an operator, told on its next BEAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Quiet,
    Terminate,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Quiet => "quiet",
            WorkerState::Terminate => "terminate",
        }
    }
}

/// The state every Faktory socket shares.
#[derive(Debug)]
pub struct Front {
    link: Arc<EngineLink>,
    config: FaktoryConfig,
    started: Instant,
    /// Worker processes by `wid`, with the state an operator set (`None`: running).
    workers: Mutex<HashMap<String, Option<WorkerState>>>,
    /// Queues INFO lists besides those with ready jobs: pushed to through this port since
    /// start, not removed or flushed since. (qd creates a queue on a reserve too; Faktory
    /// does not list a queue only fetched from, and the clients' suites check that.)
    visible: Mutex<BTreeSet<String>>,
    connections: AtomicU64,
    commands: AtomicU64,
}

impl Front {
    fn saw_queue(&self, queue: &str) {
        self.visible.lock().expect("visible lock").insert(queue.to_owned());
    }

    fn forget_queue(&self, queue: &str) {
        self.visible.lock().expect("visible lock").remove(queue);
    }

    fn is_visible(&self, queue: &str) -> bool {
        self.visible.lock().expect("visible lock").contains(queue)
    }

    fn workers(&self) -> usize {
        self.workers.lock().expect("workers lock").len()
    }

    fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn command_count(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Records a beat of `wid`; what it should do, if not run on.
    fn beat(&self, wid: &str) -> Option<WorkerState> {
        let mut workers = self.workers.lock().expect("workers lock");
        *workers.entry(wid.to_owned()).or_default()
    }

    /// Asks worker `wid` (every known worker for `*`) to go quiet or terminate; it hears
    /// so on its next BEAT. Returns how many workers were told.
    fn signal(&self, wid: &str, state: WorkerState) -> usize {
        let mut workers = self.workers.lock().expect("workers lock");
        let mut n = 0;
        for (w, s) in workers.iter_mut() {
            if wid == "*" || w == wid {
                *s = Some(state);
                n += 1;
            }
        }
        n
    }
}

/// A bound Faktory listener, not yet accepting.
#[derive(Debug)]
pub struct FaktoryListener {
    listener: TcpListener,
}

impl FaktoryListener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<FaktoryListener> {
        Ok(FaktoryListener { listener: TcpListener::bind(addr).await? })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connects to the engine over `commands` and serves until `shutdown` is cancelled,
    /// each socket a task of `conns`, inside TLS when `tls` is given (Faktory clients then
    /// connect with `tcp+tls://`).
    pub async fn run(
        self,
        config: FaktoryConfig,
        tls: Option<TlsAcceptor>,
        commands: mpsc::Sender<Command>,
        shutdown: CancellationToken,
        conns: TaskTracker,
    ) {
        let link = match EngineLink::connect(commands).await {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(error = %e, "the Faktory port cannot reach the engine");
                return;
            }
        };
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let front = Arc::new(Front {
            link,
            config,
            started: Instant::now(),
            workers: Mutex::default(),
            visible: Mutex::default(),
            connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
        });
        while let Some((permit, stream, peer)) =
            accept_bounded(&self.listener, &permits, &shutdown, "faktory").await
        {
            let (front, token, tls) = (front.clone(), shutdown.clone(), tls.clone());
            conns.spawn(async move {
                let _ = stream.set_nodelay(true);
                front.connections.fetch_add(1, Ordering::Relaxed);
                let served = match tls {
                    None => serve(stream, &front, token).await,
                    // As on the native port, the TLS handshake counts against the handshake
                    // timeout: a peer that opens a socket and says nothing holds no slot.
                    Some(tls) => {
                        let limit = front.config.handshake_timeout;
                        match tokio::time::timeout(limit, tls.accept(stream)).await {
                            Ok(Ok(stream)) => serve(stream, &front, token).await,
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(io::Error::other("TLS handshake timed out")),
                        }
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "Faktory connection ended");
                }
                front.connections.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Hello {
    #[serde(default)]
    v: Option<i64>,
    #[serde(default)]
    pwdhash: Option<String>,
    #[serde(default)]
    wid: Option<String>,
}

/// The byte streams a Faktory connection runs over: plain TCP or TLS.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Socket for S {}

/// One socket: greeting, HELLO, then commands until END, EOF, bad input, idleness or
/// shutdown.
async fn serve<S: Socket>(stream: S, front: &Front, shutdown: CancellationToken) -> io::Result<()> {
    let mut framed = Framed::new(stream, FaktoryCodec::new(front.config.max_line));
    let challenge = match &front.config.password {
        Some(_) => Some(Challenge::random().map_err(|e| io::Error::other(e.to_string()))?),
        None => None,
    };
    send(&mut framed, Reply::Simple(Challenge::greeting(challenge.as_ref()))).await?;

    let hello = match tokio::time::timeout(front.config.handshake_timeout, framed.next()).await {
        Ok(Some(Ok(line))) => line,
        Ok(Some(Err(e))) => return refuse(&mut framed, e).await,
        Ok(None) | Err(_) => return Ok(()),
    };
    let hello: Hello = match hello.strip_prefix("HELLO ").map(serde_json::from_str) {
        Some(Ok(h)) => h,
        _ => {
            let reply = Reply::err("the first command must be HELLO {json}");
            return send(&mut framed, reply).await;
        }
    };
    if let (Some(password), Some(challenge)) = (&front.config.password, &challenge) {
        let version = hello.v.unwrap_or(1);
        let proof = hello.pwdhash.as_deref().unwrap_or_default();
        if !challenge.verify(password, version, proof) {
            return send(&mut framed, Reply::err("Invalid password")).await;
        }
    }
    if let Some(wid) = hello.wid.as_deref().filter(|w| !w.is_empty()) {
        front.beat(wid);
    }
    send(&mut framed, Reply::Ok).await?;

    loop {
        // Closed without a word when idle: a pooled client (Node, Go) then opens a new
        // connection on its next command, where an unasked `-ERR` would be read as the
        // answer to that command.
        let line = tokio::select! {
            line = framed.next() => line,
            _ = tokio::time::sleep(front.config.idle_timeout) => {
                tracing::debug!("closing an idle Faktory connection");
                return Ok(());
            }
            _ = shutdown.cancelled() => return Ok(()),
        };
        let line = match line {
            None => return Ok(()),
            Some(Ok(line)) => line,
            Some(Err(e)) => return refuse(&mut framed, e).await,
        };
        front.commands.fetch_add(1, Ordering::Relaxed);
        let (verb, args) = split_verb(&line);
        let reply = match verb {
            "END" => return Ok(()),
            "PUSH" => commands::push(front, args).await,
            "PUSHB" => commands::push_bulk(front, args).await,
            "FETCH" => commands::fetch(front, args).await,
            "ACK" => commands::ack(front, args).await,
            "FAIL" => commands::fail(front, args).await,
            "BEAT" => commands::beat(front, args).await,
            "INFO" => admin::info(front).await,
            "FLUSH" => admin::flush(front).await,
            "QUEUE" => admin::queue(front, args).await,
            "MUTATE" => admin::mutate(front, args).await,
            "QD-SIGNAL" => signal(front, args),
            "" => continue,
            other => {
                let shown: String = other.chars().take(32).collect();
                Reply::err(format!("unknown command {shown}"))
            }
        };
        send(&mut framed, reply).await?;
    }
}

#[derive(Deserialize)]
struct Signal {
    wid: String,
    state: String,
}

/// `QD-SIGNAL {"wid":"<wid>"|"*","state":"quiet"|"terminate"}`: qd's own command (Faktory
/// does this from its web UI), so an operator or a deploy script can stop workers
/// gracefully: each hears it on its next BEAT. Answers `+OK`, or `-ERR` when no worker
/// with that wid has said HELLO or BEAT since the server started.
fn signal(front: &Front, args: &str) -> Reply {
    let s: Signal = match commands::parse(args) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    let state = match s.state.as_str() {
        "quiet" => WorkerState::Quiet,
        "terminate" => WorkerState::Terminate,
        other => return Reply::err(format!("unknown state {other:?}: use quiet or terminate")),
    };
    match front.signal(&s.wid, state) {
        0 => Reply::err(format!("no worker {:?} is known; it must have sent HELLO or BEAT", s.wid)),
        _ => Reply::Ok,
    }
}

async fn send<S: Socket>(framed: &mut Framed<S, FaktoryCodec>, reply: Reply) -> io::Result<()> {
    framed.send(reply).await.map_err(|e| match e {
        LineError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    })
}

/// Input that is not a line we can read: say why, then close.
async fn refuse<S: Socket>(framed: &mut Framed<S, FaktoryCodec>, e: LineError) -> io::Result<()> {
    match e {
        LineError::Io(e) => Err(e),
        other => send(framed, Reply::err(other.to_string())).await,
    }
}
