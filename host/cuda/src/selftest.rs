//! Each kernel against a CPU reference on a real device: random inputs
//! (quantized by candle's GGUF quantizers), the device's answer, and the
//! largest difference. `kiln devices --self-test` prints the result; the
//! device check (`tests/gpu/check.sh`) runs it before any model.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use serde::Serialize;

use crate::CudaError;
use crate::runtime::CudaDevice;

/// One kernel's comparison.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCheck {
    pub kernel: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
    pub pass: bool,
}

fn check(kernel: impl Into<String>, got: &[f32], want: &[f32], tolerance: f32) -> KernelCheck {
    assert_eq!(got.len(), want.len());
    let max_abs_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| if a.is_nan() || b.is_nan() { f32::INFINITY } else { (a - b).abs() })
        .fold(0.0, f32::max);
    KernelCheck { kernel: kernel.into(), max_abs_diff, tolerance, pass: max_abs_diff <= tolerance }
}

/// A seeded xorshift: the same inputs on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(block), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Runs every check; an error means a kernel could not be launched at all.
pub fn run(dev: &CudaDevice) -> Result<Vec<KernelCheck>, CudaError> {
    let mut checks = Vec::new();
    for (name, dtype) in [
        ("f32", GgmlDType::F32),
        ("f16", GgmlDType::F16),
        ("q4_1", GgmlDType::Q4_1),
        ("q5_0", GgmlDType::Q5_0),
        ("q8_0", GgmlDType::Q8_0),
        ("q4_k", GgmlDType::Q4K),
        ("q6_k", GgmlDType::Q6K),
    ] {
        checks.extend(quant_checks(dev, name, dtype)?);
    }
    checks.push(rms_norm_check(dev)?);
    checks.extend(norm_variant_checks(dev)?);
    for (neox, rot_dim) in [(false, 64), (true, 64), (true, 32)] {
        checks.push(rope_check(dev, neox, rot_dim)?);
    }
    checks.push(kv_copy_check(dev)?);
    for gelu in [false, true] {
        checks.push(gated_check(dev, gelu)?);
    }
    for (window, softcap) in [(0, 0.0), (8, 0.0), (0, 5.0)] {
        checks.push(attention_check(dev, window, softcap)?);
    }
    checks.extend(topk_check(dev)?);
    Ok(checks)
}

