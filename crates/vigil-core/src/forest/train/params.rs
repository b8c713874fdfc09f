//! Hyperparameters of the random-forest trainer, in the linfa style: an unchecked builder
//! ([`RandomForestParams`]) that turns into checked parameters ([`RandomForestValidParams`]) only
//! through [`ParamGuard`], so the trainer never sees an invalid configuration.
//!
//! Both types (de)serialise through the same flat field set, because the parameters are stored in
//! the model file; deserialising the *valid* type re-runs validation, so a hand-edited model file
//! cannot smuggle in, say, `max_bins = 0`.

use linfa::ParamGuard;
use serde::{Deserialize, Serialize};

/// How many features are drawn (without replacement) as split candidates at every node.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxFeatures {
    /// `round(sqrt(n_features))`, the usual classification default.
    #[default]
    Sqrt,
    /// `round(log2(n_features))`.
    Log2,
    /// Every feature at every split (bagged trees, no feature randomisation).
    All,
    /// Exactly this many features (must not exceed the number of columns).
    Count(usize),
    /// This fraction of the features, in `(0, 1]`, rounded, at least one.
    Fraction(f32),
}

impl MaxFeatures {
    /// Number of split candidates for a matrix with `n_features` columns: always in
    /// `1..=n_features` (a `Count` larger than `n_features` is rejected before training).
    pub fn resolve(&self, n_features: usize) -> usize {
        let n = n_features as f64;
        let k = match *self {
            MaxFeatures::Sqrt => n.sqrt().round() as usize,
            MaxFeatures::Log2 => n.log2().round() as usize,
            MaxFeatures::All => n_features,
            MaxFeatures::Count(k) => k,
            MaxFeatures::Fraction(f) => (f64::from(f) * n).round() as usize,
        };
        k.clamp(1, n_features.max(1))
    }
}

/// Reweighting of the two classes in the impurity and in the node probabilities.
///
/// Fraud is rare (well under 1 % of transactions), so an unweighted Gini split happily ignores
/// it; weighting the positive class makes the trees spend their depth on separating it. The
/// weights also enter the stored node values, so with weighting a score is P(fraud) under the
/// reweighted class prior (the ranking, hence AUC, is what the thresholds are tuned on).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every sample weighs 1.
    #[default]
    None,
    /// Each class weighs `n_rows / (2 * n_rows_of_class)` over the whole training set, so both
    /// classes carry the same total weight (scikit-learn's `"balanced"`).
    Balanced,
    /// Fraud samples weigh this much (finite, > 0), legitimate ones 1.
    Positive(f32),
}

/// The flat field set shared by both parameter types for serde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyperparameters {
    /// Number of trees.
    pub n_trees: usize,
    /// Maximum depth (root = depth 0); `None` grows until the other limits stop it.
    pub max_depth: Option<usize>,
    /// Minimum bootstrap draws in each child of a split.
    pub min_samples_leaf: usize,
    /// Minimum bootstrap draws in a node for it to be split at all.
    pub min_samples_split: usize,
    /// Split candidates drawn afresh at every node.
    pub max_features: MaxFeatures,
    /// Bootstrap sample size as a fraction of the rows, in `(0, 1]`, drawn with replacement.
    pub bootstrap_fraction: f32,
    /// Class reweighting.
    pub class_weight: ClassWeight,
    /// Maximum number of quantile bins per feature, in `2..=255`.
    pub max_bins: usize,
    /// Master seed: tree `i` uses ChaCha8 stream `i` of this seed.
    pub seed: u64,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            n_trees: 100,
            max_depth: Some(12),
            min_samples_leaf: 1,
            min_samples_split: 2,
            max_features: MaxFeatures::Sqrt,
            bootstrap_fraction: 1.0,
            class_weight: ClassWeight::None,
            max_bins: 255,
            seed: 0,
        }
    }
}

/// An invalid hyperparameter, with the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("n_trees must be at least 1, got {0}")]
    NoTrees(usize),
    #[error("max_depth must be at least 1, got {0}")]
    MaxDepth(usize),
    #[error("min_samples_leaf must be at least 1, got {0}")]
    MinSamplesLeaf(usize),
    #[error("min_samples_split must be at least 2, got {0}")]
    MinSamplesSplit(usize),
    #[error("max_features count must be at least 1, got {0}")]
    MaxFeaturesCount(usize),
    #[error("max_features fraction must be in (0, 1], got {0}")]
    MaxFeaturesFraction(f32),
    #[error("bootstrap_fraction must be in (0, 1], got {0}")]
    BootstrapFraction(f32),
    #[error("class_weight positive weight must be finite and > 0, got {0}")]
    PositiveWeight(f32),
    #[error("max_bins must be in 2..=255, got {0}")]
    MaxBins(usize),
}

