//! The model on a CUDA device: weights uploaded in their GGUF encodings,
//! the paged KV pool sized from free memory, and the batched forward pass
//! ([`CudaModel::forward`]) that mirrors `kiln-model`'s CPU pass layer for
//! layer, so the two can be checked against each other token for token.

mod forward;
pub mod ops;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use cudarc::driver::CudaSlice;
use kiln_model::{ModelConfig, RawTensor, map_file, read_raw};

use crate::CudaError;
use crate::blocks::{BlockPool, SeqId};
use crate::budget::{self, KvShape, MemoryPlan, MemoryRequest};
use crate::runtime::CudaDevice;
use ops::{DEVICE_TYPES, DeviceMatrix, Kernels};

pub use forward::StepItem;

/// How to place a model on the device.
#[derive(Clone, Copy, Debug)]
pub struct CudaLoadOptions {
    /// Longest sequence; `None`: the training context, capped at 8192.
    pub max_context: Option<usize>,
    /// Share of the device's memory kiln may hold (`--gpu-memory-fraction`).
    pub memory_fraction: f64,
    /// Positions per KV block.
    pub block_tokens: usize,
    /// Most sequences the pool is sized for (each at full context).
    pub max_sequences: usize,
    /// Most token rows one step carries (prefill chunk + decode rows).
    pub max_step_tokens: usize,
}

