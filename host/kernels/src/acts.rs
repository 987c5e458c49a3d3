//! Activations quantized to 8 bits per block, the right-hand side of every product.

use crate::BLOCK;

/// `rows` activation rows of `cols` values, each 32-value block stored as
/// `i8` values with one `f32` scale `d` and `s = d * sum(q)`.
///
/// Rows are padded to an even number of blocks with zeros so the kernels can
/// always read blocks in pairs (64 bytes, one AVX-512 register).
#[derive(Debug, Default, Clone)]
pub struct QuantizedActs {
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
    /// `d * sum(q)` over each half of 16 (exact, two per block): the `Q6_K`
    /// kernels multiply unsigned `q` and take `32 *` this back out per half.
    pub(crate) sum16_d: Vec<f32>,
}

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

    /// Quantizes `x` (`rows` x `cols`, row-major) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(x.len(), rows * cols, "activation shape mismatch");
        let nb = cols.div_ceil(BLOCK).next_multiple_of(2);
        self.rows = rows;
        self.cols = cols;
        self.nb = nb;
        self.qs.clear();
        self.qs.resize(rows * nb * BLOCK, 0);
        self.d.clear();
        self.d.resize(rows * nb, 0.0);
        self.s.clear();
        self.s.resize(rows * nb, 0.0);
        self.sum_d.clear();
        self.sum_d.resize(rows * nb, 0.0);
        self.sum16_d.clear();
        self.sum16_d.resize(rows * nb * 2, 0.0);
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::current() != crate::Isa::Scalar {
            // SAFETY: every non-scalar `Isa` implies AVX2 and FMA.
            unsafe { self.quantize_avx2(x) };
            return;
        }
        self.quantize_rows(x);
    }

    /// The same loop compiled with AVX2: `round` becomes `vroundps` instead of a
    /// libm call per value, and the block loop vectorizes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_avx2(&mut self, x: &[f32]) {
        self.quantize_rows(x)
    }

    #[inline(always)]
    fn quantize_rows(&mut self, x: &[f32]) {
        let (rows, cols, nb) = (self.rows, self.cols, self.nb);
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            for (b, chunk) in row.chunks(BLOCK).enumerate() {
                let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let out = &mut self.qs[(r * nb + b) * BLOCK..][..chunk.len()];
                // Each half of 16 in its own branch-free loop (which vectorizes): the
                // Q6_K kernels need the halves' sums, the others the whole block's.
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
                self.sum16_d[2 * (r * nb + b)] = d16 * first as f32;
                self.sum16_d[2 * (r * nb + b) + 1] = d16 * (sum - first) as f32;
            }
        }
    }

    pub(crate) fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.nb;
        ActRow {
            qs: &self.qs[r * nb * BLOCK..(r + 1) * nb * BLOCK],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
            sum_d: &self.sum_d[r * nb..(r + 1) * nb],
            sum16_d: &self.sum16_d[2 * r * nb..2 * (r + 1) * nb],
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
    pub sum16_d: &'a [f32],
}
