//! The serving-time form of a [`Forest`]: a branch-free, interleaved tree walker plus per-feature
//! reason codes.
//!
//! # Why this layout
//!
//! Scoring one transaction means walking ~100 trees of depth ~12, i.e. ~1200 dependent
//! "load node, load feature, compare, pick child" steps. A naive walk is limited by two things:
//! the branch on `x <= threshold` is a coin flip the predictor cannot learn (one mispredict per
//! level costs more than the whole step), and each step depends on the previous one, so one tree
//! alone leaves the core idle while waiting for loads. The compiled form removes both:
//!
//! - **Branch-free steps.** The two children of a node are adjacent, so the next index is
//!   `left + !(x[feature] <= threshold)`: a compare, a flag-to-integer and an add, no jump.
//!   Writing the test as `!(x <= t)` (rather than `x > t`) keeps the reference semantics for NaN
//!   inputs exactly (NaN goes right).
//! - **Leaves are self-loops.** A leaf stores threshold NaN (so `!(x <= NaN)` is always 1) and
//!   `left = self - 1`, so stepping from a leaf lands on the leaf again. Every tree of a group can
//!   therefore be stepped the same fixed number of times (the group's own max depth) without
//!   asking "am I done?".
//! - **Interleaving.** [`GROUP`] trees are walked in lock step; their steps are independent, so
//!   the out-of-order core overlaps their load latencies (instruction-level parallelism).
//!   [`CompiledForest::score_batch`] turns this around: one tree at a time, several rows in lock
//!   step, so the tree's nodes stay in L1 while a block of rows goes through it.
//! - **Compact, level-ordered storage.** Each group has one array of 8-byte nodes: an `f32`
//!   threshold and one `u32` word holding the left child index in its high bits and the feature
//!   index in its low `feature_bits` bits (6 bits for 33-64 features). One step thus touches one
//!   node cache line (8 nodes per line) plus the row; a parallel `f32` value array is only read
//!   at the leaves. Nodes are laid out breadth-first across the whole group, so the hot top
//!   levels of all the group's trees share a few cache lines.
//!
//! Scores are bit-for-bit equal to [`Forest::predict`]: leaf values are summed in tree order
//! starting from `-0.0` (exactly what `Iterator::sum` does) and divided by the tree count.
//!
//! # Reason codes
//!
//! [`CompiledForest::explain`] is the Saabas / path decomposition: walking a tree, the change in
//! node value from parent to child is attributed to the parent's split feature. Per tree the
//! changes telescope from the root value to the leaf value, so averaged over trees
//! `base_rate + sum(contributions) == score` (up to float rounding).
//!
//! A tree's contribution depends only on which leaf the row reaches, so it is precomputed at
//! compile time: every leaf stores the sum of the deltas along its root-to-leaf path, merged by
//! feature, as a short list of `(u16 feature, f32 delta)` pairs (6 bytes each, one flat array per
//! group plus a per-node start offset). `explain` is then the same lock-step walk as `score`
//! followed by adding each reached leaf's list (~10 pairs at depth 12) into the output, instead
//! of re-walking every path with a read-modify-write per level. The lists are computed in `f64`
//! from the node values, so they are at least as accurate as the walk they replace.
//!
//! Measured on the 100-tree, depth-12, 36-feature bench model (`benches/scoring.rs`, loaded
//! 2-core machine, one run): explain p50 4.9 us against 9.3 us for the path re-walk and 2.2 us
//! for `score`. With one row repeated (everything cached) explain costs score + ~0.9 us, so most
//! of the remaining gap is cache misses on the tables: 4.6 MB for that model (65 B per leaf:
//! ~9.5 six-byte pairs plus the 4-byte list start of every node), against 1.7 MB for the walk.
//!
//! The tables cost memory proportional to `leaves x distinct features per path`; for
//! pathological trees (very deep, many features) that product explodes, so a group whose table
//! would exceed [`PATH_ENTRIES_PER_NODE`] pairs per node keeps no table and is explained by
//! re-walking its paths ([`CompiledForest::explain_by_walk`], also the tests' oracle).
//!
//! # Safety
//!
//! The hot loops index without bounds checks. That is sound because of invariants established
//! once in [`CompiledForest::compile`] (after [`Forest::validate`]) and never changed afterwards
//! (all fields are private and immutable): every index reachable by the step rule is inside the
//! group arrays, and every stored feature index is `< n_features`. Entry points check the row
//! length against `n_features` before walking.

use std::ops::Range;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::tree::{fold_lanes, Forest, ForestError, Tree, SUM_LANES};

/// Number of trees walked in lock step. Measured on the 100-tree, depth-12 benchmark model:
/// 16 chains beat 8 by ~30% (more loads in flight to hide L2 latency, even though some indices
/// spill to the stack) and 32 lose again. A final partial group is walked with only 4 or 8
/// lanes so it does not pay for 16.
pub const GROUP: usize = 16;

/// Rows walked in lock step by [`CompiledForest::score_batch`] (which goes tree by tree).
const BATCH_LANES: usize = 8;

/// Budget for a group's precomputed reason table, in `(feature, delta)` pairs per node of the
/// group. Realistic trees need far less (depth 12 on 36 features: ~5 pairs per node, since about
/// half the nodes are leaves with ~10 distinct features on their path); the cap only stops
/// degenerate deep trees from costing O(leaves x depth) memory (see the module docs).
pub const PATH_ENTRIES_PER_NODE: usize = 16;

/// One node of the packed, 8-byte layout. Leaves: `threshold` NaN and `left == self - 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct PackedNode {
    threshold: f32,
    /// `left << feature_bits | feature`: the left child's index within the group arrays (the
    /// right child is `left + 1`) and the split feature (0 in leaves, whose step ignores it).
    word: u32,
}

/// How [`PackedNode::word`] is split, fixed per forest: just enough low bits for the feature
/// indices, the rest for child indices.
#[derive(Debug, Clone, Copy)]
struct Packing {
    feature_bits: u32,
    feature_mask: u32,
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
    fn left(self, word: u32) -> u32 {
        word >> self.feature_bits
    }

    #[inline(always)]
    fn feature(self, word: u32) -> usize {
        (word & self.feature_mask) as usize
    }
}

/// [`GROUP`] trees compiled into shared arrays.
#[derive(Debug, Clone)]
struct Group {
    nodes: Box<[PackedNode]>,
    /// Per node, its value and where its reason list starts, plus one sentinel entry at the end
    /// so that `values[i + 1].path_start` ends every list.
    values: Box<[NodeValue]>,
    /// Root index per lane. Lanes past `n_trees` point at a padding leaf and are not summed.
    roots: [u32; GROUP],
    /// How many real trees this group holds (`GROUP` except possibly in the last group).
    n_trees: usize,
    /// Lanes actually walked: the smallest of 4, 8, 16 that covers `n_trees`.
    lanes: usize,
    /// Max depth over the group's trees: stepping this many times reaches every leaf.
    depth: usize,
    /// Depth of each tree (0 for padding lanes), for the tree-at-a-time batch walk.
    depths: [usize; GROUP],
    /// Precomputed per-leaf reason lists (see [`NodeValue`]); `None` when over the size budget
    /// or when the forest uses dense rows instead.
    steps: Option<Box<[PathStep]>>,
    /// Whether the group's leaves have dense contribution rows in [`CompiledForest::rows`]
    /// (leaf `i`'s row is `values[i].path_start`).
    dense: bool,
}

/// Most features for which reason codes use dense per-leaf rows (one `f32` per feature, padded
/// to a multiple of 16) instead of sparse lists. A row costs 4 bytes per feature per leaf (about
/// three times a list at depth 12 and 43 features), but is added with a few vector instructions
/// instead of ~13 scattered read-modify-writes per tree: measured on the shipped model, score +
/// reasons went from ~1.95 us to ~1.1 us.
pub const DENSE_MAX: usize = 128;

/// What a walk needs from a node once it has reached it.
///
/// The two fields are stored together because explain needs both for every leaf reached: the
/// value line is fetched anyway for the score, so the list bounds come with it instead of from
/// a separate array (which measured as one more cache miss per tree, and a serializing one,
/// since the list's loop bounds depend on it).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct NodeValue {
    /// P(fraud): leaf values give the score, internal values the path re-walk's reason codes.
    value: f32,
    /// Start of this node's list in [`Group::steps`] (lists of internal nodes are empty), or,
    /// with dense rows, the leaf's row index in [`CompiledForest::rows`].
    path_start: u32,
}

/// One precomputed reason contribution: `delta` is the sum, over the splits on `feature` along a
/// root-to-leaf path, of the value change from the split node to its child on the path.
///
/// Packed to 6 bytes (from 8): the tables are read once per tree per explained row, from all
/// over memory, so their size is what costs. Fields are only ever copied out, never borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(2))]
struct PathStep {
    feature: u16,
    delta: f32,
}

