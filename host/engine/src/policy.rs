//! Sampling policies: how a per-sequence policy (a sampler plugin, seen from
//! the engine, which knows nothing of WebAssembly) steers the host's
//! sampling. Before each token the engine asks the policy for a
//! [`StepPlan`] and carries it out; the logits never leave the host.

use crate::SamplingParams;

/// A per-sequence sampling policy.
pub trait SamplingPolicy: Send + std::fmt::Debug {
    /// Who steers (a plugin's name and version), for errors about its plans.
    fn name(&self) -> String;

    /// The plan for the next token; `last` is the token emitted before it
    /// (none at the first step). An error fails the request.
    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, PolicyError>;

    /// Picks the next token among `candidates` (id, logit; most likely
    /// first) when the plan set `choose_from`.
    fn choose(&mut self, candidates: &[(u32, f32)]) -> Result<u32, PolicyError>;
}

/// Why a policy's step failed. Both kinds name the policy, and their
/// messages are safe to show to the client: a policy is the request's
/// choice (its pipeline), not the server's internals.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The policy itself failed (a plugin trapped, ran out of time or
    /// memory, or refused); the message names it.
    #[error("{0}")]
    Failed(String),
    /// The policy's plan or choice cannot be carried out.
    #[error("{policy}: {problem}")]
    InvalidPlan { policy: String, problem: String },
}

/// What the policy wants for the next token. The default plan samples with
/// the request's parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPlan {
    /// Sampling knobs for this step instead of the request's (its `seed` and
    /// `logit_bias` are not used: the request's stay).
    pub params: Option<SamplingParams>,
    /// Added to these tokens' logits.
    pub bias: Vec<(u32, f32)>,
    /// Only these tokens may be sampled: bit `id % 64` of word `id / 64`.
    pub allowed: Option<Vec<u64>>,
    /// Emit these tokens without sampling.
    pub forced: Vec<u32>,
    /// End the generation now (finish reason `stop`).
    pub stop: bool,
    /// Greater than 0: the policy chooses among this many top candidates.
    pub choose_from: u32,
}
