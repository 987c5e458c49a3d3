//! Every SIMD path against a plain f64 reference on GGUF-encoded random data.

use half::f16;

use crate::{ActFormat, BLOCK, Isa, QMatrix, QuantizedActs, WeightFormat};

/// Deterministic xorshift so the tests need no rand dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

/// GGUF bytes for a random matrix, and its dequantized values.
fn random_gguf(format: WeightFormat, rows: usize, cols: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let mut raw = Vec::new();
    let mut values = Vec::new();
    for _ in 0..rows * cols / BLOCK {
        let d = f16::from_f32(0.01 + 0.05 * rng.unit().abs());
        raw.extend_from_slice(&d.to_le_bytes());
        match format {
            WeightFormat::Q4_1 => {
                let m = f16::from_f32(-0.2 * rng.unit().abs());
                raw.extend_from_slice(&m.to_le_bytes());
                let q: Vec<u8> = (0..BLOCK).map(|_| (rng.next() % 16) as u8).collect();
                for k in 0..16 {
                    raw.push(q[k] | (q[k + 16] << 4));
                }
                values.extend(q.iter().map(|&q| d.to_f32() * q as f32 + m.to_f32()));
            }
            WeightFormat::Q8_0 => {
                let q: Vec<i8> = (0..BLOCK).map(|_| (rng.next() % 255) as i16 as i8).map(|v| v.max(-127)).collect();
                raw.extend(q.iter().map(|&v| v as u8));
                values.extend(q.iter().map(|&q| d.to_f32() * q as f32));
            }
            other => unreachable!("{other:?} data comes from candle (kquant_tests)"),
        }
    }
    (raw, values)
}

fn dequantized_acts(acts: &QuantizedActs) -> Vec<f32> {
    let mut out = Vec::new();
    for r in 0..acts.rows {
        let row = acts.row(r);
        for c in 0..acts.cols {
            out.push(row.qs[c] as f32 * row.d[c / BLOCK]);
        }
    }
    out
}

/// The kernels' definition, block by block from the GGUF bytes:
/// `d_w * d_a * sum(q_w * q_a)`, plus `m_w * s_a` for `Q4_1`.
fn reference_dot(format: WeightFormat, raw: &[u8], r: usize, cols: usize, acts: &QuantizedActs, b: usize) -> f64 {
    let a = acts.row(b);
    let f = |i: usize| f16::from_le_bytes([raw[i], raw[i + 1]]).to_f32() as f64;
    let mut sum = 0f64;
    for blk in 0..cols / BLOCK {
        let qa = &a.qs[blk * BLOCK..][..BLOCK];
        match format {
            WeightFormat::Q4_1 => {
                let o = (r * cols / BLOCK + blk) * 20;
                let isum: i64 = (0..BLOCK)
                    .map(|k| {
                        let q = if k < 16 { raw[o + 4 + k] & 15 } else { raw[o + 4 + k - 16] >> 4 };
                        q as i64 * qa[k] as i64
                    })
                    .sum();
                sum += f(o) * a.d[blk] as f64 * isum as f64 + f(o + 2) * a.s[blk] as f64;
            }
            WeightFormat::Q8_0 => {
                let o = (r * cols / BLOCK + blk) * 34;
                let isum: i64 = (0..BLOCK).map(|k| raw[o + 2 + k] as i8 as i64 * qa[k] as i64).sum();
                sum += f(o) * a.d[blk] as f64 * isum as f64;
            }
            other => unreachable!("{other:?} is checked in kquant_tests"),
        }
    }
    sum
}

fn check(format: WeightFormat, rows: usize, cols: usize, batch: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (rows * 31 + cols * 7 + batch) as u64);
    let (raw, w) = random_gguf(format, rows, cols, &mut rng);
    let m = QMatrix::from_gguf(format, rows, cols, &raw).expect("valid shape");
    let x: Vec<f32> = (0..batch * cols).map(|_| rng.unit() * 3.0).collect();
    let mut acts = QuantizedActs::new();
    acts.quantize(&x, batch, cols, m.act_format());
    let xq = dequantized_acts(&acts);
    for isa in Isa::all_available() {
        let mut out = vec![0f32; batch * rows];
        m.matmul_with(isa, &acts, &mut out);
        for b in 0..batch {
            for r in 0..rows {
                let want = reference_dot(format, &raw, r, cols, &acts, b);
                let exact: f64 = (0..cols).map(|c| w[r * cols + c] as f64 * xq[b * cols + c] as f64).sum();
                // The kernel's definition only departs from exact arithmetic by the f16 rounding of `s`.
                assert!((want - exact).abs() < 1e-2 * (1.0 + exact.abs()), "reference drifted: {want} vs {exact}");
                let got = out[b * rows + r] as f64;
                let tol = 1e-5 * (1.0 + want.abs()) + 1e-6 * cols as f64;
                assert!((got - want).abs() < tol, "{isa:?} {format:?} b={b} r={r}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn q4_1_products_match_reference_on_every_isa() {
    for (rows, cols, batch) in [(8, 64, 1), (33, 96, 3), (300, 576, 7), (64, 1536, 16), (40, 576, 13)] {
        check(WeightFormat::Q4_1, rows, cols, batch);
    }
}

#[test]
fn q8_0_products_match_reference_on_every_isa() {
    for (rows, cols, batch) in [(8, 64, 1), (33, 96, 2), (500, 576, 5), (64, 1536, 16)] {
        check(WeightFormat::Q8_0, rows, cols, batch);
    }
}

#[test]
fn dequantize_row_recovers_gguf_values() {
    let mut rng = Rng(42);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let (raw, w) = random_gguf(format, 5, 96, &mut rng);
        let m = QMatrix::from_gguf(format, 5, 96, &raw).unwrap();
        let mut row = vec![0f32; 96];
        for r in 0..5 {
            m.dequantize_row(r, &mut row);
            assert_eq!(row, w[r * 96..(r + 1) * 96], "{format:?} row {r}");
        }
    }
}

#[test]
fn wrong_sized_data_is_refused() {
    assert!(QMatrix::from_gguf(WeightFormat::Q4_1, 2, 64, &[0; 79]).is_none());
    assert!(QMatrix::from_gguf(WeightFormat::Q8_0, 2, 48, &[0; 68]).is_none());
}

#[test]
fn quantized_activations_round_trip_within_half_a_step() {
    let x: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
    let mut acts = QuantizedActs::new();
    acts.quantize(&x, 1, 100, ActFormat::Blocks);
    let back = dequantized_acts(&acts);
    for (i, (a, b)) in x.iter().zip(&back).enumerate() {
        let step = acts.d[i / BLOCK];
        // Half a step of rounding, plus the f16-rounded scale (<= 2^-11 relative,
        // times up to 127 steps = 0.062 of a step).
        assert!((a - b).abs() <= step * 0.563 + 1e-6, "{i}: {a} vs {b}");
    }
}
