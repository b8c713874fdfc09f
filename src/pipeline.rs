//! The offline jobs the CLI runs, as library functions: history -> feature matrix, the time-based
//! split, training and evaluation. Every feature value here comes from [`features::replay`], the
//! same per-event code the live scorer runs, so training and serving cannot drift apart.
//!
//! Progress is reported through [`Reporter`] so the CLI can draw bars and tests can stay quiet.

use std::sync::Arc;
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use ndarray::Array2;

use crate::decision::Thresholds;
use crate::eval::{self, Evaluation};
use crate::features::{self, FeatureSpec};
use crate::forest::compiled::CompiledForest;
use crate::forest::train::{fit_forest, RandomForestValidParams};
use crate::forest::Forest;
use crate::model::{format::content_version, ModelHeader, TrainingInfo};
use crate::record::{format_timestamp, parse_timestamp, Transaction};

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
pub enum PipelineError {
    #[error("{0}")]
    Split(String),
    #[error("training period has {rows} labelled rows with {frauds} frauds: need both classes to train; widen the period or check the `label` column")]
    NotTrainable { rows: u64, frauds: u64 },
    #[error("training failed: {0}")]
    Train(String),
    #[error("cannot compile the trained forest: {0}")]
    Compile(#[from] crate::forest::ForestError),
    #[error("evaluation failed: {0}")]
    Eval(#[from] eval::EvalError),
    #[error("cannot encode the model: {0}")]
    Model(#[from] crate::model::ModelError),
}

/// A half-open event-time interval [from, to) in epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Period {
    pub fn contains(&self, t: i64) -> bool {
        self.from_ms <= t && t < self.to_ms
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}, {})",
            format_timestamp(self.from_ms),
            format_timestamp(self.to_ms)
        )
    }
}

/// Parses an instant for the command line: `YYYY-MM-DD` (midnight UTC), RFC 3339, or epoch ms.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    parse_timestamp("date", s).map_err(|e| e.reason)
}

/// How to cut history into warm-up, training and test periods.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitSpec {
    /// Explicit dates. Rows before `train.from` are warm-up; rows between the periods only feed
    /// window state.
    Dates { train: Period, test: Option<Period> },
    /// By fractions of the history's time span: the first `warmup_ms` are warm-up only; of the
    /// rest, the first `train_frac` is training, then a gap of `gap_ms` (label delay), then test.
    Fractions {
        warmup_ms: i64,
        train_frac: f64,
        gap_ms: i64,
    },
}

/// The resolved periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub train: Period,
    pub test: Option<Period>,
}

impl SplitSpec {
    /// Resolves against the history's first and last event times.
    pub fn resolve(&self, first_ms: i64, last_ms: i64) -> Result<Split, PipelineError> {
        let bad = |m: String| Err(PipelineError::Split(m));
        match *self {
            SplitSpec::Dates { train, test } => {
                if train.from_ms >= train.to_ms {
                    return bad(format!("training period {train} is empty"));
                }
                if let Some(t) = test {
                    if t.from_ms >= t.to_ms {
                        return bad(format!("test period {t} is empty"));
                    }
                    if t.from_ms < train.to_ms {
                        return bad(format!(
                            "test period {t} starts before the training period {train} ends: a time-based split must not overlap"
                        ));
                    }
                }
                Ok(Split { train, test })
            }
            SplitSpec::Fractions {
                warmup_ms,
                train_frac,
                gap_ms,
            } => {
                if !(train_frac > 0.0 && train_frac <= 1.0) {
                    return bad(format!("--train-frac {train_frac} must be in (0, 1]"));
                }
                let start = first_ms.saturating_add(warmup_ms.max(0));
                let end = last_ms + 1;
                if start >= end {
                    return bad(format!(
                        "the warm-up of {} h covers the whole history ({} to {})",
                        warmup_ms / 3_600_000,
                        format_timestamp(first_ms),
                        format_timestamp(last_ms)
                    ));
                }
                // Cut at UTC midnights when the history is long enough, so periods read as
                // dates and a day is never split between training and test.
                const DAY: i64 = 86_400_000;
                let long = end - start >= 3 * DAY;
                let start = if long && start.rem_euclid(DAY) != 0 {
                    start - start.rem_euclid(DAY) + DAY
                } else {
                    start
                };
                let span = (end - start) as f64;
                let mut train_to = start + (span * train_frac) as i64;
                if long && train_frac < 1.0 && train_to - train_to.rem_euclid(DAY) > start {
                    train_to -= train_to.rem_euclid(DAY);
                }
                let train = Period {
                    from_ms: start,
                    to_ms: train_to,
                };
                let test = if train_frac >= 1.0 {
                    None
                } else {
                    let from = train_to.saturating_add(gap_ms.max(0));
                    if from >= end {
                        return bad(format!(
                            "the gap leaves no test period (training ends {}, history ends {})",
                            format_timestamp(train_to),
                            format_timestamp(last_ms)
                        ));
                    }
                    Some(Period {
                        from_ms: from,
                        to_ms: end,
                    })
                };
                Ok(Split { train, test })
            }
        }
    }
}

/// Replays `txs` (in processing order) through the feature engine and returns the full matrix,
/// one row per transaction. With `partitions > 1` window state is split as a scorer consuming a
/// topic of that many partitions keeps it ([`replay_history`]).
pub fn feature_matrix(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    partitions: u32,
    reporter: &dyn Reporter,
) -> Array2<f32> {
    let n = spec.n_features();
    let mut x = Array2::<f32>::zeros((txs.len(), n));
    reporter.stage("features", txs.len() as u64);
    {
        let flat = x
            .as_slice_mut()
            .expect("a freshly allocated Array2 is contiguous");
        replay_history(spec, txs, partitions, |i, row| {
            flat[i * n..(i + 1) * n].copy_from_slice(row);
            if i % 65_536 == 0 {
                reporter.progress(i as u64);
            }
        });
    }
    reporter.progress(txs.len() as u64);
    reporter.finish();
    x
}

