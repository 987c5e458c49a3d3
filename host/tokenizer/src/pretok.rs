//! Chooses the pre-tokenizer (how text is cut into words before BPE) from `tokenizer.ggml.pre`.
//!
//! The names and regexes follow llama.cpp's `llama-vocab.cpp`, expressed as the equivalent
//! Hugging Face pre-tokenizer pipelines so ids match both references.

use tokenizers::SplitDelimiterBehavior;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

use crate::TokenizerError;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerKind {
    /// GPT-2's own regex (what the `ByteLevel` pre-tokenizer applies by itself).
    Gpt2,
    /// Every digit on its own, then the GPT-2 regex (SmolLM, StarCoder, Command-R, ...).
    DigitsThenGpt2,
    /// Llama 3: digits in groups of up to three, newlines kept apart from words.
    Llama3,
    /// Qwen 2: like Llama 3 but digits one at a time.
    Qwen2,
}

impl PreTokenizerKind {
    /// Maps a `tokenizer.ggml.pre` value; `None` means the name is not recognised.
    pub fn from_name(name: &str) -> Option<Self> {
        let kind = match name {
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code"
            | "gigachat" | "roberta-bpe" => Self::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
                Self::DigitsThenGpt2
            }
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => Self::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "megrez" => Self::Qwen2,
            _ => return None,
        };
        Some(kind)
    }

    /// Llama 3's tokenizer looks whole words up in the vocab before merging; llama.cpp and HF
    /// both do this, and skipping it changes ids for words whose merge path is incomplete.
    pub fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    pub fn build(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        // trim_offsets only affects offsets, which are never reported.
        let byte_level_with_regex = ByteLevel::new(false, true, true);
        let byte_level_only = ByteLevel::new(false, true, false);
        let pt = match self {
            Self::Gpt2 => byte_level_with_regex.into(),
            Self::DigitsThenGpt2 => Sequence::new(vec![Digits::new(true).into(), byte_level_with_regex.into()]).into(),
            Self::Llama3 => Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level_only.into()]).into(),
            Self::Qwen2 => Sequence::new(vec![split(QWEN2_REGEX)?, byte_level_only.into()]).into(),
        };
        Ok(pt)
    }
}

fn split(regex: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let split = Split::new(SplitPattern::Regex(regex.to_owned()), SplitDelimiterBehavior::Isolated, false)
        .map_err(TokenizerError::Backend)?;
    Ok(split.into())
}

#[cfg(test)]
mod tests {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    use super::*;

    fn words(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        kind.build().unwrap().pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(w, _, _)| w.to_owned()).collect()
    }

    #[test]
    fn digit_handling_differs_per_kind() {
        let text = "x 12345";
        assert_eq!(words(PreTokenizerKind::Gpt2, text), ["x", "Ġ12345"]);
        assert_eq!(words(PreTokenizerKind::DigitsThenGpt2, text), ["x", "Ġ", "1", "2", "3", "4", "5"]);
        assert_eq!(words(PreTokenizerKind::Llama3, text), ["x", "Ġ", "123", "45"]);
        assert_eq!(words(PreTokenizerKind::Qwen2, text), ["x", "Ġ", "1", "2", "3", "4", "5"]);
    }

    #[test]
    fn whitespace_runs_leave_one_space_for_the_next_word() {
        let text = "a   b\n\nc";
        // A run followed by a word gives up its last character, even when that is a newline.
        assert_eq!(words(PreTokenizerKind::Gpt2, text), ["a", "ĠĠ", "Ġb", "Ċ", "Ċ", "c"]);
        assert_eq!(words(PreTokenizerKind::Llama3, "a\n\nb's"), ["a", "ĊĊ", "b", "'s"]);
    }

    #[test]
    fn names() {
        assert_eq!(PreTokenizerKind::from_name("smollm"), Some(PreTokenizerKind::DigitsThenGpt2));
        assert_eq!(PreTokenizerKind::from_name("llama-bpe"), Some(PreTokenizerKind::Llama3));
        assert_eq!(PreTokenizerKind::from_name("no-such-model"), None);
    }
}
