//! A sampler plugin's session as the engine's [`SamplingPolicy`].

use kiln_engine::{PolicyError, SamplingParams, SamplingPolicy, StepPlan};
use kiln_plugins::{Candidate, PluginError, SamplerSession};

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

/// A plugin's failure names the plugin and its version.
fn failed(e: PluginError) -> PolicyError {
    PolicyError::Failed(e.to_string())
}

impl SamplingPolicy for PluginPolicy {
    fn name(&self) -> String {
        format!("plugin {}", self.session.plugin())
    }

    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, PolicyError> {
        let plan = self.session.step(last).map_err(failed)?;
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
            p.validate(usize::MAX)
                .map_err(|e| PolicyError::InvalidPlan { policy: self.name(), problem: e.to_string() })?;
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

    fn choose(&mut self, candidates: &[(u32, f32)]) -> Result<u32, PolicyError> {
        let candidates: Vec<Candidate> = candidates.iter().map(|&(id, logit)| Candidate { id, logit }).collect();
        self.session.choose(&candidates).map_err(failed)
    }
}
