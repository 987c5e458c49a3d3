//! Quantized weight matrices repacked for the kernels, and the batched product driver.

use half::f16;
use rayon::prelude::*;

use crate::acts::{ActFormat, ActRow, QuantizedActs, SUPER};
use crate::records::Record;
use crate::{BLOCK, Isa, scalar};

/// Activation rows dotted with each weight row while it sits in registers.
const MAX_GROUP: usize = 8;
/// The AVX-512 K-quant kernel's group: it takes two weight rows at a time, so
/// four activation rows fill its 32 registers (eight would spill; ~10%
/// slower at 128 rows).
const SUPER_AVX512_GROUP: usize = 4;
/// Weight rows per cache block (64 rows of 1536 Q4_1 weights: 48 KiB).
const ROW_BLOCK: usize = 64;

/// GGUF formats the kernels run natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// 32 weights as 4-bit `q` with `w = d * q + m` (20 bytes a block).
    Q4_1,
    /// 32 weights as `i8` with `w = d * q` (34 bytes a block).
    Q8_0,
    /// 32 weights as 5-bit `q` with `w = d * (q - 16)` (22 bytes a block).
    Q5_0,
    /// 32 weights as 5-bit `q` with `w = d * q + m` (24 bytes a block).
    Q5_1,
    /// 256 weights in eight sub-blocks of 4-bit `q`, each with 6-bit scale and
    /// min under `f16` super-scales (144 bytes a block).
    Q4K,
    /// As `Q4_K` with 5-bit `q` (176 bytes a block).
    Q5K,
    /// 256 weights as 6-bit `q` in sixteen sub-blocks with `i8` scales,
    /// `w = d * sc * (q - 32)` (210 bytes a block).
    Q6K,
}

impl WeightFormat {
    /// Weights per GGUF block.
    pub fn block_elems(self) -> usize {
        match self {
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// Bytes per GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q5_1 => 24,
            WeightFormat::Q4K => 144,
            WeightFormat::Q5K => 176,
            WeightFormat::Q6K => 210,
        }
    }

    fn layout(self) -> Layout {
        match self {
            WeightFormat::Q4_1 => Layout::Nibbles,
            // Q5_0 is symmetric (`q - 16`) with one scale a block: Q8_0's layout exactly.
            WeightFormat::Q8_0 | WeightFormat::Q5_0 => Layout::Bytes,
            WeightFormat::Q5_1 => Layout::Bytes16,
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => Layout::Super,
        }
    }

    /// Whether weights carry an offset (`m`) besides their scale.
    fn has_offset(self) -> bool {
        matches!(self, WeightFormat::Q4_1 | WeightFormat::Q5_1)
    }

    /// `Super`: the top bits' bytes per super-block (`qh`).
    pub(crate) fn super_qh_bytes(self) -> usize {
        match self {
            WeightFormat::Q5K => 32,
            WeightFormat::Q6K => 64,
            _ => 0,
        }
    }
}

/// How a matrix is held for the kernels, whatever GGUF format it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// 4-bit `q`, one `d` and one `m` per 32 weights (`Q4_1`).
    Nibbles,
    /// `i8` `q`, one `d` per 32 weights (`Q8_0`, `Q5_0`).
    Bytes,
    /// `i8` `q`, one `d` per 16 weights and an `m` per 32 (`Q5_1`, its 5-bit
    /// weights widened to bytes).
    Bytes16,
    /// The K-quants (`Q4_K`, `Q5_K`, `Q6_K`) kept as GGUF has them, 256
    /// weights a super-block with integer sub-scales under `f16` `d` (and
    /// `dmin`), read with [`ActFormat::SuperBlocks`] activations: a
    /// super-block's products stay in integers until one float multiply, and
    /// a step reads 4.6 / 5.6 / 6.6 bits a weight (GGUF's 4.5 / 5.5 / 6.6).
    Super,
}

