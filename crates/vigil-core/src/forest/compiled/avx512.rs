//! The AVX-512 forms of the hot loops, and the runtime check that turns them on
//! ([`vector_walk_supported`]). Each computes exactly what its portable twin computes, with the
//! same additions in the same order, so results are bit-identical whichever runs (the tests and
//! `CompiledForest::set_vector_walk` compare the two).
//!
//! Every function here is `unsafe` for one shared reason besides its own contract: it may only
//! be called on a CPU with AVX-512F, which `CompiledForest::vector` records.

#[cfg(target_arch = "x86_64")]
use super::layout::{Group, NodeValue, PackedNode, Packing};
#[cfg(target_arch = "x86_64")]
use super::walk::CHUNK;
#[cfg(target_arch = "x86_64")]
use super::GROUP;
#[cfg(target_arch = "x86_64")]
use crate::forest::tree::SUM_LANES;

/// Whether this CPU can run the functions of this module (AVX-512F). Checked once, when a
/// forest is compiled.
pub(super) fn vector_walk_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`walk`](super::walk::walk) for up to [`CHUNK`] groups at once with AVX-512 gathers: all 16
/// lanes of a group take a step in a handful of vector instructions (two 64-bit gathers fetch the
/// 16 nodes, one 32-bit gather fetches the 16 feature values, a compare and a masked add pick the
/// children), and the groups' independent chains interleave. The step rule is the scalar one
/// (`!(x <= t)`, NaN goes right, leaves loop on themselves), so the leaves are the same.
///
/// # Safety
/// The CPU must support AVX-512F, `chunk.len() <= CHUNK`, and each group must satisfy `walk`'s
/// contract for `x` and `packing`: every index the step rule reaches is a node of its group
/// (below 2^31, so it is a valid gather offset), and every feature read is `< x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn walk_chunk(
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

/// [`add_leaves`](super::walk::add_leaves) (and the leaves' `path_start`s into `starts`) with two
/// masked gathers over the group's [`NodeValue`]s: lane `k < n_trees` adds
/// `values[leaves[k]].value` to `lanes[k]` (the same single addition per lane as the scalar loop,
/// so bit-identical); other lanes are neither read nor changed.
///
/// # Safety
/// The CPU must support AVX-512F, and `leaves[..g.n_trees]` must be node indices of `g` (what a
/// walk of `g` returns), so each gathered `NodeValue` is inside `g.values`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_leaves(
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

/// [`add_rows_portable`](super::reasons::add_rows_portable) compiled for AVX-512 (the loops
/// vectorise to one add per 16 features).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_rows(rows: &[f32], width: usize, idx: &[u32], acc: &mut [f32]) {
    super::reasons::add_rows_portable(rows, width, idx, acc);
}
