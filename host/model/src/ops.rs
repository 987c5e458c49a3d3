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
    // Fixed-size chunks with independent lanes: the compiler turns this into
    // vector FMAs (no bounds checks, no serial dependency).
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        let (x, y): (&[f32; 16], &[f32; 16]) = (x.try_into().unwrap(), y.try_into().unwrap());
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// One query head and the cached keys/values it attends over: `len` positions
/// whose rows are `stride` apart, starting at the KV head's offset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadAttention<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
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
    let mut max = f32::NEG_INFINITY;
    for p in 0..h.len {
        let s = dot_body(h.q, &h.keys[p * h.stride..][..hd]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let inv = softmax_weights(scores, max);
    out.fill(0.0);
    for (p, s) in scores.iter().enumerate() {
        axpy_body(out, s * inv, &h.values[p * h.stride..][..hd]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_body(h, scores, out)
}

/// AVX-512 attention for head sizes that are a multiple of 16 (at most 256):
/// the query and the output stay in registers for the whole pass.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const MAX_VECS: usize = 16;
    let (q, stride, len) = (h.q, h.stride, h.len);
    let nv = q.len() / 16;
    let scale = 1.0 / (q.len() as f32).sqrt();
    assert!(nv <= MAX_VECS && q.len().is_multiple_of(16) && out.len() == q.len());
    assert!(len == 0 || (len - 1) * stride + q.len() <= h.keys.len().min(h.values.len()));
    // SAFETY: AVX-512F is enabled; every load is within `q`, `keys`, `values`
    // (checked above) and every store within `out`.
    unsafe {
        let mut qv = [_mm512_setzero_ps(); MAX_VECS];
        for (j, v) in qv.iter_mut().enumerate().take(nv) {
            *v = _mm512_loadu_ps(q.as_ptr().add(16 * j));
        }
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..len {
            let k = h.keys.as_ptr().add(p * stride);
            let mut acc = _mm512_setzero_ps();
            for (j, v) in qv.iter().enumerate().take(nv) {
                acc = _mm512_fmadd_ps(*v, _mm512_loadu_ps(k.add(16 * j)), acc);
            }
            let s = _mm512_reduce_add_ps(acc) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let inv = softmax_weights(scores, max);
        let mut acc = [_mm512_setzero_ps(); MAX_VECS];
        for (p, s) in scores.iter().enumerate() {
            let w = _mm512_set1_ps(s * inv);
            let v = h.values.as_ptr().add(p * stride);
            for (j, a) in acc.iter_mut().enumerate().take(nv) {
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(v.add(16 * j)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate().take(nv) {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *a);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum AttnIsa {
    Portable,
    Avx2,
    Avx512,
}

fn attn_isa() -> AttnIsa {
    use std::sync::OnceLock;
    static ISA: OnceLock<AttnIsa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("KILN_ISA").as_deref() != Ok("scalar") {
                if is_x86_feature_detected!("avx512f") && std::env::var("KILN_ISA").as_deref() != Ok("avx2") {
                    return AttnIsa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return AttnIsa::Avx2;
                }
            }
        }
        AttnIsa::Portable
    })
}

/// Softmax attention of one query head, into `out` (`scores` is scratch).
pub(crate) fn attend(h: HeadAttention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match attn_isa() {
        // SAFETY: the CPU reports the features of the chosen path.
        AttnIsa::Avx512 if h.q.len().is_multiple_of(16) && h.q.len() <= 256 => {
            return unsafe { attend_avx512(h, scores, out) };
        }
        AttnIsa::Avx2 | AttnIsa::Avx512 => return unsafe { attend_avx2(h, scores, out) },
        AttnIsa::Portable => {}
    }
    attend_body(h, scores, out)
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
        attend(HeadAttention { q: &q, keys: &k, values: &v, stride: 4, len: 1 }, &mut Vec::new(), &mut out);
        assert_eq!(out, v);
    }

    #[test]
    fn attention_weights_follow_softmax_of_scaled_scores() {
        // Two positions, head dim 4: scores q.k/2 = [0, 1] -> weights [1/(1+e), e/(1+e)].
        let q = [2.0, 0.0, 0.0, 0.0];
        let k = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let v = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        attend(HeadAttention { q: &q, keys: &k, values: &v, stride: 4, len: 2 }, &mut Vec::new(), &mut out);
        let e = std::f32::consts::E;
        assert!((out[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (out[1] - e / (1.0 + e)).abs() < 1e-6);
    }

    #[test]
    fn every_attention_path_agrees_with_the_portable_one() {
        let hd = 64;
        let len = 37;
        let stride = 3 * hd;
        let f = |i: usize| ((i * 7919 % 997) as f32 / 498.0 - 1.0) * 2.0;
        let q: Vec<f32> = (0..hd).map(f).collect();
        let k: Vec<f32> = (0..len * stride).map(|i| f(i + 11)).collect();
        let v: Vec<f32> = (0..len * stride).map(|i| f(i + 29)).collect();
        let mut want = vec![0.0; hd];
        attend_body(HeadAttention { q: &q, keys: &k[hd..], values: &v[hd..], stride, len }, &mut Vec::new(), &mut want);
        let mut got = vec![0.0; hd];
        attend(HeadAttention { q: &q, keys: &k[hd..], values: &v[hd..], stride, len }, &mut Vec::new(), &mut got);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
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
