//! The small per-token operations of a Llama block, as fused loops.

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
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler keep a vector register busy.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// One query head attending over `len` cached positions of one KV head.
/// `keys`/`values` rows are `stride` apart, starting at the head's offset.
#[inline(always)]
fn attend_body(q: &[f32], keys: &[f32], values: &[f32], stride: usize, len: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in 0..len {
        let s = dot_body(q, &keys[p * stride..][..hd]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / total;
    for (p, s) in scores.iter().enumerate() {
        axpy_body(out, s * inv, &values[p * stride..][..hd]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(q: &[f32], keys: &[f32], values: &[f32], stride: usize, len: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_body(q, keys, values, stride, len, scores, out)
}

/// Softmax attention of one query head; `keys`/`values` start at the KV head.
pub(crate) fn attend(q: &[f32], keys: &[f32], values: &[f32], stride: usize, len: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: the CPU reports AVX2 and FMA.
            return unsafe { attend_avx2(q, keys, values, stride, len, scores, out) };
        }
    }
    attend_body(q, keys, values, stride, len, scores, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let q = [1.0, 0.0, 0.0, 0.0];
        let k = [0.5, 0.5, 0.5, 0.5];
        let v = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0.0; 4];
        attend(&q, &k, &v, 4, 1, &mut Vec::new(), &mut out);
        assert_eq!(out, v);
    }

    #[test]
    fn attention_weights_follow_softmax_of_scaled_scores() {
        // Two positions, head dim 4: scores q.k/2 = [0, 1] -> weights [1/(1+e), e/(1+e)].
        let q = [2.0, 0.0, 0.0, 0.0];
        let k = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let v = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        attend(&q, &k, &v, 4, 2, &mut Vec::new(), &mut out);
        let e = std::f32::consts::E;
        assert!((out[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (out[1] - e / (1.0 + e)).abs() < 1e-6);
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
