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

/// [`rms_norm`] of one row, in place (Qwen3's per-head Q/K norms).
pub(crate) fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter_mut().zip(weight).for_each(|(v, w)| *v *= inv * w);
}

/// Rotary embedding on one head, llama.cpp's "neox" layout: pairs `(i, i + n/2)`.
pub(crate) fn rope_halves(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (a, b) = head.split_at_mut(cos.len());
    for (((a, b), c), s) in a.iter_mut().zip(b).zip(cos).zip(sin) {
        let (x, y) = (*a, *b);
        *a = x * c - y * s;
        *b = x * s + y * c;
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

/// `sqrt(2 / pi)`, of the tanh approximation of GELU.
const GELU_C: f32 = 0.797_884_6;

#[inline(always)]
fn glu_body<const GELU: bool>(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    for (row, o) in gate_up.chunks_exact(2 * n_ff).zip(out.chunks_exact_mut(n_ff)) {
        let (g, u) = row.split_at(n_ff);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            // SiLU is g * sigmoid(g); tanh-GELU is g * (1 + tanh(y)) / 2 = g * sigmoid(2y).
            let z = if GELU { 2.0 * GELU_C * (g + 0.044_715 * g * g * g) } else { *g };
            *o = g / (1.0 + fast_exp(-z)) * u;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn glu_avx512<const GELU: bool>(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    glu_body::<GELU>(gate_up, n_ff, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn glu_avx2<const GELU: bool>(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    glu_body::<GELU>(gate_up, n_ff, out)
}

fn glu<const GELU: bool>(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match kiln_kernels::Isa::current() {
        // SAFETY (both arms): the kernels' ISA implies these features.
        kiln_kernels::Isa::Avx512Vnni => return unsafe { glu_avx512::<GELU>(gate_up, n_ff, out) },
        kiln_kernels::Isa::Avx2 => return unsafe { glu_avx2::<GELU>(gate_up, n_ff, out) },
        kiln_kernels::Isa::Scalar => {}
    }
    glu_body::<GELU>(gate_up, n_ff, out)
}

/// SwiGLU: `out = silu(gate) * up` where each input row is `[gate | up]`.
pub(crate) fn silu_mul(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    glu::<false>(gate_up, n_ff, out)
}

/// GeGLU (Gemma): `out = gelu(gate) * up`, GELU's tanh approximation.
pub(crate) fn gelu_mul(gate_up: &[f32], n_ff: usize, out: &mut [f32]) {
    glu::<true>(gate_up, n_ff, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_mul_is_the_tanh_approximation_of_gelu_times_up() {
        let gate: Vec<f32> = (-40..40).map(|i| i as f32 * 0.2).collect();
        let up: Vec<f32> = gate.iter().map(|g| 1.5 - g * 0.1).collect();
        let gate_up: Vec<f32> = gate.iter().chain(&up).copied().collect();
        let mut out = vec![0f32; gate.len()];
        gelu_mul(&gate_up, gate.len(), &mut out);
        for ((o, g), u) in out.iter().zip(&gate).zip(&up) {
            let want = 0.5 * g * (1.0 + (GELU_C * (g + 0.044_715 * g * g * g)).tanh()) * u;
            assert!((o - want).abs() <= 1e-5 * (1.0 + want.abs()), "gelu({g}) * {u}: {o} vs {want}");
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
