//! Per-sequence key/value cache.

/// Positions per key block: attention scores 16 positions with one vector
/// multiply-add per head dimension, with no horizontal sums.
pub(crate) const KEY_BLOCK: usize = 16;

/// Keys and values of every layer for one sequence, grown as it advances
/// (memory follows the tokens actually held, not the context maximum).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: keys, then values. Values are `len x kv_dim`, row-major.
    /// Keys are stored transposed in blocks of [`KEY_BLOCK`] positions: element
    /// `(pos, c)` lives at `(pos / KEY_BLOCK) * kv_dim * KEY_BLOCK + c * KEY_BLOCK + pos % KEY_BLOCK`.
    pub(crate) layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub(crate) len: usize,
    /// Width of a key or value row (set by the first append).
    kv_dim: usize,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache { layers: vec![(Vec::new(), Vec::new()); n_layer], len: 0, kv_dim: 0 }
    }

    /// Stores layer `layer`'s key and value rows for position `pos`.
    pub(crate) fn append(&mut self, layer: usize, pos: usize, key: &[f32], value: &[f32]) {
        let kv_dim = key.len();
        self.kv_dim = kv_dim;
        let (keys, values) = &mut self.layers[layer];
        let block = (pos / KEY_BLOCK) * kv_dim * KEY_BLOCK;
        if keys.len() < block + kv_dim * KEY_BLOCK {
            keys.resize(block + kv_dim * KEY_BLOCK, 0.0);
        }
        let lane = pos % KEY_BLOCK;
        for (c, k) in key.iter().enumerate() {
            keys[block + c * KEY_BLOCK + lane] = *k;
        }
        debug_assert_eq!(values.len(), pos * kv_dim, "positions are appended in order");
        values.extend_from_slice(value);
    }

    /// Drops rows appended past `len` (a step that failed half-way).
    pub(crate) fn rollback(&mut self) {
        let (len, kv_dim) = (self.len, self.kv_dim);
        for (keys, values) in &mut self.layers {
            keys.truncate(len.div_ceil(KEY_BLOCK) * kv_dim * KEY_BLOCK);
            values.truncate(len * kv_dim);
        }
    }

    /// A new cache holding this one's first `len` positions (a shared prompt
    /// prefix), copying only what it keeps.
    pub fn prefix(&self, len: usize) -> KvCache {
        let len = len.min(self.len);
        let kv_dim = self.kv_dim;
        let layers = self
            .layers
            .iter()
            .map(|(keys, values)| {
                (keys[..len.div_ceil(KEY_BLOCK) * kv_dim * KEY_BLOCK].to_vec(), values[..len * kv_dim].to_vec())
            })
            .collect();
        KvCache { layers, len, kv_dim }
    }

    /// Keeps the first `len` positions only, and gives back the memory of the
    /// rest (a cache kept for reuse must not hold its generation's growth).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.rollback();
        for (keys, values) in &mut self.layers {
            keys.shrink_to_fit();
            values.shrink_to_fit();
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory held for keys and values (allocated, not just used).
    pub fn size_in_bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.capacity() + v.capacity()) * size_of::<f32>()).sum()
    }
}
