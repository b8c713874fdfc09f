//! The histogram-based random-forest trainer.
//!
//! A classic random forest for the binary fraud label: every tree is grown on its own bootstrap
//! sample, choosing at every node the best weighted-Gini cut among a fresh random subset of the
//! features. What makes it fast is that the matrix is quantile-binned once (module `binning`):
//! nodes are split from small per-bin count histograms instead of sorted values (module `grow`).
//!
//! The result is a plain [`Forest`] whose nodes carry the weighted fraud probability and weight
//! of the training samples reaching them, so a score is a probability (mean of leaf
//! probabilities, not a vote) and can be decomposed per feature for reason codes.
//!
//! Determinism: tree `i` draws from ChaCha8 stream `i` of the seed, and histograms hold integer
//! counts, so a fixed seed yields the identical forest whatever the number of threads.
//!
//! Two entry points: [`fit_forest`] for the CLI (with a progress callback), and linfa's
//! [`Fit`] on [`RandomForestValidParams`] / [`RandomForestParams`] producing a
//! [`RandomForestClassifier`].

mod binning;
mod grow;
mod params;

use std::sync::atomic::{AtomicUsize, Ordering};

use linfa::dataset::AsSingleTargets;
use linfa::traits::{Fit, PredictInplace};
use linfa::DatasetBase;
use ndarray::{Array1, ArrayBase, ArrayView2, Data, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::forest::Forest;
use binning::BinnedMatrix;
use grow::{grow_tree, TreeConfig};

pub use params::{
    ClassWeight, Hyperparameters, MaxFeatures, ParamError, RandomForestParams,
    RandomForestValidParams,
};

/// Why a forest could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error("training matrix has no rows")]
    NoRows,
    #[error("training matrix has no feature columns")]
    NoFeatures,
    #[error("training matrix has {rows} rows but {labels} labels were given")]
    LabelCount { rows: usize, labels: usize },
    #[error("training matrix has {rows} rows; at most 2^31 - 1 are supported")]
    TooManyRows { rows: usize },
    #[error("max_features asks for {requested} features but the matrix has only {n_features}")]
    TooManyFeatures { requested: usize, n_features: usize },
    #[error("feature value at row {row}, column {column} is {value}; features must be finite")]
    NonFinite {
        row: usize,
        column: usize,
        value: f32,
    },
    #[error("matrix has {got} feature columns but the forest expects {expected}")]
    FeatureCount { expected: usize, got: usize },
    #[error(transparent)]
    Linfa(#[from] linfa::Error),
}

/// Trains a forest on `x` (one row per sample, `f32` features, all finite) and labels `y`
/// (`true` = fraud), calling `progress(trees_done)` after each tree.
///
/// Trees are grown in parallel on the current rayon pool, so `progress` may be called from
/// several threads at once and its counts may arrive slightly out of order; the last call
/// reports `n_trees`.
pub fn fit_forest(
    params: &RandomForestValidParams,
    x: ArrayView2<'_, f32>,
    y: &[bool],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Forest, TrainError> {
    let (n_rows, n_features) = x.dim();
    if y.len() != n_rows {
        return Err(TrainError::LabelCount {
            rows: n_rows,
            labels: y.len(),
        });
    }
    if n_rows == 0 {
        return Err(TrainError::NoRows);
    }
    if n_features == 0 {
        return Err(TrainError::NoFeatures);
    }
    // Samples pack (draw count << 1 | label) into a u32, and draws never exceed the row count.
    if n_rows > (u32::MAX >> 1) as usize {
        return Err(TrainError::TooManyRows { rows: n_rows });
    }
    if let MaxFeatures::Count(k) = params.max_features() {
        if k > n_features {
            return Err(TrainError::TooManyFeatures {
                requested: k,
                n_features,
            });
        }
    }

    let data = BinnedMatrix::new(x, params.max_bins())?;
    let cfg = tree_config(params, y, n_features);
    let done = AtomicUsize::new(0);
    let trees = (0..params.n_trees())
        .into_par_iter()
        .map(|index| {
            let mut rng = ChaCha8Rng::seed_from_u64(params.seed());
            rng.set_stream(index as u64);
            let tree = grow_tree(&data, y, &cfg, &mut rng);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            tree
        })
        .collect();
    Ok(Forest { n_features, trees })
}

fn tree_config(params: &RandomForestValidParams, y: &[bool], n_features: usize) -> TreeConfig {
    let n = y.len();
    let class_weight = match params.class_weight() {
        ClassWeight::None => [1.0, 1.0],
        ClassWeight::Positive(w) => [1.0, f64::from(w)],
        ClassWeight::Balanced => {
            let pos = y.iter().filter(|&&v| v).count();
            // A class absent from the data never reaches a histogram; any weight will do.
            let w = |count: usize| {
                if count == 0 {
                    1.0
                } else {
                    n as f64 / (2.0 * count as f64)
                }
            };
            [w(n - pos), w(pos)]
        }
    };
    let clamp_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    TreeConfig {
        n_draw: ((f64::from(params.bootstrap_fraction()) * n as f64).round() as usize).max(1),
        n_candidates: params.max_features().resolve(n_features),
        max_depth: params.max_depth().unwrap_or(usize::MAX),
        min_samples_leaf: clamp_u32(params.min_samples_leaf()),
        min_samples_split: clamp_u32(params.min_samples_split()),
        class_weight,
    }
}

/// Mean decrease in (weighted Gini) impurity per feature, normalised to sum to 1 (all zeros if
/// no tree has a split).
///
/// Computed from the stored node values and weights alone, so it works on any forest, also one
/// loaded from a model file: for two classes a node's Gini impurity is `2 p (1 - p)`. As in
/// scikit-learn, each tree's importances are normalised before averaging, so every tree has an
/// equal say.
pub fn feature_importances(forest: &Forest) -> Vec<f32> {
    let gini = |p: f64| 2.0 * p * (1.0 - p);
    let mut total = vec![0.0f64; forest.n_features];
    let mut per_tree = vec![0.0f64; forest.n_features];
    for tree in &forest.trees {
        per_tree.fill(0.0);
        for node in tree.nodes.iter().filter(|n| !n.is_leaf()) {
            let (Some(l), Some(r), Some(slot)) = (
                tree.nodes.get(node.left as usize),
                tree.nodes.get(node.right as usize),
                per_tree.get_mut(node.feature as usize),
            ) else {
                continue; // structurally broken node: `Forest::validate` reports those
            };
            let impurity = |n: &crate::forest::Node| f64::from(n.weight) * gini(f64::from(n.value));
            *slot += (impurity(node) - impurity(l) - impurity(r)).max(0.0);
        }
        let sum: f64 = per_tree.iter().sum();
        if sum > 0.0 {
            for (t, p) in total.iter_mut().zip(&per_tree) {
                *t += p / sum;
            }
        }
    }
    let sum: f64 = total.iter().sum();
    total
        .iter()
        .map(|&t| if sum > 0.0 { (t / sum) as f32 } else { 0.0 })
        .collect()
}

/// A trained forest behind linfa's traits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomForestClassifier {
    forest: Forest,
}

impl RandomForestClassifier {
    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    pub fn into_forest(self) -> Forest {
        self.forest
    }

    /// See [`feature_importances`].
    pub fn feature_importances(&self) -> Vec<f32> {
        feature_importances(&self.forest)
    }

    /// Fraud probabilities for the rows of `x`, checking the column count (the
    /// [`PredictInplace`] impl cannot return an error and panics instead).
    pub fn predict_proba<D: Data<Elem = f32>>(
        &self,
        x: &ArrayBase<D, Ix2>,
    ) -> Result<Array1<f32>, TrainError> {
        if x.ncols() != self.forest.n_features {
            return Err(TrainError::FeatureCount {
                expected: self.forest.n_features,
                got: x.ncols(),
            });
        }
        let mut y = Array1::zeros(x.nrows());
        self.fill_predictions(x, &mut y);
        Ok(y)
    }

    fn fill_predictions<D: Data<Elem = f32>>(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f32>) {
        let mut buf = Vec::with_capacity(x.ncols());
        for (row, out) in x.rows().into_iter().zip(y.iter_mut()) {
            *out = match row.as_slice() {
                Some(slice) => self.forest.predict(slice),
                None => {
                    buf.clear();
                    buf.extend(row.iter().copied());
                    self.forest.predict(&buf)
                }
            };
        }
    }
}

impl From<RandomForestClassifier> for Forest {
    fn from(c: RandomForestClassifier) -> Forest {
        c.forest
    }
}

impl<D: Data<Elem = f32>> PredictInplace<ArrayBase<D, Ix2>, Array1<f32>>
    for RandomForestClassifier
{
    /// Writes the fraud probability of each row of `x` into `y`.
    ///
    /// # Panics
    /// Like linfa's own models, if `y.len() != x.nrows()` or `x` has fewer columns than the
    /// forest was trained on; use [`RandomForestClassifier::predict_proba`] to get an error.
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f32>) {
        assert_eq!(x.nrows(), y.len(), "one output per row of x is needed");
        assert!(
            x.ncols() >= self.forest.n_features,
            "x has {} columns, the forest needs {}",
            x.ncols(),
            self.forest.n_features
        );
        self.fill_predictions(x, y);
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f32> {
        Array1::zeros(x.nrows())
    }
}

impl<D, T> Fit<ArrayBase<D, Ix2>, T, TrainError> for RandomForestValidParams
where
    D: Data<Elem = f32>,
    T: AsSingleTargets<Elem = bool>,
{
    type Object = RandomForestClassifier;

    /// Trains on the dataset's records and single boolean targets (`true` = fraud).
    fn fit(
        &self,
        dataset: &DatasetBase<ArrayBase<D, Ix2>, T>,
    ) -> Result<RandomForestClassifier, TrainError> {
        let targets = dataset.as_single_targets();
        // Targets may be a strided view; the trainer wants a plain slice.
        let y: Vec<bool> = targets.iter().copied().collect();
        let forest = fit_forest(self, dataset.records.view(), &y, &|_| {})?;
        Ok(RandomForestClassifier { forest })
    }
}