fn quant_checks(dev: &CudaDevice, name: &str, dtype: GgmlDType) -> Result<Vec<KernelCheck>, CudaError> {
    // 94 rows: not a whole number of the kernel's 4-row blocks.
    let (rows, cols, n) = (94usize, 768usize, 11usize);
    let mut rng = Rng(0x5eed ^ rows as u64 ^ (dtype as u64) << 8);
    let weights = Tensor::from_vec(rng.vec(rows * cols), (rows, cols), &Device::Cpu)?;
    let q = QTensor::quantize(&weights, dtype)?;
    let bytes = q.data()?.into_owned();
    let reference: Vec<f32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let row_bytes = (bytes.len() / rows) as i64;
    let x = rng.vec(n * cols);
    let s = dev.stream();
    let w_d = s.clone_htod(&bytes).map_err(drv("upload"))?;
    let x_d = s.clone_htod(&x).map_err(drv("upload"))?;
    let mut out = Vec::new();

    // Products: n activation rows, in groups of 8 along the grid's y.
    let mut y_d: CudaSlice<f32> = s.alloc_zeros(n * rows).map_err(drv("alloc"))?;
    let f = dev.function("quant", &format!("matvec_{name}"))?;
    let (r, c, nn) = (rows as i32, cols as i32, n as i32);
    let cfg = LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(4), (n as u32).div_ceil(8), 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = s.launch_builder(&f);
    b.arg(&w_d).arg(&x_d).arg(&mut y_d).arg(&r).arg(&c).arg(&nn).arg(&row_bytes).arg(&r);
    // SAFETY: argument types and buffer sizes match the kernel's signature.
    unsafe { b.launch(cfg) }.map_err(drv("matvec"))?;
    let got = s.clone_dtoh(&y_d).map_err(drv("download"))?;
    let want: Vec<f32> = (0..n)
        .flat_map(|j| (0..rows).map(move |i| (j, i)))
        .map(|(j, i)| (0..cols).map(|k| reference[i * cols + k] * x[j * cols + k]).sum())
        .collect();
    out.push(check(format!("matvec_{name}"), &got, &want, 2e-3 * (cols as f32).sqrt()));

    // Dequantization to f16.
    let mut h_d: CudaSlice<u16> = s.alloc_zeros(rows * cols).map_err(drv("alloc"))?;
    let f = dev.function("quant", &format!("dequant_f16_{name}"))?;
    let mut b = s.launch_builder(&f);
    b.arg(&w_d).arg(&mut h_d).arg(&r).arg(&c).arg(&row_bytes);
    // SAFETY: as above.
    unsafe { b.launch(grid(rows * cols / 32, 128)) }.map_err(drv("dequant"))?;
    let got: Vec<f32> =
        s.clone_dtoh(&h_d).map_err(drv("download"))?.into_iter().map(|h| half::f16::from_bits(h).to_f32()).collect();
    let want: Vec<f32> = reference.iter().map(|&v| f16_round(v)).collect();
    out.push(check(format!("dequant_f16_{name}"), &got, &want, 1e-6));

    // Embedding rows, scaled.
    let tokens: Vec<u32> = vec![5, 0, 93, 5];
    let t_d = s.clone_htod(&tokens).map_err(drv("upload"))?;
    let mut e_d: CudaSlice<f32> = s.alloc_zeros(tokens.len() * cols).map_err(drv("alloc"))?;
    let f = dev.function("quant", &format!("embed_{name}"))?;
    let (nt, scale) = (tokens.len() as i32, 1.5f32);
    let mut b = s.launch_builder(&f);
    b.arg(&w_d).arg(&t_d).arg(&mut e_d).arg(&nt).arg(&c).arg(&row_bytes).arg(&scale);
    // SAFETY: as above.
    unsafe { b.launch(grid(tokens.len() * cols / 32, 128)) }.map_err(drv("embed"))?;
    let got = s.clone_dtoh(&e_d).map_err(drv("download"))?;
    let want: Vec<f32> =
        tokens.iter().flat_map(|&t| reference[t as usize * cols..][..cols].iter().map(|v| v * scale)).collect();
    out.push(check(format!("embed_{name}"), &got, &want, 1e-5));
    Ok(out)
}

fn rms_norm_check(dev: &CudaDevice) -> Result<KernelCheck, CudaError> {
    let (rows, dim, eps) = (3usize, 576usize, 1e-5f32);
    let mut rng = Rng(17);
    let (x, w) = (rng.vec(rows * dim), rng.vec(dim));
    let s = dev.stream();
    let (x_d, w_d) = (s.clone_htod(&x).map_err(drv("upload"))?, s.clone_htod(&w).map_err(drv("upload"))?);
    let mut y_d: CudaSlice<f32> = s.alloc_zeros(rows * dim).map_err(drv("alloc"))?;
    let f = dev.function("elementwise", "rms_norm")?;
    let (d, gather) = (dim as i32, 0i32);
    let rows_d = s.clone_htod(&[0i32]).map_err(drv("upload"))?;
    let mut b = s.launch_builder(&f);
    b.arg(&x_d).arg(&w_d).arg(&mut y_d).arg(&d).arg(&eps).arg(&rows_d).arg(&gather);
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above.
    unsafe { b.launch(cfg) }.map_err(drv("rms_norm"))?;
    let got = s.clone_dtoh(&y_d).map_err(drv("download"))?;
    let want: Vec<f32> = x
        .chunks(dim)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / dim as f32 + eps).sqrt();
            row.iter().zip(&w).map(move |(v, w)| v * inv * w).collect::<Vec<_>>()
        })
        .collect();
    Ok(check("rms_norm", &got, &want, 1e-4))
}

