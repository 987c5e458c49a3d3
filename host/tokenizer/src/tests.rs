//! Tests against the real SmolLM2-135M-Instruct GGUF (`tokenizer.ggml.pre = "smollm"`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::{IncrementalDecoder, Tokenizer, TokenizerError};

/// The real default model (`$KILN_MODEL`, else kiln's cache, fetched on first use).
fn model_path() -> PathBuf {
    kiln_hub::resolve_model(None, false).expect("the default model is needed by these tests")
}

pub(crate) fn content() -> Content {
    let path = model_path();
    let mut file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open test model {} ({e}); run `kiln pull` to download it", path.display()));
    Content::read(&mut file).expect("parse GGUF")
}

/// One shared instance: building it costs ~100 ms and every test only reads it.
pub(crate) fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf(&content()).expect("build tokenizer"))
}

fn id(token: &str) -> u32 {
    tok().token_to_id(token).unwrap_or_else(|| panic!("{token:?} not in vocab"))
}

fn ids(tokens: &[&str]) -> Vec<u32> {
    tokens.iter().map(|t| id(t)).collect()
}

const ROUND_TRIPS: &[&str] = &[
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "été, naïve café, Ærøskøbing, Straße",
    "你好，世界。日本語のテキスト、한국어 텍스트",
    "😀🎉👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖",
    "fn main() {\n    let x: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}\n",
    "   leading and trailing   \n\n\n   ",
    "tabs\t\tand\r\nwindows\rlines",
    "control \u{0}\u{1}\u{7}\u{1b}[31m\u{7f} chars",
    "مرحبا بالعالم — नमस्ते दुनिया",
    "\u{FFFD} already replaced, \u{200B}zero width\u{FEFF}",
    "<|im_start|>user\nnot special here<|im_end|>",
];

#[test]
fn metadata() {
    let t = tok();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_token_id(), Some(id("<|im_start|>")));
    assert_eq!(t.eos_token_id(), Some(id("<|im_end|>")));
    assert!(!t.add_bos_token());
    assert_eq!(t.pre_tokenizer_fallback(), None, "\"smollm\" must be recognised");
    assert!(t.chat_template().is_some_and(|c| c.contains("<|im_start|>")));
    assert_eq!(t.token_str(19556), Some("Hello"));
    assert_eq!(t.token_str(49152), None);
    assert_eq!(t.token_bytes(905), b" world");
    assert_eq!(t.token_bytes(id("<|im_end|>")), b"<|im_end|>");
    assert_eq!(t.token_bytes(u32::MAX), b"");
    assert!(t.is_special(id("<|im_start|>")));
    assert!(!t.is_special(19556));
    assert!(!t.is_special(u32::MAX));
    let dbg = format!("{t:?}");
    assert!(dbg.contains("vocab_size: 49152"), "{dbg}");
}

#[test]
fn tokenizer_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<IncrementalDecoder<Arc<Tokenizer>>>();
}

/// Reference ids produced by llama.cpp for this model (no BOS).
#[test]
fn golden_llama_cpp() {
    let text = "Hello world! été 你好 😀 fn main() {\n    let x = 1;\n}";
    let expected = [
        19556, 905, 17, 216, 19380, 2756, 216, 18645, 250, 48392, 138, 40303, 218, 24526, 1085, 1000, 1662, 472, 1303,
        1792, 446, 216, 33, 43, 198, 109,
    ];
    assert_eq!(tok().encode(text, false).unwrap(), expected);
    assert_eq!(tok().encode(text, true).unwrap(), expected);
}

#[test]
fn golden_digits_are_split_one_by_one() {
    // The "smollm" pre-tokenizer isolates every digit, so even common numbers never merge.
    assert_eq!(tok().encode("12345", false).unwrap(), ids(&["1", "2", "3", "4", "5"]));
    // The space before a number is left on its own (compare " = 1" in the llama.cpp golden).
    assert_eq!(tok().encode("x 2024", false).unwrap(), ids(&["x", "Ġ", "2", "0", "2", "4"]));
}

#[test]
fn golden_whitespace_runs() {
    // A run of spaces gives its last space to the following word.
    assert_eq!(tok().encode("a   b", false).unwrap(), ids(&["a", "ĠĠ", "Ġb"]));
    // Newlines before a word are split the same way, so "\n\n" becomes two "\n" tokens...
    assert_eq!(tok().encode("a\n\nb", false).unwrap(), ids(&["a", "Ċ", "Ċ", "b"]));
    // ...while at the end of the text the run stays whole.
    assert_eq!(tok().encode("a\n\n", false).unwrap(), ids(&["a", "ĊĊ"]));
}

#[test]
fn golden_chat_markup() {
    let text = "<|im_start|>user\nhi<|im_end|>";
    let start = id("<|im_start|>");
    let end = id("<|im_end|>");
    let special = tok().encode(text, true).unwrap();
    assert_eq!(special, [start, id("user"), id("Ċ"), id("hi"), end]);

    let plain = tok().encode(text, false).unwrap();
    assert!(!plain.contains(&start) && !plain.contains(&end), "{plain:?}");
    assert!(plain.len() > special.len());
    assert!(plain.iter().all(|&i| !tok().is_special(i)));
    assert_eq!(tok().decode(&plain, true).unwrap(), text);
    assert_eq!(tok().decode(&special, false).unwrap(), text);
    assert_eq!(tok().decode(&special, true).unwrap(), "user\nhi");
}

