//! The portable walks: one row through a group's trees in lock step ([`walk`]), and
//! [`CompiledForest::score_block`], a block of rows through one tree at a time. The AVX-512 form
//! of the single-row walk is in [`super::avx512`]; [`CompiledForest::walk_chunk`] picks one.

use super::avx512;
use super::layout::{Group, PackedNode, Packing};
use super::{CompiledForest, GROUP};
use crate::forest::tree::{fold_lanes, SUM_LANES};

/// Rows walked in lock step by [`CompiledForest::score_batch`] (which goes tree by tree).
pub(super) const BATCH_LANES: usize = 8;

/// Groups whose walks run interleaved in the vector walk: their chains of dependent gathers are
/// independent, so the CPU overlaps them.
pub(super) const CHUNK: usize = 8;

/// One branch-free step: the left child, or the right one (`left + 1`) unless `v <= threshold`.
/// Written as `!(v <= t)` so NaN inputs go right like in
/// [`Tree::predict`](crate::forest::Tree::predict), and so a leaf's NaN threshold always adds 1
/// (its `left` is `self - 1`).
#[inline(always)]
pub(super) fn step(node: PackedNode, packing: Packing, v: f32) -> u32 {
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // deliberate: NaN must go right
    let right = !(v <= node.threshold);
    // Cannot overflow: `left + 1` of an internal node is a valid index (`layout::compile_group`).
    packing.left(node.word) + right as u32
}

/// Walks all lanes of a group to their leaves and returns the leaf indices.
///
/// # Safety
///
/// `x.len()` must equal the `n_features` of the forest the group was compiled from, and
/// `packing` must be the one it was compiled with. Given that, every access is in bounds by the
/// invariants `layout::compile_group` establishes: roots and every `left`/`left + 1` of an internal
/// node index into the group arrays, a leaf steps to itself, internal nodes' features are
/// `< n_features`, and leaves' feature 0 is only read when the group has depth > 0, i.e. has an
/// internal node, so `n_features >= 1`.
#[inline(always)]
pub(super) unsafe fn walk(g: &Group, packing: Packing, x: &[f32]) -> [u32; GROUP] {
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

/// Adds the real lanes' leaf values to their partial sums (lane `k` of a group is tree
/// `GROUP * g + k`, and `GROUP == SUM_LANES`: the order of
/// [`Forest::predict`](crate::forest::Forest::predict)).
#[inline(always)]
pub(super) fn add_leaves(g: &Group, leaves: &[u32; GROUP], lanes: &mut [f32; SUM_LANES]) {
    const _: () = assert!(GROUP == SUM_LANES);
    for (sum, &leaf) in lanes.iter_mut().zip(&leaves[..g.n_trees]) {
        // Bounds-checked on purpose: `n_trees` values, negligible next to the walk.
        *sum += g.values[leaf as usize].value;
    }
}

impl CompiledForest {
    /// The leaves a row reaches in each group of `chunk` (at most [`CHUNK`] consecutive groups
    /// of this forest), into `out[..chunk.len()]`.
    ///
    /// # Safety
    /// `x.len()` must be `n_features` (see [`walk`]).
    #[inline(always)]
    pub(super) unsafe fn walk_chunk(
        &self,
        chunk: &[Group],
        x: &[f32],
        out: &mut [[u32; GROUP]; CHUNK],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.vector {
            // SAFETY: `vector` is only set when the CPU has AVX-512F; the rest is `walk`'s
            // contract, forwarded.
            unsafe { avx512::walk_chunk(chunk, self.packing, x, out) };
            return;
        }
        for (g, o) in chunk.iter().zip(out.iter_mut()) {
            // SAFETY: forwarded contract.
            *o = unsafe { walk(g, self.packing, x) };
        }
    }

    /// [`add_leaves`] for one group's walk, and with `starts` each real lane's `path_start`
    /// (its reason row or list). On AVX-512 both come from two masked gathers instead of a
    /// bounds-checked scalar load and add per tree, which pays even when every line is in cache
    /// (BENCHMARKS.md, "Figures moved from code comments (vigil-core)"). The sums are the same
    /// lane-wise additions in the same order, so results are bit-identical.
    #[inline(always)]
    pub(super) fn add_leaves(
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
            unsafe { avx512::add_leaves(g, leaves, lanes, starts) };
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

    /// Writes each row's sum of leaf values into `out` (one slot per row of the row-major
    /// `flat`), summed in the shared lane order (bit-equal to [`score`](Self::score)).
    ///
    /// Tree-major with [`BATCH_LANES`] rows walked in lock step: one tree's nodes (~10 KiB for
    /// ~1.4k nodes) stay in L1 while all the block's rows go through it, and the lanes give the
    /// same instruction-level parallelism as interleaving trees does for a single row.
    pub(super) fn score_block(&self, flat: &[f32], out: &mut [f32]) {
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
}
