//! Model evaluation: the metrics `vigil train` reports on the test period and `vigil evaluate`
//! reports on any labelled history. (The plotted report of an [`Evaluation`] is drawn by the
//! `vigil` crate's `offline::report`; this module does no I/O.)
//!
//! - [`ranking`]: AUC ROC and average precision with scikit-learn's semantics (ties included),
//!   ROC / precision-recall curves, confusion matrices at thresholds, threshold suggestion.
//! - [`card`]: card precision@k per UTC day (what a fraud team with `k` daily investigations
//!   would actually catch).
//!
//! [`evaluate`] computes everything in one go from columnar inputs and returns an
//! [`Evaluation`]: plain serializable data (the curves are downsampled and the score histogram is
//! pre-binned), so a report can be redrawn from `metrics.json` without the scores.
//!
//! Undefined metrics are `None`, never NaN: with no frauds in the test period, AUC and AP do not
//! exist, and a NaN would poison averages downstream and is not valid JSON.

pub mod card;
pub mod ranking;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decision::Thresholds;

pub use card::{card_precision_at_k, CardPrecision, DailyCardPrecision};
pub use ranking::{Confusion, PrPoint, Ranking, RocPoint, ThresholdPolicy};

/// Card precision@k's default daily investigation budget (as in the Fraud Detection Handbook).
pub const DEFAULT_K: usize = 100;

/// Curves stored in an [`Evaluation`] are downsampled to about this many points: plenty for an
/// 800-pixel plot, small enough for `metrics.json`.
pub const CURVE_POINTS: usize = 2000;

/// Bins of the score histogram in an [`Evaluation`].
pub const HISTOGRAM_BINS: usize = 50;

/// Invalid evaluation input. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("{column} has {found} entries but there are {expected} scores")]
    LengthMismatch {
        column: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("score at row {index} is not a finite number: {score}")]
    NonFiniteScore { index: usize, score: f32 },
    #[error("timestamp {timestamp_ms} ms is outside the representable date range")]
    TimestampOutOfRange { timestamp_ms: i64 },
    #[error("card precision@k needs k >= 1, got 0")]
    ZeroK,
    #[error("no scored rows to evaluate")]
    Empty,
}

/// Metrics of the rule "flag when `score >= threshold`" for one named threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    /// Which threshold this is (`review`, `decline`).
    pub name: String,
    pub threshold: f32,
    pub confusion: Confusion,
    /// `None` when nothing is flagged.
    pub precision: Option<f64>,
    /// `None` when there are no frauds.
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Fraction of all rows flagged (the workload); `None` for no rows.
    pub flagged_rate: Option<f64>,
}

impl ThresholdMetrics {
    fn new(name: &str, threshold: f32, confusion: Confusion) -> ThresholdMetrics {
        ThresholdMetrics {
            name: name.to_string(),
            threshold,
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            flagged_rate: confusion.flagged_rate(),
            confusion,
        }
    }
}

/// Score histogram per class over `HISTOGRAM_BINS` equal bins of `[lo, hi]` (the last bin is
/// closed). `[lo, hi]` is `[0, 1]` unless some score falls outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreHistogram {
    pub lo: f32,
    pub hi: f32,
    pub legit: Vec<u64>,
    pub fraud: Vec<u64>,
}

impl ScoreHistogram {
    /// Bins `scores` (all finite; [`Ranking`] guarantees it) by class.
    fn new(ranking: &Ranking, scores: &[f32], labels: &[bool], bins: usize) -> ScoreHistogram {
        let bins = bins.max(1);
        // Ranking is sorted descending: first is the max, last the min.
        let max = ranking.sorted_scores().next().unwrap_or(1.0);
        let min = ranking.sorted_scores().last().unwrap_or(0.0);
        let (lo, hi) = (min.min(0.0), max.max(1.0));
        let mut legit = vec![0; bins];
        let mut fraud = vec![0; bins];
        let width = (f64::from(hi) - f64::from(lo)) / bins as f64;
        for (&s, &l) in scores.iter().zip(labels) {
            // Truncation is the binning; the `min` folds `hi` itself into the last bin.
            let bin = (((f64::from(s) - f64::from(lo)) / width) as usize).min(bins - 1);
            if l {
                fraud[bin] += 1;
            } else {
                legit[bin] += 1;
            }
        }
        ScoreHistogram {
            lo,
            hi,
            legit,
            fraud,
        }
    }

    /// Lower and upper edge of bin `i`.
    pub fn bin_edges(&self, i: usize) -> (f64, f64) {
        let n = self.legit.len().max(1) as f64;
        let w = (f64::from(self.hi) - f64::from(self.lo)) / n;
        let lo = f64::from(self.lo);
        (lo + i as f64 * w, lo + (i + 1) as f64 * w)
    }
}

