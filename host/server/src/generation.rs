//! One generation as every endpoint sees it: a specification checked
//! against the model, then pieces of text (stop strings applied, log-
//! probabilities attached) and one finish.
//!
//! A [`Generation`] owns the engine's token stream: dropping it (a client
//! gone, a handler future cancelled) cancels the sequence at the next step.

use std::collections::VecDeque;
use std::sync::Arc;

use kiln_api::{FinishReason, Usage};
use kiln_engine::{GenerateRequest, SamplingParams, TokenEvent, TokenStream};
use kiln_pipeline::{PostChain, Resolved};

use crate::cache::{CacheKey, KeyParts, ResponseCache, deterministic};
use crate::{ApiError, AppState, Prompt, TokenMeter};
use kiln_stop::{MAX_STOP_BYTES, MAX_STOP_STRINGS, StopMatcher};

/// What an endpoint asks for, in the engine's terms.
#[derive(Debug, Default)]
pub struct GenerationSpec {
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
    /// What the client asked for; `None`: `default_max_tokens`.
    pub max_tokens: Option<u32>,
    /// The endpoint's default, capped to what the context window leaves (a
    /// client that did not choose a limit is not refused for it); `None`:
    /// all the room there is.
    pub default_max_tokens: Option<u32>,
    /// The client's stop strings.
    pub stop: Vec<String>,
    /// Stop strings the pipeline's template added (not the client's to fix).
    pub template_stop: Vec<String>,
    pub ignore_eos: bool,
    pub logprobs: bool,
    pub top_logprobs: usize,
    /// Constrain the output to one JSON object (the json-mode sampler plugin).
    pub json: bool,
    /// The plugin versions this request runs (`None`: the host alone).
    pub pipeline: Option<Resolved>,
    /// Where the request's tokens are counted against its caller's limit.
    pub meter: Option<TokenMeter>,
    /// The client asked not to be served from the cache (`Cache-Control: no-cache`).
    pub no_cache: bool,
    /// Whose answers a cached one may be served to (the API key's name):
    /// a hit must not tell one key what another asked.
    pub tenant: Option<String>,
}

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

/// A sampled token's log-probability and its most likely alternatives.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Serializable: the shared response cache keeps answers as their pieces.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Piece {
    /// Text to send, with the log-probabilities of the tokens that produced it
    /// (empty unless asked for). The text is empty only for the last piece,
    /// when it carries the log-probabilities of tokens that left no text.
    Text {
        text: String,
        tokens: Vec<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
}

#[derive(Debug)]
pub struct Generation {
    /// `None` once finished: dropping the stream cancels what is left.
    stream: Option<TokenStream>,
    stop: StopMatcher,
    /// The pipeline's post-processors, after the stop strings.
    post: PostChain,
    ready: VecDeque<Piece>,
    pending_logprobs: Vec<TokenLogprobs>,
    prompt_tokens: usize,
    generated: usize,
    /// Taken when the tokens are counted (at the finish, or when dropped),
    /// with the tokens reserved for the generation beforehand.
    meter: Option<(TokenMeter, u32)>,
    cache_status: CacheStatus,
    /// When the generation was admitted, and when it last let text out.
    started: std::time::Instant,
    /// Past this the generation is stopped (the request timeout).
    admitted: tokio::time::Instant,
    deadline: tokio::time::Instant,
    last_text: Option<std::time::Instant>,
    /// The pieces so far, for the cache, when this answer will be stored.
    record: Option<(CacheKey, Vec<Piece>, Arc<ResponseCache>)>,
}

/// A whole generation, for non-streaming answers.
#[derive(Debug)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenLogprobs>,
    pub reason: FinishReason,
    pub usage: Usage,
}

