//! `kiln bench`: engine throughput, each figure the median of several runs,
//! optionally side by side with llama.cpp's `llama-bench` and
//! `llama-batched-bench` on the same GGUF file, in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kiln_engine::{Engine, EngineConfig, GenerateRequest, SamplingParams, TokenEvent};
use serde_json::{Value, json};

use crate::ModelArgs;
use crate::load::{self, Loaded};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Folder holding llama.cpp's `llama-bench` and `llama-batched-bench`: run
    /// them on the same file (`-t THREADS`) and report kiln/llama.cpp ratios.
    #[arg(long)]
    compare_llama_cpp: Option<PathBuf>,
    /// Threads for kiln's kernels and for llama.cpp (`-t`).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, |n| n.get()))]
    threads: usize,
}

const PROMPT_LEN: usize = 128;
const GEN_LEN: usize = 128;
/// Prompt length of each sequence in the batched runs (llama-batched-bench `-npp`).
const BATCH_PROMPT_LEN: usize = 32;

const TEXT: &str = "The history of computing is a story of abstraction layered on abstraction. \
    Early machines were programmed by rewiring panels; then came stored programs, assemblers, \
    compilers and operating systems, each hiding the details of the layer below. Today a single \
    line of code can start thousands of processes across continents. ";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tokens(loaded: &Loaded, n: usize, offset: usize) -> Result<Vec<u32>> {
    let ids = loaded.tokenizer.encode(&TEXT.repeat(1 + (n + offset) / 40), false)?;
    if ids.len() < n + offset {
        bail!("bench text too short");
    }
    Ok(ids[offset..offset + n].to_vec())
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: prompt,
        params: SamplingParams::greedy(),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Submits every prompt at once; returns each sequence's token arrival times.
fn run_batch(engine: &Engine, prompts: Vec<Vec<u32>>, max_tokens: usize) -> Result<(Instant, Vec<Vec<Instant>>)> {
    let start = Instant::now();
    let streams =
        prompts.into_iter().map(|p| engine.generate(request(p, max_tokens))).collect::<Result<Vec<_>, _>>()?;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut times = Vec::new();
                while let Some(ev) = s.blocking_next() {
                    match ev {
                        TokenEvent::Token { .. } => times.push(Instant::now()),
                        TokenEvent::Finished { .. } => return Ok(times),
                        TokenEvent::Failed(e) => return Err(anyhow::anyhow!(e)),
                    }
                }
                Err(anyhow::anyhow!("stream ended early"))
            })
        })
        .collect();
    let times = handles.into_iter().map(|h| h.join().expect("bench thread")).collect::<Result<Vec<_>>>()?;
    Ok((start, times))
}

/// Aggregate tokens/s while all sequences are decoding: from the last first
/// token to the first finish, the tokens that arrived in between.
fn steady_decode_tps(times: &[Vec<Instant>]) -> f64 {
    let t0 = times.iter().map(|t| t[0]).max().expect("sequences");
    let t1 = times.iter().map(|t| *t.last().expect("tokens")).min().expect("sequences");
    let n = times.iter().flat_map(|t| t.iter()).filter(|&&t| t > t0 && t <= t1).count();
    n as f64 / (t1 - t0).as_secs_f64().max(1e-9)
}