/// A group's per-leaf lists as built: the list of the leaf at group node index `i` is
/// `steps[start[i]..start[i + 1]]` (empty for internal nodes and the two filler slots).
struct LeafPaths {
    start: Vec<u32>,
    steps: Vec<PathStep>,
}

/// Wrong input shape for a scoring call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("row has {got} features, the model expects {expected}")]
    RowLength { expected: usize, got: usize },
    #[error("contribution buffer has {got} slots, the model has {expected} features")]
    ContribLength { expected: usize, got: usize },
    #[error("output buffer has {got} slots for {rows} rows")]
    OutputLength { rows: usize, got: usize },
}

/// One reason code: a feature and how much it moved the score up (in probability units).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Index into the model's feature row.
    pub feature: usize,
    /// Contribution to the score; reasons only list positive ones.
    pub contribution: f32,
}

/// A score with the features that pushed it up the most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub score: f32,
    /// The forest's prior score (mean root value): what a row with no information would get.
    pub base_rate: f32,
    /// Strictly positive contributions, largest first (ties: lower feature index first).
    pub reasons: Vec<Reason>,
}

/// A forest compiled for fast scoring; see the module documentation for the layout.
#[derive(Debug, Clone)]
pub struct CompiledForest {
    n_features: usize,
    n_trees: usize,
    base_rate: f32,
    packing: Packing,
    groups: Vec<Group>,
    /// Walk single rows with the AVX-512 gather walk ([`walk_chunk_avx512`]); set when the CPU
    /// has it.
    vector: bool,
    /// Width of the dense reason rows (a multiple of 16 >= `n_features`), 0 when the groups use
    /// sparse lists.
    dense_width: usize,
    /// Dense per-leaf contribution rows of every group, `dense_width` values each.
    rows: Box<[f32]>,
}

