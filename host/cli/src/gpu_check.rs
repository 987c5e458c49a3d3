//! The GPU engine checked against the CPU one and timed, for `kiln devices
//! --parity / --bench` (what `tests/gpu/check.sh` runs on a GPU machine).
//!
//! Parity runs the same prompts, batched, through the CPU model with exact
//! f32 arithmetic (`LoadOptions::f32_weights`: the file's quantized weights
//! dequantized once, no 8-bit activations) and through the CUDA model, which
//! dequantizes the same weights on the fly with f32 activations: greedy
//! tokens should agree, and the first step's logits closely.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_cuda::{CudaLoadOptions, CudaModel, StepItem};
use kiln_model::{KvCache, LoadOptions, Model, SeqBatchItem};
use kiln_tokenizer::Tokenizer;
use serde_json::{Value, json};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 5, 8, 13, 21,",
];

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn prompt_tokens(path: &Path) -> Result<Vec<Vec<u32>>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    PROMPTS.iter().map(|p| Ok(tokenizer.encode(p, true)?)).collect()
}

/// Greedy tokens per prompt, and each prompt's first-step logits.
struct Greedy {
    tokens: Vec<Vec<u32>>,
    first_logits: Vec<Vec<f32>>,
}

/// Greedy `steps` tokens for every prompt, all prompts in one batch per
/// step: `step` runs a batch (each prompt's new tokens) and returns each
/// one's logits.
fn greedy(
    prompts: &[Vec<u32>],
    steps: usize,
    mut step: impl FnMut(&[Vec<u32>]) -> Result<Vec<Vec<f32>>>,
) -> Result<Greedy> {
    let mut next: Vec<Vec<u32>> = prompts.to_vec();
    let mut out = Greedy { tokens: vec![Vec::new(); prompts.len()], first_logits: Vec::new() };
    for i in 0..steps {
        let logits = step(&next)?;
        for (p, l) in logits.into_iter().enumerate() {
            let tok = argmax(&l);
            if i == 0 {
                out.first_logits.push(l);
            }
            out.tokens[p].push(tok);
            next[p] = vec![tok];
        }
    }
    Ok(out)
}

fn greedy_cpu(model: &Model, prompts: &[Vec<u32>], steps: usize) -> Result<Greedy> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    greedy(prompts, steps, |next| {
        let mut items: Vec<SeqBatchItem> = (next.iter().zip(caches.iter_mut()))
            .map(|(tokens, cache)| SeqBatchItem { tokens, cache, logits: true })
            .collect();
        model.forward(&mut items)?.into_iter().map(|l| l.context("logits asked for")).collect()
    })
}

fn greedy_cuda(model: &mut CudaModel, prompts: &[Vec<u32>], steps: usize) -> Result<Greedy> {
    let out = greedy(prompts, steps, |next| {
        let items: Vec<StepItem> =
            next.iter().enumerate().map(|(i, tokens)| StepItem { seq: i as u64, tokens, logits: true }).collect();
        model.forward(&items)?.into_iter().map(|l| l.context("logits asked for")).collect()
    });
    for i in 0..prompts.len() {
        model.release(i as u64);
    }
    out
}

/// CPU vs CUDA on `path`: tokens per prompt, where they part, and the
/// first step's largest logit difference.
pub fn parity(path: &Path, cuda: &mut CudaModel, steps: usize) -> Result<Value> {
    let prompts = prompt_tokens(path)?;
    let options = LoadOptions { max_context: Some(cuda.max_context()), f32_weights: true, ..LoadOptions::default() };
    let cpu = Model::load_with(path, options)?;
    let started = Instant::now();
    let cpu_run = greedy_cpu(&cpu, &prompts, steps)?;
    let cpu_s = started.elapsed().as_secs_f64();
    let gpu_run = greedy_cuda(cuda, &prompts, steps)?;
    let (cpu_tokens, cpu_first) = (&cpu_run.tokens, &cpu_run.first_logits);
    let (gpu_tokens, gpu_first) = (&gpu_run.tokens, &gpu_run.first_logits);
    let mut per_prompt = Vec::new();
    let mut identical = true;
    for i in 0..prompts.len() {
        let diverge = cpu_tokens[i].iter().zip(&gpu_tokens[i]).position(|(a, b)| a != b);
        let max_diff = cpu_first[i].iter().zip(&gpu_first[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = cpu_first[i].iter().map(|v| v.abs()).fold(0f32, f32::max);
        identical &= diverge.is_none();
        per_prompt.push(json!({
            "prompt_tokens": prompts[i].len(),
            "identical": diverge.is_none(),
            "first_divergence": diverge,
            "first_step_max_abs_logit_diff": max_diff,
            "first_step_max_abs_logit": scale,
            "cpu": cpu_tokens[i],
            "cuda": gpu_tokens[i],
        }));
    }
    Ok(json!({ "model": path, "steps": steps, "identical": identical, "cpu_seconds": cpu_s, "prompts": per_prompt }))
}

fn decode_rate(cuda: &mut CudaModel, seqs: usize, steps: usize) -> Result<f64> {
    let prompt: Vec<u32> = (0..16).map(|i| 1 + i * 7).collect();
    let base = 1_000_000u64;
    for s in 0..seqs {
        cuda.forward(&[StepItem { seq: base + s as u64, tokens: &prompt, logits: false }])?;
    }
    let token = [42u32];
    let items: Vec<StepItem> =
        (0..seqs).map(|s| StepItem { seq: base + s as u64, tokens: &token, logits: true }).collect();
    cuda.forward(&items)?; // warm-up
    let started = Instant::now();
    for _ in 0..steps {
        cuda.forward(&items)?;
    }
    let rate = (seqs * steps) as f64 / started.elapsed().as_secs_f64();
    for s in 0..seqs {
        cuda.release(base + s as u64);
    }
    Ok(rate)
}

/// Throughput of the CUDA model on its own (no HTTP, no scheduler).
pub fn bench(cuda: &mut CudaModel, peak_gbps: f64) -> Result<Value> {
    let prompt: Vec<u32> = (0..128).map(|i| 1 + (i * 13) % 1000).collect();
    cuda.forward(&[StepItem { seq: 7, tokens: &prompt, logits: true }])?; // warm-up
    cuda.release(7);
    let runs = 5;
    let started = Instant::now();
    for r in 0..runs {
        cuda.forward(&[StepItem { seq: 8 + r, tokens: &prompt, logits: true }])?;
        cuda.release(8 + r);
    }
    let ttft_s = started.elapsed().as_secs_f64() / runs as f64;
    let mut decode = serde_json::Map::new();
    for seqs in [1usize, 16, 64] {
        decode.insert(seqs.to_string(), json!(decode_rate(cuda, seqs, 32)?));
    }
    let step_s = 1.0 / decode["1"].as_f64().unwrap_or(f64::NAN);
    let gbps = cuda.memory_plan().weights as f64 / step_s / 1e9;
    Ok(json!({
        "prefill_tok_s": prompt.len() as f64 / ttft_s,
        "ttft_ms_128": ttft_s * 1e3,
        "decode_tok_s": decode,
        "batch1_weight_gb_s": gbps,
        "batch1_roofline_fraction": gbps / peak_gbps,
        "peak_gb_s_assumed": peak_gbps,
    }))
}

/// Loads `path` onto `device` for the checks.
pub fn load(path: &Path, device: kiln_cuda::CudaDevice) -> Result<CudaModel> {
    let options = CudaLoadOptions { max_context: Some(2048), max_sequences: 80, ..CudaLoadOptions::default() };
    Ok(CudaModel::load(path, device, options)?)
}
