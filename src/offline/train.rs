//! `vigil train` as a library call: features, the forest, thresholds, the test-period
//! evaluation and the model header.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ndarray::Array2;

use crate::decision::Thresholds;
use crate::eval;
use crate::features::FeatureSpec;
use crate::forest::compiled::CompiledForest;
use crate::forest::train::{fit_forest, RandomForestValidParams};
use crate::forest::Forest;
use crate::model::{format::content_version, ModelHeader, TrainingInfo};
use crate::record::{format_timestamp, Transaction};

use super::{feature_matrix, OfflineError, Period, Reporter, Split, SplitSpec};

/// Rows of `txs` inside `period` that carry a label.
pub(super) fn labelled_rows(txs: &[Transaction], period: Period) -> Vec<usize> {
    txs.iter()
        .enumerate()
        .filter(|(_, t)| period.contains(t.timestamp_ms) && t.label.is_some())
        .map(|(i, _)| i)
        .collect()
}

fn select(x: &Array2<f32>, rows: &[usize]) -> Array2<f32> {
    x.select(ndarray::Axis(0), rows)
}

/// What `vigil train` needs besides the data.
pub struct TrainOptions {
    pub model_id: String,
    /// The history file name, recorded in the model.
    pub data_label: String,
    pub split: SplitSpec,
    pub params: RandomForestValidParams,
    /// k of card precision@k.
    pub k: usize,
    /// Fixed thresholds; `None` suggests them from the test period (or training period).
    pub thresholds: Option<Thresholds>,
    /// Partitions of window state to train with (the serving topic's partition count).
    pub partitions: u32,
}

/// The result of training: the model's header (with the test-period evaluation) and trees.
pub struct Trained {
    pub header: ModelHeader,
    pub forest: Forest,
    pub split: Split,
}

/// Trains a model on `txs` (sorted by event time), evaluates it on the test period and builds
/// the model header.
pub fn train(
    spec: Arc<FeatureSpec>,
    txs: &[Transaction],
    opts: &TrainOptions,
    reporter: &dyn Reporter,
) -> Result<Trained, OfflineError> {
    let (first, last) = match (txs.first(), txs.last()) {
        (Some(a), Some(b)) => (a.timestamp_ms, b.timestamp_ms),
        _ => return Err(OfflineError::Split("the history has no rows".into())),
    };
    let split = opts.split.resolve(first, last)?;
    let x = feature_matrix(&spec, txs, opts.partitions, reporter);

    let train_rows = labelled_rows(txs, split.train);
    let y_train: Vec<bool> = train_rows
        .iter()
        .map(|&i| txs[i].label == Some(true))
        .collect();
    let train_frauds = y_train.iter().filter(|&&y| y).count() as u64;
    if train_frauds == 0 || train_frauds == y_train.len() as u64 {
        return Err(OfflineError::NotTrainable {
            rows: y_train.len() as u64,
            frauds: train_frauds,
        });
    }
    let x_train = select(&x, &train_rows);

    reporter.stage("trees", opts.params.n_trees() as u64);
    let started = Instant::now();
    let forest = fit_forest(&opts.params, x_train.view(), &y_train, &|done| {
        reporter.progress(done as u64)
    })
    .map_err(|e| OfflineError::Train(e.to_string()))?;
    let fit_seconds = started.elapsed().as_secs_f64();
    reporter.finish();
    let compiled = CompiledForest::compile(&forest)?;

    let (test_rows, test_scores, test_labels) = match split.test {
        Some(p) => {
            let rows = labelled_rows(txs, p);
            let xt = select(&x, &rows);
            let mut scores = vec![0.0f32; rows.len()];
            compiled.score_batch(xt.view(), &mut scores);
            let labels: Vec<bool> = rows.iter().map(|&i| txs[i].label == Some(true)).collect();
            (rows, scores, labels)
        }
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let thresholds = match opts.thresholds {
        Some(t) => t,
        None if !test_scores.is_empty() => eval::suggest_thresholds(&test_scores, &test_labels)?,
        None => {
            let mut s = vec![0.0f32; train_rows.len()];
            compiled.score_batch(x_train.view(), &mut s);
            eval::suggest_thresholds(&s, &y_train)?
        }
    };
    let evaluation = if test_rows.is_empty() {
        None
    } else {
        let cards: Vec<&str> = test_rows.iter().map(|&i| txs[i].card_id.as_str()).collect();
        let times: Vec<i64> = test_rows.iter().map(|&i| txs[i].timestamp_ms).collect();
        Some(eval::evaluate(
            &test_scores,
            &test_labels,
            &cards,
            &times,
            opts.k,
            &thresholds,
        )?)
    };
    let period_str = |p: Option<Period>, from: bool| {
        p.map(|p| format_timestamp(if from { p.from_ms } else { p.to_ms }))
            .unwrap_or_default()
    };
    let mut header = ModelHeader {
        model_id: opts.model_id.clone(),
        version: String::new(),
        created_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        created_by: format!("vigil {}", env!("CARGO_PKG_VERSION")),
        feature_spec: spec.source().to_string(),
        feature_fingerprint: spec.fingerprint(),
        feature_names: spec.feature_names().to_vec(),
        thresholds,
        training: TrainingInfo {
            data: opts.data_label.clone(),
            history_rows: txs.len() as u64,
            train_from: format_timestamp(split.train.from_ms),
            train_to: format_timestamp(split.train.to_ms),
            train_rows: train_rows.len() as u64,
            train_frauds,
            test_from: period_str(split.test, true),
            test_to: period_str(split.test, false),
            test_rows: test_rows.len() as u64,
            test_frauds: test_labels.iter().filter(|&&y| y).count() as u64,
            params: serde_json::to_value(opts.params.hyperparameters()).unwrap_or_default(),
            fit_seconds,
        },
        evaluation,
        n_trees: forest.trees.len(),
        max_depth: forest.max_depth(),
        n_nodes: forest.n_nodes(),
        state_partitions: opts.partitions.max(1),
    };
    header.version = content_version(&header, &forest);
    Ok(Trained {
        header,
        forest,
        split,
    })
}