/// Groups whose walks run interleaved in the vector walk: their chains of dependent gathers are
/// independent, so the CPU overlaps them.
const CHUNK: usize = 8;

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
        let dense_width = if forest.n_features <= DENSE_MAX {
            forest.n_features.div_ceil(16).max(1) * 16
        } else {
            0
        };
        let mut rows = Vec::new();
        let groups = forest
            .trees
            .chunks(GROUP)
            .map(|trees| compile_group(trees, packing, forest.n_features, dense_width, &mut rows))
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
            dense_width,
            rows: rows.into_boxed_slice(),
        })
    }

    /// Turns the AVX-512 single-row walk on or off (it is on by default where the CPU has it);
    /// returns whether it is now on. Results are bit-identical either way: this exists so tests
    /// and benchmarks can compare the two.
    pub fn set_vector_walk(&mut self, on: bool) -> bool {
        self.vector = on && vector_walk_supported();
        self.vector
    }

    /// The leaves a row reaches in each group of `chunk` (at most [`CHUNK`] consecutive groups
    /// of this forest), into `out[..chunk.len()]`.
    ///
    /// # Safety
    /// `x.len()` must be `n_features` (see [`walk`]).
    #[inline(always)]
    unsafe fn walk_chunk(&self, chunk: &[Group], x: &[f32], out: &mut [[u32; GROUP]; CHUNK]) {
        #[cfg(target_arch = "x86_64")]
        if self.vector {
            // SAFETY: `vector` is only set when the CPU has AVX-512F; the rest is `walk`'s
            // contract, forwarded.
            unsafe { walk_chunk_avx512(chunk, self.packing, x, out) };
            return;
        }
        for (g, o) in chunk.iter().zip(out.iter_mut()) {
            // SAFETY: forwarded contract.
            *o = unsafe { walk(g, self.packing, x) };
        }
    }

    /// [`add_leaves`] for one group's walk, and with `starts` each real lane's `path_start`
    /// (its reason row or list). On AVX-512 both come from two masked gathers instead of a
    /// bounds-checked scalar load and add per tree (measured on the shipped model, one row
    /// repeated so every line is in cache: score 380-387 ns -> 336-352 ns). The sums are the
    /// same lane-wise additions in the same order, so results are bit-identical.
    #[inline(always)]
    fn add_leaves(
        &self,
        g: &Group,
        leaves: &[u32; GROUP],
        lanes: &mut [f32; SUM_LANES],
        starts: Option<&mut [u32; GROUP]>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.vector {
            // SAFETY: `vector` is only set when the CPU has AVX-512F; `leaves` come from a walk
            // of `g`, so every real lane holds a node index of `g` (see `walk`).
            unsafe { add_leaves_avx512(g, leaves, lanes, starts) };
            return;
        }
        add_leaves(g, leaves, lanes);
        if let Some(starts) = starts {
            for (s, &leaf) in starts.iter_mut().zip(&leaves[..g.n_trees]) {
                // Bounds-checked: one per tree.
                *s = g.values[leaf as usize].path_start;
            }
        }
    }

    /// Length of the feature row the model expects.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.n_trees
    }

    /// Mean of the trees' root values: the score of a row the trees know nothing about, and the
    /// anchor of the reason-code decomposition.
    pub fn base_rate(&self) -> f32 {
        self.base_rate
    }

    /// Fraud score of one row, bit-for-bit equal to [`Forest::predict`].
    ///
    /// The row must have exactly [`n_features`](Self::n_features) values. This is asserted in
    /// debug builds; in release builds a wrong length returns NaN rather than panicking. NaN
    /// compares false against every threshold (so it would *approve*): callers that cannot
    /// guarantee the shape by construction must use [`try_score`](Self::try_score).
    pub fn score(&self, x: &[f32]) -> f32 {
        debug_assert_eq!(x.len(), self.n_features, "row length != n_features");
        self.try_score(x).unwrap_or(f32::NAN)
    }

    /// Checked [`score`](Self::score): rejects a row of the wrong length.
    pub fn try_score(&self, x: &[f32]) -> Result<f32, ScoreError> {
        self.check_row(x)?;
        let mut lanes = [-0.0f32; SUM_LANES];
        let mut leaves = [[0u32; GROUP]; CHUNK];
        for chunk in self.groups.chunks(CHUNK) {
            // SAFETY: `x.len() == n_features` was checked above (see `walk`).
            unsafe { self.walk_chunk(chunk, x, &mut leaves) };
            for (g, l) in chunk.iter().zip(&leaves) {
                self.add_leaves(g, l, &mut lanes, None);
            }
        }
        Ok(fold_lanes(&lanes) / self.n_trees as f32)
    }

    /// Scores every row of `rows` (shape `[n, n_features]`) into `out` (length `n`). Equal to
    /// calling [`score`](Self::score) per row, but walks tree-group-major over blocks of rows so
    /// a group's nodes stay in cache while many rows go through it.
    ///
    /// Shape mismatches are asserted in debug builds; in release builds `out` is filled with NaN
    /// (see [`score`](Self::score) for why that needs care); use
    /// [`try_score_batch`](Self::try_score_batch) to get an error instead.
    pub fn score_batch(&self, rows: ArrayView2<f32>, out: &mut [f32]) {
        debug_assert_eq!(rows.ncols(), self.n_features, "row length != n_features");
        debug_assert_eq!(rows.nrows(), out.len(), "out.len() != number of rows");
        if self.try_score_batch(rows, out).is_err() {
            out.fill(f32::NAN);
        }
    }

    /// Checked [`score_batch`](Self::score_batch).
    pub fn try_score_batch(
        &self,
        rows: ArrayView2<f32>,
        out: &mut [f32],
    ) -> Result<(), ScoreError> {
        if rows.ncols() != self.n_features {
            return Err(ScoreError::RowLength {
                expected: self.n_features,
                got: rows.ncols(),
            });
        }
        if rows.nrows() != out.len() {
            return Err(ScoreError::OutputLength {
                rows: rows.nrows(),
                got: out.len(),
            });
        }
        /// Rows per block: 256 rows x 40 features x 4 B = 40 KiB of input, which stays in L1/L2
        /// while every tree goes over it.
        const BLOCK: usize = 256;
        let nf = self.n_features;
        match rows.as_slice() {
            // Standard (row-major, contiguous) layout: blocks are consecutive sub-slices.
            Some(flat) if nf > 0 => {
                for (block, out) in flat.chunks(BLOCK * nf).zip(out.chunks_mut(BLOCK)) {
                    self.score_block(block, out);
                }
            }
            _ => {
                // Strided or zero-width views: copy each block into a contiguous scratch.
                let mut scratch = Vec::with_capacity(BLOCK * nf);
                for (start, out) in (0..rows.nrows()).step_by(BLOCK).zip(out.chunks_mut(BLOCK)) {
                    scratch.clear();
                    for r in start..start + out.len() {
                        scratch.extend(rows.row(r).iter().copied());
                    }
                    self.score_block(&scratch, out);
                }
            }
        }
        let n = self.n_trees as f32;
        out.iter_mut().for_each(|s| *s /= n);
        Ok(())
    }

    /// Writes each row's sum of leaf values into `out` (one slot per row of the row-major
    /// `flat`), summed in the shared lane order (bit-equal to [`score`](Self::score)).
    ///
    /// Tree-major with [`BATCH_LANES`] rows walked in lock step: one tree's nodes (~10 KiB for
    /// ~1.4k nodes) stay in L1 while all the block's rows go through it, and the lanes give the
    /// same instruction-level parallelism as interleaving trees does for a single row.
    fn score_block(&self, flat: &[f32], out: &mut [f32]) {
        let nf = self.n_features;
        // The callers build `flat` from exactly `out.len()` rows of `nf` values; the unchecked
        // reads below rely on it, so this is a real check (once per block, not per step).
        assert_eq!(flat.len(), out.len() * nf, "block shape");
        let packing = self.packing;
        let mut partial = vec![[-0.0f32; SUM_LANES]; out.len()];
        for g in &self.groups {
            for (lane, (&root, &depth)) in g.roots.iter().zip(&g.depths).take(g.n_trees).enumerate()
            {
                for (chunk, partial) in partial.chunks_mut(BATCH_LANES).enumerate() {
                    let first = chunk * BATCH_LANES;
                    // Lanes past the end of a short last chunk re-walk its last row (valid
                    // offsets, results ignored).
                    let offsets: [usize; BATCH_LANES] =
                        std::array::from_fn(|k| (first + k.min(partial.len() - 1)) * nf);
                    let mut idx = [root; BATCH_LANES];
                    for _ in 0..depth {
                        for (i, &off) in idx.iter_mut().zip(&offsets) {
                            // SAFETY: `i` starts at a root and follows the step rule, so it
                            // stays a valid node index (see `walk`); `off + feature` is inside
                            // `flat`, since `off` starts a row of `nf` values (assert above) and
                            // an internal node's feature is `< nf`. Leaves read feature 0, and
                            // a tree with depth > 0 has an internal node, so `nf >= 1`.
                            let node = unsafe { *g.nodes.get_unchecked(*i as usize) };
                            let f = packing.feature(node.word);
                            // SAFETY: see above.
                            let v = unsafe { *flat.get_unchecked(off + f) };
                            *i = step(node, packing, v);
                        }
                    }
                    for (acc, &leaf) in partial.iter_mut().zip(&idx) {
                        acc[lane] += g.values[leaf as usize].value;
                    }
                }
            }
        }
        for (o, p) in out.iter_mut().zip(&partial) {
            *o = fold_lanes(p);
        }
    }

    /// Score plus per-feature contributions (Saabas path attribution) written into `contrib`
    /// (length `n_features`, overwritten): `base_rate() + contrib.iter().sum() == score` up to
    /// float rounding, and the returned score equals [`score`](Self::score) exactly.
    ///
    /// Wrong lengths are asserted in debug builds; in release builds they return NaN and leave
    /// `contrib` zeroed. Use [`try_explain`](Self::try_explain) for an error instead.
    pub fn explain(&self, x: &[f32], contrib: &mut [f32]) -> f32 {
        debug_assert_eq!(x.len(), self.n_features, "row length != n_features");
        debug_assert_eq!(
            contrib.len(),
            self.n_features,
            "contrib length != n_features"
        );
        match self.try_explain(x, contrib) {
            Ok(score) => score,
            Err(_) => {
                contrib.fill(0.0);
                f32::NAN
            }
        }
    }

    /// Checked [`explain`](Self::explain).
    pub fn try_explain(&self, x: &[f32], contrib: &mut [f32]) -> Result<f32, ScoreError> {
        self.check_explain_args(x, contrib)?;
        contrib.fill(0.0);
        let mut lanes = [-0.0f32; SUM_LANES];
        // The lists of the previous chunk of groups. They are added one chunk late: their
        // first lines are prefetched as soon as the leaves are known, and the next chunk's walk
        // runs while they arrive (the tables are several MB, so most lists are cache misses).
        // Measured on the bench model: without the prefetch, explain p50 went from ~5 us to
        // ~16 us (slower than the path re-walk), as each list's miss then stalls its loop.
        if self.dense_width > 0 {
            return Ok(self.explain_dense(x, contrib));
        }
        type Pending<'a> = [(&'a [PathStep], [Range<usize>; GROUP], usize); CHUNK];
        let empty = || (&[][..], EMPTY_RANGES, 0);
        let mut pending: Pending = std::array::from_fn(|_| empty());
        let mut leaves = [[0u32; GROUP]; CHUNK];
        for chunk in self.groups.chunks(CHUNK) {
            // SAFETY: `x.len() == n_features` was checked above (see `walk`).
            unsafe { self.walk_chunk(chunk, x, &mut leaves) };
            let mut current: Pending = std::array::from_fn(|_| empty());
            for ((g, l), cur) in chunk.iter().zip(&leaves).zip(current.iter_mut()) {
                add_leaves(g, l, &mut lanes);
                match &g.steps {
                    Some(steps) => {
                        let ranges = list_ranges(g, l);
                        for r in &ranges[..g.n_trees] {
                            prefetch(steps, r);
                        }
                        *cur = (steps, ranges, g.n_trees);
                    }
                    None => walk_contributions(g, self.packing, x, contrib),
                }
            }
            for (steps, ranges, n) in std::mem::replace(&mut pending, current).iter() {
                // SAFETY: `contrib.len() == n_features` was checked above.
                unsafe { add_lists(steps, &ranges[..*n], contrib) };
            }
        }
        for (steps, ranges, n) in pending.iter() {
            // SAFETY: `contrib.len() == n_features` was checked above.
            unsafe { add_lists(steps, &ranges[..*n], contrib) };
        }
        let n = self.n_trees as f32;
        contrib.iter_mut().for_each(|c| *c /= n);
        Ok(fold_lanes(&lanes) / n)
    }

    /// [`try_explain`] with dense rows: the rows of a chunk's leaves are prefetched as soon as
    /// the walk has found them and added (a few vector adds each) one chunk later, while the next
    /// chunk walks. `x` and `contrib` have been checked; `contrib` is zeroed.
    fn explain_dense(&self, x: &[f32], contrib: &mut [f32]) -> f32 {
        let width = self.dense_width;
        let mut acc = [0.0f32; DENSE_MAX];
        let acc = &mut acc[..width];
        let mut lanes = [-0.0f32; SUM_LANES];
        let mut leaves = [[0u32; GROUP]; CHUNK];
        // Row indices of the previous chunk and of this one, alternating between two buffers
        // (swapping indices, not copying arrays).
        let mut rows = [[0u32; CHUNK * GROUP]; 2];
        let mut filled = [0usize; 2];
        for (k, chunk) in self.groups.chunks(CHUNK).enumerate() {
            // SAFETY: `x.len() == n_features` was checked by the caller (see `walk`).
            unsafe { self.walk_chunk(chunk, x, &mut leaves) };
            let (cur, prev) = (k % 2, 1 - k % 2);
            filled[cur] = 0;
            for (g, l) in chunk.iter().zip(&leaves) {
                if !g.dense {
                    add_leaves(g, l, &mut lanes);
                    // Over the table budget: re-walk this group's paths.
                    walk_contributions(g, self.packing, x, contrib);
                    continue;
                }
                let mut starts = [0u32; GROUP];
                self.add_leaves(g, l, &mut lanes, Some(&mut starts));
                let n = filled[cur];
                rows[cur][n..n + g.n_trees].copy_from_slice(&starts[..g.n_trees]);
                filled[cur] = n + g.n_trees;
                for &r in &starts[..g.n_trees] {
                    // Only the first line: prefetching every line of every row fills the
                    // CPU's miss buffers and stalls on the prefetches themselves (measured).
                    prefetch_addr(self.rows.as_ptr().wrapping_add(r as usize * width).cast());
                }
            }
            add_rows(
                &self.rows,
                width,
                &rows[prev][..filled[prev]],
                acc,
                self.vector,
            );
            filled[prev] = 0;
        }
        for (r, n) in rows.iter().zip(filled) {
            add_rows(&self.rows, width, &r[..n], acc, self.vector);
        }
        let n = self.n_trees as f32;
        for (c, a) in contrib.iter_mut().zip(acc.iter()) {
            *c = (*c + a) / n;
        }
        fold_lanes(&lanes) / n
    }

    /// [`try_explain`](Self::try_explain) computed the direct way: every tree's path is walked
    /// again and each step's value change is added to its split feature, without the
    /// precomputed per-leaf tables. Same result up to float rounding (the tables are summed in
    /// `f64`), several times slower; it is the reference the tables are tested against and the
    /// fallback for groups too large to tabulate.
    pub fn explain_by_walk(&self, x: &[f32], contrib: &mut [f32]) -> Result<f32, ScoreError> {
        self.check_explain_args(x, contrib)?;
        contrib.fill(0.0);
        let mut lanes = [-0.0f32; SUM_LANES];
        for g in &self.groups {
            // SAFETY: `x.len() == n_features` was checked above (see `walk`).
            let leaves = unsafe { walk(g, self.packing, x) };
            add_leaves(g, &leaves, &mut lanes);
            walk_contributions(g, self.packing, x, contrib);
        }
        let n = self.n_trees as f32;
        contrib.iter_mut().for_each(|c| *c /= n);
        Ok(fold_lanes(&lanes) / n)
    }

    /// Heap bytes of the walk itself: packed nodes, node values and per-group bookkeeping (the
    /// `path_start` half of the node values is counted in
    /// [`reason_table_bytes`](Self::reason_table_bytes) instead).
    pub fn walk_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                std::mem::size_of::<Group>()
                    + std::mem::size_of_val(&*g.nodes)
                    + g.values.len() * std::mem::size_of::<f32>()
            })
            .sum()
    }

    /// Heap bytes of the precomputed reason tables (what fast [`explain`](Self::explain) costs
    /// on top of [`walk_bytes`](Self::walk_bytes)).
    pub fn reason_table_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                // The `path_start` half of every node value exists only for the tables.
                let starts = g.values.len() * std::mem::size_of::<u32>();
                let lists = g
                    .steps
                    .as_ref()
                    .map_or(0, |s| starts + std::mem::size_of_val(&**s));
                let rows = if g.dense { starts } else { 0 };
                lists + rows
            })
            .sum::<usize>()
            + std::mem::size_of_val(&*self.rows)
    }

    /// The score, the base rate and the (at most) `top` features with the largest positive
    /// contributions: the reason codes shown to an analyst for a flagged transaction.
    ///
    /// A row of the wrong length yields a NaN score and no reasons (asserted in debug builds);
    /// use [`try_reasons`](Self::try_reasons) for an error instead.
    pub fn reasons(&self, x: &[f32], top: usize) -> Explanation {
        debug_assert_eq!(x.len(), self.n_features, "row length != n_features");
        self.try_reasons(x, top).unwrap_or_else(|_| Explanation {
            score: f32::NAN,
            base_rate: self.base_rate,
            reasons: Vec::new(),
        })
    }

    /// Checked [`reasons`](Self::reasons).
    pub fn try_reasons(&self, x: &[f32], top: usize) -> Result<Explanation, ScoreError> {
        // The contributions of a row of up to DENSE_MAX features stay on the stack.
        let mut stack = [0.0f32; DENSE_MAX];
        let mut heap = Vec::new();
        let contrib = if self.n_features <= DENSE_MAX {
            &mut stack[..self.n_features]
        } else {
            heap.resize(self.n_features, 0.0f32);
            &mut heap[..]
        };
        let score = self.try_explain(x, contrib)?;
        Ok(Explanation {
            score,
            base_rate: self.base_rate,
            reasons: top_reasons(contrib, top),
        })
    }

    fn check_explain_args(&self, x: &[f32], contrib: &[f32]) -> Result<(), ScoreError> {
        self.check_row(x)?;
        if contrib.len() != self.n_features {
            return Err(ScoreError::ContribLength {
                expected: self.n_features,
                got: contrib.len(),
            });
        }
        Ok(())
    }

    fn check_row(&self, x: &[f32]) -> Result<(), ScoreError> {
        if x.len() == self.n_features {
            Ok(())
        } else {
            Err(ScoreError::RowLength {
                expected: self.n_features,
                got: x.len(),
            })
        }
    }
}

