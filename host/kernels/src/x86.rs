//! AVX2 and AVX-512 VNNI kernels. Each processes one pair of blocks (64
//! weights) per iteration and dots it with `N` activation rows, so the
//! weights are unpacked once for up to eight sequences.
//!
//! Safety contract for every function here: the CPU supports the enabled
//! features, `w` and each `a[i]` hold at least `npairs` pairs of blocks.

use std::arch::x86_64::*;
use std::array;
use std::ptr::read_unaligned;

use crate::acts::{ActRow, BSUMS, SUPER};
use crate::matrix::{QMatrix, WeightRow};
use crate::{Isa, WeightFormat};

/// Bytes ahead of the weights being multiplied that the 32-weight kernels
/// prefetch (see [`PREFETCH_AHEAD`]: the same ~1 KB).
const PREFETCH_BYTES: usize = 1024;

/// Prefetches the cache line `PREFETCH_BYTES` past `p` (a pointer into a
/// weight row: past its end is harmless, a prefetch never faults).
#[inline(always)]
unsafe fn prefetch_ahead(p: *const u8) {
    // SAFETY: as `prefetch_super`'s.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8) }
}

/// Two `f16` scales at `p` widened to `[s0, s1, 0, 0]`.
#[inline(always)]
unsafe fn two_f16(p: *const half::f16) -> __m128 {
    // SAFETY: callers pass a pointer to two readable f16 values.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(read_unaligned(p as *const i32))) }
}

/// Two `f32` values at `p` as `[v0, v1, 0, 0]` (an unaligned 64-bit load).
#[inline(always)]
unsafe fn two_f32(p: *const f32) -> __m128 {
    // SAFETY: callers pass a pointer to two readable f32 values; `movq` has no
    // alignment requirement.
    unsafe { _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i)) }
}

#[inline(always)]
unsafe fn hsum128(v: __m128) -> f32 {
    // SAFETY: SSE3 is implied by every feature set this module is compiled for.
    unsafe {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    // SAFETY: AVX is implied by every feature set this module is compiled for.
    unsafe { hsum128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v))) }
}

