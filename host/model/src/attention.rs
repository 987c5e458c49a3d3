//! Softmax attention of one query head over a sequence's cached keys and
//! values, stored as f32 or f16 ([`KvElem`]). The SIMD paths widen f16 as
//! they load it (`vcvtph2ps`), so f16 costs no extra pass and halves the
//! bytes read; the portable path widens a block at a time into scratch.

use crate::cache::{KEY_BLOCK, KvElem};
use crate::ops::fast_exp;

/// One query head and the cache it attends over: keys in the blocked layout
/// of [`crate::KvCache`], values row-major, both `kv_dim` wide; the head's KV
/// head starts at column `head_offset`; it sees what `seen` says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadAttention<'a, T> {
    pub q: &'a [f32],
    pub keys: &'a [T],
    pub values: &'a [T],
    pub kv_dim: usize,
    pub head_offset: usize,
    pub seen: Seen,
}

/// Which positions a query sees, and how its scores are bounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Seen {
    /// Positions `start..len` (`start` > 0 on a sliding-window layer).
    pub start: usize,
    pub len: usize,
    /// Scores become `c * tanh(score / c)` (Gemma 2).
    pub softcap: Option<f32>,
}

/// Per-thread buffers reused across heads.
#[derive(Debug, Default)]
pub(crate) struct AttnScratch {
    scores: Vec<f32>,
    /// f16 keys or values widened by the portable path.
    wide: Vec<f32>,
}