/// Everything `vigil` reports about a scored, labelled data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub rows: u64,
    pub frauds: u64,
    /// `None` unless both classes are present.
    pub auc_roc: Option<f64>,
    /// `None` when there are no frauds.
    pub average_precision: Option<f64>,
    /// Mean card precision@k over days; `None` for no rows.
    pub card_precision_at_k: Option<f64>,
    pub k: usize,
    pub card_precision_per_day: Vec<DailyCardPrecision>,
    /// Metrics at the review and decline thresholds, in that order.
    pub at_thresholds: Vec<ThresholdMetrics>,
    /// ROC curve downsampled to about [`CURVE_POINTS`]; empty unless both classes are present.
    pub roc: Vec<RocPoint>,
    /// Precision-recall curve downsampled to about [`CURVE_POINTS`]; empty without frauds.
    pub pr: Vec<PrPoint>,
    pub score_histogram: ScoreHistogram,
}

impl Evaluation {
    /// Fraction of rows that are fraud; `None` for no rows.
    pub fn fraud_rate(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.frauds as f64 / self.rows as f64)
    }
}

/// Evaluates scores against labels: ranking metrics, card precision@`k` per UTC day, metrics at
/// `thresholds`, curves and the score histogram. O(n log n); the scores are sorted once.
///
/// `cards` (any hashable, ordered id: `&str`, `String`, interned integers) and `timestamps_ms`
/// (epoch ms, UTC) are only used for card precision@k. Empty input
/// is valid and yields an evaluation whose metrics are all `None`.
///
/// Fails when the columns differ in length, a score is not finite, `k` is 0 or a timestamp is
/// outside the representable date range.
pub fn evaluate<K: std::hash::Hash + Eq + Ord>(
    scores: &[f32],
    labels: &[bool],
    cards: &[K],
    timestamps_ms: &[i64],
    k: usize,
    thresholds: &Thresholds,
) -> Result<Evaluation, EvalError> {
    // Card precision validates all four columns and k, so it runs first.
    let cp = card_precision_at_k(scores, labels, cards, timestamps_ms, k)?;
    let ranking = Ranking::new(scores, labels)?;
    let at_thresholds = vec![
        ThresholdMetrics::new(
            "review",
            thresholds.review,
            ranking.confusion_at(thresholds.review),
        ),
        ThresholdMetrics::new(
            "decline",
            thresholds.decline,
            ranking.confusion_at(thresholds.decline),
        ),
    ];
    Ok(Evaluation {
        rows: ranking.len() as u64,
        frauds: ranking.positives(),
        auc_roc: ranking.auc_roc(),
        average_precision: ranking.average_precision(),
        card_precision_at_k: cp.mean,
        k,
        card_precision_per_day: cp.per_day,
        at_thresholds,
        roc: ranking.roc_curve(CURVE_POINTS),
        pr: ranking.pr_curve(CURVE_POINTS),
        score_histogram: ScoreHistogram::new(&ranking, scores, labels, HISTOGRAM_BINS),
    })
}

/// AUC ROC with scikit-learn's `roc_auc_score` semantics; `None` unless both classes occur.
pub fn auc_roc(scores: &[f32], labels: &[bool]) -> Result<Option<f64>, EvalError> {
    Ok(Ranking::new(scores, labels)?.auc_roc())
}

/// Average precision with scikit-learn's `average_precision_score` semantics; `None` without
/// frauds.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Result<Option<f64>, EvalError> {
    Ok(Ranking::new(scores, labels)?.average_precision())
}

/// ROC curve downsampled to about `max_points` (see [`Ranking::roc_curve`]).
pub fn roc_curve(
    scores: &[f32],
    labels: &[bool],
    max_points: usize,
) -> Result<Vec<RocPoint>, EvalError> {
    Ok(Ranking::new(scores, labels)?.roc_curve(max_points))
}

/// Precision-recall curve downsampled to about `max_points` (see [`Ranking::pr_curve`]).
pub fn pr_curve(
    scores: &[f32],
    labels: &[bool],
    max_points: usize,
) -> Result<Vec<PrPoint>, EvalError> {
    Ok(Ranking::new(scores, labels)?.pr_curve(max_points))
}

/// Suggests review / decline thresholds with the default [`ThresholdPolicy`] (decline: lowest
/// threshold with precision >= 0.8, else the top 0.1% of scores; review: recall >= 0.8 with at
/// most 3% of traffic flagged, capped at decline). Fails on empty input.
pub fn suggest_thresholds(scores: &[f32], labels: &[bool]) -> Result<Thresholds, EvalError> {
    Ranking::new(scores, labels)?.suggest_thresholds()
}

/// Formats an optional metric: 4 decimals, or `n/a` when undefined.
fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}

/// Formats an optional fraction as a percentage, or `n/a`.
fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.3}%", v * 100.0))
}