/// `[s0 x 8, s1 x 8]` from `[s0, s1, _, _]`.
#[inline(always)]
unsafe fn spread_pair_512(s: __m128) -> __m512 {
    // SAFETY: AVX-512F is enabled by the callers.
    unsafe {
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q4_1_avx512<const N: usize>(w: WeightRow<'_>, a: [ActRow<'_>; N], npairs: usize) -> [f32; N] {
    // SAFETY: see the module's contract; every load is within the row slices.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_m = [_mm_setzero_ps(); N];
        for p in 0..npairs {
            prefetch_ahead(w.qs.as_ptr().wrapping_add(32 * p));
            let raw = _mm256_loadu_si256(w.qs.as_ptr().add(p * 32) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
            let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let dw = two_f16(w.d.as_ptr().add(2 * p));
            let mw = two_f16(w.m.as_ptr().add(2 * p));
            for n in 0..N {
                let av = _mm512_loadu_si512(a[n].qs.as_ptr().add(p * 64) as *const __m512i);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av);
                let scale = spread_pair_512(_mm_mul_ps(dw, two_f32(a[n].d.as_ptr().add(2 * p))));
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[n]);
                acc_m[n] = _mm_fmadd_ps(mw, two_f32(a[n].s.as_ptr().add(2 * p)), acc_m[n]);
            }
        }
        array::from_fn(|n| _mm512_reduce_add_ps(acc[n]) + hsum128(acc_m[n]))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q8_0_avx512<const N: usize>(w: WeightRow<'_>, a: [ActRow<'_>; N], npairs: usize) -> [f32; N] {
    // SAFETY: see the module's contract.
    unsafe {
        // VNNI multiplies u8 by i8: feed it `q + 128` and take `128 * sum(a)` back
        // out through the activation's exact `d * sum(q)`.
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_s = [_mm_setzero_ps(); N];
        for p in 0..npairs {
            prefetch_ahead(w.qs.as_ptr().wrapping_add(64 * p));
            let raw = _mm512_loadu_si512(w.qs.as_ptr().add(p * 64) as *const __m512i);
            let wv = _mm512_xor_si512(raw, flip);
            let dw = two_f16(w.d.as_ptr().add(2 * p));
            for n in 0..N {
                let av = _mm512_loadu_si512(a[n].qs.as_ptr().add(p * 64) as *const __m512i);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av);
                let scale = spread_pair_512(_mm_mul_ps(dw, two_f32(a[n].d.as_ptr().add(2 * p))));
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[n]);
                acc_s[n] = _mm_fmadd_ps(dw, two_f32(a[n].sum_d.as_ptr().add(2 * p)), acc_s[n]);
            }
        }
        array::from_fn(|n| _mm512_reduce_add_ps(acc[n]) - 128.0 * hsum128(acc_s[n]))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4_1_avx2<const N: usize>(w: WeightRow<'_>, a: [ActRow<'_>; N], npairs: usize) -> [f32; N] {
    // SAFETY: see the module's contract.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acc_m = [_mm_setzero_ps(); N];
        for p in 0..npairs {
            prefetch_ahead(w.qs.as_ptr().wrapping_add(32 * p));
            let raw = _mm256_loadu_si256(w.qs.as_ptr().add(p * 32) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
            let dw = two_f16(w.d.as_ptr().add(2 * p));
            let mw = two_f16(w.m.as_ptr().add(2 * p));
            for n in 0..N {
                let base = a[n].qs.as_ptr().add(p * 64);
                let a0 = _mm256_loadu_si256(base as *const __m256i);
                let a1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), ones);
                let s = _mm_mul_ps(dw, two_f32(a[n].d.as_ptr().add(2 * p)));
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcastss_ps(s), acc[n]);
                let s1 = _mm256_broadcastss_ps(_mm_movehdup_ps(s));
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), s1, acc[n]);
                acc_m[n] = _mm_fmadd_ps(mw, two_f32(a[n].s.as_ptr().add(2 * p)), acc_m[n]);
            }
        }
        array::from_fn(|n| hsum256(acc[n]) + hsum128(acc_m[n]))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q8_0_avx2<const N: usize>(w: WeightRow<'_>, a: [ActRow<'_>; N], npairs: usize) -> [f32; N] {
    // SAFETY: see the module's contract.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..2 * npairs {
            prefetch_ahead(w.qs.as_ptr().wrapping_add(32 * b));
            let wv = _mm256_loadu_si256(w.qs.as_ptr().add(b * 32) as *const __m256i);
            // maddubs wants u8 x i8: move w's sign onto a (|q| <= 127, no saturation).
            let w_abs = _mm256_sign_epi8(wv, wv);
            let dw = w.d[b].to_f32();
            for n in 0..N {
                let av = _mm256_loadu_si256(a[n].qs.as_ptr().add(b * 32) as *const __m256i);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(av, wv)), ones);
                let scale = _mm256_set1_ps(dw * *a[n].d.get_unchecked(b));
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[n]);
            }
        }
        array::from_fn(|n| hsum256(acc[n]))
    }
}

/// Four `f16` scales at `p` widened to `[s0, s1, s2, s3]`.
#[inline(always)]
unsafe fn four_f16(p: *const half::f16) -> __m128 {
    // SAFETY: callers pass a pointer to four readable f16 values.
    unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) }
}

