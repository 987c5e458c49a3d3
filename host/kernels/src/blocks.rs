//! GGUF's block formats decoded into one shape: 32-weight sub-blocks of small
//! integers with a scale per 16 weights and an offset per 32, which is what
//! every format kiln runs reduces to (`w = d[k / 16] * q[k] + m`).
//!
//! The K-quants pack 256 weights per super-block with 6-bit (Q4_K, Q5_K) or
//! 8-bit (Q6_K) sub-block scales under one `f16` super-scale. The kernels
//! read them in that integer form (`decode_super`); `decode` flattens them
//! into the per-32 shape too (`d * sc` as the scale), the form the tests
//! compare with candle-core's dequantizer. Bit layouts follow ggml's
//! reference dequantizers (`ggml-quants.c`).

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

/// One K-quant super-block (256 weights) in its integer form, which is what
/// the kernels' `Super` layout keeps: `w = d * sc * q - dmin * mn` for
/// `Q4_K` / `Q5_K`, `w = d * sc * (q - 32)` for `Q6_K`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SuperBlock {
    /// The unsigned weights in element order (`Q6_K`'s before the `- 32`).
    pub q: [u8; 256],
    /// `Q4_K` / `Q5_K`: the eight 6-bit scales (one per 32) then the eight
    /// 6-bit mins; `Q6_K`: sixteen `i8` scales, one per 16.
    pub scales: [u8; 16],
    pub d: f16,
    /// `Q4_K` / `Q5_K` only.
    pub dmin: f16,
}

/// Decodes one `Q4_K`, `Q5_K` or `Q6_K` block.
pub(crate) fn decode_super(format: WeightFormat, blk: &[u8]) -> SuperBlock {
    debug_assert_eq!(blk.len(), format.block_bytes());
    let mut sb = SuperBlock { q: [0; 256], scales: [0; 16], d: f16::ZERO, dmin: f16::ZERO };
    match format {
        WeightFormat::Q4K | WeightFormat::Q5K => {
            sb.d = f16::from_le_bytes([blk[0], blk[1]]);
            sb.dmin = f16::from_le_bytes([blk[2], blk[3]]);
            let (qh, qs) = match format {
                WeightFormat::Q5K => (Some(&blk[16..48]), &blk[48..176]),
                _ => (None, &blk[16..144]),
            };
            // Each 32 bytes of `qs` hold sub-block 2c in the low nibbles and 2c + 1 in the high.
            for j in 0..8 {
                (sb.scales[j], sb.scales[8 + j]) = scale_min_k4(j, &blk[4..16]);
                let bytes = &qs[(j / 2) * 32..][..32];
                for l in 0..32 {
                    let nibble = if j % 2 == 0 { bytes[l] & 0x0F } else { bytes[l] >> 4 };
                    let high = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
                    sb.q[32 * j + l] = nibble | high;
                }
            }
        }
        WeightFormat::Q6K => {
            let (ql, qh) = (&blk[..128], &blk[128..192]);
            sb.scales.copy_from_slice(&blk[192..208]);
            sb.d = f16::from_le_bytes([blk[208], blk[209]]);
            // 128 weights per half: four 32-wide groups, the low 4 bits from `ql`
            // (two groups per 32 bytes, low then high nibble), the top 2 from `qh`.
            for half in 0..2 {
                let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
                for g in 0..4 {
                    for l in 0..32 {
                        let low = if g < 2 { ql[l + 32 * g] & 0x0F } else { ql[l + 32 * (g - 2)] >> 4 };
                        let high = (qh[l] >> (2 * g)) & 3;
                        sb.q[128 * half + 32 * g + l] = low | (high << 4);
                    }
                }
            }
        }
        other => unreachable!("{other:?} is not a K-quant"),
    }
    sb
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
        WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => {
            let sb = decode_super(format, blk);
            let (d, dmin) = (sb.d.to_f32(), sb.dmin.to_f32());
            for j in 0..8 {
                for (l, q) in sub.q.iter_mut().enumerate() {
                    let q0 = sb.q[32 * j + l] as i8;
                    *q = if format == WeightFormat::Q6K { q0 - 32 } else { q0 };
                }
                let (scale, m) = match format {
                    WeightFormat::Q6K => {
                        let sc = |k: usize| d * sb.scales[k] as i8 as f32;
                        ([sc(2 * j), sc(2 * j + 1)], 0.0)
                    }
                    _ => ([d * sb.scales[j] as f32; 2], -dmin * sb.scales[8 + j] as f32),
                };
                out.push(SubBlock { d: scale, m, ..sub });
            }
        }
    }
}