impl GenerationSpec {
    /// Answers `prompt`: from the response cache when the same deterministic
    /// request was answered before (no rendering, tokenizing or engine work),
    /// else rendered, tokenized and started.
    pub async fn start_from(mut self, state: &AppState, prompt: Prompt) -> Result<Generation, ApiError> {
        let key = self.cache_key(state, &prompt);
        let status = match key {
            None => CacheStatus::Off,
            Some(_) if self.no_cache => CacheStatus::Bypass,
            Some(key) => match state.cache().lookup(&key).await {
                Some(answer) => return Ok(Generation::replay(&answer)),
                None => CacheStatus::Miss,
            },
        };
        let tokens = state.prompt_tokens(prompt, self.pipeline.as_ref()).await?;
        self.prompt_tokens = tokens.tokens;
        self.template_stop = tokens.stop;
        let mut generation = self.start(state).await?;
        generation.cache_status = status;
        generation.record = key.map(|k| (k, Vec::new(), state.cache_arc()));
        Ok(generation)
    }

    /// The request's cache key, when its output is fixed by its inputs and the cache is on.
    fn cache_key(&self, state: &AppState, prompt: &Prompt) -> Option<CacheKey> {
        (state.cache().enabled() && deterministic(&self.params)).then(|| {
            let mut plugins = self.pipeline.as_ref().map(Resolved::fingerprint).unwrap_or_default();
            if self.json {
                // json-mode samples in place of the pipeline's sampler.
                let json = state.plugins().and_then(|p| p.plugin(kiln_pipeline::JSON_MODE));
                plugins.extend(json.as_ref().and_then(|e| e.info()).map(|i| format!("{i} {}", i.sha256)));
            }
            KeyParts {
                model: &state.model().id,
                tenant: self.tenant.as_deref(),
                prompt,
                params: &self.params,
                max_tokens: self.max_tokens,
                default_max_tokens: self.default_max_tokens,
                stop: &self.stop,
                ignore_eos: self.ignore_eos,
                logprobs: self.logprobs,
                top_logprobs: self.top_logprobs,
                json: self.json,
                plugins,
            }
            .key()
        })
    }

    /// Validates against the served model and submits to the engine.
    async fn start(self, state: &AppState) -> Result<Generation, ApiError> {
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings are allowed")));
        }
        if let Some(bad) = self.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                "stop",
                format!("stop strings must be 1 to {MAX_STOP_BYTES} bytes long, got {} bytes", bad.len()),
            ));
        }
        let mut stop = self.stop;
        for extra in self.template_stop {
            if extra.is_empty() || extra.len() > MAX_STOP_BYTES {
                return Err(ApiError::Plugin(format!(
                    "the template plugin returned a stop string of {} bytes (1 to {MAX_STOP_BYTES} allowed)",
                    extra.len()
                )));
            }
            if !stop.contains(&extra) {
                stop.push(extra);
            }
        }
        let backend = state.backend();
        let limits = backend.limits();
        let prompt_tokens = self.prompt_tokens.len();
        let room = limits.max_context.saturating_sub(prompt_tokens).max(1);
        let max_tokens = match (self.max_tokens, self.default_max_tokens) {
            (Some(n), _) => n as usize,
            (None, Some(default)) => (default as usize).min(room),
            (None, None) => room,
        };
        // The most this request can spend is set aside before it runs.
        let meter = match self.meter {
            Some(meter) => {
                let reserved = meter.reserve(prompt_tokens + max_tokens).await?;
                Some((meter, reserved))
            }
            None => None,
        };
        // json-mode replaces the pipeline's sampler: the output must parse.
        let policy = match (self.json, state.plugins(), &self.pipeline) {
            (true, None, _) => {
                return Err(ApiError::invalid(
                    "response_format",
                    "`json_object` needs the json-mode plugin, and this server runs without plugins",
                ));
            }
            (true, Some(plugins), _) => Some(plugins.json_policy(&self.params, &self.prompt_tokens, max_tokens)?),
            (false, _, Some(pipeline)) => pipeline
                .sampler(&self.params, &self.prompt_tokens, max_tokens)
                .map_err(|e| ApiError::Plugin(e.to_string()))?,
            (false, _, None) => None,
        };
        let post = match &self.pipeline {
            Some(pipeline) => pipeline.post_chain(&stop).map_err(|e| ApiError::Plugin(e.to_string()))?,
            None => PostChain::default(),
        };
        let request = GenerateRequest {
            prompt_tokens: self.prompt_tokens,
            params: self.params,
            max_tokens,
            stop_token_ids: Vec::new(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
            policy,
        }
        .validate(limits)?;
        let stream = backend.submit(request)?;
        Ok(Generation {
            stream: Some(stream),
            stop: StopMatcher::new(stop),
            post,
            ready: VecDeque::new(),
            pending_logprobs: Vec::new(),
            prompt_tokens,
            generated: 0,
            meter,
            cache_status: CacheStatus::Off,
            started: std::time::Instant::now(),
            admitted: tokio::time::Instant::now(),
            deadline: tokio::time::Instant::now() + state.config().request_timeout,
            last_text: None,
            record: None,
        })
    }
}

