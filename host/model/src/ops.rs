//! The small per-token operations of a Llama block, as fused loops.

use crate::cache::KEY_BLOCK;

/// `out = x / rms(x) * weight`, row by row.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// Rotary embedding on one head, llama.cpp's "normal" layout: pairs `(2i, 2i+1)`.
pub(crate) fn rope_interleaved(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, (c, s)) in cos.iter().zip(sin).enumerate() {
        let (a, b) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = a * c - b * s;
        head[2 * i + 1] = a * s + b * c;
    }
}

/// `e^x` to ~2 ulp for `x` in [-87, 88] (clamped outside), written so that it
/// vectorizes: libm's `expf` is a call per value, and softmax and SiLU take
/// one per score and per FFN unit of every token.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // Cody-Waite: ln 2 split so `x - n ln 2` stays exact for |n| <= 127.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes' expf).
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn silu_mul_body(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    for (row, o) in gate_up.chunks_exact(2 * n_ff).zip(out.chunks_exact_mut(n_ff)) {
        let (g, u) = row.split_at(n_ff);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + fast_exp(-g)) * u;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn silu_mul_avx512(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    silu_mul_body(gate_up, n_ff, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    silu_mul_body(gate_up, n_ff, out)
}

/// SwiGLU: `out = silu(gate) * up` where each input row is `[gate | up]`.
pub(crate) fn silu_mul(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match kiln_kernels::Isa::current() {
        // SAFETY (both arms): the kernels' ISA implies these features.
        kiln_kernels::Isa::Avx512Vnni => return unsafe { silu_mul_avx512(gate_up, n_ff, out) },
        kiln_kernels::Isa::Avx2 => return unsafe { silu_mul_avx2(gate_up, n_ff, out) },
        kiln_kernels::Isa::Scalar => {}
    }
    silu_mul_body(gate_up, n_ff, out)
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// One query head and the cache it attends over: keys in the blocked layout
/// of [`crate::KvCache`], values row-major, both `kv_dim` wide; the head's KV
/// head starts at column `head_offset`; positions `0..len`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadAttention<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub kv_dim: usize,
    pub head_offset: usize,
    pub len: usize,
}

/// `scores = exp(scores - max)`; returns `1 / sum`. Two passes, so the
/// exponentials vectorize (a running float sum in the same loop would pin it
/// to one lane: float adds may not be reordered).
#[inline(always)]
fn softmax_weights(scores: &mut [f32], max: f32) -> f32 {
    for s in scores.iter_mut() {
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

/// Scaled scores of positions `0..len`, 16 per key block: one multiply-add per
/// head dimension and position lane, no horizontal sums.
#[inline(always)]
fn scores_portable(h: &HeadAttention<'_>, scores: &mut Vec<f32>) {
    let hd = h.q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    for b in 0..h.len.div_ceil(KEY_BLOCK) {
        let base = b * h.kv_dim * KEY_BLOCK + h.head_offset * KEY_BLOCK;
        let block = &h.keys[base..base + hd * KEY_BLOCK];
        let mut acc = [0f32; KEY_BLOCK];
        for (qj, k) in h.q.iter().zip(block.chunks_exact(KEY_BLOCK)) {
            let k: &[f32; KEY_BLOCK] = k.try_into().expect("chunks_exact");
            for l in 0..KEY_BLOCK {
                acc[l] += qj * k[l];
            }
        }
        let take = (h.len - b * KEY_BLOCK).min(KEY_BLOCK);
        scores.extend(acc[..take].iter().map(|s| s * scale));
    }
}

/// [`scores_portable`] with four independent FMA chains per block (one
/// chain of 64 dependent adds would wait on each add's latency).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn scores_avx512(h: &HeadAttention<'_>, scores: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let hd = h.q.len();
    let blocks = h.len.div_ceil(KEY_BLOCK);
    if blocks == 0 {
        return;
    }
    let last = (blocks - 1) * h.kv_dim * KEY_BLOCK + (h.head_offset + hd) * KEY_BLOCK;
    assert!(last <= h.keys.len(), "key blocks out of range");
    let scale = 1.0 / (hd as f32).sqrt();
    let mut lanes = [0f32; KEY_BLOCK];
    for b in 0..blocks {
        // SAFETY: AVX-512F is enabled; every load is below `last`, checked above.
        unsafe {
            let k = h.keys.as_ptr().add(b * h.kv_dim * KEY_BLOCK + h.head_offset * KEY_BLOCK);
            let (mut a0, mut a1, mut a2, mut a3) =
                (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
            let quads = h.q.chunks_exact(4);
            let rest = quads.remainder();
            for (i, q) in quads.enumerate() {
                let kj = k.add(4 * i * KEY_BLOCK);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[0]), _mm512_loadu_ps(kj), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[1]), _mm512_loadu_ps(kj.add(KEY_BLOCK)), a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[2]), _mm512_loadu_ps(kj.add(2 * KEY_BLOCK)), a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[3]), _mm512_loadu_ps(kj.add(3 * KEY_BLOCK)), a3);
            }
            for (j, &qj) in rest.iter().enumerate() {
                let kj = k.add((hd - rest.len() + j) * KEY_BLOCK);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(qj), _mm512_loadu_ps(kj), a0);
            }
            let sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mul_ps(sum, _mm512_set1_ps(scale)));
        }
        let take = (h.len - b * KEY_BLOCK).min(KEY_BLOCK);
        scores.extend_from_slice(&lanes[..take]);
    }
}

