//! kiln-pipeline: the request pipeline between the HTTP layer and the
//! engine: plugins loaded by the runtime (`kiln-plugins`), seen by the
//! engine through its own traits (it knows nothing of WebAssembly).
//!
//! So far: a sampler plugin's session as the engine's [`SamplingPolicy`],
//! and the built-in samplers the API asks for (json-mode for
//! `response_format: {"type": "json_object"}`).

use std::sync::Arc;

use kiln_engine::{SamplingParams, SamplingPolicy, StepPlan};
use kiln_plugins::{Candidate, Loaded, PluginError, Runtime, RuntimeConfig, SamplerPlugin, SamplerSession};
use kiln_tokenizer::Tokenizer;

/// The plugin runtime for one model, with the first-party plugins loaded.
#[derive(Debug)]
pub struct Pipeline {
    json_mode: Arc<SamplerPlugin>,
    // Kept last: plugins hold the engine, the runtime owns its deadline clock.
    _runtime: Runtime,
}

impl Pipeline {
    /// Loads the first-party plugins embedded in the binary (compiled once,
    /// then from `config.cache_dir` on later starts).
    pub fn new(tokenizer: &Tokenizer, config: RuntimeConfig) -> Result<Pipeline, PluginError> {
        let runtime = Runtime::new(config, Arc::new(vocabulary(tokenizer)))?;
        let json_mode = match runtime.load_bytes("json-mode (built in)", kiln_plugins::first_party::JSON_MODE)? {
            Loaded::Sampler(s) => s,
            other => return Err(PluginError::Runtime(format!("json-mode loaded as {:?}", other.info().kind))),
        };
        Ok(Pipeline { json_mode, _runtime: runtime })
    }

    /// A json-mode policy for one sequence: its output is one JSON object that
    /// closes within `max_tokens`.
    pub fn json_policy(
        &self,
        params: &SamplingParams,
        prompt: &[u32],
        max_tokens: usize,
    ) -> Result<Box<dyn SamplingPolicy>, PluginError> {
        let config = vec![("max_tokens".to_string(), max_tokens.to_string())];
        let session = self.json_mode.start(plugin_params(params), prompt, &config)?;
        Ok(Box::new(PluginPolicy::new(session, params.clone())))
    }
}

/// The model's vocabulary as sampler plugins see it.
pub fn vocabulary(tokenizer: &Tokenizer) -> kiln_plugins::Vocabulary {
    let tokens = (0..tokenizer.vocab_size() as u32).map(|id| tokenizer.token_bytes(id).to_vec()).collect();
    kiln_plugins::Vocabulary { tokens, stop_ids: tokenizer.stop_token_ids().to_vec() }
}

/// The request's parameters in the plugin contract's terms.
pub fn plugin_params(p: &SamplingParams) -> kiln_plugins::SamplingParams {
    kiln_plugins::SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as u32,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
    }
}

/// A sampler plugin's session steering one sequence.
#[derive(Debug)]
pub struct PluginPolicy {
    session: SamplerSession,
    /// The request's own parameters: a plan's overrides replace the knobs
    /// only, never the seed or the request's logit bias.
    base: SamplingParams,
}

impl PluginPolicy {
    pub fn new(session: SamplerSession, base: SamplingParams) -> Self {
        PluginPolicy { session, base }
    }
}

fn message(e: PluginError) -> String {
    e.to_string()
}

impl SamplingPolicy for PluginPolicy {
    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, String> {
        let plan = self.session.step(last).map_err(message)?;
        let params = plan.params.map(|p| SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
            ..self.base.clone()
        });
        if let Some(p) = &params {
            // Out-of-range overrides would break the sampling arithmetic.
            p.validate(usize::MAX).map_err(|e| format!("plugin {}: {e}", self.session.plugin()))?;
        }
        Ok(StepPlan {
            params,
            bias: plan.bias,
            allowed: (!plan.allowed.is_empty()).then_some(plan.allowed),
            forced: plan.forced,
            stop: plan.stop,
            choose_from: plan.choose_from,
        })
    }

    fn choose(&mut self, candidates: &[(u32, f32)]) -> Result<u32, String> {
        let candidates: Vec<Candidate> = candidates.iter().map(|&(id, logit)| Candidate { id, logit }).collect();
        self.session.choose(&candidates).map_err(message)
    }
}

#[cfg(test)]
mod tests;
