//! The model's vocabulary, for samplers: fetched from the host once per
//! plugin instance and kept, never per step.

use std::sync::Arc;

/// Every token's bytes, and the ids that end a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocabulary {
    tokens: Vec<Vec<u8>>,
    stop_ids: Vec<u32>,
}

impl Vocabulary {
    pub fn new(tokens: Vec<Vec<u8>>, stop_ids: Vec<u32>) -> Self {
        Vocabulary { tokens, stop_ids }
    }

    /// Valid ids are `0..size()`.
    pub fn size(&self) -> u32 {
        self.tokens.len() as u32
    }

    /// A token's bytes (empty for an id outside the vocabulary).
    pub fn token(&self, id: u32) -> &[u8] {
        self.tokens.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Every token's bytes, indexed by id.
    pub fn tokens(&self) -> &[Vec<u8>] {
        &self.tokens
    }

    /// End-of-sequence and end-of-turn ids.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

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
        VOCABULARY.get_or_init(|| Arc::new(Vocabulary::new(host::tokens(), host::stop_ids()))).clone()
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
