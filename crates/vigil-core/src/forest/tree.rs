//! The plain, trainer-facing forest: a vector of binary trees whose nodes each carry the fraud
//! probability observed at that node. This is the interchange shape between the trainer
//! (`forest::train`), the model file (`model`) and the compiled scorer (`forest::compiled`).
//!
//! Split rule, everywhere: go left when `x[feature] <= threshold`, otherwise right. (A NaN feature
//! value therefore goes right; the feature engine never emits NaN, but the rule is total.)

use serde::{Deserialize, Serialize};

/// Marks a leaf in [`Node::feature`].
pub const LEAF: u32 = u32::MAX;

/// One node. Internal nodes have `feature != LEAF` and two children whose indices are greater
/// than their own (so a tree is acyclic by construction and can be checked in one pass).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Feature index tested here, or [`LEAF`].
    pub feature: u32,
    /// Go left when `x[feature] <= threshold`.
    pub threshold: f32,
    /// Index of the left child (unused in leaves: 0).
    pub left: u32,
    /// Index of the right child (unused in leaves: 0).
    pub right: u32,
    /// Probability of fraud among the (weighted, in-bag) training samples that reached this node.
    /// For a leaf, this is the tree's prediction; for internal nodes it is what makes the
    /// per-feature decomposition of a score (reason codes) possible.
    pub value: f32,
    /// Weighted number of training samples that reached this node.
    pub weight: f32,
}

impl Node {
    pub fn leaf(value: f32, weight: f32) -> Node {
        Node {
            feature: LEAF,
            threshold: 0.0,
            left: 0,
            right: 0,
            value,
            weight,
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.feature == LEAF
    }
}

/// A binary decision tree; `nodes[0]` is the root.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf value for one row: the reference (slow, obviously correct) traversal.
    pub fn predict(&self, x: &[f32]) -> f32 {
        let mut i = 0usize;
        loop {
            let n = &self.nodes[i];
            if n.is_leaf() {
                return n.value;
            }
            i = if x[n.feature as usize] <= n.threshold {
                n.left as usize
            } else {
                n.right as usize
            };
        }
    }

    /// Depth of the deepest leaf (a lone root leaf has depth 0).
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.nodes.len()];
        let mut max = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.is_leaf() {
                let d = depth[i] + 1;
                depth[n.left as usize] = d;
                depth[n.right as usize] = d;
                max = max.max(d);
            }
        }
        max
    }
}

/// A random forest: the score is the mean of the trees' leaf values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Forest {
    pub n_features: usize,
    pub trees: Vec<Tree>,
}

/// Why a forest is structurally unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForestError {
    #[error("forest has no trees")]
    Empty,
    #[error("tree {tree} has no nodes")]
    EmptyTree { tree: usize },
    #[error("tree {tree} node {node}: feature index {feature} out of range (model has {n_features} features)")]
    FeatureOutOfRange {
        tree: usize,
        node: usize,
        feature: u32,
        n_features: usize,
    },
    #[error("tree {tree} node {node}: child index {child} must be greater than the node's and less than {len}")]
    BadChild {
        tree: usize,
        node: usize,
        child: u32,
        len: usize,
    },
    #[error("tree {tree} node {node}: node {child} has more than one parent or is unreachable")]
    NotATree {
        tree: usize,
        node: usize,
        child: u32,
    },
    #[error("tree {tree} node {node}: threshold or value is not finite / not a probability")]
    BadNumber { tree: usize, node: usize },
    /// A size the compiled scorer's compact layout cannot represent (e.g. more than 65536
    /// features for its `u16` feature indices).
    #[error("{what} is {value}, the compiled scorer supports at most {max}")]
    TooLarge {
        what: &'static str,
        value: usize,
        max: usize,
    },
}

/// Number of partial sums in the shared summation order (see [`sum_in_lanes`]).
pub const SUM_LANES: usize = 16;

