//! Portable reference kernels: the definition the SIMD paths must agree with.

use crate::BLOCK;
use crate::acts::ActRow;
use crate::matrix::WeightRow;

/// `sum_b d_w*d_a*sum(q_w*q_a) + m_w*s_a` over the row's blocks.
pub(crate) fn q4_1(w: WeightRow<'_>, a: ActRow<'_>, npairs: usize) -> f32 {
    let mut acc = 0f32;
    for p in 0..npairs {
        let bytes = &w.qs[p * BLOCK..][..BLOCK];
        for half in 0..2 {
            let b = 2 * p + half;
            let qa = &a.qs[b * BLOCK..][..BLOCK];
            let mut isum = 0i32;
            for k in 0..BLOCK {
                let q = (bytes[k] >> (4 * half)) & 0x0F;
                isum += q as i32 * qa[k] as i32;
            }
            acc += w.d[b].to_f32() * a.d[b] * isum as f32 + w.m[b].to_f32() * a.s[b];
        }
    }
    acc
}

/// `sum_b d_w*d_a*sum(q_w*q_a)` over the row's blocks.
pub(crate) fn q8_0(w: WeightRow<'_>, a: ActRow<'_>, npairs: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..2 * npairs {
        let qw = &w.qs[b * BLOCK..][..BLOCK];
        let qa = &a.qs[b * BLOCK..][..BLOCK];
        let isum: i32 = qw.iter().zip(qa).map(|(&x, &y)| x as i8 as i32 * y as i32).sum();
        acc += w.d[b].to_f32() * a.d[b] * isum as f32;
    }
    acc
}

/// `sum_b d_a * (d_w0 * sum_lo + d_w1 * sum_hi) + m_w * s_a` over the row's
/// blocks, `sum_lo`/`sum_hi` over each block's two halves of 16.
pub(crate) fn bytes16(w: WeightRow<'_>, a: ActRow<'_>, npairs: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..2 * npairs {
        let qw = &w.qs[b * BLOCK..][..BLOCK];
        let qa = &a.qs[b * BLOCK..][..BLOCK];
        let half = |h: usize| -> i32 { (16 * h..16 * h + 16).map(|k| qw[k] as i8 as i32 * qa[k] as i32).sum() };
        let dot = w.d[2 * b].to_f32() * half(0) as f32 + w.d[2 * b + 1].to_f32() * half(1) as f32;
        acc += a.d[b] * dot + w.m.get(b).map_or(0.0, |m| m.to_f32() * a.s[b]);
    }
    acc
}

/// `sum_b d_a * sum_h d_w[h] * sum_k (q_k - 32) * q_a_k` over halves of 16.
pub(crate) fn sixes(w: WeightRow<'_>, a: ActRow<'_>, npairs: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..2 * npairs {
        let qa = &a.qs[b * BLOCK..][..BLOCK];
        let half = |h: usize| -> i32 {
            (16 * h..16 * h + 16).map(|k| (crate::matrix::sixes_q(w, b, k) as i32 - 32) * qa[k] as i32).sum()
        };
        acc += a.d[b] * (w.d[2 * b].to_f32() * half(0) as f32 + w.d[2 * b + 1].to_f32() * half(1) as f32);
    }
    acc
}
