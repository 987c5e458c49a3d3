//! The CUDA model behind `kiln-model`'s [`ModelBackend`], so the engine's
//! scheduler, sampling, prefix reuse and plugins drive it unchanged. Each
//! sequence's cache is a handle to its block table in the device's KV pool;
//! dropping the handle returns its blocks.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_model::{DeviceReport, ModelBackend, ModelConfig, ModelError, SeqCache, StepSeq};

use crate::blocks::SeqId;
use crate::model::{CudaLoadOptions, CudaModel, StepItem};
use crate::runtime::CudaDevice;
use crate::{CudaError, PtxCache};

type Shared = Arc<Mutex<CudaModel>>;

/// A poisoned lock means a step panicked; the pool's bookkeeping is still
/// whole (the engine fails that batch and drops its caches).
fn lock(model: &Shared) -> MutexGuard<'_, CudaModel> {
    model.lock().unwrap_or_else(|e| e.into_inner())
}

fn device_err(e: CudaError) -> ModelError {
    ModelError::Device(e.to_string())
}

/// A model on a CUDA device, as the engine drives it.
#[derive(Debug)]
pub struct CudaBackend {
    model: Shared,
    config: ModelConfig,
    max_context: usize,
    ordinal: usize,
    name: String,
    block_tokens: usize,
    block_bytes: u64,
    capacity: u64,
    next_seq: Arc<AtomicU64>,
}

impl CudaBackend {
    /// Opens device `ordinal` (kernels from `cache`) and loads `path` onto it.
    pub fn load(
        path: &Path,
        ordinal: usize,
        cache: &PtxCache,
        options: CudaLoadOptions,
    ) -> Result<CudaBackend, CudaError> {
        let dev = CudaDevice::open(ordinal, cache)?;
        let name = dev.info()?.name;
        let model = CudaModel::load(path, dev, options)?;
        let plan = model.memory_plan();
        Ok(CudaBackend {
            config: model.config().clone(),
            max_context: model.max_context(),
            ordinal,
            name,
            block_tokens: options.block_tokens,
            block_bytes: plan.kv_block_bytes,
            capacity: plan.kv_bytes(),
            next_seq: Arc::new(AtomicU64::new(1)),
            model: Arc::new(Mutex::new(model)),
        })
    }

    fn cache(&self) -> CudaSeqCache {
        CudaSeqCache {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            model: self.model.clone(),
            next_seq: self.next_seq.clone(),
            block_bytes: self.block_bytes,
        }
    }
}

/// A sequence's block table in the device's pool.
#[derive(Debug)]
struct CudaSeqCache {
    seq: SeqId,
    model: Shared,
    next_seq: Arc<AtomicU64>,
    block_bytes: u64,
}

impl SeqCache for CudaSeqCache {
    fn len(&self) -> usize {
        lock(&self.model).seq_len(self.seq)
    }
    /// Blocks are taken step by step from the pool; the engine's budget
    /// (capped to the pool) already set this sequence's share aside.
    fn reserve(&mut self, _positions: usize) {}
    fn prefix(&self, len: usize) -> Box<dyn SeqCache> {
        let copy = CudaSeqCache {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            model: self.model.clone(),
            next_seq: self.next_seq.clone(),
            block_bytes: self.block_bytes,
        };
        // A copy the pool cannot hold starts empty: the prompt then runs in full.
        if let Err(e) = lock(&self.model).copy_prefix(self.seq, copy.seq, len) {
            tracing::warn!(error = %e, "could not copy a cached prefix on the device; running the prompt in full");
        }
        Box::new(copy)
    }
    fn truncate(&mut self, len: usize) {
        lock(&self.model).truncate(self.seq, len)
    }
    fn size_in_bytes(&self) -> usize {
        (lock(&self.model).seq_blocks(self.seq) as u64 * self.block_bytes) as usize
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for CudaSeqCache {
    fn drop(&mut self) {
        lock(&self.model).release(self.seq);
    }
}

impl ModelBackend for CudaBackend {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn new_cache(&self) -> Box<dyn SeqCache> {
        Box::new(self.cache())
    }
    fn kv_cache_bytes(&self, positions: usize) -> usize {
        (positions.div_ceil(self.block_tokens) as u64 * self.block_bytes) as usize
    }
    fn kv_capacity_bytes(&self) -> Option<usize> {
        Some(self.capacity as usize)
    }
    fn forward(&self, items: &mut [StepSeq<'_>]) -> kiln_model::Result<Vec<Option<Vec<f32>>>> {
        let mut steps = Vec::with_capacity(items.len());
        for item in items.iter_mut() {
            let Some(cache) = item.cache.as_any_mut().downcast_mut::<CudaSeqCache>() else {
                return Err(ModelError::Unsupported("a cache made by another backend".into()));
            };
            steps.push(StepItem { seq: cache.seq, tokens: item.tokens, logits: item.logits });
        }
        lock(&self.model).forward(&steps).map_err(device_err)
    }
    fn device(&self) -> DeviceReport {
        let model = lock(&self.model);
        let memory = model.device().memory().ok();
        let blocks = model.kv_blocks();
        DeviceReport {
            device: format!("cuda:{}", self.ordinal),
            name: Some(self.name.clone()),
            memory_used: memory.map(|m| m.total - m.free),
            memory_total: memory.map(|m| m.total),
            kv_blocks_free: Some(blocks.free),
            kv_blocks_used: Some(blocks.used),
        }
    }
}
