//! The scheduler on the real default model: join, leave, cancel, overload,
//! and batch invariance of greedy decoding.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kiln_model::Model;
use kiln_tokenizer::Tokenizer;

use crate::{Backend, Engine, EngineConfig, EngineError, GenerateRequest, SamplingParams, StopReason, TokenEvent};

/// The real default model (`$KILN_MODEL`, else kiln's cache, fetched on first use).
fn model_path() -> PathBuf {
    kiln_hub::resolve_model(None, false).expect("the default model is needed by these tests")
}

fn loaded() -> (Arc<Model>, Arc<Tokenizer>) {
    static LOADED: OnceLock<(Arc<Model>, Arc<Tokenizer>)> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = model_path();
            let model = Model::load(&path, Some(1024)).expect("model loads");
            let mut f = std::fs::File::open(&path).unwrap();
            let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
            (Arc::new(model), Arc::new(Tokenizer::from_gguf(&content).unwrap()))
        })
        .clone()
}

pub(crate) fn engine(config: EngineConfig) -> Engine {
    let (m, t) = loaded();
    Engine::start(m, t, config)
}

pub(crate) fn prompt(text: &str) -> Vec<u32> {
    let (_, t) = loaded();
    t.encode(&format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"), true).unwrap()
}

pub(crate) fn greedy(tokens: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt_tokens: tokens, params: SamplingParams::greedy(), max_tokens, ..Default::default() }
}

