//! AVX2 and AVX-512 VNNI kernels for the K-quants' `Super` layout, one
//! super-block (256 weights) per iteration dotted with `N` activation rows.
//!
//! Weights and activations share the [`super_slot`](crate::acts::super_slot)
//! order: 32-bit lane `j` of every 64-byte group holds values of 16-value
//! sub-block `j`. So the integer products of a whole super-block accumulate
//! lane by lane (four `vpdpbusd` on AVX-512; on AVX2 `pmaddubsw` sums kept in
//! `i16`) and each lane meets its sub-scale once per super-block, where a
//! row-major order needs a scale multiply per 64 weights. llama.cpp gets the
//! same saving by interleaving eight rows (`ggml_gemm_q4_K_8x8_q8_K`); this
//! order keeps rows apart, so one layout serves every batch size.
//!
//! Safety contract: as `x86`'s; each row and activation row holds `nsb`
//! super-blocks.

use std::arch::x86_64::*;
use std::array;

use crate::acts::{ActRow, BSUMS, SUPER};
use crate::matrix::{QMatrix, WeightRow};
use crate::records::Record;
use crate::x86::{hsum256, two_f16};
use crate::{Isa, WeightFormat};

/// Super-blocks ahead of the one being multiplied whose weights are
/// prefetched: the hardware prefetcher alone leaves a single-sequence step
/// (one weight row at a time, little work per byte) at ~19 GB/s where the
/// memory delivers ~46; 8 ahead (~1.2 KB) measured best (28 GB/s, `Q4_K`).
const PREFETCH_AHEAD: usize = 8;

/// The `Super` record of `BITS`-bit weights.
const fn record(bits: u8) -> Record {
    Record::with_top_bytes(match bits {
        5 => 32,
        6 => 64,
        _ => 0,
    })
}

/// Asks for record `s`'s cache lines to be brought to L1. `s` may lie past
/// the row (the next row's, or nothing: a prefetch never faults).
#[inline(always)]
unsafe fn prefetch_super<const BITS: u8>(w: WeightRow<'_>, s: usize) {
    // SAFETY: prefetches of any address are architecturally harmless; the
    // pointers are formed with `wrapping_add`, never dereferenced.
    unsafe {
        let len = record(BITS).len;
        let at = w.qs.as_ptr().wrapping_add(len * s);
        // Records follow each other: one prefetch per 64 bytes of record
        // covers every line over the row.
        let mut off = 0;
        while off < len {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off) as *const i8);
            off += 64;
        }
    }
}

/// Record `s`'s first byte.
#[inline(always)]
unsafe fn rec_at<const BITS: u8>(w: WeightRow<'_>, s: usize) -> *const u8 {
    // SAFETY: callers pass `s` within the row's records.
    unsafe { w.qs.as_ptr().add(record(BITS).len * s) }
}

/// Where the top bits of group `g`'s quarter `h` (32 values) sit in `qh`
/// (see [`crate::records`]): the 32-byte row's offset in the record's top
/// bits and the bit shift.
const fn top_bits(bits: u8, g: usize, h: usize) -> (usize, u32) {
    let quarter = 2 * g + h;
    if bits == 5 { (0, quarter as u32) } else { (32 * (g / 2), 2 * (quarter % 4) as u32) }
}

/// The top-bit mask of each value byte once shifted into bit 4 up.
const fn top_mask(bits: u8) -> i8 {
    if bits == 5 { 0x10 } else { 0x30 }
}

/// Groups `2c` and `2c + 1` of super-block `s` as unsigned bytes (64 each).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn groups_512<const BITS: u8>(w: WeightRow<'_>, s: usize, c: usize) -> [__m512i; 2] {
    // SAFETY: callers pass `s` within the row's super-blocks and `c < 2`.
    unsafe {
        let mask4 = _mm512_set1_epi8(0x0F);
        let rec = rec_at::<BITS>(w, s);
        let raw = _mm512_loadu_si512(rec.add(64 * c) as *const __m512i);
        let groups = [_mm512_and_si512(raw, mask4), _mm512_and_si512(_mm512_srli_epi16::<4>(raw), mask4)];
        if BITS == 4 {
            return groups;
        }
        array::from_fn(|i| {
            let g = 2 * c + i;
            let ((row, lo), (_, hi)) = (top_bits(BITS, g, 0), top_bits(BITS, g, 1));
            // Both quarters read the same 32-byte row, each at its own shift.
            let qh = _mm256_loadu_si256(rec.add(record(BITS).qh + row) as *const __m256i);
            let qh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), qh);
            let counts = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set1_epi16(lo as i16)),
                _mm256_set1_epi16(hi as i16),
            );
            let top = _mm512_slli_epi16::<4>(_mm512_srlv_epi16(qh, counts));
            _mm512_or_si512(groups[i], _mm512_and_si512(top, _mm512_set1_epi8(top_mask(BITS))))
        })
    }
}

