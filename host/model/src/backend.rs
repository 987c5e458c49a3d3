//! What the engine needs of a model, whichever device runs it: a batched
//! forward step over sequences that each own a KV cache, and the bookkeeping
//! of those caches (length, prefix copies for reuse, memory). The CPU
//! [`Model`] implements it here; `kiln-cuda` implements it for the GPU. The
//! engine's scheduler, sampling, prefix reuse and the plugin pipeline are
//! the same code for both.

use std::any::Any;
use std::fmt::Debug;

use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::model::{Model, SeqBatchItem};
use crate::{ModelError, Result};

/// One sequence's keys and values on the backend's device.
pub trait SeqCache: Send + Debug {
    /// Positions held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sets memory aside for `positions` positions in all, where the device
    /// allocates per sequence (the CPU); a paged device allocates per step.
    fn reserve(&mut self, positions: usize);
    /// A new cache holding this one's first `len` positions.
    fn prefix(&self, len: usize) -> Box<dyn SeqCache>;
    /// Keeps the first `len` positions only, giving back the memory of the rest.
    fn truncate(&mut self, len: usize);
    /// Memory held for keys and values.
    fn size_in_bytes(&self) -> usize;
    /// For the backend that made it, to reach its own type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// One sequence's share of a step.
#[derive(Debug)]
pub struct StepSeq<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut dyn SeqCache,
    /// Whether to return logits for the last of `tokens`.
    pub logits: bool,
}

/// Where a backend runs, for `/health` and the logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceReport {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU's name, on a GPU.
    pub name: Option<String>,
    /// Device memory (bytes) in use and in all, on a GPU.
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    /// KV blocks free and in use, on a paged device.
    pub kv_blocks_free: Option<usize>,
    pub kv_blocks_used: Option<usize>,
}

/// A model on a device, as the engine drives it.
pub trait ModelBackend: Send + Sync + Debug {
    fn config(&self) -> &ModelConfig;
    fn max_context(&self) -> usize;
    fn new_cache(&self) -> Box<dyn SeqCache>;
    /// Bytes a sequence of `positions` positions holds at most: what the
    /// engine's KV budget charges it.
    fn kv_cache_bytes(&self, positions: usize) -> usize;
    /// The KV memory the device itself bounds (a GPU's block pool); `None`
    /// where the engine's configured budget is the only bound.
    fn kv_capacity_bytes(&self) -> Option<usize> {
        None
    }
    /// Runs one step; returns, per item, its last token's logits when asked.
    fn forward(&self, items: &mut [StepSeq<'_>]) -> Result<Vec<Option<Vec<f32>>>>;
    fn device(&self) -> DeviceReport;
}

impl SeqCache for KvCache {
    fn len(&self) -> usize {
        KvCache::len(self)
    }
    fn reserve(&mut self, positions: usize) {
        KvCache::reserve(self, positions)
    }
    fn prefix(&self, len: usize) -> Box<dyn SeqCache> {
        Box::new(KvCache::prefix(self, len))
    }
    fn truncate(&mut self, len: usize) {
        KvCache::truncate(self, len)
    }
    fn size_in_bytes(&self) -> usize {
        KvCache::size_in_bytes(self)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl ModelBackend for Model {
    fn config(&self) -> &ModelConfig {
        Model::config(self)
    }
    fn max_context(&self) -> usize {
        Model::max_context(self)
    }
    fn new_cache(&self) -> Box<dyn SeqCache> {
        Box::new(Model::new_cache(self))
    }
    fn kv_cache_bytes(&self, positions: usize) -> usize {
        Model::kv_cache_bytes(self, positions)
    }
    fn forward(&self, items: &mut [StepSeq<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let mut batch = Vec::with_capacity(items.len());
        for item in items.iter_mut() {
            let Some(cache) = item.cache.as_any_mut().downcast_mut::<KvCache>() else {
                return Err(ModelError::Unsupported("a cache made by another backend".into()));
            };
            batch.push(SeqBatchItem { tokens: item.tokens, cache, logits: item.logits });
        }
        Model::forward(self, &mut batch)
    }
    fn device(&self) -> DeviceReport {
        DeviceReport { device: "cpu".into(), ..DeviceReport::default() }
    }
}