/// The compact table the CLI prints.
impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rows {}  frauds {} ({})  days {}",
            self.rows,
            self.frauds,
            pct(self.fraud_rate()),
            self.card_precision_per_day.len()
        )?;
        writeln!(f, "AUC ROC              {}", opt(self.auc_roc))?;
        writeln!(f, "average precision    {}", opt(self.average_precision))?;
        writeln!(
            f,
            "card precision@{:<5} {} (mean over days)",
            self.k,
            opt(self.card_precision_at_k)
        )?;
        writeln!(
            f,
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "", "threshold", "precision", "recall", "F1", "flagged", "tp", "fp", "fn"
        )?;
        for t in &self.at_thresholds {
            writeln!(
                f,
                "{:<8} {:>9.4} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
                t.name,
                t.threshold,
                opt(t.precision),
                opt(t.recall),
                opt(t.f1),
                pct(t.flagged_rate),
                t.confusion.tp,
                t.confusion.fp,
                t.confusion.fn_
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAR1: i64 = 1_709_251_200_000;

    fn small() -> (Vec<f32>, Vec<bool>, Vec<&'static str>, Vec<i64>) {
        (
            vec![0.1, 0.4, 0.35, 0.8],
            vec![false, false, true, true],
            vec!["a", "b", "c", "d"],
            vec![MAR1; 4],
        )
    }

    #[test]
    fn evaluate_combines_all_metrics() {
        let (s, l, c, t) = small();
        let th = Thresholds::new(0.3, 0.5).unwrap();
        let e = evaluate(&s, &l, &c, &t, 2, &th).unwrap();
        assert_eq!((e.rows, e.frauds), (4, 2));
        assert_eq!(e.auc_roc, Some(0.75));
        assert!((e.average_precision.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // One day, top 2 cards by score: d (fraud, 0.8), b (clean, 0.4).
        assert_eq!(e.card_precision_at_k, Some(0.5));
        assert_eq!(e.at_thresholds[0].name, "review");
        assert_eq!(e.at_thresholds[0].confusion.flagged(), 3);
        assert_eq!(e.at_thresholds[1].confusion.tp, 1);
        assert_eq!(e.at_thresholds[1].precision, Some(1.0));
        assert_eq!(e.at_thresholds[1].recall, Some(0.5));
        assert_eq!(e.score_histogram.fraud.iter().sum::<u64>(), 2);
        assert_eq!(e.score_histogram.legit.iter().sum::<u64>(), 2);
        // Score 0.8 lands in bin 40 of 50 over [0, 1].
        assert_eq!(e.score_histogram.fraud[40], 1);
        let table = e.to_string();
        assert!(table.contains("AUC ROC              0.7500"), "{table}");
        assert!(table.contains("card precision@2"), "{table}");
    }

    #[test]
    fn evaluation_round_trips_through_json_without_nan() {
        let th = Thresholds::new(0.3, 0.5).unwrap();
        let e = evaluate(&[0.2, 0.9], &[false, false], &["a", "b"], &[0, 1], 10, &th).unwrap();
        assert_eq!(e.auc_roc, None);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"auc_roc\":null"));
        assert!(json.contains("\"fn\":0"));
        let back: Evaluation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        assert!(e.to_string().contains("n/a"));
    }

    #[test]
    fn empty_input_is_an_all_none_evaluation() {
        let th = Thresholds::new(0.3, 0.5).unwrap();
        let none: [&str; 0] = [];
        let e = evaluate(&[], &[], &none, &[], 10, &th).unwrap();
        assert_eq!(e.rows, 0);
        assert_eq!(e.auc_roc, None);
        assert_eq!(e.card_precision_at_k, None);
        assert_eq!(e.at_thresholds[0].flagged_rate, None);
        assert!(e.roc.is_empty() && e.pr.is_empty());
    }

    #[test]
    fn evaluate_rejects_ragged_columns() {
        let (s, l, c, _) = small();
        let th = Thresholds::new(0.3, 0.5).unwrap();
        let err = evaluate(&s, &l, &c, &[0, 1], 2, &th).unwrap_err();
        assert_eq!(
            err.to_string(),
            "timestamps has 2 entries but there are 4 scores"
        );
    }

    #[test]
    fn free_functions_agree_with_ranking() {
        let (s, l, _, _) = small();
        assert_eq!(auc_roc(&s, &l).unwrap(), Some(0.75));
        assert!((average_precision(&s, &l).unwrap().unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(roc_curve(&s, &l, 100).unwrap().len(), 5);
        assert_eq!(pr_curve(&s, &l, 100).unwrap().len(), 4);
        let t = suggest_thresholds(&s, &l).unwrap();
        t.validate().unwrap();
        assert!(auc_roc(&s, &l[..3]).is_err());
    }
}
