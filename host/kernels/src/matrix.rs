//! Quantized weight matrices repacked for the kernels, and the batched product driver.

use half::f16;
use rayon::prelude::*;

use crate::acts::{ActRow, QuantizedActs};
use crate::{BLOCK, Isa, scalar};

/// Activation rows dotted with each weight row while it sits in registers.
const MAX_GROUP: usize = 8;
/// Weight rows per cache block (64 rows of 1536 Q4_1 weights: 48 KiB).
const ROW_BLOCK: usize = 64;

/// GGUF formats the kernels run natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// 32 weights as 4-bit `q` with `w = d * q + m` (GGUF `Q4_1`, 20 bytes a block).
    Q4_1,
    /// 32 weights as `i8` with `w = d * q` (GGUF `Q8_0`, 34 bytes a block).
    Q8_0,
}

impl WeightFormat {
    fn raw_block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
        }
    }
}

/// A `rows x cols` weight matrix, repacked. Per row and per pair of blocks:
/// - `Q4_1`: 32 bytes whose low nibbles are the first block's 32 weights in
///   order and whose high nibbles are the second's (GGUF interleaves halves of
///   one block instead, which costs a shuffle per block in the kernel);
/// - `Q8_0`: the two blocks' 64 `i8` values, as in GGUF.
///
/// Scales `d` (and `m` for `Q4_1`) stay `f16`, in arrays of their own, so the
/// bytes read per step are no more than the GGUF file's.
#[derive(Debug)]
pub struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    /// Blocks per row, padded to even.
    nb: usize,
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
        if !cols.is_multiple_of(BLOCK) || raw.len() != rows * cols / BLOCK * format.raw_block_bytes() {
            return None;
        }
        let raw_nb = cols / BLOCK;
        let nb = raw_nb.next_multiple_of(2);
        let mut qs = vec![0u8; rows * nb * BLOCK / if format == WeightFormat::Q4_1 { 2 } else { 1 }];
        let mut d = vec![f16::ZERO; rows * nb];
        let mut m = vec![f16::ZERO; if format == WeightFormat::Q4_1 { rows * nb } else { 0 }];
        let bb = format.raw_block_bytes();
        for r in 0..rows {
            for b in 0..raw_nb {
                let blk = &raw[(r * raw_nb + b) * bb..][..bb];
                d[r * nb + b] = f16::from_le_bytes([blk[0], blk[1]]);
                match format {
                    WeightFormat::Q4_1 => {
                        m[r * nb + b] = f16::from_le_bytes([blk[2], blk[3]]);
                        let nibbles = &blk[4..20];
                        let pair = &mut qs[(r * nb / 2 + b / 2) * BLOCK..][..BLOCK];
                        let shift = if b % 2 == 0 { 0 } else { 4 };
                        for k in 0..BLOCK {
                            let q = if k < 16 { nibbles[k] & 0x0F } else { nibbles[k - 16] >> 4 };
                            pair[k] |= q << shift;
                        }
                    }
                    WeightFormat::Q8_0 => {
                        qs[(r * nb + b) * BLOCK..][..BLOCK].copy_from_slice(&blk[2..34]);
                    }
                }
            }
        }
        Some(QMatrix { format, rows, cols, nb, qs, d, m })
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

    pub(crate) fn row(&self, r: usize) -> WeightRow<'_> {
        let nb = self.nb;
        let row_bytes = match self.format {
            WeightFormat::Q4_1 => nb * BLOCK / 2,
            WeightFormat::Q8_0 => nb * BLOCK,
        };
        WeightRow {
            qs: &self.qs[r * row_bytes..(r + 1) * row_bytes],
            d: &self.d[r * nb..(r + 1) * nb],
            m: if self.m.is_empty() { &[] } else { &self.m[r * nb..(r + 1) * nb] },
        }
    }

    /// Dequantizes row `r` (for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let row = self.row(r);
        for (b, block) in out.chunks_mut(BLOCK).enumerate() {
            let d = row.d[b].to_f32();
            for (k, v) in block.iter_mut().enumerate() {
                *v = match self.format {
                    WeightFormat::Q4_1 => {
                        let byte = row.qs[(b / 2) * BLOCK + k];
                        let q = if b % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                        d * q as f32 + row.m[b].to_f32()
                    }
                    WeightFormat::Q8_0 => d * row.qs[b * BLOCK + k] as i8 as f32,
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
        assert_eq!(x.nb, self.nb);
        assert_eq!(out.len(), x.rows * self.rows, "output shape mismatch");
        let n = self.rows;
        let work = n * self.nb * x.rows;
        // Below this many block products a thread hand-off costs more than it saves.
        let tasks = if work < 8192 { 1 } else { (rayon::current_num_threads() * 4).min(n) };
        let chunk = n.div_ceil(tasks.max(1));
        let out_ptr = SendPtr(out.as_mut_ptr());
        let run = |start: usize| {
            let end = (start + chunk).min(n);
            // Row blocks outside, activation groups inside: a block's weights are
            // read from memory once and stay in cache for every group.
            for block_start in (start..end).step_by(ROW_BLOCK) {
                let rows = block_start..(block_start + ROW_BLOCK).min(end);
                let mut b = 0;
                while b < x.rows {
                    let take = (x.rows - b).min(MAX_GROUP);
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
        match (isa, self.format) {
            // SAFETY (all x86 arms): `matmul_with` clamped `isa` to what the CPU
            // reports; `out` holds N rows of `n` outputs.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, WeightFormat::Q4_1) => unsafe {
                crate::x86::q4_1_rows_avx512::<N>(self, rows, a, out, n)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, WeightFormat::Q8_0) => unsafe {
                crate::x86::q8_0_rows_avx512::<N>(self, rows, a, out, n)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, WeightFormat::Q4_1) => unsafe { crate::x86::q4_1_rows_avx2::<N>(self, rows, a, out, n) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, WeightFormat::Q8_0) => unsafe { crate::x86::q8_0_rows_avx2::<N>(self, rows, a, out, n) },
            (_, format) => {
                let npairs = self.nb / 2;
                for r in rows {
                    for (i, act) in a.iter().enumerate() {
                        let v = match format {
                            WeightFormat::Q4_1 => scalar::q4_1(self.row(r), *act, npairs),
                            WeightFormat::Q8_0 => scalar::q8_0(self.row(r), *act, npairs),
                        };
                        // SAFETY: as above.
                        unsafe { *out.add(i * n + r) = v };
                    }
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
