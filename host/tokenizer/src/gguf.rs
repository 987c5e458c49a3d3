//! Pulls the tokenizer-related keys out of GGUF metadata, validating types up front so the rest
//! of the crate works with plain Rust values.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::TokenizerError;

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const SCORES: &str = "tokenizer.ggml.scores";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const EOT: &str = "tokenizer.ggml.eot_token_id";
const EOM: &str = "tokenizer.ggml.eom_token_id";
const PAD: &str = "tokenizer.ggml.padding_token_id";
const UNK: &str = "tokenizer.ggml.unknown_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Normal,
    /// Control and unknown tokens: only matched in text on request, skippable on output.
    Control,
    /// Always matched in text and always shown; stored verbatim, not byte-level encoded.
    UserDefined,
    /// `<0xHH>` tokens standing for a single raw byte.
    Byte,
}

impl TokenKind {
    fn from_gguf(t: i64) -> Self {
        match t {
            2 | 3 => Self::Control,
            4 => Self::UserDefined,
            6 => Self::Byte,
            // 1 = normal, 5 = unused, anything else: treat as ordinary vocab so it still decodes.
            _ => Self::Normal,
        }
    }
}

/// Special token ids; each is `None` when absent or out of range, as llama.cpp ignores bad ids.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

/// `tokenizer.ggml.model`: how text becomes ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VocabModel {
    /// `gpt2`: byte-level BPE with merges.
    ByteLevelBpe,
    /// `llama`: SentencePiece, merges by score, byte fallback.
    SentencePiece,
}

#[derive(Debug)]
pub(crate) struct GgufVocab {
    pub model: VocabModel,
    pub tokens: Vec<String>,
    pub kinds: Vec<TokenKind>,
    /// Byte-level BPE only.
    pub merges: Vec<(String, String)>,
    /// SentencePiece only: each token's merge priority.
    pub scores: Vec<f32>,
    /// SentencePiece only: a space goes before text that starts the input or follows a special token.
    pub add_space_prefix: bool,
    pub ids: SpecialIds,
    pub add_bos: bool,
    pub add_eos: bool,
    pub pre: Option<String>,
    pub chat_template: Option<String>,
    /// `general.name`: llama.cpp keys a few per-model token rules on it (Phi-3's).
    pub model_name: Option<String>,
}

