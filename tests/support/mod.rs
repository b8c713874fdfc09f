//! The harness every integration-test binary includes (`#[path = "../support/mod.rs"] mod
//! support;` in its `main.rs`):
//!
//! - [`cmd`]: the `vigil` binary as a user runs it, with failures that print the command line,
//!   its directory, exit status, stdout and stderr; servers behind a guard that kills them.
//! - [`tx`]: the one builder for test transactions (`tx("t1").card("c1").at(ms).build()`).
//! - [`fixtures`]: the shipped model, sample history and feature spec; free loopback ports.
//! - [`scoring_gen`]: synthetic realistic forests and feature rows (also used by
//!   `benches/forest.rs`).
//!
//! Each binary uses part of it, hence `dead_code` and `unused_imports` (of the re-exports below)
//! are allowed here.
#![allow(dead_code, unused_imports)]

pub mod cmd;
pub mod fixtures;
pub mod scoring_gen;
pub mod tx;

pub use cmd::{vigil, Cmd, Output, Process};
pub use fixtures::*;
pub use tx::{tx, TxBuilder};