/// `Bytes16`: `i8` weights with a scale per 16. `sign` moves each weight's sign
/// onto the activation so `|w|` can be the unsigned operand (|w| <= 32 here, so
/// no pair sum saturates), and the 32-bit lanes then hold 4-weight sums that
/// never straddle a half: lanes `4k..4k+4` are half `k` of the pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn bytes16_avx512<const N: usize>(w: WeightRow<'_>, a: [ActRow<'_>; N], npairs: usize) -> [f32; N] {
    // SAFETY: see the module's contract; `w.d` holds four scales per pair.
    unsafe {
        let spread4 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let has_m = !w.m.is_empty();
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_m = [_mm_setzero_ps(); N];
        for p in 0..npairs {
            prefetch_ahead(w.qs.as_ptr().wrapping_add(64 * p));
            let wv = _mm512_loadu_si512(w.qs.as_ptr().add(p * 64) as *const __m512i);
            let w_abs = _mm512_abs_epi8(wv);
            let negative = _mm512_movepi8_mask(wv);
            let dw = _mm512_permutexvar_ps(spread4, _mm512_castps128_ps512(four_f16(w.d.as_ptr().add(4 * p))));
            let mw = if has_m { two_f16(w.m.as_ptr().add(2 * p)) } else { _mm_setzero_ps() };
            for n in 0..N {
                let av = _mm512_loadu_si512(a[n].qs.as_ptr().add(p * 64) as *const __m512i);
                let signed = _mm512_mask_sub_epi8(av, negative, _mm512_setzero_si512(), av);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w_abs, signed);
                let scale = _mm512_mul_ps(dw, spread_pair_512(two_f32(a[n].d.as_ptr().add(2 * p))));
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[n]);
                acc_m[n] = _mm_fmadd_ps(mw, two_f32(a[n].s.as_ptr().add(2 * p)), acc_m[n]);
            }
        }
        array::from_fn(|n| _mm512_reduce_add_ps(acc[n]) + hsum128(acc_m[n]))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bytes16_avx2<const N: usize>(w: WeightRow<'_>, a: [ActRow<'_>; N], npairs: usize) -> [f32; N] {
    // SAFETY: see the module's contract; `w.d` holds four scales per pair.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let (first, second) = (_mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0), _mm256_set_epi32(3, 3, 3, 3, 2, 2, 2, 2));
        let has_m = !w.m.is_empty();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acc_m = [_mm_setzero_ps(); N];
        for p in 0..npairs {
            prefetch_ahead(w.qs.as_ptr().wrapping_add(64 * p));
            let w0 = _mm256_loadu_si256(w.qs.as_ptr().add(p * 64) as *const __m256i);
            let w1 = _mm256_loadu_si256(w.qs.as_ptr().add(p * 64 + 32) as *const __m256i);
            let (abs0, abs1) = (_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(w1, w1));
            let d4 = _mm256_castps128_ps256(four_f16(w.d.as_ptr().add(4 * p)));
            let (dw0, dw1) = (_mm256_permutevar8x32_ps(d4, first), _mm256_permutevar8x32_ps(d4, second));
            let mw = if has_m { two_f16(w.m.as_ptr().add(2 * p)) } else { _mm_setzero_ps() };
            for n in 0..N {
                let base = a[n].qs.as_ptr().add(p * 64);
                let a0 = _mm256_loadu_si256(base as *const __m256i);
                let a1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(abs0, _mm256_sign_epi8(a0, w0)), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(abs1, _mm256_sign_epi8(a1, w1)), ones);
                let da = two_f32(a[n].d.as_ptr().add(2 * p));
                let s0 = _mm256_mul_ps(dw0, _mm256_broadcastss_ps(da));
                let s1 = _mm256_mul_ps(dw1, _mm256_broadcastss_ps(_mm_movehdup_ps(da)));
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), s0, acc[n]);
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), s1, acc[n]);
                acc_m[n] = _mm_fmadd_ps(mw, two_f32(a[n].s.as_ptr().add(2 * p)), acc_m[n]);
            }
        }
        array::from_fn(|n| hsum256(acc[n]) + hsum128(acc_m[n]))
    }
}

