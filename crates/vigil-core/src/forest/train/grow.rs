//! Growing one tree on the binned matrix: bootstrap, then depth-first splitting.
//!
//! Each node owns a contiguous range of the tree's in-bag sample list. To split it, the trainer
//! draws a fresh random subset of features, builds for each a per-bin histogram of
//! (legitimate, fraud) bootstrap counts over the node's samples, scans the bins for the best
//! weighted-Gini cut, then stably partitions the node's range so each child again owns a
//! contiguous range. Counts are integers, so the histograms (and hence the chosen splits) do not
//! depend on summation order; class weights are applied only when scoring a cut.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::binning::BinnedMatrix;
use crate::forest::{Node, Tree};

/// Per-fit settings derived from the validated parameters and the data.
#[derive(Debug, Clone)]
pub(crate) struct TreeConfig {
    /// Bootstrap draws per tree.
    pub n_draw: usize,
    /// Split candidates per node, in `1..=n_features`.
    pub n_candidates: usize,
    pub max_depth: usize,
    pub min_samples_leaf: u32,
    pub min_samples_split: u32,
    /// Weight of one draw of class `[legitimate, fraud]`.
    pub class_weight: [f64; 2],
}

/// One in-bag row: its index and, packed as `count << 1 | label`, how many times the bootstrap
/// drew it and its class. Packing keeps the hot loops on one 8-byte stream.
#[derive(Debug, Clone, Copy)]
struct Sample {
    row: u32,
    packed: u32,
}

impl Sample {
    #[inline]
    fn label(self) -> usize {
        (self.packed & 1) as usize
    }
    #[inline]
    fn count(self) -> u32 {
        self.packed >> 1
    }
}

/// Bootstrap draw counts per class, `[legitimate, fraud]`.
type Counts = [u32; 2];

/// A node waiting to be split.
struct Task {
    node: usize,
    lo: usize,
    hi: usize,
    depth: usize,
    counts: Counts,
}

/// The best cut found so far at a node.
struct Split {
    feature: usize,
    bin: usize,
    left: Counts,
}

/// Grows one tree. `rng` must be the tree's own stream so the result depends only on the seed
/// and the tree index, never on scheduling.
pub(crate) fn grow_tree(
    data: &BinnedMatrix,
    labels: &[bool],
    cfg: &TreeConfig,
    rng: &mut ChaCha8Rng,
) -> Tree {
    let n = data.n_rows();
    // Exact multinomial bootstrap: n_draw draws with replacement, kept as per-row counts.
    let mut draws = vec![0u32; n];
    for _ in 0..cfg.n_draw {
        draws[rng.gen_range(0..n)] += 1;
    }
    let mut samples: Vec<Sample> = draws
        .iter()
        .zip(labels)
        .enumerate()
        .filter(|(_, (&c, _))| c > 0)
        .map(|(row, (&c, &y))| Sample {
            // fit_forest rejects matrices with 2^31 rows or more, so neither value overflows.
            row: row as u32,
            packed: c << 1 | u32::from(y),
        })
        .collect();
    drop(draws);

    let mut root: Counts = [0, 0];
    for s in &samples {
        root[s.label()] += s.count();
    }
    let mut nodes = vec![leaf(root, cfg)];
    let mut stack = vec![Task {
        node: 0,
        lo: 0,
        hi: samples.len(),
        depth: 0,
        counts: root,
    }];
    let mut features: Vec<usize> = (0..data.n_features()).collect();
    let mut scratch: Vec<Sample> = Vec::new();

    while let Some(task) = stack.pop() {
        if !splittable(&task, cfg) {
            continue;
        }
        // A fresh partial Fisher-Yates shuffle: the first n_candidates entries are a uniform
        // random subset, drawn independently at every node.
        for i in 0..cfg.n_candidates {
            let j = rng.gen_range(i..features.len());
            features.swap(i, j);
        }
        let node_samples = &samples[task.lo..task.hi];
        let Some(split) = best_split(
            data,
            node_samples,
            &features[..cfg.n_candidates],
            task.counts,
            cfg,
        ) else {
            continue;
        };

        let mid = task.lo
            + partition(
                &mut samples[task.lo..task.hi],
                data.column(split.feature),
                split.bin,
                &mut scratch,
            );
        let right_counts = [
            task.counts[0] - split.left[0],
            task.counts[1] - split.left[1],
        ];
        let left = nodes.len();
        nodes.push(leaf(split.left, cfg));
        nodes.push(leaf(right_counts, cfg));
        let parent = &mut nodes[task.node];
        parent.feature = split.feature as u32;
        parent.threshold = data.threshold(split.feature, split.bin);
        parent.left = left as u32;
        parent.right = left as u32 + 1;

        // Right pushed first so the left subtree is grown first (plain depth-first order).
        stack.push(Task {
            node: left + 1,
            lo: mid,
            hi: task.hi,
            depth: task.depth + 1,
            counts: right_counts,
        });
        stack.push(Task {
            node: left,
            lo: task.lo,
            hi: mid,
            depth: task.depth + 1,
            counts: split.left,
        });
    }
    Tree { nodes }
}

