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
    /// answers may end sooner), the same while all sequences run, and
    /// tokens per answer.
    fn run(&self, arm: Arm, sequences: usize, tokens: usize) -> (f64, f64, f64) {
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
        // Each stream read on a thread of its own, so each token is timed
        // when it comes, not when the reader gets to its stream.
        let times: Vec<Vec<Instant>> = std::thread::scope(|scope| {
            let readers: Vec<_> = streams
                .into_iter()
                .map(|mut stream| {
                    scope.spawn(move || {
                        let mut times = Vec::new();
                        while let Some(event) = stream.blocking_next() {
                            match event {
                                TokenEvent::Token { .. } => times.push(Instant::now()),
                                TokenEvent::Finished { .. } => break,
                                TokenEvent::Failed(e) => panic!("{e}"),
                            }
                        }
                        times
                    })
                })
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let generated: usize = times.iter().map(Vec::len).sum();
        let first = times.iter().filter_map(|t| t.first()).min().copied().unwrap_or(started);
        let last = times.iter().filter_map(|t| t.last()).max().copied().unwrap_or(started);
        let overall = (generated - sequences) as f64 / (last - first).as_secs_f64();
        // While every sequence runs: from the last first token to the first
        // last token (answers that end sooner leave a smaller batch behind).
        let from = times.iter().filter_map(|t| t.first()).max().copied().unwrap_or(started);
        let to = times.iter().filter_map(|t| t.last()).min().copied().unwrap_or(started);
        let inside: usize = times.iter().map(|t| t.iter().filter(|&&at| at > from && at <= to).count()).sum();
        let full = if to > from { inside as f64 / (to - from).as_secs_f64() } else { f64::NAN };
        (overall, full, generated as f64 / sequences as f64)
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
    println!("tok/s from the first token to the last; [while all sequences run]");
    println!(
        "{:>10} {:>14} {:>14} {:>16} {:>14} {:>16}   tokens per answer",
        "sequences", "free tok/s", "json-mode", "ratio [all]", "json-schema", "ratio [all]"
    );
    for sequences in [1, 16] {
        for arm in [Arm::Free, Arm::JsonMode, Arm::JsonSchema] {
            bench.run(arm, sequences, tokens); // warm-up
        }
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut lengths: [Vec<f64>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 4] = Default::default();
        for _ in 0..rounds {
            let runs: Vec<(f64, f64, f64)> =
                [Arm::Free, Arm::JsonMode, Arm::JsonSchema].iter().map(|&a| bench.run(a, sequences, tokens)).collect();
            for (i, (rate, _, len)) in runs.iter().enumerate() {
                rates[i].push(*rate);
                lengths[i].push(*len);
            }
            ratios[0].push(runs[1].0 / runs[0].0);
            ratios[1].push(runs[1].1 / runs[0].1);
            ratios[2].push(runs[2].0 / runs[0].0);
            ratios[3].push(runs[2].1 / runs[0].1);
        }
        let [free, mode, schema] = rates.map(median);
        let [rm, rm_all, rs, rs_all] = ratios.map(median);
        let [lf, lm, ls] = lengths.map(median);
        println!(
            "{sequences:>10} {free:>14.1} {mode:>14.1} {rm:>7.3} [{rm_all:.3}] {schema:>14.1} {rs:>7.3} [{rs_all:.3}]   {lf:.0} / {lm:.0} / {ls:.0}"
        );
    }
}
