//! The model: loading from GGUF and the batched forward pass, one decoder
//! block for every [`crate::Arch`] with its differences switched in.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Content;
use kiln_kernels::{QMatrix, QuantizedActs};
use rayon::prelude::*;

use crate::attention::{AttnScratch, Seen};
use crate::cache::{KvCache, KvType};
use crate::config::{ModelConfig, RopeStyle};
use crate::linear::{FusedLinear, Linear, RawTensor, map_file, read_raw};
use crate::ops;
use crate::rope::RopeTable;
use crate::{ModelError, Result};

#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    qkv: FusedLinear,
    /// Added to each row of `qkv` (Qwen2).
    qkv_bias: Option<Vec<f32>>,
    /// Per-head RMSNorm weights of Q and of K, applied before RoPE (Qwen3, Gemma 3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// RMSNorm weights applied to the attention output and to the FFN output
    /// before each joins the residual stream (Gemma).
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    wo: FusedLinear,
    ffn_norm: Vec<f32>,
    gate_up: FusedLinear,
    down: FusedLinear,
}

#[derive(Debug)]
enum Embedding {
    /// Rows dequantized on lookup; shared with a tied output head.
    Native(Arc<QMatrix>),
    /// Any other GGUF format, kept as is and dequantized a row per lookup
    /// (a whole f32 copy would be ~1 GB for a 1B model's 128k vocabulary).
    Rows { dtype: GgmlDType, cols: usize, row_bytes: usize, raw: Vec<u8> },
}

/// Default cap on sequence length: models trained on 128k contexts would
/// otherwise size their RoPE tables (and let KV caches grow) that far.
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// How to load a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Longest sequence (prompt + generation); `None`: the training context.
    pub max_context: Option<usize>,
    /// Dequantize every matrix to `f32` at load and skip 8-bit activations:
    /// exact arithmetic for reference checks, at 4-8x the memory and far slower.
    pub f32_weights: bool,
    /// How sequences' keys and values are stored.
    pub kv_type: KvType,
}

/// One sequence's share of a forward step.
#[derive(Debug)]
pub struct SeqBatchItem<'a> {
    /// New tokens: a prompt chunk, or the one token sampled last step.
    pub tokens: &'a [u32],
    /// The sequence's cache; `tokens` are appended at positions `cache.len()..`.
    pub cache: &'a mut KvCache,
    /// Whether to compute logits for the last of `tokens`.
    pub logits: bool,
}

/// A loaded model. Immutable and `Sync`: one instance serves every sequence.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    max_context: usize,
    kv_type: KvType,
    embedding: Embedding,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    output: Linear,
    /// Per-frequency divisors (`rope_freqs.weight`, as Llama 3.1+ ship).
    rope_freq_factors: Option<Vec<f32>>,
    rope: RopeTable,
    /// Sliding-window layers' table (Gemma 3), of their own base.
    rope_local: Option<RopeTable>,
}

