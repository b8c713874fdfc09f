//! Reason codes: how the per-feature contributions of a row are found, by one of three
//! strategies chosen per group when the forest is compiled ([`ReasonTable`], [`tabulate`]; the
//! [module documentation](super) says which forests get which), and the top-k selection of the
//! reasons shown to an analyst ([`top_reasons`]).
//!
//! Every table holds, per leaf, the sum of the value changes along its root-to-leaf path merged
//! by split feature (computed in `f64` by a depth-first walk, [`tree_leaf_paths`]); dense rows
//! and pair lists are two encodings of the same numbers.

use std::ops::Range;

use super::avx512;
use super::layout::{Group, NodeValue, PackedNode, Packing};
use super::walk::{add_leaves, step, CHUNK};
use super::{CompiledForest, Reason, DENSE_MAX, GROUP, PATH_ENTRIES_PER_NODE};
use crate::forest::tree::{fold_lanes, Tree, SUM_LANES};

/// How explain gets one group's contributions, decided once by [`tabulate`].
#[derive(Debug, Clone)]
pub(super) enum ReasonTable {
    /// Each leaf has a row of `CompiledForest::dense_width` contributions in
    /// `CompiledForest::rows`, whose index is the leaf's `path_start`: added with a few vector
    /// adds per tree.
    DenseRows,
    /// Each leaf has a list of `(feature, delta)` pairs in this array, from its `path_start` to
    /// the next node's: added pair by pair.
    Lists(Box<[PathStep]>),
    /// No table, because the group's lists would exceed [`PATH_ENTRIES_PER_NODE`] pairs per
    /// node: explain walks the group's paths again ([`walk_contributions`]).
    Rewalk,
}

/// The dense rows of a forest while it is compiled: `width` contributions per leaf (a multiple
/// of 16 covering the features), or `width == 0` when the forest has more than [`DENSE_MAX`]
/// features and uses lists.
pub(super) struct DenseRows {
    pub(super) width: usize,
    pub(super) rows: Vec<f32>,
}

/// One precomputed reason contribution: `delta` is the sum, over the splits on `feature` along a
/// root-to-leaf path, of the value change from the split node to its child on the path.
///
/// Packed to 6 bytes (from 8): the tables are read once per tree per explained row, from all
/// over memory, so their size is what costs. Fields are only ever copied out, never borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(2))]
pub(super) struct PathStep {
    pub(super) feature: u16,
    pub(super) delta: f32,
}

/// Builds the reason table of a group laid out by `layout::compile_group` (`order[k]` is the
/// `(tree, original node)` at group index `first + k`, `nodes` and `values` its arrays): sets
/// every node's `path_start` and pushes the sentinel value that ends the last list. Dense rows
/// go to `dense.rows` when the forest has them; a group whose lists would exceed the budget
/// gets no table, whichever encoding it would have used.
pub(super) fn tabulate(
    trees: &[Tree],
    order: &[(usize, usize)],
    first: usize,
    n_features: usize,
    nodes: &[PackedNode],
    values: &mut Vec<NodeValue>,
    dense: &mut DenseRows,
) -> ReasonTable {
    let table = match build_leaf_paths(trees, order, first, n_features) {
        Some(paths) if dense.width > 0 => {
            // One row per leaf (fillers included, never added), holding its list densely,
            // appended to the forest's rows. Row indices fit in u32: the tables are bounded by
            // the same budget as the lists they expand.
            let width = dense.width;
            let dense_rows = &mut dense.rows;
            for i in 0..nodes.len() {
                if !nodes[i].threshold.is_nan() {
                    continue;
                }
                let at = dense_rows.len();
                values[i].path_start = (at / width) as u32;
                dense_rows.resize(at + width, 0.0f32);
                let list = &paths.steps[paths.start[i] as usize..paths.start[i + 1] as usize];
                for step in list {
                    let PathStep { feature, delta } = *step;
                    dense_rows[at + feature as usize] += delta;
                }
            }
            ReasonTable::DenseRows
        }
        Some(paths) => {
            for (v, &start) in values.iter_mut().zip(&paths.start) {
                v.path_start = start;
            }
            ReasonTable::Lists(paths.steps.into_boxed_slice())
        }
        None => ReasonTable::Rewalk,
    };
    let end = match &table {
        ReasonTable::Lists(steps) => steps.len() as u32,
        ReasonTable::DenseRows | ReasonTable::Rewalk => 0,
    };
    values.push(NodeValue {
        value: 0.0,
        path_start: end,
    });
    table
}

/// A group's per-leaf lists as built: the list of the leaf at group node index `i` is
/// `steps[start[i]..start[i + 1]]` (empty for internal nodes and the two filler slots).
struct LeafPaths {
    start: Vec<u32>,
    steps: Vec<PathStep>,
}

