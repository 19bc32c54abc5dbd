//! The composition root: the one place that assembles a whole server from its layers and
//! ties their lifetimes to one shutdown token. [`start`] opens and recovers the engine
//! ([`Engine::open`], or [`PgEngine::connect`] when `ServerConfig::store` names a
//! PostgreSQL database: both consume the same command channel), binds the protocol listener and, when configured, the HTTP one (the
//! dashboard, `/metrics`, health), and runs them all. Nothing below this file builds another
//! layer: `net` gets the engine's command channel, the engine gets its store and core.
//!
//! Shutdown order matters for the promise "nothing acknowledged is lost": first stop
//! accepting and reading, then let the engine answer what it already received and wait for
//! every commit in flight, then flush the store, and only then close the sockets.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ServerConfig, StoreChoice};
use crate::engine::{Command, Engine, EngineError};
use crate::faktory::{FaktoryConfig, FaktoryListener};
use crate::http::HttpListener;
use crate::net::auth::FailureThrottle;
use crate::net::conn::{ConnLimits, ConnPolicy};
use crate::net::listener::Listener;
use crate::net::tls::{self, TlsError};
use crate::pg::{PgEngine, PgError};

/// Depth of the engine's command channel, shared by every connection. Bounded, so a flood
/// of requests waits in the sockets rather than in our memory.
const COMMAND_QUEUE: usize = 16 * 1024;

/// Why a server could not start, or stopped with an error. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Opening the store, recovering, or serving failed in the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),

    /// The PostgreSQL backend could not start, or failed.
    #[error(transparent)]
    Postgres(#[from] PgError),

    /// The protocol address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another qd running there? choose another \
         with --listen"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// Listening beyond loopback with no secret: anyone on the network could do anything.
    #[error(
        "refusing to listen on {addr} without a secret: anyone who can reach it could add, \
         take and delete jobs; set QD_SECRET (or --secret-file), or pass --insecure if the \
         network is trusted"
    )]
    NoSecret { addr: SocketAddr },

    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),

    /// The Faktory protocol address could not be bound.
    #[error(
        "cannot listen for Faktory clients on {addr}: {source}; choose another with --faktory"
    )]
    FaktoryListen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// The HTTP (dashboard) address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}; choose another with --http")]
    HttpListen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// A task of the server panicked.
    #[error(
        "the server's {task} task panicked; this is a bug in qd, please report it with the log"
    )]
    Panicked { task: &'static str },
}

/// A server that is up: its address, and the means to stop it.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    /// Where the dashboard listens, when it is on.
    http_addr: Option<SocketAddr>,
    /// Where the Faktory protocol listens, when it is on.
    faktory_addr: Option<SocketAddr>,
    /// Cancelled by whoever stops the server (a signal handler, a test, a failing engine);
    /// every task of the server watches it.
    shutdown: CancellationToken,
    /// The whole server: resolves once the engine has flushed and every connection closed.
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// The address the protocol listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the dashboard, `/metrics` and the health endpoints, when on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The address of the Faktory work protocol, when on.
    pub fn faktory_addr(&self) -> Option<SocketAddr> {
        self.faktory_addr
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after the token was cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(|_| ServerError::Panicked { task: "server" })?
    }
}

