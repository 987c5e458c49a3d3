//! The engine loop: continuous batching on a dedicated thread.
//!
//! Each step runs one forward pass over every running sequence: one token for
//! those decoding, a chunk of the prompt for those prefilling (bounded by
//! `prefill_chunk`, so a long prompt never stalls the decodes for long). New
//! requests join at the next step; finished or cancelled ones leave.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};

use kiln_model::{KvCache, Model, SeqBatchItem};
use kiln_tokenizer::{IncrementalDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use rayon::prelude::*;

use crate::prefix_cache::PrefixCache;
use crate::sampling::{Sampled, Sampler};
use crate::{EngineConfig, EngineStats, FinishReason, TokenEvent, Usage, ValidGenerateRequest};

pub(crate) struct Job {
    pub request: ValidGenerateRequest,
    pub events: UnboundedSender<TokenEvent>,
}

struct Sequence {
    prompt: Vec<u32>,
    prefilled: usize,
    input: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    /// The token sampled last step: the next step's input.
    last: Option<u32>,
    generated: usize,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    events: UnboundedSender<TokenEvent>,
    /// Finished this step: leaves the batch, its prompt's cache kept for reuse.
    finished: bool,
}

impl Sequence {
    fn usage(&self) -> Usage {
        Usage { prompt_tokens: self.prompt.len(), completion_tokens: self.generated }
    }
}

pub(crate) fn run(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    jobs: Receiver<Job>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
) {
    let mut running: Vec<Sequence> = Vec::new();
    let mut prefixes = PrefixCache::new(config.prefix_cache_bytes);
    let mut disconnected = false;
    loop {
        while running.len() < config.max_batch && !disconnected {
            let job = if running.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                continue;
            }
            let r = job.request;
            let cache = match prefixes.lookup(&r.prompt_tokens) {
                Some(cache) => {
                    stats.prefix_reused_tokens.fetch_add(cache.len() as u64, Ordering::Relaxed);
                    cache
                }
                None => model.new_cache(),
            };
            running.push(Sequence {
                sampler: Sampler::new(r.params, &r.prompt_tokens, r.logprobs, r.top_logprobs),
                prefilled: cache.len(),
                input: Vec::new(),
                cache,
                decoder: IncrementalDecoder::new(tokenizer.clone(), true),
                last: None,
                generated: 0,
                max_tokens: r.max_tokens,
                stop_ids: r.stop_token_ids,
                prompt: r.prompt_tokens,
                events: job.events,
                finished: false,
            });
        }
        // A dropped stream is a cancelled request: free its slot before the step.
        for seq in running.extract_if(.., |s| s.events.is_closed()) {
            prefixes.insert(seq.prompt, seq.cache);
        }
        stats.active.store(running.len(), Ordering::Relaxed);
        if running.is_empty() {
            if disconnected {
                return;
            }
            continue;
        }
        step(&model, &mut running, &config, &stats);
        for seq in running.extract_if(.., |s| s.finished) {
            prefixes.insert(seq.prompt, seq.cache);
        }
        stats.prefix_cache_bytes.store(prefixes.bytes(), Ordering::Relaxed);
        stats.active.store(running.len(), Ordering::Relaxed);
    }
}

/// Plans and runs one forward pass, then samples and emits for every sequence
/// that produced logits. Finished sequences are marked for the caller to remove.
fn step(model: &Model, running: &mut Vec<Sequence>, config: &EngineConfig, stats: &EngineStats) {
    let decoding = running.iter().filter(|s| s.prefilled == s.prompt.len()).count();
    let mut budget = config.prefill_chunk.saturating_sub(decoding).max(1);
    for seq in running.iter_mut() {
        seq.input.clear();
        if seq.prefilled < seq.prompt.len() {
            let take = (seq.prompt.len() - seq.prefilled).min(budget);
            seq.input.extend_from_slice(&seq.prompt[seq.prefilled..seq.prefilled + take]);
            seq.prefilled += take;
            budget -= take;
        } else if let Some(last) = seq.last {
            seq.input.push(last);
        }
    }
    let mut items: Vec<SeqBatchItem<'_>> = running
        .iter_mut()
        .filter(|s| !s.input.is_empty())
        .map(|s| SeqBatchItem { tokens: &s.input, logits: s.prefilled == s.prompt.len(), cache: &mut s.cache })
        .collect();
    // A panic in the forward pass (a bug) fails this batch, whose caches it may
    // have left half-written, but not the engine: later requests still run.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward(&mut items)));
    drop(items);
    stats.steps.fetch_add(1, Ordering::Relaxed);
    let logits = match result {
        Ok(Ok(l)) => l,
        failure => {
            let reason = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => "internal error in the forward pass".to_string(),
            };
            tracing::error!(error = %reason, sequences = running.len(), "forward pass failed; failing the batch");
            for seq in running.drain(..) {
                let _ = seq.events.send(TokenEvent::Failed(reason.clone()));
            }
            return;
        }
    };
    // Logits come back for the sequences that had input; line them up with
    // `running`, then sample every sequence in parallel on the pool (a pass
    // over the vocabulary each).
    let mut logits = logits.into_iter();
    let mut per_seq: Vec<Option<Vec<f32>>> =
        running.iter().map(|s| if s.input.is_empty() { None } else { logits.next().flatten() }).collect();
    let sampled: Vec<Option<Sampled>> = running
        .par_iter_mut()
        .zip(per_seq.par_iter_mut())
        .map(|(seq, l)| l.as_mut().map(|l| seq.sampler.sample(l)))
        .collect();
    let mut sampled = sampled.into_iter();
    // Finished sequences are only marked here; the caller takes them out.
    for seq in running.iter_mut() {
        let Some(Some(sampled)) = sampled.next() else { continue };
        seq.generated += 1;
        seq.last = Some(sampled.token);
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let stop = seq.stop_ids.binary_search(&sampled.token).is_ok();
        if !stop {
            let text = seq.decoder.push(sampled.token);
            let event = TokenEvent::Token {
                id: sampled.token,
                text,
                logprob: sampled.logprob,
                top_logprobs: sampled.top_logprobs,
            };
            if seq.events.send(event).is_err() {
                seq.finished = true;
                continue;
            }
        }
        let reason = if stop {
            Some(FinishReason::Stop)
        } else if seq.generated >= seq.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(reason) = reason {
            let tail = seq.decoder.finish();
            let _ = seq.events.send(TokenEvent::Finished { reason, usage: seq.usage(), tail });
            seq.finished = true;
        }
    }
}
