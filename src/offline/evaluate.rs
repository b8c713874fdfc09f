//! Scoring a period of a history with a model, and evaluating the scores.

use ndarray::Array2;

use crate::decision::Thresholds;
use crate::eval::{self, Evaluation};
use crate::model::Model;
use crate::record::Transaction;

use super::{replay_history, OfflineError, Period, Reporter};

/// Scores of the labelled rows of `txs` inside `period`, after replaying everything before them.
pub struct PeriodScores {
    /// Indices into `txs` of the scored rows.
    pub rows: Vec<usize>,
    pub scores: Vec<f32>,
    pub labels: Vec<bool>,
}

/// Replays `txs` (sorted) through the model's feature spec and scores the rows in `period`
/// (labelled or not; `labels` is false for unlabelled rows and `labelled` says which had one).
pub fn score_history(
    model: &Model,
    txs: &[Transaction],
    period: Period,
    reporter: &dyn Reporter,
) -> PeriodScores {
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
    PeriodScores {
        rows,
        scores,
        labels,
    }
}

/// Evaluates scored rows (only those with a label count).
pub fn evaluate_scored(
    txs: &[Transaction],
    scored: &PeriodScores,
    k: usize,
    thresholds: &Thresholds,
) -> Result<Evaluation, OfflineError> {
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
