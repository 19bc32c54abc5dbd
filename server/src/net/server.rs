//! Starting and stopping a whole server: open the store, recover, start the writer and the
//! engine, accept connections within a limit, and shut all of it down on one token.
//!
//! Shutdown order matters for the promise "nothing acknowledged is lost": first stop
//! accepting and reading, then let the engine answer what it already received and wait for
//! every commit in flight, then flush the store, and only then close the sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerConfig};
use crate::config::ServerConfig;
use crate::engine::{Command, Engine};
use crate::net::conn::{self, ConnLimits};
use crate::store::{JournalConfig, JournaledStore, SledConfig, Store, Writer};

/// A server that is up: its address, and the means to stop it.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// The address the protocol listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after the token was cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Opens the store, recovers, binds, and starts serving in the background.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let started = Instant::now();
    let sled_config =
        SledConfig { path: config.data.clone(), cache_capacity: config.cache_capacity };
    let journal_config =
        JournalConfig { checkpoint_bytes: config.checkpoint_bytes, ..JournalConfig::default() };
    let retention = config.completed_retention;
    let (store, recovered, broker) = tokio::task::spawn_blocking(move || {
        let mut store: Box<dyn Store> =
            Box::new(JournaledStore::open(&sled_config, journal_config)?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Lease tokens are capabilities: key their CSPRNG from the OS at every start.
        let token_key = rand::random::<[u8; 32]>();
        let mut broker = Broker::new(BrokerConfig {
            completed_retention: retention,
            token_key,
            ..BrokerConfig::default()
        });
        // Streamed: one record at a time goes from the store into the broker's indexes.
        let recovered = store.recover(&mut |record| broker.restore(now, &record))?;
        let next = broker.next_id().max(recovered.next_id);
        broker.set_next_id(next);
        anyhow::Ok((store, recovered.records, broker))
    })
    .await
    .context("recovery task panicked")?
    .with_context(|| format!("cannot open the data directory {}", config.data.display()))?;
    tracing::info!(
        jobs = recovered,
        ms = started.elapsed().as_millis() as u64,
        data = %config.data.display(),
        "store recovered"
    );

    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another qd running there? choose another with --listen",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;

    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let reader = store.reader();
    let writer = Writer::spawn(store, config.durability, config.flush_interval, done_tx);
    let engine = Engine::new(broker, reader, writer, done_rx);
    let (cmd_tx, cmd_rx) = mpsc::channel(16 * 1024);
    let shutdown = CancellationToken::new();
    let engine_task = tokio::spawn(engine.run(cmd_rx, shutdown.clone()));

    let limits = Arc::new(ConnLimits {
        max_frame: config.max_frame,
        max_in_flight: config.max_in_flight,
        handshake_timeout: config.handshake_timeout,
    });
    let conns = TaskTracker::new();
    let accept = accept_loop(
        listener,
        config.max_connections,
        limits,
        cmd_tx,
        shutdown.clone(),
        conns.clone(),
    );
    let task = tokio::spawn(async move {
        accept.await;
        // The accept loop returns only on shutdown. The engine drains and flushes; then the
        // connections, whose reply channels the engine has dropped, say goodbye and close.
        let engine_result = engine_task.await.context("engine task panicked")?;
        conns.close();
        conns.wait().await;
        engine_result
    });
    tracing::info!(%addr, durability = ?config.durability, "qd is listening");
    Ok(RunningServer { addr, shutdown, task })
}

async fn accept_loop(
    listener: TcpListener,
    max_connections: usize,
    limits: Arc<ConnLimits>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    conns: TaskTracker,
) {
    // A permit is taken before accepting, so past the limit new peers wait in the kernel's
    // backlog instead of costing us a task each.
    let permits = Arc::new(Semaphore::new(max_connections));
    let next_conn = AtomicU64::new(1);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let (limits, commands, token) = (limits.clone(), commands.clone(), shutdown.clone());
        conns.spawn(async move {
            conn::serve(stream, conn, limits, commands, token).await;
            drop(permit);
        });
    }
}
