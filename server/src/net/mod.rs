//! The network face of the server: [`server`] accepts connections within a limit and ties
//! everything's lifetime to one shutdown token; [`conn`] runs one connection (handshake,
//! frames in, responses out).

pub mod conn;
pub mod server;