/// `acc + (the four products of each lane's unsigned bytes of `w` and signed
/// bytes of `a`, summed)`, as one `vpdpbusd` (assembly, as `x86::dpwssd` was:
/// LLVM may lower the intrinsic otherwise for CPUs it does not know).
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dpbusd(acc: __m512i, w: __m512i, a: __m512i) -> __m512i {
    let mut acc = acc;
    // SAFETY: callers are compiled with AVX-512 VNNI; the instruction only
    // reads and writes the named registers.
    unsafe {
        std::arch::asm!("vpdpbusd {acc}, {w}, {a}", acc = inout(zmm_reg) acc, w = in(zmm_reg) w, a = in(zmm_reg) a,
            options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// Per super-block, weight row and activation row: four `vpdpbusd` leave
/// lane `j` with sub-block `j`'s integer dot product (at most 16 * 63 * 128
/// = 2^17, exact in `f32`), converted once and multiplied by `d` times its
/// sub-scale. `R` weight rows at a time share each activation load.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn super_avx512<const R: usize, const N: usize, const BITS: u8>(
    w: [WeightRow<'_>; R],
    a: [ActRow<'_>; N],
    nsb: usize,
) -> [[f32; N]; R] {
    // SAFETY: see the module's contract.
    unsafe {
        // Lane `j` of `Q4_K` / `Q5_K`'s scales: their 32-value sub-block `j / 2`.
        let pairs = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for s in 0..nsb {
            for w in w {
                prefetch_super::<BITS>(w, s + PREFETCH_AHEAD);
            }
            let mut dot = [[_mm512_setzero_si512(); N]; R];
            for c in 0..2 {
                let g: [[__m512i; 2]; R] = array::from_fn(|r| groups_512::<BITS>(w[r], s, c));
                for n in 0..N {
                    let base = a[n].qs.as_ptr().add(SUPER * s + 128 * c);
                    let (a0, a1) = (
                        _mm512_loadu_si512(base as *const __m512i),
                        _mm512_loadu_si512(base.add(64) as *const __m512i),
                    );
                    for r in 0..R {
                        dot[r][n] = dpbusd(dpbusd(dot[r][n], g[r][0], a0), g[r][1], a1);
                    }
                }
            }
            // Per row: `d * sub-scale` per lane, and what each of `sums` takes
            // off: `Q6_K`'s `32 d * scale` per 16, `Q4_K` / `Q5_K`'s
            // `dmin * min` per 32 (upper lanes zero, as the 8 sums' load leaves them).
            let scaled: [(__m512, __m512); R] = array::from_fn(|r| {
                let rec = rec_at::<BITS>(w[r], s);
                let raw = _mm_loadu_si128(rec.add(record(BITS).sc) as *const __m128i);
                let dd = two_f16(rec.add(record(BITS).d) as *const half::f16);
                let scales = if BITS == 6 {
                    _mm512_cvtepi8_epi32(raw)
                } else {
                    _mm512_permutexvar_epi32(pairs, _mm512_cvtepu8_epi32(raw))
                };
                let fs = _mm512_mul_ps(_mm512_cvtepi32_ps(scales), _mm512_broadcastss_ps(dd));
                let fsub = if BITS == 6 {
                    _mm512_mul_ps(fs, _mm512_set1_ps(32.0))
                } else {
                    let mins = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_srli_si128::<8>(raw)));
                    _mm512_mul_ps(mins, _mm512_broadcastss_ps(_mm_movehdup_ps(dd)))
                };
                (fs, fsub)
            });
            for n in 0..N {
                let sums = a[n].sums.as_ptr().add(BSUMS * s);
                let sums = if BITS == 6 {
                    _mm512_loadu_ps(sums)
                } else {
                    _mm512_zextps256_ps512(_mm256_loadu_ps(sums.add(16)))
                };
                let da = _mm512_set1_ps(*a[n].sd.get_unchecked(s));
                for r in 0..R {
                    let (fs, fsub) = scaled[r];
                    let v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot[r][n]), fs), da, acc[r][n]);
                    acc[r][n] = _mm512_fnmadd_ps(fsub, sums, v);
                }
            }
        }
        array::from_fn(|r| array::from_fn(|n| _mm512_reduce_add_ps(acc[r][n])))
    }
}

