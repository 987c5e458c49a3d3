//! The 5-bit formats and the K-quants, checked against candle-core's
//! quantizer and dequantizer (written apart from kiln's decoders).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::acts::{SUPER, super_slot};
use crate::{ActFormat, BLOCK, Isa, QMatrix, QuantizedActs, WeightFormat};

const FORMATS: [(WeightFormat, GgmlDType); 7] = [
    (WeightFormat::Q4_1, GgmlDType::Q4_1),
    (WeightFormat::Q8_0, GgmlDType::Q8_0),
    (WeightFormat::Q5_0, GgmlDType::Q5_0),
    (WeightFormat::Q5_1, GgmlDType::Q5_1),
    (WeightFormat::Q4K, GgmlDType::Q4K),
    (WeightFormat::Q5K, GgmlDType::Q5K),
    (WeightFormat::Q6K, GgmlDType::Q6K),
];

/// A random `rows x cols` matrix quantized by candle: its GGUF bytes and candle's dequantized values.
fn candle_quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
    let mut state = seed;
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Rows of different magnitudes and a few outliers, as trained weights have.
            let unit = (state >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0;
            let spike = if i % 97 == 0 { 4.0 } else { 1.0 };
            unit * spike * (0.02 + 0.01 * (i / cols % 5) as f32)
        })
        .collect();
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let back = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (q.data().unwrap().into_owned(), back)
}

#[test]
fn every_format_decodes_to_candles_values() {
    for (format, dtype) in FORMATS {
        let (rows, cols) = (3, 512);
        let (raw, want) = candle_quantized(dtype, rows, cols, 7);
        let mut subs = Vec::new();
        for blk in raw.chunks_exact(format.block_bytes()) {
            crate::blocks::decode(format, blk, &mut subs);
        }
        assert_eq!(subs.len(), rows * cols / BLOCK, "{format:?}");
        for (b, sub) in subs.iter().enumerate() {
            for k in 0..BLOCK {
                let got = sub.d[k / 16] * sub.q[k] as f32 + sub.m;
                assert_eq!(got, want[b * BLOCK + k], "{format:?} block {b} weight {k}");
            }
        }
    }
}

#[test]
fn repacked_rows_dequantize_within_f16_rounding_of_the_scales() {
    for (format, dtype) in FORMATS {
        let (rows, cols) = (4, 768);
        let (raw, want) = candle_quantized(dtype, rows, cols, 11);
        let m = QMatrix::from_gguf(format, rows, cols, &raw).expect("valid shape");
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            let want = &want[r * cols..(r + 1) * cols];
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (k, (g, w)) in row.iter().zip(want).enumerate() {
                // Scale and offset each rounded to f16: 2^-11 of the largest weight, twice.
                assert!((g - w).abs() <= scale * 1e-3, "{format:?} row {r} col {k}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn every_format_multiplies_like_its_dequantized_weights_on_every_isa() {
    for (format, dtype) in FORMATS {
        for (rows, cols, batch) in [(5, 256, 1), (37, 512, 3), (64, 1536, 9), (16, 2304, 16)] {
            let (raw, _) = candle_quantized(dtype, rows, cols, (rows * cols + batch) as u32);
            let m = QMatrix::from_gguf(format, rows, cols, &raw).expect("valid shape");
            let x: Vec<f32> = (0..batch * cols).map(|i| ((i as f32) * 0.731).sin() * 2.0).collect();
            let mut acts = QuantizedActs::new();
            acts.quantize(&x, batch, cols, m.act_format());
            let mut w = vec![0f32; rows * cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut w[r * cols..(r + 1) * cols]);
            }
            let mut reference = vec![0f32; batch * rows];
            m.matmul_with(Isa::Scalar, &acts, &mut reference);
            for b in 0..batch {
                let a = acts.row(b);
                // Each activation's integer and scale (super-blocks store theirs permuted).
                let act = |c: usize| match acts.format() {
                    ActFormat::Blocks => (a.qs[c], a.d[c / BLOCK]),
                    ActFormat::SuperBlocks => (a.qs[c / SUPER * SUPER + super_slot(c % SUPER)], a.sd[c / SUPER]),
                };
                for r in 0..rows {
                    // Exact product of the repacked weights and the quantized activations; the
                    // kernels differ from it only by the f16 rounding of each block's `d * sum(q)`
                    // (none for the K-quants, whose super-blocks stay in integers).
                    let exact: f64 =
                        (0..cols).map(|c| w[r * cols + c] as f64 * act(c).0 as f64 * act(c).1 as f64).sum();
                    let got = reference[b * rows + r] as f64;
                    let size: f64 = (0..cols).map(|c| (w[r * cols + c] * x[b * cols + c]).abs() as f64).sum();
                    assert!((got - exact).abs() <= 2e-3 * size + 1e-6, "{format:?} scalar: {got} vs {exact}");
                }
            }
            for isa in Isa::all_available() {
                let mut out = vec![0f32; batch * rows];
                m.matmul_with(isa, &acts, &mut out);
                for (i, (g, want)) in out.iter().zip(&reference).enumerate() {
                    let tol = 1e-5 * (1.0 + want.abs()) + 1e-6 * cols as f32;
                    assert!((g - want).abs() <= tol, "{isa:?} {format:?} {rows}x{cols} #{i}: {g} vs {want}");
                }
            }
        }
    }
}

#[test]
fn k_quant_rows_must_be_whole_super_blocks() {
    assert!(QMatrix::from_gguf(WeightFormat::Q4K, 1, 576, &[0; 144 * 2]).is_none());
    assert!(QMatrix::from_gguf(WeightFormat::Q6K, 2, 256, &[0; 210]).is_none());
    assert!(QMatrix::from_gguf(WeightFormat::Q6K, 2, 256, &[0; 420]).is_some());
}
