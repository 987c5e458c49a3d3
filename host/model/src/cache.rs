//! Per-sequence key/value cache, in f16 (default) or f32.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::attention::{self, AttnScratch, HeadAttention, Seen};

/// Positions per key block: attention scores 16 positions with one vector
/// multiply-add per head dimension, with no horizontal sums.
pub(crate) const KEY_BLOCK: usize = 16;

/// How keys and values are stored. f16 halves the memory (and the bytes
/// attention reads per step) at a logit difference a test bounds; f32 is
/// exact, for reference checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            other => Err(format!("unknown KV cache type `{other}` (f16 or f32)")),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        })
    }
}

/// An element of the cache: what attention widens to f32 as it reads.
pub(crate) trait KvElem: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// f16: the SIMD kernels convert on load (`vcvtph2ps`).
    const HALF: bool;
    fn from_f32(x: f32) -> Self;
    /// `src` as f32: itself for f32, widened into `scratch` for f16.
    fn widen<'a>(src: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32];
}

impl KvElem for f32 {
    const HALF: bool = false;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn widen<'a>(src: &'a [f32], _: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
}

impl KvElem for f16 {
    const HALF: bool = true;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn widen<'a>(src: &'a [f16], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        scratch.resize(src.len(), 0.0);
        src.convert_to_f32_slice(scratch);
        scratch
    }
}

/// One layer's keys and values. Values are `len x kv_dim`, row-major. Keys
/// are stored transposed in blocks of [`KEY_BLOCK`] positions: element
/// `(pos, c)` lives at `(pos / KEY_BLOCK) * kv_dim * KEY_BLOCK + c * KEY_BLOCK + pos % KEY_BLOCK`.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv<T> {
    pub keys: Vec<T>,
    pub values: Vec<T>,
}

impl<T: KvElem> LayerKv<T> {
    fn append(&mut self, kv_dim: usize, pos: usize, key: &[f32], value: &[f32]) {
        let block = (pos / KEY_BLOCK) * kv_dim * KEY_BLOCK;
        if self.keys.len() < block + kv_dim * KEY_BLOCK {
            self.keys.resize(block + kv_dim * KEY_BLOCK, T::default());
        }
        let lane = pos % KEY_BLOCK;
        for (c, k) in key.iter().enumerate() {
            self.keys[block + c * KEY_BLOCK + lane] = T::from_f32(*k);
        }
        debug_assert_eq!(self.values.len(), pos * kv_dim, "positions are appended in order");
        self.values.extend(value.iter().map(|v| T::from_f32(*v)));
    }

    fn truncate(&mut self, kv_dim: usize, len: usize) {
        self.keys.truncate(key_elems(kv_dim, len));
        self.values.truncate(len * kv_dim);
    }

    fn prefix(&self, kv_dim: usize, len: usize) -> Self {
        LayerKv { keys: self.keys[..key_elems(kv_dim, len)].to_vec(), values: self.values[..len * kv_dim].to_vec() }
    }

    fn reserve(&mut self, kv_dim: usize, positions: usize) {
        let (keys, values) = (key_elems(kv_dim, positions), positions * kv_dim);
        self.keys.reserve_exact(keys.saturating_sub(self.keys.len()));
        self.values.reserve_exact(values.saturating_sub(self.values.len()));
    }

    fn shrink(&mut self) {
        self.keys.shrink_to_fit();
        self.values.shrink_to_fit();
    }

    fn capacity_bytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * size_of::<T>()
    }
}

/// Key elements held for `len` positions (whole blocks).
fn key_elems(kv_dim: usize, len: usize) -> usize {
    len.div_ceil(KEY_BLOCK) * kv_dim * KEY_BLOCK
}

#[derive(Debug, Clone)]
pub(crate) enum Layers {
    F16(Vec<LayerKv<f16>>),
    F32(Vec<LayerKv<f32>>),
}

/// Runs `$body` with `$layers` bound to the cache's layers, whatever their type.
macro_rules! each_layer {
    ($self:expr, |$layers:ident| $body:expr) => {
        match $self {
            Layers::F16($layers) => $body,
            Layers::F32($layers) => $body,
        }
    };
}

