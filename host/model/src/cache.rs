//! Per-sequence key/value cache.

/// Keys and values of every layer for one sequence, grown as it advances
/// (memory follows the tokens actually held, not the context maximum).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: `len x (n_head_kv * head_dim)` keys, then values.
    pub(crate) layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache { layers: vec![(Vec::new(), Vec::new()); n_layer], len: 0 }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by keys and values.
    pub fn size_in_bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.len() + v.len()) * 4).sum()
    }
}
