//! The model file: one self-describing, versioned, checksummed file holding everything needed to
//! serve a model: the feature spec it was trained with, its training period and evaluation, its
//! decision thresholds, and the trees.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic        8 bytes   "VIGILMDL"
//! version      u32       FORMAT_VERSION
//! header_len   u32       length of the JSON header
//! header       JSON      ModelHeader (metadata, feature spec text and fingerprint, metrics)
//! n_trees      u32
//! per tree:    u32 node count, then per node 24 bytes:
//!              feature u32, threshold f32, left u32, right u32, value f32, weight f32
//! crc32        u32       CRC-32 (IEEE) of every byte before it
//! ```
//!
//! [`format`] encodes and decodes bytes and does no I/O; [`store`] reads and writes files (atomic
//! replace, so a scorer watching the path never sees half a file). Loading checks everything:
//! magic, version, lengths (truncation), checksum (corruption), header, that the embedded spec
//! parses and matches its fingerprint and feature names, tree structure, thresholds; and, when the
//! caller expects a particular spec, that the model was trained with it.

pub mod format;
pub mod store;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decision::Thresholds;
use crate::eval::Evaluation;
use crate::features::FeatureSpec;
use crate::forest::compiled::CompiledForest;
use crate::forest::Forest;

pub use format::{decode, encode, ModelError, FORMAT_VERSION, MAGIC};
pub use store::{load, save};

/// Where the training and test rows came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainingInfo {
    /// The history file, as given on the command line.
    pub data: String,
    /// Rows read from the history (after skipping invalid ones).
    pub history_rows: u64,
    /// Training period [from, to), RFC 3339.
    pub train_from: String,
    pub train_to: String,
    pub train_rows: u64,
    pub train_frauds: u64,
    /// Test period [from, to), RFC 3339 (empty when there was no test period).
    pub test_from: String,
    pub test_to: String,
    pub test_rows: u64,
    pub test_frauds: u64,
    /// Trainer hyperparameters, as the trainer serialised them.
    pub params: serde_json::Value,
    /// Wall-clock training time of the forest alone.
    pub fit_seconds: f64,
}

/// Everything in a model file except the trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// Human-chosen model name (`vigil train --name`, default: the output file stem).
    pub model_id: String,
    /// Content version: a hash of the trees, thresholds and spec, so two different models never
    /// share a version and retraining to the same result keeps it.
    pub version: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// vigil version that wrote the file.
    pub created_by: String,
    /// The feature spec's TOML text, exactly as it was used for training.
    pub feature_spec: String,
    /// [`FeatureSpec::fingerprint`] of that spec.
    pub feature_fingerprint: String,
    /// Feature names in column order (redundant with the spec; checked on load).
    pub feature_names: Vec<String>,
    pub thresholds: Thresholds,
    pub training: TrainingInfo,
    /// Evaluation on the test period, if there was one.
    pub evaluation: Option<Evaluation>,
    pub n_trees: usize,
    pub max_depth: usize,
    pub n_nodes: usize,
    /// Partitions the training replay split window state into, as a scorer keeps it per
    /// partition of the transactions topic (`vigil train --partitions`; see
    /// `features::replay_sharded`). Merchant windows depend on it: a model is served exactly the
    /// features it was trained on when the topic has this many partitions. Files written
    /// before the field existed trained on one.
    #[serde(default = "one_partition")]
    pub state_partitions: u32,
}

fn one_partition() -> u32 {
    1
}

/// A loaded, fully checked model, ready to serve.
#[derive(Debug, Clone)]
pub struct Model {
    pub header: ModelHeader,
    pub spec: Arc<FeatureSpec>,
    pub forest: Forest,
    pub compiled: CompiledForest,
}

impl Model {
    /// `model_id@version`, the name a verdict carries.
    pub fn name(&self) -> String {
        format!("{}@{}", self.header.model_id, self.header.version)
    }
}
