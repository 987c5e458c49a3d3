//! Portable reference kernels: the definition the SIMD paths must agree with.

use crate::acts::{ActRow, BSUMS, SUPER, super_slot};
use crate::matrix::WeightRow;
use crate::{BLOCK, WeightFormat};

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

/// K-quants against super-block activations, per super-block `s`:
/// `d_a * d * sum_k sc_k * q_k * q_a_k - dmin * sum_j mn_j * sums32_j` for
/// `Q4_K` / `Q5_K` (one `sc` and `mn` per 32), and for `Q6_K` (an `i8` `sc`
/// per 16) `d_a * d * sum_k sc_k * q_k * q_a_k - 32 * d * sum_k sc_k * sums16_k`
/// (`sums` already carry `d_a`).
pub(crate) fn super_blocks(format: WeightFormat, w: WeightRow<'_>, a: ActRow<'_>) -> f32 {
    let six = format == WeightFormat::Q6K;
    let mut acc = 0f32;
    for (s, &da) in a.sd.iter().enumerate() {
        let (sc, d, dmin) = crate::records::scales(format, w, s);
        let sums = &a.sums[BSUMS * s..][..BSUMS];
        let mut dot = 0i32;
        for e in 0..SUPER {
            let (b, k) = (8 * s + e / BLOCK, e % BLOCK);
            let scale = if six { sc[e / 16] as i8 as i32 } else { sc[e / BLOCK] as i32 };
            dot += scale * crate::records::q(format, w, b, k) as i32 * a.qs[SUPER * s + super_slot(e)] as i32;
        }
        acc += da * d * dot as f32
            - if six {
                32.0 * d * (0..16).map(|k| sc[k] as i8 as f32 * sums[k]).sum::<f32>()
            } else {
                dmin * (0..8).map(|j| sc[8 + j] as f32 * sums[16 + j]).sum::<f32>()
            };
    }
    acc
}
