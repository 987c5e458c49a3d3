//! Probes: `GET /health` (liveness, with what is loaded) and `GET /ready`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `draining` after a shutdown signal.
    pub status: String,
    /// The served model's id.
    pub model: String,
    pub model_loaded: bool,
    /// True only when the model runs on a CUDA device.
    pub gpu_available: bool,
    /// Where the model runs: `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU's name, when the model runs on one.
    pub gpu_name: Option<String>,
    /// Device memory in use and in all (bytes), when the model runs on a GPU.
    pub gpu_memory_used_bytes: Option<u64>,
    pub gpu_memory_total_bytes: Option<u64>,
    /// kiln's version.
    pub version: String,
    pub uptime_secs: u64,
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests waiting for a batch slot.
    pub queued: usize,
    /// Loaded plugins as `name@version`.
    pub plugins: Vec<String>,
    /// Answers in the response cache.
    pub cache_size: usize,
    /// Their size in bytes.
    pub cache_bytes: usize,
    /// Keys and values the running sequences hold, in bytes.
    pub kv_cache_bytes: usize,
    /// What the running sequences have set aside for their keys and values
    /// (each its prompt plus `max_tokens`), in bytes.
    pub kv_cache_reserved_bytes: usize,
    /// The most they may set aside (`--kv-cache-mib`); requests past it wait in the queue.
    pub kv_cache_budget_bytes: usize,
    /// Keys and values kept for reuse by later prompts with the same prefix, in bytes.
    pub prefix_cache_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}
