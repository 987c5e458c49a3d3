//! One generation as every endpoint sees it: a validated request started
//! (from the cache, or rendered, tokenized and submitted to the engine),
//! then pieces of text (stop strings applied, post-processed, log-
//! probabilities attached) and one finish.
//!
//! A [`Generation`] owns the engine's token stream: dropping it (a client
//! gone, a handler future cancelled) cancels the sequence at the next step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::{FinishReason, Usage};
use kiln_engine::{GenerationError, SamplingParams, StopReason, TokenEvent, TokenStream};
use kiln_pipeline::{PluginError, PostChain, PostFinishReason};

use kiln_stop::StopMatcher;

use crate::extract::RequestContext;
use crate::piece::{Piece, TokenLogprobs};
use crate::prompt::Prompt;
use crate::request::{TokenLimit, ValidGeneration};
use crate::response_cache::{CacheKey, ResponseCache};
use crate::token_meter::Reservation;
use crate::{ApiError, AppState};

mod submit;

use submit::submit;

/// How the response cache took part in a generation (the `x-kiln-cache` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Replayed from the cache.
    Hit,
    /// Generated, and stored when it finishes.
    Miss,
    /// Deterministic, but the client asked for a fresh answer (stored anew).
    Bypass,
    /// Not cacheable (sampled without a seed), or the cache is off.
    Off,
}

impl CacheStatus {
    pub fn header(self) -> Option<&'static str> {
        match self {
            CacheStatus::Hit => Some("hit"),
            CacheStatus::Miss => Some("miss"),
            CacheStatus::Bypass => Some("bypass"),
            CacheStatus::Off => None,
        }
    }
}

/// A running (or replayed) generation: the engine's token stream turned
/// into pieces of text and one finish.
#[derive(Debug)]
pub struct Generation {
    /// `None` once finished: dropping the stream cancels what is left.
    stream: Option<TokenStream>,
    /// The client's and the template's stop strings.
    stop: StopMatcher,
    /// The pipeline's post-processors, after the stop strings.
    post: PostChain,
    /// Pieces made and not yet taken by [`Generation::next`].
    ready: VecDeque<Piece>,
    /// Log-probabilities of tokens whose text has not been released yet.
    pending_logprobs: Vec<TokenLogprobs>,
    prompt_tokens: usize,
    /// Tokens the engine has emitted so far.
    generated: usize,
    /// The tokens reserved for the generation beforehand; settled at the
    /// finish, or when the generation is dropped.
    reservation: Option<Reservation>,
    /// Whether its reservation pays for the prompt: only the first of
    /// several answers to one prompt does (the prompt ran once).
    charges_prompt: bool,
    cache_status: CacheStatus,
    /// When the generation was admitted (time to first token counts from here).
    started: std::time::Instant,
    /// The same instant on tokio's clock, for the timeout's message.
    admitted: tokio::time::Instant,
    /// Past this the generation is stopped (the request timeout).
    deadline: tokio::time::Instant,
    /// When text was last let out (inter-token latency counts from here).
    last_text: Option<std::time::Instant>,
    /// The pieces so far, for the cache, when this answer will be stored.
    record: Option<(CacheKey, Vec<Piece>, Arc<ResponseCache>)>,
    /// Tool calls let out so far.
    tool_calls: usize,
    /// The request offered tools: calls a post-processor finds are calls.
    offers_tools: bool,
    /// Keep only the first tool call (`parallel_tool_calls: false`).
    single_tool_call: bool,
    /// What produced the answer ([`crate::fingerprint`]).
    fingerprint: Arc<str>,
}

/// A whole generation, for non-streaming answers.
#[derive(Debug)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenLogprobs>,
    /// `(id, name, arguments)` of each tool call, in order.
    pub tool_calls: Vec<(String, String, String)>,
    pub reason: FinishReason,
    pub usage: Usage,
    pub fingerprint: Arc<str>,
}

/// Runs every answer to one prompt to its end, together.
pub async fn collect_choices(generations: Vec<Generation>) -> Result<Vec<Collected>, ApiError> {
    futures_util::future::try_join_all(generations.into_iter().map(Generation::collect)).await
}