impl Hyperparameters {
    fn validate(&self) -> Result<(), ParamError> {
        if self.n_trees == 0 {
            return Err(ParamError::NoTrees(self.n_trees));
        }
        if let Some(d) = self.max_depth.filter(|&d| d == 0) {
            return Err(ParamError::MaxDepth(d));
        }
        if self.min_samples_leaf == 0 {
            return Err(ParamError::MinSamplesLeaf(self.min_samples_leaf));
        }
        if self.min_samples_split < 2 {
            return Err(ParamError::MinSamplesSplit(self.min_samples_split));
        }
        match self.max_features {
            MaxFeatures::Count(0) => return Err(ParamError::MaxFeaturesCount(0)),
            // Written as a negated range test so that NaN is rejected too.
            MaxFeatures::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(ParamError::MaxFeaturesFraction(f))
            }
            _ => {}
        }
        let b = self.bootstrap_fraction;
        if !(b > 0.0 && b <= 1.0) {
            return Err(ParamError::BootstrapFraction(b));
        }
        if let ClassWeight::Positive(w) = self.class_weight {
            if !(w.is_finite() && w > 0.0) {
                return Err(ParamError::PositiveWeight(w));
            }
        }
        if !(2..=255).contains(&self.max_bins) {
            return Err(ParamError::MaxBins(self.max_bins));
        }
        Ok(())
    }
}

/// Checked hyperparameters: only obtainable through [`ParamGuard`] (or by deserialising, which
/// validates), so the trainer can rely on every invariant listed in [`ParamError`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "Hyperparameters", into = "Hyperparameters")]
pub struct RandomForestValidParams(Hyperparameters);

impl RandomForestValidParams {
    pub fn n_trees(&self) -> usize {
        self.0.n_trees
    }
    pub fn max_depth(&self) -> Option<usize> {
        self.0.max_depth
    }
    pub fn min_samples_leaf(&self) -> usize {
        self.0.min_samples_leaf
    }
    pub fn min_samples_split(&self) -> usize {
        self.0.min_samples_split
    }
    pub fn max_features(&self) -> MaxFeatures {
        self.0.max_features
    }
    pub fn bootstrap_fraction(&self) -> f32 {
        self.0.bootstrap_fraction
    }
    pub fn class_weight(&self) -> ClassWeight {
        self.0.class_weight
    }
    pub fn max_bins(&self) -> usize {
        self.0.max_bins
    }
    pub fn seed(&self) -> u64 {
        self.0.seed
    }
    /// All values as the plain serialisable struct.
    pub fn hyperparameters(&self) -> &Hyperparameters {
        &self.0
    }
}

impl TryFrom<Hyperparameters> for RandomForestValidParams {
    type Error = ParamError;
    fn try_from(h: Hyperparameters) -> Result<Self, ParamError> {
        h.validate()?;
        Ok(RandomForestValidParams(h))
    }
}

impl From<RandomForestValidParams> for Hyperparameters {
    fn from(p: RandomForestValidParams) -> Self {
        p.0
    }
}

/// Unchecked hyperparameters with chainable setters; defaults: 100 trees, depth 12,
/// `min_samples_leaf` 1, `min_samples_split` 2, sqrt features, full bootstrap, no class
/// weighting, 255 bins, seed 0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "Hyperparameters", into = "Hyperparameters")]
pub struct RandomForestParams(RandomForestValidParams);

impl RandomForestParams {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn n_trees(mut self, n: usize) -> Self {
        self.0 .0.n_trees = n;
        self
    }
    pub fn max_depth(mut self, depth: Option<usize>) -> Self {
        self.0 .0.max_depth = depth;
        self
    }
    pub fn min_samples_leaf(mut self, n: usize) -> Self {
        self.0 .0.min_samples_leaf = n;
        self
    }
    pub fn min_samples_split(mut self, n: usize) -> Self {
        self.0 .0.min_samples_split = n;
        self
    }
    pub fn max_features(mut self, m: MaxFeatures) -> Self {
        self.0 .0.max_features = m;
        self
    }
    pub fn bootstrap_fraction(mut self, f: f32) -> Self {
        self.0 .0.bootstrap_fraction = f;
        self
    }
    pub fn class_weight(mut self, w: ClassWeight) -> Self {
        self.0 .0.class_weight = w;
        self
    }
    pub fn max_bins(mut self, n: usize) -> Self {
        self.0 .0.max_bins = n;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.0 .0.seed = seed;
        self
    }
}

impl From<Hyperparameters> for RandomForestParams {
    fn from(h: Hyperparameters) -> Self {
        RandomForestParams(RandomForestValidParams(h))
    }
}

impl From<RandomForestParams> for Hyperparameters {
    fn from(p: RandomForestParams) -> Self {
        p.0 .0
    }
}

impl ParamGuard for RandomForestParams {
    type Checked = RandomForestValidParams;
    type Error = ParamError;

    fn check_ref(&self) -> Result<&RandomForestValidParams, ParamError> {
        // The unchecked type wraps the checked one (linfa's pattern), so once the values pass
        // validation the inner value can be handed out as is.
        self.0 .0.validate()?;
        Ok(&self.0)
    }

    fn check(self) -> Result<RandomForestValidParams, ParamError> {
        self.0 .0.validate()?;
        Ok(self.0)
    }
}