/// A `rows x cols` weight matrix, repacked. Per row and per pair of blocks:
/// - `Nibbles`: 32 bytes whose low nibbles are the first block's 32 weights in
///   order and whose high nibbles are the second's (GGUF's `Q4_1` interleaves
///   halves of one block instead, which costs a shuffle per block in the
///   kernel; `Q4_K` already stores pairs this way);
/// - `Bytes` and `Bytes16`: the two blocks' 64 `i8` values;
/// - `Super`: one record per super-block in `qs` (see [`crate::records`]).
///
/// Other layouts' scales `d` (and offsets `m`) are `f16`, in arrays of their own.
#[derive(Debug)]
pub struct QMatrix {
    format: WeightFormat,
    layout: Layout,
    rows: usize,
    cols: usize,
    /// Blocks per row, padded to even.
    nb: usize,
    /// Each array's elements per row (fixed at load: `row` runs once a row
    /// of every product).
    size: RowSizes,
    qs: Vec<u8>,
    d: Vec<f16>,
    m: Vec<f16>,
}

/// One repacked weight row, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightRow<'a> {
    pub qs: &'a [u8],
    pub d: &'a [f16],
    pub m: &'a [f16],
}

impl QMatrix {
    /// Repacks GGUF block data of a `rows x cols` matrix. Returns `None` when
    /// `raw` does not have the size that format and shape imply.
    pub fn from_gguf(format: WeightFormat, rows: usize, cols: usize, raw: &[u8]) -> Option<Self> {
        let per = format.block_elems();
        if cols == 0 || !cols.is_multiple_of(per) || raw.len() != rows * (cols / per) * format.block_bytes() {
            return None;
        }
        let layout = format.layout();
        let nb = (cols / BLOCK).next_multiple_of(2);
        let size = RowSizes::of(format, cols);
        let mut qs = vec![0u8; rows * size.qs];
        let mut d = vec![f16::ZERO; rows * size.d];
        let mut m = vec![f16::ZERO; rows * size.m];
        // Rows repack independently (a 1B model's ~800 MB take seconds on one
        // core), each task straight into its rows of the final arrays, so no
        // tensor is ever held twice.
        let mut rest = PackedRows { qs: &mut qs, d: &mut d, m: &mut m };
        let outs: Vec<PackedRows<'_>> = (0..rows)
            .step_by(ROWS_PER_REPACK)
            .map(|start| rest.take_rows(ROWS_PER_REPACK.min(rows - start), size))
            .collect();
        let row_bytes = cols / per * format.block_bytes();
        raw.par_chunks(ROWS_PER_REPACK * row_bytes).zip(outs).for_each(|(raw, out)| repack(format, cols, raw, out));
        Some(QMatrix { format, layout, rows, cols, nb, size, qs, d, m })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of weights and scales read by one full product.
    pub fn size_in_bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// How activations must be quantized for [`Self::matmul`].
    pub fn act_format(&self) -> ActFormat {
        if self.layout == Layout::Super { ActFormat::SuperBlocks } else { ActFormat::Blocks }
    }

    #[inline]
    pub(crate) fn row(&self, r: usize) -> WeightRow<'_> {
        let size = self.size;
        WeightRow {
            qs: &self.qs[r * size.qs..(r + 1) * size.qs],
            d: &self.d[r * size.d..(r + 1) * size.d],
            m: &self.m[r * size.m..(r + 1) * size.m],
        }
    }

