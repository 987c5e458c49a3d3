//! Per-step cost of a sampler plugin, at the default model's vocabulary
//! (49,152 tokens): the plugin's `step` call across the WebAssembly boundary
//! (default-sampler: no bitset; json-mode and json-schema: a bitset computed
//! by the guest and copied back), and the host applying an allowed bitset to
//! the logits.
//!
//! usage: cargo run --release -p kiln-pipeline --example sampler_hook_bench [STEPS]

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{Sampler, SamplingParams, StepPlan};
use kiln_plugins::{Loaded, Runtime, RuntimeConfig};
use kiln_tokenizer::Tokenizer;

fn percentiles(mut us: Vec<f64>) -> (f64, f64) {
    us.sort_by(f64::total_cmp);
    (us[us.len() / 2], us[(us.len() * 99) / 100])
}

fn main() {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let path = kiln_hub::resolve_model(None, true).expect("the default model");
    let mut f = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let tokenizer = Tokenizer::from_gguf(&content).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default(), Arc::new(kiln_pipeline::vocabulary(&tokenizer))).unwrap();
    println!("vocabulary {} tokens, {steps} steps each", tokenizer.vocab_size());

    // A JSON answer to replay through json-mode, token by token (wraps around),
    // and its compact form for json-schema, with a schema it holds.
    let answer =
        tokenizer.encode(r#"{"name": "Aurora", "kind": "owl", "age": 3, "tags": ["night", "forest"]}"#, false).unwrap();
    let compact =
        tokenizer.encode(r#"{"name":"Aurora","kind":"owl","age":3,"tags":["night","forest"]}"#, false).unwrap();
    let schema = r#"{"type":"object","required":["name","kind","age","tags"],"additionalProperties":false,
        "properties":{"name":{"type":"string"},"kind":{"enum":["owl","cat"]},"age":{"type":"integer"},
        "tags":{"type":"array","items":{"type":"string"}}}}"#;
    let schema_config = vec![("schema".to_string(), schema.to_string())];
    for (name, bytes, config, answer) in [
        ("default-sampler", kiln_plugins::first_party::DEFAULT_SAMPLER, &vec![], &answer),
        ("json-mode", kiln_plugins::first_party::JSON_MODE, &vec![], &answer),
        ("json-schema", kiln_plugins::first_party::JSON_SCHEMA, &schema_config, &compact),
    ] {
        let Loaded::Sampler(plugin) = runtime.load_bytes(name, bytes).unwrap() else { unreachable!() };
        // Measure the code that serves in the long run.
        runtime.wait_for_optimized_builds();
        let params = kiln_pipeline::plugin_params(&SamplingParams::greedy());
        let mut times = Vec::with_capacity(steps);
        let mut session = plugin.start(params, &[1, 2, 3], config).unwrap();
        let mut at = 0;
        for _ in 0..steps {
            let last = (at > 0).then(|| answer[at - 1]);
            let start = Instant::now();
            let plan = session.step(last).unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e6);
            at += 1;
            if plan.stop || at > answer.len() {
                session = plugin.start(params, &[1, 2, 3], config).unwrap();
                at = 0;
            }
        }
        let (p50, p99) = percentiles(times);
        println!("{name:<16} step() across the boundary: p50 {p50:7.1} us   p99 {p99:7.1} us");
        // Starting a session: a fresh instance, and whatever the plugin sets up.
        let starts: Vec<f64> = (0..50)
            .map(|_| {
                let start = Instant::now();
                drop(plugin.start(params, &[1, 2, 3], config).unwrap());
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let (p50, p99) = percentiles(starts);
        println!("{name:<16} start() of a session:     p50 {p50:7.1} us   p99 {p99:7.1} us");
    }

    // The host's side: sampling 49,152 logits with and without an allowed bitset.
    let vocab = tokenizer.vocab_size();
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let mut words = vec![0u64; vocab.div_ceil(64)];
    (0..vocab).step_by(3).for_each(|i| words[i / 64] |= 1 << (i % 64));
    for (label, plan) in [
        ("host sampling, no plan", StepPlan::default()),
        ("host sampling, bitset", StepPlan { allowed: Some(words), ..StepPlan::default() }),
    ] {
        let mut sampler = Sampler::new(SamplingParams::greedy(), &[], false, 0);
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let mut l = logits.clone();
            let start = Instant::now();
            sampler.sample_with(&mut l, &plan, None).unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let (p50, p99) = percentiles(times);
        println!("{label:<30} p50 {p50:7.1} us   p99 {p99:7.1} us");
    }
}
