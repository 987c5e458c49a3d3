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
