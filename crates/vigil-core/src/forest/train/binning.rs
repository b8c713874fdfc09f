//! Quantile binning of the training matrix, done once per fit.
//!
//! Every feature is cut into at most `max_bins` contiguous value ranges holding roughly equal
//! numbers of rows, and the matrix is re-encoded column-major as one `u8` bin code per cell. The
//! trainer then only ever looks at codes: a split "bin <= b" is found from per-bin class counts
//! instead of sorting rows at every node, and the codes of one column fit in cache.
//!
//! The cut between bin `b` and bin `b + 1` is an `f32` strictly between the largest training
//! value of bin `b` and the smallest of bin `b + 1` (their midpoint when representable, else the
//! former). Hence, for every training value `x`, `x <= cut[b]` holds exactly when
//! `bin(x) <= b`, so the exported tree (which compares raw `f32` values with these cuts) routes
//! every training row exactly as the trainer did, and unseen values fall on the nearer side.

use ndarray::ArrayView2;
use rayon::prelude::*;

use super::TrainError;

/// The binned, column-major training matrix.
#[derive(Debug, Clone)]
pub(crate) struct BinnedMatrix {
    n_rows: usize,
    /// `codes[f * n_rows + r]` is the bin of row `r` in feature `f`.
    codes: Vec<u8>,
    /// Per feature, the `n_bins - 1` strictly increasing cut points.
    cuts: Vec<Vec<f32>>,
}

impl BinnedMatrix {
    /// Bins `x` (rows = samples). Fails on the first non-finite cell in row-major order.
    pub(crate) fn new(x: ArrayView2<'_, f32>, max_bins: usize) -> Result<Self, TrainError> {
        if let Some(((row, column), &value)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(TrainError::NonFinite { row, column, value });
        }
        let n_rows = x.nrows();
        let per_feature: Vec<(Vec<f32>, Vec<u8>)> = x
            .columns()
            .into_iter()
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|col| {
                let mut sorted: Vec<f32> = col.iter().copied().collect();
                let cuts = quantile_cuts(&mut sorted, max_bins);
                let codes = col.iter().map(|&v| bin_of(&cuts, v)).collect();
                (cuts, codes)
            })
            .collect();
        let mut codes = Vec::with_capacity(n_rows * per_feature.len());
        let mut cuts = Vec::with_capacity(per_feature.len());
        for (c, k) in per_feature {
            cuts.push(c);
            codes.extend_from_slice(&k);
        }
        Ok(BinnedMatrix {
            n_rows,
            codes,
            cuts,
        })
    }

    pub(crate) fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub(crate) fn n_features(&self) -> usize {
        self.cuts.len()
    }

    /// Bin codes of feature `f`, indexed by row.
    pub(crate) fn column(&self, f: usize) -> &[u8] {
        &self.codes[f * self.n_rows..(f + 1) * self.n_rows]
    }

    /// Number of bins of feature `f` (1 for a constant feature).
    pub(crate) fn n_bins(&self, f: usize) -> usize {
        self.cuts[f].len() + 1
    }

    /// The raw-value threshold equivalent to "bin <= b" for feature `f` (`b < n_bins(f) - 1`).
    pub(crate) fn threshold(&self, f: usize, b: usize) -> f32 {
        self.cuts[f][b]
    }
}

/// Bin of a value: the number of cuts strictly below it, i.e. the first `b` with `v <= cut[b]`.
fn bin_of(cuts: &[f32], v: f32) -> u8 {
    // At most 254 cuts (max_bins <= 255 is validated), so the count fits a u8.
    cuts.partition_point(|&c| c < v) as u8
}

