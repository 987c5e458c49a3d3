//! kiln-engine: turns validated generation requests into streams of tokens.
//!
//! The engine owns the model on its own thread (never on an async runtime)
//! and batches every running sequence into one forward pass per step
//! (continuous batching). Callers reach it through the [`Backend`] trait
//! with a [`ValidGenerateRequest`]; the HTTP layer and the CLI both do.
//! Dropping the returned [`TokenStream`] cancels the sequence at the next step.

#![forbid(unsafe_code)]

mod load;
mod policy;
mod prefix_cache;
mod request;
mod sampling;
mod scheduler;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use kiln_model::DeviceReport;
use kiln_model::ModelBackend;
use kiln_tokenizer::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::load::Load;

pub use policy::{PolicyError, SamplingPolicy, StepPlan};
pub use request::{
    GenerateRequest, MAX_CHOICES, MAX_REPETITION_PENALTY, MAX_TEMPERATURE, MAX_TOP_LOGPROBS, MIN_REPETITION_PENALTY,
    ModelLimits, SamplingParams, ValidGenerateRequest,
};
pub use sampling::{Sampled, Sampler};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EngineError {
    #[error("invalid `{field}`: {message}")]
    Validation { field: String, message: String },
    /// The prompt alone fills the context window.
    #[error("the prompt's {prompt_tokens} tokens leave no room to generate in the context window of {max_context}")]
    PromptTooLong { prompt_tokens: usize, max_context: usize },
    #[error("the engine is at capacity ({queued} requests queued); retry later")]
    Overloaded { queued: usize },
    /// The work already accepted would keep this request past its deadline.
    #[error(
        "the server is behind: this request would finish in about {} s, past its deadline in {} s",
        eta.as_secs(),
        time_left.as_secs()
    )]
    WouldMissDeadline { eta: Duration, time_left: Duration },
    #[error("the engine has stopped")]
    Stopped,
}

/// Why a sequence stopped generating. (The API's `finish_reason` also
/// counts stop strings and post-processors, which the engine never sees.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_tokens` reached.
    Length,
    /// An end-of-sequence or stop token was sampled, or the policy stopped.
    Stop,
}

/// Tokens a finished sequence read and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TokenCounts {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Why a sequence failed: what a [`TokenStream`] ends with instead of a finish.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GenerationError {
    /// The sequence's sampling policy (a sampler plugin) failed; its message
    /// names the policy and is safe to show to the client.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The forward pass failed: every sequence of the batch fails with it.
    /// A fault of the server's, not the client's.
    #[error("the forward pass failed: {0}")]
    Forward(String),
    /// Queued behind more work than expected, it could no longer finish
    /// before its deadline: dropped before it ran.
    #[error("the server fell behind: this request could not finish before its deadline and did not start")]
    WouldMissDeadline,
}

/// What a [`TokenStream`] yields, in order: tokens, then one `Finished` (or `Failed`).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenEvent {
    Token {
        id: u32,
        /// Text this token completes; empty while a multi-byte character is incomplete.
        text: String,
        /// Present when the request asked for log-probabilities.
        logprob: Option<f32>,
        top_logprobs: Vec<(u32, f32)>,
    },
    Finished {
        reason: StopReason,
        counts: TokenCounts,
        /// Text held back at the end (an incomplete character, lossily decoded).
        tail: String,
    },
    Failed(GenerationError),
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct TokenStream {
    events: UnboundedReceiver<TokenEvent>,
}

impl TokenStream {
    /// A stream fed by `events`: what test doubles of [`Backend`] return.
    pub fn from_receiver(events: UnboundedReceiver<TokenEvent>) -> Self {
        TokenStream { events }
    }

    pub async fn next(&mut self) -> Option<TokenEvent> {
        self.events.recv().await
    }

    /// For synchronous callers (the CLI); never call it on an async runtime thread.
    pub fn blocking_next(&mut self) -> Option<TokenEvent> {
        self.events.blocking_recv()
    }
}