    /// Dequantizes row `r` (for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let row = self.row(r);
        if self.layout == Layout::Super {
            for (b, block) in out.chunks_mut(BLOCK).enumerate() {
                for (k, v) in block.iter_mut().enumerate() {
                    let (scale, offset) = crate::records::scale(self.format, row, b, k);
                    *v = scale * crate::records::q(self.format, row, b, k) as f32 + offset;
                }
            }
            return;
        }
        for (b, block) in out.chunks_mut(BLOCK).enumerate() {
            let m = row.m.get(b).map_or(0.0, |m| m.to_f32());
            for (k, v) in block.iter_mut().enumerate() {
                *v = match self.layout {
                    Layout::Nibbles => {
                        let byte = row.qs[(b / 2) * BLOCK + k];
                        let q = if b % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                        row.d[b].to_f32() * q as f32 + m
                    }
                    Layout::Bytes => row.d[b].to_f32() * row.qs[b * BLOCK + k] as i8 as f32,
                    Layout::Bytes16 => row.d[2 * b + k / 16].to_f32() * row.qs[b * BLOCK + k] as i8 as f32 + m,
                    Layout::Super => unreachable!("handled above"),
                };
            }
        }
    }

    /// `out[i][r] = dot(weight row r, activation row i)`: `out` is
    /// `x.rows() x self.rows()`, row-major. Runs on the rayon pool.
    pub fn matmul(&self, x: &QuantizedActs, out: &mut [f32]) {
        self.matmul_with(Isa::current(), x, out)
    }

    /// [`Self::matmul`] on a given instruction set (tests and benchmarks compare
    /// them); one this CPU lacks falls back to the best it has.
    pub fn matmul_with(&self, isa: Isa, x: &QuantizedActs, out: &mut [f32]) {
        let isa = isa.supported();
        assert_eq!(x.cols, self.cols, "activation width != weight columns");
        assert_eq!(x.format, self.act_format(), "activations quantized for another layout");
        assert_eq!(x.nb, self.nb);
        assert_eq!(out.len(), x.rows * self.rows, "output shape mismatch");
        let n = self.rows;
        let work = n * self.nb * x.rows;
        // Below this many block products a thread hand-off costs more than it saves.
        let tasks = if work < 8192 { 1 } else { (rayon::current_num_threads() * 4).min(n) };
        let chunk = n.div_ceil(tasks.max(1));
        let out_ptr = SendPtr(out.as_mut_ptr());
        let max_group =
            if isa == Isa::Avx512Vnni && self.layout == Layout::Super { SUPER_AVX512_GROUP } else { MAX_GROUP };
        let run = |start: usize| {
            let end = (start + chunk).min(n);
            // Row blocks outside, activation groups inside: a block's weights are
            // read from memory once and stay in cache for every group.
            for block_start in (start..end).step_by(ROW_BLOCK) {
                let rows = block_start..(block_start + ROW_BLOCK).min(end);
                let mut b = 0;
                while b < x.rows {
                    let take = (x.rows - b).min(max_group);
                    // SAFETY: each task writes only columns `rows` of the output
                    // (which no other task touches) for activation rows `b..b + take`.
                    let out = unsafe { out_ptr.get().add(b * n) };
                    match take {
                        8 => self.rows_group::<8>(isa, rows.clone(), x, b, out),
                        7 => self.rows_group::<7>(isa, rows.clone(), x, b, out),
                        6 => self.rows_group::<6>(isa, rows.clone(), x, b, out),
                        5 => self.rows_group::<5>(isa, rows.clone(), x, b, out),
                        4 => self.rows_group::<4>(isa, rows.clone(), x, b, out),
                        3 => self.rows_group::<3>(isa, rows.clone(), x, b, out),
                        2 => self.rows_group::<2>(isa, rows.clone(), x, b, out),
                        _ => self.rows_group::<1>(isa, rows.clone(), x, b, out),
                    }
                    b += take;
                }
            }
        };
        if tasks <= 1 {
            run(0);
        } else {
            (0..n).step_by(chunk).collect::<Vec<_>>().into_par_iter().for_each(run);
        }
    }

    pub(crate) fn nb(&self) -> usize {
        self.nb
    }

    /// Rows `rows` against activation rows `b..b + N`, into `out` (`N` rows of `self.rows`).
    fn rows_group<const N: usize>(
        &self,
        isa: Isa,
        rows: std::ops::Range<usize>,
        x: &QuantizedActs,
        b: usize,
        out: *mut f32,
    ) {
        let a: [ActRow<'_>; N] = std::array::from_fn(|i| x.row(b + i));
        let n = self.rows;
        match (isa, self.layout) {
            // SAFETY (all x86 arms): `matmul_with` clamped `isa` to what the CPU
            // reports; `out` holds N rows of `n` outputs.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, Layout::Nibbles) => unsafe { crate::x86::q4_1_rows_avx512::<N>(self, rows, a, out, n) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, Layout::Bytes) => unsafe { crate::x86::q8_0_rows_avx512::<N>(self, rows, a, out, n) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, Layout::Bytes16) => unsafe {
                crate::x86::bytes16_rows_avx512::<N>(self, rows, a, out, n)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Nibbles) => unsafe { crate::x86::q4_1_rows_avx2::<N>(self, rows, a, out, n) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Bytes) => unsafe { crate::x86::q8_0_rows_avx2::<N>(self, rows, a, out, n) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Bytes16) => unsafe { crate::x86::bytes16_rows_avx2::<N>(self, rows, a, out, n) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni | Isa::Avx2, Layout::Super) => unsafe {
                crate::x86_kquants::super_rows::<N>(isa, self, rows, a, out, n)
            },
            (_, layout) => {
                let npairs = self.nb / 2;
                for r in rows {
                    for (i, act) in a.iter().enumerate() {
                        let v = match layout {
                            Layout::Nibbles => scalar::q4_1(self.row(r), *act, npairs),
                            Layout::Bytes => scalar::q8_0(self.row(r), *act, npairs),
                            Layout::Bytes16 => scalar::bytes16(self.row(r), *act, npairs),
                            Layout::Super => scalar::super_blocks(self.format, self.row(r), *act),
                        };
                        // SAFETY: as above.
                        unsafe { *out.add(i * n + r) = v };
                    }
                }
            }
        }
    }
}

