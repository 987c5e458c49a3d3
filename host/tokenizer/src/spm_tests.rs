//! SentencePiece on a small hand-made vocabulary, where each rule of
//! llama.cpp's algorithm decides the outcome. (Parity with `llama-tokenize`
//! on a trained vocabulary is in the integration tests.)

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::{IncrementalDecoder, Tokenizer};

/// `(text, score, type)`: type 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
fn vocab(extra: &[(&str, f32, i32)]) -> Tokenizer {
    vocab_with(extra, None, None)
}

fn vocab_with(extra: &[(&str, f32, i32)], add_space_prefix: Option<bool>, name: Option<&str>) -> Tokenizer {
    let mut entries: Vec<(String, f32, i32)> =
        vec![("<unk>".into(), 0.0, 2), ("<s>".into(), 0.0, 3), ("</s>".into(), 0.0, 3)];
    entries.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    entries.extend(extra.iter().map(|&(t, s, k)| (t.to_string(), s, k)));
    let mut md = HashMap::new();
    md.insert("tokenizer.ggml.model".to_string(), Value::String("llama".into()));
    let list = |f: &dyn Fn(&(String, f32, i32)) -> Value| Value::Array(entries.iter().map(f).collect());
    md.insert("tokenizer.ggml.tokens".into(), list(&|e| Value::String(e.0.clone())));
    md.insert("tokenizer.ggml.scores".into(), list(&|e| Value::F32(e.1)));
    md.insert("tokenizer.ggml.token_type".into(), list(&|e| Value::I32(e.2)));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
    if let Some(prefix) = add_space_prefix {
        md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(prefix));
    }
    if let Some(name) = name {
        md.insert("general.name".into(), Value::String(name.into()));
    }
    let content = candle_core::quantized::gguf_file::Content {
        magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
        metadata: md,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    Tokenizer::from_gguf(&content).unwrap()
}

const WORDS: &[(&str, f32, i32)] = &[
    ("▁", -1.0, 1),
    ("h", -2.0, 1),
    ("e", -2.0, 1),
    ("l", -2.0, 1),
    ("o", -2.0, 1),
    ("▁h", -3.0, 1),
    ("he", -1.5, 1),
    ("ll", -1.2, 1),
    ("llo", -1.1, 1),
    ("hello", -0.5, 1),
    ("▁hello", -0.1, 1),
    ("<|user|>", 0.0, 3),
    ("<tool>", 0.0, 4),
];

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_to_id(text).unwrap_or_else(|| panic!("{text} not in vocab"))
}

#[test]
fn merges_follow_scores_and_a_space_prefix_starts_the_text() {
    let t = vocab(WORDS);
    // BOS first (SentencePiece's default), then "▁hello" merged all the way.
    assert_eq!(t.encode("hello", false).unwrap(), [1, id(&t, "▁hello")]);
    assert_eq!(t.encode("hello hello", false).unwrap(), [1, id(&t, "▁hello"), id(&t, "▁hello")]);
    // "ll" outscores "he", "llo" then outscores "he": h e llo -> he llo; "hello" needs "he"+"llo".
    assert_eq!(t.encode("hello", false).unwrap().len(), 2);
    assert_eq!(t.decode(&t.encode(" hello world", false).unwrap(), true).unwrap(), "  hello world");
}

#[test]
fn characters_without_a_token_fall_back_to_their_bytes() {
    let t = vocab(WORDS);
    let ids = t.encode("hé", false).unwrap();
    // "▁h", then é as its two UTF-8 bytes.
    assert_eq!(ids, [1, id(&t, "▁h"), id(&t, "<0xC3>"), id(&t, "<0xA9>")]);
    assert_eq!(t.decode(&ids, true).unwrap(), " hé");
    // Streaming holds the first byte back until the character is whole.
    let mut stream = IncrementalDecoder::new(&t, true);
    let pieces: Vec<String> = ids[1..].iter().map(|&i| stream.push(i)).collect();
    assert_eq!(pieces, [" h", "", "é"]);
}

#[test]
fn special_tokens_split_the_text_and_the_space_prefix_follows_them() {
    let t = vocab(WORDS);
    let user = id(&t, "<|user|>");
    let hello = id(&t, "▁hello");
    // Control tokens only when parsing specials; the text after one gets its space again.
    assert_eq!(t.encode("<|user|>hello", true).unwrap(), [1, user, hello]);
    let literal = t.encode("<|user|>hello", false).unwrap();
    assert!(!literal.contains(&user) && literal.len() > 3, "{literal:?}");
    // User-defined tokens always split out.
    assert_eq!(t.encode("hello<tool>hello", false).unwrap(), [1, hello, id(&t, "<tool>"), hello]);
    // Parts of one prompt: the prefix rule looks across them.
    assert_eq!(t.encode_parts(&[("<|user|>", true), ("hello", false)]).unwrap(), [1, user, hello]);
}

#[test]
fn without_add_space_prefix_no_space_is_added() {
    let t = vocab_with(WORDS, Some(false), None);
    assert_eq!(t.encode("hello", false).unwrap(), [1, id(&t, "hello")]);
    assert_eq!(t.encode("hello hello", false).unwrap(), [1, id(&t, "hello"), id(&t, "▁hello")]);
}

#[test]
fn a_prompt_in_parts_merges_as_one_text() {
    let t = vocab(WORDS);
    // llama.cpp tokenizes the rendered prompt whole: "he" + "llo" is still "▁hello".
    assert_eq!(t.encode_parts(&[("he", false), ("llo", false)]).unwrap(), t.encode("hello", false).unwrap());
}

#[test]
fn phi3_drops_whitespace_after_its_special_tokens() {
    let words: Vec<(&str, f32, i32)> = WORDS.iter().copied().chain([("<|end|>", 0.0, 3)]).collect();
    let (phi3, other) = (vocab_with(&words, None, Some("Phi-3 Mini 4k Instruct")), vocab(&words));
    let (user, end, hello) = (id(&phi3, "<|user|>"), id(&phi3, "<|end|>"), id(&phi3, "▁hello"));
    // As llama.cpp (RSTRIP on Phi-3's specials): the newline goes, the space prefix comes back.
    assert_eq!(phi3.encode("<|user|>\nhello<|end|>\n", true).unwrap(), [1, user, hello, end]);
    let kept = other.encode("<|user|>\nhello<|end|>\n", true).unwrap();
    assert!(kept.contains(&id(&other, "<0x0A>")), "{kept:?}");
    // Not after <s>, <unk> or <|endoftext|>.
    assert_eq!(phi3.encode("<s> hello", true).unwrap(), [1, 1, id(&phi3, "▁"), hello]);
}
