//! Hyper-parameters read from GGUF metadata.

use candle_core::quantized::gguf_file::{Content, Value};

use crate::{ModelError, Result};

/// The architectures kiln runs: one decoder block (RMSNorm, grouped-query
/// attention with RoPE, gated FFN) with each family's differences switched in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3.x, TinyLlama, SmolLM, Mistral: llama.cpp's `llama` layout.
    Llama,
    /// Qwen2 / Qwen2.5: biases on Q, K and V; RoPE over each head's halves.
    Qwen2,
    /// Qwen3: RMSNorm on each head of Q and K before RoPE; RoPE over halves.
    Qwen3,
    /// Phi-3: Q/K/V in one matrix (`attn_qkv`), gate and up in one
    /// (`ffn_up`, gate first); RoPE over halves.
    Phi3,
    /// Gemma 2: embeddings scaled by sqrt(width), an RMSNorm after attention
    /// and after the FFN as well as before, GeGLU, RoPE over halves, attention
    /// scores and output logits soft-capped (`c * tanh(x / c)`), every other
    /// layer (the first, third...) on a sliding window.
    Gemma2,
    /// Gemma 3: embeddings scaled by sqrt(width), per-head Q/K RMSNorm, an
    /// RMSNorm after attention and after the FFN as well as before, GeGLU
    /// (tanh GELU) instead of SwiGLU, RoPE over halves; five of every six
    /// layers attend over a sliding window with their own RoPE base.
    Gemma3,
}

/// How RoPE pairs a head's dimensions (llama.cpp's rope types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// "normal": dimensions `(2i, 2i+1)` rotate together (llama.cpp permutes
    /// Llama's Q/K weights to this order when it converts them).
    Interleaved,
    /// "neox": dimensions `(i, i + n/2)` rotate together.
    Halves,
}

impl Arch {
    /// `general.architecture` values kiln loads, for errors that list them.
    pub const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];

    fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "phi3" => Some(Arch::Phi3),
            "gemma2" => Some(Arch::Gemma2),
            "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    pub fn rope_style(self) -> RopeStyle {
        match self {
            Arch::Llama => RopeStyle::Interleaved,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 | Arch::Gemma2 | Arch::Gemma3 => RopeStyle::Halves,
        }
    }

    /// Q, K and V projections carry biases (`attn_{q,k,v}.bias`).
    pub fn qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Q/K/V and gate/up are stored fused, one tensor each.
    pub fn fused_projections(self) -> bool {
        self == Arch::Phi3
    }

    /// Each head of Q and K is RMS-normalized (`attn_{q,k}_norm`) before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }

    /// Gemma: token embeddings are multiplied by sqrt(width), and attention
    /// and FFN outputs are RMS-normalized (`post_attention_norm`,
    /// `post_ffw_norm`) before joining the residual stream.
    pub fn gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// Layers that attend over the last `window` positions only (Gemma 3's local
/// layers), each with RoPE of its own base.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, itself included.
    pub window: usize,
    /// Every `pattern`-th layer is global, the others slide (`(l + 1) % pattern != 0`).
    pub pattern: usize,
    /// RoPE base of the sliding layers when it differs from the others'
    /// (Gemma 3; no scaling applies to them then).
    pub rope_freq_base: Option<f32>,
}

impl SlidingWindow {
    pub fn slides(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.pattern)
    }
}

/// The shape of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture` as the file names it.
    pub architecture: String,
    pub arch: Arch,
    pub name: Option<String>,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_freq_base: f32,
    /// Positions are divided by this (`rope.scaling.type = linear`); 1 otherwise.
    pub rope_linear_scale: f32,
    pub rms_eps: f32,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub vocab_size: usize,
    /// Gemma 3's local layers.
    pub sliding_window: Option<SlidingWindow>,
    /// Multiplies attention scores instead of 1/sqrt(head width) (Gemma's 27B
    /// models scale queries by their width per head, not by their head width).
    pub attention_scale: Option<f32>,
    /// Attention scores become `c * tanh(score / c)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Output logits become `c * tanh(logit / c)` (Gemma 2).
    pub final_softcap: Option<f32>,
}