/// `scores = exp(scores - max)` over positions `start..`, zero before;
/// returns `1 / sum`. Two passes, so the exponentials vectorize (a running
/// float sum in the same loop would pin it to one lane: float adds may not be
/// reordered). Positions outside the window still pass through the value
/// loops, with weight zero: simpler than a ragged first key block, and a
/// window is thousands of positions, so only very long sequences pay.
#[inline(always)]
fn softmax_weights(scores: &mut [f32], seen: Seen) -> f32 {
    let (hidden, seen_scores) = scores.split_at_mut(seen.start.min(scores.len()));
    hidden.fill(0.0);
    if let Some(cap) = seen.softcap {
        seen_scores.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
    }
    let seen = seen_scores;
    let max = seen.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    for s in seen.iter_mut() {
        *s = fast_exp(*s - max);
    }
    let mut acc = [0f32; 16];
    let chunks = scores.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    1.0 / (acc.iter().sum::<f32>() + tail)
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Scaled scores of positions `0..len`, 16 per key block: one multiply-add per
/// head dimension and position lane, no horizontal sums.
#[inline(always)]
fn scores_portable<T: KvElem>(h: &HeadAttention<'_, T>, scratch: &mut AttnScratch) {
    let hd = h.q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    for b in 0..h.seen.len.div_ceil(KEY_BLOCK) {
        let base = b * h.kv_dim * KEY_BLOCK + h.head_offset * KEY_BLOCK;
        let block = T::widen(&h.keys[base..base + hd * KEY_BLOCK], &mut scratch.wide);
        let mut acc = [0f32; KEY_BLOCK];
        for (qj, k) in h.q.iter().zip(block.chunks_exact(KEY_BLOCK)) {
            let k: &[f32; KEY_BLOCK] = k.try_into().expect("chunks_exact");
            for l in 0..KEY_BLOCK {
                acc[l] += qj * k[l];
            }
        }
        let take = (h.seen.len - b * KEY_BLOCK).min(KEY_BLOCK);
        scratch.scores.extend(acc[..take].iter().map(|s| s * scale));
    }
}

/// Softmax over the scores (already filled) and the weighted sum of values.
#[inline(always)]
fn values_portable<T: KvElem>(h: &HeadAttention<'_, T>, scratch: &mut AttnScratch, out: &mut [f32]) {
    let hd = h.q.len();
    let inv = softmax_weights(&mut scratch.scores, h.seen);
    out.fill(0.0);
    for (p, s) in scratch.scores.iter().enumerate() {
        let row = T::widen(&h.values[p * h.kv_dim + h.head_offset..][..hd], &mut scratch.wide);
        axpy_body(out, s * inv, row);
    }
}

#[inline(always)]
fn attend_portable<T: KvElem>(h: HeadAttention<'_, T>, scratch: &mut AttnScratch, out: &mut [f32]) {
    scratch.scores.clear();
    scores_portable(&h, scratch);
    values_portable(&h, scratch, out);
}

/// f32 on AVX2: the portable loops compiled for AVX2 vectorize well.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2_auto<T: KvElem>(h: HeadAttention<'_, T>, scratch: &mut AttnScratch, out: &mut [f32]) {
    attend_portable(h, scratch, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{AttnScratch, HeadAttention, softmax_weights, values_portable};
    use crate::cache::{KEY_BLOCK, KvElem};

    /// 8 elements from `p`, widened from f16 when `T` is.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
        // SAFETY: the caller guarantees 8 readable elements at `p`.
        unsafe { if T::HALF { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) } else { _mm256_loadu_ps(p.cast()) } }
    }

    /// 16 elements from `p`, widened from f16 when `T` is.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
        // SAFETY: the caller guarantees 16 readable elements at `p`.
        unsafe { if T::HALF { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) } else { _mm512_loadu_ps(p.cast()) } }
    }

    /// Checks that every key block and value row the kernels read is in range.
    fn check_bounds<T>(h: &HeadAttention<'_, T>) {
        let hd = h.q.len();
        let blocks = h.seen.len.div_ceil(KEY_BLOCK);
        if blocks > 0 {
            let last_key = (blocks - 1) * h.kv_dim * KEY_BLOCK + (h.head_offset + hd) * KEY_BLOCK;
            assert!(last_key <= h.keys.len(), "key blocks out of range");
            let last_value = (h.seen.len - 1) * h.kv_dim + h.head_offset + hd;
            assert!(last_value <= h.values.len(), "value rows out of range");
        }
    }

    /// Scores with four independent FMA chains per block (one chain of 64
    /// dependent adds would wait on each add's latency).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn scores_avx512<T: KvElem>(h: &HeadAttention<'_, T>, scores: &mut Vec<f32>) {
        let hd = h.q.len();
        check_bounds(h);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut lanes = [0f32; KEY_BLOCK];
        for b in 0..h.seen.len.div_ceil(KEY_BLOCK) {
            // SAFETY: AVX-512F is enabled; every load is in range, checked above.
            unsafe {
                let k = h.keys.as_ptr().add(b * h.kv_dim * KEY_BLOCK + h.head_offset * KEY_BLOCK);
                let mut a = [_mm512_setzero_ps(); 4];
                let quads = h.q.chunks_exact(4);
                let rest = quads.remainder();
                for (i, q) in quads.enumerate() {
                    let kj = k.add(4 * i * KEY_BLOCK);
                    for (c, a) in a.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), load16(kj.add(c * KEY_BLOCK)), *a);
                    }
                }
                for (j, &qj) in rest.iter().enumerate() {
                    let kj = k.add((hd - rest.len() + j) * KEY_BLOCK);
                    a[0] = _mm512_fmadd_ps(_mm512_set1_ps(qj), load16(kj), a[0]);
                }
                let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
                _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mul_ps(sum, _mm512_set1_ps(scale)));
            }
            let take = (h.seen.len - b * KEY_BLOCK).min(KEY_BLOCK);
            scores.extend_from_slice(&lanes[..take]);
        }
    }

    /// The weighted sum of value rows with the output in `NV` registers (head
    /// size `16 * NV`), so each position costs `NV` FMAs and no stores.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn values_avx512<T: KvElem, const NV: usize>(h: &HeadAttention<'_, T>, weights: &[f32], inv: f32, out: &mut [f32]) {
        assert!(out.len() == 16 * NV && h.q.len() == 16 * NV);
        check_bounds(h);
        // SAFETY: AVX-512F is enabled; loads are in range (checked above), stores within `out`.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); NV];
            for (p, w) in weights.iter().enumerate() {
                let v = h.values.as_ptr().add(p * h.kv_dim + h.head_offset);
                let w = _mm512_set1_ps(w * inv);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(w, load16(v.add(16 * j)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *a);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) fn attend_avx512<T: KvElem>(h: HeadAttention<'_, T>, scratch: &mut AttnScratch, out: &mut [f32]) {
        scratch.scores.clear();
        scores_avx512(&h, &mut scratch.scores);
        if !matches!(h.q.len(), 64 | 128) {
            return values_portable(&h, scratch, out);
        }
        let inv = softmax_weights(&mut scratch.scores, h.seen);
        if h.q.len() == 64 {
            values_avx512::<T, 4>(&h, &scratch.scores, inv, out)
        } else {
            values_avx512::<T, 8>(&h, &scratch.scores, inv, out)
        }
    }

    /// f16 scores on AVX2: a block's 16 lanes in two registers, two chains each.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scores_avx2<T: KvElem>(h: &HeadAttention<'_, T>, scores: &mut Vec<f32>) {
        let hd = h.q.len();
        check_bounds(h);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut lanes = [0f32; KEY_BLOCK];
        for b in 0..h.seen.len.div_ceil(KEY_BLOCK) {
            // SAFETY: AVX2, FMA and F16C are enabled; every load is in range, checked above.
            unsafe {
                let k = h.keys.as_ptr().add(b * h.kv_dim * KEY_BLOCK + h.head_offset * KEY_BLOCK);
                let mut a = [_mm256_setzero_ps(); 4];
                for (j, &qj) in h.q.iter().enumerate() {
                    let (kj, q, c) = (k.add(j * KEY_BLOCK), _mm256_set1_ps(qj), 2 * (j % 2));
                    a[c] = _mm256_fmadd_ps(q, load8(kj), a[c]);
                    a[c + 1] = _mm256_fmadd_ps(q, load8(kj.add(8)), a[c + 1]);
                }
                let scale = _mm256_set1_ps(scale);
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(_mm256_add_ps(a[0], a[2]), scale));
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), _mm256_mul_ps(_mm256_add_ps(a[1], a[3]), scale));
            }
            let take = (h.seen.len - b * KEY_BLOCK).min(KEY_BLOCK);
            scores.extend_from_slice(&lanes[..take]);
        }
    }

    /// f16 values on AVX2, the output in `NV` registers (head size `8 * NV`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn values_avx2<T: KvElem, const NV: usize>(h: &HeadAttention<'_, T>, weights: &[f32], inv: f32, out: &mut [f32]) {
        assert!(out.len() == 8 * NV && h.q.len() == 8 * NV);
        check_bounds(h);
        // SAFETY: AVX2, FMA and F16C are enabled; loads are in range (checked above), stores within `out`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); NV];
            for (p, w) in weights.iter().enumerate() {
                let v = h.values.as_ptr().add(p * h.kv_dim + h.head_offset);
                let w = _mm256_set1_ps(w * inv);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, load8(v.add(8 * j)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *a);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn attend_avx2<T: KvElem>(h: HeadAttention<'_, T>, scratch: &mut AttnScratch, out: &mut [f32]) {
        scratch.scores.clear();
        scores_avx2(&h, &mut scratch.scores);
        if !matches!(h.q.len(), 64 | 128) {
            return values_portable(&h, scratch, out);
        }
        let inv = softmax_weights(&mut scratch.scores, h.seen);
        if h.q.len() == 64 {
            values_avx2::<T, 8>(&h, &scratch.scores, inv, out)
        } else {
            values_avx2::<T, 16>(&h, &scratch.scores, inv, out)
        }
    }
}