pub fn run(args: BenchArgs) -> Result<()> {
    // kiln and llama.cpp get the same number of threads.
    rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global().context("sizing the thread pool")?;
    let loaded = load::load(&args.model)?;
    let engine = loaded.engine(EngineConfig {
        max_batch: 16,
        max_queue: 64,
        prefill_chunk: 512,
        prefix_cache_bytes: 0,
        ..EngineConfig::default()
    });
    let runs = args.runs.max(1);
    // One untimed pass warms caches and the thread pool.
    run_batch(&engine, vec![tokens(&loaded, PROMPT_LEN, 0)?], 8)?;
    let (mut prefill, mut ttft, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (start, times) = run_batch(&engine, vec![tokens(&loaded, PROMPT_LEN, 0)?], GEN_LEN)?;
        let first = times[0][0] - start;
        ttft.push(first.as_secs_f64() * 1e3);
        prefill.push(PROMPT_LEN as f64 / first.as_secs_f64());
        let t = &times[0];
        decode.push((t.len() - 1) as f64 / (*t.last().unwrap() - t[0]).as_secs_f64());
    }
    let mut batched = Vec::new();
    for n in [4usize, 16] {
        let mut v = Vec::new();
        for _ in 0..runs {
            let prompts = (0..n).map(|i| tokens(&loaded, BATCH_PROMPT_LEN, i * 3)).collect::<Result<Vec<_>>>()?;
            v.push(steady_decode_tps(&run_batch(&engine, prompts, GEN_LEN)?.1));
        }
        batched.push(median(v));
    }
    let mut report = json!({
        "model": loaded.path.display().to_string(),
        "runs": runs,
        "prefill_tps": median(prefill),
        "decode_tps": median(decode),
        "decode_tps_4": batched[0],
        "decode_tps_16": batched[1],
        "ttft_ms": median(ttft),
    });
    if let Some(dir) = &args.compare_llama_cpp {
        let anchor = llama_cpp(dir, &loaded.path, args.threads, runs)?;
        let ratio = |k: &str| report[k].as_f64().unwrap_or(0.0) / anchor[k].as_f64().unwrap_or(f64::NAN);
        let ratios = json!({
            "prefill_tps": ratio("prefill_tps"),
            "decode_tps": ratio("decode_tps"),
            "decode_tps_4": ratio("decode_tps_4"),
            "decode_tps_16": ratio("decode_tps_16"),
        });
        report["llama_cpp"] = anchor;
        report["ratio"] = ratios;
    }
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Value) {
    let rows = [
        ("prefill_tps", "prefill tok/s (128-token prompt)"),
        ("decode_tps", "decode tok/s, 1 sequence"),
        ("decode_tps_4", "decode tok/s, 4 sequences (aggregate)"),
        ("decode_tps_16", "decode tok/s, 16 sequences (aggregate)"),
        ("ttft_ms", "time to first token, ms (128-token prompt)"),
    ];
    let has_anchor = r.get("llama_cpp").is_some();
    println!(
        "{:<44} {:>10}{}",
        "",
        "kiln",
        if has_anchor { format!(" {:>10} {:>7}", "llama.cpp", "ratio") } else { String::new() }
    );
    for (k, label) in rows {
        let ours = r[k].as_f64().unwrap_or(f64::NAN);
        if has_anchor && k != "ttft_ms" {
            let theirs = r["llama_cpp"][k].as_f64().unwrap_or(f64::NAN);
            println!("{label:<44} {ours:>10.1} {theirs:>10.1} {:>6.2}x", ours / theirs);
        } else {
            println!("{label:<44} {ours:>10.1}");
        }
    }
}

/// llama.cpp's figures for the same workloads: `llama-bench` pp128/tg128 and
/// `llama-batched-bench` decode speed at 1, 4 and 16 sequences.
fn llama_cpp(dir: &Path, model: &Path, threads: usize, runs: usize) -> Result<Value> {
    let t = threads.to_string();
    let m = model.to_str().context("model path is not UTF-8")?;
    let bench = json_lines(Command::new(dir.join("llama-bench")).args([
        "-m",
        m,
        "-t",
        &t,
        "-p",
        "128",
        "-n",
        "128",
        "-r",
        &runs.max(2).to_string(),
        "-o",
        "jsonl",
    ]))?;
    let pick = |key: &str| bench.iter().find(|l| l[key].as_u64() == Some(128)).and_then(|l| l["avg_ts"].as_f64());
    let batched = json_lines(Command::new(dir.join("llama-batched-bench")).args([
        "-m",
        m,
        "-t",
        &t,
        "-c",
        "4096",
        "-npp",
        "32",
        "-ntg",
        "128",
        "-npl",
        "1,4,16",
        "--output-format",
        "jsonl",
    ]))?;
    let tg = |pl: u64| batched.iter().find(|l| l["pl"].as_u64() == Some(pl)).and_then(|l| l["speed_tg"].as_f64());
    Ok(json!({
        "prefill_tps": pick("n_prompt"),
        "decode_tps": pick("n_gen"),
        "decode_tps_1_batched": tg(1),
        "decode_tps_4": tg(4),
        "decode_tps_16": tg(16),
    }))
}

fn json_lines(cmd: &mut Command) -> Result<Vec<Value>> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
