//! vigil: real-time fraud-detection scoring.
//!
//! Data flows one way: a [`record::Transaction`] goes through the [`features`] engine (per-card
//! and per-merchant sliding windows in event time), the resulting row is scored by a compiled
//! random [`forest`], and [`decision`] turns the score into approve / review / decline. The
//! trainer replays history through the very same feature engine, so a model is served exactly the
//! features it was trained on.
//!
//! Crate map:
//! - [`record`]: the transaction record, its validation and the history CSV reader.
//! - [`features`]: declarative feature spec and the event-time window engine (no I/O).
//! - [`forest`]: tree types, the histogram random-forest trainer, the compiled scorer with
//!   reason codes (no I/O).
//! - [`model`]: the versioned model file and its loading checks.
//! - [`decision`]: thresholds -> decision.
//! - [`eval`]: metrics (AUC ROC, average precision, card precision@k) and the plotted report.
//! - [`generate`]: the seeded synthetic history generator.
//! - [`scorer`]: in-process scoring of one transaction: features, score, decision, reasons.
//! - [`offline`]: the jobs the CLI runs: time split, feature matrix, train, evaluate, report.
//! - [`partition`]: Kafka's default partition function (which partition owns a card's state).
//! - [`service`]: the scoring core a serving process shares between its Kafka and gRPC front
//!   ends: per-partition state, hot-swappable model, alert fan-out (no I/O).
//! - [`api`]: the gRPC API over that core (`vigil.v1.Scoring`, health, reflection, TLS, tokens,
//!   limits) and its load generator; the only module that knows protobuf.
//! - [`stream`]: the Kafka front end (consume, score, produce verdicts and dead letters, commit
//!   acknowledged offsets, rebuild state on assignment, labels feed, replay).
//! - [`serve`]: `vigil serve` as a library call: config, model (hot reload), Kafka pipeline,
//!   HTTP endpoints, signals, extra tasks (the gRPC server) on one shutdown signal.
//! - [`config`]: the `vigil serve` configuration (file, environment, flags).
//! - [`telemetry`]: metric names and the events that emit them.
//! - [`shutdown`]: the shutdown signal shared by threads and tasks.

pub use vigil_core::{decision, eval, features, forest, model, partition, record};

pub mod api;
pub mod config;
pub mod generate;
pub mod offline;
pub mod scorer;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
