//! How a validated [`Forest`] is packed for the walk: 8-byte nodes whose one word holds both
//! the left child and the split feature ([`Packing`]), and groups of [`GROUP`] trees laid out
//! breadth-first in shared arrays ([`Group`]). See the [module documentation](super) for why.
//!
//! Everything the walks index without bounds checks is established here, once: roots and every
//! `left`/`left + 1` of an internal node index into the group arrays, a leaf steps to itself,
//! and every stored feature index is `< n_features`.

use super::avx512::vector_walk_supported;
use super::reasons::{self, DenseRows, ReasonTable};
use super::{CompiledForest, DENSE_MAX, GROUP};
use crate::forest::tree::{Forest, ForestError, Tree};

/// One node of the packed, 8-byte layout. Leaves: `threshold` NaN and `left == self - 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub(super) struct PackedNode {
    pub(super) threshold: f32,
    /// `left << feature_bits | feature`: the left child's index within the group arrays (the
    /// right child is `left + 1`) and the split feature (0 in leaves, whose step ignores it).
    pub(super) word: u32,
}

/// How [`PackedNode::word`] is split, fixed per forest: just enough low bits for the feature
/// indices, the rest for child indices.
#[derive(Debug, Clone, Copy)]
pub(super) struct Packing {
    pub(super) feature_bits: u32,
    pub(super) feature_mask: u32,
}

impl Packing {
    fn for_features(n_features: usize) -> Packing {
        // Bits to hold indices 0..n_features (0 bits when there is at most one feature).
        let feature_bits = usize::BITS - n_features.saturating_sub(1).leading_zeros();
        Packing {
            feature_bits,
            feature_mask: ((1u64 << feature_bits) - 1) as u32,
        }
    }

    /// Largest child index a word can hold.
    fn max_index(self) -> u32 {
        u32::MAX >> self.feature_bits
    }

    fn pack(self, left: u32, feature: u32) -> u32 {
        left << self.feature_bits | feature
    }

    #[inline(always)]
    pub(super) fn left(self, word: u32) -> u32 {
        word >> self.feature_bits
    }

    #[inline(always)]
    pub(super) fn feature(self, word: u32) -> usize {
        (word & self.feature_mask) as usize
    }
}

/// [`GROUP`] trees compiled into shared arrays.
#[derive(Debug, Clone)]
pub(super) struct Group {
    pub(super) nodes: Box<[PackedNode]>,
    /// Per node, its value and where its reason list or row starts, plus one sentinel entry at
    /// the end so that `values[i + 1].path_start` ends every list.
    pub(super) values: Box<[NodeValue]>,
    /// Root index per lane. Lanes past `n_trees` point at a padding leaf and are not summed.
    pub(super) roots: [u32; GROUP],
    /// How many real trees this group holds (`GROUP` except possibly in the last group).
    pub(super) n_trees: usize,
    /// Lanes actually walked: the smallest of 4, 8, 16 that covers `n_trees`.
    pub(super) lanes: usize,
    /// Max depth over the group's trees: stepping this many times reaches every leaf.
    pub(super) depth: usize,
    /// Depth of each tree (0 for padding lanes), for the tree-at-a-time batch walk.
    pub(super) depths: [usize; GROUP],
    /// How explain gets this group's contributions (see the module docs, "Reason codes").
    pub(super) reasons: ReasonTable,
}

/// What a walk needs from a node once it has reached it.
///
/// The two fields are stored together because explain needs both for every leaf reached: the
/// value line is fetched anyway for the score, so the list bounds come with it instead of from
/// a separate array (which measured as one more cache miss per tree, and a serializing one,
/// since the list's loop bounds depend on it).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub(super) struct NodeValue {
    /// P(fraud): leaf values give the score, internal values the path re-walk's reason codes.
    pub(super) value: f32,
    /// With [`ReasonTable::Lists`], the start of this node's list (lists of internal nodes are
    /// empty); with [`ReasonTable::DenseRows`], the leaf's row index in
    /// [`CompiledForest::rows`]; 0 otherwise.
    pub(super) path_start: u32,
}