/// `Q6_K`: a pair's 64 unsigned 6-bit weights as two registers of
/// bytes, block 0 then block 1. `qh` byte `j` holds the top bits of weights
/// `j`, `16 + j`, `32 + j`, `48 + j`: shifting each 128-bit lane by its own
/// count (0/2 for block 0, 4/6 for block 1) lines them up with the nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_six_bits(qs: *const u8, qh: *const u8) -> (__m256i, __m256i) {
    // SAFETY: callers pass 32 readable bytes at `qs` and 16 at `qh`.
    unsafe {
        let mask4 = _mm256_set1_epi8(0x0F);
        let mask2 = _mm256_set1_epi8(0x03);
        let raw = _mm256_loadu_si256(qs as *const __m256i);
        let high = _mm256_broadcastsi128_si256(_mm_loadu_si128(qh as *const __m128i));
        let h0 = _mm256_and_si256(_mm256_srlv_epi32(high, _mm256_set_epi32(2, 2, 2, 2, 0, 0, 0, 0)), mask2);
        let h1 = _mm256_and_si256(_mm256_srlv_epi32(high, _mm256_set_epi32(6, 6, 6, 6, 4, 4, 4, 4)), mask2);
        let w0 = _mm256_or_si256(_mm256_and_si256(raw, mask4), _mm256_slli_epi16::<4>(h0));
        let w1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask4), _mm256_slli_epi16::<4>(h1));
        (w0, w1)
    }
}

/// The `Super` layout's pair `p` (weights `64 p..64 p + 64`) of super-block
/// `s`, as two registers of unsigned bytes: 32-weight block `2 p`, then `2 p + 1`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_super<const BITS: u8>(w: WeightRow<'_>, s: usize, p: usize) -> (__m256i, __m256i) {
    // SAFETY: callers pass `s` within the row's super-blocks and `p < 4`.
    unsafe {
        let pair = 4 * s + p;
        if BITS == 6 {
            return unpack_six_bits(w.qs.as_ptr().add(32 * pair), w.qh.as_ptr().add(16 * pair));
        }
        let mask4 = _mm256_set1_epi8(0x0F);
        let raw = _mm256_loadu_si256(w.qs.as_ptr().add(32 * pair) as *const __m256i);
        let (lo, hi) = (_mm256_and_si256(raw, mask4), _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask4));
        if BITS == 4 {
            return (lo, hi);
        }
        // Q5_K: bit `j` of `qh` byte `l` tops weight `l` of block `j`; shift
        // bits `2 p` and `2 p + 1` into place as bit 4 of each byte.
        let bit4 = _mm256_set1_epi8(0x10);
        let qh = _mm256_loadu_si256(w.qh.as_ptr().add(32 * s) as *const __m256i);
        let shifted = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32));
        let lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(shifted), bit4));
        let hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(shifted), bit4));
        (lo, hi)
    }
}

/// Super-blocks ahead of the one being multiplied whose weights are
/// prefetched: the hardware prefetcher alone leaves a single-sequence step
/// (one weight row at a time, little work per byte) at ~19 GB/s where the
/// memory delivers ~46; 8 ahead (~1.2 KB) measured best (28 GB/s, `Q4_K`).
const PREFETCH_AHEAD: usize = 8;

/// Asks for super-block `s`'s weight bytes (`qs`, `qh`) to be brought to L1.
/// `s` may lie past the row (the next row's, or nothing: a prefetch never faults).
#[inline(always)]
unsafe fn prefetch_super<const BITS: u8>(w: WeightRow<'_>, s: usize) {
    // SAFETY: prefetches of any address are architecturally harmless; the
    // pointers are formed with `wrapping_add`, never dereferenced.
    unsafe {
        let qs = w.qs.as_ptr().wrapping_add(128 * s);
        _mm_prefetch::<_MM_HINT_T0>(qs as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(qs.wrapping_add(64) as *const i8);
        if BITS != 4 {
            let per = if BITS == 6 { 64 } else { 32 };
            _mm_prefetch::<_MM_HINT_T0>(w.qh.as_ptr().wrapping_add(per * s) as *const i8);
        }
    }
}

/// `vpermw` indices giving each 16-bit lane of pair `p`'s products its
/// sub-scale: one per 32 weights (`Q4_K`, `Q5_K`) or per 16 (`Q6_K`).
const fn scale_lanes(bits: u8, p: usize) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        idx[i] = if bits == 6 { 4 * p + i / 8 } else { 2 * p + i / 16 } as i16;
        i += 1;
    }
    idx
}