#[test]
fn no_bos_added_and_empty_text() {
    assert_eq!(tok().encode("", true).unwrap(), Vec::<u32>::new());
    assert_eq!(tok().encode("Hello", false).unwrap(), [19556]);
}

#[test]
fn round_trips() {
    for &s in ROUND_TRIPS {
        for parse_special in [false, true] {
            let ids = tok().encode(s, parse_special).unwrap();
            assert_eq!(tok().decode(&ids, false).unwrap(), s, "parse_special={parse_special} ids={ids:?}");
            // The tokenizers crate's own ByteLevel decoder must agree with the byte table.
            let backend = tok().backend().unwrap().decode(&ids, false).unwrap();
            assert_eq!(backend, s);
        }
    }
}

#[test]
fn bytes_missing_from_vocab_are_dropped_like_llama_cpp() {
    // SmolLM2's vocab has no token for a few bytes. Besides those that never occur in UTF-8
    // (C0, C1, F5..FF) it lacks some rare controls and the F1/F2 lead bytes.
    let missing: Vec<u8> =
        (0..=255u8).filter(|&b| !(0..tok().vocab_size() as u32).any(|i| tok().token_bytes(i) == [b])).collect();
    let expected = [0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2];
    let expected: Vec<u8> = expected.into_iter().chain(0xf5..=0xff).collect();
    assert_eq!(missing, expected);
    // Such characters vanish from the ids (no unk token is emitted), as llama.cpp does.
    assert_eq!(tok().encode("a\u{4}b", false).unwrap(), ids(&["a", "b"]));
    assert_eq!(tok().encode("\u{4}", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn decode_rejects_unknown_ids() {
    let err = tok().decode(&[19556, 49152], false).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownTokenId { id: 49152, vocab_size: 49152 }));
}

#[test]
fn stop_tokens() {
    let stops = tok().stop_token_ids();
    assert!(stops.contains(&id("<|im_end|>")));
    assert!(stops.contains(&tok().eos_token_id().unwrap()));
    assert!(stops.contains(&id("<|endoftext|>")));
    assert!(!stops.contains(&id("<|im_start|>")));
}

/// Builds from the real metadata with one key changed or removed.
fn build_with(key: &str, value: Option<Value>) -> Result<Tokenizer, TokenizerError> {
    let mut c = content();
    match value {
        Some(v) => c.metadata.insert(key.to_owned(), v),
        None => c.metadata.remove(key),
    };
    Tokenizer::from_gguf(&c)
}

#[test]
fn metadata_errors() {
    let err = build_with("tokenizer.ggml.model", Some(Value::String("bert".into()))).unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "bert"), "{err}");
    let scores = Value::Array(vec![Value::F32(0.0)]);
    let err = build_with("tokenizer.ggml.model", Some(Value::String("llama".into())))
        .and_then(|_| build_with("tokenizer.ggml.scores", Some(scores)))
        .unwrap_err();
    assert!(matches!(err, TokenizerError::BadValue { key: "tokenizer.ggml.scores", .. }), "{err}");
    let err = build_with("tokenizer.ggml.merges", None).unwrap_err();
    assert!(matches!(err, TokenizerError::MissingKey("tokenizer.ggml.merges")), "{err}");
    let err = build_with("tokenizer.ggml.token_type", Some(Value::Array(vec![Value::I32(1)])));
    assert!(matches!(err, Err(TokenizerError::BadValue { key: "tokenizer.ggml.token_type", .. })));
    let err = build_with("tokenizer.ggml.tokens", Some(Value::U32(3))).unwrap_err();
    assert!(matches!(err, TokenizerError::BadValue { key: "tokenizer.ggml.tokens", .. }), "{err}");
    let merges = Value::Array(vec![Value::String("nospace".into())]);
    let err = build_with("tokenizer.ggml.merges", Some(merges)).unwrap_err();
    assert!(matches!(err, TokenizerError::BadValue { key: "tokenizer.ggml.merges", .. }), "{err}");
}

#[test]
fn unknown_pre_tokenizer_falls_back_to_gpt2() {
    let t = build_with("tokenizer.ggml.pre", Some(Value::String("mystery".into()))).unwrap();
    assert_eq!(t.pre_tokenizer_fallback(), Some("mystery"));
    // GPT-2 splitting keeps " 12345" as one word, but this vocab was trained with digits
    // isolated and has no merges involving them, so BPE still ends up with the same ids.
    let text = "x 12345 and 2024";
    assert_eq!(t.encode(text, false).unwrap(), tok().encode(text, false).unwrap());
    let t = build_with("tokenizer.ggml.pre", None).unwrap();
    assert_eq!(t.pre_tokenizer_fallback(), Some("default"));
}

#[test]
fn add_bos_token_is_honoured() {
    let t = build_with("tokenizer.ggml.add_bos_token", Some(Value::Bool(true))).unwrap();
    let bos = t.bos_token_id().unwrap();
    assert_eq!(t.encode("Hello", false).unwrap(), [bos, 19556]);
    assert_eq!(t.encode("", false).unwrap(), [bos]);
    // Out-of-range ids are ignored, as llama.cpp does, which then makes add_bos unusable.
    let mut c = content();
    c.metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    c.metadata.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1 << 20));
    let err = Tokenizer::from_gguf(&c).unwrap_err();
    assert!(matches!(err, TokenizerError::BadValue { key: "tokenizer.ggml.add_bos_token", .. }));
}
