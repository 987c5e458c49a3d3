//! Decode throughput with the output constrained, against unconstrained, on
//! the real engine and model: json-mode (any JSON object) and json-schema (a
//! schema whose answers run long: at least six lines), each a
//! sampler plugin building an allowed-token bitset every step. Rounds
//! alternate between the arms so drift in the machine's speed hits all
//! alike; medians of tokens per second and their ratios are printed.
//!
//! usage: cargo run --release -p kiln-pipeline --example constrained_decode_bench [ROUNDS] [TOKENS]

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{Engine, EngineConfig, GenerateRequest, SamplingParams, SamplingPolicy, TokenEvent};
use kiln_model::Model;
use kiln_pipeline::{PluginHost, PluginsConfig};
use kiln_tokenizer::Tokenizer;

/// At least six lines of eight characters: left free, the model closes a
/// JSON answer after a few tokens, and short answers would time mostly the
/// other sequences' prefill.
const SCHEMA: &str = r#"{"type": "object", "required": ["title", "lines"], "additionalProperties": false,
    "properties": {"title": {"type": "string", "maxLength": 40},
                   "lines": {"type": "array", "items": {"type": "string", "minLength": 8}, "minItems": 6}}}"#;

#[derive(Clone, Copy, PartialEq)]
enum Arm {
    Free,
    JsonMode,
    JsonSchema,
}

struct Bench {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    plugins: PluginHost,
}

impl Bench {
    /// Runs `sequences` requests at once; generated tokens per second from
    /// the first token on (the prompts' prefill left out: constrained
    /// answers may end sooner) and tokens per answer.
    fn run(&self, arm: Arm, sequences: usize, tokens: usize) -> (f64, f64) {
        let params = SamplingParams::greedy();
        let started = Instant::now();
        let streams: Vec<_> = (0..sequences)
            .map(|i| {
                let text = format!(
                    "<|im_start|>user\nWrite poem number {i} about the sea, as JSON.<|im_end|>\n<|im_start|>assistant\n"
                );
                let prompt = self.tokenizer.encode(&text, true).unwrap();
                let policy: Option<Box<dyn SamplingPolicy>> = match arm {
                    Arm::Free => None,
                    Arm::JsonMode => Some(self.plugins.json_policy(&params, &prompt, tokens).unwrap()),
                    Arm::JsonSchema => Some(self.plugins.json_schema_policy(&params, &prompt, tokens, SCHEMA).unwrap()),
                };
                let request = GenerateRequest {
                    prompt_tokens: prompt,
                    params: params.clone(),
                    max_tokens: tokens,
                    ignore_eos: true,
                    policy,
                    ..Default::default()
                };
                self.engine.generate(request).unwrap()
            })
            .collect();
        let (mut generated, mut first, mut last) = (0, None::<Instant>, started);
        for mut stream in streams {
            while let Some(event) = stream.blocking_next() {
                match event {
                    TokenEvent::Token { .. } => {
                        generated += 1;
                        let now = Instant::now();
                        first = Some(first.map_or(now, |f| f.min(now)));
                        last = last.max(now);
                    }
                    TokenEvent::Finished { .. } => break,
                    TokenEvent::Failed(e) => panic!("{e}"),
                }
            }
        }
        let span = (last - first.unwrap_or(started)).as_secs_f64();
        ((generated - sequences) as f64 / span, generated as f64 / sequences as f64)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let tokens: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(96);
    let path = kiln_hub::resolve_model(None, true).expect("the default model");
    let model = Arc::new(Model::load(&path, Some(2048)).unwrap());
    let mut f = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_gguf(&content).unwrap());
    let plugins = PluginHost::new(&tokenizer, PluginsConfig::default()).unwrap();
    // Measure the code that serves in the long run.
    plugins.wait_for_optimized_builds();
    let config = EngineConfig { prefix_cache_bytes: 0, ..EngineConfig::default() };
    let engine = Engine::start(model, tokenizer.clone(), config);
    let bench = Bench { engine, tokenizer, plugins };
    println!("{rounds} alternating rounds, up to {tokens} greedy tokens per sequence");
    println!(
        "{:>10} {:>14} {:>14} {:>8} {:>14} {:>8}   tokens per answer",
        "sequences", "free tok/s", "json-mode", "ratio", "json-schema", "ratio"
    );
    for sequences in [1, 16] {
        for arm in [Arm::Free, Arm::JsonMode, Arm::JsonSchema] {
            bench.run(arm, sequences, tokens); // warm-up
        }
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut lengths: [Vec<f64>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        for _ in 0..rounds {
            let runs: Vec<(f64, f64)> =
                [Arm::Free, Arm::JsonMode, Arm::JsonSchema].iter().map(|&a| bench.run(a, sequences, tokens)).collect();
            let r: Vec<f64> = runs.iter().map(|x| x.0).collect();
            for (i, (rate, len)) in runs.iter().enumerate() {
                rates[i].push(*rate);
                lengths[i].push(*len);
            }
            ratios[0].push(r[1] / r[0]);
            ratios[1].push(r[2] / r[0]);
        }
        let [free, mode, schema] = rates.map(median);
        let [rm, rs] = ratios.map(median);
        let [lf, lm, ls] = lengths.map(median);
        println!(
            "{sequences:>10} {free:>14.1} {mode:>14.1} {rm:>8.3} {schema:>14.1} {rs:>8.3}   {lf:.0} / {lm:.0} / {ls:.0}"
        );
    }
}