fn splittable(task: &Task, cfg: &TreeConfig) -> bool {
    let total = task.counts[0] + task.counts[1];
    task.depth < cfg.max_depth
        && task.counts[0] > 0
        && task.counts[1] > 0
        && total >= cfg.min_samples_split
        && total >= cfg.min_samples_leaf.saturating_mul(2)
}

/// Class-weighted total and fraud share of a node's counts.
fn weighted(counts: Counts, cfg: &TreeConfig) -> (f64, f64) {
    let neg = f64::from(counts[0]) * cfg.class_weight[0];
    let pos = f64::from(counts[1]) * cfg.class_weight[1];
    (neg + pos, pos)
}

/// A leaf carrying the node's weighted fraud probability and weight (internal nodes start as
/// leaves and get their split filled in).
fn leaf(counts: Counts, cfg: &TreeConfig) -> Node {
    let (w, pos) = weighted(counts, cfg);
    let value = if w > 0.0 { (pos / w) as f32 } else { 0.0 };
    Node::leaf(value.clamp(0.0, 1.0), w as f32)
}

/// `sum_c w_c^2 / W`: the node's weight minus its weighted Gini impurity `W * (1 - sum p_c^2)`.
/// Maximising this summed over both children is minimising their total weighted impurity.
#[inline]
fn purity(counts: Counts, cfg: &TreeConfig) -> f64 {
    let neg = f64::from(counts[0]) * cfg.class_weight[0];
    let pos = f64::from(counts[1]) * cfg.class_weight[1];
    (neg * neg + pos * pos) / (neg + pos)
}

/// The best cut over the candidate features, or `None` if no cut respects `min_samples_leaf`
/// and lowers the impurity. Ties keep the earlier candidate (deterministic).
fn best_split(
    data: &BinnedMatrix,
    samples: &[Sample],
    candidates: &[usize],
    counts: Counts,
    cfg: &TreeConfig,
) -> Option<Split> {
    let parent = purity(counts, cfg);
    // Demand a gain above floating-point noise so pure-noise cuts are not taken.
    let (w, _) = weighted(counts, cfg);
    let mut best: Option<Split> = None;
    let mut best_score = parent + 1e-9 * w;
    let mut hist = [[0u32; 2]; 256];
    let min_leaf = cfg.min_samples_leaf;

    for &f in candidates {
        let n_bins = data.n_bins(f);
        if n_bins < 2 {
            continue;
        }
        build_histogram(&mut hist, n_bins, data.column(f), samples);

        let mut left: Counts = [0, 0];
        for (bin, h) in hist[..n_bins - 1].iter().enumerate() {
            if h[0] == 0 && h[1] == 0 {
                // Same partition as the previous bin; keep the lower threshold.
                continue;
            }
            left[0] += h[0];
            left[1] += h[1];
            if left[0] + left[1] < min_leaf {
                continue;
            }
            let right = [counts[0] - left[0], counts[1] - left[1]];
            if right[0] + right[1] < min_leaf {
                break;
            }
            let score = purity(left, cfg) + purity(right, cfg);
            if score > best_score {
                best_score = score;
                best = Some(Split {
                    feature: f,
                    bin,
                    left,
                });
            }
        }
    }
    best
}

