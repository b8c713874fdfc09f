//! Scoring: one transaction in, one verdict out, with the state a serving process shares
//! between its front ends.
//!
//! - [`verdict`]: [`Verdict`], its [`ReasonCode`]s, [`Scored`] and the one [`is_alert`] rule.
//! - [`scorer`]: [`Scorer`], one partition's feature state + the compiled forest + thresholds.
//! - [`core`]: [`ScoringCore`], what the Kafka and gRPC paths share: a scorer per partition,
//!   the hot-swappable model, pending labels, the alert fan-out, and the verdict metrics of
//!   every path.
//!
//! Which partition a card belongs to is [`crate::partition`] (in the core crate, because the
//! trainer splits state the same way). Nothing here does I/O or knows Kafka or protobuf.

pub mod config;
pub mod core;
pub mod scorer;
pub mod verdict;

pub use self::core::{Rebuilding, ScoreOptions, ScoringCore, DEFAULT_ALERT_BUFFER, LABEL_MEMORY};
pub use crate::telemetry::ScoringPath;
pub use config::ScoringConfig;
pub use scorer::{Scorer, SpecMismatch, DEFAULT_REASONS};
pub use verdict::{is_alert, ReasonCode, Scored, Verdict};
