//! GGUF's block formats decoded into one shape: 32-weight sub-blocks of small
//! integers with a scale per 16 weights and an offset per 32, which is what
//! every format kiln runs reduces to (`w = d[k / 16] * q[k] + m`).
//!
//! The K-quants pack 256 weights per super-block with 6-bit (Q4_K, Q5_K) or
//! 8-bit (Q6_K) sub-block scales under one `f16` super-scale; the product
//! `d * sc` is formed here once, at load, so the kernels see the same
//! per-32 (or per-16) scale they see for the 32-weight formats. Bit layouts
//! follow ggml's reference dequantizers (`ggml-quants.c`).

use half::f16;

use crate::matrix::WeightFormat;

/// One decoded 32-weight sub-block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SubBlock {
    /// The integers, in element order (`0..16` for the 4-bit formats).
    pub q: [i8; 32],
    /// Scale of elements `0..16` and of `16..32` (equal for most formats).
    pub d: [f32; 2],
    /// Offset added to every weight of the sub-block (zero for symmetric formats).
    pub m: f32,
}

fn f16_at(raw: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([raw[i], raw[i + 1]]).to_f32()
}

/// Q4_K / Q5_K: the 6-bit scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Decodes one GGUF block (`format.block_elems()` weights) into its sub-blocks.
pub(crate) fn decode(format: WeightFormat, blk: &[u8], out: &mut Vec<SubBlock>) {
    debug_assert_eq!(blk.len(), format.block_bytes());
    let mut sub = SubBlock { q: [0; 32], d: [0.0; 2], m: 0.0 };
    match format {
        WeightFormat::Q4_1 => {
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            for k in 0..16 {
                sub.q[k] = (blk[4 + k] & 0x0F) as i8;
                sub.q[k + 16] = (blk[4 + k] >> 4) as i8;
            }
            out.push(SubBlock { d: [d; 2], m, ..sub });
        }
        WeightFormat::Q8_0 => {
            for (q, &b) in sub.q.iter_mut().zip(&blk[2..34]) {
                *q = b as i8;
            }
            out.push(SubBlock { d: [f16_at(blk, 0); 2], ..sub });
        }
        WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
            let (d, m, rest) = match format {
                WeightFormat::Q5_0 => (f16_at(blk, 0), 0.0, &blk[2..]),
                _ => (f16_at(blk, 0), f16_at(blk, 2), &blk[4..]),
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            // Q5_0 is symmetric around 16; Q5_1 carries its offset in `m`.
            let bias = if format == WeightFormat::Q5_0 { 16 } else { 0 };
            for j in 0..16 {
                let hi0 = ((qh >> j) & 1) as u8;
                let hi1 = ((qh >> (j + 16)) & 1) as u8;
                sub.q[j] = ((rest[4 + j] & 0x0F) | (hi0 << 4)) as i8 - bias;
                sub.q[j + 16] = ((rest[4 + j] >> 4) | (hi1 << 4)) as i8 - bias;
            }
            out.push(SubBlock { d: [d; 2], m, ..sub });
        }
        WeightFormat::Q4K | WeightFormat::Q5K => {
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let scales = &blk[4..16];
            let (qh, qs) = match format {
                WeightFormat::Q5K => (Some(&blk[16..48]), &blk[48..176]),
                _ => (None, &blk[16..144]),
            };
            // Each 32 bytes of `qs` hold sub-block 2c in the low nibbles and 2c + 1 in the high.
            for j in 0..8 {
                let (sc, mn) = scale_min_k4(j, scales);
                let bytes = &qs[(j / 2) * 32..][..32];
                for (l, q) in sub.q.iter_mut().enumerate() {
                    let nibble = if j % 2 == 0 { bytes[l] & 0x0F } else { bytes[l] >> 4 };
                    let high = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
                    *q = (nibble | high) as i8;
                }
                out.push(SubBlock { d: [d * sc as f32; 2], m: -dmin * mn as f32, ..sub });
            }
        }
        WeightFormat::Q6K => {
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            let d = f16_at(blk, 208);
            // 128 weights per half: four 32-wide groups, the low 4 bits from `ql`
            // (two groups per 32 bytes, low then high nibble), the top 2 from `qh`.
            for half in 0..2 {
                let (ql, qh, sc) = (&ql[half * 64..], &qh[half * 32..], &sc[half * 8..]);
                for g in 0..4 {
                    for l in 0..32 {
                        let low = if g < 2 { ql[l + 32 * g] & 0x0F } else { ql[l + 32 * (g - 2)] >> 4 };
                        let high = (qh[l] >> (2 * g)) & 3;
                        sub.q[l] = (low | (high << 4)) as i8 - 32;
                    }
                    let scale = |i: usize| d * sc[i] as i8 as f32;
                    out.push(SubBlock { d: [scale(2 * g), scale(2 * g + 1)], m: 0.0, ..sub });
                }
            }
        }
    }
}
