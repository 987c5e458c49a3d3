use std::fmt;

use candle_core::quantized::gguf_file::Content;
use tokenizers::AddedToken;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};

use crate::TokenizerError;
use crate::byte_level;
use crate::gguf::{GgufVocab, SpecialIds, TokenKind, VocabModel};
use crate::pretok::PreTokenizerKind;
use crate::spm::{self, Spm};

/// Control-token texts that end a turn in common chat formats; generation stops on any of them
/// (when the vocab marks them as control tokens), not just on `eos`, because chat models often
/// emit the turn terminator rather than the document terminator.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "<EOT>",
];

/// What turns text into ids, by the vocabulary's model.
enum Encoder {
    ByteLevelBpe {
        /// Splits control tokens such as `<|im_start|>` out of the text before BPE.
        with_special: Box<tokenizers::Tokenizer>,
        /// The same tokenizer with control-token matching switched off. Kept as a second
        /// instance because the switch is a mutable setting and `encode` works through `&self`.
        plain: Box<tokenizers::Tokenizer>,
    },
    SentencePiece(Box<Spm>),
}

/// A tokenizer reconstructed from GGUF metadata: byte-level BPE or SentencePiece.
pub struct Tokenizer {
    encoder: Encoder,
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Every token's output bytes, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    ids: SpecialIds,
    add_bos: bool,
    add_eos: bool,
    stop_ids: Vec<u32>,
    pre_fallback: Option<String>,
    chat_template: Option<String>,
    /// The texts of the control tokens, longest first.
    control_texts: Vec<String>,
}

