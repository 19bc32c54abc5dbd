//! Test-only crate; see `e2e/main.rs`.
