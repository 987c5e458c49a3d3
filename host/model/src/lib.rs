//! kiln-model: a GGUF decoder model (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and 3) and its forward pass.
//!
//! One call to [`Model::forward`] runs a batch of sequences, each at its own
//! position with its own [`KvCache`]: prompt chunks (prefill) and single
//! decode tokens mix freely in one step, which is what continuous batching
//! needs. The layer weights' products run on `kiln-kernels` (Q4_1, Q5_0,
//! Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) or on candle-core's quantized matmul for
//! the other GGUF formats; the small ops (RMSNorm, RoPE, grouped-query
//! attention, SwiGLU) and each architecture's additions (Q/K/V biases,
//! per-head Q/K norms, Gemma's post norms, GeGLU, soft-caps and sliding windows) are
//! fused loops over preallocated rows, because at 135M parameters a decode
//! step is a few milliseconds and per-op tensor bookkeeping would be a large
//! share.

mod attention;
mod backend;
mod cache;
mod config;
mod linear;
mod model;
mod ops;
mod rope;
mod warm;

pub use backend::{DeviceReport, ModelBackend, SeqCache, StepSeq};
pub use cache::{KvCache, KvType};
pub use config::{Arch, ModelConfig, RopeStyle, SlidingWindow};
/// The file's tensors as stored, for other devices' loaders (kiln-cuda).
pub use linear::{RawTensor, map_file, read_raw};
pub use model::{LoadOptions, Model, SeqBatchItem};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a readable GGUF file: {reason}")]
    Gguf { path: String, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("missing or malformed GGUF metadata `{key}`: {reason}")]
    Metadata { key: String, reason: String },
    #[error("missing or malformed tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence would reach {len} tokens, over the context window of {max}")]
    ContextOverflow { len: usize, max: usize },
    /// The device running the model failed (a GPU's driver or kernels).
    #[error("device: {0}")]
    Device(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod format_tests;

#[cfg(test)]
mod tiny_gguf;

#[cfg(test)]
mod arch_tests;
