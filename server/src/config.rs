//! Validated server configuration, and the one home of every server default. The `qd`
//! binary turns flags and `QD_*` environment variables into a [`ServerConfig`] (its flags
//! take their defaults from [`ServerConfig::default`]); everything in this crate takes this
//! struct, never raw flags. The store's own tuning defaults stay with the store
//! ([`crate::store::DEFAULT_CACHE_CAPACITY`], [`crate::store::JournalConfig`]); this file
//! only refers to them.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use qd_protocol::DecodeLimits;

use crate::store::Durability;

/// Default address of the job protocol: loopback only, so a fresh `qd serve` is not open to
/// the network until someone says so.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7700);

/// Default data directory, relative to where `qd serve` runs.
pub const DEFAULT_DATA: &str = "./qd-data";

/// Everything `qd serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the job protocol.
    pub listen: SocketAddr,
    /// Data directory of the embedded store.
    pub data: PathBuf,
    pub durability: Durability,
    /// How often `interval` durability flushes.
    pub flush_interval: Duration,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// Journaled changes held in memory before they are checkpointed into sled, in bytes.
    pub checkpoint_bytes: u64,
    /// Connections beyond this wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Requests one connection may have unanswered; more are refused with `Busy`.
    pub max_in_flight: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// A connection must send its `Hello` within this time.
    pub handshake_timeout: Duration,
    /// Completed jobs retained per queue for display.
    pub completed_retention: usize,
    /// Dead jobs kept per queue; a dead-lettering beyond this drops the oldest dead job.
    pub dead_max_jobs: usize,
    /// Dead jobs are dropped this long after they died.
    pub dead_max_age: Duration,
    /// The secrets clients must prove (none: every client is `Admin`; docs/SECURITY.md).
    pub secrets: Secrets,
    /// Allows listening beyond loopback without a secret. Off: [`crate::server::start`]
    /// refuses, so a server is never open to a network by accident.
    pub insecure: bool,
    /// Serve the job protocol over TLS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Bytes of replies one connection may have queued for a client that does not read;
    /// past it the server stops reading that connection (at least one `max_frame`).
    pub max_conn_buffer: usize,
    /// A connection whose replies stay over `max_conn_buffer` this long is closed.
    pub stuck_timeout: Duration,
    /// Event frames (`Subscribe`) one connection may have waiting for its writer; past it
    /// the subscriber loses events and later gets a `Lagged { missed }`.
    pub subscriber_buffer: usize,
    /// A handshaken connection with nothing in flight that sends nothing this long is
    /// closed (clients ping when idle).
    pub idle_timeout: Duration,
    /// The same for a Faktory connection. Longer than `idle_timeout`: Faktory clients have
    /// no ping, and a producer may hold one quiet connection for a long time (Python's
    /// `faktory.connection()`, Rust's `faktory::Client`); dead peers are still reaped.
    pub faktory_idle_timeout: Duration,
    /// Elements per request vector: queues per `Reserve`, jobs per `Add`, ids per `Ack`
    /// and admin request.
    pub decode_limits: DecodeLimits,
    /// Most jobs one `Reserve` leases (larger `max` is clamped).
    pub max_reserve: u32,
    /// Address of the dashboard, `/metrics`, `/healthz` and `/readyz`; off when `None`.
    pub http: Option<SocketAddr>,
    /// Address of the Faktory work protocol (docs/FAKTORY.md); off when `None`.
    pub faktory: Option<SocketAddr>,
    /// Where jobs live: the embedded store in `data` (the default), or a PostgreSQL
    /// database shared by any number of brokers (docs/BACKENDS.md).
    pub store: StoreChoice,
}

/// Which backend keeps the jobs.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded journal + sled store in [`ServerConfig::data`].
    #[default]
    Embedded,
    /// A PostgreSQL database, by connection URL (`postgres://user:pass@host:port/db`).
    Postgres { url: String },
}

impl StoreChoice {
    /// Parses `--store`: `embedded`, or a `postgres://` / `postgresql://` URL.
    pub fn parse(value: &str) -> Result<StoreChoice, String> {
        if value == "embedded" {
            Ok(StoreChoice::Embedded)
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(StoreChoice::Postgres { url: value.to_owned() })
        } else {
            Err("the store is `embedded` or a postgres://user:password@host:port/database URL"
                .to_owned())
        }
    }
}

// A URL may carry a password: it never reaches a log through `{:?}`.
impl fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Embedded => f.write_str("Embedded"),
            StoreChoice::Postgres { url } => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        format!("{}://<credentials>@{}", &url[..scheme], &url[at + 1..])
                    }
                    _ => url.clone(),
                };
                f.debug_struct("Postgres").field("url", &shown).finish()
            }
        }
    }
}

/// PEM files of the server's TLS certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The shared secrets of the handshake (docs/PROTOCOL.md §3.1.1). Neither set: no
/// challenge, every connection is `Admin`. `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Grants `Worker`, and `Admin` too when `admin` is not set.
    pub worker: Option<Vec<u8>>,
    /// Grants `Admin` only.
    pub admin: Option<Vec<u8>>,
}

impl Secrets {
    /// Whether connections must prove a secret (a `Challenge` is sent).
    pub fn required(&self) -> bool {
        self.worker.is_some() || self.admin.is_some()
    }
}

// Secrets never reach a log, not even through `{:?}` of the whole configuration.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |s: &Option<Vec<u8>>| if s.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("Secrets")
            .field("worker", &shown(&self.worker))
            .field("admin", &shown(&self.admin))
            .finish()
    }
}

impl ServerConfig {
    /// Defaults for a server on `listen` storing in `data`.
    pub fn new(listen: SocketAddr, data: PathBuf) -> Self {
        ServerConfig { listen, data, ..ServerConfig::default() }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN,
            data: PathBuf::from(DEFAULT_DATA),
            durability: Durability::default(),
            flush_interval: Duration::from_millis(5),
            cache_capacity: crate::store::DEFAULT_CACHE_CAPACITY,
            checkpoint_bytes: crate::store::JournalConfig::default().checkpoint_bytes,
            max_connections: 1024,
            max_in_flight: 4096,
            max_frame: qd_protocol::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            completed_retention: 1000,
            dead_max_jobs: 10_000,
            dead_max_age: Duration::from_secs(180 * 24 * 3600),
            secrets: Secrets::default(),
            insecure: false,
            tls: None,
            max_conn_buffer: 8 << 20,
            stuck_timeout: Duration::from_secs(30),
            subscriber_buffer: 1024,
            idle_timeout: Duration::from_secs(5 * 60),
            faktory_idle_timeout: Duration::from_secs(60 * 60),
            decode_limits: DecodeLimits::DEFAULT,
            max_reserve: 1000,
            http: None,
            faktory: None,
            store: StoreChoice::Embedded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_choice_parses_and_never_shows_a_password() {
        assert_eq!(StoreChoice::parse("embedded"), Ok(StoreChoice::Embedded));
        let url = "postgres://qd:hunter2@db:5432/jobs";
        let pg = StoreChoice::parse(url).unwrap();
        assert_eq!(pg, StoreChoice::Postgres { url: url.to_owned() });
        let shown = format!("{pg:?}");
        assert!(!shown.contains("hunter2") && shown.contains("db:5432/jobs"), "{shown}");
        assert!(StoreChoice::parse("postgresql://db/jobs").is_ok());
        let err = StoreChoice::parse("mysql://db").unwrap_err();
        assert!(err.contains("postgres://"), "says what to use: {err}");
    }
}