fn rope_check(dev: &CudaDevice, neox: bool, rot_dim: usize) -> Result<KernelCheck, CudaError> {
    let (rows, heads, head_dim) = (3usize, 4usize, 64usize);
    let stride = heads * head_dim + 32;
    let mut rng = Rng(23);
    let x = rng.vec(rows * stride);
    let pos: Vec<i32> = vec![0, 7, 4095];
    let inv_freq: Vec<f32> = (0..rot_dim / 2).map(|i| 10000f32.powf(-2.0 * i as f32 / rot_dim as f32)).collect();
    let s = dev.stream();
    let mut x_d = s.clone_htod(&x).map_err(drv("upload"))?;
    let (p_d, f_d) = (s.clone_htod(&pos).map_err(drv("upload"))?, s.clone_htod(&inv_freq).map_err(drv("upload"))?);
    let f = dev.function("elementwise", "rope")?;
    let (r, h, hd, rd, st, nx) =
        (rows as i32, heads as i32, head_dim as i32, rot_dim as i32, stride as i32, neox as i32);
    let mut b = s.launch_builder(&f);
    b.arg(&mut x_d).arg(&p_d).arg(&f_d).arg(&r).arg(&h).arg(&hd).arg(&rd).arg(&st).arg(&nx);
    // SAFETY: as above.
    unsafe { b.launch(grid(rows * heads * rot_dim / 2, 128)) }.map_err(drv("rope"))?;
    let got = s.clone_dtoh(&x_d).map_err(drv("download"))?;
    let mut want = x.clone();
    for (r, &position) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = r * stride + h * head_dim;
            for (p, &freq) in inv_freq.iter().enumerate() {
                let (a, b) = if neox { (p, p + rot_dim / 2) } else { (2 * p, 2 * p + 1) };
                let angle = position as f64 * freq as f64;
                let (sn, cs) = (angle.sin() as f32, angle.cos() as f32);
                let (x0, x1) = (x[base + a], x[base + b]);
                want[base + a] = x0 * cs - x1 * sn;
                want[base + b] = x0 * sn + x1 * cs;
            }
        }
    }
    let name = format!("rope{}{}", if neox { "_neox" } else { "" }, if rot_dim < head_dim { "_partial" } else { "" });
    Ok(check(name, &got, &want, 2e-3))
}

fn gated_check(dev: &CudaDevice, gelu: bool) -> Result<KernelCheck, CudaError> {
    let (rows, ff) = (3usize, 1536usize);
    let gu: Vec<f32> = Rng(29).vec(rows * 2 * ff).into_iter().map(|v| v * 6.0).collect();
    let s = dev.stream();
    let g_d = s.clone_htod(&gu).map_err(drv("upload"))?;
    let mut o_d: CudaSlice<f32> = s.alloc_zeros(rows * ff).map_err(drv("alloc"))?;
    let f = dev.function("elementwise", "gated_act")?;
    let (r, k, gl) = (rows as i32, ff as i32, gelu as i32);
    let mut b = s.launch_builder(&f);
    b.arg(&g_d).arg(&mut o_d).arg(&r).arg(&k).arg(&gl);
    // SAFETY: as above.
    unsafe { b.launch(grid(rows * ff, 256)) }.map_err(drv("gated_act"))?;
    let got = s.clone_dtoh(&o_d).map_err(drv("download"))?;
    let want: Vec<f32> = (0..rows * ff)
        .map(|i| {
            let (r, k) = (i / ff, i % ff);
            let (g, u) = (gu[r * 2 * ff + k], gu[r * 2 * ff + ff + k]);
            let a = if gelu {
                0.5 * g * (1.0 + (0.797_884_6 * (g + 0.044715 * g * g * g)).tanh())
            } else {
                g / (1.0 + (-g).exp())
            };
            a * u
        })
        .collect();
    Ok(check(if gelu { "gated_act_gelu" } else { "gated_act_silu" }, &got, &want, 1e-3))
}