impl Default for CudaLoadOptions {
    fn default() -> Self {
        CudaLoadOptions {
            max_context: None,
            memory_fraction: budget::DEFAULT_MEMORY_FRACTION,
            block_tokens: 16,
            max_sequences: 256,
            max_step_tokens: 2048,
        }
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: CudaSlice<f32>,
    /// One fused Q|K|V matrix (Phi-3) or three.
    qkv: Vec<DeviceMatrix>,
    qkv_bias: Option<CudaSlice<f32>>,
    qk_norm: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    post_norms: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    wo: DeviceMatrix,
    ffn_norm: CudaSlice<f32>,
    /// One fused gate|up matrix (Phi-3) or two.
    gate_up: Vec<DeviceMatrix>,
    down: DeviceMatrix,
}

/// A model resident on one device.
#[derive(Debug)]
pub struct CudaModel {
    dev: CudaDevice,
    kernels: Kernels,
    config: ModelConfig,
    max_context: usize,
    embedding: DeviceMatrix,
    /// `None`: the output head is the embedding (tied).
    output: Option<DeviceMatrix>,
    output_norm: CudaSlice<f32>,
    layers: Vec<Layer>,
    /// Each layer's key and value blocks ([block][position][kv_dim], f16).
    kv_pools: Vec<(CudaSlice<u16>, CudaSlice<u16>)>,
    inv_freq: CudaSlice<f32>,
    /// Sliding layers' frequencies when their base differs (Gemma 3).
    inv_freq_local: Option<CudaSlice<f32>>,
    plan: MemoryPlan,
    options: CudaLoadOptions,
    pool: BlockPool,
    /// Positions each live sequence holds.
    lens: HashMap<SeqId, usize>,
}

fn upload_err(e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver(format!("uploading weights: {e}"))
}

fn model_err(e: kiln_model::ModelError) -> CudaError {
    CudaError::Model(e.to_string())
}

fn f32_values(raw: &RawTensor<'_>, name: &str) -> Result<Vec<f32>, CudaError> {
    if raw.dtype != GgmlDType::F32 {
        return Err(CudaError::Model(format!("{name}: expected F32, found {:?}", raw.dtype)));
    }
    Ok(raw.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Frequencies `base^(-2i/rope_dim)` over factors and the linear scale, as
/// `kiln-model`'s RoPE table computes them.
fn inv_freq(rope_dim: usize, base: f32, linear_scale: f32, factors: Option<&[f32]>) -> Vec<f32> {
    (0..rope_dim / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / rope_dim as f32) / factors.map_or(1.0, |f| f[i]) / linear_scale)
        .collect()
}

impl CudaModel {
    /// Loads a GGUF file onto `dev`, sizing the KV pool from what is left.
    pub fn load(path: &Path, dev: CudaDevice, options: CudaLoadOptions) -> Result<CudaModel, CudaError> {
        let io = |e: std::io::Error| CudaError::Model(format!("{}: {e}", path.display()));
        let mut file = File::open(path).map_err(io)?;
        let content = Content::read(&mut file).map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
        let config = ModelConfig::from_gguf(&content).map_err(model_err)?;
        let map = map_file(&file).map_err(model_err)?;
        let bytes: &[u8] = &map;
        let raw = |name: &str| read_raw(bytes, &content, name).map_err(model_err);
        let s = dev.stream().clone();
        let matrix = |name: &str| -> Result<DeviceMatrix, CudaError> {
            let t = raw(name)?;
            if !ops::supported(t.dtype) {
                let kinds: Vec<String> = DEVICE_TYPES.iter().map(|(t, _)| format!("{t:?}")).collect();
                return Err(CudaError::Model(format!(
                    "{name} is {:?}, which the CUDA kernels do not read (they read {})",
                    t.dtype,
                    kinds.join(", ")
                )));
            }
            Ok(DeviceMatrix {
                row_bytes: t.data.len() / t.rows,
                data: s.clone_htod(&t.data[..]).map_err(upload_err)?,
                dtype: t.dtype,
                rows: t.rows,
                cols: t.cols,
            })
        };
        let vector = |name: &str| -> Result<CudaSlice<f32>, CudaError> {
            let values = f32_values(&raw(name)?, name)?;
            s.clone_htod(&values).map_err(upload_err)
        };
        let (q, kv) = (config.q_dim(), config.kv_dim());
        if config.head_dim > 256 {
            return Err(CudaError::Model(format!(
                "attention heads {} wide; the CUDA attention kernel takes at most 256",
                config.head_dim
            )));
        }
        let max_context =
            options.max_context.unwrap_or(config.n_ctx_train.min(8192)).clamp(1, config.n_ctx_train.max(1));
        let kv_shape =
            KvShape { layers: config.n_layer, kv_dim: kv, block_tokens: options.block_tokens, elem_bytes: 2 };
        // Plan before uploading anything, so a model that does not fit is
        // refused with the figures rather than by a failed allocation.
        let weight_bytes: u64 = (content.tensor_infos.values())
            .map(|t| (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64)
            .sum();
        let head = content.tensor_infos.get("output.weight").or_else(|| content.tensor_infos.get("token_embd.weight"));
        let vocab_rows = head.map_or(config.vocab_size, |t| t.shape.dims()[0]);
        let memory = dev.memory()?;
        let workspace = Self::workspace_bytes(&config, options.max_step_tokens, vocab_rows);
        let blocks_per_seq = max_context.div_ceil(options.block_tokens);
        let request = MemoryRequest {
            weights: weight_bytes,
            workspace,
            kv: kv_shape,
            min_kv_blocks: blocks_per_seq,
            fraction: options.memory_fraction,
        };
        let mut plan = budget::plan(memory, &request)?;
        plan.kv_blocks = plan.kv_blocks.min(blocks_per_seq * options.max_sequences.max(1));
        let embedding = matrix("token_embd.weight")?;
        let shape_err = |name: &str, m: &DeviceMatrix, want: String| {
            CudaError::Model(format!("{name}: shape {}x{}, expected {want}", m.rows, m.cols))
        };
        let d = config.n_embd;
        if embedding.cols != d || embedding.rows < config.vocab_size {
            return Err(shape_err("token_embd.weight", &embedding, format!("{}x{d}", config.vocab_size)));
        }
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Some(matrix("output.weight")?),
            false => None,
        };
        if let Some(m) = &output
            && (m.cols != d || m.rows < config.vocab_size)
        {
            return Err(shape_err("output.weight", m, format!("at least {}x{d}", config.vocab_size)));
        }
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let (qkv, gate_up) = match config.arch.fused_projections() {
                true => (vec![matrix(&n("attn_qkv"))?], vec![matrix(&n("ffn_up"))?]),
                false => (
                    vec![matrix(&n("attn_q"))?, matrix(&n("attn_k"))?, matrix(&n("attn_v"))?],
                    vec![matrix(&n("ffn_gate"))?, matrix(&n("ffn_up"))?],
                ),
            };
            let qkv_bias = match config.arch.qkv_bias() {
                false => None,
                true => {
                    let mut bias = Vec::with_capacity(q + 2 * kv);
                    for part in ["attn_q", "attn_k", "attn_v"] {
                        let name = format!("blk.{i}.{part}.bias");
                        bias.extend(f32_values(&raw(&name)?, &name)?);
                    }
                    Some(s.clone_htod(&bias).map_err(upload_err)?)
                }
            };
            let qk_norm = match config.arch.qk_norm() {
                false => None,
                true => Some((vector(&n("attn_q_norm"))?, vector(&n("attn_k_norm"))?)),
            };
            let post_norms = match config.arch.gemma() {
                false => None,
                true => Some((vector(&n("post_attention_norm"))?, vector(&n("post_ffw_norm"))?)),
            };
            let (wo, down) = (matrix(&n("attn_output"))?, matrix(&n("ffn_down"))?);
            let rows: usize = qkv.iter().map(|m| m.rows).sum();
            let gu_rows: usize = gate_up.iter().map(|m| m.rows).sum();
            let cols_ok = qkv.iter().chain(&gate_up).all(|m| m.cols == d);
            if rows != q + 2 * kv || gu_rows != 2 * config.n_ff || !cols_ok {
                return Err(CudaError::Model(format!("layer {i}: Q/K/V or gate/up shapes disagree with the metadata")));
            }
            if (wo.rows, wo.cols) != (d, q) || (down.rows, down.cols) != (d, config.n_ff) {
                return Err(CudaError::Model(format!(
                    "layer {i}: output or down projection shapes disagree with the metadata"
                )));
            }
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm"))?,
                ffn_norm: vector(&n("ffn_norm"))?,
                qkv,
                qkv_bias,
                qk_norm,
                post_norms,
                wo,
                gate_up,
                down,
            });
        }
        let factors = match content.tensor_infos.contains_key("rope_freqs.weight") {
            true => Some(f32_values(&raw("rope_freqs.weight")?, "rope_freqs.weight")?),
            false => None,
        };
        let cfg = &config;
        let inv = inv_freq(cfg.rope_dim, cfg.rope_freq_base, cfg.rope_linear_scale, factors.as_deref());
        let local =
            cfg.sliding_window.as_ref().and_then(|w| w.rope_freq_base).map(|b| inv_freq(cfg.rope_dim, b, 1.0, None));