static SCALE_LANES: [[[i16; 32]; 4]; 2] = [
    [scale_lanes(4, 0), scale_lanes(4, 1), scale_lanes(4, 2), scale_lanes(4, 3)],
    [scale_lanes(6, 0), scale_lanes(6, 1), scale_lanes(6, 2), scale_lanes(6, 3)],
];

/// A super-block's sixteen sub-scales as `i16` (`Q6_K`'s are signed).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn super_scales<const BITS: u8>(w: WeightRow<'_>, s: usize) -> __m256i {
    // SAFETY: callers pass `s` within the row's super-blocks (16 bytes each).
    unsafe {
        let raw = _mm_loadu_si128(w.sc.as_ptr().add(16 * s) as *const __m128i);
        if BITS == 6 { _mm256_cvtepi8_epi16(raw) } else { _mm256_cvtepu8_epi16(raw) }
    }
}

/// `Super` x super-block activations (see `scalar::super_blocks` for the
/// arithmetic). Per pair and row: `maddubs` (unsigned weights x signed
/// activations, at most 2 * 63 * 127 a lane: no saturation) and `vpdpwssd`
/// with the lanes' sub-scales, so a super-block stays in `i32` (at most
/// 2^24 a lane) until one conversion.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn super_avx512<const N: usize, const BITS: u8>(w: WeightRow<'_>, a: [ActRow<'_>; N], nsb: usize) -> [f32; N] {
    // SAFETY: see the module's contract; each row holds `nsb` super-blocks.
    unsafe {
        let lanes = &SCALE_LANES[usize::from(BITS == 6)];
        let idx: [__m512i; 4] = array::from_fn(|p| _mm512_loadu_si512(lanes[p].as_ptr() as *const __m512i));
        let mut acc = [_mm512_setzero_ps(); N];
        for s in 0..nsb {
            prefetch_super::<BITS>(w, s + PREFETCH_AHEAD);
            let sc = super_scales::<BITS>(w, s);
            let sc512 = _mm512_castsi256_si512(sc);
            let mut dot = [_mm512_setzero_si512(); N];
            for (p, idx) in idx.iter().enumerate() {
                let (w0, w1) = unpack_super::<BITS>(w, s, p);
                let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1);
                let scales = _mm512_permutexvar_epi16(*idx, sc512);
                for n in 0..N {
                    let av = _mm512_loadu_si512(a[n].qs.as_ptr().add(256 * s + 64 * p) as *const __m512i);
                    dot[n] = dpwssd(dot[n], _mm512_maddubs_epi16(wv, av), scales);
                }
            }
            let dd = two_f16(w.d.as_ptr().add(2 * s));
            let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
            for n in 0..N {
                let da = *a[n].sd.get_unchecked(s);
                let bsums = a[n].bsums.as_ptr().add(BSUMS * s);
                if BITS == 6 {
                    let offset = _mm256_madd_epi16(sc, _mm256_loadu_si256(bsums as *const __m256i));
                    dot[n] = _mm512_sub_epi32(dot[n], _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(offset)));
                }
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[n]), _mm512_set1_ps(d * da), acc[n]);
                if BITS != 6 {
                    let mins = _mm256_extracti128_si256::<1>(sc);
                    let m = _mm_madd_epi16(mins, _mm_loadu_si128(bsums.add(16) as *const __m128i));
                    let m = _mm512_zextps128_ps512(_mm_cvtepi32_ps(m));
                    acc[n] = _mm512_fnmadd_ps(m, _mm512_set1_ps(dmin * da), acc[n]);
                }
            }
        }
        array::from_fn(|n| _mm512_reduce_add_ps(acc[n]))
    }
}

