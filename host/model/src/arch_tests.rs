//! Each architecture's differences from Llama, on tiny random models:
//! kiln's forward pass against candle-transformers' model of that
//! architecture reading the same file. (Parity with llama.cpp itself runs
//! in the integration tests.)

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file;
use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_phi3, quantized_qwen2, quantized_qwen3};

use crate::tiny_gguf::{self, kiln_logits, relative_error};
use crate::{Arch, Model, RopeStyle};

const TOKENS: [u32; 7] = [5, 17, 200, 3, 99, 42, 7];

/// candle's logits for the last token of `TOKENS`.
fn candle_logits(arch: &str, path: &Path) -> Vec<f32> {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let input = Tensor::new(&TOKENS[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = match arch {
        "qwen2" => quantized_qwen2::ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap().forward(&input, 0),
        "qwen3" => quantized_qwen3::ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap().forward(&input, 0),
        "phi3" => {
            quantized_phi3::ModelWeights::from_gguf(false, content, &mut f, &Device::Cpu).unwrap().forward(&input, 0)
        }
        other => panic!("no reference for {other}"),
    };
    let all: Vec<f32> = logits.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    all[all.len() - tiny_gguf::VOCAB..].to_vec()
}

#[test]
fn qwen2_qwen3_and_phi3_match_candles_models_of_them() {
    // Not Gemma 3: candle-transformers 0.11.1's quantized_gemma3 gates its FFN
    // with SiLU where Gemma (and llama.cpp) use tanh-GELU. Gemma 3 is checked
    // against llama.cpp itself (tests/integration/parity.rs).
    let dir = tempfile::tempdir().unwrap();
    for arch in ["qwen2", "qwen3", "phi3"] {
        for dtype in [GgmlDType::F32, GgmlDType::Q8_0] {
            let path = tiny_gguf::write(arch, dtype, dir.path(), vec![]);
            let theirs = candle_logits(arch, &path);
            let ours = kiln_logits(&path, &TOKENS, false);
            // f32 on both sides: equal up to summation order. Q8_0: kiln's
            // kernels round activations to 8 bits, candle's its own way.
            let tolerance = if dtype == GgmlDType::F32 { 1e-4 } else { 5e-2 };
            let err = relative_error(&ours, &theirs);
            assert!(err < tolerance, "{arch} {dtype:?}: kiln vs candle relative error {err}");
        }
    }
}

#[test]
fn each_architecture_switches_in_its_own_parts() {
    let dir = tempfile::tempdir().unwrap();
    let load = |arch| Model::load(&tiny_gguf::write(arch, GgmlDType::Q8_0, dir.path(), vec![]), None).unwrap();
    let (llama, qwen2, qwen3) = (load("llama"), load("qwen2"), load("qwen3"));
    assert_eq!((llama.config().arch, llama.config().arch.rope_style()), (Arch::Llama, RopeStyle::Interleaved));
    assert_eq!((qwen2.config().arch, qwen2.config().arch.rope_style()), (Arch::Qwen2, RopeStyle::Halves));
    // Qwen3's heads are wider than width / heads: the file says how wide.
    assert_eq!((qwen3.config().head_dim, qwen3.config().q_dim()), (128, 512));
    assert_eq!(qwen3.kv_cache_bytes(256), 2 * llama.kv_cache_bytes(256), "KV heads twice as wide");
}

#[test]
fn a_missing_bias_or_head_norm_is_named_and_unknown_architectures_or_rope_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A Llama file relabelled: a Qwen2 without biases, a Qwen3 without head norms.
    let relabelled = |arch: &str| {
        let path = tiny_gguf::write("llama", GgmlDType::Q8_0, dir.path(), vec![]);
        let bytes = std::fs::read(&path).unwrap();
        // Same-length names keep every offset: "llama" -> the 5-letter name.
        let patched = replace_all(&bytes, b"llama", arch.as_bytes());
        let out = dir.path().join(format!("relabelled-{arch}.gguf"));
        std::fs::write(&out, patched).unwrap();
        out
    };
    let err = Model::load(&relabelled("qwen2"), None).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q.bias"), "{err}");
    let err = Model::load(&relabelled("qwen3"), None).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q_norm.weight"), "{err}");
    let longrope = tiny_gguf::write_with("phi3", GgmlDType::Q8_0, dir.path(), vec![], &["rope_factors_long.weight"]);
    let err = Model::load(&longrope, None).unwrap_err().to_string();
    assert!(err.contains("rope_factors_long"), "{err}");
    let err = Model::load(&relabelled("bloom"), None).unwrap_err().to_string();
    assert!(err.contains("`bloom`") && err.contains("llama, mistral, qwen2, qwen3, phi3"), "{err}");
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = haystack.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn gemma3_local_layers_see_only_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let window = |w: u32| {
        let path = tiny_gguf::write(
            "gemma3",
            GgmlDType::F32,
            dir.path(),
            vec![("gemma3.attention.sliding_window", Value::U32(w))],
        );
        kiln_logits(&path, &TOKENS, false)
    };
    // Windows of 7 or more cover the whole 7-token prompt: the same logits.
    // (candle's Gemma 3 shows one position more than llama.cpp and
    // transformers do, so the window itself is not compared with it.)
    let (wide, exact, narrow) = (window(16), window(7), window(3));
    assert!(relative_error(&exact, &wide) < 1e-6);
    assert!(relative_error(&narrow, &wide) > 1e-3, "a 3-position window changed nothing");
    let model = Model::load(&tiny_gguf::write("gemma3", GgmlDType::F32, dir.path(), vec![]), None).unwrap();
    let slides: Vec<bool> = (0..2).map(|l| model.config().sliding_window.as_ref().unwrap().slides(l)).collect();
    assert_eq!(slides, [true, false]);
}