/// Rows per parallel repacking task.
const ROWS_PER_REPACK: usize = 64;

/// Elements of each of [`QMatrix`]'s arrays that one row takes.
#[derive(Clone, Copy, Debug)]
struct RowSizes {
    qs: usize,
    d: usize,
    m: usize,
}

impl RowSizes {
    fn of(format: WeightFormat, cols: usize) -> RowSizes {
        let nb = (cols / BLOCK).next_multiple_of(2);
        let m = if format.has_offset() { nb } else { 0 };
        match format.layout() {
            Layout::Nibbles => RowSizes { qs: nb * BLOCK / 2, d: nb, m },
            Layout::Bytes => RowSizes { qs: nb * BLOCK, d: nb, m },
            Layout::Bytes16 => RowSizes { qs: nb * BLOCK, d: 2 * nb, m },
            Layout::Super => RowSizes { qs: cols / SUPER * Record::of(format).len, d: 0, m },
        }
    }
}

/// Some consecutive rows' share of each of [`QMatrix`]'s arrays, zeroed, for
/// one repacking task to fill.
struct PackedRows<'a> {
    qs: &'a mut [u8],
    d: &'a mut [f16],
    m: &'a mut [f16],
}

impl<'a> PackedRows<'a> {
    /// Splits off the first `rows` rows, leaving the rest in `self`.
    fn take_rows(&mut self, rows: usize, size: RowSizes) -> PackedRows<'a> {
        fn cut<'a, T>(v: &mut &'a mut [T], n: usize) -> &'a mut [T] {
            let (head, tail) = std::mem::take(v).split_at_mut(n);
            *v = tail;
            head
        }
        PackedRows {
            qs: cut(&mut self.qs, rows * size.qs),
            d: cut(&mut self.d, rows * size.d),
            m: cut(&mut self.m, rows * size.m),
        }
    }
}

/// Repacks the whole rows of GGUF data in `raw` into `out`.
fn repack(format: WeightFormat, cols: usize, raw: &[u8], out: PackedRows<'_>) {
    if format.layout() == Layout::Super {
        return crate::records::repack(format, raw, out.qs);
    }
    let layout = format.layout();
    let row_bytes = cols / BLOCK * format.block_bytes();
    let rows = raw.len() / row_bytes;
    let raw_nb = cols / BLOCK;
    let nb = raw_nb.next_multiple_of(2);
    let halves = layout == Layout::Bytes16;
    let packed = layout == Layout::Nibbles;
    let PackedRows { qs, d, m, .. } = out;
    let mut subs = Vec::with_capacity(raw_nb);
    for r in 0..rows {
        subs.clear();
        for blk in raw[r * row_bytes..(r + 1) * row_bytes].chunks_exact(format.block_bytes()) {
            crate::blocks::decode(format, blk, &mut subs);
        }
        for (b, sub) in subs.iter().enumerate() {
            let i = r * nb + b;
            if halves {
                d[2 * i] = f16::from_f32(sub.d[0]);
                d[2 * i + 1] = f16::from_f32(sub.d[1]);
            } else {
                d[i] = f16::from_f32(sub.d[0]);
            }
            if !m.is_empty() {
                m[i] = f16::from_f32(sub.m);
            }
            if packed {
                let pair = (r * nb / 2 + b / 2) * BLOCK;
                let shift = if b % 2 == 0 { 0 } else { 4 };
                for k in 0..BLOCK {
                    qs[pair + k] |= (sub.q[k] as u8 & 0x0F) << shift;
                }
            } else {
                for (byte, &q) in qs[i * BLOCK..][..BLOCK].iter_mut().zip(&sub.q) {
                    *byte = q as u8;
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only used for disjoint writes inside `matmul_with`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
