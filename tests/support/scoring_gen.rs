//! Synthetic but realistic forests and feature rows for the scoring tests and the `scoring`
//! benchmark (the tests through `tests/support`, the bench with `#[path]`), built without the
//! trainer.
//!
//! How the forests are made realistic:
//! - Rows mimic the feature engine's output: heavy-tailed amounts (log-normal), small counts
//!   (Poisson), ratios in [0, 1], 0/1 flags, hours of day, distances (exponential). Many features
//!   are discrete, so many rows sit exactly on a threshold.
//! - Labels come from a logistic model of a few features, so node values vary like real P(fraud).
//! - Each tree is grown on a bootstrap sample of the rows: at every node a random feature is
//!   chosen and the threshold is that feature's value in a random row reaching the node (so
//!   thresholds follow the feature distributions and every split actually separates rows). A
//!   node becomes a leaf at `max_depth`, below `min_split` rows, or when the chosen feature is
//!   constant on its rows
//!   (after 8 tries). Random-quantile splits give unbalanced trees like real ones; with 4096
//!   bootstrap rows, depth 12 and `min_split` 6 trees have ~1-2k nodes.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal, Poisson};
use vigil::forest::{Forest, Node, Tree};

/// `n` rows of `n_features` values, row-major.
pub fn feature_rows(seed: u64, n: usize, n_features: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let amount = LogNormal::new(3.5, 1.2).expect("valid log-normal");
    let count = Poisson::new(2.5).expect("valid poisson");
    let distance = Exp::new(0.02).expect("valid exponential");
    let mut out = Vec::with_capacity(n * n_features);
    for _ in 0..n {
        for f in 0..n_features {
            let v: f64 = match f % 6 {
                0 => amount.sample(&mut rng),
                1 => count.sample(&mut rng),
                2 => rng.gen::<f64>(),
                3 => f64::from(rng.gen_bool(0.1) as u8),
                4 => rng.gen_range(0..24) as f64,
                _ => distance.sample(&mut rng),
            };
            out.push(v as f32);
        }
    }
    out
}

/// Synthetic fraud labels: a logistic function of a few features plus noise.
pub fn labels(seed: u64, rows: &[f32], n_features: usize) -> Vec<bool> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rows.chunks_exact(n_features)
        .map(|x| {
            let get = |f: usize| x.get(f).copied().unwrap_or(0.0);
            let z = -3.0 + 0.4 * get(0).max(1.0).ln() + 0.5 * get(1) + 1.5 * get(3) - 0.02 * get(5);
            rng.gen::<f32>() < 1.0 / (1.0 + (-z).exp())
        })
        .collect()
}

/// A forest grown by random splits on bootstrap samples of `rows` (see the module docs).
pub fn random_forest(
    seed: u64,
    rows: &[f32],
    n_features: usize,
    n_trees: usize,
    max_depth: usize,
    min_split: usize,
) -> Forest {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let y = labels(seed ^ 0x5eed, rows, n_features);
    let n = y.len();
    let trees = (0..n_trees)
        .map(|_| {
            let sample: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
            grow(&mut rng, rows, &y, n_features, sample, max_depth, min_split)
        })
        .collect();
    Forest { n_features, trees }
}

fn grow(
    rng: &mut ChaCha8Rng,
    rows: &[f32],
    y: &[bool],
    n_features: usize,
    sample: Vec<usize>,
    max_depth: usize,
    min_split: usize,
) -> Tree {
    let value = |s: &[usize]| {
        let pos = s.iter().filter(|&&r| y[r]).count();
        // Laplace-smoothed so leaves are not all exactly 0.
        (pos as f32 + 0.05) / (s.len() as f32 + 0.1)
    };
    let mut nodes = vec![Node::leaf(value(&sample), sample.len() as f32)];
    // Breadth-first growth keeps children at larger indices than parents.
    let mut queue = std::collections::VecDeque::from([(0usize, sample, 0usize)]);
    while let Some((at, s, depth)) = queue.pop_front() {
        if depth >= max_depth || s.len() < min_split {
            continue;
        }
        // Like a trainer, try a few candidate splits and keep the first that separates rows.
        let split = (0..8).find_map(|_| {
            let feature = rng.gen_range(0..n_features);
            let threshold = rows[s[rng.gen_range(0..s.len())] * n_features + feature];
            let (l, r): (Vec<usize>, Vec<usize>) = s
                .iter()
                .partition(|&&i| rows[i * n_features + feature] <= threshold);
            (!l.is_empty() && !r.is_empty()).then_some((feature, threshold, l, r))
        });
        let Some((feature, threshold, l, r)) = split else {
            continue;
        };
        let left = nodes.len() as u32;
        nodes.push(Node::leaf(value(&l), l.len() as f32));
        nodes.push(Node::leaf(value(&r), r.len() as f32));
        let n = &mut nodes[at];
        n.feature = feature as u32;
        n.threshold = threshold;
        n.left = left;
        n.right = left + 1;
        queue.push_back((left as usize, l, depth + 1));
        queue.push_back((left as usize + 1, r, depth + 1));
    }
    Tree { nodes }
}