/// Activation rows from which the AVX-512 kernel takes weight rows in pairs
/// (each activation load then serves both): a compute-bound prefill gains
/// ~25%, but a single sequence's memory-bound step streams ~30% slower from
/// two rows at once (measured with `examples/matmul`, `Q4_K`).
const PAIRED_FROM: usize = 4;

/// The AVX-512 row loop: rows in pairs from [`PAIRED_FROM`] activation rows,
/// otherwise (and an odd last row) one at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn super_rows_avx512<const N: usize, const BITS: u8>(
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    a: [ActRow<'_>; N],
    out: *mut f32,
    stride: usize,
) {
    let nsb = w.cols() / SUPER;
    let mut r = rows.start;
    // SAFETY (both loops): the caller guarantees the features, the row range
    // and that `out` is valid for `N` rows of `stride` values.
    unsafe {
        while N >= PAIRED_FROM && r + 2 <= rows.end {
            let res = super_avx512::<2, N, BITS>([w.row(r), w.row(r + 1)], a, nsb);
            for (i, row) in res.iter().enumerate() {
                for (n, v) in row.iter().enumerate() {
                    *out.add(n * stride + r + i) = *v;
                }
            }
            r += 2;
        }
        while r < rows.end {
            let [res] = super_avx512::<1, N, BITS>([w.row(r)], a, nsb);
            for (n, v) in res.iter().enumerate() {
                *out.add(n * stride + r) = *v;
            }
            r += 1;
        }
    }
}

/// Quarter `h` (32 values) of super-block `s`'s four groups, as unsigned bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quarters_256<const BITS: u8>(w: WeightRow<'_>, s: usize, h: usize) -> [__m256i; 4] {
    // SAFETY: callers pass `s` within the row's super-blocks and `h < 2`.
    unsafe {
        let mask4 = _mm256_set1_epi8(0x0F);
        let mut g = [_mm256_setzero_si256(); 4];
        let rec = rec_at::<BITS>(w, s);
        for c in 0..2 {
            let raw = _mm256_loadu_si256(rec.add(64 * c + 32 * h) as *const __m256i);
            g[2 * c] = _mm256_and_si256(raw, mask4);
            g[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask4);
        }
        if BITS != 4 {
            for (i, g) in g.iter_mut().enumerate() {
                let (row, shift) = top_bits(BITS, i, h);
                let qh = _mm256_loadu_si256(rec.add(record(BITS).qh + row) as *const __m256i);
                let top = _mm256_slli_epi16::<4>(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift as i32)));
                *g = _mm256_or_si256(*g, _mm256_and_si256(top, _mm256_set1_epi8(top_mask(BITS))));
            }
        }
        g
    }
}

/// `pshufb` masks giving each 16-bit product lane `m` of quarter `h` its
/// sub-scale: 16-value sub-block `8 h + m / 2`, so `Q6_K`'s scale of that
/// index (from the half of the scales the caller broadcasts) and
/// `Q4_K` / `Q5_K`'s scale `4 h + m / 4`.
const fn scale_mask(six: bool, h: usize) -> [u8; 32] {
    let mut mask = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let m = i / 2;
        let word = if six { m / 2 } else { 4 * h + m / 4 };
        mask[i] = (2 * word + i % 2) as u8;
        i += 1;
    }
    mask
}

static SCALE_MASKS: [[[u8; 32]; 2]; 2] =
    [[scale_mask(false, 0), scale_mask(false, 1)], [scale_mask(true, 0), scale_mask(true, 1)]];

