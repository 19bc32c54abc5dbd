//! The accept loop: takes a connection permit before each `accept`, so that past the limit
//! new peers wait in the kernel's backlog, and runs each connection as a task of one
//! tracker. It knows the engine only as the channel it sends [`Command`]s to; building the
//! engine, and the shutdown order, belong to the composition root (`crate::server`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Command;
use crate::net::conn::{self, ConnPolicy};
use crate::net::tls::TlsAcceptor;

/// A bound protocol listener, not yet accepting.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port; see [`Listener::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        Ok(Listener { listener: TcpListener::bind(addr).await? })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` is cancelled, at most `max_connections` at a time, running
    /// each connection on `conns` under `policy`, inside TLS when `tls` is given. Returns as
    /// soon as it stops accepting; the connections themselves end when the engine drops
    /// their reply channels.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        self,
        max_connections: usize,
        policy: Arc<ConnPolicy>,
        tls: Option<TlsAcceptor>,
        commands: mpsc::Sender<Command>,
        shutdown: CancellationToken,
        conns: TaskTracker,
    ) {
        let permits = Arc::new(Semaphore::new(max_connections));
        let next_conn = AtomicU64::new(1);
        while let Some((permit, stream, peer)) =
            accept_bounded(&self.listener, &permits, &shutdown, "qd").await
        {
            let conn = next_conn.fetch_add(1, Ordering::Relaxed);
            let (policy, commands, token) = (policy.clone(), commands.clone(), shutdown.clone());
            let tls = tls.clone();
            conns.spawn(async move {
                let _ = stream.set_nodelay(true);
                let peer = Some(peer);
                match tls {
                    None => conn::serve(stream, peer, conn, policy, commands, token).await,
                    Some(tls) => {
                        // The TLS handshake counts against the protocol's handshake timeout:
                        // a peer that opens a socket and says nothing holds a slot no longer.
                        let limit = policy.limits.handshake_timeout;
                        match tokio::time::timeout(limit, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                conn::serve(stream, peer, conn, policy, commands, token).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(?peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
    }
}

/// Waits for a free connection slot, then for a connection; `None` once `shutdown` fires.
/// Shared by every listener of the server (the qd protocol, the Faktory port), so each
/// bounds its connections and survives accept errors the same way.
pub(crate) async fn accept_bounded(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    port: &str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let permit = tokio::select! {
        p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        _ = shutdown.cancelled() => return None,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => return Some((permit, stream, peer)),
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, port, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}