impl GgufVocab {
    pub fn read(md: &HashMap<String, Value>) -> Result<Self, TokenizerError> {
        let model = match string(md, MODEL)?.ok_or(TokenizerError::MissingKey(MODEL))? {
            "gpt2" => VocabModel::ByteLevelBpe,
            "llama" => VocabModel::SentencePiece,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let spm = model == VocabModel::SentencePiece;

        let tokens = array(md, TOKENS)?
            .ok_or(TokenizerError::MissingKey(TOKENS))?
            .iter()
            .map(|v| as_string(TOKENS, v).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(bad(TOKENS, format!("vocabulary of {} tokens", tokens.len())));
        }

        let kinds = match array(md, TOKEN_TYPE)? {
            None => vec![TokenKind::Normal; tokens.len()],
            Some(types) if types.len() == tokens.len() => {
                types.iter().map(|v| as_int(TOKEN_TYPE, v).map(TokenKind::from_gguf)).collect::<Result<_, _>>()?
            }
            Some(types) => {
                return Err(bad(TOKEN_TYPE, format!("{} entries for {} tokens", types.len(), tokens.len())));
            }
        };

        let merges = match array(md, MERGES)? {
            Some(merges) if !spm => merges,
            None if !spm => return Err(TokenizerError::MissingKey(MERGES)),
            _ => &[],
        };
        let merges = merges
            .iter()
            .map(|v| {
                let m = as_string(MERGES, v)?;
                // Byte-level tokens never contain a raw space, so the first one is the separator.
                let (a, b) = m.split_once(' ').ok_or_else(|| bad(MERGES, format!("merge {m:?} has no space")))?;
                Ok((a.to_owned(), b.to_owned()))
            })
            .collect::<Result<Vec<_>, TokenizerError>>()?;

        let n = tokens.len();
        let ids = SpecialIds {
            bos: token_id(md, BOS, n)?,
            eos: token_id(md, EOS, n)?,
            eot: token_id(md, EOT, n)?,
            eom: token_id(md, EOM, n)?,
            pad: token_id(md, PAD, n)?,
            unk: token_id(md, UNK, n)?,
        };

        let scores = match array(md, SCORES)? {
            // llama.cpp scores every token 0 then: merges go leftmost first.
            None if spm => vec![0.0; tokens.len()],
            None => Vec::new(),
            Some(scores) if scores.len() == tokens.len() => {
                scores.iter().map(|v| as_f32(SCORES, v)).collect::<Result<_, _>>()?
            }
            Some(scores) => return Err(bad(SCORES, format!("{} entries for {} tokens", scores.len(), tokens.len()))),
        };

        // llama.cpp's defaults: BOS and the space prefix for SentencePiece, neither for gpt2.
        let add_space_prefix = boolean(md, ADD_SPACE_PREFIX)?.unwrap_or(spm);
        let add_bos = boolean(md, ADD_BOS)?.unwrap_or(spm);
        let add_eos = boolean(md, ADD_EOS)?.unwrap_or(false);
        if add_bos && ids.bos.is_none() {
            return Err(bad(ADD_BOS, "set, but there is no valid bos_token_id".into()));
        }
        if add_eos && ids.eos.is_none() {
            return Err(bad(ADD_EOS, "set, but there is no valid eos_token_id".into()));
        }

        Ok(Self {
            model,
            tokens,
            kinds,
            merges,
            scores,
            add_space_prefix,
            ids,
            add_bos,
            add_eos,
            pre: string(md, PRE)?.map(str::to_owned),
            chat_template: string(md, CHAT_TEMPLATE)?.map(str::to_owned),
            model_name: md.get("general.name").and_then(|v| as_string("general.name", v).ok()).map(str::to_owned),
        })
    }
}

fn bad(key: &'static str, detail: String) -> TokenizerError {
    TokenizerError::BadValue { key, detail }
}

fn as_string<'a>(key: &'static str, v: &'a Value) -> Result<&'a str, TokenizerError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(bad(key, format!("expected a string, got {:?}", other.value_type()))),
    }
}

/// Converters are not consistent about integer widths or signedness, so accept any of them.
fn as_int(key: &'static str, v: &Value) -> Result<i64, TokenizerError> {
    let n = match *v {
        Value::U8(x) => i64::from(x),
        Value::I8(x) => i64::from(x),
        Value::U16(x) => i64::from(x),
        Value::I16(x) => i64::from(x),
        Value::U32(x) => i64::from(x),
        Value::I32(x) => i64::from(x),
        Value::I64(x) => x,
        Value::U64(x) => i64::try_from(x).map_err(|_| bad(key, format!("{x} is too large")))?,
        ref other => {
            return Err(bad(key, format!("expected an integer, got {:?}", other.value_type())));
        }
    };
    Ok(n)
}

fn as_f32(key: &'static str, v: &Value) -> Result<f32, TokenizerError> {
    match *v {
        Value::F32(x) => Ok(x),
        Value::F64(x) => Ok(x as f32),
        ref other => as_int(key, other).map(|n| n as f32),
    }
}

fn string<'a>(md: &'a HashMap<String, Value>, key: &'static str) -> Result<Option<&'a str>, TokenizerError> {
    md.get(key).map(|v| as_string(key, v)).transpose()
}

fn array<'a>(md: &'a HashMap<String, Value>, key: &'static str) -> Result<Option<&'a [Value]>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(bad(key, format!("expected an array, got {:?}", other.value_type()))),
    }
}

fn boolean(md: &HashMap<String, Value>, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => as_int(key, other).map(|n| Some(n != 0)),
    }
}

fn token_id(md: &HashMap<String, Value>, key: &'static str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let id = as_int(key, v)?;
    Ok(u32::try_from(id).ok().filter(|&id| (id as usize) < n_vocab))
}
