//! The engine loop: continuous batching on a dedicated thread.
//!
//! Each step runs one forward pass over every running sequence: one token for
//! those decoding, a chunk of the prompt for those prefilling (bounded by
//! `prefill_chunk`, so a long prompt never stalls the decodes for long). New
//! requests join at the next step; finished or cancelled ones leave.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use kiln_model::{ModelBackend, SeqCache, StepSeq};
use kiln_tokenizer::{IncrementalDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use rayon::prelude::*;

use crate::load::{self, Load};
use crate::prefix_cache::PrefixCache;
use crate::sampling::{Sampled, Sampler};
use crate::{
    EngineConfig, EngineStats, GenerationError, PolicyError, SamplingPolicy, StopReason, TokenCounts, TokenEvent,
    ValidGenerateRequest,
};

pub(crate) struct Job {
    pub request: ValidGenerateRequest,
    /// One channel per answer asked for (`n`).
    pub events: Vec<UnboundedSender<TokenEvent>>,
    /// What [`Load`] counts it to cost, every answer together.
    pub work: load::Work,
    /// The output one answer is expected to take.
    pub one_output: usize,
}

/// A further answer to a sequence's prompt, started once the prompt has run.
struct Fork {
    events: UnboundedSender<TokenEvent>,
    policy: Option<Box<dyn SamplingPolicy>>,
    seed: Option<u64>,
    /// The output it is expected to take ([`Load`]).
    output: usize,
}

/// What the engine thread shares with [`crate::Engine`].
pub(crate) struct Shared {
    pub stats: Arc<EngineStats>,
    pub load: Arc<Load>,
}

struct Sequence {
    prompt: Vec<u32>,
    prefilled: usize,
    input: Vec<u32>,
    cache: Box<dyn SeqCache>,
    sampler: Sampler,
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    /// A sampler plugin's per-token plans, when the request has one.
    policy: Option<Box<dyn SamplingPolicy>>,
    /// Tokens emitted but not yet run through the model: the next step's input.
    pending: Vec<u32>,
    /// The token emitted last (what the policy sees as `last`).
    last: Option<u32>,
    generated: usize,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    events: UnboundedSender<TokenEvent>,
    /// Finished this step: leaves the batch, its prompt's cache kept for reuse.
    finished: bool,
    /// Ended by a stop token, `max_tokens` or its policy (not cancelled or failed).
    completed: bool,
    /// False after a failed forward pass: its cache is not kept for reuse.
    cache_intact: bool,
    /// Bytes of the KV budget it set aside.
    reserved: usize,
    /// Its expected work not yet run.
    work_left: load::Work,
    /// What of it this step runs.
    ran: load::Work,
    deadline: Option<Instant>,
    /// Answers still to start from this one's prompt (`n` > 1): they start
    /// the step its prompt's logits come back, from copies of its cache.
    forks: Vec<Fork>,
    /// KV budget each answer sets aside.
    reserved_each: usize,
}

impl Sequence {
    fn counts(&self) -> TokenCounts {
        TokenCounts { prompt_tokens: self.prompt.len(), completion_tokens: self.generated }
    }

    /// The policy's plan carried out on this step's logits.
    fn decide(&mut self, logits: &mut [f32]) -> Decision {
        let Some(policy) = self.policy.as_mut() else {
            return Decision::Sampled(self.sampler.sample(logits));
        };
        let plan = match policy.step(self.last) {
            Ok(plan) => plan,
            Err(e) => return Decision::Failed(e),
        };
        if plan.stop {
            return Decision::Stop;
        }
        if !plan.forced.is_empty() {
            return match plan.forced.iter().find(|&&t| t as usize >= logits.len()) {
                Some(t) => Decision::Failed(PolicyError::InvalidPlan {
                    policy: policy.name(),
                    problem: format!("forced token {t} is outside the vocabulary"),
                }),
                None => Decision::Forced(plan.forced),
            };
        }
        match self.sampler.sample_with(logits, &plan, Some(policy.as_mut())) {
            Ok(sampled) => Decision::Sampled(sampled),
            Err(e) => Decision::Failed(e),
        }
    }

    /// Emits one generated token; returns whether the sequence goes on.
    fn emit(&mut self, token: u32, logprob: Option<f32>, top_logprobs: Vec<(u32, f32)>, stats: &EngineStats) -> bool {
        self.generated += 1;
        self.last = Some(token);
        self.pending.push(token);
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if self.stop_ids.binary_search(&token).is_ok() {
            self.finish(StopReason::Stop);
            return false;
        }
        let text = self.decoder.push(token);
        if self.events.send(TokenEvent::Token { id: token, text, logprob, top_logprobs }).is_err() {
            self.finished = true;
            return false;
        }
        if self.generated >= self.max_tokens {
            self.finish(StopReason::Length);
            return false;
        }
        true
    }

    fn finish(&mut self, reason: StopReason) {
        let tail = self.decoder.finish();
        let _ = self.events.send(TokenEvent::Finished { reason, counts: self.counts(), tail });
        self.finished = true;
        self.completed = true;
    }

    fn is_decoding(&self) -> bool {
        self.prefilled == self.prompt.len()
    }

    /// Another answer to this prompt, starting from its cache as it stands
    /// (the whole prompt, nothing generated yet).
    fn fork(&mut self, fork: Fork, tokenizer: &Arc<Tokenizer>) -> Sequence {
        self.reserved -= self.reserved_each;
        Sequence {
            prompt: self.prompt.clone(),
            prefilled: self.prefilled,
            input: Vec::new(),
            cache: self.cache.prefix(self.cache.len()),
            sampler: self.sampler.fork(fork.seed),
            decoder: IncrementalDecoder::new(tokenizer.clone(), true),
            policy: fork.policy,
            pending: Vec::new(),
            last: None,
            generated: 0,
            max_tokens: self.max_tokens,
            stop_ids: self.stop_ids.clone(),
            events: fork.events,
            finished: false,
            completed: false,
            cache_intact: true,
            reserved: self.reserved_each,
            work_left: load::Work { prompt: 0, output: fork.output },
            ran: load::Work::default(),
            deadline: self.deadline,
            forks: Vec::new(),
            reserved_each: self.reserved_each,
        }
    }

    /// Gives back what it held of the budget and the backlog as it leaves the batch.
    fn leave(self, reserved: &mut usize, load: &Load, prefixes: &mut PrefixCache) {
        *reserved -= self.reserved;
        load.settle(self.work_left);
        // Answers that never started: their streams end with their senders.
        for fork in &self.forks {
            load.settle(load::Work { prompt: 0, output: fork.output });
        }
        if self.completed {
            load.record_output(self.generated);
        }
        if self.cache_intact {
            prefixes.insert(self.prompt, self.cache);
        }
    }
}

/// What a sequence does with this step's logits.
enum Decision {
    Sampled(Sampled),
    /// Tokens the policy emits without sampling.
    Forced(Vec<u32>),
    Stop,
    Failed(PolicyError),
}

pub(crate) fn run(
    model: Arc<dyn ModelBackend>,
    tokenizer: Arc<Tokenizer>,
    jobs: Receiver<Job>,
    config: EngineConfig,
    shared: Shared,
) {
    let Shared { stats, load } = shared;
    let mut running: Vec<Sequence> = Vec::new();
    let mut prefixes = PrefixCache::new(config.prefix_cache_bytes);
    let mut disconnected = false;
    // The next job, taken from the queue but waiting for KV memory: it keeps
    // its place ahead of every later one.
    let mut held: Option<Job> = None;
    // Bytes of the KV budget the running sequences set aside.
    let mut reserved = 0usize;
    loop {
        while running.len() < config.max_batch {
            let job = match held.take() {
                Some(job) => job,
                None if disconnected => break,
                None if running.is_empty() => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
                None => match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                },
            };
            if job.events.iter().all(|e| e.is_closed()) {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                load.settle(job.work);
                continue;
            }
            let positions = job.request.prompt_tokens.len() + job.request.max_tokens;
            let need_each = model.kv_cache_bytes(positions);
            let need = need_each * job.events.len();
            // Alone in the batch a sequence always fits: the context window
            // was capped to the budget.
            if reserved + need > config.kv_cache_bytes && !running.is_empty() {
                held = Some(job);
                break;
            }
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            let Job { request: r, events, work, one_output } = job;
            // Queued behind more than it was expected to be: failing it now
            // leaves its turn to requests that can still finish in time.
            let hopeless = r
                .deadline
                .is_some_and(|deadline| load.eta_alone(work).is_some_and(|alone| Instant::now() + alone > deadline));
            if hopeless {
                for e in &events {
                    let _ = e.send(TokenEvent::Failed(GenerationError::WouldMissDeadline));
                }
                load.settle(work);
                continue;
            }
            reserved += need;
            let mut cache = match prefixes.lookup(&r.prompt_tokens) {
                Some(cache) => {
                    stats.prefix_reused_tokens.fetch_add(cache.len() as u64, Ordering::Relaxed);
                    cache
                }
                None => model.new_cache(),
            };
            cache.reserve(positions);
            // A reused prefix is prompt that will not run.
            let reused = load::Work { prompt: cache.len().min(work.prompt), output: 0 };
            load.settle(reused);
            let mut events = events.into_iter();
            let Some(first) = events.next() else { continue };
            let seed = r.params.seed;
            let mut policies = r.sibling_policies.into_iter();
            let forks = (1u64..)
                .zip(events)
                .map(|(i, events)| Fork {
                    events,
                    policy: policies.next(),
                    seed: seed.map(|s| s.wrapping_add(i)),
                    output: one_output,
                })
                .collect();
            running.push(Sequence {
                sampler: Sampler::new(r.params, &r.prompt_tokens, r.logprobs, r.top_logprobs),
                prefilled: cache.len(),
                input: Vec::new(),
                cache,
                decoder: IncrementalDecoder::new(tokenizer.clone(), true),
                policy: r.policy,
                pending: Vec::new(),
                last: None,
                generated: 0,
                max_tokens: r.max_tokens,
                stop_ids: r.stop_token_ids,
                prompt: r.prompt_tokens,
                events: first,
                finished: false,
                completed: false,
                cache_intact: true,
                reserved: need,
                work_left: load::Work { prompt: work.prompt - reused.prompt, output: one_output },
                ran: load::Work::default(),
                deadline: r.deadline,
                forks,
                reserved_each: need_each,
            });
        }
        // A dropped stream is a cancelled request: free its slot before the step.
        for seq in running.extract_if(.., |s| s.events.is_closed()) {
            seq.leave(&mut reserved, &load, &mut prefixes);
        }
        stats.kv_reserved_bytes.store(reserved, Ordering::Relaxed);
        stats.active.store(running.len(), Ordering::Relaxed);
        if running.is_empty() {
            // Otherwise counted once per step, below.
            stats.kv_cache_bytes.store(0, Ordering::Relaxed);
            if disconnected && held.is_none() {
                return;
            }
            continue;
        }
        step(model.as_ref(), &tokenizer, &mut running, &config, &stats, &load);
        for seq in running.extract_if(.., |s| s.finished) {
            seq.leave(&mut reserved, &load, &mut prefixes);
        }
        stats.prefix_cache_bytes.store(prefixes.bytes(), Ordering::Relaxed);
        stats.kv_cache_bytes.store(running.iter().map(|s| s.cache.size_in_bytes()).sum(), Ordering::Relaxed);
        stats.kv_reserved_bytes.store(reserved, Ordering::Relaxed);
        stats.active.store(running.len(), Ordering::Relaxed);
    }
}

