//! The compute core at its boundaries, in-process: features against a brute-force model and
//! against hand-computed semantics, the compiled forest against the reference walk, the trainer
//! against the live scorer and the partitioned scoring core, evaluation metrics against their
//! definitions and scikit-learn, the report, and the history generator.

#[path = "../support/mod.rs"]
mod support;

mod eval_props;
mod eval_report;
mod eval_sklearn;
mod features_bruteforce;
mod features_engine;
mod generate_history;
mod partitions;
mod scorer;
mod scoring_equivalence;
mod train_forest;
