//! The forward pass against candle-transformers' `quantized_llama` on the real
//! default model, and batching invariants.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use crate::{LoadOptions, Model, SeqBatchItem};

/// The real default model (`$KILN_MODEL`, else kiln's cache, fetched on first use).
fn model_path() -> PathBuf {
    kiln_hub::resolve_model(None, false).expect("the default model is needed by these tests")
}

fn reference(path: &PathBuf) -> ModelWeights {
    let mut f = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap()
}

fn reference_logits(model: &mut ModelWeights, tokens: &[u32], pos: usize) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&input, pos).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

/// `max |a - b| / max |b|`.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32
}

const PROMPT: &[u32] = &[
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198,
    1, 4093, 198, 1780, 314, 216, 34, 31, 34, 47, 2, 198, 1, 520, 9531, 198,
];

/// Exact arithmetic on both sides: every matrix dequantized to f32 (candle's
/// `CANDLE_DEQUANTIZE_ALL`), so this checks the architecture (norms, RoPE,
/// GQA, SwiGLU, caches) without 8-bit activation rounding in the way.
#[test]
fn logits_match_candle_quantized_llama_through_prefill_and_decode() {
    // SAFETY: set before candle reads it on this thread; no other thread reads it concurrently in this test.
    unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
    let path = model_path();
    let model =
        Model::load_with(&path, LoadOptions { max_context: Some(512), f32_weights: true, kv_type: crate::KvType::F32 })
            .unwrap();
    let mut reference = reference(&path);
    let mut cache = model.new_cache();
    let ours = model.forward(&mut [SeqBatchItem { tokens: PROMPT, cache: &mut cache, logits: true }]).unwrap();
    let ours = ours[0].clone().unwrap();
    let theirs = reference_logits(&mut reference, PROMPT, 0);
    let err = relative_error(&ours, &theirs);
    assert!(err < 1e-3, "prefill logits differ: relative error {err}");
    let mut next = argmax(&ours);
    assert_eq!(next, argmax(&theirs));
    for step in 0..8 {
        let ours = model.forward(&mut [SeqBatchItem { tokens: &[next], cache: &mut cache, logits: true }]).unwrap();
        let ours = ours[0].clone().unwrap();
        let theirs = reference_logits(&mut reference, &[next], PROMPT.len() + step);
        let err = relative_error(&ours, &theirs);
        assert!(err < 1e-3, "decode step {step}: relative error {err}");
        next = argmax(&theirs);
    }
}

/// The 8-bit path (what kiln serves) against the exact one: rounding activations
/// to 8 bits moves logits by a few percent (SmolLM2 has outlier channels, and
/// any two 8-bit implementations, even kiln's scalar and AVX-512 kernels,
/// differ at that level), but greedy choices may only differ on near-ties.
#[test]
fn quantized_path_follows_the_exact_path_greedily() {
    let path = model_path();
    let exact =
        Model::load_with(&path, LoadOptions { max_context: Some(512), f32_weights: true, kv_type: crate::KvType::F32 })
            .unwrap();
    let fast = Model::load(&path, Some(512)).unwrap();
    let (mut ce, mut cf) = (exact.new_cache(), fast.new_cache());
    let (mut te, mut tf) = (PROMPT.to_vec(), PROMPT.to_vec());
    for step in 0..12 {
        let le = exact.forward(&mut [SeqBatchItem { tokens: &te, cache: &mut ce, logits: true }]).unwrap();
        let lf = fast.forward(&mut [SeqBatchItem { tokens: &tf, cache: &mut cf, logits: true }]).unwrap();
        let (le, lf) = (le[0].as_ref().unwrap(), lf[0].as_ref().unwrap());
        let l2 = (lf.iter().zip(le).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
            / le.iter().map(|b| b * b).sum::<f32>())
        .sqrt();
        assert!(l2 < 0.1, "8-bit logits drifted: relative L2 {l2}");
        // Where the exact path has a near-tie the 8-bit one may break it the
        // other way; it must never pick a token the exact path finds clearly worse.
        let (fast_pick, exact_pick) = (argmax(lf) as usize, argmax(le) as usize);
        let margin = le[exact_pick] - le[fast_pick];
        assert!(margin < 0.25, "step {step}: 8-bit picked {fast_pick}, {margin} below the exact best");
        te = vec![argmax(le)];
        tf = te.clone();
    }
}

