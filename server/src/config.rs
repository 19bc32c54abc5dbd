//! Validated server configuration, and the one home of every server default. The `qd`
//! binary turns flags and `QD_*` environment variables into a [`ServerConfig`] (its flags
//! take their defaults from [`ServerConfig::default`]); everything in this crate takes this
//! struct, never raw flags. The store's own tuning defaults stay with the store
//! ([`crate::store::DEFAULT_CACHE_CAPACITY`], [`crate::store::JournalConfig`]); this file
//! only refers to them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Address of the dashboard, `/metrics`, `/healthz` and `/readyz`; off when `None`.
    pub http: Option<SocketAddr>,
    /// The admin secret. When set, the dashboard asks for it before showing anything but
    /// the health endpoints and `/metrics`.
    pub admin_secret: Option<Vec<u8>>,
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
            http: None,
            admin_secret: None,
        }
    }
}