/// Per quarter and activation row: the four groups' `pmaddubsw` products
/// summed in `i16` (at most 4 * 2 * 31 * 128 for `Q4_K` / `Q5_K`; `Q6_K`'s
/// 2 * 63 * 128 allow two), then one `pmaddwd` with the lanes' sub-scales.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn super_avx2<const N: usize, const BITS: u8>(w: WeightRow<'_>, a: [ActRow<'_>; N], nsb: usize) -> [f32; N] {
    // SAFETY: see the module's contract.
    unsafe {
        let masks = &SCALE_MASKS[usize::from(BITS == 6)];
        let mut acc = [_mm256_setzero_ps(); N];
        for s in 0..nsb {
            prefetch_super::<BITS>(w, s + PREFETCH_AHEAD);
            let rec = rec_at::<BITS>(w, s);
            let raw = _mm_loadu_si128(rec.add(record(BITS).sc) as *const __m128i);
            let sc = if BITS == 6 { _mm256_cvtepi8_epi16(raw) } else { _mm256_cvtepu8_epi16(raw) };
            let mut dot = [_mm256_setzero_si256(); N];
            for (h, mask) in masks.iter().enumerate() {
                let g = quarters_256::<BITS>(w, s, h);
                let half =
                    if BITS == 6 && h == 1 { _mm256_extracti128_si256::<1>(sc) } else { _mm256_castsi256_si128(sc) };
                let scales = _mm256_shuffle_epi8(
                    _mm256_broadcastsi128_si256(half),
                    _mm256_loadu_si256(mask.as_ptr() as *const __m256i),
                );
                for n in 0..N {
                    let base = a[n].qs.as_ptr().add(SUPER * s + 32 * h);
                    let p =
                        |r: usize| _mm256_maddubs_epi16(g[r], _mm256_loadu_si256(base.add(64 * r) as *const __m256i));
                    let v = if BITS == 6 {
                        let lo = _mm256_madd_epi16(_mm256_add_epi16(p(0), p(1)), scales);
                        _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_add_epi16(p(2), p(3)), scales))
                    } else {
                        let sum = _mm256_add_epi16(_mm256_add_epi16(p(0), p(1)), _mm256_add_epi16(p(2), p(3)));
                        _mm256_madd_epi16(sum, scales)
                    };
                    dot[n] = _mm256_add_epi32(dot[n], v);
                }
            }
            let dd = two_f16(rec.add(record(BITS).d) as *const half::f16);
            let d = _mm_cvtss_f32(dd);
            let wide = |b: __m128i| {
                let v = if BITS == 6 { _mm256_cvtepi8_epi32(b) } else { _mm256_cvtepu8_epi32(b) };
                _mm256_cvtepi32_ps(v)
            };
            // What each of `sums` takes off: `Q6_K`'s `32 d * scale` per 16 (two
            // registers), `Q4_K` / `Q5_K`'s `dmin * min` per 32.
            let high = wide(_mm_srli_si128::<8>(raw));
            let (f0, f1) = if BITS == 6 {
                let d32 = _mm256_set1_ps(32.0 * d);
                (_mm256_mul_ps(wide(raw), d32), _mm256_mul_ps(high, d32))
            } else {
                (_mm256_mul_ps(high, _mm256_broadcastss_ps(_mm_movehdup_ps(dd))), _mm256_setzero_ps())
            };
            for n in 0..N {
                let da = *a[n].sd.get_unchecked(s);
                let sums = a[n].sums.as_ptr().add(BSUMS * s);
                acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[n]), _mm256_set1_ps(d * da), acc[n]);
                acc[n] = if BITS == 6 {
                    let acc = _mm256_fnmadd_ps(f1, _mm256_loadu_ps(sums.add(8)), acc[n]);
                    _mm256_fnmadd_ps(f0, _mm256_loadu_ps(sums), acc)
                } else {
                    _mm256_fnmadd_ps(f0, _mm256_loadu_ps(sums.add(16)), acc[n])
                };
            }
        }
        array::from_fn(|n| hsum256(acc[n]))
    }
}

/// The AVX2 row loop, one row at a time, compiled with the kernel's features
/// so it inlines.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn super_rows_avx2<const N: usize, const BITS: u8>(
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    a: [ActRow<'_>; N],
    out: *mut f32,
    stride: usize,
) {
    let nsb = w.cols() / SUPER;
    for r in rows {
        // SAFETY: the caller guarantees the features, the row range and that
        // `out` is valid for `N` rows of `stride` values.
        unsafe {
            let res = super_avx2::<N, BITS>(w.row(r), a, nsb);
            for (i, v) in res.iter().enumerate() {
                *out.add(i * stride + r) = *v;
            }
        }
    }
}

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
