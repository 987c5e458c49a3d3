//! Times one quantized product per format and batch size (a development aid:
//! `cargo run --release -p kiln-kernels --example matmul [rows cols] [FORMAT] [BATCH]`,
//! e.g. `8192 2048 Q4K 128`).

use std::time::Instant;

use kiln_kernels::{QMatrix, QuantizedActs, WeightFormat};

fn main() {
    // Time from inside the pool, as the model runs its products: called from
    // a foreign thread, each product would also pay a cross-thread injection
    // (~15 us), which doubles the small products' figures.
    rayon::scope(|_| run());
}

fn run() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (rows, cols) = (args.first().copied().unwrap_or(8192), args.get(1).copied().unwrap_or(2048));
    let only_format = std::env::args().skip(1).find(|a| a.parse::<usize>().is_err());
    let batches: Vec<usize> = if args.len() > 2 { args[2..].to_vec() } else { vec![1, 2, 4, 8, 16, 64, 128] };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::Q4K, WeightFormat::Q5K, WeightFormat::Q6K] {
        if only_format.as_ref().is_some_and(|f| *f != format!("{format:?}")) {
            continue;
        }
        let (per, bytes) = (format.block_elems(), format.block_bytes());
        let mut raw: Vec<u8> = (0..rows * cols / per * bytes).map(|_| next() as u8).collect();
        // Finite f16 scales wherever a format keeps them (0x2c00 = 0.0625).
        for blk in raw.chunks_exact_mut(bytes) {
            let at: &[usize] = match format {
                WeightFormat::Q6K => &[208],
                WeightFormat::Q4_1 | WeightFormat::Q4K | WeightFormat::Q5K => &[0, 2],
                _ => &[0],
            };
            for &i in at {
                blk[i] = 0x00;
                blk[i + 1] = 0x2c;
            }
        }
        let m = QMatrix::from_gguf(format, rows, cols, &raw).expect("shape");
        let mut line = format!("{format:?} {rows}x{cols} ({:.1} MB):", m.size_in_bytes() as f64 / 1e6);
        for &batch in &batches {
            let x: Vec<f32> = (0..batch * cols).map(|i| ((i as f32) * 0.37).sin()).collect();
            let mut acts = QuantizedActs::new();
            let mut out = vec![0f32; batch * rows];
            // The fastest of many single products: on a shared machine the
            // minimum is the figure least disturbed by other work.
            let mut best = f64::MAX;
            for _ in 0..(600 / batch).max(15) {
                let start = Instant::now();
                acts.quantize(&x, batch, cols, m.act_format());
                m.matmul(&acts, &mut out);
                best = best.min(start.elapsed().as_secs_f64());
            }
            line += &format!("  n={batch}: {:.0} us ({:.1} GB/s)", best * 1e6, m.size_in_bytes() as f64 / best / 1e9);
        }
        println!("{line}");
    }
}
