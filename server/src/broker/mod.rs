//! The broker core (being written).