impl ModelConfig {
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let arch =
            get(content, "general.architecture")?.to_string().map_err(|e| meta_err("general.architecture", e))?.clone();
        let Some(kind) = Arch::from_gguf_name(&arch) else {
            return Err(ModelError::Unsupported(format!(
                "architecture `{arch}`; kiln runs {}",
                Arch::SUPPORTED.join(", ")
            )));
        };
        let u = |key: &str| -> Result<usize> {
            let full = format!("{arch}.{key}");
            get(content, &full)?.to_u32().map(|v| v as usize).map_err(|e| meta_err(&full, e))
        };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(ModelError::Unsupported(format!("{n_head} query heads, {n_head_kv} KV heads")));
        }
        // Heads may be wider or narrower than width / heads (Qwen3, Gemma):
        // then the file says how wide.
        let head_dim = match content.metadata.get(&format!("{arch}.attention.key_length")) {
            Some(_) => u("attention.key_length")?,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => return Err(ModelError::Unsupported(format!("{n_head} heads do not divide width {n_embd}"))),
        };
        let value_dim = match content.metadata.get(&format!("{arch}.attention.value_length")) {
            Some(_) => u("attention.value_length")?,
            None => head_dim,
        };
        if head_dim == 0 || value_dim != head_dim {
            return Err(ModelError::Unsupported(format!("key heads {head_dim} wide, value heads {value_dim}")));
        }
        let rope_dim = u("rope.dimension_count").unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::Unsupported(format!("RoPE over {rope_dim} of {head_dim} head dimensions")));
        }
        let scaling = content.metadata.get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.to_string().ok());
        let rope_linear_scale = match scaling.map(String::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => {
                let key = format!("{arch}.rope.scaling.factor");
                content
                    .metadata
                    .get(&key)
                    .map(|v| v.to_f32().map_err(|e| meta_err(&key, e)))
                    .transpose()?
                    .unwrap_or(1.0)
            }
            Some(other) => {
                return Err(ModelError::Unsupported(format!("RoPE scaling `{other}` (kiln runs none and linear)")));
            }
        };
        let f = |key: &str, default: f32| -> Result<f32> {
            let full = format!("{arch}.{key}");
            match content.metadata.get(&full) {
                None => Ok(default),
                Some(v) => v.to_f32().map_err(|e| meta_err(&full, e)),
            }
        };
        let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            _ => content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| meta_err("tokenizer.ggml.tokens", "absent"))?,
        };
        let n_layer = u("block_count")?;
        // Gemma's 27B models (46 layers for Gemma 2, 62 for Gemma 3) scale queries by width / heads.
        let gemma_scale = |layers_27b: usize| (n_layer == layers_27b).then(|| 1.0 / ((n_embd / n_head) as f32).sqrt());
        let (sliding_window, attention_scale, attn_softcap, final_softcap) = match kind {
            // llama.cpp's constants where the file has no key (window pattern,
            // Gemma 3's local RoPE base); candle's key names where a file has them.
            // A window of 0 (or none, for Gemma 3) means none, as llama.cpp reads it.
            Arch::Gemma2 => {
                let window = SlidingWindow {
                    window: u("attention.sliding_window").unwrap_or(4096),
                    pattern: 2,
                    rope_freq_base: None,
                };
                let caps = (f("attn_logit_softcapping", 50.0)?, f("final_logit_softcapping", 30.0)?);
                (Some(window).filter(|w| w.window > 0), gemma_scale(46), Some(caps.0), Some(caps.1))
            }
            Arch::Gemma3 => {
                let window = SlidingWindow {
                    window: u("attention.sliding_window").unwrap_or(0),
                    pattern: u("attention.sliding_window_type").unwrap_or(6).max(1),
                    rope_freq_base: Some(f("rope.local_freq_base", 10_000.0)?),
                };
                (Some(window).filter(|w| w.window > 0), gemma_scale(62), None, None)
            }
            _ => (None, None, None, None),
        };
        Ok(ModelConfig {
            name: content.metadata.get("general.name").and_then(|v| v.to_string().ok()).cloned(),
            n_layer,
            n_embd,
            n_ff: u("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_freq_base: f("rope.freq_base", 10_000.0)?,
            rope_linear_scale,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5)?,
            n_ctx_train: u("context_length")?,
            vocab_size,
            sliding_window,
            attention_scale,
            attn_softcap,
            final_softcap,
            architecture: arch,
            arch: kind,
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

fn get<'a>(content: &'a Content, key: &str) -> Result<&'a Value> {
    content.metadata.get(key).ok_or_else(|| meta_err(key, "absent"))
}

fn meta_err(key: &str, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Metadata { key: key.to_string(), reason: reason.to_string() }
}