/// One branch-free step: the left child, or the right one (`left + 1`) unless `v <= threshold`.
/// Written as `!(v <= t)` so NaN inputs go right like in [`Tree::predict`], and so a leaf's NaN
/// threshold always adds 1 (its `left` is `self - 1`).
#[inline(always)]
fn step(node: PackedNode, packing: Packing, v: f32) -> u32 {
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // deliberate: NaN must go right
    let right = !(v <= node.threshold);
    // Cannot overflow: `left + 1` of an internal node is a valid index (compile_group).
    packing.left(node.word) + right as u32
}

/// Walks all lanes of a group to their leaves and returns the leaf indices.
///
/// # Safety
///
/// `x.len()` must equal the `n_features` of the forest the group was compiled from, and
/// `packing` must be the one it was compiled with. Given that, every access is in bounds by the
/// invariants [`compile_group`] establishes: roots and every `left`/`left + 1` of an internal
/// node index into the group arrays, a leaf steps to itself, internal nodes' features are
/// `< n_features`, and leaves' feature 0 is only read when the group has depth > 0, i.e. has an
/// internal node, so `n_features >= 1`.
#[inline(always)]
unsafe fn walk(g: &Group, packing: Packing, x: &[f32]) -> [u32; GROUP] {
    // SAFETY: forwarded contract.
    unsafe {
        match g.lanes {
            16 => walk_lanes::<16>(g, packing, x),
            8 => walk_lanes::<8>(g, packing, x),
            _ => walk_lanes::<4>(g, packing, x),
        }
    }
}

/// [`walk`] over the first `W` lanes; the others are returned as the padding leaf (1), which
/// [`add_leaves`] never reads since `W >= n_trees`.
///
/// # Safety
///
/// As for [`walk`], plus `W <= GROUP`.
#[inline(always)]
unsafe fn walk_lanes<const W: usize>(g: &Group, packing: Packing, x: &[f32]) -> [u32; GROUP] {
    let mut idx = [0u32; W];
    idx.copy_from_slice(&g.roots[..W]);
    for _ in 0..g.depth {
        // Fixed-size inner loop: unrolled by the compiler into W independent chains.
        for i in idx.iter_mut() {
            // SAFETY: see `walk`'s contract.
            let node = unsafe { *g.nodes.get_unchecked(*i as usize) };
            // SAFETY: see `walk`'s contract.
            let v = unsafe { *x.get_unchecked(packing.feature(node.word)) };
            *i = step(node, packing, v);
        }
    }
    let mut out = [1u32; GROUP];
    out[..W].copy_from_slice(&idx);
    out
}

/// The (at most) `top` strictly positive contributions, largest first; ties go to the lower
/// feature index, so the output is deterministic. A selection in one pass (`top` is a handful),
/// not a sort of every feature.
fn top_reasons(contrib: &[f32], top: usize) -> Vec<Reason> {
    let mut best: Vec<Reason> = Vec::with_capacity(top.min(contrib.len()) + 1);
    if top == 0 {
        return best;
    }
    for (feature, &contribution) in contrib.iter().enumerate() {
        // Contributions are finite (differences of probabilities); NaN is skipped anyway.
        if contribution <= 0.0 || contribution.is_nan() {
            continue;
        }
        if best.len() == top && contribution <= best[top - 1].contribution {
            continue;
        }
        // Ascending feature order: an equal contribution already kept stays ahead.
        let at = best.partition_point(|r| r.contribution >= contribution);
        best.insert(
            at,
            Reason {
                feature,
                contribution,
            },
        );
        best.truncate(top);
    }
    best
}