/// Softmax over `scores` (already filled) and the weighted sum of values.
#[inline(always)]
fn attend_values(h: &HeadAttention<'_>, scores: &mut [f32], out: &mut [f32]) {
    let hd = h.q.len();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let inv = softmax_weights(scores, max);
    out.fill(0.0);
    for (p, s) in scores.iter().enumerate() {
        axpy_body(out, s * inv, &h.values[p * h.kv_dim + h.head_offset..][..hd]);
    }
}

#[inline(always)]
fn attend_body(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    scores.clear();
    scores_portable(&h, scores);
    attend_values(&h, scores, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_body(h, scores, out)
}

/// The weighted sum of value rows with the output in `NV` registers (head
/// size `16 * NV`), so each position costs `NV` FMAs and no stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn values_avx512<const NV: usize>(h: &HeadAttention<'_>, weights: &[f32], inv: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(out.len() == 16 * NV && h.q.len() == 16 * NV);
    let end = weights.len().saturating_sub(1) * h.kv_dim + h.head_offset + 16 * NV;
    assert!(weights.is_empty() || end <= h.values.len(), "value rows out of range");
    // SAFETY: AVX-512F is enabled; loads stay below `end`, stores within `out`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); NV];
        for (p, w) in weights.iter().enumerate() {
            let v = h.values.as_ptr().add(p * h.kv_dim + h.head_offset);
            let w = _mm512_set1_ps(w * inv);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(v.add(16 * j)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn attend_avx512(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    scores.clear();
    scores_avx512(&h, scores);
    match h.q.len() {
        64 | 128 => {
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let inv = softmax_weights(scores, max);
            if h.q.len() == 64 {
                values_avx512::<4>(&h, scores, inv, out)
            } else {
                values_avx512::<8>(&h, scores, inv, out)
            }
        }
        _ => attend_values(&h, scores, out),
    }
}

/// Softmax attention of one query head, into `out` (`scores` is scratch).
pub(crate) fn attend(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match kiln_kernels::Isa::current() {
        // SAFETY (both arms): the kernels' ISA implies these features
        // (AVX-512 VNNI: AVX-512F, AVX2, FMA; AVX2: AVX2, FMA).
        kiln_kernels::Isa::Avx512Vnni => return unsafe { attend_avx512(h, scores, out) },
        kiln_kernels::Isa::Avx2 => return unsafe { attend_avx2(h, scores, out) },
        kiln_kernels::Isa::Scalar => {}
    }
    attend_body(h, scores, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::KvCache;

    /// A one-layer cache holding `keys`/`values` rows (each `kv_dim` wide).
    fn cache(keys: &[Vec<f32>], values: &[Vec<f32>]) -> KvCache {
        let mut c = KvCache::new(1);
        for (pos, (k, v)) in keys.iter().zip(values).enumerate() {
            c.append(0, pos, k, v);
        }
        c
    }

    fn run(q: &[f32], c: &KvCache, kv_dim: usize, head_offset: usize, portable: bool) -> Vec<f32> {
        let (keys, values) = &c.layers[0];
        let h = HeadAttention { q, keys, values, kv_dim, head_offset, len: values.len() / kv_dim };
        let mut out = vec![0.0; q.len()];
        if portable {
            attend_body(h, &mut Vec::new(), &mut out);
        } else {
            attend(h, &mut Vec::new(), &mut out);
        }
        out
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let c = cache(&[vec![0.5; 4]], &[vec![1.0, 2.0, 3.0, 4.0]]);
        assert_eq!(run(&[1.0, 0.0, 0.0, 0.0], &c, 4, 0, false), [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn attention_weights_follow_softmax_of_scaled_scores() {
        // Two positions, head dim 4: scores q.k/2 = [0, 1] -> weights [1/(1+e), e/(1+e)].
        let c = cache(&[vec![0.0; 4], vec![1.0, 0.0, 0.0, 0.0]], &[vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 1.0, 0.0, 0.0]]);
        let out = run(&[2.0, 0.0, 0.0, 0.0], &c, 4, 0, false);
        let e = std::f32::consts::E;
        assert!((out[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (out[1] - e / (1.0 + e)).abs() < 1e-6);
    }

    #[test]
    fn every_attention_path_matches_plain_softmax_attention_across_key_blocks() {
        let (hd, kv_dim, offset, len) = (64, 192, 64, 37);
        let f = |i: usize| ((i * 7919 % 997) as f32 / 498.0 - 1.0) * 2.0;
        let q: Vec<f32> = (0..hd).map(f).collect();
        let keys: Vec<Vec<f32>> = (0..len).map(|p| (0..kv_dim).map(|c| f(p * kv_dim + c + 11)).collect()).collect();
        let values: Vec<Vec<f32>> = (0..len).map(|p| (0..kv_dim).map(|c| f(p * kv_dim + c + 29)).collect()).collect();
        let scores: Vec<f32> = keys
            .iter()
            .map(|k| q.iter().zip(&k[offset..offset + hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt())
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let total: f32 = scores.iter().map(|s| (s - max).exp()).sum();
        let want: Vec<f32> = (0..hd)
            .map(|j| scores.iter().zip(&values).map(|(s, v)| (s - max).exp() / total * v[offset + j]).sum())
            .collect();
        let c = cache(&keys, &values);
        for portable in [true, false] {
            for (a, b) in run(&q, &c, kv_dim, offset, portable).iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "portable={portable}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0f32;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (fast_exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(fast_exp(-1000.0), (-87f32).exp());
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let mut h = [1.0, 2.0, 3.0, 4.0];
        rope_interleaved(&mut h, &[1.0, 1.0], &[0.0, 0.0]);
        assert_eq!(h, [1.0, 2.0, 3.0, 4.0]);
        let (c, s) = (0.3f32.cos(), 0.3f32.sin());
        rope_interleaved(&mut h, &[c, c], &[s, s]);
        let norm: f32 = h.iter().map(|v| v * v).sum();
        assert!((norm - 30.0).abs() < 1e-4);
    }

    #[test]
    fn rms_norm_scales_rows_to_unit_rms() {
        let x = [3.0, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        assert!((out[0] - 1.2).abs() < 1e-6 && (out[1] - 1.6).abs() < 1e-6);
    }
}