/// The feature rows of `txs` with window state per partition, as `vigil serve` holds it for a
/// transactions topic of `partitions` partitions: each card's transactions in the partition
/// Kafka's default partitioner gives its card id ([`crate::partition`]). One partition is the
/// plain [`features::replay`].
pub fn replay_history(
    spec: &Arc<FeatureSpec>,
    txs: &[Transaction],
    partitions: u32,
    on_row: impl FnMut(usize, &[f32]),
) -> features::EngineStats {
    let n = partitions.max(1);
    features::replay_sharded(
        spec,
        txs,
        n as usize,
        |t| crate::partition::partition_for(t.card_id.as_bytes(), n) as usize,
        on_row,
    )
}

/// Rows of `txs` inside `period` that carry a label.
fn labelled_rows(txs: &[Transaction], period: Period) -> Vec<usize> {
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
) -> Result<Trained, PipelineError> {
    let (first, last) = match (txs.first(), txs.last()) {
        (Some(a), Some(b)) => (a.timestamp_ms, b.timestamp_ms),
        _ => return Err(PipelineError::Split("the history has no rows".into())),
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
        return Err(PipelineError::NotTrainable {
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
    .map_err(|e| PipelineError::Train(e.to_string()))?;
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

/// Scores of the labelled rows of `txs` inside `period`, after replaying everything before them.
pub struct Scored {
    /// Indices into `txs` of the scored rows.
    pub rows: Vec<usize>,
    pub scores: Vec<f32>,
    pub labels: Vec<bool>,
}

/// Replays `txs` (sorted) through the model's feature spec and scores the rows in `period`
/// (labelled or not; `labels` is false for unlabelled rows and `labelled` says which had one).
pub fn score_history(
    model: &crate::model::Model,
    txs: &[Transaction],
    period: Period,
    reporter: &dyn Reporter,
) -> Scored {
    let n = model.spec.n_features();
    let rows: Vec<usize> = (0..txs.len())
        .filter(|&i| period.contains(txs[i].timestamp_ms))
        .collect();
    let mut x = Array2::<f32>::zeros((rows.len(), n));
    {
        let flat = x
            .as_slice_mut()
            .expect("a freshly allocated Array2 is contiguous");
        let mut next = 0usize;
        reporter.stage("features", txs.len() as u64);
        replay_history(&model.spec, txs, model.header.state_partitions, |i, row| {
            if next < rows.len() && rows[next] == i {
                flat[next * n..(next + 1) * n].copy_from_slice(row);
                next += 1;
            }
            if i % 65_536 == 0 {
                reporter.progress(i as u64);
            }
        });
        reporter.finish();
    }
    let mut scores = vec![0.0f32; rows.len()];
    model.compiled.score_batch(x.view(), &mut scores);
    let labels = rows.iter().map(|&i| txs[i].label == Some(true)).collect();
    Scored {
        rows,
        scores,
        labels,
    }
}

/// Evaluates scored rows (only those with a label count).
pub fn evaluate_scored(
    txs: &[Transaction],
    scored: &Scored,
    k: usize,
    thresholds: &Thresholds,
) -> Result<Evaluation, PipelineError> {
    let keep: Vec<usize> = (0..scored.rows.len())
        .filter(|&j| txs[scored.rows[j]].label.is_some())
        .collect();
    let scores: Vec<f32> = keep.iter().map(|&j| scored.scores[j]).collect();
    let labels: Vec<bool> = keep.iter().map(|&j| scored.labels[j]).collect();
    let cards: Vec<&str> = keep
        .iter()
        .map(|&j| txs[scored.rows[j]].card_id.as_str())
        .collect();
    let times: Vec<i64> = keep
        .iter()
        .map(|&j| txs[scored.rows[j]].timestamp_ms)
        .collect();
    Ok(eval::evaluate(
        &scores, &labels, &cards, &times, k, thresholds,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_split_is_time_ordered_with_gap() {
        let day = 86_400_000;
        let s = SplitSpec::Fractions {
            warmup_ms: 10 * day,
            train_frac: 0.5,
            gap_ms: 2 * day,
        }
        .resolve(0, 50 * day - 1)
        .unwrap();
        assert_eq!(s.train.from_ms, 10 * day);
        assert_eq!(s.train.to_ms, 30 * day);
        let t = s.test.unwrap();
        assert_eq!(t.from_ms, 32 * day);
        assert_eq!(t.to_ms, 50 * day);
    }

    #[test]
    fn overlapping_dates_are_refused() {
        let p = |a, b| Period {
            from_ms: a,
            to_ms: b,
        };
        let err = SplitSpec::Dates {
            train: p(0, 10),
            test: Some(p(5, 20)),
        }
        .resolve(0, 20)
        .unwrap_err();
        assert!(err.to_string().contains("overlap"));
    }

    #[test]
    fn instants_parse_dates_and_rfc3339() {
        assert_eq!(parse_instant("2018-04-01").unwrap(), 1_522_540_800_000);
        assert_eq!(
            parse_instant("2018-04-01T00:00:31Z").unwrap(),
            1_522_540_831_000
        );
        assert!(parse_instant("April").is_err());
    }
}
