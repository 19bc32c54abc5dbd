//! qd client.