impl Tokenizer {
    /// Build from GGUF metadata.
    ///
    /// `tokenizer.ggml.model = "gpt2"` (byte-level BPE) needs `tokens` and `merges`;
    /// `"llama"` (SentencePiece) needs `tokens` and `scores`. `token_type` 3
    /// (control) and 2 (unknown) become special added tokens; 4 (user-defined) become ordinary
    /// added tokens, which llama.cpp matches in text and prints even when special tokens are off.
    ///
    /// An unrecognised or missing `tokenizer.ggml.pre` does not fail: plain GPT-2 splitting is
    /// used and the name is reported by [`Tokenizer::pre_tokenizer_fallback`] so the caller can
    /// warn, since most byte-level models tokenize close to GPT-2 and refusing to load would be
    /// worse than slightly different ids.
    pub fn from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        Self::from_vocab(GgufVocab::read(&content.metadata)?)
    }

    fn from_vocab(mut v: GgufVocab) -> Result<Self, TokenizerError> {
        let (encoder, pre_fallback) = match v.model {
            VocabModel::ByteLevelBpe => Self::byte_level_bpe(&mut v)?,
            VocabModel::SentencePiece => {
                let scores = std::mem::take(&mut v.scores);
                // llama.cpp lowercases the name and looks for either spelling.
                let name = v.model_name.as_deref().unwrap_or_default().to_lowercase();
                let phi3 = name.contains("phi-3") || name.contains("phi3");
                let spm = Spm::new(&v.tokens, &v.kinds, scores, v.add_space_prefix, phi3);
                (Encoder::SentencePiece(Box::new(spm)), None)
            }
        };
        let spm = v.model == VocabModel::SentencePiece;

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(v.tokens.len() + 1);
        offsets.push(0);
        for (text, kind) in v.tokens.iter().zip(&v.kinds) {
            match kind {
                TokenKind::Control | TokenKind::UserDefined => bytes.extend_from_slice(text.as_bytes()),
                TokenKind::Byte => match parse_byte_token(text) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend(byte_level::decode_token(text)),
                },
                TokenKind::Normal if spm => bytes.extend(spm::decode_token(text)),
                TokenKind::Normal => bytes.extend(byte_level::decode_token(text)),
            }
            offsets.push(bytes.len());
        }

        let stop_ids = stop_ids(&v);
        let mut control_texts: Vec<String> = (v.tokens.iter().zip(&v.kinds))
            .filter(|(text, kind)| **kind == TokenKind::Control && !text.is_empty())
            .map(|(text, _)| text.clone())
            .collect();
        // Longest first: where one control text contains another, the whole is found.
        control_texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
        Ok(Self {
            encoder,
            tokens: v.tokens,
            kinds: v.kinds,
            bytes,
            offsets,
            ids: v.ids,
            add_bos: v.add_bos,
            add_eos: v.add_eos,
            stop_ids,
            pre_fallback,
            chat_template: v.chat_template,
            control_texts,
        })
    }

    /// The `tokenizers` crate configured as llama.cpp tokenizes the model's `tokenizer.ggml.pre`.
    fn byte_level_bpe(v: &mut GgufVocab) -> Result<(Encoder, Option<String>), TokenizerError> {
        let pre_name = v.pre.as_deref().unwrap_or("default");
        let (pre_kind, pre_fallback) = match PreTokenizerKind::from_name(pre_name) {
            Some(kind) => (kind, None),
            None => (PreTokenizerKind::Gpt2, Some(pre_name.to_owned())),
        };

        // Like llama.cpp's token_to_id map, a duplicated string resolves to its last id.
        let vocab: Vocab = v.tokens.iter().zip(0u32..).map(|(t, i)| (t.clone(), i)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, std::mem::take(&mut v.merges))
            .ignore_merges(pre_kind.ignore_merges())
            .build()
            .map_err(TokenizerError::Backend)?;

        let mut with_special = tokenizers::Tokenizer::new(bpe);
        with_special.with_pre_tokenizer(Some(pre_kind.build()?));
        with_special.with_decoder(Some(ByteLevel::default()));

        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        for (text, kind) in v.tokens.iter().zip(&v.kinds) {
            // An empty pattern would match between every pair of characters.
            if text.is_empty() {
                continue;
            }
            match kind {
                TokenKind::Control => special.push(AddedToken::from(text.clone(), true)),
                TokenKind::UserDefined => user_defined.push(AddedToken::from(text.clone(), false).normalized(false)),
                TokenKind::Normal | TokenKind::Byte => {}
            }
        }
        with_special.add_special_tokens(&special);
        with_special.add_tokens(&user_defined);

        let mut plain = with_special.clone();
        plain.set_encode_special_tokens(true);
        Ok((Encoder::ByteLevelBpe { with_special: Box::new(with_special), plain: Box::new(plain) }, pre_fallback))
    }

    /// Encode text made of parts, each with its own `parse_special` (see
    /// [`Tokenizer::encode`]): a chat prompt's markup with control tokens,
    /// the content clients wrote as text. BOS/EOS as for one text.
    pub fn encode_parts(&self, parts: &[(&str, bool)]) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        ids.extend(self.ids.bos.filter(|_| self.add_bos));
        let parts: Vec<(&str, bool)> = parts.iter().copied().filter(|(text, _)| !text.is_empty()).collect();
        match &self.encoder {
            Encoder::ByteLevelBpe { with_special, plain } => {
                for (text, parse_special) in parts {
                    let inner = if parse_special { with_special } else { plain };
                    ids.extend_from_slice(inner.encode_fast(text, false).map_err(TokenizerError::Backend)?.get_ids());
                }
            }
            Encoder::SentencePiece(spm) => spm.encode(&parts, &mut ids),
        }
        ids.extend(self.ids.eos.filter(|_| self.add_eos));
        Ok(ids)
    }

    /// The texts of the control tokens (`<|im_start|>`...), longest first:
    /// what [`Tokenizer::encode`] with `parse_special` turns into their ids.
    pub fn control_texts(&self) -> &[String] {
        &self.control_texts
    }

    /// Encode text. With `parse_special`, control-token strings in the text (e.g.
    /// `<|im_start|>`) become their single ids, as chat prompts need; without it they are
    /// tokenized as ordinary text, which is what untrusted user content should get. BOS/EOS are
    /// added only when the GGUF's `add_bos_token` / `add_eos_token` ask for them.
    ///
    /// A byte with no token in the vocab (some vocabs lack rare control bytes) is dropped rather
    /// than mapped to an unknown token, matching llama.cpp; `unknown_token_id` is often a real
    /// control token such as `<|endoftext|>` that must not appear in a prompt by accident.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encode_parts(&[(text, parse_special)])
    }

    /// Decode ids to text. Byte sequences that are not valid UTF-8 (only possible for id
    /// sequences a model would not normally produce) come out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if (id as usize) >= self.tokens.len() {
                return Err(TokenizerError::UnknownTokenId { id, vocab_size: self.tokens.len() });
            }
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The exact bytes this token contributes to decoded text: byte-level decoded for ordinary
    /// tokens, the literal text for special ones. May be an incomplete UTF-8 sequence. Empty
    /// for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start..end],
            _ => &[],
        }
    }

    /// Whether this is a control (or unknown-type) token: the kind `skip_special` drops and
    /// that `parse_special` governs. User-defined tokens are not special in this sense.
    pub fn is_special(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&TokenKind::Control)
    }

    /// Id of a raw vocab string (byte-level form, e.g. `"Ġworld"`, or a special token's text).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.encoder {
            Encoder::ByteLevelBpe { with_special, .. } => with_special.token_to_id(token),
            Encoder::SentencePiece(spm) => spm.token_to_id(token),
        }
    }

    /// The raw vocab string of a token, as stored in the GGUF.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.ids.bos
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.ids.eos
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.ids.pad
    }

    pub fn unk_token_id(&self) -> Option<u32> {
        self.ids.unk
    }

    /// Whether [`Tokenizer::encode`] prepends BOS.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation: eos, the GGUF's eot/eom ids, and any control token whose text is
    /// a known end-of-turn marker (e.g. `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, `</s>`).
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `Some(name)` when `tokenizer.ggml.pre` was unrecognised (or missing: `"default"`) and
    /// plain GPT-2 pre-tokenization was used instead; ids may then differ from llama.cpp's.
    pub fn pre_tokenizer_fallback(&self) -> Option<&str> {
        self.pre_fallback.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn backend(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.encoder {
            Encoder::ByteLevelBpe { with_special, .. } => Some(with_special),
            Encoder::SentencePiece(_) => None,
        }
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.ids.bos)
            .field("eos", &self.ids.eos)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .field("pre_fallback", &self.pre_fallback)
            .finish_non_exhaustive()
    }
}

/// `<0xHH>` → the byte it names.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn stop_ids(v: &GgufVocab) -> Vec<u32> {
    let by_name = v.tokens.iter().zip(&v.kinds).zip(0u32..).filter_map(|((text, kind), id)| {
        (*kind == TokenKind::Control && END_OF_TURN.contains(&text.as_str())).then_some(id)
    });
    let mut out: Vec<u32> = Vec::new();
    for id in [v.ids.eos, v.ids.eot, v.ids.eom].into_iter().flatten().chain(by_name) {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}