/// Live counters of the engine.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub(crate) active: AtomicUsize,
    pub(crate) queued: AtomicUsize,
    pub(crate) steps: AtomicU64,
    pub(crate) generated_tokens: AtomicU64,
    pub(crate) prefix_reused_tokens: AtomicU64,
    pub(crate) prefix_cache_bytes: AtomicUsize,
    pub(crate) kv_cache_bytes: AtomicUsize,
    pub(crate) kv_budget_bytes: AtomicUsize,
    pub(crate) kv_reserved_bytes: AtomicUsize,
}

impl EngineStats {
    /// Sequences in the running batch.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// Requests accepted but not yet running.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens.load(Ordering::Relaxed)
    }
    /// Prompt tokens whose keys and values were reused from an earlier request.
    pub fn prefix_reused_tokens(&self) -> u64 {
        self.prefix_reused_tokens.load(Ordering::Relaxed)
    }
    /// Memory held by the prefix cache.
    pub fn prefix_cache_bytes(&self) -> usize {
        self.prefix_cache_bytes.load(Ordering::Relaxed)
    }
    /// Keys and values held by the running sequences (allocated bytes).
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv_cache_bytes.load(Ordering::Relaxed)
    }
    /// The most the running sequences' keys and values may take ([`EngineConfig::kv_cache_bytes`]).
    pub fn kv_budget_bytes(&self) -> usize {
        self.kv_budget_bytes.load(Ordering::Relaxed)
    }
    /// What the running sequences have set aside of the budget: each its
    /// prompt plus `max_tokens`, at admission.
    pub fn kv_reserved_bytes(&self) -> usize {
        self.kv_reserved_bytes.load(Ordering::Relaxed)
    }
}

/// What the API layers need from an engine.
pub trait Backend: Send + Sync {
    fn limits(&self) -> &ModelLimits;
    /// Submits a request for one answer.
    fn submit(&self, request: ValidGenerateRequest) -> Result<TokenStream, EngineError>;
    /// Submits a request for `n` answers: a stream each, in order.
    fn submit_choices(&self, request: ValidGenerateRequest) -> Result<Vec<TokenStream>, EngineError> {
        match request.n {
            1 => Ok(vec![self.submit(request)?]),
            n => Err(EngineError::Validation {
                field: "n".into(),
                message: format!("this backend gives one answer, not {n}"),
            }),
        }
    }
    fn stats(&self) -> &EngineStats;
    /// Where the model runs (`/health`, `/metrics`).
    fn device(&self) -> DeviceReport {
        DeviceReport { device: "cpu".into(), ..DeviceReport::default() }
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting for a batch slot before `submit` answers `Overloaded`.
    pub max_queue: usize,
    /// Most tokens a step spends on prompts (prefill is chunked to this size).
    pub prefill_chunk: usize,
    /// Bytes of prompt keys and values kept for reuse by later requests with
    /// the same prefix; 0 disables.
    pub prefix_cache_bytes: usize,
    /// Bytes of keys and values the running sequences may hold together. A
    /// sequence sets aside its prompt plus `max_tokens` when it joins the
    /// batch, and waits in the queue until that much is free; the context
    /// window shrinks to what the budget holds, if less.
    pub kv_cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 16,
            max_queue: 64,
            prefill_chunk: 256,
            prefix_cache_bytes: 256 << 20,
            kv_cache_bytes: 2048 << 20,
        }
    }
}

/// The engine: a handle to the engine thread.
#[derive(Debug)]
pub struct Engine {
    jobs: Option<SyncSender<scheduler::Job>>,
    limits: ModelLimits,
    stats: Arc<EngineStats>,
    load: Arc<Load>,
    thread: Option<JoinHandle<()>>,
    model: Arc<dyn ModelBackend>,
}