/// Whether this CPU can run [`walk_chunk_avx512`].
fn vector_walk_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`walk`] for up to [`CHUNK`] groups at once with AVX-512 gathers: all 16 lanes of a group take
/// a step in a handful of vector instructions (two 64-bit gathers fetch the 16 nodes, one 32-bit
/// gather fetches the 16 feature values, a compare and a masked add pick the children), and the
/// groups' independent chains interleave. The step rule is the scalar one (`!(x <= t)`, NaN goes
/// right, leaves loop on themselves), so the leaves are the same.
///
/// # Safety
/// The CPU must support AVX-512F, `chunk.len() <= CHUNK`, and each group must satisfy [`walk`]'s
/// contract for `x` and `packing`: every index the step rule reaches is a node of its group
/// (below 2^31, so it is a valid gather offset), and every feature read is `< x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn walk_chunk_avx512(
    chunk: &[Group],
    packing: Packing,
    x: &[f32],
    out: &mut [[u32; GROUP]; CHUNK],
) {
    use std::arch::x86_64::*;
    const _: () = assert!(GROUP == 16 && std::mem::size_of::<PackedNode>() == 8);
    let n = chunk.len().min(CHUNK);
    let mut idx = [_mm512_setzero_si512(); CHUNK];
    for (v, g) in idx.iter_mut().zip(chunk) {
        // SAFETY: `roots` is 16 u32 values (64 bytes); unaligned load.
        *v = unsafe { _mm512_loadu_si512(g.roots.as_ptr().cast()) };
    }
    let depth = chunk.iter().map(|g| g.depth).max().unwrap_or(0);
    // Thresholds are the low and words the high 32 bits of each 8-byte node: pick the even and
    // the odd dwords of the two gathered halves.
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let feature_mask = _mm512_set1_epi32(packing.feature_mask as i32);
    let shift = _mm_cvtsi32_si128(packing.feature_bits as i32);
    let one = _mm512_set1_epi32(1);
    // Rows of up to 64 features live in four registers, and a lane's feature value is picked
    // with permutes instead of a third gather per step (gathers are what this loop waits on).
    let in_registers = x.len() <= 64;
    let mut padded = [0.0f32; 64];
    let xr = if in_registers {
        padded[..x.len()].copy_from_slice(x);
        // SAFETY: `padded` holds 64 values; unaligned loads.
        unsafe {
            [
                _mm512_loadu_ps(padded.as_ptr()),
                _mm512_loadu_ps(padded.as_ptr().add(16)),
                _mm512_loadu_ps(padded.as_ptr().add(32)),
                _mm512_loadu_ps(padded.as_ptr().add(48)),
            ]
        }
    } else {
        [_mm512_setzero_ps(); 4]
    };
    let bit5 = _mm512_set1_epi32(32);
    for _ in 0..depth {
        for k in 0..n {
            let base = chunk[k].nodes.as_ptr();
            let v = idx[k];
            // SAFETY: every lane holds a valid node index of this group (contract), scaled by
            // the node size; feature values are read at indices `< x.len()` (contract).
            unsafe {
                let lo = _mm512_castsi512_si256(v);
                let hi = _mm512_extracti64x4_epi64::<1>(v);
                let q0 = _mm512_i32gather_epi64::<8>(lo, base.cast());
                let q1 = _mm512_i32gather_epi64::<8>(hi, base.cast());
                let threshold = _mm512_castsi512_ps(_mm512_permutex2var_epi32(q0, even, q1));
                let word = _mm512_permutex2var_epi32(q0, odd, q1);
                let feature = _mm512_and_si512(word, feature_mask);
                let left = _mm512_srl_epi32(word, shift);
                let value = if in_registers {
                    // Bits 0-4 pick within a pair of registers, bit 5 picks the pair.
                    let low = _mm512_permutex2var_ps(xr[0], feature, xr[1]);
                    let high = _mm512_permutex2var_ps(xr[2], feature, xr[3]);
                    _mm512_mask_blend_ps(_mm512_test_epi32_mask(feature, bit5), low, high)
                } else {
                    _mm512_i32gather_ps::<4>(feature, x.as_ptr().cast())
                };
                // Not-less-or-equal, unordered: true when x > t or either is NaN, i.e. exactly
                // the scalar `!(x <= t)`.
                let right = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(value, threshold);
                idx[k] = _mm512_mask_add_epi32(left, right, left, one);
            }
        }
    }
    for (o, v) in out.iter_mut().zip(&idx).take(n) {
        // SAFETY: `o` is 16 u32 values (64 bytes); unaligned store.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), *v) };
    }
}

const EMPTY_RANGES: [Range<usize>; GROUP] = [const { 0..0 }; GROUP];

/// The reason lists (ranges of `g.steps`) of the leaves a walk reached. Every lane has one, so
/// the loads are independent and overlap; padding lanes get the filler slot's empty list.
#[inline(always)]
fn list_ranges(g: &Group, leaves: &[u32; GROUP]) -> [Range<usize>; GROUP] {
    std::array::from_fn(|k| {
        let leaf = leaves[k] as usize;
        // Bounds-checked: a leaf index is < nodes.len() and `values` has one more entry.
        g.values[leaf].path_start as usize..g.values[leaf + 1].path_start as usize
    })
}

/// Hints the CPU to start loading a list (its first and last cache lines; lists are ~60 bytes,
/// so that is all of it). A hint only: never faults, changes nothing observable.
#[inline(always)]
fn prefetch(steps: &[PathStep], range: &Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // `wrapping_add` and `prefetch` are both fine with any address, so this is safe even if a
        // range were out of bounds; valid ranges stay within (or one past) `steps`.
        let first = steps.as_ptr().wrapping_add(range.start) as *const i8;
        let last = steps.as_ptr().wrapping_add(range.end) as *const i8;
        // SAFETY: prefetching has no memory-safety requirement (SSE is baseline on x86_64).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            _mm_prefetch::<_MM_HINT_T0>(last.wrapping_sub(1));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (steps, range);
}

/// Hints the CPU to load the line at `p`. Never faults, changes nothing observable.
#[inline(always)]
fn prefetch_addr(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching has no memory-safety requirement; any address is fine.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Adds rows `idx` (each `width` values) of `rows` into `acc` (`width` values), in order.
#[inline(always)]
fn add_rows(rows: &[f32], width: usize, idx: &[u32], acc: &mut [f32], vector: bool) {
    if idx.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is only set when the CPU has AVX-512F.
        unsafe { add_rows_avx512(rows, width, idx, acc) };
        return;
    }
    let _ = vector;
    add_rows_portable(rows, width, idx, acc);
}

/// Dispatches to [`add_rows_fixed`] for the row width (a multiple of 16, at most
/// [`DENSE_MAX`]).
#[inline(always)]
fn add_rows_portable(rows: &[f32], width: usize, idx: &[u32], acc: &mut [f32]) {
    match width {
        16 => add_rows_fixed::<16>(rows, idx, acc),
        32 => add_rows_fixed::<32>(rows, idx, acc),
        48 => add_rows_fixed::<48>(rows, idx, acc),
        64 => add_rows_fixed::<64>(rows, idx, acc),
        80 => add_rows_fixed::<80>(rows, idx, acc),
        96 => add_rows_fixed::<96>(rows, idx, acc),
        112 => add_rows_fixed::<112>(rows, idx, acc),
        _ => add_rows_fixed::<128>(rows, idx, acc),
    }
}

/// Adds rows of a fixed width `W`, keeping the accumulators in registers for all of `idx`.
#[inline(always)]
///
/// Two sets of accumulators take alternate rows, so consecutive adds do not wait on each other
/// (a float add has a latency of several cycles; a hundred in a row would be the bottleneck).
fn add_rows_fixed<const W: usize>(rows: &[f32], idx: &[u32], acc: &mut [f32]) {
    let mut a = [0.0f32; W];
    let mut b = [0.0f32; W];
    let row = |r: u32| -> &[f32] {
        // Bounds-checked: one check per tree.
        &rows[r as usize * W..][..W]
    };
    let mut pairs = idx.chunks_exact(2);
    for pair in &mut pairs {
        for (x, v) in a.iter_mut().zip(row(pair[0])) {
            *x += v;
        }
        for (x, v) in b.iter_mut().zip(row(pair[1])) {
            *x += v;
        }
    }
    if let [last] = pairs.remainder() {
        for (x, v) in a.iter_mut().zip(row(*last)) {
            *x += v;
        }
    }
    for ((o, x), y) in acc[..W].iter_mut().zip(&a).zip(&b) {
        *o += x + y;
    }
}

/// [`add_rows_portable`] compiled for AVX-512 (the loops vectorise to one add per 16 features).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_rows_avx512(rows: &[f32], width: usize, idx: &[u32], acc: &mut [f32]) {
    add_rows_portable(rows, width, idx, acc);
}

/// Adds the lists `ranges` of `steps` into `contrib`.
///
/// # Safety
///
/// `contrib.len()` must be the `n_features` of the forest `steps` was built from: every stored
/// feature is the split feature of a validated internal node, so `< n_features`.
#[inline(always)]
unsafe fn add_lists(steps: &[PathStep], ranges: &[Range<usize>], contrib: &mut [f32]) {
    for range in ranges {
        // Bounds-checked: one check per tree, noise next to the walk.
        for step in &steps[range.clone()] {
            let PathStep { feature, delta } = *step;
            // SAFETY: `feature < n_features == contrib.len()` (function contract).
            unsafe { *contrib.get_unchecked_mut(feature as usize) += delta };
        }
    }
}

/// Adds every real lane's path deltas into `contrib` by walking the group again: the value
/// change of each step goes to the split feature of the node it leaves.
///
/// `x` and `contrib` must both have `n_features` values (checked by the callers; indexing here
/// is bounds-checked anyway: this is the slow path).
fn walk_contributions(g: &Group, packing: Packing, x: &[f32], contrib: &mut [f32]) {
    let mut idx = g.roots;
    for _ in 0..g.depth {
        for i in idx.iter_mut().take(g.n_trees) {
            let at = *i as usize;
            let node = g.nodes[at];
            let f = packing.feature(node.word);
            let next = step(node, packing, x[f]);
            // From a leaf, `next == at` and this adds 0 to feature 0's slot, so leaves need no
            // special case.
            contrib[f] += g.values[next as usize].value - g.values[at].value;
            *i = next;
        }
    }
}

/// Adds the real lanes' leaf values to their partial sums (lane `k` of a group is tree
/// `GROUP * g + k`, and `GROUP == SUM_LANES`: the order of [`Forest::predict`]).
#[inline(always)]
fn add_leaves(g: &Group, leaves: &[u32; GROUP], lanes: &mut [f32; SUM_LANES]) {
    const _: () = assert!(GROUP == SUM_LANES);
    for (sum, &leaf) in lanes.iter_mut().zip(&leaves[..g.n_trees]) {
        // Bounds-checked on purpose: `n_trees` values, negligible next to the walk.
        *sum += g.values[leaf as usize].value;
    }
}