/// What several answers to one prompt used: the prompt once (it ran once),
/// every answer's tokens.
pub fn total_usage(usages: impl IntoIterator<Item = Usage>) -> Usage {
    let (mut prompt, mut completion) = (None, 0);
    for u in usages {
        prompt.get_or_insert(u.prompt_tokens);
        completion += u.completion_tokens;
    }
    Usage::new(prompt.unwrap_or(0) as usize, completion as usize)
}

impl AppState {
    /// Runs one forward pass (a one-token generation) so the first client
    /// does not pay for cold caches, then reports ready.
    pub async fn warm_up(&self) -> Result<(), ApiError> {
        let generation = ValidGeneration {
            prompt: Prompt::Text("Hello".into()),
            prompt_param: "prompt",
            params: SamplingParams::default(),
            max_tokens: TokenLimit { requested: Some(1), default: None, param: "max_tokens" },
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            json: false,
            json_schema: None,
            pipeline: None,
            n: 1,
            single_tool_call: false,
        };
        let context = RequestContext { no_cache: true, ..RequestContext::default() };
        Generation::start(self, generation, context).await?.collect().await?;
        self.mark_ready();
        Ok(())
    }
}

impl Generation {
    /// Answers a validated request: from the response cache when the same
    /// deterministic request was answered before (no rendering, tokenizing
    /// or engine work), else rendered, tokenized and submitted to the
    /// engine. `context` says whose request it is, where its tokens are
    /// counted, and whether it may be served from the cache.
    pub(crate) async fn start(
        state: &AppState,
        generation: ValidGeneration,
        context: RequestContext,
    ) -> Result<Generation, ApiError> {
        if generation.n != 1 {
            return Err(ApiError::Internal(format!("{} answers asked of a one-answer endpoint", generation.n)));
        }
        let mut one = Self::start_choices(state, generation, context).await?;
        Ok(one.remove(0))
    }

    /// [`Generation::start`] for `n` answers to one prompt: a generation
    /// each, in order. The prompt runs once in the engine; several answers
    /// are never served from or stored in the response cache.
    pub(crate) async fn start_choices(
        state: &AppState,
        generation: ValidGeneration,
        context: RequestContext,
    ) -> Result<Vec<Generation>, ApiError> {
        let tenant = context.tenant();
        let fingerprint: Arc<str> = generation.fingerprint(state).fingerprint.as_str().into();
        let key = generation.cache_key(state, tenant.as_deref(), &fingerprint);
        let status = match key {
            None => CacheStatus::Off,
            Some(_) if context.no_cache => CacheStatus::Bypass,
            Some(key) => match state.cache().lookup(&key).await {
                Some(answer) => return Ok(vec![Generation::replay(&answer, fingerprint)]),
                None => CacheStatus::Miss,
            },
        };
        // Errors about the prompt or the limit name the fields the client wrote.
        let (prompt_param, limit_param) = (generation.prompt_param, generation.max_tokens.param);
        let rename = |e: ApiError| match e {
            ApiError::InvalidValue { param, message, code } if param == "prompt" => {
                ApiError::InvalidValue { param: prompt_param.into(), message, code }
            }
            ApiError::InvalidValue { param, message, code } if param == "max_tokens" => {
                ApiError::InvalidValue { param: limit_param.into(), message, code }
            }
            other => other,
        };
        let mut started = submit(state, generation, context.meter).await.map_err(rename)?;
        started.iter_mut().for_each(|g| g.fingerprint = fingerprint.clone());
        if let [one] = started.as_mut_slice() {
            one.cache_status = status;
            one.record = key.map(|k| (k, Vec::new(), state.cache().clone()));
        }
        Ok(started)
    }

    /// A cached answer, replayed piece by piece.
    fn replay(answer: &[Piece], fingerprint: Arc<str>) -> Generation {
        Generation {
            stream: None,
            stop: StopMatcher::default(),
            post: PostChain::default(),
            ready: answer.iter().cloned().collect(),
            pending_logprobs: Vec::new(),
            prompt_tokens: 0,
            generated: 0,
            // Nothing was computed: no tokens to count.
            reservation: None,
            charges_prompt: true,
            cache_status: CacheStatus::Hit,
            started: std::time::Instant::now(),
            admitted: tokio::time::Instant::now(),
            deadline: tokio::time::Instant::now(),
            last_text: None,
            record: None,
            tool_calls: 0,
            offers_tools: false,
            single_tool_call: false,
            fingerprint,
        }
    }

