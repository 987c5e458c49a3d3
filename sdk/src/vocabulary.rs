//! The model's vocabulary, for samplers: fetched from the host once per
//! plugin instance and kept, never per step.

use std::sync::Arc;

/// Every token's bytes (laid end to end, as the host sends them), and the
/// ids that end a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocabulary {
    bytes: Vec<u8>,
    /// Where each token's bytes end in `bytes`.
    ends: Vec<u32>,
    stop_ids: Vec<u32>,
}

impl Vocabulary {
    /// A vocabulary from each token's bytes (token `i` is `tokens[i]`) and
    /// the ids that end a generation; for native tests with
    /// [`testing::with_vocabulary`](crate::testing::with_vocabulary).
    pub fn new(tokens: Vec<Vec<u8>>, stop_ids: Vec<u32>) -> Self {
        let mut bytes = Vec::with_capacity(tokens.iter().map(Vec::len).sum());
        let ends = tokens
            .iter()
            .map(|t| {
                bytes.extend_from_slice(t);
                bytes.len() as u32
            })
            .collect();
        Vocabulary { bytes, ends, stop_ids }
    }

    /// From the host's flat table; ends that run backwards or past the bytes
    /// make the tokens involved empty rather than panicking.
    pub fn from_table(bytes: Vec<u8>, ends: Vec<u32>, stop_ids: Vec<u32>) -> Self {
        Vocabulary { bytes, ends, stop_ids }
    }

    /// Valid ids are `0..size()`.
    pub fn size(&self) -> u32 {
        self.ends.len() as u32
    }

    /// A token's bytes (empty for an id outside the vocabulary).
    pub fn token(&self, id: u32) -> &[u8] {
        let Some(&end) = self.ends.get(id as usize) else { return &[] };
        let start = if id == 0 { 0 } else { self.ends[id as usize - 1] };
        self.bytes.get(start as usize..end as usize).unwrap_or(&[])
    }

    /// Every token's bytes, in id order.
    pub fn tokens(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.size()).map(|id| self.token(id))
    }

    /// End-of-sequence and end-of-turn ids.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether `id` is one of the [`stop_ids`](Self::stop_ids).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }
}

/// The model's vocabulary: from the host inside a component, from
/// [`testing::with_vocabulary`](crate::testing::with_vocabulary) in native tests.
pub fn vocabulary() -> Arc<Vocabulary> {
    imp::vocabulary()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::sync::{Arc, OnceLock};

    use super::Vocabulary;
    use crate::sampler::bindings::kiln::plugin::vocabulary as host;

    pub fn vocabulary() -> Arc<Vocabulary> {
        static VOCABULARY: OnceLock<Arc<Vocabulary>> = OnceLock::new();
        VOCABULARY
            .get_or_init(|| {
                let table = host::tokens();
                Arc::new(Vocabulary::from_table(table.bytes, table.ends, host::stop_ids()))
            })
            .clone()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::sync::Arc;

    use super::Vocabulary;

    thread_local! {
        pub static INSTALLED: RefCell<Option<Arc<Vocabulary>>> = const { RefCell::new(None) };
    }

    pub fn vocabulary() -> Arc<Vocabulary> {
        INSTALLED
            .with(|v| v.borrow().clone())
            .expect("no vocabulary: native tests of a sampler run inside kiln_sdk::testing::with_vocabulary(...)")
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use imp::INSTALLED;
