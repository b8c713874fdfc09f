//! Ranking metrics computed from one descending sort of the scores: AUC ROC, average precision,
//! the ROC and precision-recall curves, confusion matrices at fixed thresholds and the threshold
//! suggestion rule.
//!
//! Everything here is a sweep over the *distinct* score values in descending order. At each
//! distinct value `t` we know how many positives (`tp`) and negatives (`fp`) score `>= t`, which
//! is exactly the confusion matrix of the rule "flag when `score >= t`" (the same rule
//! [`Thresholds::decide`] applies). Grouping equal scores into one step is what gives ties
//! scikit-learn's semantics: a tie between a positive and a negative counts one half in the AUC
//! (trapezoid), and tied rows enter the precision-recall curve together. The sort is the only
//! super-linear step, so every metric is O(n log n) and memory is one `(f32, bool)` pair per row.

use rayon::slice::ParallelSliceMut;
use serde::{Deserialize, Serialize};

use super::EvalError;
use crate::decision::Thresholds;

/// Below this many rows a sequential sort is faster than waking the rayon pool.
const PARALLEL_SORT_MIN_ROWS: usize = 1 << 16;

/// Scores and labels sorted by descending score, with class totals. Build it once and query it
/// for every metric: [`super::evaluate`] does exactly that so 10M rows are sorted only once.
#[derive(Debug, Clone)]
pub struct Ranking {
    /// `(score, label)` sorted by descending score; all scores are finite.
    rows: Vec<(f32, bool)>,
    positives: u64,
    negatives: u64,
}

/// One distinct score value of the sweep: flagging every row with `score >= threshold` catches
/// `tp` positives and raises `fp` false alarms.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    threshold: f32,
    tp: u64,
    fp: u64,
}

/// Iterator over the distinct-score steps of a [`Ranking`], highest threshold first.
struct Steps<'a> {
    rows: &'a [(f32, bool)],
    pos: usize,
    tp: u64,
    fp: u64,
}

impl Iterator for Steps<'_> {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let &(threshold, _) = self.rows.get(self.pos)?;
        // Exact float equality is the point here: rows with the same score are tied.
        while let Some(&(score, label)) = self.rows.get(self.pos) {
            if score != threshold {
                break;
            }
            if label {
                self.tp += 1;
            } else {
                self.fp += 1;
            }
            self.pos += 1;
        }
        Some(Step {
            threshold,
            tp: self.tp,
            fp: self.fp,
        })
    }
}

/// Confusion matrix of the rule "flag when `score >= threshold`"; fraud is the positive class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    /// Frauds flagged.
    pub tp: u64,
    /// Legitimate transactions flagged (false alarms).
    pub fp: u64,
    /// Legitimate transactions let through.
    pub tn: u64,
    /// Frauds missed. (`fn` is a Rust keyword, hence the underscore; it serializes as `fn`.)
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    /// Rows flagged (`tp + fp`).
    pub fn flagged(&self) -> u64 {
        self.tp + self.fp
    }

    /// All rows.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// `tp / (tp + fp)`; `None` when nothing is flagged (precision of an empty set is undefined,
    /// and reporting 0 or 1 would be a lie either way).
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.flagged())
    }

    /// `tp / (tp + fn)`; `None` when there are no frauds at all.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Harmonic mean of precision and recall; `None` when either is undefined. It is 0 (not
    /// undefined) when both are 0.
    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        Some(if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        })
    }

    /// Fraction of all rows flagged: the review / decline workload. `None` for no rows.
    pub fn flagged_rate(&self) -> Option<f64> {
        ratio(self.flagged(), self.total())
    }
}

/// `num / den`, undefined for an empty denominator.
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// A point of the ROC curve: flagging `score >= threshold` gives this false / true positive rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// `None` for the `(0, 0)` origin, "flag nothing", which no finite threshold expresses
    /// (scikit-learn uses `inf` there, which JSON cannot carry).
    pub threshold: Option<f32>,
    pub fpr: f64,
    pub tpr: f64,
}