        let pool_elems = plan.kv_blocks * options.block_tokens * kv;
        let alloc = || s.alloc_zeros::<u16>(pool_elems).map_err(|e| CudaError::OutOfMemory(format!("KV pool: {e}")));
        let kv_pools = (0..config.n_layer).map(|_| Ok((alloc()?, alloc()?))).collect::<Result<Vec<_>, CudaError>>()?;
        tracing::info!(
            weights_mib = plan.weights >> 20,
            kv_blocks = plan.kv_blocks,
            kv_mib = plan.kv_bytes() >> 20,
            "model placed on the device"
        );
        Ok(CudaModel {
            kernels: Kernels::load(&dev)?,
            output_norm: vector("output_norm.weight")?,
            inv_freq: s.clone_htod(&inv).map_err(upload_err)?,
            inv_freq_local: local.map(|f| s.clone_htod(&f)).transpose().map_err(upload_err)?,
            pool: BlockPool::new(plan.kv_blocks, options.block_tokens),
            lens: HashMap::new(),
            dev,
            config,
            max_context,
            embedding,
            output,
            layers,
            kv_pools,
            plan,
            options,
        })
    }

    /// Scratch a step of `tokens` rows needs at most (f32 activations and
    /// the logits of every row), rounded up for the allocator.
    fn workspace_bytes(cfg: &ModelConfig, tokens: usize, vocab_rows: usize) -> u64 {
        let per_row = 3 * cfg.n_embd + cfg.q_dim() + 2 * cfg.kv_dim() + cfg.q_dim() + 3 * cfg.n_ff + vocab_rows;
        ((tokens * per_row * 4) as u64 + (64 << 20)).next_multiple_of(2 << 20)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub fn memory_plan(&self) -> MemoryPlan {
        self.plan
    }

    pub fn kv_blocks(&self) -> crate::BlockStats {
        self.pool.stats()
    }

    /// Whether a new sequence of `tokens` positions would get its KV blocks now.
    pub fn can_admit(&self, tokens: usize) -> bool {
        self.pool.can_admit(tokens)
    }

    /// Positions `seq` holds (0 for a sequence never run or released).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.lens.get(&seq).copied().unwrap_or(0)
    }

    /// Starts sequence `to` as a copy of `from`'s first `len` positions (a
    /// prompt prefix reused by a later request).
    pub fn copy_prefix(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), CudaError> {
        if from == to {
            return Ok(());
        }
        let len = len.min(self.seq_len(from));
        self.release(to);
        if len == 0 {
            return Ok(());
        }
        let n = self.pool.blocks_for(len);
        let src: Vec<i32> = self.pool.table(from)[..n].iter().map(|&b| b as i32).collect();
        let dst: Vec<i32> = self.pool.reserve(to, len)?.iter().map(|&b| b as i32).collect();
        let s = self.dev.stream().clone();
        let upload = |v: &[i32]| s.clone_htod(v).map_err(|e| CudaError::Driver(format!("block list: {e}")));
        let (src_d, dst_d) = (upload(&src)?, upload(&dst)?);
        let block_elems = self.options.block_tokens * self.config.kv_dim();
        for (k_pool, v_pool) in &mut self.kv_pools {
            self.kernels.kv_copy_blocks(&s, k_pool, &src_d, &dst_d, n, block_elems)?;
            self.kernels.kv_copy_blocks(&s, v_pool, &src_d, &dst_d, n, block_elems)?;
        }
        self.lens.insert(to, len);
        Ok(())
    }

    /// Keeps `seq`'s first `len` positions only.
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let kept = self.seq_len(seq).min(len);
        self.pool.truncate(seq, kept);
        if let Some(l) = self.lens.get_mut(&seq) {
            *l = kept;
        }
    }

    /// KV blocks `seq` holds.
    pub fn seq_blocks(&self, seq: SeqId) -> usize {
        self.pool.table(seq).len()
    }

    /// Frees a finished sequence's KV blocks.
    pub fn release(&mut self, seq: SeqId) {
        self.pool.release(seq);
        self.lens.remove(&seq);
    }
}
