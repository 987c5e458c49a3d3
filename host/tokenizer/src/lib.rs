//! Turns text into token ids and back for GGUF models whose vocabulary is byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`) or SentencePiece (`"llama"`), building the tokenizer purely
//! from GGUF metadata and streaming generated ids back out as text that never contains a
//! half-finished UTF-8 character.
//!
//! Byte-level BPE is delegated to the `tokenizers` crate, configured to match what llama.cpp does
//! for the model's `tokenizer.ggml.pre`; SentencePiece is llama.cpp's score-ordered merge loop
//! (`spm`). Decoding bypasses both: every token's exact output bytes are
//! precomputed once, so [`Tokenizer::decode`] and [`IncrementalDecoder`] agree byte for byte and
//! streaming costs O(1) per token.

#![forbid(unsafe_code)]

mod byte_level;
mod gguf;
mod pretok;
mod spm;
mod stream;
mod tokenizer;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod spm_tests;

pub use stream::IncrementalDecoder;
pub use tokenizer::Tokenizer;

/// Everything that can go wrong while building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata has no `{0}`")]
    MissingKey(&'static str),

    #[error("GGUF metadata `{key}` has an unexpected type or value: {detail}")]
    BadValue { key: &'static str, detail: String },

    #[error("tokenizer model `{0}` is not supported (byte-level BPE \"gpt2\" and SentencePiece \"llama\" are)")]
    UnsupportedModel(String),

    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownTokenId { id: u32, vocab_size: usize },

    #[error("tokenizers backend: {0}")]
    Backend(#[source] tokenizers::Error),
}