/// [`add_leaves`] (and the leaves' `path_start`s into `starts`) with two masked gathers over
/// the group's [`NodeValue`]s: lane `k < n_trees` adds `values[leaves[k]].value` to `lanes[k]`
/// (the same single addition per lane as the scalar loop, so bit-identical); other lanes are
/// neither read nor changed.
///
/// # Safety
/// The CPU must support AVX-512F, and `leaves[..g.n_trees]` must be node indices of `g` (what a
/// walk of `g` returns), so each gathered `NodeValue` is inside `g.values`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_leaves_avx512(
    g: &Group,
    leaves: &[u32; GROUP],
    lanes: &mut [f32; SUM_LANES],
    starts: Option<&mut [u32; GROUP]>,
) {
    use std::arch::x86_64::*;
    const _: () = assert!(GROUP == 16 && SUM_LANES == 16 && std::mem::size_of::<NodeValue>() == 8);
    // `n_trees <= GROUP == 16`, so the shift cannot overflow a u32.
    let mask = ((1u32 << g.n_trees.min(GROUP)) - 1) as __mmask16;
    let base = g.values.as_ptr();
    // SAFETY: unaligned 64-byte loads and stores of 16 u32/f32 arrays; the gathers read only
    // the masked lanes, at indices inside `g.values` (contract), at byte offsets 0 (`value`)
    // and 4 (`path_start`) of an 8-byte `#[repr(C)]` NodeValue.
    unsafe {
        let idx = _mm512_loadu_si512(leaves.as_ptr().cast());
        let v = _mm512_mask_i32gather_ps::<8>(_mm512_setzero_ps(), mask, idx, base.cast());
        let acc = _mm512_loadu_ps(lanes.as_ptr());
        _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mask_add_ps(acc, mask, acc, v));
        if let Some(starts) = starts {
            let at = base.cast::<u8>().add(4);
            let s = _mm512_mask_i32gather_epi32::<8>(_mm512_setzero_si512(), mask, idx, at.cast());
            _mm512_storeu_si512(starts.as_mut_ptr().cast(), s);
        }
    }
}

/// Lays out up to [`GROUP`] validated trees breadth-first in one set of arrays.
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
    dense_width: usize,
    dense_rows: &mut Vec<f32>,
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
    let paths = build_leaf_paths(trees, &queue, FIRST, n_features);
    let mut dense = false;
    if let (Some(paths), true) = (&paths, dense_width > 0) {
        // One row per leaf (fillers included, never added), holding its list densely, appended
        // to the forest's rows. Row indices fit in u32: the tables are bounded by the same
        // budget as the lists they expand.
        for i in 0..nodes.len() {
            if !nodes[i].threshold.is_nan() {
                continue;
            }
            let at = dense_rows.len();
            values[i].path_start = (at / dense_width) as u32;
            dense_rows.resize(at + dense_width, 0.0f32);
            let list = &paths.steps[paths.start[i] as usize..paths.start[i + 1] as usize];
            for step in list {
                let PathStep { feature, delta } = *step;
                dense_rows[at + feature as usize] += delta;
            }
        }
        dense = true;
    }
    let steps = match paths.filter(|_| !dense) {
        Some(paths) => {
            for (v, &start) in values.iter_mut().zip(&paths.start) {
                v.path_start = start;
            }
            values.push(NodeValue {
                value: 0.0,
                path_start: paths.steps.len() as u32,
            });
            Some(paths.steps.into_boxed_slice())
        }
        None => {
            values.push(NodeValue {
                value: 0.0,
                path_start: 0,
            });
            None
        }
    };
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
        steps,
        dense,
    })
}

/// The reason table of a group laid out by [`compile_group`]: `order[k]` is the
/// `(tree, original node)` placed at group index `first + k`. `None` when the table would exceed
/// [`PATH_ENTRIES_PER_NODE`] pairs per node (then explain re-walks this group's paths).
fn build_leaf_paths(
    trees: &[Tree],
    order: &[(usize, usize)],
    first: usize,
    n_features: usize,
) -> Option<LeafPaths> {
    let total = first + order.len();
    // Also keeps every offset within u32.
    let budget = PATH_ENTRIES_PER_NODE
        .saturating_mul(total)
        .min(u32::MAX as usize);
    let mut scratch = PathScratch {
        acc: vec![0.0; n_features],
        on_path: vec![false; n_features],
        distinct: Vec::new(),
    };
    let mut per_tree = Vec::with_capacity(trees.len());
    let mut used = 0;
    for tree in trees {
        let lists = tree_leaf_paths(tree, &mut scratch, budget - used)?;
        used += lists.steps.len();
        per_tree.push(lists);
    }
    // Re-concatenate in group node order, so one start array serves both ends of every range.
    let mut start = Vec::with_capacity(total + 1);
    let mut steps = Vec::with_capacity(used);
    start.resize(first, 0);
    for &(t, i) in order {
        // `steps.len() <= used <= budget <= u32::MAX`.
        start.push(steps.len() as u32);
        let lists = &per_tree[t];
        steps.extend_from_slice(&lists.steps[lists.ranges[i].clone()]);
    }
    start.push(steps.len() as u32);
    Some(LeafPaths { start, steps })
}

/// Per-feature state of the depth-first walk in [`tree_leaf_paths`], reused across trees.
struct PathScratch {
    /// Sum of the deltas attributed to each feature on the current root-to-node path.
    acc: Vec<f64>,
    /// Whether the feature splits somewhere on the current path.
    on_path: Vec<bool>,
    /// The features with `on_path`, in first-split order (a stack: the last one to appear on
    /// the path is the first to leave it), so a leaf lists them without scanning all features.
    distinct: Vec<u16>,
}

/// One tree's per-leaf lists, indexed by the tree's own node indices (empty for internal nodes).
struct TreePaths {
    steps: Vec<PathStep>,
    ranges: Vec<std::ops::Range<usize>>,
}