impl Engine {
    pub fn start(model: Arc<dyn ModelBackend>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Engine {
        // A device with its own KV pool (a GPU) bounds the budget too.
        let config = match model.kv_capacity_bytes() {
            Some(capacity) => EngineConfig { kv_cache_bytes: config.kv_cache_bytes.min(capacity), ..config },
            None => config,
        };
        let fits = budget_positions(model.as_ref(), config.kv_cache_bytes);
        if fits < model.max_context() {
            tracing::warn!(
                budget_mib = config.kv_cache_bytes >> 20,
                positions = fits,
                model_context = model.max_context(),
                "the KV cache budget holds fewer positions than the context window; sequences are capped to it"
            );
        }
        let limits = ModelLimits {
            vocab_size: model.config().vocab_size,
            max_context: model.max_context().min(fits).max(1),
            default_stop_ids: tokenizer.stop_token_ids().to_vec(),
        };
        let config = EngineConfig {
            max_batch: config.max_batch.max(1),
            max_queue: config.max_queue.max(1),
            prefill_chunk: config.prefill_chunk.max(1),
            ..config
        };
        let (tx, rx) = sync_channel(config.max_queue);
        let stats = Arc::new(EngineStats::default());
        stats.kv_budget_bytes.store(config.kv_cache_bytes, Ordering::Relaxed);
        let load = Arc::new(Load::default());
        let shared = scheduler::Shared { stats: stats.clone(), load: load.clone() };
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn({
                let model = model.clone();
                move || scheduler::run(model, tokenizer, rx, config, shared)
            })
            .expect("spawning the engine thread");
        Engine { jobs: Some(tx), limits, stats, load, thread: Some(thread), model }
    }

    /// Validates and submits in one call.
    pub fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError> {
        self.submit(request.validate(&self.limits)?)
    }
}

impl Backend for Engine {
    fn limits(&self) -> &ModelLimits {
        &self.limits
    }

    fn submit(&self, request: ValidGenerateRequest) -> Result<TokenStream, EngineError> {
        if request.n != 1 {
            return Err(EngineError::Validation {
                field: "n".into(),
                message: format!("{} answers come as as many streams (submit_choices)", request.n),
            });
        }
        Ok(self.submit_choices(request)?.remove(0))
    }

    fn submit_choices(&self, request: ValidGenerateRequest) -> Result<Vec<TokenStream>, EngineError> {
        if request.checked_for != (self.limits.vocab_size, self.limits.max_context) {
            return Err(EngineError::Validation {
                field: "request".into(),
                message: "was validated against another model's limits".into(),
            });
        }
        let jobs = self.jobs.as_ref().ok_or(EngineError::Stopped)?;
        let one = self.load.expected(
            request.prompt_tokens.len(),
            request.max_tokens,
            !request.stop_token_ids.is_empty() || request.policy.is_some(),
        );
        // The prompt runs once; every answer generates.
        let work = load::Work { output: one.output * request.n, ..one };
        if let (Some(deadline), Some(eta)) = (request.deadline, self.load.eta(work)) {
            let time_left = deadline.saturating_duration_since(Instant::now());
            if eta > time_left {
                return Err(EngineError::WouldMissDeadline { eta, time_left });
            }
        }
        let (senders, streams): (Vec<_>, Vec<_>) = (0..request.n)
            .map(|_| {
                let (tx, rx) = unbounded_channel();
                (tx, TokenStream { events: rx })
            })
            .unzip();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.load.accept(work);
        match jobs.try_send(scheduler::Job { request, events: senders, work, one_output: one.output }) {
            Ok(()) => Ok(streams),
            Err(e) => {
                self.load.settle(work);
                let queued = self.stats.queued.fetch_sub(1, Ordering::Relaxed) - 1;
                match e {
                    TrySendError::Full(_) => Err(EngineError::Overloaded { queued }),
                    TrySendError::Disconnected(_) => Err(EngineError::Stopped),
                }
            }
        }
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }

    fn device(&self) -> DeviceReport {
        self.model.device()
    }
}

/// The most positions one sequence may hold within `budget` bytes.
fn budget_positions(model: &dyn ModelBackend, budget: usize) -> usize {
    // Keys are held in blocks of 16 positions: the rate over whole blocks,
    // then down to what fits with the last block partly used.
    let per_token = (model.kv_cache_bytes(1024) / 1024).max(1);
    let mut positions = budget / per_token;
    while positions > 0 && model.kv_cache_bytes(positions) > budget {
        positions -= 1;
    }
    positions
}

impl Drop for Engine {
    /// Lets running sequences finish, then joins the engine thread.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod choices_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
