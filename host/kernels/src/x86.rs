//! AVX2 and AVX-512 VNNI kernels. Each processes one pair of blocks (64
//! weights) per iteration and dots it with `N` activation rows, so the
//! weights are unpacked once for up to eight sequences.
//!
//! Safety contract for every function here: the CPU supports the enabled
//! features, `w` and each `a[i]` hold at least `npairs` pairs of blocks.

use std::arch::x86_64::*;
use std::array;
use std::ptr::read_unaligned;

use crate::acts::ActRow;
use crate::matrix::{QMatrix, WeightRow};

/// Bytes ahead of the weights being multiplied that the 32-weight kernels
/// prefetch (the K-quant kernels' `PREFETCH_AHEAD` is the same ~1 KB).
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
pub(crate) unsafe fn two_f16(p: *const half::f16) -> __m128 {
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
pub(crate) unsafe fn hsum128(v: __m128) -> f32 {
    // SAFETY: SSE3 is implied by every feature set this module is compiled for.
    unsafe {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[inline(always)]
pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
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