/// Cut points for at most `max_bins` bins of roughly equal row counts. `values` must be finite;
/// it is sorted in place.
///
/// Bins are runs of whole distinct values: a value is never split across bins, so heavy ties
/// (e.g. a count feature that is mostly 0) just yield fewer, uneven bins.
fn quantile_cuts(values: &mut [f32], max_bins: usize) -> Vec<f32> {
    values.sort_unstable_by(f32::total_cmp);
    // Distinct values with their counts; `==` merges -0.0 and 0.0, which `<=` cannot tell apart.
    let mut distinct: Vec<(f32, usize)> = Vec::new();
    for &v in values.iter() {
        match distinct.last_mut() {
            Some((last, count)) if *last == v => *count += 1,
            _ => distinct.push((v, 1)),
        }
    }
    let n = values.len();
    let mut cuts = Vec::new();
    let mut seen = 0usize;
    for pair in distinct.windows(2) {
        let (lo, count) = pair[0];
        let hi = pair[1].0;
        seen += count;
        // Close the current bin when every distinct value may get its own bin, or once the rows
        // seen reach the next multiple of n / max_bins. The k-th such cut needs
        // seen >= k * n / max_bins with seen < n (a value is still to come), so k < max_bins:
        // there are never more than max_bins - 1 cuts.
        if distinct.len() <= max_bins || seen * max_bins >= (cuts.len() + 1) * n {
            cuts.push(cut_between(lo, hi));
        }
    }
    cuts
}

/// A threshold `t` with `lo <= t < hi` (for finite `lo < hi`): the midpoint when `f32` can
/// represent one strictly below `hi`, else `lo` itself.
fn cut_between(lo: f32, hi: f32) -> f32 {
    let mid = ((f64::from(lo) + f64::from(hi)) / 2.0) as f32;
    if mid >= lo && mid < hi {
        mid
    } else {
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn few_distinct_values_get_one_bin_each() {
        let mut v = vec![3.0, 1.0, 2.0, 1.0, 3.0, -0.0, 0.0];
        let cuts = quantile_cuts(&mut v, 255);
        assert_eq!(cuts, vec![0.5, 1.5, 2.5]);
    }

    #[test]
    fn many_values_respect_max_bins_and_are_roughly_equal() {
        let mut v: Vec<f32> = (0..10_000)
            .map(|i| (i as f32 * 0.37).sin() * 100.0)
            .collect();
        let cuts = quantile_cuts(&mut v, 16);
        assert!(cuts.len() <= 15, "{} cuts", cuts.len());
        assert!(cuts.len() >= 14, "{} cuts", cuts.len());
        assert!(cuts.windows(2).all(|w| w[0] < w[1]));
        let mut counts = [0usize; 16];
        for &x in &v {
            counts[bin_of(&cuts, x) as usize] += 1;
        }
        for &c in &counts[..cuts.len() + 1] {
            assert!((500..=800).contains(&c), "bin counts {counts:?}");
        }
    }

    #[test]
    fn thresholds_reproduce_bins_exactly_on_training_values() {
        // Adjacent floats force the fallback from midpoint to the lower value.
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() + 1);
        let mut vals = vec![a, b, -1e30, 1e30, 7.25, 7.5, 0.1, 0.2, 0.3];
        vals.extend((0..1000).map(|i| i as f32 / 7.0));
        let x = Array2::from_shape_vec((vals.len(), 1), vals.clone()).unwrap();
        for max_bins in [2, 3, 17, 255] {
            let m = BinnedMatrix::new(x.view(), max_bins).unwrap();
            assert!(m.n_bins(0) <= max_bins);
            let col = m.column(0);
            for bin in 0..m.n_bins(0) - 1 {
                let t = m.threshold(0, bin);
                for (r, &v) in vals.iter().enumerate() {
                    assert_eq!(
                        v <= t,
                        col[r] as usize <= bin,
                        "v={v} t={t} max_bins={max_bins}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_feature_has_one_bin() {
        let x = Array2::from_elem((10, 2), 4.0f32);
        let m = BinnedMatrix::new(x.view(), 255).unwrap();
        assert_eq!(m.n_bins(1), 1);
        assert!(m.column(1).iter().all(|&c| c == 0));
        assert_eq!(m.n_features(), 2);
        assert_eq!(m.n_rows(), 10);
    }

    #[test]
    fn non_finite_cell_is_reported_with_position() {
        let mut x = Array2::zeros((4, 3));
        x[[2, 1]] = f32::NAN;
        x[[3, 0]] = f32::INFINITY;
        match BinnedMatrix::new(x.view(), 255) {
            Err(TrainError::NonFinite { row, column, value }) => {
                assert_eq!((row, column), (2, 1));
                assert!(value.is_nan());
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
    }
}