/// The per-leaf lists of a group laid out by `layout::compile_group`: `order[k]` is the
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

impl CompiledForest {
    /// [`try_explain`](Self::try_explain) with per-leaf lists ([`ReasonTable::Lists`], and
    /// [`ReasonTable::Rewalk`] for groups over the budget). `x` and `contrib` have been checked;
    /// `contrib` is zeroed.
    pub(super) fn explain_lists(&self, x: &[f32], contrib: &mut [f32]) -> f32 {
        let mut lanes = [-0.0f32; SUM_LANES];
        // The lists of the previous chunk of groups. They are added one chunk late: their
        // first lines are prefetched as soon as the leaves are known, and the next chunk's walk
        // runs while they arrive (the tables are several MB, so most lists are cache misses).
        // Without the prefetch each list's miss stalls its loop, which made this slower than the
        // path re-walk (BENCHMARKS.md, "Figures moved from code comments (vigil-core)").
        type Pending<'a> = [(&'a [PathStep], [Range<usize>; GROUP], usize); CHUNK];
        let empty = || (&[][..], EMPTY_RANGES, 0);
        let mut pending: Pending = std::array::from_fn(|_| empty());
        let mut leaves = [[0u32; GROUP]; CHUNK];
        for chunk in self.groups.chunks(CHUNK) {
            // SAFETY: `x.len() == n_features` was checked by the caller (see `walk`).
            unsafe { self.walk_chunk(chunk, x, &mut leaves) };
            let mut current: Pending = std::array::from_fn(|_| empty());
            for ((g, l), cur) in chunk.iter().zip(&leaves).zip(current.iter_mut()) {
                add_leaves(g, l, &mut lanes);
                match &g.reasons {
                    ReasonTable::Lists(steps) => {
                        let ranges = list_ranges(g, l);
                        for r in &ranges[..g.n_trees] {
                            prefetch(steps, r);
                        }
                        *cur = (steps, ranges, g.n_trees);
                    }
                    ReasonTable::DenseRows | ReasonTable::Rewalk => {
                        walk_contributions(g, self.packing, x, contrib)
                    }
                }
            }
            for (steps, ranges, n) in std::mem::replace(&mut pending, current).iter() {
                // SAFETY: `contrib.len() == n_features` was checked by the caller.
                unsafe { add_lists(steps, &ranges[..*n], contrib) };
            }
        }
        for (steps, ranges, n) in pending.iter() {
            // SAFETY: `contrib.len() == n_features` was checked by the caller.
            unsafe { add_lists(steps, &ranges[..*n], contrib) };
        }
        let n = self.n_trees as f32;
        contrib.iter_mut().for_each(|c| *c /= n);
        fold_lanes(&lanes) / n
    }

    /// [`try_explain`](Self::try_explain) with dense rows ([`ReasonTable::DenseRows`], and
    /// [`ReasonTable::Rewalk`] for groups over the budget): the rows of a chunk's leaves are
    /// prefetched as soon as the walk has found them and added (a few vector adds each) one chunk
    /// later, while the next chunk walks. `x` and `contrib` have been checked; `contrib` is zeroed.
    pub(super) fn explain_dense(&self, x: &[f32], contrib: &mut [f32]) -> f32 {
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
                if !matches!(g.reasons, ReasonTable::DenseRows) {
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
}

const EMPTY_RANGES: [Range<usize>; GROUP] = [const { 0..0 }; GROUP];

/// The reason lists (ranges of the group's [`ReasonTable::Lists`]) of the leaves a walk reached.
/// Every lane has one, so the loads are independent and overlap; padding lanes get the filler
/// slot's empty list.
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
        unsafe { avx512::add_rows(rows, width, idx, acc) };
        return;
    }
    let _ = vector;
    add_rows_portable(rows, width, idx, acc);
}

/// Dispatches to [`add_rows_fixed`] for the row width (a multiple of 16, at most
/// [`DENSE_MAX`]).
#[inline(always)]
pub(super) fn add_rows_portable(rows: &[f32], width: usize, idx: &[u32], acc: &mut [f32]) {
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
///
/// Two sets of accumulators take alternate rows, so consecutive adds do not wait on each other
/// (a float add has a latency of several cycles; a hundred in a row would be the bottleneck).
#[inline(always)]
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
pub(super) fn walk_contributions(g: &Group, packing: Packing, x: &[f32], contrib: &mut [f32]) {
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

/// The (at most) `top` strictly positive contributions, largest first; ties go to the lower
/// feature index, so the output is deterministic. A selection in one pass (`top` is a handful),
/// not a sort of every feature.
pub(super) fn top_reasons(contrib: &[f32], top: usize) -> Vec<Reason> {
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
