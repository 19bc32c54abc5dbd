//! The network face of the server: [`listener`] accepts connections within a limit;
//! [`conn`] runs one connection (handshake, frames in, responses out). Both speak to the
//! engine only through its command channel; the composition root (`crate::server`) builds
//! the engine and starts the listener.

pub mod conn;
pub mod listener;
