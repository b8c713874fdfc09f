//! The offline jobs the CLI runs, as library functions: the time-based [`split`], the feature
//! matrix of a history ([`matrix`]), [`train`]ing and [`evaluate`]ing a model, and the plotted
//! [`report`]. Every feature value here comes from [`crate::features::replay`], the same
//! per-event code the live scorer runs, so training and serving cannot drift apart.
//!
//! Progress is reported through [`Reporter`] so the CLI can draw bars and tests can stay quiet.

pub mod evaluate;
pub mod matrix;
pub mod report;
pub mod split;
pub mod train;

pub use evaluate::{evaluate_scored, score_history, PeriodScores};
pub use matrix::{feature_matrix, replay_history};
pub use split::{parse_instant, Period, Split, SplitSpec};
pub use train::{train, TrainOptions, Trained};

/// Progress of a long job. Methods take `&self` and the trait is `Sync`, so the trainer's worker
/// threads can report too.
pub trait Reporter: Sync {
    /// A new stage begins with `total` units of work (0 if unknown).
    fn stage(&self, name: &str, total: u64);
    /// `done` units of the current stage are finished.
    fn progress(&self, done: u64);
    /// The current stage is over.
    fn finish(&self);
}

/// A [`Reporter`] that says nothing.
pub struct Quiet;

impl Reporter for Quiet {
    fn stage(&self, _: &str, _: u64) {}
    fn progress(&self, _: u64) {}
    fn finish(&self) {}
}

/// Errors of the offline jobs, each naming what to change.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{0}")]
    Split(String),
    #[error("training period has {rows} labelled rows with {frauds} frauds: need both classes to train; widen the period or check the `label` column")]
    NotTrainable { rows: u64, frauds: u64 },
    #[error("training failed: {0}")]
    Train(String),
    #[error("cannot compile the trained forest: {0}")]
    Compile(#[from] crate::forest::ForestError),
    #[error("evaluation failed: {0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("cannot encode the model: {0}")]
    Model(#[from] crate::model::ModelError),
}