/// A point of the precision-recall curve at `score >= threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    pub threshold: f32,
    pub recall: f64,
    pub precision: f64,
}

/// The rule [`Ranking::suggest_thresholds`] applies; the defaults are the documented policy.
///
/// - **decline** is the *lowest* threshold whose precision is at least
///   `decline_min_precision` (the most fraud we can block while at most one decline in five hits
///   a legitimate customer). If no threshold is that precise (or there are no frauds), it falls
///   back to the threshold flagging the top `decline_fallback_rate` of traffic, so an imprecise
///   model still declines only its most extreme scores.
/// - **review** is the *highest* threshold whose recall is at least `review_min_recall` (reach
///   the recall target with the smallest queue), but never one that flags more than
///   `review_max_rate` of traffic: review queues are staffed by people, so the workload cap
///   wins over the recall target. It is then capped at `decline` so `review <= decline`.
///
/// "Flags at most a rate r" means the lowest threshold whose flagged count is `<= r * rows`; when
/// even the top score's tie group is larger than that, the top score itself is used (the
/// smallest workload any threshold can produce).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdPolicy {
    pub decline_min_precision: f64,
    pub decline_fallback_rate: f64,
    pub review_min_recall: f64,
    pub review_max_rate: f64,
}

impl Default for ThresholdPolicy {
    fn default() -> Self {
        ThresholdPolicy {
            decline_min_precision: 0.8,
            decline_fallback_rate: 0.001,
            review_min_recall: 0.8,
            review_max_rate: 0.03,
        }
    }
}

