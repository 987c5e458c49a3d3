//! Test fixtures: tiny random-weight GGUF models of each architecture,
//! written with candle's GGUF writer, and kiln's logits on them.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::{KvType, LoadOptions, Model, SeqBatchItem};

pub const VOCAB: usize = 300;
/// Width 256: K-quants need 256-wide rows.
const D: usize = 256;
const FF: usize = 512;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;

/// A deterministic stream of values in `[-scale, scale)`.
struct Random(u32);

impl Random {
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((self.0 >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// A `rows x cols` matrix of values within `scale`, stored as `dtype`.
    fn matrix(&mut self, rows: usize, cols: usize, scale: f32, dtype: GgmlDType) -> QTensor {
        let t = Tensor::from_vec(self.values(rows * cols, scale), (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    }

    /// An f32 vector of `n` values within `scale` of `center`.
    fn vector(&mut self, n: usize, center: f32, scale: f32) -> QTensor {
        let v = self.values(n, scale).into_iter().map(|v| v + center).collect();
        QTensor::quantize(&Tensor::from_vec(v, n, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()
    }
}

/// Writes a 2-layer model of `arch` (`llama`, `qwen2`, `qwen3`, `phi3`, `gemma3`) whose
/// matrices are all `dtype`, with `extra` metadata; returns the file. Norm
/// weights and biases are random too, so a missed one shows in the logits.
/// Qwen3's heads are wider than width / heads, as in the real models.
pub fn write(arch: &str, dtype: GgmlDType, dir: &Path, extra: Vec<(&str, Value)>) -> PathBuf {
    write_with(arch, dtype, dir, extra, &[])
}

/// [`write`] plus f32 vectors named `extra_vectors` (32 values each).
pub fn write_with(
    arch: &str,
    dtype: GgmlDType,
    dir: &Path,
    extra: Vec<(&str, Value)>,
    extra_vectors: &[&str],
) -> PathBuf {
    let mut random = Random(1);
    let head_dim = if matches!(arch, "qwen3" | "gemma3") { 128 } else { D / HEADS };
    let (q, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), random.matrix(VOCAB, D, 0.1, dtype)),
        ("output_norm.weight".into(), random.vector(D, 1.0, 0.5)),
    ];
    if arch == "phi3" {
        // candle's Phi-3 wants its own output head; the others share the embedding.
        tensors.push(("output.weight".into(), random.matrix(VOCAB, D, 0.1, dtype)));
    }
    for l in 0..LAYERS {
        let separate = [
            ("attn_q", q, D),
            ("attn_k", kv, D),
            ("attn_v", kv, D),
            ("attn_output", D, q),
            ("ffn_gate", FF, D),
            ("ffn_up", FF, D),
            ("ffn_down", D, FF),
        ];
        let fused = [("attn_qkv", q + 2 * kv, D), ("attn_output", D, q), ("ffn_up", 2 * FF, D), ("ffn_down", D, FF)];
        let matrices = if arch == "phi3" { &fused[..] } else { &separate[..] };
        for &(name, rows, cols) in matrices {
            tensors.push((format!("blk.{l}.{name}.weight"), random.matrix(rows, cols, 0.1, dtype)));
        }
        tensors.push((format!("blk.{l}.attn_norm.weight"), random.vector(D, 1.0, 0.5)));
        tensors.push((format!("blk.{l}.ffn_norm.weight"), random.vector(D, 1.0, 0.5)));
        if arch == "qwen2" {
            for (name, n) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                tensors.push((format!("blk.{l}.{name}.bias"), random.vector(n, 0.0, 0.5)));
            }
        }
        if matches!(arch, "qwen3" | "gemma3") {
            tensors.push((format!("blk.{l}.attn_q_norm.weight"), random.vector(head_dim, 1.0, 0.5)));
            tensors.push((format!("blk.{l}.attn_k_norm.weight"), random.vector(head_dim, 1.0, 0.5)));
        }
        if arch == "gemma3" {
            tensors.push((format!("blk.{l}.post_attention_norm.weight"), random.vector(D, 1.0, 0.5)));
            tensors.push((format!("blk.{l}.post_ffw_norm.weight"), random.vector(D, 1.0, 0.5)));
        }
    }
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        // candle's Qwen3 computes in f16 unless told f32.
        ("general.dtype".into(), Value::U32(0)),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("embedding_length"), Value::U32(D as u32)),
        (key("feed_forward_length"), Value::U32(FF as u32)),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("rope.dimension_count"), Value::U32(head_dim as u32)),
        (key("context_length"), Value::U32(256)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
    ];
    if matches!(arch, "qwen3" | "gemma3") {
        meta.push((key("attention.key_length"), Value::U32(head_dim as u32)));
        meta.push((key("attention.value_length"), Value::U32(head_dim as u32)));
    }
    if arch == "gemma3" {
        // Layer 0 slides (RoPE base 10,000), layer 1 is global (base 10^6);
        // the window is wider than the tests' prompts unless `extra` narrows it.
        meta.push((key("attention.sliding_window"), Value::U32(16)));
        meta.push((key("attention.sliding_window_type"), Value::U32(2)));
        meta.push((key("rope.local_freq_base"), Value::F32(10_000.0)));
        meta.retain(|(k, _)| k != &key("rope.freq_base"));
        meta.push((key("rope.freq_base"), Value::F32(1_000_000.0)));
    }
    for (k, v) in extra {
        meta.retain(|(have, _)| have != k);
        meta.push((k.to_string(), v));
    }
    for name in extra_vectors {
        tensors.push((name.to_string(), random.vector(32, 1.0, 0.5)));
    }
    let path = dir.join(format!("tiny-{arch}-{dtype:?}-{}-{}.gguf", meta.len(), tensors.len()));
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    path
}

/// kiln's logits for the last of `tokens`, run as one prompt.
pub fn kiln_logits(path: &Path, tokens: &[u32], f32_weights: bool) -> Vec<f32> {
    let options = LoadOptions { max_context: None, f32_weights, kv_type: KvType::F32 };
    let model = Model::load_with(path, options).unwrap();
    let mut cache = model.new_cache();
    let out = model.forward(&mut [SeqBatchItem { tokens, cache: &mut cache, logits: true }]).unwrap();
    out[0].clone().unwrap()
}

/// Largest difference over the largest magnitude of `b`.
pub fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
