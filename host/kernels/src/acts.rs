//! Activations quantized to 8 bits, the right-hand side of every product.

use crate::BLOCK;

/// Values per super-block: the K-quants' block, and [`ActFormat::SuperBlocks`]'.
pub(crate) const SUPER: usize = 256;

/// Where value `e` of a super-block is stored, in the activations and in the
/// K-quant weights alike: value `t` of 16-value sub-block `j` goes to byte
/// `4 j + t % 4` of 64-byte group `t / 4`. Each 32-bit lane `j` of a 64-byte
/// register then holds four values of sub-block `j` in every group, so the
/// kernels sum a whole super-block with four `vpdpbusd` into one lane per
/// sub-block and apply the sub-scales once, not once per 64 weights.
#[inline(always)]
pub(crate) const fn super_slot(e: usize) -> usize {
    let (j, t) = (e / 16, e % 16);
    64 * (t / 4) + 4 * j + t % 4
}

/// How activations are quantized; each weight layout reads one (see
/// [`crate::QMatrix::act_format`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActFormat {
    /// One scale per 32 values (GGUF's `Q8_0` / `Q8_1`), for the 32-weight formats.
    #[default]
    Blocks,
    /// One scale per 256 values with sums per 16 and per 32 (GGUF's `Q8_K`,
    /// its sums carried as floats), for the K-quants: a super-block's
    /// products then stay in integers until one conversion, as llama.cpp's do.
    SuperBlocks,
}

/// `rows` activation rows of `cols` values as `i8`. [`ActFormat::Blocks`]:
/// each 32-value block with one `f32` scale `d` and `s = d * sum(q)`, rows
/// padded to an even number of blocks with zeros so the kernels can always
/// read blocks in pairs (64 bytes, one AVX-512 register).
/// [`ActFormat::SuperBlocks`]: each 256 values with one scale `sd` and
/// `sd` times the sums of `q` over each 16 and each 32 (`sums`), the values
/// in [`super_slot`] order.
#[derive(Debug, Default, Clone)]
pub struct QuantizedActs {
    pub(crate) format: ActFormat,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Blocks per row, padded to even.
    pub(crate) nb: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) s: Vec<f32>,
    /// `d * sum(q)` without the f16 rounding of `s`: the AVX-512 `Q8_0` path
    /// subtracts `128 *` this, which would amplify any rounding 128-fold.
    pub(crate) sum_d: Vec<f32>,
    /// `SuperBlocks`: one scale per 256 values.
    pub(crate) sd: Vec<f32>,
    /// `SuperBlocks`: per 256 values, `sd` times the sixteen sums of `q` over
    /// each 16 then the eight over each 32 (`BSUMS` in all): the kernels
    /// multiply them by the weights' mins (or `Q6_K`'s `32 * scale`) in
    /// float, one vector operation per super-block instead of an integer
    /// product, a conversion and a multiply by `sd`.
    pub(crate) sums: Vec<f32>,
}

/// `sums` entries per super-block.
pub(crate) const BSUMS: usize = 24;