impl Generation {
    /// A cached answer, replayed piece by piece.
    fn replay(answer: &[Piece]) -> Generation {
        Generation {
            stream: None,
            stop: StopMatcher::default(),
            post: PostChain::default(),
            ready: answer.iter().cloned().collect(),
            pending_logprobs: Vec::new(),
            prompt_tokens: 0,
            generated: 0,
            // Nothing was computed: no tokens to count.
            meter: None,
            cache_status: CacheStatus::Hit,
            started: std::time::Instant::now(),
            admitted: tokio::time::Instant::now(),
            deadline: tokio::time::Instant::now(),
            last_text: None,
            record: None,
        }
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
                TokenEvent::Finished { reason, usage, tail } => {
                    let reason = match reason {
                        kiln_engine::FinishReason::Stop => FinishReason::Stop,
                        kiln_engine::FinishReason::Length => FinishReason::Length,
                    };
                    let usage = Usage::new(usage.prompt_tokens, usage.completion_tokens);
                    if let Err(e) = self.pass(&tail, Some(reason), usage) {
                        self.stream = None;
                        return Some(Err(e));
                    }
                }
                TokenEvent::Failed(message) => {
                    self.stream = None;
                    // A plugin's failure names the plugin; anything else is internal.
                    return Some(Err(match message.strip_prefix("sampling policy: ") {
                        Some(plugin) => ApiError::Plugin(plugin.to_string()),
                        None => ApiError::Internal(format!("generation failed: {message}")),
                    }));
                }
            }
        }
    }

    /// Runs to the end (a dropped future cancels the sequence).
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        while let Some(piece) = self.next().await {
            match piece? {
                Piece::Text { text: t, tokens } => {
                    text.push_str(&t);
                    logprobs.extend(tokens);
                }
                Piece::Finished { reason, usage } => return Ok(Collected { text, tokens: logprobs, reason, usage }),
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
            return Ok(());
        };
        if !released.stopped && !post_stopped {
            // The engine finished: what the stop strings held back is text after all.
            let rest = self.post.push(&self.stop.finish()).map_err(plugin_failed)?;
            out.text.push_str(&rest.text);
            post_stopped = rest.stopped;
        }
        // A post-processor that stopped has already flushed the chain.
        if !post_stopped {
            let held = self.post.finish(plugin_reason(reason)).map_err(plugin_failed)?;
            out.text.push_str(&held.text);
            post_stopped = held.stopped;
        }
        if post_stopped {
            reason = FinishReason::Stop;
        }
        self.release(out.text);
        self.finish(reason, usage);
        Ok(())
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
        if let Some((meter, reserved)) = self.meter.take() {
            meter.settle(reserved, usage.total_tokens as usize);
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
        if let Some((meter, reserved)) = self.meter.take() {
            meter.settle(reserved, self.prompt_tokens + self.generated);
        }
    }
}

fn plugin_failed(e: kiln_plugins::PluginError) -> ApiError {
    ApiError::Plugin(e.to_string())
}

fn plugin_reason(reason: FinishReason) -> kiln_plugins::FinishReason {
    match reason {
        FinishReason::Length => kiln_plugins::FinishReason::Length,
        _ => kiln_plugins::FinishReason::Stop,
    }
}