/// Sums per-tree values in the order every scorer of a forest uses: value `i` is added to
/// partial sum `i % SUM_LANES` (each starting from `-0.0`, in tree order), and the partial sums
/// are then added in lane order ([`fold_lanes`]). Sixteen independent chains instead of one
/// long one let a CPU overlap the additions (a hundred dependent float adds cost ~400 cycles),
/// and a fixed order keeps the reference, the compiled walk and the batch walk bit-identical.
pub fn sum_in_lanes(values: impl IntoIterator<Item = f32>) -> f32 {
    let mut lanes = [-0.0f32; SUM_LANES];
    for (i, v) in values.into_iter().enumerate() {
        lanes[i % SUM_LANES] += v;
    }
    fold_lanes(&lanes)
}

/// The final step of [`sum_in_lanes`]: the partial sums added in lane order from `-0.0`.
#[inline]
pub fn fold_lanes(lanes: &[f32; SUM_LANES]) -> f32 {
    lanes.iter().fold(-0.0, |acc, &v| acc + v)
}

impl Forest {
    /// Reference score for one row: mean leaf value over trees, summed in the shared order of
    /// [`sum_in_lanes`] (every scorer sums the same way, so scores agree to the bit).
    pub fn predict(&self, x: &[f32]) -> f32 {
        let sum = sum_in_lanes(self.trees.iter().map(|t| t.predict(x)));
        sum / self.trees.len().max(1) as f32
    }

    /// Checks every structural invariant the compiled scorer relies on, so a corrupted or
    /// hand-edited model can never make scoring index out of bounds or loop.
    pub fn validate(&self) -> Result<(), ForestError> {
        if self.trees.is_empty() {
            return Err(ForestError::Empty);
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let len = tree.nodes.len();
            if len == 0 {
                return Err(ForestError::EmptyTree { tree: t });
            }
            let mut parents = vec![0u8; len];
            for (i, n) in tree.nodes.iter().enumerate() {
                if !((0.0..=1.0).contains(&n.value) && n.weight.is_finite()) {
                    return Err(ForestError::BadNumber { tree: t, node: i });
                }
                if n.is_leaf() {
                    continue;
                }
                if n.feature as usize >= self.n_features {
                    return Err(ForestError::FeatureOutOfRange {
                        tree: t,
                        node: i,
                        feature: n.feature,
                        n_features: self.n_features,
                    });
                }
                if !n.threshold.is_finite() && n.threshold != f32::INFINITY {
                    return Err(ForestError::BadNumber { tree: t, node: i });
                }
                for child in [n.left, n.right] {
                    if child as usize <= i || child as usize >= len {
                        return Err(ForestError::BadChild {
                            tree: t,
                            node: i,
                            child,
                            len,
                        });
                    }
                    parents[child as usize] += 1;
                    if parents[child as usize] > 1 {
                        return Err(ForestError::NotATree {
                            tree: t,
                            node: i,
                            child,
                        });
                    }
                }
            }
            if let Some(orphan) = parents.iter().skip(1).position(|&p| p == 0) {
                return Err(ForestError::NotATree {
                    tree: t,
                    node: 0,
                    child: (orphan + 1) as u32,
                });
            }
        }
        Ok(())
    }

    /// Deepest tree.
    pub fn max_depth(&self) -> usize {
        self.trees.iter().map(Tree::depth).max().unwrap_or(0)
    }

    /// Total node count.
    pub fn n_nodes(&self) -> usize {
        self.trees.iter().map(|t| t.nodes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn stump(feature: u32, threshold: f32, l: f32, r: f32) -> Tree {
        Tree {
            nodes: vec![
                Node {
                    feature,
                    threshold,
                    left: 1,
                    right: 2,
                    value: (l + r) / 2.0,
                    weight: 2.0,
                },
                Node::leaf(l, 1.0),
                Node::leaf(r, 1.0),
            ],
        }
    }

    #[test]
    fn predict_and_validate() {
        let f = Forest {
            n_features: 2,
            trees: vec![stump(0, 1.0, 0.0, 1.0), stump(1, 5.0, 0.2, 0.4)],
        };
        f.validate().unwrap();
        assert!((f.predict(&[0.5, 9.0]) - 0.2).abs() < 1e-6);
        assert_eq!(f.max_depth(), 1);
        let mut bad = f.clone();
        bad.trees[0].nodes[0].left = 0;
        assert!(matches!(bad.validate(), Err(ForestError::BadChild { .. })));
        let mut bad = f.clone();
        bad.trees[1].nodes[0].feature = 7;
        assert!(bad.validate().is_err());
    }
}