impl CompiledForest {
    /// Validates the forest and compiles it. Fails on any structural problem
    /// ([`Forest::validate`]) and on sizes the compact layout cannot hold
    /// ([`ForestError::TooLarge`]: more than 65536 features, or more nodes in a group of
    /// [`GROUP`] trees than the child bits of a packed word can index, i.e. 2^26 for 64
    /// features, 2^16 for 65536).
    pub fn compile(forest: &Forest) -> Result<CompiledForest, ForestError> {
        forest.validate()?;
        const MAX_FEATURES: usize = u16::MAX as usize + 1;
        if forest.n_features > MAX_FEATURES {
            return Err(ForestError::TooLarge {
                what: "feature count",
                value: forest.n_features,
                max: MAX_FEATURES,
            });
        }
        let packing = Packing::for_features(forest.n_features);
        // The reason-code strategy is chosen here, per forest (see the module docs).
        let mut dense = DenseRows {
            width: if forest.n_features <= DENSE_MAX {
                forest.n_features.div_ceil(16).max(1) * 16
            } else {
                0
            },
            rows: Vec::new(),
        };
        let groups = forest
            .trees
            .chunks(GROUP)
            .map(|trees| compile_group(trees, packing, forest.n_features, &mut dense))
            .collect::<Result<Vec<_>, _>>()?;
        let n_trees = forest.trees.len();
        // Same summation order as the score so that explain's decomposition is anchored on
        // exactly the prior the documentation describes.
        let root_sum: f32 = forest.trees.iter().map(|t| t.nodes[0].value).sum();
        Ok(CompiledForest {
            n_features: forest.n_features,
            n_trees,
            base_rate: root_sum / n_trees as f32,
            packing,
            groups,
            vector: vector_walk_supported(),
            dense_width: dense.width,
            rows: dense.rows.into_boxed_slice(),
        })
    }
}

/// Lays out up to [`GROUP`] validated trees breadth-first in one set of arrays, then tabulates
/// their reason codes ([`reasons::tabulate`]).
///
/// Breadth-first over the whole group (all roots, then all depth-1 nodes, ...) puts the two
/// children of a node next to each other (they are pushed together) and keeps each level of all
/// the group's trees contiguous. Two slots come first: slot 0 is a filler that is never reached
/// (it only exists so that every leaf's `self - 1` is a valid index without wrapping), slot 1 is
/// the padding leaf that unused lanes of a partial group spin on.
fn compile_group(
    trees: &[Tree],
    packing: Packing,
    n_features: usize,
    dense: &mut DenseRows,
) -> Result<Group, ForestError> {
    const FIRST: usize = 2;
    let total: usize = FIRST + trees.iter().map(|t| t.nodes.len()).sum::<usize>();
    // Every stored child index is < total; leaves store self - 1, internal nodes left < total.
    let max = packing.max_index() as usize;
    if total - 1 > max {
        return Err(ForestError::TooLarge {
            what: "node count of a group of trees",
            value: total,
            max: max + 1,
        });
    }
    let leaf = |at: usize| PackedNode {
        threshold: f32::NAN,
        // `at >= 1` (the filler is never a leaf) and `at < total` fits (checked above).
        word: packing.pack((at - 1) as u32, 0),
    };
    let mut nodes = Vec::with_capacity(total);
    let mut values = Vec::with_capacity(total);
    nodes.push(PackedNode {
        threshold: f32::NAN,
        word: 0,
    });
    nodes.push(leaf(1));
    values.extend(
        [NodeValue {
            value: 0.0,
            path_start: 0,
        }; 2],
    );
    // Queue of (tree, original node index); a node's new index is FIRST + its queue position.
    let mut queue: Vec<(usize, usize)> = (0..trees.len()).map(|t| (t, 0)).collect();
    let mut head = 0;
    while head < queue.len() {
        let (t, i) = queue[head];
        let n = trees[t].nodes[i];
        if n.is_leaf() {
            nodes.push(leaf(FIRST + head));
        } else {
            nodes.push(PackedNode {
                threshold: n.threshold,
                // Fits: the left child's index is < total (checked above), and the feature is
                // < n_features (validated), which fits in the packing's feature bits.
                word: packing.pack((FIRST + queue.len()) as u32, n.feature),
            });
            queue.push((t, n.left as usize));
            queue.push((t, n.right as usize));
        }
        values.push(NodeValue {
            value: n.value,
            path_start: 0,
        });
        head += 1;
    }
    // A validated tree reaches each of its nodes exactly once.
    debug_assert_eq!(nodes.len(), total);
    let mut roots = [1; GROUP];
    let mut depths = [0; GROUP];
    for (d, tree) in depths.iter_mut().zip(trees) {
        *d = tree.depth();
    }
    for (t, root) in roots.iter_mut().enumerate().take(trees.len()) {
        // Roots are enqueued first, in tree order.
        *root = (FIRST + t) as u32;
    }
    let reasons = reasons::tabulate(trees, &queue, FIRST, n_features, &nodes, &mut values, dense);
    Ok(Group {
        nodes: nodes.into_boxed_slice(),
        values: values.into_boxed_slice(),
        roots,
        n_trees: trees.len(),
        lanes: [4, 8, GROUP]
            .into_iter()
            .find(|&w| w >= trees.len())
            .unwrap_or(GROUP),
        depth: depths.iter().copied().max().unwrap_or(0),
        depths,
        reasons,
    })
}