/// Opens the store, recovers, binds, and starts serving in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    // Both checks come before the store is opened: a refused start touches nothing.
    // The dashboard can retry, delete and purge: it is held to the same rule as the protocol.
    let exposed = std::iter::once(config.listen).chain(config.http).chain(config.faktory);
    for addr in exposed {
        if !addr.ip().is_loopback() && !config.secrets.required() && !config.insecure {
            return Err(ServerError::NoSecret { addr });
        }
    }
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let started = Instant::now();
    let engine = match &config.store {
        StoreChoice::Embedded => {
            let engine_config = config.clone();
            let (engine, recovered) =
                tokio::task::spawn_blocking(move || Engine::open(&engine_config))
                    .await
                    .map_err(|_| ServerError::Panicked { task: "recovery" })??;
            tracing::info!(
                jobs = recovered.jobs,
                ms = started.elapsed().as_millis() as u64,
                data = %config.data.display(),
                "store recovered"
            );
            AnyEngine::Embedded(Box::new(engine))
        }
        StoreChoice::Postgres { url } => {
            let engine = PgEngine::connect(url, &config).await?;
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                store = ?config.store,
                "connected to PostgreSQL; schema up to date"
            );
            AnyEngine::Postgres(Box::new(engine))
        }
    };

    let bound = match Listener::bind(config.listen).await {
        Ok(listener) => listener.local_addr().map(|addr| (listener, addr)),
        Err(e) => Err(e),
    };
    let http = match config.http {
        None => Ok(None),
        Some(addr) => match HttpListener::bind(addr).await {
            Ok(l) => l.local_addr().map(|a| Some((l, a))),
            Err(e) => Err(e),
        }
        .map_err(|source| ServerError::HttpListen { addr, source }),
    };
    let faktory = match config.faktory {
        None => Ok(None),
        Some(addr) => match FaktoryListener::bind(addr).await {
            Ok(l) => l.local_addr().map(|a| Some((l, a))),
            Err(e) => Err(e),
        }
        .map_err(|source| ServerError::FaktoryListen { addr, source }),
    };
    let bound = match (bound, http, faktory) {
        (Ok(bound), Ok(http), Ok(faktory)) => Ok((bound, http, faktory)),
        (Err(source), _, _) => Err(ServerError::Listen { addr: config.listen, source }),
        (_, Err(e), _) | (_, _, Err(e)) => Err(e),
    };
    let ((listener, addr), http, faktory) = match bound {
        Ok(bound) => bound,
        Err(error) => {
            // The writer is already running: stop it properly (a final flush) rather than
            // leave it to the process exit.
            if let AnyEngine::Embedded(engine) = engine {
                if let Err(e) = engine.close().await {
                    tracing::warn!(error = %e, "closing the store after a failed start");
                }
            }
            return Err(error);
        }
    };

    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let shutdown = CancellationToken::new();
    let engine_task = engine.spawn(cmd_rx, shutdown.clone());

    let policy = Arc::new(ConnPolicy {
        limits: ConnLimits {
            max_frame: config.max_frame,
            max_in_flight: config.max_in_flight,
            handshake_timeout: config.handshake_timeout,
            decode_limits: config.decode_limits,
            // At least one frame, or one big answer could never be sent.
            max_conn_buffer: config.max_conn_buffer.max(config.max_frame),
            stuck_timeout: config.stuck_timeout,
            idle_timeout: config.idle_timeout,
        },
        secrets: config.secrets.clone(),
        throttle: FailureThrottle::default(),
    });
    let conns = TaskTracker::new();
    let http_addr = http.as_ref().map(|(_, a)| *a);
    if let Some((http, http_addr)) = http {
        // Stopped by the same token; its in-flight requests get "the server is stopping"
        // once the engine has drained.
        conns.spawn(http.run(
            cmd_tx.clone(),
            config.secrets.admin.clone().or_else(|| config.secrets.worker.clone()),
            shutdown.clone(),
        ));
        tracing::info!(addr = %http_addr, "qd dashboard is listening");
    }
    let faktory_addr = faktory.as_ref().map(|(_, a)| *a);
    if let Some((faktory, faktory_addr)) = faktory {
        let faktory_config = FaktoryConfig {
            // One secret guards both ports: the worker secret, or the admin one alone.
            password: config.secrets.worker.clone().or_else(|| config.secrets.admin.clone()),
            max_line: config.max_frame,
            handshake_timeout: config.handshake_timeout,
            max_connections: config.max_connections,
            idle_timeout: config.faktory_idle_timeout,
        };
        // With TLS configured, the Faktory port speaks it too: one certificate for both.
        let (tx, token, tracker) = (cmd_tx.clone(), shutdown.clone(), conns.clone());
        conns.spawn(faktory.run(faktory_config, tls.clone(), tx, token, tracker));
        tracing::info!(addr = %faktory_addr, "faktory is listening");
    }
    let accept =
        listener.run(config.max_connections, policy, tls, cmd_tx, shutdown.clone(), conns.clone());
    let task = tokio::spawn(async move {
        accept.await;
        // The accept loop returns only on shutdown. The engine drains and flushes; then the
        // connections, whose reply channels the engine has dropped, say goodbye and close.
        let engine_result =
            engine_task.await.map_err(|_| ServerError::Panicked { task: "engine" })?;
        conns.close();
        conns.wait().await;
        engine_result
    });
    tracing::info!(
        %addr,
        durability = ?config.durability,
        tls = config.tls.is_some(),
        auth = config.secrets.required(),
        "qd is listening"
    );
    Ok(RunningServer { addr, http_addr, faktory_addr, shutdown, task })
}

/// The engine `start` opened: the embedded store's, or the PostgreSQL backend's. Both take
/// the same [`Command`] channel, so nothing else in the server knows which it is.
#[derive(Debug)]
enum AnyEngine {
    Embedded(Box<Engine>),
    Postgres(Box<PgEngine>),
}

impl AnyEngine {
    fn spawn(
        self,
        commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<(), ServerError>> {
        match self {
            AnyEngine::Embedded(engine) => tokio::spawn(async move {
                engine.run(commands, shutdown).await.map_err(ServerError::from)
            }),
            AnyEngine::Postgres(engine) => tokio::spawn(async move {
                engine.run(commands, shutdown).await.map_err(ServerError::from)
            }),
        }
    }
}