/// Plans and runs one forward pass, then samples and emits for every sequence
/// that produced logits. Finished sequences are marked for the caller to remove.
fn step(
    model: &dyn ModelBackend,
    tokenizer: &Arc<Tokenizer>,
    running: &mut Vec<Sequence>,
    config: &EngineConfig,
    stats: &EngineStats,
    load: &Load,
) {
    let decoding = running.iter().filter(|s| s.is_decoding()).count();
    let mut budget = config.prefill_chunk.saturating_sub(decoding).max(1);
    // Finishing admitted work comes first: while a decoding sequence would
    // make its deadline only with steps free of prompt chunks, the prompts
    // of sequences that joined after it wait (earlier ones go on).
    let now = Instant::now();
    let protect_until = load.decode_step().and_then(|step_time| {
        running.iter().rposition(|s| {
            s.is_decoding() && s.deadline.is_some_and(|d| load::at_risk(s.work_left.output, d, now, step_time))
        })
    });
    for (i, seq) in running.iter_mut().enumerate() {
        seq.input.clear();
        seq.ran = load::Work::default();
        if seq.prefilled < seq.prompt.len() {
            if protect_until.is_some_and(|p| i > p) {
                continue;
            }
            let take = (seq.prompt.len() - seq.prefilled).min(budget);
            seq.input.extend_from_slice(&seq.prompt[seq.prefilled..seq.prefilled + take]);
            seq.prefilled += take;
            budget -= take;
            seq.ran.prompt = take;
        } else {
            seq.input.append(&mut seq.pending);
            seq.ran.output = seq.input.len();
        }
    }
    let mut items: Vec<StepSeq<'_>> = running
        .iter_mut()
        .filter(|s| !s.input.is_empty())
        .map(|s| StepSeq { tokens: &s.input, logits: s.prefilled == s.prompt.len(), cache: s.cache.as_mut() })
        .collect();
    // A panic in the forward pass (a bug) fails this batch, whose caches it may
    // have left half-written, but not the engine: later requests still run.
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward(&mut items)));
    drop(items);
    let ran = running.iter().fold(load::Work::default(), |sum, s| load::Work {
        prompt: sum.prompt + s.ran.prompt,
        output: sum.output + s.ran.output,
    });
    load.record_step(ran, started.elapsed());
    for seq in running.iter_mut() {
        let ran = load::Work {
            prompt: seq.ran.prompt.min(seq.work_left.prompt),
            output: seq.ran.output.min(seq.work_left.output),
        };
        seq.work_left.prompt -= ran.prompt;
        seq.work_left.output -= ran.output;
        load.settle(ran);
    }
    stats.steps.fetch_add(1, Ordering::Relaxed);
    let logits = match result {
        Ok(Ok(l)) => l,
        failure => {
            let reason = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => "internal error in the forward pass".to_string(),
            };
            tracing::error!(error = %reason, sequences = running.len(), "forward pass failed; failing the batch");
            for seq in running.iter_mut() {
                let _ = seq.events.send(TokenEvent::Failed(GenerationError::Forward(reason.clone())));
                for fork in &seq.forks {
                    let _ = fork.events.send(TokenEvent::Failed(GenerationError::Forward(reason.clone())));
                }
                seq.finished = true;
                // A pass that panicked may have left it half-written.
                seq.cache_intact = false;
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
    // A prompt that has just run starts its further answers: each samples
    // its first token from the same logits, then runs as its own sequence.
    let mut started = Vec::new();
    for (seq, l) in running.iter_mut().zip(&per_seq) {
        if let Some(l) = l.as_ref().filter(|_| !seq.forks.is_empty()) {
            for fork in std::mem::take(&mut seq.forks) {
                started.push((seq.fork(fork, tokenizer), Some(l.clone())));
            }
        }
    }
    for (seq, l) in started {
        running.push(seq);
        per_seq.push(l);
    }
    let decisions: Vec<Option<Decision>> =
        running.par_iter_mut().zip(per_seq.par_iter_mut()).map(|(seq, l)| l.as_mut().map(|l| seq.decide(l))).collect();
    let mut decisions = decisions.into_iter();
    // Finished sequences are only marked here; the caller takes them out.
    for seq in running.iter_mut() {
        let Some(Some(decision)) = decisions.next() else { continue };
        match decision {
            Decision::Sampled(s) => {
                seq.emit(s.token, s.logprob, s.top_logprobs, stats);
            }
            Decision::Forced(tokens) => {
                for token in tokens {
                    seq.sampler.record_forced(token);
                    if !seq.emit(token, None, Vec::new(), stats) {
                        break;
                    }
                }
            }
            Decision::Stop => seq.finish(StopReason::Stop),
            Decision::Failed(message) => {
                let _ = seq.events.send(TokenEvent::Failed(GenerationError::Policy(message)));
                seq.finished = true;
            }
        }
    }
}