/// Per-bin `[legitimate, fraud]` draw counts of one feature over a node's samples.
///
/// This is the hot loop of training (its share at depth 12 is in BENCHMARKS.md, "Figures moved from
/// code comments (vigil-core)"). The histogram has a fixed 256 slots so a `u8` code can index it
/// without a bounds check; only the slots of real bins are cleared.
#[inline]
fn build_histogram(hist: &mut [Counts; 256], n_bins: usize, column: &[u8], samples: &[Sample]) {
    hist[..n_bins].fill([0, 0]);
    for s in samples {
        let bin = column[s.row as usize];
        hist[usize::from(bin)][s.label()] += s.count();
    }
}

/// Stable in-place partition of `samples` into (bin <= `bin`, bin > `bin`) on `column`;
/// returns the size of the first part. Stability keeps each range sorted by row, which keeps
/// the histogram loop's column reads moving forward through memory.
fn partition(
    samples: &mut [Sample],
    column: &[u8],
    bin: usize,
    scratch: &mut Vec<Sample>,
) -> usize {
    scratch.clear();
    let mut left = 0;
    for i in 0..samples.len() {
        let s = samples[i];
        if usize::from(column[s.row as usize]) <= bin {
            samples[left] = s;
            left += 1;
        } else {
            scratch.push(s);
        }
    }
    samples[left..].copy_from_slice(scratch);
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(row: u32, count: u32, fraud: bool) -> Sample {
        Sample {
            row,
            packed: count << 1 | u32::from(fraud),
        }
    }

    #[test]
    fn partition_is_stable_and_splits_on_bin() {
        let column = [3u8, 0, 2, 1, 3, 0];
        let mut samples: Vec<Sample> = (0..6).map(|r| sample(r, 1, r % 2 == 0)).collect();
        let mut scratch = Vec::new();
        let left = partition(&mut samples, &column, 1, &mut scratch);
        let rows: Vec<u32> = samples.iter().map(|s| s.row).collect();
        assert_eq!(left, 3);
        assert_eq!(rows, vec![1, 3, 5, 0, 2, 4]);
    }

    #[test]
    fn histogram_counts_draws_per_class() {
        let column = [0u8, 2, 2, 1];
        let samples = [
            sample(0, 2, true),
            sample(1, 1, false),
            sample(2, 3, true),
            sample(3, 1, false),
        ];
        let mut hist = [[7u32; 2]; 256];
        build_histogram(&mut hist, 3, &column, &samples);
        assert_eq!(&hist[..3], &[[0, 2], [1, 0], [1, 3]]);
    }

    #[test]
    fn best_split_finds_the_separating_bin_and_respects_min_leaf() {
        // One feature, bins 0..4; fraud exactly in bins 3 and 4.
        let x = ndarray::Array2::from_shape_vec((5, 1), vec![0.0f32, 1.0, 2.0, 3.0, 4.0]).unwrap();
        let data = BinnedMatrix::new(x.view(), 255).unwrap();
        let samples: Vec<Sample> = (0..5).map(|r| sample(r, 1, r >= 3)).collect();
        let mut cfg = TreeConfig {
            n_draw: 5,
            n_candidates: 1,
            max_depth: 10,
            min_samples_leaf: 1,
            min_samples_split: 2,
            class_weight: [1.0, 1.0],
        };
        let split = best_split(&data, &samples, &[0], [3, 2], &cfg).unwrap();
        assert_eq!((split.feature, split.bin, split.left), (0, 2, [3, 0]));
        assert_eq!(data.threshold(0, split.bin), 2.5);
        // Each side needs 3 draws: no cut of 5 samples allows that.
        cfg.min_samples_leaf = 3;
        assert!(best_split(&data, &samples, &[0], [3, 2], &cfg).is_none());
    }
}