/// Softmax attention of one query head, into `out`.
pub(crate) fn attend<T: KvElem>(h: HeadAttention<'_, T>, scratch: &mut AttnScratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match kiln_kernels::Isa::current() {
        // SAFETY (all arms): the kernels' ISA implies these features
        // (AVX-512 VNNI: AVX-512F, AVX2, FMA, F16C; AVX2: AVX2, FMA, F16C).
        kiln_kernels::Isa::Avx512Vnni => return unsafe { x86::attend_avx512(h, scratch, out) },
        kiln_kernels::Isa::Avx2 if T::HALF => return unsafe { x86::attend_avx2(h, scratch, out) },
        kiln_kernels::Isa::Avx2 => return unsafe { attend_avx2_auto(h, scratch, out) },
        kiln_kernels::Isa::Scalar => {}
    }
    attend_portable(h, scratch, out)
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::cache::{KvCache, KvType, LayerKv, Layers};

    /// A one-layer cache holding `keys`/`values` rows (each `kv_dim` wide).
    fn cache(keys: &[Vec<f32>], values: &[Vec<f32>], kv_type: KvType) -> KvCache {
        let mut c = KvCache::new(1, keys[0].len(), kv_type);
        for (pos, (k, v)) in keys.iter().zip(values).enumerate() {
            c.append(0, pos, k, v);
            c.len += 1;
        }
        c
    }

    /// Every path this machine can run for `T`: portable, AVX2 (both), AVX-512.
    fn paths<T: KvElem>(h: HeadAttention<'_, T>) -> Vec<(&'static str, Vec<f32>)> {
        let run = |f: &dyn Fn(&mut AttnScratch, &mut [f32])| {
            let mut out = vec![0.0; h.q.len()];
            f(&mut AttnScratch::default(), &mut out);
            out
        };
        let mut all = vec![("portable", run(&|s, o| attend_portable(h, s, o)))];
        #[cfg(target_arch = "x86_64")]
        {
            let isa = kiln_kernels::Isa::current();
            if isa != kiln_kernels::Isa::Scalar {
                // SAFETY: both ISAs above scalar imply AVX2, FMA and F16C.
                all.push(("avx2", run(&|s, o| unsafe { x86::attend_avx2(h, s, o) })));
                all.push(("avx2-auto", run(&|s, o| unsafe { attend_avx2_auto(h, s, o) })));
            }
            if isa == kiln_kernels::Isa::Avx512Vnni {
                // SAFETY: the AVX-512 VNNI ISA implies AVX-512F, AVX2, FMA and F16C.
                all.push(("avx512", run(&|s, o| unsafe { x86::attend_avx512(h, s, o) })));
            }
        }
        all
    }

    fn every_path(c: &KvCache, q: &[f32], head_offset: usize) -> Vec<(&'static str, Vec<f32>)> {
        every_path_seeing(c, q, head_offset, 0, None)
    }

    /// [`every_path`] seeing positions `start..` only, scores capped at `softcap`.
    fn every_path_seeing(
        c: &KvCache,
        q: &[f32],
        head_offset: usize,
        start: usize,
        softcap: Option<f32>,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let (kv_dim, seen) = (c.kv_dim(), Seen { start, len: c.len(), softcap });
        match &c.layers {
            Layers::F16(l) => {
                let LayerKv { keys, values } = &l[0];
                paths::<f16>(HeadAttention { q, keys, values, kv_dim, head_offset, seen })
            }
            Layers::F32(l) => {
                let LayerKv { keys, values } = &l[0];
                paths::<f32>(HeadAttention { q, keys, values, kv_dim, head_offset, seen })
            }
        }
    }

    #[test]
    fn soft_capped_scores_are_c_tanh_of_score_over_c() {
        // Scores [0, 1] capped at 0.5 become [0, 0.5 tanh 2].
        let keys = [vec![0.0; 4], vec![1.0, 0.0, 0.0, 0.0]];
        let c = cache(&keys, &[vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 1.0, 0.0, 0.0]], KvType::F32);
        let w = (0.5 * 2f32.tanh()).exp();
        for (path, out) in every_path_seeing(&c, &[2.0, 0.0, 0.0, 0.0], 0, 0, Some(0.5)) {
            assert!((out[0] - 1.0 / (1.0 + w)).abs() < 1e-6 && (out[1] - w / (1.0 + w)).abs() < 1e-6, "{path}");
        }
    }

    #[test]
    fn a_sliding_window_sees_only_its_last_positions() {
        // 40 positions (three key blocks); the window starts at 21, mid-block.
        let row = |p: usize, salt: f32| (0..64).map(|j| ((p * 64 + j) as f32 * salt).sin()).collect::<Vec<f32>>();
        let keys: Vec<Vec<f32>> = (0..40).map(|p| row(p, 0.37)).collect();
        let values: Vec<Vec<f32>> = (0..40).map(|p| row(p, 0.11)).collect();
        let q = row(99, 0.23);
        for kv_type in [KvType::F32, KvType::F16] {
            let whole = cache(&keys, &values, kv_type);
            let window = cache(&keys[21..], &values[21..], kv_type);
            let want = every_path(&window, &q, 0)[0].1.clone();
            for (path, got) in every_path_seeing(&whole, &q, 0, 21, None) {
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{kv_type:?} {path}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let c = cache(&[vec![0.5; 4]], &[vec![1.0, 2.0, 3.0, 4.0]], KvType::F32);
        for (path, out) in every_path(&c, &[1.0, 0.0, 0.0, 0.0], 0) {
            assert_eq!(out, [1.0, 2.0, 3.0, 4.0], "{path}");
        }
    }

    #[test]
    fn attention_weights_follow_softmax_of_scaled_scores() {
        // Two positions, head dim 4: scores q.k/2 = [0, 1] -> weights [1/(1+e), e/(1+e)].
        let keys = [vec![0.0; 4], vec![1.0, 0.0, 0.0, 0.0]];
        let c = cache(&keys, &[vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 1.0, 0.0, 0.0]], KvType::F32);
        let e = std::f32::consts::E;
        for (path, out) in every_path(&c, &[2.0, 0.0, 0.0, 0.0], 0) {
            assert!((out[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (out[1] - e / (1.0 + e)).abs() < 1e-6, "{path}");
        }
    }

    #[test]
    fn every_attention_path_matches_plain_softmax_attention_across_key_blocks_in_f32_and_f16() {
        for (hd, kv_dim, offset) in [(64, 192, 64), (128, 256, 128), (48, 96, 48)] {
            let len = 37;
            let f = |i: usize| ((i * 7919 % 997) as f32 / 498.0 - 1.0) * 2.0;
            let q: Vec<f32> = (0..hd).map(f).collect();
            let keys: Vec<Vec<f32>> = (0..len).map(|p| (0..kv_dim).map(|c| f(p * kv_dim + c + 11)).collect()).collect();
            let values: Vec<Vec<f32>> =
                (0..len).map(|p| (0..kv_dim).map(|c| f(p * kv_dim + c + 29)).collect()).collect();
            let scores: Vec<f32> = keys
                .iter()
                .map(|k| q.iter().zip(&k[offset..offset + hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt())
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let total: f32 = scores.iter().map(|s| (s - max).exp()).sum();
            let want: Vec<f32> = (0..hd)
                .map(|j| scores.iter().zip(&values).map(|(s, v)| (s - max).exp() / total * v[offset + j]).sum())
                .collect();
            // f16 rounds keys and values by up to 2^-11 relative: the output moves by about that much.
            for (kv_type, tolerance) in [(KvType::F32, 1e-5), (KvType::F16, 1e-2)] {
                let c = cache(&keys, &values, kv_type);
                for (path, out) in every_path(&c, &q, offset) {
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < tolerance, "hd {hd} {kv_type} {path}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn f16_paths_agree_with_each_other_to_rounding() {
        let (hd, kv_dim, len) = (64, 64, 50);
        let f = |i: usize| ((i * 104_729 % 1009) as f32 / 504.0 - 1.0) * 3.0;
        let keys: Vec<Vec<f32>> = (0..len).map(|p| (0..kv_dim).map(|c| f(p * kv_dim + c)).collect()).collect();
        let values: Vec<Vec<f32>> = (0..len).map(|p| (0..kv_dim).map(|c| f(p * kv_dim + c + 5)).collect()).collect();
        let q: Vec<f32> = (0..hd).map(|i| f(i + 77)).collect();
        let c = cache(&keys, &values, KvType::F16);
        let all = every_path(&c, &q, 0);
        for (path, out) in &all[1..] {
            for (a, b) in out.iter().zip(&all[0].1) {
                assert!((a - b).abs() < 1e-5, "{path} vs portable: {a} vs {b}");
            }
        }
    }
}
