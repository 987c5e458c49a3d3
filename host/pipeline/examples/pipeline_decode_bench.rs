//! Decode throughput of the default pipeline (chat-template and
//! default-sampler as WebAssembly plugins) against the same pipeline built
//! into the host (`native`: the host's template renderer and sampler), on
//! the real engine and model. Rounds alternate between the two so drift in
//! the machine's speed hits both alike; medians and their ratio are printed.
//!
//! usage: cargo run --release -p kiln-pipeline --example pipeline_decode_bench [ROUNDS] [TOKENS]

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{Engine, EngineConfig, GenerateRequest, SamplingParams, TokenEvent};
use kiln_model::Model;
use kiln_pipeline::{Conversation, ModelTemplate, PluginHost, PluginsConfig};
use kiln_tokenizer::Tokenizer;

const QUESTIONS: [&str; 8] = [
    "Tell me about the sea.",
    "Explain how bread rises.",
    "Describe a mountain village.",
    "Why is the sky blue?",
    "What do owls eat?",
    "How do trains work?",
    "Write about autumn.",
    "What is a prime number?",
];

struct Bench {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    template: kiln_chat::ChatTemplate,
    plugins: PluginHost,
}

impl Bench {
    /// Runs `sequences` requests at once through `pipeline`; generated tokens per second.
    fn run(&self, pipeline: &str, sequences: usize, tokens: usize) -> f64 {
        let resolved = self.plugins.resolve(Some(pipeline)).unwrap();
        let params = SamplingParams::greedy();
        let started = Instant::now();
        let streams: Vec<_> = (0..sequences)
            .map(|i| {
                let question = QUESTIONS[i % QUESTIONS.len()];
                let model = ModelTemplate {
                    source: self.template.source(),
                    bos_token: self.template.bos_token(),
                    eos_token: self.template.eos_token(),
                };
                let messages = [kiln_chat::ChatMessage::new("user", question)];
                let conversation = Conversation {
                    messages: &messages,
                    tools: &[],
                    tool_choice: &kiln_chat::ToolChoice::Auto,
                    add_generation_prompt: true,
                };
                let text = match resolved.render(&conversation, model) {
                    Some(rendered) => rendered.unwrap().prompt,
                    None => self.template.render(&messages, true).unwrap(),
                };
                let prompt = self.tokenizer.encode(&text, true).unwrap();
                let policy = resolved.sampler(&params, &prompt, tokens).unwrap();
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
        let mut generated = 0;
        for mut stream in streams {
            while let Some(event) = stream.blocking_next() {
                match event {
                    TokenEvent::Token { .. } => generated += 1,
                    TokenEvent::Finished { .. } => break,
                    TokenEvent::Failed(e) => panic!("{pipeline}: {e}"),
                }
            }
        }
        generated as f64 / started.elapsed().as_secs_f64()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(7);
    let tokens: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let path = kiln_hub::resolve_model(None, true).expect("the default model");
    let model = Arc::new(Model::load(&path, Some(2048)).unwrap());
    let mut f = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_gguf(&content).unwrap());
    let template = kiln_chat::ChatTemplate::new(tokenizer.chat_template(), "", "<|im_end|>").unwrap();
    let plugins = PluginHost::new(&tokenizer, PluginsConfig::default()).unwrap();
    // Measure the code that serves in the long run.
    plugins.wait_for_optimized_builds();
    // No prefix cache: every request prefills its whole prompt, in both arms alike.
    let config = EngineConfig { prefix_cache_bytes: 0, ..EngineConfig::default() };
    let engine = Engine::start(model, tokenizer.clone(), config);
    let bench = Bench { engine, tokenizer, template, plugins };
    println!("{rounds} alternating rounds of {tokens} greedy tokens per sequence (ignore_eos)");
    println!("{:>10} {:>16} {:>16} {:>8}", "sequences", "native tok/s", "default tok/s", "ratio");
    for sequences in [1, 8] {
        bench.run("native", sequences, 16); // warm-up
        bench.run("default", sequences, 16);
        let (mut native, mut default, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let n = bench.run("native", sequences, tokens);
            let d = bench.run("default", sequences, tokens);
            native.push(n);
            default.push(d);
            ratios.push(d / n);
        }
        let (n, d, r) = (median(native), median(default), median(ratios));
        println!("{sequences:>10} {n:>16.1} {d:>16.1} {r:>8.3}   (default pipeline loses {:.1} %)", (1.0 - r) * 100.0);
    }
}