impl Ranking {
    /// Sorts `scores` (descending) together with `labels`.
    ///
    /// Fails when the slices differ in length or a score is NaN / infinite: a non-finite score
    /// has no place in a ranking, and silently dropping it would bias every metric.
    pub fn new(scores: &[f32], labels: &[bool]) -> Result<Ranking, EvalError> {
        if labels.len() != scores.len() {
            return Err(EvalError::LengthMismatch {
                column: "labels",
                expected: scores.len(),
                found: labels.len(),
            });
        }
        if let Some((index, &score)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(EvalError::NonFiniteScore { index, score });
        }
        let mut rows: Vec<(f32, bool)> =
            scores.iter().copied().zip(labels.iter().copied()).collect();
        // Descending by score; `total_cmp` is a total order and all scores are finite, so -0.0
        // vs 0.0 is the only oddity: normalise it so the two zeros form one tie group.
        for row in &mut rows {
            if row.0 == 0.0 {
                row.0 = 0.0;
            }
        }
        let cmp = |a: &(f32, bool), b: &(f32, bool)| b.0.total_cmp(&a.0);
        if rows.len() >= PARALLEL_SORT_MIN_ROWS {
            rows.par_sort_unstable_by(cmp);
        } else {
            rows.sort_unstable_by(cmp);
        }
        let positives = labels.iter().filter(|&&l| l).count() as u64;
        let negatives = labels.len() as u64 - positives;
        Ok(Ranking {
            rows,
            positives,
            negatives,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Number of positive (fraud) rows.
    pub fn positives(&self) -> u64 {
        self.positives
    }

    /// Number of negative (legitimate) rows.
    pub fn negatives(&self) -> u64 {
        self.negatives
    }

    /// Scores in descending order (finite).
    pub fn sorted_scores(&self) -> impl Iterator<Item = f32> + '_ {
        self.rows.iter().map(|r| r.0)
    }

    fn steps(&self) -> Steps<'_> {
        Steps {
            rows: &self.rows,
            pos: 0,
            tp: 0,
            fp: 0,
        }
    }

    /// Area under the ROC curve, equal to scikit-learn's `roc_auc_score`: the trapezoid rule over
    /// the distinct-threshold points, i.e. the probability that a random fraud outranks a random
    /// legitimate row with ties counting one half.
    ///
    /// `None` when either class is absent: the ROC curve is then undefined (scikit-learn raises).
    pub fn auc_roc(&self) -> Option<f64> {
        if self.positives == 0 || self.negatives == 0 {
            return None;
        }
        // Accumulate twice the area in integer units of (fp step) x (tp sum) to stay exact
        // until the final division; u128 because 10M x 10M overflows u64 when doubled.
        let (mut area2, mut prev_tp, mut prev_fp) = (0u128, 0u64, 0u64);
        for step in self.steps() {
            let width = u128::from(step.fp - prev_fp);
            area2 += width * u128::from(step.tp + prev_tp);
            prev_tp = step.tp;
            prev_fp = step.fp;
        }
        let scale = 2.0 * self.positives as f64 * self.negatives as f64;
        Some(area2 as f64 / scale)
    }

    /// Average precision, equal to scikit-learn's `average_precision_score`:
    /// `sum_n (R_n - R_{n-1}) * P_n` over the distinct thresholds in descending order (tied rows
    /// form one threshold; no interpolation).
    ///
    /// `None` when there are no positives (recall is undefined). With no negatives it is 1.
    pub fn average_precision(&self) -> Option<f64> {
        if self.positives == 0 {
            return None;
        }
        let mut ap = 0.0;
        let mut prev_tp = 0u64;
        for step in self.steps() {
            if step.tp > prev_tp {
                let precision = step.tp as f64 / (step.tp + step.fp) as f64;
                ap += (step.tp - prev_tp) as f64 * precision;
                prev_tp = step.tp;
            }
        }
        Some(ap / self.positives as f64)
    }

    /// ROC curve from `(0, 0)` (nothing flagged) to `(1, 1)`, downsampled to about `max_points`
    /// points (at least 2). A point is kept once the curve has travelled `2 / max_points` in
    /// `fpr + tpr` since the last kept one; since both rates only grow and each is at most 1,
    /// this bounds the count while keeping the shape wherever the curve actually moves. The last
    /// point is always kept, and a curve with at most `max_points` thresholds is returned whole.
    ///
    /// Empty when either class is absent (rates undefined).
    pub fn roc_curve(&self, max_points: usize) -> Vec<RocPoint> {
        if self.positives == 0 || self.negatives == 0 {
            return Vec::new();
        }
        let (p, n) = (self.positives as f64, self.negatives as f64);
        let min_travel = self.min_travel(2.0, max_points);
        let mut out = vec![RocPoint {
            threshold: None,
            fpr: 0.0,
            tpr: 0.0,
        }];
        let mut pending = None;
        for step in self.steps() {
            let point = RocPoint {
                threshold: Some(step.threshold),
                fpr: step.fp as f64 / n,
                tpr: step.tp as f64 / p,
            };
            // `out` is never empty: it starts with the origin.
            let last = out[out.len() - 1];
            if (point.fpr - last.fpr) + (point.tpr - last.tpr) >= min_travel {
                out.push(point);
                pending = None;
            } else {
                pending = Some(point);
            }
        }
        out.extend(pending);
        out
    }

    /// Precision-recall curve in order of increasing recall (decreasing threshold), one point
    /// per distinct threshold, downsampled to about `max_points`: a point is kept once recall has
    /// grown by `1 / max_points` since the last kept one (recall is monotone, precision is not,
    /// so recall is the axis to sample). The first and last points are always kept, and a curve
    /// with at most `max_points` thresholds is returned whole (one point per threshold, as
    /// scikit-learn's `precision_recall_curve` minus its artificial `(0, 1)` end point).
    ///
    /// Empty when there are no positives.
    pub fn pr_curve(&self, max_points: usize) -> Vec<PrPoint> {
        if self.positives == 0 {
            return Vec::new();
        }
        let p = self.positives as f64;
        let min_travel = self.min_travel(1.0, max_points);
        let mut out: Vec<PrPoint> = Vec::new();
        let mut pending = None;
        for step in self.steps() {
            let point = PrPoint {
                threshold: step.threshold,
                recall: step.tp as f64 / p,
                precision: step.tp as f64 / (step.tp + step.fp) as f64,
            };
            match out.last() {
                Some(last) if point.recall - last.recall < min_travel => pending = Some(point),
                _ => {
                    out.push(point);
                    pending = None;
                }
            }
        }
        out.extend(pending);
        out
    }

    /// The sampling distance for a curve of total travel `span`: 0 (keep every point) when the
    /// curve has at most `max_points` distinct thresholds anyway, so small curves are exact.
    fn min_travel(&self, span: f64, max_points: usize) -> f64 {
        if self.steps().count() <= max_points {
            0.0
        } else {
            span / max_points.max(2) as f64
        }
    }

    /// Confusion matrix of flagging `score >= threshold`. A NaN threshold flags nothing.
    pub fn confusion_at(&self, threshold: f32) -> Confusion {
        // Rows are sorted descending, so the flagged rows are a prefix.
        let flagged = self.rows.partition_point(|&(s, _)| s >= threshold);
        let tp = self.rows[..flagged].iter().filter(|r| r.1).count() as u64;
        let fp = flagged as u64 - tp;
        Confusion {
            tp,
            fp,
            tn: self.negatives - fp,
            fn_: self.positives - tp,
        }
    }

    /// Suggests review / decline thresholds with the default [`ThresholdPolicy`].
    pub fn suggest_thresholds(&self) -> Result<Thresholds, EvalError> {
        self.suggest_thresholds_with(&ThresholdPolicy::default())
    }

    /// Suggests review / decline thresholds with `policy` (see [`ThresholdPolicy`] for the rule).
    /// The result always satisfies [`Thresholds::validate`]: thresholds are clamped to `[0, 1]`.
    ///
    /// Fails only for an empty ranking (there is nothing to base a threshold on).
    pub fn suggest_thresholds_with(
        &self,
        policy: &ThresholdPolicy,
    ) -> Result<Thresholds, EvalError> {
        if self.rows.is_empty() {
            return Err(EvalError::Empty);
        }
        // Rates are compared as quotients, not as `rate * total` products: division is correctly
        // rounded, so 30 / 1000 is exactly the f64 nearest 0.03, the same as the policy literal,
        // whereas 0.03 * 1000 may land a hair below 30 and wrongly exclude the boundary.
        let rows = self.rows.len() as f64;
        let p = self.positives as f64;
        let mut lowest_precise = None;
        let mut highest_recall_hit = None;
        let mut decline_budget = None;
        let mut review_budget = None;
        for step in self.steps() {
            let flagged = (step.tp + step.fp) as f64;
            if step.tp > 0 && step.tp as f64 / flagged >= policy.decline_min_precision {
                lowest_precise = Some(step.threshold);
            }
            if highest_recall_hit.is_none()
                && self.positives > 0
                && step.tp as f64 / p >= policy.review_min_recall
            {
                highest_recall_hit = Some(step.threshold);
            }
            if flagged / rows <= policy.decline_fallback_rate {
                decline_budget = Some(step.threshold);
            }
            if flagged / rows <= policy.review_max_rate {
                review_budget = Some(step.threshold);
            }
        }
        // The first row exists (checked above); it is the top score, the smallest workload.
        let top = self.rows[0].0;
        let decline = lowest_precise.unwrap_or(decline_budget.unwrap_or(top));
        let review_cap = review_budget.unwrap_or(top);
        // Higher threshold = fewer rows flagged, so the workload cap is a lower bound.
        let review = highest_recall_hit.map_or(review_cap, |t| t.max(review_cap));
        let decline = decline.clamp(0.0, 1.0);
        let review = review.clamp(0.0, 1.0).min(decline);
        Ok(Thresholds { review, decline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(labels: &[u8], scores: &[f32]) -> Ranking {
        let labels: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        Ranking::new(scores, &labels).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn sklearn_reference_example() {
        // roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.75, average_precision_score = 0.8333..
        let r = ranking(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]);
        assert!(close(r.auc_roc().unwrap(), 0.75));
        assert!(close(r.average_precision().unwrap(), 5.0 / 6.0));
    }

    #[test]
    fn ties_count_half_in_auc_and_group_in_ap() {
        // sklearn: roc_auc_score([0,1,0,1],[0.5,0.5,0.2,0.9]) = 0.875,
        // average_precision_score(...) = 0.5*1 + 0.5*(2/3) = 0.8333..
        let r = ranking(&[0, 1, 0, 1], &[0.5, 0.5, 0.2, 0.9]);
        assert!(close(r.auc_roc().unwrap(), 0.875));
        assert!(close(r.average_precision().unwrap(), 0.5 + 0.5 * 2.0 / 3.0));
        // All scores tied: AUC is exactly chance, AP is the base rate.
        let r = ranking(&[0, 1, 0, 0], &[0.3; 4]);
        assert!(close(r.auc_roc().unwrap(), 0.5));
        assert!(close(r.average_precision().unwrap(), 0.25));
    }

    #[test]
    fn sklearn_larger_case_with_ties() {
        // y = [1,0,1,1,0,0,1,0,0,0], s = [.9,.9,.8,.7,.7,.6,.5,.4,.4,.1]
        // sklearn 1.9.1: roc_auc_score = 0.75, average_precision_score = 0.5845238095238094
        let r = ranking(
            &[1, 0, 1, 1, 0, 0, 1, 0, 0, 0],
            &[0.9, 0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.4, 0.4, 0.1],
        );
        // Hand check AUC: pairs (pos,neg) = 24; pos 0.9 beats 5 negs + tie 1 -> 5.5,
        // 0.8 beats 5, 0.7 beats 4 + tie -> 4.5, 0.5 beats 3 -> 18 / 24 = 0.75.
        assert!(close(r.auc_roc().unwrap(), 18.0 / 24.0));
        // AP: thresholds .9 (tp1 fp1 P=.5 dR=.25), .8 (2,1 P=2/3 dR=.25), .7 (3,2 P=.6 dR=.25),
        // .5 (4,3 P=4/7 dR=.25).
        let ap = 0.25 * (0.5 + 2.0 / 3.0 + 0.6 + 4.0 / 7.0);
        assert!(close(r.average_precision().unwrap(), ap));
    }

    #[test]
    fn perfect_and_inverse_rankings() {
        let perfect = ranking(&[0, 0, 0, 1, 1], &[0.1, 0.2, 0.3, 0.8, 0.9]);
        assert_eq!(perfect.auc_roc(), Some(1.0));
        assert_eq!(perfect.average_precision(), Some(1.0));
        let inverse = ranking(&[1, 1, 0, 0, 0], &[0.1, 0.2, 0.3, 0.8, 0.9]);
        assert_eq!(inverse.auc_roc(), Some(0.0));
        // Positives at ranks 4 and 5: AP = 0.5 * 1/4 + 0.5 * 2/5.
        assert!(close(inverse.average_precision().unwrap(), 0.125 + 0.2));
    }

    #[test]
    fn degenerate_classes_are_none_not_nan() {
        let no_pos = ranking(&[0, 0], &[0.1, 0.9]);
        assert_eq!(no_pos.auc_roc(), None);
        assert_eq!(no_pos.average_precision(), None);
        assert!(no_pos.roc_curve(100).is_empty());
        assert!(no_pos.pr_curve(100).is_empty());
        let no_neg = ranking(&[1, 1], &[0.1, 0.9]);
        assert_eq!(no_neg.auc_roc(), None);
        assert_eq!(no_neg.average_precision(), Some(1.0));
        let empty = ranking(&[], &[]);
        assert_eq!(empty.auc_roc(), None);
        assert_eq!(empty.confusion_at(0.5), Confusion::default());
        assert!(matches!(empty.suggest_thresholds(), Err(EvalError::Empty)));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Ranking::new(&[0.1, f32::NAN], &[true, false]),
            Err(EvalError::NonFiniteScore { index: 1, .. })
        ));
        assert!(matches!(
            Ranking::new(&[0.1], &[true, false]),
            Err(EvalError::LengthMismatch {
                column: "labels",
                expected: 1,
                found: 2
            })
        ));
    }

    #[test]
    fn signed_zeros_are_one_tie_group() {
        let r = ranking(&[1, 0], &[0.0, -0.0]);
        assert_eq!(r.auc_roc(), Some(0.5));
    }

    #[test]
    fn confusion_at_thresholds() {
        let r = ranking(&[0, 0, 1, 1, 0, 1], &[0.1, 0.4, 0.35, 0.8, 0.8, 0.95]);
        let c = r.confusion_at(0.4);
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 2,
                tn: 1,
                fn_: 1
            }
        );
        assert_eq!(c.precision(), Some(0.5));
        assert!(close(c.recall().unwrap(), 2.0 / 3.0));
        assert!(close(
            c.f1().unwrap(),
            2.0 * 0.5 * (2.0 / 3.0) / (0.5 + 2.0 / 3.0)
        ));
        assert!(close(c.flagged_rate().unwrap(), 4.0 / 6.0));
        let none = r.confusion_at(0.99);
        assert_eq!(none.flagged(), 0);
        assert_eq!(none.precision(), None);
        assert_eq!(none.f1(), None);
        assert_eq!(r.confusion_at(f32::NAN).flagged(), 0);
        assert_eq!(r.confusion_at(0.0).flagged(), 6);
    }