/// Collects a stream to (token ids, finish reason).
pub(crate) fn collect(mut s: crate::TokenStream) -> (Vec<u32>, StopReason) {
    let mut ids = Vec::new();
    loop {
        match s.blocking_next().expect("stream ended without Finished") {
            TokenEvent::Token { id, .. } => ids.push(id),
            TokenEvent::Finished { reason, counts, .. } => {
                assert!(counts.completion_tokens >= ids.len());
                return (ids, reason);
            }
            TokenEvent::Failed(e) => panic!("generation failed: {e}"),
        }
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn greedy_tokens_are_the_same_alone_or_in_a_batch_of_eight_mixed_lengths() {
    let texts = [
        "What is 2+2?",
        "Name three colours.",
        "Write a haiku about the sea and the wind that blows across the waves at night.",
        "hi",
        "Explain what a CPU cache is in one sentence.",
        "List the days of the week.",
        "Translate 'good morning' to French.",
        "What is the capital of Japan? Answer briefly, then say why it matters historically.",
    ];
    let alone_engine = engine(EngineConfig::default());
    let alone: Vec<Vec<u32>> =
        texts.iter().map(|t| collect(alone_engine.generate(greedy(prompt(t), 24)).unwrap()).0).collect();
    drop(alone_engine);
    // A small prefill chunk forces prompts to be prefilled over several steps while others decode.
    let batched = engine(EngineConfig { prefill_chunk: 16, ..EngineConfig::default() });
    let streams: Vec<_> = texts.iter().map(|t| batched.generate(greedy(prompt(t), 24)).unwrap()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        assert_eq!(collect(s).0, alone[i], "sequence {i} changed when batched");
    }
}

#[test]
fn a_request_joins_a_running_batch_and_finished_ones_leave() {
    let e = engine(EngineConfig::default());
    let long = e.generate(GenerateRequest { ignore_eos: true, ..greedy(prompt("Count to one hundred."), 60) }).unwrap();
    wait_until("the first sequence to run", || e.stats().active() == 1);
    let steps_before = e.stats().steps();
    let short = e.generate(greedy(prompt("hi"), 4)).unwrap();
    wait_until("the second to join", || e.stats().active() == 2);
    let (short_ids, _) = collect(short);
    assert!(!short_ids.is_empty());
    let (long_ids, reason) = collect(long);
    assert_eq!((long_ids.len(), reason), (60, StopReason::Length));
    // Both shared steps: far fewer steps than the two would take one after the other.
    assert!(e.stats().steps() - steps_before < 60 + short_ids.len() as u64);
    wait_until("the batch to empty", || e.stats().active() == 0);
}

#[test]
fn dropping_the_stream_cancels_the_sequence() {
    let e = engine(EngineConfig::default());
    let mut s =
        e.generate(GenerateRequest { ignore_eos: true, ..greedy(prompt("Tell me a long story."), 500) }).unwrap();
    assert!(matches!(s.blocking_next(), Some(TokenEvent::Token { .. })));
    assert_eq!(e.stats().active(), 1);
    let generated = e.stats().generated_tokens();
    drop(s);
    wait_until("the cancelled sequence to leave", || e.stats().active() == 0);
    assert!(e.stats().generated_tokens() - generated < 50, "kept generating after cancel");
}

#[test]
fn a_full_queue_answers_overloaded() {
    let e = engine(EngineConfig { max_batch: 1, max_queue: 1, prefill_chunk: 64, ..EngineConfig::default() });
    let running = e.generate(GenerateRequest { ignore_eos: true, ..greedy(prompt("one"), 200) }).unwrap();
    wait_until("the first to run", || e.stats().active() == 1);
    let queued = e.generate(greedy(prompt("two"), 2)).unwrap();
    assert_eq!(e.generate(greedy(prompt("three"), 2)).unwrap_err(), EngineError::Overloaded { queued: 1 });
    drop(running);
    assert!(!collect(queued).0.is_empty(), "the queued request runs once a slot frees");
}

#[test]
fn same_seed_same_text_when_sampling() {
    let e = engine(EngineConfig::default());
    let req = |seed| GenerateRequest {
        params: SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..SamplingParams::default() },
        ..greedy(prompt("Invent a name for a cat."), 20)
    };
    let a = collect(e.generate(req(11)).unwrap()).0;
    let b = collect(e.generate(req(11)).unwrap()).0;
    let c = collect(e.generate(req(12)).unwrap()).0;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn invalid_requests_are_refused_before_the_engine() {
    let e = engine(EngineConfig::default());
    let err = |r: GenerateRequest| match e.generate(r) {
        Err(EngineError::Validation { field, .. }) => field,
        other => panic!("expected a validation error, got {other:?}"),
    };
    assert_eq!(err(greedy(vec![], 4)), "prompt");
    assert_eq!(err(greedy(prompt("hi"), 0)), "max_tokens");
    assert_eq!(err(greedy(prompt("hi"), 5000)), "max_tokens");
    assert!(matches!(
        e.generate(greedy(vec![1; 1024], 1)),
        Err(EngineError::PromptTooLong { prompt_tokens: 1024, max_context: 1024 })
    ));
    assert_eq!(err(greedy(vec![999_999], 1)), "prompt");
    assert_eq!(err(GenerateRequest { top_logprobs: 21, ..greedy(prompt("hi"), 1) }), "top_logprobs");
}

#[test]
fn eos_stops_with_reason_stop_unless_ignored() {
    let e = engine(EngineConfig::default());
    let (ids, reason) = collect(e.generate(greedy(prompt("Say just the word yes."), 64)).unwrap());
    assert_eq!(reason, StopReason::Stop, "got {} tokens", ids.len());
    let (ids, reason) =
        collect(e.generate(GenerateRequest { ignore_eos: true, ..greedy(prompt("Say yes."), 40) }).unwrap());
    assert_eq!((ids.len(), reason), (40, StopReason::Length));
}

#[test]
fn zero_sized_config_values_are_clamped_not_hung() {
    let zeros =
        EngineConfig { max_batch: 0, max_queue: 0, prefill_chunk: 0, prefix_cache_bytes: 0, ..Default::default() };
    let e = engine(zeros);
    let (ids, _) = collect(e.generate(greedy(prompt("hi"), 3)).unwrap());
    assert!(!ids.is_empty());
}

#[test]
fn a_request_validated_for_other_limits_is_refused() {
    let e = engine(EngineConfig::default());
    let mut limits = e.limits().clone();
    limits.max_context = 1_000_000;
    let valid = greedy(prompt("hi"), 100_000).validate(&limits).unwrap();
    assert!(matches!(e.submit(valid), Err(EngineError::Validation { .. })));
}

#[test]
fn a_repeated_prompt_prefix_is_reused_and_gives_the_same_tokens() {
    let warm = engine(EngineConfig::default());
    let cold = engine(EngineConfig { prefix_cache_bytes: 0, ..EngineConfig::default() });
    let owls = prompt("Tell me about owls.");
    let first = collect(warm.generate(greedy(owls.clone(), 24)).unwrap());
    assert_eq!(warm.stats().prefix_reused_tokens(), 0);
    let again = collect(warm.generate(greedy(owls.clone(), 24)).unwrap());
    // All but the last prompt token, which must run to give the first logits.
    assert_eq!(warm.stats().prefix_reused_tokens(), owls.len() as u64 - 1);
    assert_eq!(first, again);

    // Another question behind the same template reuses the shared part only.
    let bees = prompt("Tell me about bees.");
    let shared = owls.iter().zip(&bees).take_while(|(a, b)| a == b).count();
    assert!(shared > 3 && shared < bees.len());
    let reused_before = warm.stats().prefix_reused_tokens();
    let from_prefix = collect(warm.generate(greedy(bees.clone(), 24)).unwrap());
    assert_eq!(warm.stats().prefix_reused_tokens() - reused_before, shared as u64);
    assert_eq!(from_prefix, collect(cold.generate(greedy(bees, 24)).unwrap()));
    assert_eq!(cold.stats().prefix_reused_tokens(), 0);
}

#[test]
fn prefixes_larger_than_the_prefix_cache_are_not_kept() {
    let tiny = engine(EngineConfig { prefix_cache_bytes: 1024, ..EngineConfig::default() });
    let p = prompt("Tell me about owls.");
    collect(tiny.generate(greedy(p.clone(), 4)).unwrap());
    collect(tiny.generate(greedy(p, 4)).unwrap());
    assert_eq!(tiny.stats().prefix_reused_tokens(), 0);
}

#[test]
fn a_kept_prefix_holds_the_prompts_memory_not_the_generations() {
    let e = engine(EngineConfig::default());
    let p = prompt("Tell me a story.");
    let request = GenerateRequest { ignore_eos: true, ..greedy(p.clone(), 400) };
    assert_eq!(collect(e.generate(request).unwrap()).0.len(), 400);
    wait_until("the prefix to be kept", || e.stats().prefix_cache_bytes() > 0);
    let (model, _) = loaded();
    assert_eq!(e.stats().prefix_cache_bytes(), model.kv_cache_bytes(p.len()));
}

#[test]
fn the_kv_budget_caps_the_context_and_a_sequence_that_does_not_fit_waits_its_turn() {
    let (model, _) = loaded();
    let budget = model.kv_cache_bytes(500);
    let e = engine(EngineConfig { kv_cache_bytes: budget, ..EngineConfig::default() });
    assert_eq!(e.limits().max_context, 500, "the context window shrinks to what the budget holds");
    // Two sequences of 300 positions each: the second waits for the first.
    let long = |text| GenerateRequest { ignore_eos: true, ..greedy(prompt(text), 300 - prompt(text).len()) };
    let first = e.generate(long("Tell me a story.")).unwrap();
    let second = e.generate(long("Tell me another.")).unwrap();
    wait_until("the first to start", || e.stats().active() == 1);
    assert_eq!(e.stats().queued(), 1, "the second waits in the queue, not in the batch");
    assert!(e.stats().kv_reserved_bytes() <= budget && e.stats().kv_budget_bytes() == budget);
    let (a, b) = (collect(first), collect(second));
    assert_eq!((a.0.len() + prompt("Tell me a story.").len(), b.1), (300, StopReason::Length));
    wait_until("the budget to be given back", || e.stats().kv_reserved_bytes() == 0);
}

#[test]
fn a_request_that_could_not_finish_before_its_deadline_is_refused_at_once() {
    let e = engine(EngineConfig::default());
    // Measure a decode step first: until then the engine has no estimate and refuses nothing.
    collect(e.generate(GenerateRequest { ignore_eos: true, ..greedy(prompt("Count."), 32) }).unwrap());
    wait_until("the warm-up to leave the batch", || e.stats().active() == 0);
    let soon = Some(Instant::now() + Duration::from_millis(200));
    // 900 decode steps take seconds on any CPU this model runs on.
    let long = || GenerateRequest { ignore_eos: true, ..greedy(prompt("Count to a thousand."), 900) };
    let refused = e.generate(GenerateRequest { deadline: soon, ..long() }).unwrap_err();
    assert!(matches!(refused, EngineError::WouldMissDeadline { eta, .. } if eta > Duration::from_millis(200)));
    assert_eq!(e.stats().queued() + e.stats().active(), 0, "nothing was queued");
    // Without a deadline, or with one it can make, the same request runs.
    let later = Some(Instant::now() + Duration::from_secs(3600));
    drop(e.generate(long()).unwrap());
    let (ids, _) = collect(e.generate(GenerateRequest { deadline: later, ..greedy(prompt("hi"), 4) }).unwrap());
    assert!(!ids.is_empty());
}
