//! The serving-time form of a [`Forest`](super::Forest): a branch-free, interleaved tree walker
//! plus per-feature reason codes.
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
//! Scores are bit-for-bit equal to [`Forest::predict`](super::Forest::predict): leaf values are
//! summed in tree order starting from `-0.0` (exactly what `Iterator::sum` does) and divided by the
//! tree count.
//!
//! # Reason codes
//!
//! [`CompiledForest::explain`] is the Saabas / path decomposition: walking a tree, the change in
//! node value from parent to child is attributed to the parent's split feature. Per tree the
//! changes telescope from the root value to the leaf value, so averaged over trees
//! `base_rate + sum(contributions) == score` (up to float rounding).
//!
//! A tree's contribution depends only on which leaf the row reaches, so it is precomputed at
//! compile time: every leaf gets the sum of the deltas along its root-to-leaf path, merged by
//! feature and computed in `f64` from the node values (so at least as accurate as the walk it
//! replaces). `explain` is then the same lock-step walk as `score`, followed by adding each
//! reached leaf's contributions into the output. How they are stored is decided when the forest
//! is compiled, per forest and per group of [`GROUP`] trees (`reasons::tabulate`):
//!
//! - **Dense rows, for forests of at most [`DENSE_MAX`] (128) features. This is what the shipped
//!   model gets** (`models/default.vgm`, 43 features; a test pins it), and so does the 36-feature
//!   bench model of `benches/forest.rs`. Every leaf has a row of `f32` contributions, one per
//!   feature, padded to a multiple of 16 (48 values, 192 bytes, for 43 features), in one array
//!   for the whole forest; the leaf's node value holds its row index. A row takes about three
//!   times the memory of a list at depth 12, but is added with a few vector adds instead of a
//!   scattered read-modify-write per feature on the path. The rows of a chunk of groups are
//!   prefetched (first line) as soon as the walk has found the leaves and added one chunk later,
//!   while the next chunk walks.
//! - **Pair lists, for forests of more than [`DENSE_MAX`] features**, where rows would be mostly
//!   zeros and too large: each leaf lists its nonzero contributions as 6-byte
//!   `(u16 feature, f32 delta)` pairs (about ten at depth 12), one flat array per group, with the
//!   start of each node's list stored next to its value. They are prefetched and added one chunk
//!   late the same way.
//! - **The path re-walk, for a group whose lists would exceed [`PATH_ENTRIES_PER_NODE`] pairs per
//!   node**, whatever the feature count (the budget is checked on the lists before they are
//!   expanded into rows). A table grows as `leaves x distinct features per path`, which explodes
//!   for pathological trees (very deep, many features); such a group keeps no table, and explain
//!   walks its paths again, adding each step's value change to the split feature.
//!   [`CompiledForest::explain_by_walk`] does that for every group: it is the tests' oracle.
//!
//! [`CompiledForest::reason_table_bytes`] reports what a forest's tables cost. The strategies'
//! measured times and sizes are in BENCHMARKS.md ("Scoring", and "Figures moved from code
//! comments (vigil-core)").
//!
//! # Code map
//!
//! - `layout.rs`: packing a validated forest into groups ([`CompiledForest::compile`]).
//! - `walk.rs`: the portable lock-step walk of one row, and the tree-at-a-time batch walk.
//! - `avx512.rs`: the AVX-512 walk and gathers, and the runtime check that enables them.
//! - `reasons.rs`: the reason tables (built and applied), the path re-walk, top-k selection.
//!
//! # Safety
//!
//! The hot loops index without bounds checks. That is sound because of invariants established once
//! in [`CompiledForest::compile`] (after [`Forest::validate`](super::Forest::validate)) and never
//! changed afterwards (all fields are private and immutable): every index reachable by the step
//! rule is inside the group arrays, and every stored feature index is `< n_features`. Entry points
//! check the row length against `n_features` before walking.

mod avx512;
mod layout;
mod reasons;
#[cfg(test)]
mod tests;
mod walk;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::tree::{fold_lanes, SUM_LANES};
use avx512::vector_walk_supported;
use layout::{Group, Packing};
use reasons::{top_reasons, walk_contributions, ReasonTable};
use walk::{add_leaves, walk, CHUNK};

/// Number of trees walked in lock step. On the 100-tree, depth-12 benchmark model 16 chains beat 8
/// (more loads in flight to hide L2 latency, even though some indices spill to the stack) and 32
/// lose again (BENCHMARKS.md, "Figures moved from code comments (vigil-core)"). A final partial
/// group is walked with only 4 or 8 lanes so it does not pay for 16.
pub const GROUP: usize = 16;

/// Budget for a group's precomputed reason table, in `(feature, delta)` pairs per node of the
/// group. Realistic trees need far less (depth 12 on 36 features: ~5 pairs per node, since about
/// half the nodes are leaves with ~10 distinct features on their path); the cap only stops
/// degenerate deep trees from costing O(leaves x depth) memory (see the module docs).
pub const PATH_ENTRIES_PER_NODE: usize = 16;

/// Most features for which reason codes use dense per-leaf rows (one `f32` per feature, padded
/// to a multiple of 16) instead of sparse lists. A row costs 4 bytes per feature per leaf (about
/// three times a list at depth 12 and 43 features), but is added with a few vector instructions
/// instead of ~13 scattered read-modify-writes per tree, which made score + reasons of the
/// shipped model markedly faster (BENCHMARKS.md, "Figures moved from code comments
/// (vigil-core)"). Above this width rows would be mostly zeros, and lists are used.
pub const DENSE_MAX: usize = 128;

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
    /// Walk single rows with the AVX-512 gather walk (`avx512::walk_chunk`); set when the CPU
    /// has it.
    vector: bool,
    /// Width of the dense reason rows (a multiple of 16 >= `n_features`), 0 when the groups use
    /// sparse lists.
    dense_width: usize,
    /// Dense per-leaf contribution rows of every [`ReasonTable::DenseRows`] group,
    /// `dense_width` values each.
    rows: Box<[f32]>,
}

impl CompiledForest {
    /// Turns the AVX-512 single-row walk on or off (it is on by default where the CPU has it);
    /// returns whether it is now on. Results are bit-identical either way: this exists so tests
    /// and benchmarks can compare the two.
    pub fn set_vector_walk(&mut self, on: bool) -> bool {
        self.vector = on && vector_walk_supported();
        self.vector
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

    /// Fraud score of one row, bit-for-bit equal to [`Forest::predict`](super::Forest::predict).
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
        Ok(if self.dense_width > 0 {
            self.explain_dense(x, contrib)
        } else {
            self.explain_lists(x, contrib)
        })
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
                match &g.reasons {
                    ReasonTable::Lists(steps) => starts + std::mem::size_of_val(&**steps),
                    ReasonTable::DenseRows => starts,
                    ReasonTable::Rewalk => 0,
                }
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
