//! qd server.