fn f32_vector(raw: RawTensor<'_>, name: &str) -> Result<Vec<f32>> {
    match raw.dtype {
        candle_core::quantized::GgmlDType::F32 => {
            Ok(raw.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        other => Err(ModelError::Tensor { name: name.into(), reason: format!("expected F32, found {other:?}") }),
    }
}

impl Model {
    /// Loads a GGUF file. `max_context` caps sequence length (defaults to the
    /// model's training context).
    pub fn load(path: &Path, max_context: Option<usize>) -> Result<Model> {
        Self::load_with(path, LoadOptions { max_context, ..LoadOptions::default() })
    }

    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Model> {
        let display = path.display().to_string();
        let mut file = File::open(path).map_err(|source| ModelError::Io { path: display.clone(), source })?;
        let content =
            Content::read(&mut file).map_err(|e| ModelError::Gguf { path: display.clone(), reason: e.to_string() })?;
        Self::from_content(&content, &file, options)
    }

    /// Loads from a GGUF header already read from `file` (callers that also
    /// build the tokenizer from it read the file's metadata once).
    pub fn from_content(content: &Content, file: &File, options: LoadOptions) -> Result<Model> {
        let model = Self::from_gguf(content, file, options.f32_weights)?;
        Ok(Model { kv_type: options.kv_type, ..model.with_max_context(options.max_context) })
    }

    fn with_max_context(mut self, max_context: Option<usize>) -> Model {
        let trained = self.config.n_ctx_train.max(1);
        let max = max_context.unwrap_or(trained.min(DEFAULT_MAX_CONTEXT)).clamp(1, trained);
        if max_context.is_none() && max < trained {
            tracing::info!(trained, max, "context capped by default; pass a larger max context to use more");
        }
        self.max_context = max;
        self.build_rope_table();
        self
    }

    fn from_gguf(content: &Content, file: &File, f32_weights: bool) -> Result<Model> {
        let config = ModelConfig::from_gguf(content)?;
        let map = map_file(file)?;
        let file: &[u8] = &map;
        let vec = |file: &[u8], name: &str| f32_vector(read_raw(file, content, name)?, name);
        let embd = read_raw(file, content, "token_embd.weight")?;
        if embd.cols != config.n_embd || embd.rows < config.vocab_size {
            return Err(ModelError::Tensor {
                name: "token_embd.weight".into(),
                reason: format!("shape {}x{}, expected {}x{}", embd.rows, embd.cols, config.vocab_size, config.n_embd),
            });
        }
        let quantized_rows = (embd.dtype, embd.cols, embd.data.to_vec());
        let embd_linear = Linear::from_raw("token_embd.weight", embd, f32_weights)?;
        let embedding = match &embd_linear {
            Linear::Native(m) => Embedding::Native(m.clone()),
            Linear::Candle { .. } => {
                let (dtype, cols, raw) = quantized_rows;
                let row_bytes = cols / dtype.block_size() * dtype.type_size();
                Embedding::Rows { dtype, cols, row_bytes, raw }
            }
        };
        let output = if content.tensor_infos.contains_key("output.weight") {
            Linear::from_raw("output.weight", read_raw(file, content, "output.weight")?, f32_weights)?
        } else {
            embd_linear
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let (d, q, kv, ff) = (config.n_embd, config.q_dim(), config.kv_dim(), config.n_ff);
            let qkv_bias = match config.arch.qkv_bias() {
                false => None,
                true => {
                    let mut bias = Vec::with_capacity(q + 2 * kv);
                    for (part, width) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                        let name = format!("blk.{i}.{part}.bias");
                        let b = vec(file, &name)?;
                        expect_shape(&name, (1, b.len()), (1, width))?;
                        bias.extend(b);
                    }
                    Some(bias)
                }
            };
            let qk_norm = match config.arch.qk_norm() {
                false => None,
                true => {
                    let (qn, kn) = (vec(file, &n("attn_q_norm"))?, vec(file, &n("attn_k_norm"))?);
                    expect_shape(&n("attn_q_norm"), (1, qn.len()), (1, config.head_dim))?;
                    expect_shape(&n("attn_k_norm"), (1, kn.len()), (1, config.head_dim))?;
                    Some((qn, kn))
                }
            };
            let post_norms = match config.arch.gemma() {
                false => None,
                true => {
                    let (a, f) = (vec(file, &n("post_attention_norm"))?, vec(file, &n("post_ffw_norm"))?);
                    expect_shape(&n("post_attention_norm"), (1, a.len()), (1, d))?;
                    expect_shape(&n("post_ffw_norm"), (1, f.len()), (1, d))?;
                    Some((a, f))
                }
            };
            let (qkv_names, gate_up_names) = match config.arch.fused_projections() {
                true => (vec![n("attn_qkv")], vec![n("ffn_up")]),
                false => (vec![n("attn_q"), n("attn_k"), n("attn_v")], vec![n("ffn_gate"), n("ffn_up")]),
            };
            let block = Block {
                attn_norm: vec(file, &n("attn_norm"))?,
                qkv: FusedLinear::load(file, content, &qkv_names, f32_weights)?,
                qkv_bias,
                qk_norm,
                post_norms,
                wo: FusedLinear::load(file, content, &[n("attn_output")], f32_weights)?,
                ffn_norm: vec(file, &n("ffn_norm"))?,
                gate_up: FusedLinear::load(file, content, &gate_up_names, f32_weights)?,
                down: FusedLinear::load(file, content, &[n("ffn_down")], f32_weights)?,
            };
            expect_shape(&n("attn_q/k/v"), (block.qkv.rows(), block.qkv.cols()), (q + 2 * kv, d))?;
            expect_shape(&n("attn_output"), (block.wo.rows(), block.wo.cols()), (d, q))?;
            expect_shape(&n("ffn_gate/up"), (block.gate_up.rows(), block.gate_up.cols()), (2 * ff, d))?;
            expect_shape(&n("ffn_down"), (block.down.rows(), block.down.cols()), (d, ff))?;
            expect_shape(&n("attn_norm"), (1, block.attn_norm.len()), (1, d))?;
            expect_shape(&n("ffn_norm"), (1, block.ffn_norm.len()), (1, d))?;
            blocks.push(block);
        }
        if output.cols() != config.n_embd || output.rows() < config.vocab_size {
            return Err(ModelError::Tensor {
                name: "output.weight".into(),
                reason: format!(
                    "shape {}x{}, expected at least {}x{}",
                    output.rows(),
                    output.cols(),
                    config.vocab_size,
                    config.n_embd
                ),
            });
        }
        let output_norm = vec(file, "output_norm.weight")?;
        expect_shape("output_norm.weight", (1, output_norm.len()), (1, config.n_embd))?;
        if ["rope_factors_long.weight", "rope_factors_short.weight"]
            .iter()
            .any(|t| content.tensor_infos.contains_key(*t))
        {
            return Err(ModelError::Unsupported(
                "long-context RoPE factors (rope_factors_long/short, LongRoPE)".into(),
            ));
        }
        let rope_freq_factors = match content.tensor_infos.get("rope_freqs.weight") {
            None => None,
            Some(_) => {
                let f = vec(file, "rope_freqs.weight")?;
                expect_shape("rope_freqs.weight", (1, f.len()), (1, config.rope_dim / 2))?;
                Some(f)
            }
        };
        Ok(Model {
            output_norm,
            rope_freq_factors,
            max_context: config.n_ctx_train,
            kv_type: KvType::default(),
            config,
            embedding,
            blocks,
            output,
            rope: RopeTable::default(),
            rope_local: None,
        })
    }

    fn build_rope_table(&mut self) {
        let cfg = &self.config;
        let factors = self.rope_freq_factors.as_deref();
        self.rope = RopeTable::new(cfg.rope_dim, cfg.rope_freq_base, cfg.rope_linear_scale, factors, self.max_context);
        self.rope_local = (cfg.sliding_window.as_ref())
            .and_then(|w| w.rope_freq_base)
            .map(|base| RopeTable::new(cfg.rope_dim, base, 1.0, None, self.max_context));
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// An empty cache in the model's KV type.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_of(self.kv_type)
    }

    /// An empty cache storing keys and values as `kv_type`.
    pub fn new_cache_of(&self, kv_type: KvType) -> KvCache {
        KvCache::new(self.config.n_layer, self.kv_dim(), kv_type)
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes of keys and values a sequence of `positions` tokens holds once
    /// reserved ([`KvCache::reserve`]): what a memory budget charges it.
    pub fn kv_cache_bytes(&self, positions: usize) -> usize {
        KvCache::bytes_for(self.config.n_layer, self.kv_dim(), self.kv_type, positions)
    }

    fn kv_dim(&self) -> usize {
        self.config.kv_dim()
    }

    /// Runs one step for a batch of sequences. Returns, per item, the logits
    /// of its last token when `logits` was asked for.
    pub fn forward(&self, items: &mut [SeqBatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        // Run the step on a pool worker: the step's ~150 parallel products then
        // take rayon's in-worker fast path instead of a cross-thread injection
        // each (tens of microseconds apiece from a foreign thread), and the
        // other workers poll for them rather than sleep between them.
        crate::warm::with_warm_workers(|| self.forward_in_pool(items))
    }

    fn forward_in_pool(&self, items: &mut [SeqBatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let cfg = &self.config;
        let (d, hd, n_head, n_kv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_w = qd + 2 * kvd;
        // Validate the whole batch before touching any cache.
        let mut rows: Vec<(usize, usize)> = Vec::new(); // (item, position) per token row
        for (i, item) in items.iter().enumerate() {
            let end = item.cache.len + item.tokens.len();
            if end > self.max_context {
                return Err(ModelError::ContextOverflow { len: end, max: self.max_context });
            }
            for (j, &t) in item.tokens.iter().enumerate() {
                if t as usize >= cfg.vocab_size {
                    return Err(ModelError::TokenOutOfRange { id: t, vocab: cfg.vocab_size });
                }
                rows.push((i, item.cache.len + j));
            }
        }
        let t = rows.len();
        let mut x = vec![0f32; t * d];
        let tokens = items.iter().flat_map(|it| it.tokens.iter().copied());
        for (row, tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.embed(tok, row)?;
        }
        if cfg.arch.gemma() {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        // Queries carry any score scale other than 1/sqrt(head width), which the attention applies.
        let q_scale = cfg.attention_scale.map(|s| s * (hd as f32).sqrt());
        let mut xn = vec![0f32; t * d];
        let mut qkv = vec![0f32; t * qkv_w];
        let mut attn = vec![0f32; t * qd];
        let mut proj = vec![0f32; t * d];
        let mut gate_up = vec![0f32; t * 2 * cfg.n_ff];
        let mut h = vec![0f32; t * cfg.n_ff];
        let mut acts = QuantizedActs::new();
        // A failed product (candle's formats can fail) must not leave caches with
        // rows past their length: roll every cache back before reporting it.
        let ran = (|| -> Result<()> {
            for (l, block) in self.blocks.iter().enumerate() {
                let window = cfg.sliding_window.as_ref().filter(|w| w.slides(l)).map(|w| w.window);
                let rope = match (window, &self.rope_local) {
                    (Some(_), Some(local)) => local,
                    _ => &self.rope,
                };
                ops::rms_norm(&x, &block.attn_norm, cfg.rms_eps, &mut xn);
                block.qkv.forward(&xn, t, &mut acts, &mut qkv)?;
                for (row, &(_, pos)) in qkv.chunks_exact_mut(qkv_w).zip(&rows) {
                    if let Some(bias) = &block.qkv_bias {
                        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    }
                    let (cos, sin) = rope.at(pos);
                    let (q, k) = row[..qd + kvd].split_at_mut(qd);
                    for (heads, norm) in
                        [(q, block.qk_norm.as_ref().map(|n| &n.0)), (k, block.qk_norm.as_ref().map(|n| &n.1))]
                    {
                        for head in heads.chunks_exact_mut(hd) {
                            if let Some(norm) = norm {
                                ops::rms_norm_in_place(head, norm, cfg.rms_eps);
                            }
                            match cfg.arch.rope_style() {
                                RopeStyle::Interleaved => ops::rope_interleaved(&mut head[..cfg.rope_dim], cos, sin),
                                RopeStyle::Halves => ops::rope_halves(&mut head[..cfg.rope_dim], cos, sin),
                            }
                        }
                    }
                    if let Some(scale) = q_scale {
                        row[..qd].iter_mut().for_each(|v| *v *= scale);
                    }
                }
                for (row, &(i, pos)) in qkv.chunks_exact(qkv_w).zip(&rows) {
                    items[i].cache.append(l, pos, &row[qd..qd + kvd], &row[qd + kvd..]);
                }
                let caches: Vec<&KvCache> = items.iter().map(|it| &*it.cache).collect();
                let group = n_head / n_kv;
                attn.par_chunks_mut(hd).with_min_len(group).enumerate().for_each_init(
                    AttnScratch::default,
                    |scratch, (idx, out)| {
                        let (row, head) = (idx / n_head, idx % n_head);
                        let (item, pos) = rows[row];
                        let q = &qkv[row * qkv_w + head * hd..][..hd];
                        let start = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                        let seen = Seen { start, len: pos + 1, softcap: cfg.attn_softcap };
                        caches[item].attend(l, q, (head / group) * hd, seen, scratch, out);
                    },
                );
                block.wo.forward(&attn, t, &mut acts, &mut proj)?;
                if let Some((post_attn, _)) = &block.post_norms {
                    proj.chunks_exact_mut(d).for_each(|row| ops::rms_norm_in_place(row, post_attn, cfg.rms_eps));
                }
                x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
                ops::rms_norm(&x, &block.ffn_norm, cfg.rms_eps, &mut xn);
                block.gate_up.forward(&xn, t, &mut acts, &mut gate_up)?;
                match cfg.arch.gemma() {
                    true => ops::gelu_mul(&gate_up, cfg.n_ff, &mut h),
                    false => ops::silu_mul(&gate_up, cfg.n_ff, &mut h),
                }
                block.down.forward(&h, t, &mut acts, &mut proj)?;
                if let Some((_, post_ffn)) = &block.post_norms {
                    proj.chunks_exact_mut(d).for_each(|row| ops::rms_norm_in_place(row, post_ffn, cfg.rms_eps));
                }
                x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            }
            Ok(())
        })();
        if let Err(e) = ran {
            for item in items.iter_mut() {
                item.cache.rollback();
            }
            return Err(e);
        }
        for item in items.iter_mut() {
            item.cache.len += item.tokens.len();
        }
        // Only the last row of each sequence that asks needs the (large) output head.
        let mut wanted = Vec::new();
        let mut last_row = 0;
        for (i, item) in items.iter().enumerate() {
            last_row += item.tokens.len();
            if item.logits && !item.tokens.is_empty() {
                wanted.push((i, last_row - 1));
            }
        }
        let mut out = vec![None; items.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        let mut last = vec![0f32; wanted.len() * d];
        for (dst, &(_, row)) in last.chunks_exact_mut(d).zip(&wanted) {
            ops::rms_norm(&x[row * d..(row + 1) * d], &self.output_norm, cfg.rms_eps, dst);
        }
        let vocab = self.output.rows();
        let mut logits = vec![0f32; wanted.len() * vocab];
        self.output.forward(&last, wanted.len(), &mut acts, false, &mut logits)?;
        if let Some(cap) = cfg.final_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        for (chunk, &(i, _)) in logits.chunks_exact(vocab).zip(&wanted) {
            out[i] = Some(chunk[..cfg.vocab_size].to_vec());
        }
        Ok(out)
    }

    fn embed(&self, token: u32, out: &mut [f32]) -> Result<()> {
        match &self.embedding {
            Embedding::Native(m) => m.dequantize_row(token as usize, out),
            Embedding::Rows { dtype, cols, row_bytes, raw } => {
                let bytes = &raw[token as usize * row_bytes..][..*row_bytes];
                let row = qtensor_from_ggml(*dtype, bytes, vec![*cols], &Device::Cpu)?.dequantize(&Device::Cpu)?;
                out.copy_from_slice(&row.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }
}

fn expect_shape(name: &str, got: (usize, usize), want: (usize, usize)) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(ModelError::Tensor {
        name: name.into(),
        reason: format!("shape {}x{} disagrees with the metadata ({}x{})", got.0, got.1, want.0, want.1),
    })
}