fn attention_check(dev: &CudaDevice, window: i32, softcap: f32) -> Result<KernelCheck, CudaError> {
    let (heads, kv_heads, head_dim, block_tokens) = (4usize, 2usize, 64usize, 16usize);
    let kv_dim = kv_heads * head_dim;
    let lens = [37usize, 5];
    let max_blocks = 4usize;
    // Blocks handed out out of order, as a pool that has churned would.
    let tables: Vec<i32> = vec![6, 1, 4, 0, 3, 0, 0, 0];
    let pool_blocks = 8usize;
    let mut rng = Rng(31 + window as u64);
    let total: usize = lens.iter().sum();
    let (k, v) = (rng.vec(total * kv_dim), rng.vec(total * kv_dim));
    let mut slots = Vec::new();
    let mut token_at = Vec::new(); // (seq, pos) of each written row
    for (seq, &len) in lens.iter().enumerate() {
        for p in 0..len {
            let block = tables[seq * max_blocks + p / block_tokens] as usize;
            slots.push((block * block_tokens + p % block_tokens) as i32);
            token_at.push((seq, p));
        }
    }
    // Queries: each sequence's last position (decode) and one mid-prompt (prefill).
    let queries: Vec<(usize, usize)> = vec![(0, 36), (1, 4), (0, 20)];
    let q = rng.vec(queries.len() * heads * head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();

    let s = dev.stream();
    let (k_d, v_d, slot_d) = (
        s.clone_htod(&k).map_err(drv("upload"))?,
        s.clone_htod(&v).map_err(drv("upload"))?,
        s.clone_htod(&slots).map_err(drv("upload"))?,
    );
    let mut kp: CudaSlice<u16> = s.alloc_zeros(pool_blocks * block_tokens * kv_dim).map_err(drv("alloc"))?;
    let mut vp: CudaSlice<u16> = s.alloc_zeros(pool_blocks * block_tokens * kv_dim).map_err(drv("alloc"))?;
    let f = dev.function("attention", "kv_write")?;
    let (nt, kd) = (total as i32, kv_dim as i32);
    let mut b = s.launch_builder(&f);
    b.arg(&k_d).arg(&v_d).arg(&mut kp).arg(&mut vp).arg(&slot_d).arg(&nt).arg(&kd).arg(&kd);
    // SAFETY: as above.
    unsafe { b.launch(grid(total * kv_dim, 256)) }.map_err(drv("kv_write"))?;

    let q_seq: Vec<i32> = queries.iter().map(|&(s, _)| s as i32).collect();
    let q_pos: Vec<i32> = queries.iter().map(|&(_, p)| p as i32).collect();
    let (q_d, t_d) = (s.clone_htod(&q).map_err(drv("upload"))?, s.clone_htod(&tables).map_err(drv("upload"))?);
    let (qs_d, qp_d) = (s.clone_htod(&q_seq).map_err(drv("upload"))?, s.clone_htod(&q_pos).map_err(drv("upload"))?);
    let mut o_d: CudaSlice<f32> = s.alloc_zeros(queries.len() * heads * head_dim).map_err(drv("alloc"))?;
    let f = dev.function("attention", "attention")?;
    let (h, kh, hd, qst, bt, mb) = (
        heads as i32,
        kv_heads as i32,
        head_dim as i32,
        (heads * head_dim) as i32,
        block_tokens as i32,
        max_blocks as i32,
    );
    let mut b = s.launch_builder(&f);
    b.arg(&q_d).arg(&kp).arg(&vp).arg(&t_d).arg(&qs_d).arg(&qp_d).arg(&mut o_d);
    b.arg(&h).arg(&kh).arg(&hd).arg(&kd).arg(&qst).arg(&bt).arg(&mb).arg(&scale).arg(&softcap).arg(&window);
    let cfg =
        LaunchConfig { grid_dim: (heads as u32, queries.len() as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above.
    unsafe { b.launch(cfg) }.map_err(drv("attention"))?;
    let got = s.clone_dtoh(&o_d).map_err(drv("download"))?;

    let row_of = |seq: usize, p: usize| token_at.iter().position(|&t| t == (seq, p)).unwrap();
    let mut want = Vec::new();
    for (qi, &(seq, last)) in queries.iter().enumerate() {
        for hh in 0..heads {
            let kvh = hh / (heads / kv_heads);
            let qv = &q[(qi * heads + hh) * head_dim..][..head_dim];
            let start = if window > 0 { (last + 1).saturating_sub(window as usize) } else { 0 };
            let scores: Vec<f32> = (start..=last)
                .map(|p| {
                    let kr = &k[row_of(seq, p) * kv_dim + kvh * head_dim..][..head_dim];
                    let sc: f32 = qv.iter().zip(kr).map(|(a, b)| a * scale * f16_round(*b)).sum();
                    if softcap > 0.0 { softcap * (sc / softcap).tanh() } else { sc }
                })
                .collect();
            let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            for d in 0..head_dim {
                let acc: f32 = (start..=last)
                    .zip(&e)
                    .map(|(p, w)| w * f16_round(v[row_of(seq, p) * kv_dim + kvh * head_dim + d]))
                    .sum();
                want.push(acc / sum);
            }
        }
    }
    let name = match (window, softcap > 0.0) {
        (0, false) => "kv_write+attention",
        (_, false) => "attention_window",
        _ => "attention_softcap",
    };
    Ok(check(name, &got, &want, 1e-3))
}

fn topk_check(dev: &CudaDevice) -> Result<Vec<KernelCheck>, CudaError> {
    let (vocab, k, seqs, temp) = (49152usize, 40usize, 2usize, 0.7f32);
    let mut rng = Rng(37);
    let logits: Vec<f32> = rng.vec(seqs * vocab).into_iter().map(|v| v * 10.0).collect();
    // Sequence 0: a bias; sequence 1: only five tokens allowed (fewer than k).
    let bias: Vec<f32> = (0..seqs * vocab).map(|i| if i < vocab && i % 7 == 0 { 3.0 } else { 0.0 }).collect();
    let words = vocab.div_ceil(32);
    let mut allowed = vec![u32::MAX; seqs * words];
    for i in 0..vocab {
        if i % 9973 != 0 {
            allowed[words + i / 32] &= !(1 << (i % 32));
        }
    }
    let s = dev.stream();
    let (l_d, b_d, a_d) = (
        s.clone_htod(&logits).map_err(drv("upload"))?,
        s.clone_htod(&bias).map_err(drv("upload"))?,
        s.clone_htod(&allowed).map_err(drv("upload"))?,
    );
    let mut ids_d: CudaSlice<i32> = s.alloc_zeros(seqs * k).map_err(drv("alloc"))?;
    let mut p_d: CudaSlice<f32> = s.alloc_zeros(seqs * k).map_err(drv("alloc"))?;
    let f = dev.function("sampling", "topk_softmax")?;
    let (vv, kk, inv, one) = (vocab as i32, k as i32, 1.0 / temp, 1i32);
    let mut b = s.launch_builder(&f);
    b.arg(&l_d).arg(&vv).arg(&kk).arg(&inv).arg(&b_d).arg(&one).arg(&a_d).arg(&one).arg(&mut ids_d).arg(&mut p_d);
    let cfg = LaunchConfig { grid_dim: (seqs as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above.
    unsafe { b.launch(cfg) }.map_err(drv("topk_softmax"))?;
    let ids = s.clone_dtoh(&ids_d).map_err(drv("download"))?;
    let probs = s.clone_dtoh(&p_d).map_err(drv("download"))?;

    let mut want_ids = Vec::new();
    let mut want_p = Vec::new();
    for seq in 0..seqs {
        let mut cand: Vec<(f32, usize)> = (0..vocab)
            .filter(|&i| (allowed[seq * words + i / 32] >> (i % 32)) & 1 == 1)
            .map(|i| ((logits[seq * vocab + i] + bias[seq * vocab + i]) * (1.0 / temp), i))
            .collect();
        cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        cand.truncate(k);
        let m = cand[0].0;
        let sum: f32 = cand.iter().map(|c| (c.0 - m).exp()).sum();
        want_ids.extend(cand.iter().map(|c| c.1 as f32));
        want_p.extend(cand.iter().map(|c| (c.0 - m).exp() / sum));
        // Fewer candidates than k: the rest of the row is empty.
        want_ids.extend(std::iter::repeat_n(-1.0, k - cand.len()));
        want_p.extend(std::iter::repeat_n(0.0, k - cand.len()));
    }
    let got_ids: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    Ok(vec![check("topk_softmax ids", &got_ids, &want_ids, 0.0), check("topk_softmax probs", &probs, &want_p, 1e-5)])
}

fn norm_variant_checks(dev: &CudaDevice) -> Result<Vec<KernelCheck>, CudaError> {
    let (rows, heads, head_dim, eps) = (4usize, 3usize, 64usize, 1e-6f32);
    let stride = heads * head_dim + 16;
    let mut rng = Rng(41);
    let x = rng.vec(rows * stride);
    let w = rng.vec(head_dim);
    let s = dev.stream();
    let norm = |row: &[f32], w: &[f32]| -> Vec<f32> {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32 + eps).sqrt();
        row.iter().zip(w).map(|(v, w)| v * inv * w).collect()
    };
    // Per-head norms in place over strided rows (Qwen3's Q/K norms).
    let mut x_d = s.clone_htod(&x).map_err(drv("upload"))?;
    let w_d = s.clone_htod(&w).map_err(drv("upload"))?;
    let f = dev.function("elementwise", "rms_norm_heads")?;
    let (r, h, hd, st) = (rows as i32, heads as i32, head_dim as i32, stride as i32);
    let mut b = s.launch_builder(&f);
    b.arg(&mut x_d).arg(&w_d).arg(&r).arg(&h).arg(&hd).arg(&st).arg(&eps);
    // SAFETY: as above.
    unsafe { b.launch(grid(rows * heads * 32, 128)) }.map_err(drv("rms_norm_heads"))?;
    let got = s.clone_dtoh(&x_d).map_err(drv("download"))?;
    let mut want = x.clone();
    for r in 0..rows {
        for h in 0..heads {
            let at = r * stride + h * head_dim;
            let normed = norm(&x[at..at + head_dim], &w);
            want[at..at + head_dim].copy_from_slice(&normed);
        }
    }
    let heads_check = check("rms_norm_heads", &got, &want, 1e-4);

    // Gathered rows (the output head's last row of each sequence).
    let dim = stride;
    let wide = rng.vec(dim);
    let picks: Vec<i32> = vec![3, 0];
    let (x_d, w_d, p_d) = (
        s.clone_htod(&x).map_err(drv("upload"))?,
        s.clone_htod(&wide).map_err(drv("upload"))?,
        s.clone_htod(&picks).map_err(drv("upload"))?,
    );
    let mut y_d: CudaSlice<f32> = s.alloc_zeros(picks.len() * dim).map_err(drv("alloc"))?;
    let f = dev.function("elementwise", "rms_norm")?;
    let (d, gather) = (dim as i32, 1i32);
    let mut b = s.launch_builder(&f);
    b.arg(&x_d).arg(&w_d).arg(&mut y_d).arg(&d).arg(&eps).arg(&p_d).arg(&gather);
    let cfg = LaunchConfig { grid_dim: (picks.len() as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above.
    unsafe { b.launch(cfg) }.map_err(drv("rms_norm gather"))?;
    let got = s.clone_dtoh(&y_d).map_err(drv("download"))?;
    let want: Vec<f32> = picks.iter().flat_map(|&p| norm(&x[p as usize * dim..][..dim], &wide)).collect();
    Ok(vec![heads_check, check("rms_norm_gather", &got, &want, 1e-4)])
}

fn kv_copy_check(dev: &CudaDevice) -> Result<KernelCheck, CudaError> {
    let (blocks, block_elems) = (8usize, 16 * 128usize);
    let pool: Vec<u16> = (0..blocks * block_elems).map(|i| (i * 7 % 65521) as u16).collect();
    let (src, dst) = (vec![1i32, 3], vec![6i32, 0]);
    let s = dev.stream();
    let mut p_d = s.clone_htod(&pool).map_err(drv("upload"))?;
    let (s_d, d_d) = (s.clone_htod(&src).map_err(drv("upload"))?, s.clone_htod(&dst).map_err(drv("upload"))?);
    let f = dev.function("attention", "kv_copy_blocks")?;
    let (n, e) = (src.len() as i32, block_elems as i32);
    let mut b = s.launch_builder(&f);
    b.arg(&mut p_d).arg(&s_d).arg(&d_d).arg(&n).arg(&e);
    // SAFETY: as above.
    unsafe { b.launch(grid(src.len() * block_elems, 256)) }.map_err(drv("kv_copy_blocks"))?;
    let got: Vec<f32> = s.clone_dtoh(&p_d).map_err(drv("download"))?.into_iter().map(f32::from).collect();
    let mut want: Vec<f32> = pool.iter().map(|&v| f32::from(v)).collect();
    for (&a, &b) in src.iter().zip(&dst) {
        let from = want[a as usize * block_elems..][..block_elems].to_vec();
        want[b as usize * block_elems..][..block_elems].copy_from_slice(&from);
    }
    Ok(check("kv_copy_blocks", &got, &want, 0.0))
}
