//! `kiln`: the command line of the kiln inference server.
//!
//! `kiln serve` serves the HTTP API, `kiln pull` fetches the default model or one
//! from the Hugging Face Hub (`kiln list` / `kiln rm` manage the cache),
//! `kiln generate` streams a chat answer to stdout, `kiln bench` measures the engine (optionally side by side
//! with llama.cpp on the same file).

#![forbid(unsafe_code)]

mod bench;
mod config;
mod devices;
mod gpu_check;
mod keys;
mod load;
mod model_digest;
mod serve;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kiln_engine::{Backend as _, EngineConfig, GenerateRequest, SamplingParams, TokenEvent};

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "LLM inference server with WebAssembly pipeline plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as one JSON object each (for log collectors).
    #[arg(long, global = true, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A local GGUF file or `hf:ORG/REPO/FILE.gguf` (fetched on first use);
    /// by default SmolLM2-135M-Instruct (Q4_1), fetched on first use.
    #[arg(long, env = "KILN_MODEL")]
    pub model: Option<PathBuf>,
    /// Longest sequence, prompt plus output (default: the model's training context).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// How keys and values are stored: f16 (half the memory, logits within a
    /// tested bound of f32) or f32 (exact).
    /// [default: f16]
    #[arg(long, env = "KILN_KV_CACHE_TYPE")]
    pub kv_cache_type: Option<kiln_model::KvType>,
    /// Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when a device
    /// answers, else the CPU). The default stays cpu until the CUDA engine
    /// has passed its device check (tests/gpu/check.sh).
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: kiln_cuda::DeviceRequest,
    /// Share of the GPU's memory kiln may hold (weights, workspace, KV pool).
    #[arg(long, env = "KILN_GPU_MEMORY_FRACTION", default_value_t = kiln_cuda::budget::DEFAULT_MEMORY_FRACTION)]
    pub gpu_memory_fraction: f64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (the guide's endpoints and OpenAI's) on a model.
    // Boxed: the largest set of arguments by far (clippy::large_enum_variant).
    Serve(Box<serve::ServeArgs>),
    /// Fetch a model into the cache, verifying its sha256: the default one, or
    /// one from the Hugging Face Hub (HF_TOKEN and HF_ENDPOINT are honoured).
    Pull {
        /// `hf:ORG/REPO` or `hf:ORG/REPO/FILE.gguf`; the default model when absent.
        model: Option<String>,
        /// Which of a repository's GGUF files: the one whose name holds this (e.g. Q4_K_M).
        #[arg(long)]
        quant: Option<String>,
    },
    /// List the models in the cache.
    List,
    /// Delete a cached model (a name as `kiln list` shows it).
    Rm { name: String },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check a configuration file without starting the server.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Answer one prompt, streaming only the generated text to stdout.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// 0 is greedy (deterministic).
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0.0)]
        min_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// A system message (otherwise the model's template decides).
        #[arg(long)]
        system: Option<String>,
        /// Send the prompt as is, without the chat template.
        #[arg(long)]
        raw: bool,
        prompt: String,
    },
    /// Measure prefill, decode and batched decode throughput.
    Bench(bench::BenchArgs),
    /// List CUDA devices (driver, NVRTC, memory); --self-test checks every kernel on one.
    Devices(devices::DevicesArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Parse and validate FILE (keys, limits, plugins, pipelines); exit 1 naming the first problem.
    Check {
        #[arg(env = "KILN_CONFIG")]
        file: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kiln=info".into());
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Keys(command) => keys::run(command),
        Command::Devices(args) => devices::run(args),
        Command::Config(ConfigCommand::Check { file }) => {
            let summary = config::FileConfig::read(&file)?.check()?;
            println!("{}: ok ({summary})", file.display());
            Ok(())
        }
        Command::Pull { model: None, quant: None } => {
            let path = kiln_hub::pull(&kiln_hub::ModelSpec::DEFAULT, true)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Pull { model, quant } => {
            let Some(spec) = model else {
                anyhow::bail!("--quant picks among a Hub repository's files: name one (hf:ORG/REPO)")
            };
            let Some(model) = kiln_hub::HfModel::parse(&spec) else {
                anyhow::bail!("`{spec}` is not a Hub model: kiln pull takes hf:ORG/REPO or hf:ORG/REPO/FILE.gguf");
            };
            let source = kiln_hub::HfSource::from_env();
            let path = kiln_hub::pull_hf(&model?, quant.as_deref(), &source, &kiln_hub::cache_dir()?, true)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::List => {
            let dir = kiln_hub::cache_dir()?;
            for model in kiln_hub::cached_models(&dir)? {
                println!("{}\t{:.1} MiB\t{}", model.name, model.size as f64 / (1 << 20) as f64, model.path.display());
            }
            Ok(())
        }
        Command::Rm { name } => {
            let path = kiln_hub::remove_cached(&kiln_hub::cache_dir()?, &name)?;
            println!("deleted {}", path.display());
            Ok(())
        }
        Command::Generate {
            model,
            temperature,
            max_tokens,
            seed,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            system,
            raw,
            prompt,
        } => {
            let loaded = load::load(&model)?;
            let text = if raw { prompt } else { loaded.chat_prompt(system.as_deref(), &prompt)? };
            let prompt_tokens = loaded.tokenizer.encode(&text, true)?;
            let params =
                SamplingParams { temperature, top_p, top_k, min_p, repetition_penalty, seed, ..Default::default() };
            let engine = loaded.engine(EngineConfig::default());
            let max_tokens = max_tokens.min(engine.limits().max_context.saturating_sub(prompt_tokens.len()));
            let mut stream =
                engine.generate(GenerateRequest { prompt_tokens, params, max_tokens, ..Default::default() })?;
            let mut out = std::io::stdout().lock();
            loop {
                let Some(event) = stream.blocking_next() else {
                    anyhow::bail!("the engine stopped before the answer was complete (see the log above)");
                };
                match event {
                    TokenEvent::Token { text, .. } => {
                        out.write_all(text.as_bytes())?;
                        out.flush()?;
                    }
                    TokenEvent::Finished { tail, reason, counts } => {
                        out.write_all(tail.as_bytes())?;
                        // A terminal gets its prompt back on a fresh line; a pipe gets only the text.
                        if out.is_terminal() {
                            writeln!(out)?;
                        }
                        tracing::info!(?reason, counts.prompt_tokens, counts.completion_tokens, "done");
                        break;
                    }
                    TokenEvent::Failed(e) => anyhow::bail!("generation failed: {e}"),
                }
            }
            Ok(())
        }
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => bench::run(args).context("bench"),
    }
}
