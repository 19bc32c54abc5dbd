//! The network face of the server: [`listener`] accepts connections within a limit (and
//! runs the TLS handshake, [`tls`]); [`conn`] runs one connection (handshake with
//! [`auth`], frames in, responses out). Both speak to the engine only through its command
//! channel; the composition root (`crate::server`) builds the engine and starts the
//! listener.

pub mod auth;
pub mod conn;
pub mod listener;
pub mod tls;