    /// The answer's `system_fingerprint`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn cache_status(&self) -> CacheStatus {
        self.cache_status
    }

    /// The next piece; `None` after [`Piece::Finished`] or an error.
    pub async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                self.remember(&piece);
                return Some(Ok(piece));
            }
            let stream = self.stream.as_mut()?;
            let event = match tokio::time::timeout_at(self.deadline, stream.next()).await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.stream = None;
                    return Some(Err(ApiError::Internal(
                        "the engine dropped the sequence without finishing it".into(),
                    )));
                }
                Err(_) => {
                    // Dropping the stream stops the sequence at its next step.
                    self.stream = None;
                    return Some(Err(ApiError::Timeout { limit: self.deadline - self.admitted }));
                }
            };
            match event {
                TokenEvent::Token { id, text, logprob, top_logprobs } => {
                    self.generated += 1;
                    if let Some(logprob) = logprob {
                        self.pending_logprobs.push(TokenLogprobs { id, logprob, top: top_logprobs });
                    }
                    let usage = Usage::new(self.prompt_tokens, self.generated);
                    if let Err(e) = self.pass(&text, None, usage) {
                        self.stream = None;
                        return Some(Err(e));
                    }
                }
                TokenEvent::Finished { reason, counts, tail } => {
                    let reason = match reason {
                        StopReason::Stop => FinishReason::Stop,
                        StopReason::Length => FinishReason::Length,
                    };
                    let usage = Usage::new(counts.prompt_tokens, counts.completion_tokens);
                    if let Err(e) = self.pass(&tail, Some(reason), usage) {
                        self.stream = None;
                        return Some(Err(e));
                    }
                }
                TokenEvent::Failed(failure) => {
                    self.stream = None;
                    // A plugin's failure names the plugin and is the client's
                    // to see; a forward pass's is internal.
                    return Some(Err(match failure {
                        GenerationError::Policy(e) => ApiError::Plugin(e.to_string()),
                        e @ GenerationError::Forward(_) => ApiError::Internal(e.to_string()),
                        e @ GenerationError::WouldMissDeadline => {
                            ApiError::Behind { message: e.to_string(), retry_after: Duration::from_secs(5) }
                        }
                    }));
                }
            }
        }
    }

    /// Runs to the end (a dropped future cancels the sequence).
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let (mut text, mut logprobs, mut tool_calls) = (String::new(), Vec::new(), Vec::new());
        while let Some(piece) = self.next().await {
            match piece? {
                Piece::Text { text: t, tokens } => {
                    text.push_str(&t);
                    logprobs.extend(tokens);
                }
                Piece::ToolCall { id, name, arguments } => tool_calls.push((id, name, arguments)),
                Piece::Finished { reason, usage } => {
                    let fingerprint = self.fingerprint.clone();
                    return Ok(Collected { text, tokens: logprobs, tool_calls, reason, usage, fingerprint });
                }
            }
        }
        Err(ApiError::Internal("the generation ended without a finish".into()))
    }

    /// Runs decoded text through the stop strings, then the post-processors;
    /// `end` is the engine's finish, when this is the last text. Finishes the
    /// generation when either stops it.
    fn pass(&mut self, text: &str, end: Option<FinishReason>, usage: Usage) -> Result<(), ApiError> {
        if self.post.is_empty() {
            return self.pass_here(text, end, usage);
        }
        // Post-processors are synchronous WebAssembly calls (each bounded by
        // the call deadline): on a multi-threaded runtime the other tasks of
        // this worker move elsewhere while they run.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.pass_here(text, end, usage))
            }
            _ => self.pass_here(text, end, usage),
        }
    }

    fn pass_here(&mut self, text: &str, end: Option<FinishReason>, usage: Usage) -> Result<(), ApiError> {
        let released = self.stop.push(text);
        let mut out = self.post.push(&released.text).map_err(plugin_failed)?;
        let mut post_stopped = out.stopped;
        let Some(mut reason) = (if released.stopped || post_stopped { Some(FinishReason::Stop) } else { end }) else {
            self.release(out.text);
            self.release_calls(out.tool_calls);
            return Ok(());
        };
        if !released.stopped && !post_stopped {
            // The engine finished: what the stop strings held back is text after all.
            let rest = self.post.push(&self.stop.finish()).map_err(plugin_failed)?;
            post_stopped = rest.stopped;
            out.extend(rest);
        }
        // A post-processor that stopped has already flushed the chain.
        if !post_stopped {
            let held = self.post.finish(plugin_reason(reason)).map_err(plugin_failed)?;
            post_stopped = held.stopped;
            out.extend(held);
        }
        if post_stopped {
            reason = FinishReason::Stop;
        }
        self.release(out.text);
        self.release_calls(out.tool_calls);
        // An answer that called tools and ended of itself ends for them.
        if self.tool_calls > 0 && reason == FinishReason::Stop {
            reason = FinishReason::ToolCalls;
        }
        self.finish(reason, usage);
        Ok(())
    }

    /// Lets out the calls a post-processor found, each with a fresh id
    /// (only the first of an answer with `parallel_tool_calls: false`).
    fn release_calls(&mut self, calls: Vec<kiln_chat::ToolCall>) {
        for call in calls {
            if !self.offers_tools {
                // A pipeline's parser found a call no tool was offered for
                // (a completion, say): it stays the text it was written as.
                let arguments =
                    serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::String(call.arguments));
                let json = serde_json::json!({"name": call.name, "arguments": arguments});
                self.release(format!("<tool_call>{json}</tool_call>"));
                continue;
            }
            if self.single_tool_call && self.tool_calls > 0 {
                break;
            }
            self.tool_calls += 1;
            let id = if call.id.is_empty() { crate::tools::call_id() } else { call.id };
            self.ready.push_back(Piece::ToolCall { id, name: call.name, arguments: call.arguments });
        }
    }

    /// Keeps a copy of each piece of an answer to be cached; stores the
    /// whole at its finish (an answer cut short is never stored).
    fn remember(&mut self, piece: &Piece) {
        let Some((_, pieces, _)) = &mut self.record else { return };
        pieces.push(piece.clone());
        if matches!(piece, Piece::Finished { .. })
            && let Some((key, pieces, cache)) = self.record.take()
        {
            cache.put(key, pieces);
        }
    }

    fn release(&mut self, text: String) {
        if !text.is_empty() {
            let now = std::time::Instant::now();
            match self.last_text.replace(now) {
                None => metrics::histogram!("kiln_time_to_first_token_seconds").record(now - self.started),
                Some(last) => metrics::histogram!("kiln_inter_token_latency_seconds").record(now - last),
            }
            let tokens = std::mem::take(&mut self.pending_logprobs);
            self.ready.push_back(Piece::Text { text, tokens });
        }
    }

    fn finish(&mut self, reason: FinishReason, usage: Usage) {
        metrics::counter!("kiln_prompt_tokens_total").increment(u64::from(usage.prompt_tokens));
        metrics::counter!("kiln_generated_tokens_total").increment(u64::from(usage.completion_tokens));
        if let Some(reservation) = self.reservation.take() {
            let prompt = if self.charges_prompt { usage.prompt_tokens } else { 0 };
            reservation.settle((prompt + usage.completion_tokens) as usize);
        }
        // Ends the engine's sequence now if a stop string cut it short.
        self.stream = None;
        // Every generated token's log-probability is reported, also for tokens
        // whose text was cut by a stop string or completed no character.
        if !self.pending_logprobs.is_empty() {
            let tokens = std::mem::take(&mut self.pending_logprobs);
            self.ready.push_back(Piece::Text { text: String::new(), tokens });
        }
        self.ready.push_back(Piece::Finished { reason, usage });
    }
}

impl Drop for Generation {
    /// A generation cut short (a client gone, a failure) still used what it
    /// prefilled and generated.
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            // Nothing generated (refused by a plugin at once, its client gone
            // while it queued, out of time): nothing is charged.
            let prompt = if self.charges_prompt { self.prompt_tokens } else { 0 };
            let used = if self.generated == 0 { 0 } else { prompt + self.generated };
            reservation.settle(used);
        }
    }
}

fn plugin_failed(e: PluginError) -> ApiError {
    ApiError::Plugin(e.to_string())
}

fn plugin_reason(reason: FinishReason) -> PostFinishReason {
    match reason {
        FinishReason::Length => PostFinishReason::Length,
        _ => PostFinishReason::Stop,
    }
}