/// Keys and values of every layer for one sequence, grown as it advances
/// (memory follows the tokens actually held, not the context maximum), or
/// reserved up front with [`KvCache::reserve`] when the caller knows how
/// far the sequence may go.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Layers,
    pub(crate) len: usize,
    /// Width of a key or value row.
    kv_dim: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, kv_dim: usize, kv_type: KvType) -> Self {
        let layers = match kv_type {
            KvType::F16 => Layers::F16(vec![LayerKv { keys: Vec::new(), values: Vec::new() }; n_layer]),
            KvType::F32 => Layers::F32(vec![LayerKv { keys: Vec::new(), values: Vec::new() }; n_layer]),
        };
        KvCache { layers, len: 0, kv_dim }
    }

    /// Bytes a cache of `n_layer` layers holding `positions` positions takes
    /// once reserved: what a memory budget charges a sequence.
    pub fn bytes_for(n_layer: usize, kv_dim: usize, kv_type: KvType, positions: usize) -> usize {
        n_layer * (key_elems(kv_dim, positions) + positions * kv_dim) * kv_type.bytes()
    }

    #[cfg(test)]
    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn kv_type(&self) -> KvType {
        match self.layers {
            Layers::F16(_) => KvType::F16,
            Layers::F32(_) => KvType::F32,
        }
    }

    /// Stores layer `layer`'s key and value rows for position `pos`.
    pub(crate) fn append(&mut self, layer: usize, pos: usize, key: &[f32], value: &[f32]) {
        let kv_dim = self.kv_dim;
        debug_assert_eq!(key.len(), kv_dim);
        each_layer!(&mut self.layers, |layers| layers[layer].append(kv_dim, pos, key, value))
    }

    /// Softmax attention of one query head over positions `0..len` of layer
    /// `layer`, reading the KV head that starts at column `head_offset`.
    pub(crate) fn attend(
        &self,
        layer: usize,
        q: &[f32],
        head_offset: usize,
        seen: Seen,
        scratch: &mut AttnScratch,
        out: &mut [f32],
    ) {
        let kv_dim = self.kv_dim;
        each_layer!(&self.layers, |layers| {
            let LayerKv { keys, values } = &layers[layer];
            attention::attend(HeadAttention { q, keys, values, kv_dim, head_offset, seen }, scratch, out)
        })
    }

    /// Drops rows appended past `len` (a step that failed half-way).
    pub(crate) fn rollback(&mut self) {
        let (len, kv_dim) = (self.len, self.kv_dim);
        each_layer!(&mut self.layers, |layers| layers.iter_mut().for_each(|l| l.truncate(kv_dim, len)))
    }

    /// Sets aside memory for `positions` positions in all, so the sequence
    /// grows to that length without reallocating (and without the slack of
    /// doubling growth: what [`KvCache::bytes_for`] charges is what it holds).
    pub fn reserve(&mut self, positions: usize) {
        let kv_dim = self.kv_dim;
        each_layer!(&mut self.layers, |layers| layers.iter_mut().for_each(|l| l.reserve(kv_dim, positions)))
    }

    /// A new cache holding this one's first `len` positions (a shared prompt
    /// prefix), copying only what it keeps.
    pub fn prefix(&self, len: usize) -> KvCache {
        let len = len.min(self.len);
        let kv_dim = self.kv_dim;
        let layers = match &self.layers {
            Layers::F16(layers) => Layers::F16(layers.iter().map(|l| l.prefix(kv_dim, len)).collect()),
            Layers::F32(layers) => Layers::F32(layers.iter().map(|l| l.prefix(kv_dim, len)).collect()),
        };
        KvCache { layers, len, kv_dim }
    }

    /// Keeps the first `len` positions only, and gives back the memory of the
    /// rest (a cache kept for reuse must not hold its generation's growth).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.rollback();
        each_layer!(&mut self.layers, |layers| layers.iter_mut().for_each(LayerKv::shrink))
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
        each_layer!(&self.layers, |layers| layers.iter().map(LayerKv::capacity_bytes).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_cache_holds_exactly_what_bytes_for_charges_and_grows_into_it() {
        for kv_type in [KvType::F16, KvType::F32] {
            let (n_layer, kv_dim, positions) = (3, 8, 37);
            let mut c = KvCache::new(n_layer, kv_dim, kv_type);
            c.reserve(positions);
            let want = KvCache::bytes_for(n_layer, kv_dim, kv_type, positions);
            assert_eq!(c.size_in_bytes(), want, "{kv_type}");
            for pos in 0..positions {
                for layer in 0..n_layer {
                    c.append(layer, pos, &[pos as f32; 8], &[1.0; 8]);
                }
                c.len += 1;
            }
            assert_eq!(c.size_in_bytes(), want, "{kv_type}: growing within the reservation reallocated");
        }
        assert_eq!(KvCache::bytes_for(1, 8, KvType::F16, 1), (16 * 8 + 8) * 2);
    }

    #[test]
    fn f16_storage_rounds_to_f16_and_a_prefix_copies_only_what_it_keeps() {
        let mut c = KvCache::new(1, 4, KvType::F16);
        for pos in 0..20 {
            c.append(0, pos, &[0.1 * pos as f32; 4], &[1.0 / 3.0; 4]);
            c.len += 1;
        }
        let Layers::F16(layers) = &c.layers else { panic!("f16 layers") };
        assert_eq!(layers[0].values[0], f16::from_f32(1.0 / 3.0));
        let p = c.prefix(5);
        assert_eq!((p.len(), p.kv_type()), (5, KvType::F16));
        assert_eq!(p.size_in_bytes(), KvCache::bytes_for(1, 4, KvType::F16, 5));
    }
}
