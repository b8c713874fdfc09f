//! vigil's computing core: everything that turns transactions into features, features into
//! scores and scores into decisions, with no I/O framework in sight.
//!
//! Data flows one way: a [`record::Transaction`] goes through the [`features`] engine (per-card
//! and per-merchant sliding windows in event time), the resulting row is scored by a compiled
//! random [`forest`], and [`decision`] turns the score into approve / review / decline. The
//! trainer replays history through the very same feature engine, so a model is served exactly
//! the features it was trained on.
//!
//! - [`record`]: the transaction record, its validation, its JSON and the history CSV.
//! - [`features`]: the declarative feature spec and the event-time window engine.
//! - [`forest`]: tree types, the histogram random-forest trainer, the compiled scorer with
//!   reason codes.
//! - [`model`]: the versioned model file and its loading checks.
//! - [`decision`]: thresholds -> decision.
//! - [`eval`]: AUC ROC, average precision, card precision@k, threshold metrics.
//! - [`partition`]: which partition of state a card belongs to (the producers' partitioner).
//!
//! This crate depends on no async runtime, Kafka or gRPC client, or plotting library (see its
//! `Cargo.toml`): the services that move records in and out live in the `vigil` crate and call
//! into this one. The only file system access is reading a feature spec
//! ([`features::FeatureSpec::load`]), reading a history CSV ([`record::read_history`]) and the
//! model file ([`model::store`]).

pub mod decision;
pub mod eval;
pub mod features;
pub mod forest;
pub mod model;
pub mod partition;
pub mod record;