impl QuantizedActs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> ActFormat {
        self.format
    }

    /// Quantizes `x` (`rows` x `cols`, row-major) into `self` in `format`,
    /// reusing its buffers. `SuperBlocks` needs `cols` a multiple of 256 (as
    /// the K-quant matrices that read it have).
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, format: ActFormat) {
        assert_eq!(x.len(), rows * cols, "activation shape mismatch");
        let nb = cols.div_ceil(BLOCK).next_multiple_of(2);
        self.format = format;
        self.rows = rows;
        self.cols = cols;
        self.nb = nb;
        self.qs.clear();
        self.qs.resize(rows * nb * BLOCK, 0);
        let (per_block, per_super) = match format {
            ActFormat::Blocks => (rows * nb, 0),
            ActFormat::SuperBlocks => {
                assert!(cols.is_multiple_of(SUPER), "super-block activations need whole super-blocks");
                (0, rows * cols / SUPER)
            }
        };
        for v in [&mut self.d, &mut self.s, &mut self.sum_d] {
            v.clear();
            v.resize(per_block, 0.0);
        }
        self.sd.clear();
        self.sd.resize(per_super, 0.0);
        self.sums.clear();
        self.sums.resize(per_super * BSUMS, 0.0);
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::current() != crate::Isa::Scalar {
            // SAFETY: every non-scalar `Isa` implies AVX2 and FMA.
            unsafe { self.quantize_avx2(x) };
            return;
        }
        self.quantize_rows(x);
    }

    /// The same loops compiled with AVX2: `round` becomes `vroundps` instead of a
    /// libm call per value, and the block loops vectorize.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_avx2(&mut self, x: &[f32]) {
        self.quantize_rows(x)
    }

    #[inline(always)]
    fn quantize_rows(&mut self, x: &[f32]) {
        match self.format {
            ActFormat::Blocks => self.quantize_blocks(x),
            ActFormat::SuperBlocks => self.quantize_super_blocks(x),
        }
    }

    #[inline(always)]
    fn quantize_super_blocks(&mut self, x: &[f32]) {
        for (s, chunk) in x.chunks_exact(SUPER).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Unrounded, as `Q8_K` keeps it (an f32 per 256 values).
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.sd[s] = d;
            let out = &mut self.qs[s * SUPER..][..SUPER];
            let mut sums = [0i32; 16];
            for (j, chunk) in chunk.chunks_exact(16).enumerate() {
                let mut q = [0i8; 16];
                sums[j] = quantize_into(&mut q, chunk, inv);
                for (g, four) in q.chunks_exact(4).enumerate() {
                    out[super_slot(16 * j + 4 * g)..][..4].copy_from_slice(four);
                }
            }
            let out = &mut self.sums[s * BSUMS..][..BSUMS];
            for j in 0..16 {
                out[j] = d * sums[j] as f32;
            }
            for j in 0..8 {
                out[16 + j] = d * (sums[2 * j] + sums[2 * j + 1]) as f32;
            }
        }
    }

    #[inline(always)]
    fn quantize_blocks(&mut self, x: &[f32]) {
        let (rows, cols, nb) = (self.rows, self.cols, self.nb);
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            for (b, chunk) in row.chunks(BLOCK).enumerate() {
                let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let out = &mut self.qs[(r * nb + b) * BLOCK..][..chunk.len()];
                // Each half of 16 in its own branch-free loop, which vectorizes.
                let half = chunk.len().min(16);
                let (out_lo, out_hi) = out.split_at_mut(half);
                let first = quantize_into(out_lo, &chunk[..half], inv);
                let sum = first + quantize_into(out_hi, &chunk[half..], inv);
                // Scales rounded through f16 as llama.cpp's Q8_0/Q8_1 store them, so
                // kiln's numerics track the reference implementation's.
                let d16 = half::f16::from_f32(d).to_f32();
                self.d[r * nb + b] = d16;
                self.s[r * nb + b] = half::f16::from_f32(d * sum as f32).to_f32();
                self.sum_d[r * nb + b] = d16 * sum as f32;
            }
        }
    }

    pub(crate) fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.nb;
        // The other format's arrays are empty: their slices are too.
        let per_block = |v: &'_ [f32]| if v.is_empty() { 0..0 } else { r * nb..(r + 1) * nb };
        let nsb = self.cols / SUPER;
        let per_super = if self.sd.is_empty() { 0..0 } else { r * nsb..(r + 1) * nsb };
        ActRow {
            qs: &self.qs[r * nb * BLOCK..(r + 1) * nb * BLOCK],
            d: &self.d[per_block(&self.d)],
            s: &self.s[per_block(&self.s)],
            sum_d: &self.sum_d[per_block(&self.sum_d)],
            sd: &self.sd[per_super.clone()],
            sums: &self.sums[per_super.start * BSUMS..per_super.end * BSUMS],
        }
    }
}

/// `out = round(x * inv)`; returns the sum of `out`.
#[inline(always)]
fn quantize_into(out: &mut [i8], x: &[f32], inv: f32) -> i32 {
    let mut sum = 0i32;
    for (q, v) in out.iter_mut().zip(x) {
        let v = (v * inv).round() as i8;
        *q = v;
        sum += v as i32;
    }
    sum
}

/// One quantized activation row, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub sum_d: &'a [f32],
    pub sd: &'a [f32],
    pub sums: &'a [f32],
}
