//! The `Super` layout: each K-quant super-block (256 weights) as one
//! contiguous record, the way GGUF keeps its blocks, in an order the kernels
//! read without shuffles:
//!
//! | bytes | what |
//! |---|---|
//! | 128 | low four bits of the unsigned `q` (`Q6_K`'s `q - 32` stored as `q`) |
//! | 0 / 32 / 64 | their top bits (`Q4_K` / `Q5_K` / `Q6_K`) |
//! | 16 | sub-scales: `Q4_K` / `Q5_K`'s eight scales then eight mins, or `Q6_K`'s sixteen `i8` scales |
//! | 4 | `[d, dmin]` as `f16` |
//!
//! One record after another makes a single-sequence step one stream of
//! memory per thread. On the 2-core test machine a plain read of 220 MB laid
//! out as three arrays (weights, scales, super-scales) ran at 24.5 GB/s with
//! two threads and 16.6 with one; as records, 30.9 and 26.9. The kernels
//! gain less (a `Q4_K` product ~6% faster, `Q6_K` within noise), the 1B
//! model's single-sequence decode ~4%.
//!
//! Values sit in the activations' [`super_slot`] order, at position
//! `p = super_slot(e)` for value `e` (64-byte groups `p / 64`): the low bits
//! in byte `64 (p / 128) + p % 64` of the first 128 (the low nibbles of 64
//! bytes are one group, the high nibbles the next, so one load and two
//! masks give two registers); the top bits in byte `p % 32` of a 32-byte
//! row, for `Q5_K` bit `p / 32` of its one row and for `Q6_K` bits
//! `2 ((p / 32) % 4)..+2` of row `p / 128`. Each 32-value quarter of a group
//! thus takes its top bits from one bit position of one row: a shift and a mask.

use half::f16;

use crate::WeightFormat;
use crate::acts::{SUPER, super_slot};
use crate::matrix::WeightRow;

/// Byte offsets within one record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub qh: usize,
    pub sc: usize,
    pub d: usize,
    pub len: usize,
}

impl Record {
    pub(crate) const fn with_top_bytes(qh_bytes: usize) -> Record {
        let sc = SUPER / 2 + qh_bytes;
        Record { qh: SUPER / 2, sc, d: sc + 16, len: sc + 20 }
    }

    pub(crate) fn of(format: WeightFormat) -> Record {
        Record::with_top_bytes(format.super_qh_bytes())
    }
}

/// Repacks GGUF K-quant blocks (whole rows, so records simply follow each
/// other) into zeroed `out`.
pub(crate) fn repack(format: WeightFormat, raw: &[u8], out: &mut [u8]) {
    let rec = Record::of(format);
    for (blk, out) in raw.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(rec.len)) {
        let sb = crate::blocks::decode_super(format, blk);
        out[rec.sc..rec.d].copy_from_slice(&sb.scales);
        out[rec.d..rec.d + 2].copy_from_slice(&sb.d.to_le_bytes());
        out[rec.d + 2..rec.len].copy_from_slice(&sb.dmin.to_le_bytes());
        let (qs, rest) = out.split_at_mut(rec.qh);
        let qh = &mut rest[..rec.sc - rec.qh];
        // Four values in a row stay together (`super_slot`): one lookup each.
        for (four, q) in sb.q.chunks_exact(4).enumerate() {
            let at = At::of(4 * four);
            for (i, &q) in q.iter().enumerate() {
                qs[at.qs + i] |= (q & 0x0F) << at.nibble_shift;
                match format {
                    WeightFormat::Q5K => qh[at.qh5 + i] |= (q >> 4) << at.qh5_shift,
                    WeightFormat::Q6K => qh[at.qh6 + i] |= (q >> 4) << at.qh6_shift,
                    _ => {}
                }
            }
        }
    }
}

/// Where a record keeps value `e`'s bits (offsets from the `qs` and `qh` parts).
struct At {
    qs: usize,
    nibble_shift: u8,
    qh5: usize,
    qh5_shift: u8,
    qh6: usize,
    qh6_shift: u8,
}

impl At {
    #[inline(always)]
    fn of(e: usize) -> At {
        let p = super_slot(e);
        At {
            qs: 64 * (p / 128) + p % 64,
            nibble_shift: 4 * ((p / 64) % 2) as u8,
            qh5: p % 32,
            qh5_shift: (p / 32) as u8,
            qh6: 32 * (p / 128) + p % 32,
            qh6_shift: 2 * ((p / 32) % 4) as u8,
        }
    }
}

/// Record `s` of a row.
fn record<'a>(format: WeightFormat, row: WeightRow<'a>, s: usize) -> (&'a [u8], Record) {
    let rec = Record::of(format);
    (&row.qs[s * rec.len..][..rec.len], rec)
}

/// The unsigned `q` of weight `k` of the row's 32-weight block `b`.
pub(crate) fn q(format: WeightFormat, row: WeightRow<'_>, b: usize, k: usize) -> u8 {
    let (bytes, rec) = record(format, row, b / 8);
    let at = At::of(32 * (b % 8) + k);
    let low = (bytes[at.qs] >> at.nibble_shift) & 0x0F;
    let qh = &bytes[rec.qh..rec.sc];
    let high = match format {
        WeightFormat::Q5K => (qh[at.qh5] >> at.qh5_shift) & 1,
        WeightFormat::Q6K => (qh[at.qh6] >> at.qh6_shift) & 3,
        _ => 0,
    };
    low | (high << 4)
}

/// Super-block `s`'s sixteen sub-scale bytes and its `d`, `dmin`.
pub(crate) fn scales(format: WeightFormat, row: WeightRow<'_>, s: usize) -> (&[u8], f32, f32) {
    let (bytes, rec) = record(format, row, s);
    let half = |at: usize| f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
    (&bytes[rec.sc..rec.d], half(rec.d), half(rec.d + 2))
}

/// Weight `k` of block `b` is `scale * q + offset`.
pub(crate) fn scale(format: WeightFormat, row: WeightRow<'_>, b: usize, k: usize) -> (f32, f32) {
    let (sc, d, dmin) = scales(format, row, b / 8);
    let j = b % 8;
    match format {
        WeightFormat::Q6K => {
            let scale = d * sc[2 * j + k / 16] as i8 as f32;
            (scale, -32.0 * scale)
        }
        _ => (d * sc[j] as f32, -dmin * sc[8 + j] as f32),
    }
}