/// `acc + (pairwise i16 products of a and b, summed into i32 lanes)`, as one
/// `vpdpwssd`. Written as assembly because LLVM splits the intrinsic into
/// `vpmaddwd` + `vpaddd` for CPUs it does not know to have a fast one (any
/// build without `-C target-cpu`): a third more instructions in the
/// prefill's inner loop, measured ~8% slower on AMD Zen 4 (64 rows, `Q4_K`).
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    // SAFETY: callers are compiled with AVX-512 VNNI; the instruction only
    // reads and writes the named registers.
    unsafe {
        std::arch::asm!("vpdpwssd {acc}, {a}, {b}", acc = inout(zmm_reg) acc, a = in(zmm_reg) a, b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `pshufb` masks repeating one 16-bit lane of each 128-bit half: `same(j)`
/// lane `j` in both halves, `pair(k)` lane `k` in the low half and `k + 1`
/// in the high.
const fn lane_mask(low: usize, high: usize) -> [u8; 32] {
    let mut m = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let lane = if i < 16 { low } else { high };
        m[i] = (2 * lane + i % 2) as u8;
        i += 1;
    }
    m
}

static SAME_LANE: [[u8; 32]; 8] = [
    lane_mask(0, 0),
    lane_mask(1, 1),
    lane_mask(2, 2),
    lane_mask(3, 3),
    lane_mask(4, 4),
    lane_mask(5, 5),
    lane_mask(6, 6),
    lane_mask(7, 7),
];
static LANE_PAIR: [[u8; 32]; 4] = [lane_mask(0, 1), lane_mask(2, 3), lane_mask(4, 5), lane_mask(6, 7)];

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn super_avx2<const N: usize, const BITS: u8>(w: WeightRow<'_>, a: [ActRow<'_>; N], nsb: usize) -> [f32; N] {
    // SAFETY: see the module's contract; each row holds `nsb` super-blocks.
    unsafe {
        let mask = |m: &[u8; 32]| _mm256_loadu_si256(m.as_ptr() as *const __m256i);
        let mut acc = [_mm256_setzero_ps(); N];
        for s in 0..nsb {
            prefetch_super::<BITS>(w, s + PREFETCH_AHEAD);
            let sc = super_scales::<BITS>(w, s);
            let low = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc));
            let high = _mm256_broadcastsi128_si256(_mm256_extracti128_si256::<1>(sc));
            let mut dot = [_mm256_setzero_si256(); N];
            for p in 0..4 {
                let (w0, w1) = unpack_super::<BITS>(w, s, p);
                // The sub-scale of each 16-bit product lane of `w0` and `w1`.
                let (s0, s1) = if BITS == 6 {
                    // Lanes of 16 weights: `4 p .. 4 p + 4`, eight per source half.
                    let src = if p < 2 { low } else { high };
                    let k = (2 * p) % 4;
                    (_mm256_shuffle_epi8(src, mask(&LANE_PAIR[k])), _mm256_shuffle_epi8(src, mask(&LANE_PAIR[k + 1])))
                } else {
                    (
                        _mm256_shuffle_epi8(low, mask(&SAME_LANE[2 * p])),
                        _mm256_shuffle_epi8(low, mask(&SAME_LANE[2 * p + 1])),
                    )
                };
                for n in 0..N {
                    let base = a[n].qs.as_ptr().add(256 * s + 64 * p);
                    let a0 = _mm256_loadu_si256(base as *const __m256i);
                    let a1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, a0), s0);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, a1), s1);
                    dot[n] = _mm256_add_epi32(dot[n], _mm256_add_epi32(p0, p1));
                }
            }
            let dd = two_f16(w.d.as_ptr().add(2 * s));
            let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
            for n in 0..N {
                let da = *a[n].sd.get_unchecked(s);
                let bsums = a[n].bsums.as_ptr().add(BSUMS * s);
                if BITS == 6 {
                    let offset = _mm256_madd_epi16(sc, _mm256_loadu_si256(bsums as *const __m256i));
                    dot[n] = _mm256_sub_epi32(dot[n], _mm256_slli_epi32::<5>(offset));
                }
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[n]), _mm256_set1_ps(d * da), acc[n]);
                if BITS != 6 {
                    let mins = _mm256_extracti128_si256::<1>(sc);
                    let m = _mm_madd_epi16(mins, _mm_loadu_si128(bsums.add(16) as *const __m128i));
                    let m = _mm256_zextps128_ps256(_mm_cvtepi32_ps(m));
                    acc[n] = _mm256_fnmadd_ps(m, _mm256_set1_ps(dmin * da), acc[n]);
                }
            }
        }
        array::from_fn(|n| hsum256(acc[n]))
    }
}