    #[test]
    fn curves_are_monotone_bounded_and_end_at_full_recall() {
        let n = 10_000;
        let scores: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32 / n as f32).collect();
        let labels: Vec<bool> = (0..n)
            .map(|i| (i * 7919) % n > 7_000 && i % 3 != 0)
            .collect();
        let r = Ranking::new(&scores, &labels).unwrap();
        let roc = r.roc_curve(200);
        assert!(roc.len() <= 203, "{} points", roc.len());
        assert_eq!((roc[0].fpr, roc[0].tpr), (0.0, 0.0));
        let last = roc[roc.len() - 1];
        assert_eq!((last.fpr, last.tpr), (1.0, 1.0));
        assert!(roc
            .windows(2)
            .all(|w| w[0].fpr <= w[1].fpr && w[0].tpr <= w[1].tpr));
        let pr = r.pr_curve(200);
        assert!(pr.len() <= 203, "{} points", pr.len());
        assert_eq!(pr[pr.len() - 1].recall, 1.0);
        assert!(pr.windows(2).all(|w| w[0].recall <= w[1].recall));
        assert!(pr.iter().all(|p| (0.0..=1.0).contains(&p.precision)));
    }

    #[test]
    fn suggested_thresholds_follow_the_documented_rule() {
        // 1000 rows: scores i/1000; frauds are the top 10 rows plus two lower ones.
        let n = 1000;
        let scores: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        let labels: Vec<bool> = (0..n).map(|i| i >= 990 || i == 900 || i == 500).collect();
        let r = Ranking::new(&scores, &labels).unwrap();
        let t = r.suggest_thresholds().unwrap();
        t.validate().unwrap();
        // Precision >= 0.8 holds down to threshold 0.988 (10 tp, 2 fp -> 0.833), and 0.987
        // gives 10/13 = 0.77; no lower threshold recovers 0.8, so decline = 0.988.
        assert_eq!(t.decline, 0.988);
        // Recall >= 0.8 needs 10 of 12 frauds: the top 10 rows, threshold 0.99 (1% flagged)
        // -- but review is capped at decline.
        assert_eq!(t.review, 0.988);

        // A weak model: frauds spread uniformly; recall 0.8 would flag ~80% of traffic, so the
        // 3% workload cap wins and decline falls back to the top 0.1%.
        let labels: Vec<bool> = (0..n).map(|i| i % 10 == 3).collect();
        let r = Ranking::new(&scores, &labels).unwrap();
        let t = r.suggest_thresholds().unwrap();
        assert_eq!(t.review, 0.97); // 30 rows flagged = 3%
        assert_eq!(t.decline, 0.999); // 1 row flagged = 0.1%
        let c = r.confusion_at(t.review);
        assert_eq!(c.flagged(), 30);
    }
}
