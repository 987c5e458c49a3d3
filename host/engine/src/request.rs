//! What a caller asks of the engine, and its validated form.

use crate::{EngineError, SamplingPolicy};

/// How the next token is chosen. Defaults are neutral (no truncation, no
/// penalties); `temperature == 0` is greedy.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of every token already
    /// in the prompt or output; 1 disables.
    pub repetition_penalty: f32,
    /// OpenAI's: subtracts `count * frequency_penalty` from generated tokens' logits.
    pub frequency_penalty: f32,
    /// OpenAI's: subtracts `presence_penalty` once from every generated token's logit.
    pub presence_penalty: f32,
    /// Same seed + same request = same tokens. `None`: drawn at random.
    pub seed: Option<u64>,
    /// Added to the logits of the given tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Self::default() }
    }

    /// Checks ranges; the error names the offending field.
    pub fn validate(&self, vocab_size: usize) -> Result<(), EngineError> {
        let bad = |field: &str, message: String| Err(EngineError::Validation { field: field.into(), message });
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return bad("temperature", format!("must be in [0, {MAX_TEMPERATURE}], got {}", self.temperature));
        }
        // 0 keeps only the most likely token (a tiny top_p may round to 0 as f32).
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", format!("must be in [0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if !(MIN_REPETITION_PENALTY..=MAX_REPETITION_PENALTY).contains(&self.repetition_penalty) {
            return bad(
                "repetition_penalty",
                format!(
                    "must be in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}], got {}",
                    self.repetition_penalty
                ),
            );
        }
        for (field, v) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(field, format!("must be in [-2, 2], got {v}"));
            }
        }
        if let Some((id, _)) = self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab_size) {
            return bad("logit_bias", format!("token id {id} is outside the vocabulary ({vocab_size})"));
        }
        if let Some((_, b)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return bad("logit_bias", format!("bias must be in [-100, 100], got {b}"));
        }
        Ok(())
    }

    /// Greedy when `temperature` is 0 (or so small that `1 / temperature`
    /// would overflow the softmax) or only one candidate is kept.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW || self.top_k == 1
    }
}

/// Temperatures below this sample greedily.
pub const GREEDY_BELOW: f32 = 1e-5;

/// A generation request before validation.
#[derive(Debug, Default)]
pub struct GenerateRequest {
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Extra token ids that end generation (EOS and end-of-turn tokens are added by default).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past EOS / stop tokens (benchmarks that need a fixed length).
    pub ignore_eos: bool,
    /// Report each sampled token's log-probability (costs a pass over the vocabulary).
    pub logprobs: bool,
    /// Also return the `n` most likely alternatives' log-probabilities for each token.
    pub top_logprobs: usize,
    /// Steers sampling token by token (a sampler plugin); `None`: the params alone.
    pub policy: Option<Box<dyn SamplingPolicy>>,
    /// When the caller stops waiting. A request the engine expects to finish
    /// later is refused at once ([`EngineError::WouldMissDeadline`]).
    pub deadline: Option<std::time::Instant>,
    /// Answers to the same prompt (0 or 1: one). The prompt runs once; its
    /// keys and values are copied to each further answer, which samples on
    /// (seeded `seed + i` when a seed is set) as a sequence of its own.
    pub n: usize,
    /// With a `policy`: one more for each answer past the first.
    pub sibling_policies: Vec<Box<dyn SamplingPolicy>>,
}

/// Most answers one request may ask for (`n`).
pub const MAX_CHOICES: usize = 8;

/// A request the engine accepts without further checks: it fits the context
/// and every value is in range.
#[derive(Debug)]
pub struct ValidGenerateRequest {
    pub(crate) prompt_tokens: Vec<u32>,
    pub(crate) params: SamplingParams,
    pub(crate) max_tokens: usize,
    pub(crate) stop_token_ids: Vec<u32>,
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: usize,
    pub(crate) policy: Option<Box<dyn SamplingPolicy>>,
    pub(crate) deadline: Option<std::time::Instant>,
    pub(crate) n: usize,
    pub(crate) sibling_policies: Vec<Box<dyn SamplingPolicy>>,
    /// The limits it was checked against: an engine refuses a request checked
    /// for another model.
    pub(crate) checked_for: (usize, usize),
}