/// Row loops around the per-row kernels, compiled with the same features so
/// the kernel inlines and the ISA dispatch happens once per product, not per row.
macro_rules! row_loop {
    ($name:ident, $kernel:ident, $features:literal) => {
        /// Writes `out[i * stride + r]` for every row `r` in `rows` and activation `i`.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name<const N: usize>(
            w: &QMatrix,
            rows: std::ops::Range<usize>,
            a: [ActRow<'_>; N],
            out: *mut f32,
            stride: usize,
        ) {
            let npairs = w.nb() / 2;
            for r in rows {
                // SAFETY: the caller guarantees the features, the row range and
                // that `out` is valid for `N` rows of `stride` values.
                unsafe {
                    let res = $kernel::<N>(w.row(r), a, npairs);
                    for (i, v) in res.iter().enumerate() {
                        *out.add(i * stride + r) = *v;
                    }
                }
            }
        }
    };
}

row_loop!(q4_1_rows_avx512, q4_1_avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
row_loop!(q8_0_rows_avx512, q8_0_avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
row_loop!(q4_1_rows_avx2, q4_1_avx2, "avx2,fma,f16c");
row_loop!(q8_0_rows_avx2, q8_0_avx2, "avx2,fma,f16c");
row_loop!(bytes16_rows_avx512, bytes16_avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
row_loop!(bytes16_rows_avx2, bytes16_avx2, "avx2,fma,f16c");

/// The `Super` kernels' row loops, one per instruction set and bit width.
macro_rules! super_row_loop {
    ($name:ident, $kernel:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const N: usize, const BITS: u8>(
            w: &QMatrix,
            rows: std::ops::Range<usize>,
            a: [ActRow<'_>; N],
            out: *mut f32,
            stride: usize,
        ) {
            let nsb = w.cols() / SUPER;
            for r in rows {
                // SAFETY: as `row_loop!`'s.
                unsafe {
                    let res = $kernel::<N, BITS>(w.row(r), a, nsb);
                    for (i, v) in res.iter().enumerate() {
                        *out.add(i * stride + r) = *v;
                    }
                }
            }
        }
    };
}

super_row_loop!(super_rows_avx512, super_avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
super_row_loop!(super_rows_avx2, super_avx2, "avx2,fma,f16c");

/// `Super` rows on `isa` (AVX2 or AVX-512), for the matrix's K-quant format.
///
/// # Safety
/// As the row loops': the CPU supports `isa`, `rows` are rows of `w` and
/// `out` is valid for `N` rows of `stride` values.
pub(crate) unsafe fn super_rows<const N: usize>(
    isa: Isa,
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    a: [ActRow<'_>; N],
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (isa == Isa::Avx512Vnni, w.format()) {
            (true, WeightFormat::Q4K) => super_rows_avx512::<N, 4>(w, rows, a, out, stride),
            (true, WeightFormat::Q5K) => super_rows_avx512::<N, 5>(w, rows, a, out, stride),
            (true, _) => super_rows_avx512::<N, 6>(w, rows, a, out, stride),
            (false, WeightFormat::Q4K) => super_rows_avx2::<N, 4>(w, rows, a, out, stride),
            (false, WeightFormat::Q5K) => super_rows_avx2::<N, 5>(w, rows, a, out, stride),
            (false, _) => super_rows_avx2::<N, 6>(w, rows, a, out, stride),
        }
    }
}