/// Depth-first over one validated tree, keeping the per-feature path sums up to date on the way
/// down and restoring them exactly (saved values, no subtraction) on the way up; every leaf
/// copies out its nonzero sums. Time is O(nodes + output). `None` once the output would exceed
/// `budget` pairs. Iterative, since model trees can be deeper than the call stack allows.
fn tree_leaf_paths(tree: &Tree, scratch: &mut PathScratch, budget: usize) -> Option<TreePaths> {
    enum Visit {
        /// Enter `node`, coming from its parent `from` (None for the root).
        Enter { node: usize, from: Option<usize> },
        /// Leaving the subtree below a split on `feature`: restore its sum.
        Leave {
            feature: usize,
            saved: f64,
            first: bool,
        },
    }
    let PathScratch {
        acc,
        on_path,
        distinct,
    } = scratch;
    let nodes = &tree.nodes;
    let mut out = TreePaths {
        steps: Vec::new(),
        ranges: vec![0..0; nodes.len()],
    };
    let mut stack = vec![Visit::Enter {
        node: 0,
        from: None,
    }];
    while let Some(visit) = stack.pop() {
        match visit {
            Visit::Leave {
                feature,
                saved,
                first,
            } => {
                acc[feature] = saved;
                if first {
                    on_path[feature] = false;
                    distinct.pop();
                }
            }
            Visit::Enter { node, from } => {
                if let Some(parent) = from {
                    // Validated: an internal node's feature is < n_features <= 65536.
                    let feature = nodes[parent].feature as usize;
                    let first = !on_path[feature];
                    stack.push(Visit::Leave {
                        feature,
                        saved: acc[feature],
                        first,
                    });
                    if first {
                        on_path[feature] = true;
                        distinct.push(feature as u16);
                    }
                    acc[feature] += f64::from(nodes[node].value) - f64::from(nodes[parent].value);
                }
                let n = nodes[node];
                if n.is_leaf() {
                    let begin = out.steps.len();
                    out.steps.extend(
                        distinct
                            .iter()
                            .map(|&f| PathStep {
                                feature: f,
                                delta: acc[f as usize] as f32,
                            })
                            // A zero sum adds nothing; most are nonzero, but skip them anyway.
                            .filter(|s| s.delta != 0.0),
                    );
                    if out.steps.len() > budget {
                        // Leave the scratch clean for the caller's next attempt (none today,
                        // but the invariant is cheap to keep).
                        acc.fill(0.0);
                        on_path.fill(false);
                        distinct.clear();
                        return None;
                    }
                    out.ranges[node] = begin..out.steps.len();
                } else {
                    stack.push(Visit::Enter {
                        node: n.right as usize,
                        from: Some(node),
                    });
                    stack.push(Visit::Enter {
                        node: n.left as usize,
                        from: Some(node),
                    });
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::tree::Node;

    fn split(feature: u32, threshold: f32, left: u32, right: u32, value: f32) -> Node {
        Node {
            feature,
            threshold,
            left,
            right,
            value,
            weight: 1.0,
        }
    }

    /// x0 <= 1 ? (x1 <= 5 ? 0.1 : 0.7) : 0.9, root 0.5, inner 0.3.
    fn two_level() -> Tree {
        Tree {
            nodes: vec![
                split(0, 1.0, 1, 2, 0.5),
                split(1, 5.0, 3, 4, 0.3),
                Node::leaf(0.9, 1.0),
                Node::leaf(0.1, 1.0),
                Node::leaf(0.7, 1.0),
            ],
        }
    }

    fn stump(feature: u32, threshold: f32, l: f32, r: f32) -> Tree {
        Tree {
            nodes: vec![
                split(feature, threshold, 1, 2, (l + r) / 2.0),
                Node::leaf(l, 1.0),
                Node::leaf(r, 1.0),
            ],
        }
    }

    fn forest(trees: Vec<Tree>) -> Forest {
        Forest {
            n_features: 2,
            trees,
        }
    }

    #[test]
    fn matches_reference_on_thresholds_nan_and_infinities() {
        let f = forest(vec![
            two_level(),
            stump(1, 5.0, 0.2, 0.4),
            Tree {
                nodes: vec![Node::leaf(0.25, 1.0)],
            },
            stump(0, f32::INFINITY, 0.6, 0.0),
        ]);
        let c = CompiledForest::compile(&f).unwrap();
        assert_eq!((c.n_trees(), c.n_features()), (4, 2));
        let probes = [
            f32::NEG_INFINITY,
            -1.0,
            1.0,
            1.0 + f32::EPSILON,
            5.0,
            5.000001,
            f32::INFINITY,
            f32::NAN,
        ];
        for &a in &probes {
            for &b in &probes {
                let x = [a, b];
                let want = f.predict(&x);
                let got = c.score(&x);
                assert_eq!(got.to_bits(), want.to_bits(), "x = {x:?}");
            }
        }
        // Spot check the semantics themselves: equal goes left, NaN goes right.
        assert_eq!(c.score(&[1.0, 5.0]), (0.1 + 0.2 + 0.25 + 0.6) / 4.0);
        assert_eq!(
            c.score(&[f32::NAN, f32::NAN]),
            (0.9 + 0.4 + 0.25 + 0.0) / 4.0
        );
    }

    #[test]
    fn partial_and_multiple_groups_match_reference() {
        // Tree counts covering 4-, 8- and 16-lane final groups, and cross-group summation order.
        for n_trees in [1, 3, 4, 5, 8, 9, 15, 16, 17, 21, 2 * GROUP + 3] {
            let trees: Vec<Tree> = (0..n_trees)
                .map(|k| {
                    let t = k as f32 * 0.37 - 2.0;
                    if k % 3 == 0 {
                        two_level()
                    } else {
                        stump((k % 2) as u32, t, (k as f32 * 0.05) % 1.0, 0.33)
                    }
                })
                .collect();
            let f = forest(trees);
            let c = CompiledForest::compile(&f).unwrap();
            for i in -30..30 {
                for j in -3..8 {
                    let x = [i as f32 * 0.13, j as f32];
                    let (got, want) = (c.score(&x), f.predict(&x));
                    assert_eq!(got.to_bits(), want.to_bits(), "{n_trees} trees, x = {x:?}");
                }
            }
        }
    }

    #[test]
    fn leaf_only_forest_with_no_features() {
        let f = Forest {
            n_features: 0,
            trees: vec![Tree {
                nodes: vec![Node::leaf(0.125, 3.0)],
            }],
        };
        let c = CompiledForest::compile(&f).unwrap();
        assert_eq!(c.score(&[]), 0.125);
        assert_eq!(c.base_rate(), 0.125);
        let mut out = [1.0; 3];
        c.score_batch(ndarray::Array2::<f32>::zeros((3, 0)).view(), &mut out);
        assert_eq!(out, [0.125; 3]);
        let e = c.reasons(&[], 3);
        assert_eq!(e.score, 0.125);
        assert!(e.reasons.is_empty());
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        let c = CompiledForest::compile(&forest(vec![two_level()])).unwrap();
        assert_eq!(
            c.try_score(&[1.0]),
            Err(ScoreError::RowLength {
                expected: 2,
                got: 1
            })
        );
        assert!(c.try_score(&[1.0, 2.0, 3.0]).is_err());
        let mut contrib = [0.0; 3];
        assert_eq!(
            c.try_explain(&[1.0, 2.0], &mut contrib),
            Err(ScoreError::ContribLength {
                expected: 2,
                got: 3
            })
        );
        let rows = ndarray::Array2::<f32>::zeros((4, 2));
        let mut out = [0.0; 3];
        assert_eq!(
            c.try_score_batch(rows.view(), &mut out),
            Err(ScoreError::OutputLength { rows: 4, got: 3 })
        );
        let rows = ndarray::Array2::<f32>::zeros((3, 1));
        assert!(c.try_score_batch(rows.view(), &mut out).is_err());
        assert!(c.try_reasons(&[], 1).is_err());
    }

    #[test]
    fn compile_rejects_invalid_and_oversized_forests() {
        let mut bad = forest(vec![two_level()]);
        bad.trees[0].nodes[1].right = 1;
        assert!(matches!(
            CompiledForest::compile(&bad),
            Err(ForestError::BadChild { .. })
        ));
        assert_eq!(
            CompiledForest::compile(&forest(vec![])).err(),
            Some(ForestError::Empty)
        );
        let huge = Forest {
            n_features: 70_000,
            trees: vec![two_level()],
        };
        assert!(matches!(
            CompiledForest::compile(&huge),
            Err(ForestError::TooLarge { value: 70_000, .. })
        ));
    }

    /// A "caterpillar" tree: internal node k splits on feature k % n_features at threshold k
    /// and its left child is a leaf; `n_internal` internal nodes, depth `n_internal`.
    fn caterpillar(n_internal: usize, n_features: usize) -> Tree {
        let mut nodes = Vec::with_capacity(2 * n_internal + 1);
        for k in 0..n_internal {
            let at = nodes.len() as u32;
            nodes.push(split(
                (k % n_features) as u32,
                k as f32,
                at + 1,
                at + 2,
                0.5,
            ));
            nodes.push(Node::leaf((k % 7) as f32 / 7.0, 1.0));
        }
        nodes.push(Node::leaf(1.0, 1.0));
        Tree { nodes }
    }

    #[test]
    fn group_size_limit_depends_on_feature_bits() {
        // 65539 nodes: too many for 16 child bits (65536 features), fine with 10 (1000 features).
        let tree = caterpillar(32_769, 1000);
        let wide = Forest {
            n_features: 65_536,
            trees: vec![tree.clone()],
        };
        assert!(matches!(
            CompiledForest::compile(&wide),
            Err(ForestError::TooLarge { max: 65_536, .. })
        ));
        let f = Forest {
            n_features: 1000,
            trees: vec![tree.clone(), tree],
        };
        let c = CompiledForest::compile(&f).unwrap();
        for row in [0.0f32, 999.5, 31_999.0, 40_000.0] {
            let x: Vec<f32> = (0..1000).map(|k| row + k as f32).collect();
            assert_eq!(c.score(&x).to_bits(), f.predict(&x).to_bits());
        }
    }

    #[test]
    fn explain_attributes_path_changes_to_split_features() {
        let c = CompiledForest::compile(&forest(vec![two_level()])).unwrap();
        let mut contrib = [0.0; 2];
        // Path: root(0.5) -x0-> inner(0.3) -x1-> leaf 0.7.
        let s = c.explain(&[0.0, 6.0], &mut contrib);
        assert_eq!(s, 0.7);
        assert!((contrib[0] - (0.3 - 0.5)).abs() < 1e-7);
        assert!((contrib[1] - (0.7 - 0.3)).abs() < 1e-7);
        assert_eq!(c.base_rate(), 0.5);
        // Path: root -x0-> leaf 0.9; x1 is never consulted.
        let s = c.explain(&[2.0, 6.0], &mut contrib);
        assert_eq!(s, 0.9);
        assert!((contrib[0] - 0.4).abs() < 1e-7);
        assert_eq!(contrib[1], 0.0);
    }

    #[test]
    fn explain_averages_over_trees_and_adds_up() {
        let f = forest(vec![
            two_level(),
            stump(1, 5.0, 0.2, 0.4),
            stump(0, 0.0, 1.0, 0.0),
        ]);
        let c = CompiledForest::compile(&f).unwrap();
        let mut contrib = [0.0; 2];
        for x in [[0.0, 6.0], [-1.0, 0.0], [3.0, 5.0], [f32::NAN, 1.0]] {
            let s = c.explain(&x, &mut contrib);
            assert_eq!(s.to_bits(), c.score(&x).to_bits());
            let total = c.base_rate() + contrib.iter().sum::<f32>();
            assert!((total - s).abs() < 1e-6, "x = {x:?}: {total} vs {s}");
        }
        // Hand-computed for x = [-1, 0]: tree 0 (x0 left, x1 left): x0 -0.2, x1 -0.2;
        // tree 1 (x1 left): x1 -0.1; tree 2 (x0 left): x0 +0.5.
        c.explain(&[-1.0, 0.0], &mut contrib);
        assert!((contrib[0] - 0.3 / 3.0).abs() < 1e-6);
        assert!((contrib[1] + 0.3 / 3.0).abs() < 1e-6);
    }

    /// `explain` (tables) against `explain_by_walk` (path re-walk) on every probe row.
    fn assert_tables_match_walk(c: &CompiledForest, rows: &[Vec<f32>]) {
        let nf = c.n_features();
        let (mut fast, mut slow) = (vec![0.0; nf], vec![0.0; nf]);
        for x in rows {
            let s = c.explain(x, &mut fast);
            let s_walk = c.explain_by_walk(x, &mut slow).unwrap();
            assert_eq!(s.to_bits(), s_walk.to_bits());
            assert_eq!(s.to_bits(), c.score(x).to_bits());
            for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert!((a - b).abs() <= 1e-6, "feature {k}: {a} vs {b}, x = {x:?}");
            }
        }
    }

    #[test]
    fn leaf_tables_equal_path_walk() {
        let f = forest(vec![
            two_level(),
            stump(1, 5.0, 0.2, 0.4),
            stump(0, 0.0, 1.0, 0.0),
            // Feature 0 twice on one path: its deltas must be merged into one entry.
            Tree {
                nodes: vec![
                    split(0, 1.0, 1, 2, 0.5),
                    split(0, -1.0, 3, 4, 0.2),
                    Node::leaf(0.9, 1.0),
                    Node::leaf(0.05, 1.0),
                    Node::leaf(0.3, 1.0),
                ],
            },
        ]);
        let c = CompiledForest::compile(&f).unwrap();
        assert!(c.reason_table_bytes() > 0);
        let rows: Vec<Vec<f32>> = [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, f32::NAN]
            .iter()
            .flat_map(|&a| [0.0, 5.0, 6.0].map(|b| vec![a, b]))
            .collect();
        assert_tables_match_walk(&c, &rows);
        // The merged entry for tree 3 at x0 = 0: 0.5 -> 0.2 -> 0.3, i.e. -0.2 on feature 0.
        let mut contrib = [0.0; 2];
        let single = CompiledForest::compile(&forest(vec![f.trees[3].clone()])).unwrap();
        single.explain(&[0.0, 0.0], &mut contrib);
        assert!((contrib[0] + 0.2).abs() < 1e-7, "{contrib:?}");
        assert_eq!(contrib[1], 0.0);
    }

    #[test]
    fn top_reasons_selects_like_a_full_sort() {
        let mut rng_state = 12345u64;
        let mut next = || {
            rng_state = rng_state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Few distinct values, so ties are common; some zero and negative.
            ((rng_state >> 33) % 9) as f32 / 4.0 - 0.5
        };
        for n in [0usize, 1, 3, 7, 43, 130] {
            for top in [0usize, 1, 3, 5, 200] {
                let contrib: Vec<f32> = (0..n).map(|_| next()).collect();
                let mut want: Vec<Reason> = contrib
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0.0)
                    .map(|(feature, &contribution)| Reason {
                        feature,
                        contribution,
                    })
                    .collect();
                want.sort_by(|a, b| {
                    b.contribution
                        .total_cmp(&a.contribution)
                        .then(a.feature.cmp(&b.feature))
                });
                want.truncate(top);
                assert_eq!(top_reasons(&contrib, top), want, "n {n} top {top}");
            }
        }
    }

    /// Forests with more than [`DENSE_MAX`] features keep sparse per-leaf lists; they must agree
    /// with the path walk too (and with the dense rows of the same trees).
    #[test]
    fn sparse_lists_for_wide_forests_equal_path_walk_and_dense_rows() {
        let deep = |shift: u32| {
            let mut t = caterpillar(60, 150);
            for (k, n) in t.nodes.iter_mut().enumerate() {
                if !n.is_leaf() {
                    n.feature = (n.feature + shift) % 150;
                    n.value = (k % 9) as f32 / 9.0;
                }
            }
            t
        };
        let trees: Vec<Tree> = (0..20).map(|k| deep(7 * k)).collect();
        let wide = Forest {
            n_features: 150,
            trees: trees.clone(),
        };
        let c = CompiledForest::compile(&wide).unwrap();
        assert_eq!(c.dense_width, 0);
        assert!(c.groups.iter().all(|g| g.steps.is_some() && !g.dense));
        let rows: Vec<Vec<f32>> = (0..12)
            .map(|r| (0..150).map(|k| ((r * 31 + k * 7) % 70) as f32).collect())
            .collect();
        assert_tables_match_walk(&c, &rows);
        // The same trees on 120 features (every split feature is < 150, so remap into range):
        // dense rows, same contributions.
        let narrow_trees: Vec<Tree> = trees
            .iter()
            .map(|t| {
                let mut t = t.clone();
                for n in t.nodes.iter_mut().filter(|n| !n.is_leaf()) {
                    n.feature %= 120;
                }
                t
            })
            .collect();
        let narrow = CompiledForest::compile(&Forest {
            n_features: 120,
            trees: narrow_trees,
        })
        .unwrap();
        assert_eq!(narrow.dense_width, 128);
        let rows120: Vec<Vec<f32>> = rows.iter().map(|r| r[..120].to_vec()).collect();
        assert_tables_match_walk(&narrow, &rows120);
    }

    #[test]
    fn oversized_group_falls_back_to_walking_its_paths() {
        // Caterpillar with internal values varying along the path: leaf k has min(k, 40)
        // nonzero entries, ~22k in all against a budget of 16 x ~1.2k nodes.
        let mut deep = caterpillar(600, 40);
        for (k, n) in deep.nodes.iter_mut().filter(|n| !n.is_leaf()).enumerate() {
            n.value = (k % 5) as f32 / 5.0;
        }
        let mut trees = vec![two_level(); GROUP];
        trees.push(deep.clone());
        let f = Forest {
            n_features: 40,
            trees,
        };
        let c = CompiledForest::compile(&f).unwrap();
        // The first group has a table (dense rows: 40 features), the second (caterpillar) group
        // has none.
        assert!(c.groups[0].dense && c.groups[0].steps.is_none());
        assert!(!c.groups[1].dense && c.groups[1].steps.is_none());
        let only_deep = Forest {
            n_features: 40,
            trees: vec![deep],
        };
        assert_eq!(
            CompiledForest::compile(&only_deep)
                .unwrap()
                .reason_table_bytes(),
            0
        );
        let rows: Vec<Vec<f32>> = [-1.0, 0.5, 37.5, 250.0, 599.5, 1000.0]
            .iter()
            .map(|&v| (0..40).map(|k| v + k as f32 * 0.25).collect())
            .collect();
        assert_tables_match_walk(&c, &rows);
        let mut contrib = vec![0.0; 40];
        for x in &rows {
            let s = c.explain(x, &mut contrib);
            let total = c.base_rate() + contrib.iter().sum::<f32>();
            assert!((total - s).abs() < 1e-5, "{total} vs {s}");
        }
    }

    #[test]
    fn reasons_keep_top_positive_contributions_in_order() {
        // Three features; stumps pushing up on x0 (a lot), x2 (a little), down on x1.
        let f = Forest {
            n_features: 3,
            trees: vec![
                stump(0, 0.0, 0.0, 1.0),
                stump(2, 0.0, 0.4, 0.6),
                stump(1, 0.0, 0.2, 0.8),
            ],
        };
        let c = CompiledForest::compile(&f).unwrap();
        let x = [1.0, -1.0, 1.0];
        let e = c.reasons(&x, 5);
        assert_eq!(e.score, c.score(&x));
        assert_eq!(e.base_rate, 0.5);
        let features: Vec<usize> = e.reasons.iter().map(|r| r.feature).collect();
        assert_eq!(features, vec![0, 2]);
        assert!((e.reasons[0].contribution - 0.5 / 3.0).abs() < 1e-6);
        assert!((e.reasons[1].contribution - 0.1 / 3.0).abs() < 1e-6);
        assert_eq!(c.reasons(&x, 1).reasons.len(), 1);
        assert!(c.reasons(&x, 0).reasons.is_empty());
    }

    #[test]
    fn batch_equals_single_row_for_strided_views() {
        let f = forest(vec![two_level(), stump(1, 5.0, 0.2, 0.4)]);
        let c = CompiledForest::compile(&f).unwrap();
        let rows = ndarray::Array2::from_shape_fn((600, 2), |(r, k)| {
            ((r * 7 + k * 3) % 13) as f32 * 0.5 - 1.0
        });
        let mut out = vec![0.0; 600];
        c.score_batch(rows.view(), &mut out);
        let mut out_t = vec![0.0; 600];
        let transposed = rows.t().to_owned();
        c.score_batch(transposed.t(), &mut out_t);
        for (r, row) in rows.outer_iter().enumerate() {
            let want = f.predict(row.as_slice().unwrap());
            assert_eq!(out[r].to_bits(), want.to_bits(), "row {r}");
            assert_eq!(out_t[r].to_bits(), want.to_bits(), "row {r} (strided)");
        }
    }
}
