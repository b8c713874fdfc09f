//! vigil: real-time fraud-detection scoring.
//!
//! Data flows one way: ingest -> features -> model -> decision -> sinks. A transaction arrives
//! from Kafka ([`stream`]) or gRPC ([`api`]), is validated into a [`record::Transaction`], joins
//! its card's and merchant's event-time windows ([`features`]), the row is scored by a compiled
//! random [`forest`], [`decision`] turns the score into approve / review / decline, and the
//! verdict goes back to the caller and to the `alerts`/`verdicts` topics. The trainer
//! ([`offline`]) replays history through the very same feature engine, so a model is served
//! exactly the features it was trained on.
//!
//! The computing core (record, features, forest, model, decision, eval, partition) is the
//! `vigil-core` crate, re-exported here; it depends on no async runtime, Kafka, gRPC or plotting
//! library, which the compiler checks. This crate adds what moves records in and out:
//!
//! - [`scoring`]: the verdict, the per-partition scorer and the [`scoring::ScoringCore`] every
//!   front end shares (state, hot-swappable model, alert fan-out, verdict metrics).
//! - [`stream`]: the Kafka front end (consume, score, produce verdicts and dead letters, commit
//!   acknowledged offsets, rebuild state on assignment, labels feed, replay).
//! - [`api`]: the gRPC front end (`vigil.v1.Scoring`, health, reflection, TLS, tokens, limits)
//!   and its load generator; [`proto`]: the generated types and the protobuf codec.
//! - [`serve`]: a serving process as one library call, Kafka and gRPC each optional, with its
//!   configuration, HTTP endpoints, model watcher and signals; [`config`]: the one layering
//!   loader (file, `VIGIL_<SECTION>__<KEY>`, flags).
//! - [`demo`]: `vigil demo` on an in-process Kafka mock cluster.
//! - [`offline`]: the jobs the CLI runs: time split, feature matrix, train, evaluate, report.
//! - [`generate`]: the seeded synthetic history generator.
//! - [`telemetry`]: metric names and the events that emit them; [`shutdown`]: the shutdown
//!   signal shared by threads and tasks.

pub use vigil_core::{decision, eval, features, forest, model, partition, record};

pub mod api;
pub mod config;
pub mod demo;
pub mod generate;
pub mod offline;
pub mod proto;
pub mod scoring;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod stream;
pub mod telemetry;