/// Most alternatives a caller may ask for per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Highest temperature accepted (OpenAI's bound; past it output is noise).
pub const MAX_TEMPERATURE: f32 = 2.0;
/// The repetition penalties accepted (1 disables; llama.cpp's useful range
/// is far inside): a penalty divides logits, so 0 is not one.
pub const MIN_REPETITION_PENALTY: f32 = 0.01;
pub const MAX_REPETITION_PENALTY: f32 = 10.0;

impl ValidGenerateRequest {
    pub fn prompt_tokens(&self) -> &[u32] {
        &self.prompt_tokens
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Answers asked for.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// What validation needs to know about the model.
#[derive(Clone, Debug)]
pub struct ModelLimits {
    pub vocab_size: usize,
    pub max_context: usize,
    /// EOS and end-of-turn ids that stop generation unless `ignore_eos`.
    pub default_stop_ids: Vec<u32>,
}

impl GenerateRequest {
    pub fn validate(self, limits: &ModelLimits) -> Result<ValidGenerateRequest, EngineError> {
        let bad = |field: &str, message: String| Err(EngineError::Validation { field: field.into(), message });
        if self.prompt_tokens.is_empty() {
            return bad("prompt", "must not be empty".into());
        }
        if let Some(t) = self.prompt_tokens.iter().find(|t| **t as usize >= limits.vocab_size) {
            return bad("prompt", format!("token id {t} is outside the vocabulary ({})", limits.vocab_size));
        }
        if self.prompt_tokens.len() >= limits.max_context {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: self.prompt_tokens.len(),
                max_context: limits.max_context,
            });
        }
        let room = limits.max_context - self.prompt_tokens.len();
        if self.max_tokens < 1 || self.max_tokens > room {
            return bad(
                "max_tokens",
                format!(
                    "must be between 1 and {room} (context {} minus {} prompt tokens), got {}",
                    limits.max_context,
                    self.prompt_tokens.len(),
                    self.max_tokens
                ),
            );
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad("top_logprobs", format!("must be at most {MAX_TOP_LOGPROBS}, got {}", self.top_logprobs));
        }
        self.params.validate(limits.vocab_size)?;
        let n = self.n.max(1);
        if n > MAX_CHOICES {
            return bad("n", format!("must be between 1 and {MAX_CHOICES}, got {n}"));
        }
        let policies_wanted = if self.policy.is_some() { n - 1 } else { 0 };
        if self.sibling_policies.len() != policies_wanted {
            return bad(
                "n",
                format!(
                    "{} sampling policies for {n} answers, expected {policies_wanted}",
                    self.sibling_policies.len()
                ),
            );
        }
        let mut stop_token_ids = self.stop_token_ids;
        if let Some(t) = stop_token_ids.iter().find(|t| **t as usize >= limits.vocab_size) {
            return bad("stop_token_ids", format!("token id {t} is outside the vocabulary"));
        }
        if !self.ignore_eos {
            stop_token_ids.extend(&limits.default_stop_ids);
        }
        stop_token_ids.sort_unstable();
        stop_token_ids.dedup();
        Ok(ValidGenerateRequest {
            prompt_tokens: self.prompt_tokens,
            params: self.params,
            max_tokens: self.max_tokens,
            stop_token_ids,
            logprobs: self.logprobs || self.top_logprobs > 0,
            top_logprobs: self.top_logprobs,
            policy: self.policy,
            deadline: self.deadline,
            n,
            sibling_policies: self.sibling_policies,
            checked_for: (limits.vocab_size, limits.max_context),
        })
    }
}
