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

/// SwiGLU: `out = silu(gate) * up` where each input row is `[gate | up]`.
pub(crate) fn silu_mul(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    for (row, o) in gate_up.chunks_exact(2 * n_ff).zip(out.chunks_exact_mut(n_ff)) {
        let (g, u) = row.split_at(n_ff);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
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

/// `scores = exp(scores - max)`; returns `1 / sum`.
#[inline(always)]
fn softmax_weights(scores: &mut [f32], max: f32) -> f32 {
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    1.0 / total
}

#[inline(always)]
fn attend_body(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = h.q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    for b in 0..h.len.div_ceil(KEY_BLOCK) {
        let base = b * h.kv_dim * KEY_BLOCK + h.head_offset * KEY_BLOCK;
        let block = &h.keys[base..base + hd * KEY_BLOCK];
        // Sixteen positions at once: one multiply-add per head dimension and
        // position lane, no horizontal sums (the layout's reason to be).
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
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let inv = softmax_weights(scores, max);
    out.fill(0.0);
    for (p, s) in scores.iter().enumerate() {
        axpy_body(out, s * inv, &h.values[p * h.kv_dim + h.head_offset..][..hd]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_body(h, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn attend_avx512(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_body(h, scores, out)
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