#[test]
fn a_sequence_gets_identical_logits_alone_or_batched_with_others() {
    let model = Model::load(&model_path(), Some(512)).unwrap();
    let alone = {
        let mut cache = model.new_cache();
        model.forward(&mut [SeqBatchItem { tokens: &PROMPT[..20], cache: &mut cache, logits: false }]).unwrap();
        let out = model.forward(&mut [SeqBatchItem { tokens: &PROMPT[20..], cache: &mut cache, logits: true }]);
        out.unwrap()[0].clone().unwrap()
    };
    // Same sequence, prefilled in two chunks while other sequences at other positions share the steps.
    let mut mine = model.new_cache();
    let mut other = model.new_cache();
    let mut third = model.new_cache();
    model.forward(&mut [SeqBatchItem { tokens: &PROMPT[5..9], cache: &mut other, logits: true }]).unwrap();
    model
        .forward(&mut [
            SeqBatchItem { tokens: &[42], cache: &mut other, logits: true },
            SeqBatchItem { tokens: &PROMPT[..20], cache: &mut mine, logits: false },
        ])
        .unwrap();
    let out = model
        .forward(&mut [
            SeqBatchItem { tokens: &PROMPT[3..30], cache: &mut third, logits: true },
            SeqBatchItem { tokens: &PROMPT[20..], cache: &mut mine, logits: true },
            SeqBatchItem { tokens: &[7], cache: &mut other, logits: true },
        ])
        .unwrap();
    assert_eq!(out[1].as_ref().unwrap(), &alone, "batching changed a sequence's logits");
    assert_eq!(mine.len(), PROMPT.len());
    assert_eq!(other.len(), 6);
}

#[test]
fn context_overflow_and_bad_tokens_are_refused_without_touching_the_cache() {
    let model = Model::load(&model_path(), Some(16)).unwrap();
    let mut cache = model.new_cache();
    let err = model.forward(&mut [SeqBatchItem { tokens: &[1; 17], cache: &mut cache, logits: true }]);
    assert!(matches!(err, Err(crate::ModelError::ContextOverflow { len: 17, max: 16 })));
    let err = model.forward(&mut [SeqBatchItem { tokens: &[1, 999_999], cache: &mut cache, logits: true }]);
    assert!(matches!(err, Err(crate::ModelError::TokenOutOfRange { id: 999_999, .. })));
    assert_eq!(cache.len(), 0);
    assert_eq!(cache.size_in_bytes(), 0);
}

#[test]
fn a_missing_file_names_the_path() {
    let err = Model::load(std::path::Path::new("/nonexistent/model.gguf"), None).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

/// f16 keys and values (what kiln serves) against f32 ones over a few hundred
/// positions, on the exact (f32-weight) path: the 8-bit activations of the
/// served path would amplify any difference at all into a few percent (see
/// above), hiding what f16 storage itself costs.
#[test]
fn f16_kv_cache_keeps_logits_within_a_bound_of_f32() {
    let options = LoadOptions { max_context: Some(512), f32_weights: true, kv_type: crate::KvType::F16 };
    let model = Model::load_with(&model_path(), options).unwrap();
    let (mut c16, mut c32) = (model.new_cache_of(crate::KvType::F16), model.new_cache_of(crate::KvType::F32));
    let prompt: Vec<u32> = PROMPT.iter().cycle().take(300).copied().collect();
    let mut input = prompt.clone();
    let mut worst = 0f32;
    for step in 0..24 {
        let l16 = model.forward(&mut [SeqBatchItem { tokens: &input, cache: &mut c16, logits: true }]).unwrap();
        let l32 = model.forward(&mut [SeqBatchItem { tokens: &input, cache: &mut c32, logits: true }]).unwrap();
        let (l16, l32) = (l16[0].as_ref().unwrap(), l32[0].as_ref().unwrap());
        let l2 = (l16.iter().zip(l32).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
            / l32.iter().map(|b| b * b).sum::<f32>())
        .sqrt();
        worst = worst.max(l2);
        let (pick16, pick32) = (argmax(l16) as usize, argmax(l32) as usize);
        let margin = l32[pick32] - l32[pick16];
        assert!(margin < 0.05, "step {step}: f16 picked {pick16}, {margin} below f32's best");
        input = vec![argmax(l32)];
    }
    assert!(worst < 0.005, "f16 K/V moved logits by a relative L2 of {worst}");
    assert!(c16.size_in_bytes() * 2 <= c32.size_in_bytes() + 64, "f16 holds half the bytes");
}
